"""python scripts/sweep.py --config configs/NAME.py --workdir SWEEP_DIR [--trials N]
                         [--storage URL] [--seeds K] [--config.a.b=value ...]

Hyperparameter search on Optuna over the config's `sweep.space` (trial 0 is the config as
given; each trial is an ordinary run in SWEEP_DIR/trials/NNNN; pruning by `sweep.pruner`). The
study is kept in SWEEP_DIR/study.journal (or --storage): rerunning the command, on this machine
or another, adds a worker to the same study and resumes a trial whose worker died. Writes
trials.csv, best.json and plots, and prints the table.

--seeds K instead trains the config with K seeds (SWEEP_DIR/seeds/seedN) and reports mean +- std,
min..max and the ensemble of the K models.
"""

from absl import flags
from ml_collections import config_flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "The sweep's folder.", required=True)
flags.DEFINE_integer("trials", None, "Finished trials to reach (default: sweep.trials).")
flags.DEFINE_string("storage", None, "Optuna storage URL (default: SWEEP_DIR/study.journal).")
flags.DEFINE_integer("seeds", 0, "Train the config with this many seeds instead of searching.")
flags.mark_flags_as_required(["config"])


def main(argv):
    from flax_sentiment.tuning import sweep

    config = FLAGS.config
    if FLAGS.seeds:
        sweep.run_seeds(config, FLAGS.workdir, FLAGS.seeds)
        return
    if FLAGS.trials is not None:
        config.unlock()
        config.sweep.trials = FLAGS.trials
    sweep.run_sweep(config, FLAGS.workdir, storage=FLAGS.storage)


if __name__ == "__main__":
    cli.run(main, config_flag="config")
