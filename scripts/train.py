"""python scripts/train.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...]

Running it again with the same workdir resumes from the latest checkpoint.
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from flax_sentiment import UserError
from flax_sentiment.logging_utils import setup_logging

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from flax_sentiment.train import train_and_evaluate

    try:
        train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
