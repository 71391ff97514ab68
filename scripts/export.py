"""python scripts/export.py --workdir DIR --output OUT [--step N | --best] [--dtype bfloat16]
                          [--onnx] [--card_splits validation,test] [--overwrite]
                          [--compare_split SPLIT] [--adapter] [--config.data.KEY=VALUE ...]

Writes a Hugging Face PyTorch folder (config.json, model.safetensors, tokenizer, README.md model
card) that `AutoModelForSequenceClassification.from_pretrained(OUT)` loads, after checking that
its logits match the JAX model's; on a mismatch nothing is left at OUT. The card's numbers are
the exported step's on --card_splits (default: the run's eval split). --onnx adds model.onnx,
checked against the PyTorch folder with onnxruntime. --compare_split also reports JAX vs
PyTorch accuracy on a whole split of the run's data (`--config.data.*` chooses other data).
A masked-LM workdir (scripts/pretrain.py) exports as an AutoModelForMaskedLM folder, checked
the same way on its vocabulary logits.
A LoRA run exports merged like any other; --adapter writes its PEFT adapter folder instead
(flax_sentiment/export/peft.py), checked by loading it with PEFT.
"""

import json
from pathlib import Path

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Folder to write.", required=True)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Storage dtype.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty OUT.")
flags.DEFINE_float("tolerance", 1e-4, "Max abs logit difference allowed (float32; scaled for "
                   "16-bit storage).")
flags.DEFINE_bool("onnx", False, "Also write model.onnx (checked with onnxruntime).")
flags.DEFINE_list("card_splits", None, "Splits the model card reports, evaluated at the "
                  "exported step (default: the run's eval split; empty: none).")
flags.DEFINE_string("compare_split", None, "Also report JAX vs PyTorch accuracy on this split.")
flags.DEFINE_bool("adapter", False, "A LoRA run as a PEFT adapter folder (adapter_config.json, "
                  "the adapter and head weights), not merged.")
SAVED = cli.define_workdir_flags()


def main(argv):
    from flax_sentiment.config import option, with_overrides
    from flax_sentiment.export.card import evaluate_step, model_card
    from flax_sentiment.export.huggingface import (
        check_output,
        compare_on_split,
        export_hf,
        run_tokenization,
    )
    from flax_sentiment.workdir import load_run

    if FLAGS.onnx:  # before any work: a missing package is one line, and nothing is written
        from flax_sentiment.export.onnx import require_onnx

        require_onnx()
    check_output(FLAGS.output, FLAGS.overwrite)
    overrides = cli.run_overrides(SAVED)
    weights = {"weights": overrides["eval.weights"]} if "eval.weights" in overrides else {}
    run = load_run(FLAGS.workdir, cli.checkpoint_step(), dtype="float32", **weights)
    config = with_overrides(run.config, overrides)
    if not run.label_names:  # a masked-LM run (scripts/pretrain.py)
        _export_masked_lm(run)
        return
    if FLAGS.adapter:
        from flax_sentiment.export.peft import export_run_adapter

        report = export_run_adapter(run, FLAGS.output, overwrite=FLAGS.overwrite,
                                    tolerance=FLAGS.tolerance, dtype=FLAGS.dtype, onnx=FLAGS.onnx)
        print(json.dumps(dict(report, step=run.step), indent=2))
        return
    splits = FLAGS.card_splits
    if splits is None:
        splits = [s for s in [str(option(config.data, "eval_split", ""))] if s]
    card = model_card(run, evaluate_step(run, splits, overrides),
                      model_name=Path(FLAGS.output).expanduser().absolute().name,
                      dtype=FLAGS.dtype, onnx=FLAGS.onnx)
    report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names,
                       FLAGS.output, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite,
                       tolerance=FLAGS.tolerance, card=card, onnx=FLAGS.onnx,
                       tokenization=run_tokenization(run.config.data))
    if FLAGS.compare_split:
        from flax_sentiment.data.splits import load_split, pad_token_id

        split = load_split(config.data, run.tokenizer, FLAGS.compare_split)
        report["compare"] = compare_on_split(run.model, report["path"], split,
                                             buckets=config.data.buckets,
                                             batch_size=config.eval.batch_size,
                                             pad_id=pad_token_id(run.tokenizer))
    report["step"] = run.step
    print(json.dumps(report, indent=2, default=str))
    print(f"exported step {run.step} to {report['path']}: max abs logit difference vs PyTorch "
          f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.1e})")
    if "onnx" in report:
        print(f"model.onnx: max abs logit difference vs PyTorch (onnxruntime) "
              f"{report['onnx']['max_abs_diff']:.2e}")


def _export_masked_lm(run):
    from flax_sentiment.export.card import masked_lm_card
    from flax_sentiment.export.masked_lm import export_masked_lm

    if FLAGS.onnx or FLAGS.adapter or FLAGS.compare_split:
        cli.fail("--onnx, --adapter and --compare_split are for classifiers; this workdir holds "
                 "a masked-LM run")
    report = export_masked_lm(run.model, run.arch, run.hf_config, run.tokenizer, FLAGS.output,
                              dtype=FLAGS.dtype, overwrite=FLAGS.overwrite,
                              tolerance=FLAGS.tolerance,
                              card=masked_lm_card(run, Path(FLAGS.output).name, FLAGS.dtype))
    report["step"] = run.step
    print(json.dumps(report, indent=2, default=str))
    print(f"exported step {run.step} ({run.arch.hf_class}) to {report['path']}: max abs logit "
          f"difference vs PyTorch {report['max_abs_diff']:.2e} (tolerance "
          f"{report['tolerance']:.1e})")


if __name__ == "__main__":
    cli.run(main)
