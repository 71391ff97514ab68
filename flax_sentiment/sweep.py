"""Hyperparameter search on Optuna, multi-seed runs and seed ensembles.

Every trial is an ordinary run (`train_and_evaluate`, in-process) in `SWEEP_DIR/trials/NNNN/`,
so it follows the workdir contract and resumes like any run. The numeric hyperparameters enter
the compiled train step as arguments (`steps.hyperparameters`), so trials that share shapes
share compiled programs (in memory and in the persistent compilation cache). The study lives in
an Optuna journal file in SWEEP_DIR (or any `--storage` URL): rerunning the command, here or on
another machine, adds a worker to the same study. A trial whose worker died (its lease in the
trial folder names a dead process, or has not been renewed for `LEASE_TIMEOUT`) is enqueued
again with the same parameters and resumes from its own checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flax_sentiment import parallel
from flax_sentiment.config import validate
from flax_sentiment.errors import UserError
from flax_sentiment.train import Hook, Loop, train_and_evaluate
from flax_sentiment.workdir import Workdir

log = logging.getLogger(__name__)

LEASE = "lease.json"
LEASE_TIMEOUT = 600.0  # seconds without renewal after which another host may take a trial
STUDY = "sweep"


# --------------------------------------------------------------------------------------------
# The search space


def search_space(config: ml_collections.ConfigDict) -> dict[str, dict[str, Any]]:
    """{'train.learning_rate': {'low':..., 'high':..., 'log':...} | {'choices': (...)}, ...}
    from `config.sweep.space`; every key must exist in the config and every range be valid."""
    space: dict[str, dict[str, Any]] = {}

    def walk(node: Any, path: tuple[str, ...]) -> None:
        keys = set(node.keys())
        if keys & {"low", "high", "choices"}:
            space[".".join(path)] = dict(node.to_dict() if hasattr(node, "to_dict") else node)
            return
        for key in sorted(keys):
            walk(node[key], (*path, key))

    walk(config.sweep.space, ())
    for key, spec in space.items():
        where = f"config sweep.space.{key}"
        target: Any = config
        for part in key.split("."):
            if not hasattr(target, "keys") or part not in target:
                raise UserError(f"{where}: {key} is not a config key")
            target = target[part]
        if isinstance(target, Mapping) or hasattr(target, "keys"):
            raise UserError(f"{where}: {key} is a section, not a value")
        if "choices" in spec:
            if set(spec) - {"choices"} or not len(spec["choices"]):
                raise UserError(f"{where}: choices must be a non-empty list, alone")
            continue
        if set(spec) - {"low", "high", "log"} or not {"low", "high"} <= set(spec):
            raise UserError(f"{where}: give low and high (and optionally log), or choices")
        low, high = spec["low"], spec["high"]
        if not low < high:
            raise UserError(f"{where}: empty range (low {low} >= high {high})")
        if spec.get("log") and low <= 0:
            raise UserError(f"{where}: a log range needs low > 0 (got {low})")
        spec["int"] = isinstance(target, int) and not isinstance(target, bool)
    return space


def suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    params = {}
    for key, spec in space.items():
        if "choices" in spec:
            params[key] = trial.suggest_categorical(key, list(spec["choices"]))
        elif spec["int"]:
            params[key] = trial.suggest_int(key, int(spec["low"]), int(spec["high"]),
                                            log=bool(spec.get("log")))
        else:
            params[key] = trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                                              log=bool(spec.get("log")))
    return params


def apply_params(config: ml_collections.ConfigDict, params: Mapping[str, Any]
                 ) -> ml_collections.ConfigDict:
    out = copy.deepcopy(config)
    out.unlock()
    for key, value in params.items():
        *sections, name = key.split(".")
        node = out
        for part in sections:
            node = node[part]
        node[name] = value
    return out


def config_values(config: ml_collections.ConfigDict, space: Mapping[str, Any]
                  ) -> dict[str, Any]:
    """The config's own values of the searched keys: trial 0, so a sweep never ends worse."""
    values = {}
    for key in space:
        node: Any = config
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values


# --------------------------------------------------------------------------------------------
# Trials


