"""python scripts/export.py --workdir DIR --output OUT [--step N | --best] [--dtype bfloat16]
                          [--overwrite] [--compare_split SPLIT] [--config.data.KEY=VALUE ...]

Writes a Hugging Face PyTorch folder (config.json, model.safetensors, tokenizer) that
`AutoModelForSequenceClassification.from_pretrained(OUT)` loads, after checking that its logits
match the JAX model's; on a mismatch nothing is left at OUT. --compare_split also reports JAX vs
PyTorch accuracy on a whole split of the run's data (`--config.data.*` chooses other data).
"""

import json

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Folder to write.", required=True)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Storage dtype.")
flags.DEFINE_bool("overwrite", False, "Replace a non-empty OUT.")
flags.DEFINE_float("tolerance", 1e-4, "Max abs logit difference allowed (float32; scaled for "
                   "16-bit storage).")
flags.DEFINE_string("compare_split", None, "Also report JAX vs PyTorch accuracy on this split.")
SAVED = cli.define_workdir_flags()


def main(argv):
    from flax_sentiment.config import with_overrides
    from flax_sentiment.export import compare_on_split, export_hf
    from flax_sentiment.workdir import load_run

    run = load_run(FLAGS.workdir, cli.checkpoint_step(), dtype="float32")
    config = with_overrides(run.config, cli.run_overrides(SAVED))
    report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names,
                       FLAGS.output, dtype=FLAGS.dtype, overwrite=FLAGS.overwrite,
                       tolerance=FLAGS.tolerance)
    if FLAGS.compare_split:
        from flax_sentiment.data import load_split, pad_token_id

        split = load_split(config.data, run.tokenizer, FLAGS.compare_split)
        report["compare"] = compare_on_split(run.model, report["path"], split,
                                             buckets=config.data.buckets,
                                             batch_size=config.eval.batch_size,
                                             pad_id=pad_token_id(run.tokenizer))
    report["step"] = run.step
    print(json.dumps(report, indent=2, default=str))
    print(f"exported step {run.step} to {report['path']}: max abs logit difference vs PyTorch "
          f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.1e})")


if __name__ == "__main__":
    cli.run(main)
