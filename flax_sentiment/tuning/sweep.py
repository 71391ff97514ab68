"""Hyperparameter search on Optuna, multi-seed runs and seed ensembles.

Every trial is an ordinary run (`train_and_evaluate`, in-process) in `SWEEP_DIR/trials/NNNN/`,
so it follows the workdir contract and resumes like any run. The numeric hyperparameters enter
the compiled train step as arguments (`steps.hyperparameters`), so trials that share shapes
share compiled programs (in memory and in the persistent compilation cache). The study lives in
an Optuna journal file in SWEEP_DIR (or any `--storage` URL): rerunning the command, here or on
another machine, adds a worker to the same study.

What a study guarantees (README, "Hyperparameter search"):
- Ctrl-C / SIGTERM in a trial saves its checkpoint and the worker exits 0; the trial stays
  open, and the same command continues that trial (same number) from its checkpoint. So does a
  trial whose worker died (its lease in the trial folder names a dead process, or has not been
  renewed for `LEASE_TIMEOUT`; a thread renews it while the trial runs, whatever it is doing).
- A trial that diverges (or runs out of device memory) is recorded as failed with its reason
  and the study goes on; any other error is recorded on the trial and stops the worker.
  `trials.csv` and `best.json` are rewritten after every trial.
- Trial 0 runs the config as given (its values must lie in the space: checked before anything
  runs), and is queued again until it has an outcome, so a sweep never ends worse than its
  config.
- Workers draw from their own sampler streams, and parameters already tried (or being tried)
  are never trained again: such a trial takes the earlier one's outcome.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
import shutil
import socket
import threading
import time
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import optuna
from optuna.trial import TrialState

from flax_sentiment import parallel
from flax_sentiment.config import metric_mode, option, validate
from flax_sentiment.errors import UserError
from flax_sentiment.training.loop import Hook, Loop, TrainingDiverged, train_and_evaluate
from flax_sentiment.workdir import Workdir

log = logging.getLogger(__name__)

LEASE = "lease.json"
LEASE_TIMEOUT = 600.0  # seconds without renewal after which another host may take a trial
LEASE_RENEW = 30.0  # seconds between renewals while a trial runs
STUDY = "sweep"
CONFIG_ORIGIN = "the config as given"  # trial 0's `origin` user attribute


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


def _same(a: Any, b: Any) -> bool:
    """Config value == choice, with tuples and lists alike and True not taken for 1."""
    if isinstance(a, list | tuple) or isinstance(b, list | tuple):
        return isinstance(a, list | tuple) and isinstance(b, list | tuple) and tuple(a) == tuple(b)
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def check_in_space(values: Mapping[str, Any], space: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a config whose own values (trial 0) lie outside the space: Optuna would reject
    the trial only once a worker reaches it, and the sweep would lose its baseline."""
    for key, value in values.items():
        spec = space[key]
        if "choices" in spec:
            ok = any(_same(value, c) for c in spec["choices"])
            where = f"choices {list(spec['choices'])}"
        else:
            ok = (isinstance(value, int | float) and not isinstance(value, bool)
                  and spec["low"] <= value <= spec["high"])
            where = f"range [{spec['low']}, {spec['high']}]"
        if not ok:
            raise UserError(f"config {key}={value!r} is outside sweep.space.{key} ({where}): "
                            "trial 0 trains the config as given, so its value must be in the "
                            f"space; set --config.{key} to a value in it, or widen the space")


# --------------------------------------------------------------------------------------------
# Trials


def lease_alive(lease: Mapping[str, Any]) -> bool:
    """Whether the worker that holds `lease` may still be running its trial."""
    if lease.get("released"):
        return False
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease["pid"]), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
        return True
    return time.time() - float(lease.get("time", 0)) < LEASE_TIMEOUT


def write_lease(folder: Path, **fields: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{LEASE}.{os.getpid()}.{threading.get_ident()}"
    tmp.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                               "time": time.time(), **fields}))
    os.replace(tmp, folder / LEASE)


