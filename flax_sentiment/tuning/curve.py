"""Learning curves: a metric against the number of labelled examples, one line per starting
model, error bars over seeds.

Each trial (start, N, seed) is an ordinary run (`train_and_evaluate`, in-process) in
CURVE_DIR/<start>/n<N>/seed<S>: the config with `model.name_or_path` = the start's spec,
`data.train_examples` = N (stratified, and nested: for one seed the N = 250 examples are among
the N = 1000 ones, `splits.nested_stratified_order`), `data.seed` = `train.seed` = S (the subset,
the batch order and dropout all change with the seed; the head's initialisation,
`model.head_seed`, does not), and `train.max_steps` from the step rule (`trial_steps`).
Evaluation runs once, at the last step, so a point is the final model (nothing is chosen on the
evaluation split: it is a fair test set). One process runs many trials, so trials of one
architecture share compiled programs.

What a curve guarantees (README, "Learning curves"):
- A finished trial (its `eval_results.json` written) is never trained again, and a trial that
  finished with other settings (another step rule or config) is refused rather than mixed in.
  An interrupted one continues from its newest checkpoint; Ctrl-C / SIGTERM saves it and the
  worker exits 0.
- Several workers (the same command, started again here or on a machine sharing the folder)
  share the trials: each takes the next trial without a live lease (`sweep.Lease`, renewed by a
  thread; a dead worker's trial is taken over), so no trial trains twice at once.
- A trial that diverges is recorded as failed (`status` in curve.csv) and not retried.
- curve.csv, curve.json and curve.png are rewritten after every trial. Checkpoints of a finished
  trial are deleted (after its eval results and any test evaluation are written) unless
  `keep_checkpoints`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flax_sentiment import parallel, sources
from flax_sentiment.config import SCALAR_METRICS, from_dict, option, validate
from flax_sentiment.data import splits
from flax_sentiment.data.loading import SplitLoader
from flax_sentiment.errors import UserError
from flax_sentiment.training.loop import TrainingDiverged, train_and_evaluate
from flax_sentiment.training.start import is_workdir, parse_spec
from flax_sentiment.tuning.sweep import (
    LEASE,
    Lease,
    apply_params,
    folder_lock,
    lease_alive,
    write_lease,
)
from flax_sentiment.workdir import Workdir

log = logging.getLogger(__name__)

DEFAULT_MIN_STEPS = 200
RECORD = "curve_trial.json"  # in each trial folder: what the table needs beyond eval_results
START_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# Keys a finished trial may differ in from the plan without its result being another one's.
_IGNORED_KEYS = {"train.log_every_steps", "data.cache_dir"}


# --------------------------------------------------------------------------------------------
# The plan


def trial_steps(n: int, batch_size: int, epochs: float, min_steps: int) -> int:
    """steps = max(min_steps, ceil(epochs * N / batch_size)): `epochs` passes over the N
    examples, but never fewer than `min_steps` (a few epochs of 250 examples are a dozen steps,
    too few for the warmup and the head to settle)."""
    return max(int(min_steps), math.ceil(float(epochs) * int(n) / int(batch_size)))


@dataclasses.dataclass(frozen=True)
class Trial:
    start: str
    spec: str
    n: int
    seed: int
    steps: int

    @property
    def name(self) -> str:
        return f"{self.start}/n{self.n}/seed{self.seed}"


def parse_starts(text: str) -> dict[str, str]:
    """'name=SPEC,name2=SPEC2' -> {name: SPEC}; SPEC is anything `model.name_or_path` takes."""
    starts: dict[str, str] = {}
    for item in [x.strip() for x in str(text or "").split(",") if x.strip()]:
        name, eq, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not eq or not spec:
            raise UserError(f"--starts {item!r}: expected NAME=SPEC (SPEC: a hub id, a model "
                            "folder or pip:PACKAGE/folder)")
        if not START_NAME.fullmatch(name):
            raise UserError(f"--starts {item!r}: the name {name!r} names the start's folder: "
                            "letters, digits, '_' and '-' only, starting with a letter or digit")
        if name in starts:
            raise UserError(f"--starts: the name {name!r} is given twice")
        starts[name] = spec
    if not starts:
        raise UserError("--starts: give at least one NAME=SPEC")
    return starts


def parse_ints(text: str, flag: str, *, low: int) -> list[int]:
    """'250,1000' -> [250, 1000], each >= `low`, no repeats, sorted."""
    values = []
    for item in [x.strip() for x in str(text or "").split(",") if x.strip()]:
        try:
            value = int(item)
        except ValueError:
            raise UserError(f"--{flag} {item!r}: not an integer") from None
        if value < low:
            raise UserError(f"--{flag} {value}: must be >= {low}")
        if value in values:
            raise UserError(f"--{flag}: {value} is given twice")
        values.append(value)
    if not values:
        raise UserError(f"--{flag}: give at least one value (comma-separated)")
    return sorted(values)


def _check_spec(name: str, spec: str) -> None:
    """A start that cannot load fails here, before any trial trains: an uninstalled pip
    package or a missing local folder (a hub id is only fetched when its first trial starts;
    `DIR@STEP` is checked by its folder)."""
    if spec.startswith(sources.PIP_PREFIX):
        try:
            sources.resolve_pip(spec)
        except UserError as e:
            raise UserError(f"--starts {name}={spec}: {e}") from None
        return
    path, step = parse_spec(spec, key=f"--starts {name}")
    if step is not None:  # DIR@best, DIR@1200: a training workdir
        if not is_workdir(path):
            raise UserError(f"--starts {name}={spec}: {path} is not a training workdir (no "
                            "checkpoints folder)")
        return
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a path, not a hub id
        if not Path(spec).expanduser().exists():
            raise UserError(f"--starts {name}={spec}: no such model folder")


# --------------------------------------------------------------------------------------------
# The curve


class Curve:
    """One worker of the learning curve in `folder` (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, folder: str | Path,
                 starts: Mapping[str, str], budgets: Sequence[int], seeds: Sequence[int], *,
                 epochs: float | None = None, min_steps: int = DEFAULT_MIN_STEPS,
                 test_split: str = "", keep_checkpoints: bool = False):
        validate(config)
        parallel.initialize_distributed(config)
        if jax.process_count() > 1:
            raise UserError("a learning curve runs its trials in one process each: start one "
                            "worker per host (the same command) instead of a multi-host job")
        self.config, self.folder = config, Path(folder).expanduser().absolute()
        self.starts = dict(starts)
        self.budgets, self.seeds = sorted(int(n) for n in budgets), sorted(int(s) for s in seeds)
        self.epochs = float(config.train.num_epochs if epochs is None else epochs)
        self.min_steps, self.keep = int(min_steps), bool(keep_checkpoints)
        self.test_split = str(test_split or "")
        self.metric = str(config.eval.metric)
        if not self.starts or not self.budgets or not self.seeds:
            raise UserError("a learning curve needs at least one start, budget and seed")
        if len(set(self.budgets)) != len(self.budgets) or min(self.budgets) < 1:
            raise UserError(f"--budgets {self.budgets}: each must be >= 1, none repeated")
        if len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise UserError(f"--seeds {self.seeds}: each must be >= 0, none repeated")
        if not self.epochs > 0:
            raise UserError(f"--epochs {self.epochs}: must be > 0")
        if self.min_steps < 1:
            raise UserError(f"--min_steps {self.min_steps}: must be >= 1")
        for name, spec in self.starts.items():
            if not START_NAME.fullmatch(name):
                raise UserError(f"start name {name!r}: letters, digits, '_' and '-' only")
            _check_spec(name, spec)
        self.eval_split = str(option(config.data, "eval_split", ""))
        if not self.eval_split:
            raise UserError("config data.eval_split='': a learning curve evaluates every trial "
                            "on the evaluation split; name one (data.eval_split, or "
                            "data.validation_size to carve it from the train split)")
        Workdir(self.folder).check_usable()
        pool = splits.train_pool_labels(config.data)
        if max(self.budgets) > len(pool):
            raise UserError(f"--budgets {max(self.budgets)}: the labelled pool (the train "
                            f"split {config.data.train_split!r} of {config.data.name_or_path}, "
                            f"less any carved evaluation split) has {len(pool)} examples; use "
                            f"budgets up to {len(pool)}")
        self._check_test_split()
        batch = int(config.train.batch_size)
        self.trials = [Trial(start, spec, n, seed, trial_steps(n, batch, self.epochs,
                                                               self.min_steps))
                       for n in self.budgets for seed in self.seeds
                       for start, spec in self.starts.items()]
        self.stopped: dict[str, Any] | None = None
        self._attempted: set[Trial] = set()

    def _check_test_split(self) -> None:
        split, data = self.test_split, self.config.data
        if not split:
            return
        if split == str(data.train_split):
            raise UserError(f"--test_split {split!r} is the train split (data.train_split): "
                            "the curve would score examples it trained on")
        loader = SplitLoader(data)
        if split not in loader.splits() and split != self.eval_split:
            raise loader.missing_split(split)

    @property
    def rule(self) -> str:
        return (f"steps = max({self.min_steps}, ceil({self.epochs:g} * N / "
                f"{int(self.config.train.batch_size)}))")

    def folder_of(self, trial: Trial) -> Path:
        return self.folder / trial.start / f"n{trial.n}" / f"seed{trial.seed}"

    def trial_config(self, trial: Trial) -> ml_collections.ConfigDict:
        """The config with the trial's start, budget, seed and steps; evaluated at its last
        step only. Checkpoints keep the config's interval when it is shorter (a killed trial
        loses at most that much), else one at the end."""
        every = int(self.config.checkpoint.every_steps)
        return apply_params(self.config, {
            "model.name_or_path": trial.spec, "data.train_examples": trial.n,
            "data.seed": trial.seed, "train.seed": trial.seed, "train.max_steps": trial.steps,
            "eval.every_steps": trial.steps,
            "checkpoint.every_steps": every if 0 < every < trial.steps else trial.steps})

    # -- running

    def run(self) -> dict[str, Any]:
        """Take trials until none is left that no live worker holds; then the results."""
        self._check_finished()
        while (trial := self._claim()) is not None:
            self._attempted.add(trial)
            if self._run(trial):
                break
            if self._status(trial) not in ("finished", "failed"):  # never loop on one trial
                raise UserError(f"trial {trial.name} ended without its eval results in "
                                f"{self.folder_of(trial)}; is the evaluation split empty?")
            self.write_results()
        return self.write_results()

    def _check_finished(self) -> None:
        """Refuse (before training) a finished trial whose run differs from the plan: its
        result would sit in the table as if it were the plan's."""
        for trial in self.trials:
            wd = Workdir(self.folder_of(trial))
            if not wd.results_file.is_file():
                continue
            saved = wd.read_config()
            if saved is None:
                continue
            diff = _differences(saved, from_dict(self.trial_config(trial).to_dict()))
            if diff:
                shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in diff.items())
                raise UserError(f"{wd.path} finished with other settings ({shown}); use a new "
                                "--workdir, or the flags and config it was run with")

    def _status(self, trial: Trial) -> str:
        """'finished' | 'failed' | 'unrecorded' (finished, its record not written yet) |
        'open' (not started, or interrupted)."""
        folder = self.folder_of(trial)
        record = _read_json(folder / RECORD)
        if record.get("failure"):
            return "failed"
        if not (folder / "eval_results.json").is_file():
            return "open"
        if "seconds" in record and (not self.test_split or "test" in record):
            return "finished"
        return "unrecorded"

    def _claim(self) -> Trial | None:
        """The first trial that is not finished and that no live worker holds, its lease
        written (under the folder lock, so two workers never take one trial)."""
        with folder_lock(self.folder):
            for trial in self.trials:
                if trial in self._attempted:
                    continue
                status = self._status(trial)
                folder = self.folder_of(trial)
                if status == "finished":
                    if not self.keep and not (folder / LEASE).is_file():
                        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # left by a kill
                    continue
                if status == "failed":
                    continue
                lease = _read_json(folder / LEASE)
                if lease and lease_alive(lease):
                    continue
                if lease:
                    log.warning("trial %s continues (its worker, pid %s on %s, %s), from its "
                                "newest checkpoint if it saved one", trial.name,
                                lease.get("pid"), lease.get("host"),
                                "stopped" if lease.get("released") else "died")
                write_lease(folder)
                return trial
        return None

    def _run(self, trial: Trial) -> bool:
        """Train (or finish recording) one trial; True when a signal stopped it (its checkpoint
        saved and its lease released, for the next start to continue)."""
        folder = self.folder_of(trial)
        record = _read_json(folder / RECORD)
        with Lease(folder) as lease:
            results = Workdir(folder).read_results()
            if results is None:
                log.info("trial %s: training %d steps on %d examples in %s", trial.name,
                         trial.steps, trial.n, folder)
                t0 = time.perf_counter()
                try:
                    results = train_and_evaluate(self.trial_config(trial), folder)
                except TrainingDiverged as e:
                    log.warning("trial %s diverged: %s", trial.name, e)
                    shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                    self._record(folder, trial, failure="diverged", reason=str(e)[:2000])
                    return False
                seconds = float(record.get("seconds_so_far", 0.0)) + time.perf_counter() - t0
                if "stopped" in results:
                    lease.release()
                    self._record(folder, trial, seconds_so_far=round(seconds, 1))
                    self.stopped = {"trial": trial.name, "step": results["step"]}
                    log.warning("trial %s stopped (%s) with its checkpoint at step %s; the same "
                                "command continues it", trial.name, results["stopped"],
                                results["step"])
                    return True
                record.update(seconds=round(seconds, 1),
                              compile_seconds=results.get("compile_seconds"))
            else:
                log.info("trial %s: finished; recording it", trial.name)
            test = record.get("test")
            if self.test_split and test is None:
                test = self._test_metrics(folder)
            self._record(folder, trial, seconds=record.get("seconds"),
                         compile_seconds=record.get("compile_seconds"),
                         **({"test": test} if self.test_split else {}))
            log.info("trial %s: %s=%.4f after %s steps", trial.name, self.metric,
                     float(results[self.metric]), results.get("step"))
            if not self.keep:
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        return False

    def _test_metrics(self, folder: Path) -> dict[str, Any]:
        """The final model's scalar metrics on `test_split` ({} when it has no checkpoint left
        to evaluate: a trial that finished before --test_split was given, without
        --keep_checkpoints)."""
        from flax_sentiment.evaluation.evaluate import evaluate_checkpoint

        if not (folder / "checkpoints").is_dir():
            log.warning("%s: no checkpoint left to evaluate on %r", folder, self.test_split)
            return {}
        report = evaluate_checkpoint(folder, split=self.test_split)
        return {"split": self.test_split, **{k: float(report.metrics[k])
                                             for k in SCALAR_METRICS if k in report.metrics}}

    def _record(self, folder: Path, trial: Trial, **fields: Any) -> None:
        data = {"start": trial.start, "spec": trial.spec, "n": trial.n, "seed": trial.seed,
                "steps": trial.steps, **fields}
        tmp = folder / f".{RECORD}.tmp"
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(folder / RECORD)

    # -- results

    def rows(self) -> list[dict[str, Any]]:
        """One row per trial that has an outcome (finished or failed), in plan order."""
        out = []
        for trial in self.trials:
            status = self._status(trial)
            if status == "open":
                continue
            folder = self.folder_of(trial)
            record = _read_json(folder / RECORD)
            row: dict[str, Any] = {"start": trial.start, "spec": trial.spec, "n": trial.n,
                                   "seed": trial.seed, "steps": trial.steps,
                                   "status": "failed: " + record["failure"]
                                   if status == "failed" else "finished"}
            results = _read_json(folder / "eval_results.json")
            if results:
                row["steps"] = results.get("step", trial.steps)
            for key in SCALAR_METRICS:
                row[key] = results.get(key)
            row["seconds"] = record.get("seconds")
            row["compile_seconds"] = record.get("compile_seconds")
            if self.test_split:
                test = record.get("test") or {}
                for key in SCALAR_METRICS:
                    row[f"test_{key}"] = test.get(key)
            out.append(row)
        return out

    def summary(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per start and N: mean, sample std (None for one value), count and the values of the
        metric on the curve's split (`test_split` when given, else the evaluation split)."""
        prefix = "test_" if self.test_split else ""
        finished = [r for r in rows if r["status"] == "finished"]

        def stats(values: list[float]) -> dict[str, Any]:
            a = np.asarray(values, dtype=float)
            return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else None,
                    "count": int(a.size), "values": a.tolist()}

        starts: dict[str, Any] = {}
        for name, spec in self.starts.items():
            points = []
            for n in self.budgets:
                mine = [r for r in finished if r["start"] == name and r["n"] == n
                        and r.get(prefix + self.metric) is not None]
                if not mine:
                    continue
                point = {"n": n, "steps": mine[0]["steps"], "seeds": [r["seed"] for r in mine],
                         **stats([r[prefix + self.metric] for r in mine])}
                if prefix:
                    point["eval_split"] = stats([r[self.metric] for r in mine])
                points.append(point)
            starts[name] = {"spec": spec, "points": points}
        return {"metric": self.metric, "split": self.test_split or self.eval_split,
                "eval_split": self.eval_split, "rule": self.rule, "epochs": self.epochs,
                "min_steps": self.min_steps, "batch_size": int(self.config.train.batch_size),
                "budgets": self.budgets, "seeds": self.seeds, "trials": len(self.trials),
                "finished": len(finished), "failed": len(rows) - len(finished),
                "starts": starts, "csv": str(self.folder / "curve.csv"),
                "plot": str(self.folder / "curve.png")}

    def write_results(self) -> dict[str, Any]:
        """curve.csv, curve.json and curve.png as the trials on disk stand (any worker's)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        summary = self.summary(rows)
        if self.stopped:
            summary["stopped"] = self.stopped
        with folder_lock(self.folder):  # workers finishing together write whole files in turn
            columns = ["start", "spec", "n", "seed", "steps", "status", *SCALAR_METRICS,
                       "seconds", "compile_seconds"]
            if self.test_split:
                columns += [f"test_{k}" for k in SCALAR_METRICS]
            _write_atomic(self.folder / "curve.csv", _csv(rows, columns))
            _write_atomic(self.folder / "curve.json", json.dumps(summary, indent=2))
            self._plot(summary)
        return summary

    def _plot(self, summary: Mapping[str, Any]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, start in summary["starts"].items():
            points = start["points"]
            if not points:
                continue
            ax.errorbar([p["n"] for p in points], [p["mean"] for p in points],
                        yerr=[p["std"] or 0.0 for p in points], marker="o", capsize=3,
                        label=name)
        ax.set_xscale("log")
        ax.set_xticks(self.budgets)
        ax.set_xticklabels([str(n) for n in self.budgets])
        ax.minorticks_off()
        ax.set_xlabel("labelled training examples N (log scale)")
        ax.set_ylabel(f"{self.metric} on {summary['split']!r}")
        ax.set_title(f"Learning curve: mean +- std over seeds {self.seeds}\n{self.rule}",
                     fontsize=10)
        ax.grid(True, alpha=0.3)
        if any(s["points"] for s in summary["starts"].values()):
            ax.legend()
        tmp = self.folder / ".curve.png.tmp"
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        tmp.replace(self.folder / "curve.png")

    def table(self, summary: Mapping[str, Any]) -> str:
        """Start x N: mean +- std (count), for the console."""
        lines = [f"{summary['finished']} of {summary['trials']} trials finished"
                 + (f", {summary['failed']} failed" if summary["failed"] else "")
                 + f" in {self.folder}; {self.metric} on {summary['split']!r} ({self.rule}):"]
        width = max(len(n) for n in self.starts) + 2
        lines.append(" " * width + "".join(f"{f'N={n}':>24}" for n in self.budgets))
        for name, start in summary["starts"].items():
            cells = {p["n"]: p for p in start["points"]}
            row = name.ljust(width)
            for n in self.budgets:
                p = cells.get(n)
                text = "-" if p is None else (f"{p['mean']:.4f} +- {p['std']:.4f} ({p['count']})"
                                              if p["std"] is not None
                                              else f"{p['mean']:.4f} ({p['count']})")
                row += f"{text:>24}"
            lines.append(row)
        if "stopped" in summary:
            lines.append(f"stopped in trial {summary['stopped']['trial']} at step "
                         f"{summary['stopped']['step']}: the same command continues it")
        return "\n".join(lines)


def run_curve(config: ml_collections.ConfigDict, folder: str | Path, starts: Mapping[str, str],
              budgets: Sequence[int], seeds: Sequence[int], **options: Any) -> dict[str, Any]:
    """Check everything, run this worker's share of the trials, print the table."""
    curve = Curve(config, folder, starts, budgets, seeds, **options)
    summary = curve.run()
    print(curve.table(summary))
    return summary


# --------------------------------------------------------------------------------------------
# Files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def _differences(saved: ml_collections.ConfigDict, expected: ml_collections.ConfigDict
                 ) -> dict[str, tuple[Any, Any]]:
    """{'section.key': (saved, expected)} over what decides a trial's result (the model, data
    and train sections), for keys the saved run has (keys added to the code since are not
    differences)."""
    diff = {}
    for section in ("model", "data", "train"):
        for name, value in expected[section].items():
            key = f"{section}.{name}"
            if key in _IGNORED_KEYS or name not in saved.get(section, {}):
                continue
            old = saved[section][name]
            old = old.to_dict() if hasattr(old, "to_dict") else old
            new = value.to_dict() if hasattr(value, "to_dict") else value
            if json.dumps(old, default=list) != json.dumps(new, default=list):
                diff[key] = (old, new)
    return diff


def _csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(columns), extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
    return out.getvalue()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