def _alive(lease: Mapping[str, Any]) -> bool:
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease["pid"]), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(lease.get("time", 0)) < LEASE_TIMEOUT


def _write_lease(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LEASE}.{os.getpid()}"
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "time": time.time()}))
    os.replace(tmp, folder / LEASE)


class PruningHook:
    """Reports every evaluation to Optuna and stops a trial it prunes. Only process 0 talks to
    Optuna; the decision is broadcast so every process stops at the same step."""

    def __init__(self, trial: Any, metric: str, folder: Path):
        self.trial, self.metric, self.folder = trial, metric, folder

    def __call__(self, loop: Loop) -> str | None:
        if loop.eval_result is None:
            return None
        prune = False
        if self.trial is not None:
            self.trial.report(float(loop.eval_result[self.metric]), loop.step)
            prune = self.trial.should_prune()
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            prune = bool(multihost_utils.broadcast_one_to_all(np.int32(prune)))
        return f"pruned at step {loop.step}" if prune else None


def _broadcast_message(message: Any, size: int = 1 << 16) -> Any:
    """Process 0's JSON `message` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return message
    from jax.experimental import multihost_utils

    buffer = np.zeros(size, np.uint8)
    if parallel.is_main_process():
        data = json.dumps(message).encode()
        if len(data) > size:
            raise UserError(f"sweep parameters too large to broadcast ({len(data)} bytes)")
        buffer[:len(data)] = np.frombuffer(data, np.uint8)
    received = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
    return json.loads(bytes(received[received > 0]).decode())


class Sweep:
    """One worker of the study in `folder` (see the module docstring)."""

    def __init__(self, config: ml_collections.ConfigDict, folder: str | Path, *,
                 storage: str | None = None):
        import optuna

        validate(config)  # eval.metric among them: the objective must be a computed metric
        parallel.initialize_distributed(config)
        self.config, self.folder = config, Path(folder).expanduser().absolute()
        self.space = search_space(config)
        if config.sweep.sampler not in ("tpe", "random"):
            raise UserError(f"config sweep.sampler={config.sweep.sampler!r}: tpe or random")
        if config.sweep.pruner not in ("median", "hyperband", "none"):
            raise UserError(f"config sweep.pruner={config.sweep.pruner!r}: median, hyperband "
                            "or none")
        Workdir(self.folder).check_usable()
        self.study = None
        if not parallel.is_main_process():
            return  # only process 0 talks to Optuna
        self.storage = self._storage(storage)
        self.study = optuna.create_study(
            study_name=STUDY, storage=self.storage, load_if_exists=True,
            direction="maximize" if config.eval.metric_mode == "max" else "minimize",
            pruner=self._pruner())
        # A worker joining a study draws its own random start-up points.
        self.study.sampler = self._sampler(len(self.study.trials))

    def _storage(self, url: str | None) -> Any:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

        if url:
            try:
                return optuna.storages.get_storage(url)
            except Exception as e:  # bad URL, missing driver, unreachable server
                raise UserError(f"--storage {url}: cannot be opened ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''})") from None
        self.folder.mkdir(parents=True, exist_ok=True)
        path = str(self.folder / "study.journal")
        return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileOpenLock(path)))

    def _sampler(self, trials_so_far: int) -> Any:
        import optuna

        seed = int(self.config.sweep.seed) + trials_so_far
        if self.config.sweep.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed)

    def _pruner(self) -> Any:
        import optuna

        if self.config.sweep.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.config.sweep.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner()
        return optuna.pruners.MedianPruner(
            n_startup_trials=int(self.config.sweep.pruner_startup_trials), n_warmup_steps=0)

    # -- running

    def run(self) -> None:
        """Take trials until the study has `sweep.trials` finished ones. With several
        processes (a multi-host slice), process 0 talks to Optuna and the others follow."""
        if not parallel.is_main_process():
            self._follow()
            return
        try:
            self._lead()
        finally:
            _broadcast_message(None)  # tells the other processes that the sweep is over

    def _lead(self) -> None:
        import optuna
        from optuna.study import MaxTrialsCallback
        from optuna.trial import TrialState

        self._enqueue_config_once()
        self._recover_dead_trials()
        target = int(self.config.sweep.trials)
        if self._finished() >= target:
            log.info("the study already has %d finished trials", self._finished())
            return
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.study.optimize(
            self._objective, callbacks=[
                MaxTrialsCallback(target, states=(TrialState.COMPLETE, TrialState.PRUNED))],
            gc_after_trial=True)

    def _follow(self) -> None:
        """Run the trials process 0 announces, until it says the sweep is over."""
        while (message := _broadcast_message(None)) is not None:
            hook = PruningHook(None, self.config.eval.metric, Path(message["workdir"]))
            config = apply_params(self.config, message["params"])
            train_and_evaluate(config, message["workdir"], hooks=[
                Hook(hook, every=max(int(config.eval.every_steps), 1))])

    def _finished(self) -> int:
        from optuna.trial import TrialState

        return len(self.study.get_trials(deepcopy=False,
                                         states=(TrialState.COMPLETE, TrialState.PRUNED)))

    def _enqueue_config_once(self) -> None:
        marker = self.folder / "trial0.enqueued"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        self.study.enqueue_trial(config_values(self.config, self.space),
                                 user_attrs={"origin": "the config as given"})

    def _recover_dead_trials(self) -> None:
        """RUNNING trials whose worker died: marked failed, enqueued again with the same
        parameters and folder (so the new trial resumes from the dead one's checkpoint)."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            folder = Path(t.user_attrs.get("workdir", ""))
            lease_file = folder / LEASE
            if not t.user_attrs.get("workdir") or not lease_file.is_file():
                continue
            try:
                lease = json.loads(lease_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if _alive(lease):
                continue
            claimed = folder / f"{LEASE}.claimed.{os.getpid()}"
            try:
                os.rename(lease_file, claimed)  # only one worker wins the claim
            except FileNotFoundError:
                continue
            self.study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            log.warning("trial %d died (pid %s on %s); a new trial continues it in %s, from "
                        "its newest checkpoint if it saved one", t.number, lease.get("pid"),
                        lease.get("host"), folder)
            self.study.enqueue_trial(t.params, user_attrs={"workdir": str(folder),
                                                           "resumes": t.number,
                                                           "origin": t.user_attrs.get(
                                                               "origin", "")})

    def _objective(self, trial: Any) -> float:
        import optuna

        params = suggest(trial, self.space)
        folder = Path(trial.user_attrs.get("workdir")
                      or self.folder / "trials" / f"{trial.number:04d}")
        trial.set_user_attr("workdir", str(folder))
        _write_lease(folder)
        config = apply_params(self.config, params)
        _broadcast_message({"params": params, "workdir": str(folder)})
        log.info("trial %d: %s", trial.number, params)
        t0 = time.perf_counter()
        hook = PruningHook(trial, self.config.eval.metric, folder)
        try:
            results = train_and_evaluate(config, folder, hooks=[
                Hook(hook, every=max(int(config.eval.every_steps), 1)),
                Hook(lambda loop: _write_lease(folder), every=config.train.log_every_steps)])
        finally:
            (folder / LEASE).unlink(missing_ok=True)
        seconds = time.perf_counter() - t0
        trial.set_user_attr("seconds", round(seconds, 1))
        trial.set_user_attr("compile_seconds", results.get("compile_seconds"))
        trial.set_user_attr("steps", results.get("step"))
        log.info("trial %d: %s %s=%s (best at step %s), %.0f s, %.1f s compiling",
                 trial.number, results.get("stop_reason") or "finished",
                 self.config.eval.metric, results.get("best_value"), results.get("best_step"),
                 seconds, results.get("compile_seconds") or 0.0)
        if str(results.get("stop_reason", "")).startswith("pruned"):
            shutil.rmtree(folder / "checkpoints", ignore_errors=True)
            raise optuna.TrialPruned(results["stop_reason"])
        trial.set_user_attr("best_step", results.get("best_step"))
        for key in ("accuracy", "f1_macro", "loss"):
            if key in results:
                trial.set_user_attr(f"final_{key}", results[key])
        self._keep_best(trial.number, results["best_value"], folder)
        # The objective is the best evaluation during the trial: the checkpoint kept for it.
        return float(results["best_value"])

    def _keep_best(self, number: int, value: float, folder: Path) -> None:
        """Only the best `sweep.keep` completed trials (this one included) keep checkpoints."""
        from optuna.trial import TrialState

        done = [(t.value, t.number, Path(t.user_attrs["workdir"])) for t in
                self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "workdir" in t.user_attrs] + [(value, number, folder)]
        sign = -1 if self.config.eval.metric_mode == "max" else 1
        for _, _, dropped in sorted(done, key=lambda d: (sign * d[0], d[1]))[
                int(self.config.sweep.keep):]:
            shutil.rmtree(dropped / "checkpoints", ignore_errors=True)

    # -- results

    def report(self) -> dict[str, Any]:
        """trials.csv, plots, the best trial (and its score on `sweep.test_split`), a table."""
        from optuna.trial import TrialState

        if self.study is None:
            return {}

        frame = self.study.trials_dataframe(attrs=("number", "value", "state", "params",
                                                   "user_attrs", "duration"))
        frame.to_csv(self.folder / "trials.csv", index=False)
        summary: dict[str, Any] = {"trials_csv": str(self.folder / "trials.csv"),
                                   "metric": self.config.eval.metric}
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if complete:
            best = self.study.best_trial
            summary.update(best_trial=best.number, best_value=best.value,
                           best_params=best.params, best_workdir=best.user_attrs["workdir"])
            summary["test"] = self._test_score(best)
        summary["plots"] = self._plots(len(complete))
        (self.folder / "best.json").write_text(json.dumps(summary, indent=2, default=str))
        print(self._table(frame, summary))
        return summary

    def _test_score(self, best: Any) -> dict[str, Any] | None:
        split = str(self.config.sweep.test_split)
        if not split:
            return None
        if jax.process_count() > 1:  # the other processes have left: evaluate separately
            log.warning("several processes: evaluate the best trial on %r with "
                        "scripts/evaluate.py --workdir %s --best --split %s", split,
                        best.user_attrs["workdir"], split)
            return None
        from flax_sentiment.evaluate import evaluate_checkpoint

        try:
            report = evaluate_checkpoint(best.user_attrs["workdir"], step="best", split=split)
        except UserError as e:
            log.warning("best trial not evaluated on %r: %s", split, e)
            return None
        return {"split": split, **{k: report.metrics[k] for k in ("accuracy", "f1_macro")}}

    def _plots(self, complete: int) -> list[str]:
        import matplotlib
        import optuna

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as ov

        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        made = []
        makers = [("optimization_history", ov.plot_optimization_history),
                  ("slice", ov.plot_slice)]
        if complete >= 2:
            makers.append(("param_importances", ov.plot_param_importances))
        for name, make in makers:
            try:
                ax = make(self.study)
            except (ValueError, RuntimeError) as e:  # e.g. importances of constant params
                log.warning("no %s plot: %s", name, e)
                continue
            fig = (ax.flat[0] if isinstance(ax, np.ndarray) else ax).figure
            fig.set_size_inches(max(fig.get_size_inches()[0], 8), 5)
            path = self.folder / f"{name}.png"
            fig.savefig(path, dpi=110, bbox_inches="tight")
            plt.close(fig)
            made.append(str(path))
        return made

    def _table(self, frame: Any, summary: Mapping[str, Any]) -> str:
        cols = ["number", "state", "value"] + [c for c in frame.columns
                                               if c.startswith("params_")]
        extra = [c for c in ("user_attrs_steps", "user_attrs_seconds",
                             "user_attrs_compile_seconds", "user_attrs_resumes")
                 if c in frame.columns]
        shown = frame[cols + extra].rename(columns=lambda c: c.replace("params_", "")
                                           .replace("user_attrs_", ""))
        lines = [f"{len(frame)} trials in {self.folder} ({summary['metric']}, the best "
                 "evaluation of each trial; 'resumes' = the dead trial it continued)",
                 shown.to_string(index=False, float_format=lambda x: f"{x:.4g}")]
        if "best_trial" in summary:
            lines.append(f"best: trial {summary['best_trial']} {summary['metric']}="
                         f"{summary['best_value']:.4f} in {summary['best_workdir']}")
            test = summary.get("test")
            if test:
                lines.append(f"  on {test['split']!r} (not used to choose it): accuracy "
                             f"{test['accuracy']:.4f}, f1_macro {test['f1_macro']:.4f}. The "
                             "validation score above was chosen on, so it is optimistic.")
        return "\n".join(lines)


def run_sweep(config: ml_collections.ConfigDict, folder: str | Path, *,
              storage: str | None = None) -> dict[str, Any]:
    sweep = Sweep(config, folder, storage=storage)
    sweep.run()
    return sweep.report()


# --------------------------------------------------------------------------------------------
# Seeds and ensembles


def run_seeds(config: ml_collections.ConfigDict, folder: str | Path, seeds: int
              ) -> dict[str, Any]:
    """Train `config` with `seeds` seeds (train.seed, +1, ...) in FOLDER/seeds/seedN and report
    each metric as mean +- sample std (ddof=1), min..max, and the ensemble (averaged
    probabilities of the K final models) on the eval split."""
    from flax_sentiment.evaluate import evaluate_ensemble

    if seeds < 2:
        raise UserError(f"--seeds {seeds}: need at least 2 seeds for a spread")
    folder = Path(folder).expanduser().absolute()
    Workdir(folder).check_usable()
    workdirs, results = [], []
    for i in range(seeds):
        seed = int(config.train.seed) + i
        workdir = folder / "seeds" / f"seed{seed}"
        run_config = apply_params(config, {"train.seed": seed})
        log.info("seed %d of %d: %s", i + 1, seeds, workdir)
        results.append(train_and_evaluate(run_config, workdir))
        workdirs.append(workdir)
    summary = seed_summary(results)
    ensemble = evaluate_ensemble(workdirs)
    summary["ensemble"] = {k: ensemble.metrics[k] for k in ("accuracy", "f1_macro", "loss")}
    summary["workdirs"] = [str(w) for w in workdirs]
    split = str(config.sweep.test_split)
    if split:  # the same final models on a split nothing was chosen on
        from flax_sentiment.evaluate import ensemble_of, evaluate_checkpoint

        try:
            each = [evaluate_checkpoint(w, split=split) for w in workdirs]
        except UserError as e:
            log.warning("not evaluated on %r: %s", split, e)
        else:
            tested = ensemble_of(each)
            summary["test"] = {"split": split, **seed_summary([r.metrics for r in each]),
                               "ensemble": {k: tested.metrics[k]
                                            for k in ("accuracy", "f1_macro", "loss")}}
    (folder / "seeds.json").write_text(json.dumps(summary, indent=2))
    print(format_seed_summary(summary))
    return summary


def seed_summary(results: list[Mapping[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"seeds": len(results)}
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss", "ece"):
        values = np.asarray([float(r[key]) for r in results if key in r])
        if values.size < 2:
            continue
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                    "min": float(values.min()), "max": float(values.max()),
                    "values": values.tolist()}
    return out


def format_seed_summary(summary: Mapping[str, Any]) -> str:
    lines = [f"{summary['seeds']} seeds (final evaluation of each; std is the sample std):"]
    for key, v in summary.items():
        if isinstance(v, dict) and "mean" in v:
            lines.append(f"  {key:<16} {v['mean']:.4f} +- {v['std']:.4f}  "
                         f"({v['min']:.4f}..{v['max']:.4f})")
    if "ensemble" in summary:
        e = summary["ensemble"]
        lines.append(f"  ensemble         accuracy {e['accuracy']:.4f}, f1_macro "
                     f"{e['f1_macro']:.4f} (averaged probabilities of the {summary['seeds']} "
                     "models)")
    if "test" in summary:
        lines.append(f"on {summary['test']['split']!r}:")
        lines += format_seed_summary(summary["test"]).splitlines()[1:]
    return "\n".join(lines)