class Lease:
    """This worker's claim on a trial folder, renewed by a thread every `LEASE_RENEW` seconds
    for as long as the trial runs (tokenizing, a teacher pass, compiling and evaluating
    included), so no other worker takes a live trial. On exit it is removed (the trial has its
    outcome) or, after `release()`, marked released: the trial is open and any worker's next
    start continues it."""

    def __init__(self, folder: Path):
        self.folder, self.released = folder, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="sweep-lease")

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_RENEW):
            with contextlib.suppress(OSError):
                write_lease(self.folder)

    def release(self) -> None:
        self.released = True

    def __enter__(self) -> Lease:
        write_lease(self.folder)
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.released or (exc_type is not None and not issubclass(exc_type, Exception)):
            write_lease(self.folder, released=True)  # Ctrl-C twice, SystemExit: still open
        else:
            (self.folder / LEASE).unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path) -> Any:
    """An exclusive lock on the sweep folder, between workers that share it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _out_of_memory(e: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or isinstance(e, MemoryError)


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

        validate(config)  # eval.metric among them: the objective must be a computed metric
        parallel.initialize_distributed(config)
        self.config, self.folder = config, Path(folder).expanduser().absolute()
        self.space = search_space(config)
        check_in_space(config_values(config, self.space), self.space)
        if not str(option(config.data, "eval_split", "")):
            raise UserError("config data.eval_split='': a sweep compares its trials by their "
                            f"evaluation ({config.eval.metric}), so it needs an evaluation "
                            "split; name one (data.eval_split, or data.validation_size to carve "
                            "it from the train split)")
        if config.sweep.sampler not in ("tpe", "random"):
            raise UserError(f"config sweep.sampler={config.sweep.sampler!r}: tpe or random")
        if config.sweep.pruner not in ("median", "hyperband", "none"):
            raise UserError(f"config sweep.pruner={config.sweep.pruner!r}: median, hyperband "
                            "or none")
        Workdir(self.folder).check_usable()
        self.study, self.stopped = None, False
        if not parallel.is_main_process():
            return  # only process 0 talks to Optuna
        self.shared_storage = bool(storage)
        self.storage = self._storage(storage)
        direction = "maximize" if metric_mode(config) == "max" else "minimize"
        self.study = optuna.create_study(study_name=STUDY, storage=self.storage,
                                         load_if_exists=True, direction=direction,
                                         pruner=self._pruner())
        stored = self.study.direction.name.lower()
        if stored != direction:  # Optuna keeps a resumed study's own direction silently
            raise UserError(f"{self.folder}: its study was created to {stored} "
                            f"eval.metric={config.eval.metric}, this config would {direction} "
                            f"it; set --config.eval.metric_mode={stored[:3]} to continue this "
                            "sweep, or start it in a new folder")

    def _storage(self, url: str | None) -> Any:
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

    def _sampler(self, worker: int) -> Any:
        """A sampler whose random stream is this worker's own (`worker` is its number in the
        study), so workers started together do not draw the same parameters; TPE treats the
        trials other workers are running as done (constant liar) and samples away from them."""
        entropy = [int(self.config.sweep.seed), worker]
        if self.shared_storage:  # workers on other machines count their own numbers
            entropy.append(zlib.crc32(socket.gethostname().encode()))
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        if self.config.sweep.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)

    def _pruner(self) -> Any:
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
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        target = int(self.config.sweep.trials)
        with folder_lock(self.folder):
            self._enqueue_config()
            worker = self._register_worker()
        self.study.sampler = self._sampler(worker)
        while (finished := self._finished()) < target:
            failed = self._count(TrialState.FAIL)
            if failed > target:
                raise UserError(f"{failed} trials of the study in {self.folder} failed (see "
                                "fail_reason in trials.csv): stopping instead of trying more; "
                                "narrow sweep.space (e.g. lower learning rates)")
            trial, params = self._next_trial()
            self.stopped = trial is not None and self._run(trial, params)
            self.write_results()
            if self.stopped:
                return
        log.info("the study has %d finished trials (sweep.trials=%d)", finished, target)

    def _follow(self) -> None:
        """Run the trials process 0 announces, until it says the sweep is over."""
        while (message := _broadcast_message(None)) is not None:
            hook = PruningHook(None, self.config.eval.metric, Path(message["workdir"]))
            config = apply_params(self.config, message["params"])
            try:
                train_and_evaluate(config, message["workdir"], hooks=[
                    Hook(hook, every=max(int(config.eval.every_steps), 1))])
            except Exception as e:  # process 0 records the trial; its next message follows
                if not (isinstance(e, TrainingDiverged) or _out_of_memory(e)):
                    raise

    def _count(self, *states: Any) -> int:
        return len(self.study.get_trials(deepcopy=False, states=states))

    def _finished(self) -> int:
        return self._count(TrialState.COMPLETE, TrialState.PRUNED)

    def _register_worker(self) -> int:
        """This worker's number in the study (under the folder lock)."""
        path = self.folder / "workers"
        try:
            number = int(path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            number = 0
        path.write_text(str(number + 1))
        return number

    def _enqueue_config(self) -> None:
        """Queue trial 0 (the config's own values) unless it is queued, running or has its
        outcome (complete, pruned, or diverged: the same config diverges again). Under the
        folder lock, so workers started together queue it once."""
        for t in self.study.get_trials(deepcopy=False):
            if t.user_attrs.get("origin") != CONFIG_ORIGIN:
                continue
            if t.state != TrialState.FAIL or t.user_attrs.get("failure") == "diverged":
                return
        self.study.enqueue_trial(config_values(self.config, self.space),
                                 user_attrs={"origin": CONFIG_ORIGIN})

    def _next_trial(self) -> tuple[Any, dict[str, Any]]:
        """(trial, its parameters): an open trial nobody runs (its worker was stopped or died),
        continued under its own number, or a new one. Chosen under the folder lock, so a
        parameter set is taken by one worker only; a new trial whose parameters another trial
        already has takes that trial's outcome instead of training (trial None)."""

        with folder_lock(self.folder):
            trial = self._claim_open_trial()
            if trial is None:
                trial = self.study.ask()
            params = suggest(trial, self.space)
            folder = Path(trial.user_attrs.get("workdir")
                          or self.folder / "trials" / f"{trial.number:04d}")
            trial.set_user_attr("workdir", str(folder))
            write_lease(folder)
            same = self._same_params(trial.number, params)
            if same is None:
                return trial, params
        (folder / LEASE).unlink(missing_ok=True)
        trial.set_user_attr("duplicate_of", same.number)
        log.info("trial %d: the parameters of trial %d (%s), not trained again", trial.number,
                 same.number, same.state.name.lower())
        if same.state == TrialState.COMPLETE:
            self.study.tell(trial, same.value)
        else:
            self.study.tell(trial, state=TrialState.PRUNED)
        return None, params

    def _same_params(self, number: int, params: Mapping[str, Any]) -> Any:
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        for t in self.study.get_trials(deepcopy=False, states=states):
            if t.number != number and t.params == dict(params):
                return t
        return None

    def _claim_open_trial(self) -> Any:
        """A RUNNING trial whose lease was released (Ctrl-C, SIGTERM) or whose worker died,
        claimed when `_next_trial`, still under the lock, writes this worker's lease; RUNNING
        trials that never wrote a lease and are older than `LEASE_TIMEOUT` are marked failed."""
        now = time.time()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            folder = t.user_attrs.get("workdir")
            lease_file = Path(folder) / LEASE if folder else None
            if lease_file is None or not lease_file.is_file():
                started = t.datetime_start.timestamp() if t.datetime_start else now
                if not folder and now - started > LEASE_TIMEOUT:
                    self.study.tell(t.number, state=TrialState.FAIL)
                continue
            try:
                lease = json.loads(lease_file.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if lease_alive(lease):
                continue
            log.warning("trial %d continues (its worker, pid %s on %s, %s) in %s, from its "
                        "newest checkpoint if it saved one", t.number, lease.get("pid"),
                        lease.get("host"), "stopped" if lease.get("released") else "died",
                        folder)
            return optuna.trial.Trial(self.study, t._trial_id)
        return None

    def _run(self, trial: Any, params: dict[str, Any]) -> bool:
        """Train one trial and tell the study its outcome; True when a signal stopped it (the
        trial stays open, its checkpoint saved, for the next start to continue)."""

        folder = Path(trial.user_attrs["workdir"])
        config = apply_params(self.config, params)
        log.info("trial %d: %s", trial.number, params)
        t0 = time.perf_counter()
        hook = PruningHook(trial, self.config.eval.metric, folder)
        with Lease(folder) as lease:
            _broadcast_message({"params": params, "workdir": str(folder)})
            try:
                results = train_and_evaluate(config, folder, hooks=[
                    Hook(hook, every=max(int(config.eval.every_steps), 1))])
            except TrainingDiverged as e:
                self._fail(trial, "diverged", str(e))
                return False
            except Exception as e:
                if _out_of_memory(e):
                    self._fail(trial, "out of memory", f"{type(e).__name__}: {e}")
                    return False
                self._fail(trial, "error", f"{type(e).__name__}: {e}")
                raise
            if "stopped" in results:
                lease.release()
                log.warning("trial %d stopped (%s) with its checkpoint at step %s; the same "
                            "command continues it", trial.number, results["stopped"],
                            results["step"])
                return True
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
            self.study.tell(trial, state=TrialState.PRUNED)
            return False
        trial.set_user_attr("best_step", results.get("best_step"))
        for key in ("accuracy", "f1_macro", "loss"):
            if key in results:
                trial.set_user_attr(f"final_{key}", results[key])
        self._keep_best(trial.number, results["best_value"], folder)
        # The objective is the best evaluation during the trial: the checkpoint kept for it.
        self.study.tell(trial, float(results["best_value"]))
        return False

    def _fail(self, trial: Any, failure: str, reason: str) -> None:
        """Record a failed trial with its reason; its checkpoints are of no use to keep."""
        log.warning("trial %d failed (%s): %s", trial.number, failure, reason)
        trial.set_user_attr("failure", failure)
        trial.set_user_attr("fail_reason", reason[:2000])
        shutil.rmtree(Path(trial.user_attrs["workdir"]) / "checkpoints", ignore_errors=True)
        self.study.tell(trial, state=TrialState.FAIL)

    def _keep_best(self, number: int, value: float, folder: Path) -> None:
        """Only the best `sweep.keep` completed trials (this one included) keep checkpoints."""
        done = [(t.value, t.number, Path(t.user_attrs["workdir"])) for t in
                self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if "workdir" in t.user_attrs and "duplicate_of" not in t.user_attrs
                and t.number != number] + [(value, number, folder)]
        sign = -1 if metric_mode(self.config) == "max" else 1
        for _, _, dropped in sorted(done, key=lambda d: (sign * d[0], d[1]))[
                int(self.config.sweep.keep):]:
            shutil.rmtree(dropped / "checkpoints", ignore_errors=True)

    # -- results

    def write_results(self) -> tuple[Any, dict[str, Any]]:
        """trials.csv and best.json as the study stands (after every trial)."""
        frame = self.study.trials_dataframe(attrs=("number", "value", "state", "params",
                                                   "user_attrs", "duration"))
        frame.to_csv(self.folder / "trials.csv", index=False)
        summary: dict[str, Any] = {"trials_csv": str(self.folder / "trials.csv"),
                                   "metric": self.config.eval.metric,
                                   "finished": self._finished(),
                                   "failed": self._count(TrialState.FAIL)}
        best = self._best_trial()
        if best is not None:
            summary.update(best_trial=best.number, best_value=best.value,
                           best_params=best.params, best_workdir=best.user_attrs["workdir"])
        (self.folder / "best.json").write_text(json.dumps(summary, indent=2, default=str))
        return frame, summary

    def _best_trial(self) -> Any:
        """The best trial that trained (a duplicate's value is its original's), the earliest
        of equals."""
        trained = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                   if "duplicate_of" not in t.user_attrs]
        sign = -1 if metric_mode(self.config) == "max" else 1
        return min(trained, key=lambda t: (sign * t.value, t.number), default=None)

    def report(self) -> dict[str, Any]:
        """trials.csv, plots, the best trial (and its score on `sweep.test_split`), a table."""
        if self.study is None:
            return {}
        frame, summary = self.write_results()
        best = self._best_trial()
        if self.stopped:  # a signal: the table only, and exit soon
            print(self._table(frame, summary))
            return summary
        if best is not None:
            summary["test"] = self._test_score(best)
        summary["plots"] = self._plots(self._count(TrialState.COMPLETE))
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
        from flax_sentiment.evaluation.evaluate import evaluate_checkpoint

        try:
            report = evaluate_checkpoint(best.user_attrs["workdir"], step="best", split=split)
        except UserError as e:
            log.warning("best trial not evaluated on %r: %s", split, e)
            return None
        return {"split": split, **{k: report.metrics[k] for k in ("accuracy", "f1_macro")}}

    def _plots(self, complete: int) -> list[str]:
        import matplotlib

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
                             "user_attrs_compile_seconds", "user_attrs_duplicate_of",
                             "user_attrs_failure") if c in frame.columns]
        shown = frame[cols + extra].rename(columns=lambda c: c.replace("params_", "")
                                           .replace("user_attrs_", ""))
        lines = [f"{len(frame)} trials in {self.folder} ({summary['metric']}, the best "
                 "evaluation of each trial; 'duplicate_of': parameters already tried, that "
                 "trial's outcome; 'failure': see fail_reason in trials.csv)",
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
    probabilities of the K final models) on the eval split.

    Ctrl-C / SIGTERM stops the seed being trained at a checkpoint and the runner with it (no
    further seed starts; the summary so far counts the finished seeds only, and no ensemble
    takes the half-trained model); the same command continues that seed, and finished seeds
    are not trained again."""
    from flax_sentiment.evaluation.evaluate import evaluate_ensemble

    if seeds < 2:
        raise UserError(f"--seeds {seeds}: need at least 2 seeds for a spread")
    if not str(option(config.data, "eval_split", "")):
        raise UserError("config data.eval_split='': --seeds compares and ensembles the final "
                        "models on the evaluation split; name one (data.eval_split, or "
                        "data.validation_size to carve it from the train split)")
    folder = Path(folder).expanduser().absolute()
    Workdir(folder).check_usable()
    workdirs, results = [], []
    for i in range(seeds):
        seed = int(config.train.seed) + i
        workdir = folder / "seeds" / f"seed{seed}"
        run_config = apply_params(config, {"train.seed": seed})
        log.info("seed %d of %d: %s", i + 1, seeds, workdir)
        result = train_and_evaluate(run_config, workdir)
        if "stopped" in result:
            log.warning("stopped in seed %d of %d (%s, checkpoint at step %s); %d seed(s) "
                        "finished. The same command continues it.", i + 1, seeds,
                        result["stopped"], result["step"], len(results))
            partial = seed_summary(results, requested=seeds)
            partial["stopped"] = {"seed": seed, "step": result["step"]}
            (folder / "seeds.json").write_text(json.dumps(partial, indent=2))
            print(format_seed_summary(partial))
            return partial
        results.append(result)
        workdirs.append(workdir)
    summary = seed_summary(results, requested=seeds)
    ensemble = evaluate_ensemble(workdirs)
    summary["ensemble"] = {k: ensemble.metrics[k] for k in ("accuracy", "f1_macro", "loss")}
    summary["workdirs"] = [str(w) for w in workdirs]
    split = str(config.sweep.test_split)
    if split:  # the same final models on a split nothing was chosen on
        from flax_sentiment.evaluation.evaluate import ensemble_of, evaluate_checkpoint

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


def seed_summary(results: list[Mapping[str, Any]], requested: int | None = None
                 ) -> dict[str, Any]:
    """Mean, sample std, min, max of each metric over the finished runs `results` (`seeds`
    counts them; `requested`, when given, is how many were asked for)."""
    out: dict[str, Any] = {"seeds": len(results)}
    if requested is not None:
        out["requested"] = requested
    for key in ("accuracy", "f1_macro", "precision_macro", "recall_macro", "loss", "ece"):
        values = np.asarray([float(r[key]) for r in results if key in r])
        if values.size < 2:
            continue
        out[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)),
                    "min": float(values.min()), "max": float(values.max()),
                    "values": values.tolist()}
    return out


def format_seed_summary(summary: Mapping[str, Any]) -> str:
    of = (f" of {summary['requested']}" if summary.get("requested", summary["seeds"])
          != summary["seeds"] else "")
    lines = [f"{summary['seeds']}{of} seeds finished (final evaluation of each; std is the "
             "sample std):"]
    if "stopped" in summary:
        lines.append(f"  stopped in seed {summary['stopped']['seed']} at step "
                     f"{summary['stopped']['step']}: the same command continues it")
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

