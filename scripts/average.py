"""python scripts/average.py --workdir DIR [--runs DIR2,DIR3] (--last K | --best K | --steps N,M)
                           --output OUT [--weights raw|ema] [--noevaluate]

Averages the parameters of checkpoints into one model ("model soup"): the last or best K
checkpoints of a run, or the chosen checkpoints of several runs that started from the same
model (same pretrained weights, model.head_seed and model.reinit_layers; other runs are
refused). OUT is a workdir with one checkpoint: evaluate.py, predict.py and export.py read it
like any run. It is evaluated on the run's eval split (OUT/eval_results.json).
"""

from absl import flags

from flax_sentiment import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A training workdir.", required=True)
flags.DEFINE_list("runs", [], "More workdirs; the same checkpoints of each are averaged too.")
flags.DEFINE_integer("last", 0, "Average the newest K checkpoints of each run.")
flags.DEFINE_integer("best", 0, "Average the best K checkpoints of each run (its eval metric, "
                     "of the weights averaged).")
flags.DEFINE_list("steps", [], "Average these checkpoint steps of each run.")
flags.DEFINE_string("output", None, "The new workdir (must not exist or be empty).",
                    required=True)
flags.DEFINE_enum("weights", None, ["raw", "ema"],
                  "Which weights of each checkpoint (default: each run's eval.weights).")
flags.DEFINE_bool("evaluate", True, "Evaluate the average on the run's eval split.")


def main(argv):
    from flax_sentiment.errors import UserError
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint
    from flax_sentiment.tuning import averaging
    from flax_sentiment.workdir import Workdir

    try:
        steps = [int(s) for s in FLAGS.steps]
    except ValueError:
        raise UserError(f"--steps {','.join(FLAGS.steps)}: must be step numbers") from None
    sources = []
    for workdir in [FLAGS.workdir, *FLAGS.runs]:
        chosen = averaging.choose_steps(workdir, last=FLAGS.last, best=FLAGS.best, steps=steps,
                                        weights=FLAGS.weights)
        sources += [(workdir, s) for s in chosen]
    print("averaging " + ", ".join(f"{w} step {s}" for w, s in sources))
    output = averaging.write_average(sources, FLAGS.output, weights=FLAGS.weights)
    print(f"wrote {output}")
    if FLAGS.evaluate:
        report = evaluate_checkpoint(output)
        print(report.table())
        results = dict(report.metrics, step=report.step, averaged=len(sources))
        Workdir(output).write_results(results)
        print(f"accuracy {results['accuracy']:.4f}; wrote {Workdir(output).results_file}")


if __name__ == "__main__":
    cli.run(main)
