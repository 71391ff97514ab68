"""python scripts/evaluate.py --workdir DIR [--step N | --best] [--split S] [--output FOLDER]
                            [--ensemble DIR2,DIR3 | --datasets ENTRY[,ENTRY...]]
                            [--config.data.KEY=VALUE ...]

Evaluates a saved checkpoint (default: the latest) on a split (default: the run's
data.eval_split), prints the report, and writes eval_<split>_step<N>.json (the eval_results.json
metrics) and PNG plots into the workdir, or --output. `--config.data.*` / `--config.eval.*`
override the run's config, e.g. --config.data.name_or_path=../shared/data/sst2 --split test;
keys that would change the model, its labels or its tokenization are refused.

Across datasets: `--datasets` evaluates the one checkpoint on several datasets (the model loaded
once) and prints one table (dataset x examples, dropped rows, accuracy, macro F1, ECE), written
as across_<datasets>_step<N>.csv and .json (no plots). Entries are separated by commas outside
braces, or given as repeated --datasets flags (quote them: braces and '|' mean things to shells):

    PATH_OR_HUB_ID[:SPLIT][{CLASS=LABEL|drop, text=COLUMN, label=COLUMN,
                            classes=NAME|NAME|..., subset=NAME}]

  SPLIT              default --split, else the run's data.eval_split
  CLASS=LABEL        count the dataset's class CLASS (its name, or its integer id: how to
                     name a class called text, label, classes or subset) as the model's label
                     LABEL; CLASS=drop leaves its rows out (the table counts them)
  text=COLUMN        the text column (default: the run's, else 'text' or 'sentence')
  label=COLUMN       the label column (default: the run's data.label_column)
  classes=A|B|C      the dataset's class names in label-id order. Needed only when its labels
                     are bare integers of a dataset not known by name (the run's own data, hub
                     datasets with ClassLabel names and ../shared/data's sst2, sst5 and
                     tweet_eval_sentiment folders are known)

Classes that share a name with a model label (case-insensitive) count as it. A dataset class the
model lacks (neutral tweets for a 2-class SST-2 model) is refused unless the entry maps or drops
it. A model label the dataset lacks (a 3-class model on SST-2) is kept: predictions of it count
as errors, and macro F1 averages over the labels the dataset has. E.g.

    --datasets ../shared/data/sst2:validation \
    --datasets '../shared/data/tweet_eval_sentiment:validation{neutral=drop}'
"""

from pathlib import Path

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("split", None, "Split to evaluate (default: data.eval_split).")
flags.DEFINE_string("output", None, "Folder for the JSON and plots (default: the workdir).")
flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Compute dtype (default: the run's).")
flags.DEFINE_bool("plots", True, "Write the PNG plots (--noplots: only the JSON).")
flags.DEFINE_list("ensemble", [], "More workdirs: evaluate the ensemble (averaged "
                  "probabilities) of --workdir and these, e.g. the runs of several seeds.")
flags.DEFINE_multi_string("datasets", [], "Evaluate on several datasets, one table: "
                         "PATH_OR_HUB_ID[:SPLIT][{CLASS=LABEL|drop,text=COL,...}] entries, "
                         "comma-separated or repeated (see the module docstring).")
SAVED = cli.define_workdir_flags()


def main(argv):
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint, evaluate_ensemble

    options = dict(step=cli.checkpoint_step(), overrides=cli.run_overrides(SAVED),
                   split=FLAGS.split, dtype=FLAGS.dtype)
    if FLAGS.datasets:
        across(options)
        return
    if FLAGS.ensemble:
        report = evaluate_ensemble([FLAGS.workdir, *FLAGS.ensemble], **options)
        print(f"ensemble of {', '.join(report.ensemble)}")
    else:
        report = evaluate_checkpoint(FLAGS.workdir, **options)
    output = Path(report.workdir if FLAGS.output is None else FLAGS.output)
    print(f"{report.workdir} step {report.step}, split {report.split!r} of "
          f"{report.dataset}:\n")
    print(report.table())
    written = [report.to_json(output / f"{report.stem}.json")]
    if FLAGS.plots:
        written += report.plot_all(output)
    for path in written:
        print(f"wrote {path}")


def across(options: dict) -> None:
    from flax_sentiment.errors import UserError
    from flax_sentiment.evaluation.across import evaluate_datasets

    if FLAGS.ensemble:
        raise UserError("--datasets evaluates one run: it cannot be combined with --ensemble")
    result = evaluate_datasets(FLAGS.workdir, FLAGS.datasets, **options)
    output = Path(result.workdir if FLAGS.output is None else FLAGS.output)
    print(f"{result.workdir} step {result.step} (labels {', '.join(result.label_names)}) on "
          f"{len(result.rows)} datasets:\n")
    print(result.table())
    for path in (result.to_csv(output / f"{result.stem}.csv"),
                 result.to_json(output / f"{result.stem}.json")):
        print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main)
