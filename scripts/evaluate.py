"""python scripts/evaluate.py --workdir DIR [--step N | --best] [--split S] [--output FOLDER]
                            [--config.data.KEY=VALUE | --data.KEY=VALUE ...]

Evaluates a saved checkpoint (default: the latest) on a split (default: the run's
data.eval_split), prints the report, and writes eval_<split>_step<N>.json (the eval_results.json
metrics) and PNG plots into the workdir, or --output. --config.data.* / --data.* override the
run's data config, e.g. --config.data.name_or_path=../shared/data/sst2 --split test.
"""

import argparse
import sys

from flax_sentiment import UserError

OVERRIDE_PREFIXES = ("--config.data.", "--data.")


def split_overrides(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Pull `--config.data.KEY=VALUE` / `--data.KEY VALUE` out of argv (their keys depend on
    the run's config, which argparse cannot know up front)."""
    rest, overrides = [], {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        prefix = next((p for p in OVERRIDE_PREFIXES if arg.startswith(p)), None)
        if prefix is None:
            if arg.startswith("--config."):
                raise UserError(f"{arg.split('=')[0]}: only data settings can be overridden "
                                "when evaluating (--config.data.KEY=VALUE)")
            rest.append(arg)
            i += 1
            continue
        key, eq, value = arg[len(prefix):].partition("=")
        if not eq:
            if i + 1 >= len(argv):
                raise UserError(f"{arg}: missing value")
            value = argv[i + 1]
            i += 1
        overrides[key] = value
        i += 1
    return rest, overrides


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                epilog="Any --config.data.KEY=VALUE overrides the run's data "
                                       "config.")
    p.add_argument("--workdir", required=True, help="a training workdir")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint by eval metric")
    p.add_argument("--split", help="split to evaluate (default: data.eval_split)")
    p.add_argument("--output", help="folder for the JSON and plots (default: the workdir)")
    p.add_argument("--batch-size", type=int, help="default: the run's eval.batch_size")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="default: the run's")
    p.add_argument("--no-plots", action="store_true")
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's read-only checkpoint notices
    try:
        argv, overrides = split_overrides(sys.argv[1:])
        args = p.parse_args(argv)
        from flax_sentiment.evaluate import evaluate_checkpoint

        report = evaluate_checkpoint(args.workdir, step="best" if args.best else args.step,
                                     data=overrides, split=args.split,
                                     batch_size=args.batch_size, dtype=args.dtype)
        output = report.workdir if args.output is None else args.output
        from pathlib import Path

        output = Path(output)
        print(f"{report.workdir} step {report.step}, split {report.split!r} of "
              f"{report.dataset}:\n")
        print(report.table())
        written = [report.to_json(output / f"{report.stem}.json")]
        if not args.no_plots:
            written += report.plot_all(output)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
