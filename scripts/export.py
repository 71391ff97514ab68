"""python scripts/export.py --workdir DIR --output OUT [--step N | --best] [--dtype bfloat16]

Writes a Hugging Face PyTorch folder (config.json, model.safetensors, tokenizer) that
`AutoModelForSequenceClassification.from_pretrained(OUT)` loads, after checking that its logits
match the JAX model's; on a mismatch nothing is left at OUT.
"""

import argparse
import json
import sys

from flax_sentiment import UserError
from flax_sentiment.logging_utils import setup_logging


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a training workdir (holds checkpoints/)")
    p.add_argument("--output", required=True, help="folder to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="checkpoint step (default: latest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint by eval metric")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="max abs logit difference allowed (float32; scaled for 16-bit)")
    p.add_argument("--compare-split", metavar="SPLIT",
                   help="also report JAX vs PyTorch accuracy on this split of the run's data")
    args = p.parse_args()
    setup_logging()
    from flax_sentiment.export import compare_on_split, export_hf
    from flax_sentiment.workdir import load_run

    try:
        run = load_run(args.workdir, "best" if args.best else args.step, dtype="float32")
        report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names,
                           args.output, dtype=args.dtype, overwrite=args.overwrite,
                           tolerance=args.tolerance)
        if args.compare_split:
            from flax_sentiment.data import load_split, pad_token_id

            split = load_split(run.config.data, run.tokenizer, args.compare_split)
            report["compare"] = compare_on_split(
                run.model, report["path"], split, buckets=run.config.data.buckets,
                pad_id=pad_token_id(run.tokenizer))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    report["step"] = run.step
    print(json.dumps(report, indent=2, default=str))
    print(f"exported step {run.step} to {report['path']}: max abs logit difference vs PyTorch "
          f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.1e})")


if __name__ == "__main__":
    main()
