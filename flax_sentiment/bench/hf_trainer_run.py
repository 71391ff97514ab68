"""The Hugging Face side of the `trainer` section, as one whole process:

    python -m flax_sentiment.bench.hf_trainer_run --model FOLDER --data SST2_FOLDER --steps N
        --seed S --out RESULT.json [--bf16] [--epochs 1] [--threads T] [--cache_dir DIR]
        [--device cuda]

(the bench runs it by file path, `python flax_sentiment/bench/hf_trainer_run.py ...`: `-m`
would first import the flax_sentiment package, and with it JAX, 1 s and 180 MB that are no part
of the Trainer's process; so this file imports nothing of flax_sentiment).

What a transformers user would write for SST-2 (run_glue style): AutoTokenizer and
AutoModelForSequenceClassification (2 labels) from the folder, the TSVs through `datasets`' csv
builder, tokenization with `Dataset.map` into --cache_dir (empty = cold), dynamic padding
(`DataCollatorWithPadding`), length-grouped batches (`train_sampling_strategy="group_by_length"`,
the transformers-5 spelling of group_by_length), then `Trainer.train()` for N steps and
`Trainer.evaluate()` on the validation split. The hyperparameters default to
configs/sst2_minilm.py's (the parent passes them explicitly). A `TrainerCallback` stamps the
wall clock at every step end, so the parent computes steady-state examples/s the same way as for
our side. Writes RESULT.json: wall-clock stamps of each phase, the step stamps, accuracy.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

STARTED = time.time()  # before the heavy imports: the parent's spawn -> here is interpreter start

if __name__ == "__main__" and sys.path and sys.path[0] == str(Path(__file__).resolve().parent):
    sys.path.pop(0)  # run as a file: its neighbours (common.py, trainer.py...) shadow nothing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="Hugging Face model folder.")
    p.add_argument("--data", required=True, help="Folder with train.tsv and validation.tsv.")
    p.add_argument("--out", required=True, help="Where to write the result JSON.")
    p.add_argument("--steps", type=int, default=0, help="Train steps (max_steps).")
    p.add_argument("--epochs", type=float, default=0.0, help="Epochs instead of --steps.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast.")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="Where the Trainer trains (the parent passes where our side runs).")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's).")
    p.add_argument("--cache_dir", default=None, help="datasets cache (tokenization).")
    p.add_argument("--output_dir", default=None, help="Trainer's output_dir (nothing is saved).")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--eval_batch_size", type=int, default=128)
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--warmup", type=float, default=0.06,
                   help="Warmup: a fraction (< 1) of the steps, or steps (>= 1).")
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--scheduler", default="linear")
    p.add_argument("--max_length", type=int, default=66)
    p.add_argument("--text_column", default="sentence")
    p.add_argument("--label_column", default="label")
    args = p.parse_args(argv)
    if (args.steps > 0) == (args.epochs > 0):
        p.error("give exactly one of --steps and --epochs")
    return args


def length_grouping(arguments: type) -> dict[str, object]:
    """Length-grouped batches in either spelling: `train_sampling_strategy` (later transformers
    5 releases) or the older `group_by_length`."""
    fields = getattr(arguments, "__dataclass_fields__", {})
    if "train_sampling_strategy" in fields:
        return {"train_sampling_strategy": "group_by_length"}
    if "group_by_length" in fields:
        return {"group_by_length": True}
    raise RuntimeError("transformers' TrainingArguments has neither train_sampling_strategy nor "
                       "group_by_length: cannot group the Trainer's batches by length")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    stamps = {"started": STARTED}
    import os
    import tempfile

    import numpy as np
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit(f"--device cuda: this torch ({torch.__version__}) sees no CUDA device, and the "
                 "Trainer would quietly train on the CPU while ours runs on the GPU")
    import datasets
    import transformers as T

    stamps["imported"] = time.time()

    T.set_seed(args.seed)  # before the model: the new head's initialisation depends on it
    tokenizer = T.AutoTokenizer.from_pretrained(args.model)
    model = T.AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    stamps["loaded"] = time.time()

    data = Path(args.data)
    raw = datasets.load_dataset("csv", data_files={"train": str(data / "train.tsv"),
                                                   "validation": str(data / "validation.tsv")},
                                delimiter="\t", cache_dir=args.cache_dir)
    text = args.text_column

    def tokenize(batch: dict) -> dict:
        return tokenizer(batch[text], truncation=True, max_length=args.max_length)

    tokens = raw.map(tokenize, batched=True, remove_columns=[text])
    if args.label_column != "label":
        tokens = tokens.rename_column(args.label_column, "label")
    stamps["tokenized"] = time.time()

    steps: dict[int, float] = {}

    class StepClock(T.TrainerCallback):
        def on_step_end(self, targs, state, control, **kwargs):
            steps[state.global_step] = time.time()

    def accuracy(pred: T.EvalPrediction) -> dict[str, float]:
        return {"accuracy": float((np.argmax(pred.predictions, -1) == pred.label_ids).mean())}

    with tempfile.TemporaryDirectory(prefix="hf_trainer_") as scratch:
        targs = T.TrainingArguments(
            output_dir=args.output_dir or scratch,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
            learning_rate=args.learning_rate,
            warmup_steps=args.warmup,  # transformers 5: a float < 1 is a ratio of the steps
            weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2,
            adam_epsilon=args.adam_epsilon,
            lr_scheduler_type=args.scheduler,
            max_grad_norm=args.max_grad_norm,
            max_steps=args.steps if args.steps > 0 else -1,
            num_train_epochs=args.epochs if args.epochs > 0 else 1.0,
            seed=args.seed,
            use_cpu=args.device == "cpu",
            bf16=args.bf16,
            **length_grouping(T.TrainingArguments),
            dataloader_num_workers=0,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_steps=50,
            disable_tqdm=True,
        )
        trainer = T.Trainer(model=model, args=targs, train_dataset=tokens["train"],
                            processing_class=tokenizer,
                            data_collator=T.DataCollatorWithPadding(tokenizer),
                            compute_metrics=accuracy, callbacks=[StepClock()])
        stamps["setup"] = time.time()
        train_out = trainer.train()
        stamps["trained"] = time.time()
        metrics = trainer.evaluate(eval_dataset=tokens["validation"])
        stamps["evaluated"] = time.time()

    result = {
        "side": "trainer", "steps": train_out.global_step, "seed": args.seed,
        "dtype": "bfloat16" if args.bf16 else "float32", "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(), "device": str(trainer.args.device),
        "train_examples": len(tokens["train"]),
        "eval_examples": len(tokens["validation"]), "accuracy": metrics["eval_accuracy"],
        "eval_loss": metrics["eval_loss"], "train_loss": train_out.training_loss,
        "stamps": stamps, "step_times": {str(k): v for k, v in sorted(steps.items())},
        "versions": {"torch": torch.__version__, "transformers": T.__version__,
                     "datasets": datasets.__version__},
        "pid": os.getpid(),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
