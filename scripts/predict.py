"""python scripts/predict.py (--workdir DIR [--step N | --best] | --model FOLDER) [TEXT ...]

Texts come from the arguments, else from --file (one per line), else from stdin. Prints label,
score and per-class probabilities; --json prints one JSON object per line.
"""

import argparse
import json
import sys

from flax_sentiment import UserError


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workdir", help="a training workdir")
    src.add_argument("--model", help="a Hugging Face classifier folder (e.g. an export), hub "
                     "id or pip:PACKAGE/folder")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int)
    which.add_argument("--best", action="store_true")
    p.add_argument("--file", help="texts, one per line ('-' = stdin)")
    p.add_argument("--json", action="store_true", help="JSON lines output")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("texts", nargs="*")
    args = p.parse_args()
    from flax_sentiment.predict import Classifier

    try:
        if args.texts:
            texts = args.texts
        elif args.file and args.file != "-":
            try:
                with open(args.file, encoding="utf-8") as f:
                    texts = [line.rstrip("\n") for line in f if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"--file {args.file}: {e}") from None
        else:
            texts = [line.rstrip("\n") for line in sys.stdin if line.strip()]
        if args.workdir:
            clf = Classifier.from_workdir(args.workdir, "best" if args.best else args.step,
                                          batch_size=args.batch_size)
        else:
            clf = Classifier.from_pretrained(args.model, batch_size=args.batch_size)
        results = clf.predict(texts)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for text, r in zip(texts, results, strict=True):
        if args.json:
            print(json.dumps({"text": text, **r}))
        else:
            probs = " ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['label']}\t{r['score']:.3f}\t{probs}\t{text}")


if __name__ == "__main__":
    main()
