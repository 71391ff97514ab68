"""python scripts/learning_curve.py --config configs/NAME.py --workdir CURVE_DIR
        --starts name=SPEC[,name2=SPEC2 ...] --budgets 250,1000,4000 --seeds 0,1,2
        [--epochs E] [--min_steps FLOOR] [--test_split S] [--keep_checkpoints]
        [--config.a.b=value ...]

A learning curve: for each start (SPEC is what model.name_or_path takes), each labelled budget N
(a stratified subset of the train split, nested across N for a seed) and each seed, an ordinary
run in CURVE_DIR/<start>/n<N>/seed<S> of steps = max(FLOOR, ceil(E * N / train.batch_size)),
evaluated at its last step on the eval split (and on --test_split when given: then the curve's
split). Writes curve.csv (one row per trial), curve.json (mean, std, count, values per start and
N) and curve.png after every trial. Rerunning continues it (finished trials are not trained
again); the same command started several times runs the trials in parallel workers.
"""

from absl import flags
from ml_collections import config_flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py): the target task.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "The curve's folder.", required=True)
flags.DEFINE_string("starts", None, "Starting models: name=SPEC,name2=SPEC2 (SPEC: a hub id, a "
                    "model folder, pip:PACKAGE/folder, or a training or masked-LM workdir: "
                    "DIR, DIR@best, DIR@STEP).", required=True)
flags.DEFINE_string("budgets", None, "Labelled training examples N, comma-separated.",
                    required=True)
flags.DEFINE_string("seeds", "0,1,2", "Seeds (data.seed = train.seed), comma-separated.")
flags.DEFINE_float("epochs", None, "Epochs over the N examples (default: train.num_epochs).")
flags.DEFINE_integer("min_steps", None, "The fewest steps any trial trains (default 200).")
flags.DEFINE_string("test_split", "", "Also evaluate each final model on this split, and draw "
                    "the curve on it (default: the curve is on data.eval_split).")
flags.DEFINE_bool("keep_checkpoints", False, "Keep finished trials' checkpoints.")
flags.mark_flags_as_required(["config"])


def main(argv):
    from flax_sentiment.tuning import curve

    min_steps = curve.DEFAULT_MIN_STEPS if FLAGS.min_steps is None else FLAGS.min_steps
    curve.run_curve(FLAGS.config, FLAGS.workdir, curve.parse_starts(FLAGS.starts),
                    curve.parse_ints(FLAGS.budgets, "budgets", low=1),
                    curve.parse_ints(FLAGS.seeds, "seeds", low=0), epochs=FLAGS.epochs,
                    min_steps=min_steps, test_split=FLAGS.test_split,
                    keep_checkpoints=FLAGS.keep_checkpoints)


if __name__ == "__main__":
    cli.run(main, config_flag="config")
