"""python scripts/predict.py (--workdir DIR [--step N | --best] | --model FOLDER) [TEXT ...]

Texts come from the arguments, else from --file (one per line), else from stdin. Prints label,
score and per-class probabilities; --json prints one JSON object per line.
"""

import json
import sys

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "A Hugging Face classifier folder (e.g. an export), hub id "
                    "or pip:PACKAGE/folder.")
flags.DEFINE_string("file", None, "Texts, one per line ('-' = stdin).")
flags.DEFINE_bool("json", False, "JSON lines output.")
flags.DEFINE_integer("batch_size", 32, "Texts per batch.")
SAVED = cli.define_workdir_flags(required=False)
flags.mark_flags_as_mutual_exclusive(["workdir", "model"], required=True)


def _texts(argv: list[str]) -> list[str]:
    if argv[1:]:
        return argv[1:]
    if FLAGS.file and FLAGS.file != "-":
        try:
            with open(FLAGS.file, encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise cli.UserError(f"--file {FLAGS.file}: {e}") from None
    return [line.rstrip("\n") for line in sys.stdin if line.strip()]


def main(argv):
    from flax_sentiment.evaluation.predict import Classifier

    texts = _texts(argv)
    if FLAGS.workdir:
        clf = Classifier.from_workdir(FLAGS.workdir, cli.checkpoint_step(),
                                      overrides=cli.run_overrides(SAVED),
                                      batch_size=FLAGS.batch_size)
    else:
        clf = Classifier.from_pretrained(FLAGS.model, batch_size=FLAGS.batch_size)
    for text, r in zip(texts, clf.predict(texts), strict=True):
        if FLAGS.json:
            print(json.dumps({"text": text, **r}))
        else:
            probs = " ".join(f"{k}={v:.3f}" for k, v in r["probabilities"].items())
            print(f"{r['label']}\t{r['score']:.3f}\t{probs}\t{text}")


if __name__ == "__main__":
    cli.run(main, positional=True)
