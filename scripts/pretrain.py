"""python scripts/pretrain.py --config configs/NAME.py --workdir DIR [--config.a.b=value ...]

Masked-LM training (continued pretraining) of `model.name_or_path` on the unlabeled text of
`mlm.corpus`; the same checkpoints, exact resume (run it again with the same workdir), hooks
and progress output as scripts/train.py. Fine-tune from the result with
`--config.model.name_or_path=DIR@best` (or export it: scripts/export.py writes an
AutoModelForMaskedLM folder).
"""

from absl import flags
from ml_collections import config_flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, metrics and results go here.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    from flax_sentiment.training.pretrain import pretrain

    pretrain(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    cli.run(main, config_flag="config")
