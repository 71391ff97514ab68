"""python scripts/train.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...]

Running it again with the same workdir resumes from the latest checkpoint.
"""

from absl import flags
from ml_collections import config_flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from flax_sentiment.training.loop import train_and_evaluate

    train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, config_flag="config")
