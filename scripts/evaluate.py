"""python scripts/evaluate.py --workdir DIR [--step N | --best] [--split S] [--output FOLDER]
                            [--ensemble DIR2,DIR3] [--config.data.KEY=VALUE ...]

Evaluates a saved checkpoint (default: the latest) on a split (default: the run's
data.eval_split), prints the report, and writes eval_<split>_step<N>.json (the eval_results.json
metrics) and PNG plots into the workdir, or --output. `--config.data.*` / `--config.eval.*`
override the run's config, e.g. --config.data.name_or_path=../shared/data/sst2 --split test;
keys that would change the model, its labels or its tokenization are refused.
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
SAVED = cli.define_workdir_flags()


def main(argv):
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint, evaluate_ensemble

    options = dict(step=cli.checkpoint_step(), overrides=cli.run_overrides(SAVED),
                   split=FLAGS.split, dtype=FLAGS.dtype)
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


if __name__ == "__main__":
    cli.run(main)
