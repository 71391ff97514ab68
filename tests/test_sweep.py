"""Hyperparameter search, multi-seed runs and seed ensembles on a tiny BERT and real SST-2 rows."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from flax_sentiment.errors import UserError
from flax_sentiment.evaluate import evaluate_checkpoint
from flax_sentiment.sweep import Sweep, run_seeds, search_space
from tests.helpers import REPO, sst2_subset, tiny_bert, tiny_config, write_config

LR = {"train": {"learning_rate": {"low": 1e-4, "high": 3e-3, "log": True}}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("sweep")
    return {"model": tiny_bert(root / "model"), "data": sst2_subset(root / "sst2", 192, 64),
            "root": root}


def _config(tiny, **overrides):
    c = tiny_config(tiny["model"], tiny["data"], **{"eval.every_steps": 4,
                                                    "checkpoint.every_steps": 4, **overrides})
    c.sweep.space = LR
    c.sweep.test_split = ""
    c.sweep.keep = 1
    return c


def _study(folder):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(folder / "study.journal")))
    return optuna.load_study(study_name="sweep", storage=storage)


class PruneAllButTrialZero(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number > 0


def test_sweep_end_to_end_and_a_pruned_trial_stops(tiny, tmp_path):
    # "Best" = the highest eval loss: an early evaluation, so best and last differ.
    config = _config(tiny, **{"eval.metric": "loss", "eval.metric_mode": "max"})
    config.sweep.trials = 3
    sweep = Sweep(config, tmp_path / "sweep")
    sweep.study.pruner = PruneAllButTrialZero()
    sweep.run()
    summary = sweep.report()
    trials = _study(tmp_path / "sweep").trials
    assert [t.number for t in trials] == [0, 1, 2]
    # Trial 0 is the config as given; the others are pruned at their first evaluation.
    assert trials[0].params == {"train.learning_rate": config.train.learning_rate}
    assert trials[0].state == TrialState.COMPLETE
    assert [t.state for t in trials[1:]] == [TrialState.PRUNED] * 2
    for t in trials[1:]:
        folder = tmp_path / "sweep" / "trials" / f"{t.number:04d}"
        steps = [json.loads(x)["step"] for x in (folder / "metrics.jsonl").read_text().splitlines()]
        assert max(steps) == 4 < config.train.max_steps  # stopped at once
        assert not (folder / "checkpoints").exists()
    # The objective is the best evaluation of the trial, not its last one.
    rows = [json.loads(x) for x in
            (tmp_path / "sweep" / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    assert trials[0].value == max(evals) == summary["best_value"] != evals[-1]
    csv = (tmp_path / "sweep" / "trials.csv").read_text().splitlines()
    assert len(csv) == 4 and "params_train.learning_rate" in csv[0]
    for name in ("optimization_history.png", "slice.png"):
        assert (tmp_path / "sweep" / name).stat().st_size > 5000


@pytest.mark.parametrize("space,message", [
    ({"train": {"learnin_rate": {"low": 1e-5, "high": 1e-4}}},
     "sweep.space.train.learnin_rate: train.learnin_rate is not a config key"),
    ({"train": {"learning_rate": {"low": 1e-3, "high": 1e-4}}}, "empty range"),
    ({"train": {"batch_size": {"choices": ()}}}, "choices must be a non-empty list"),
])
def test_bad_search_space(tiny, space, message):
    config = _config(tiny)
    config.sweep.space = space
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        search_space(config)


def test_bad_metric_or_storage_writes_nothing(tiny, tmp_path):
    config = _config(tiny, **{"eval.metric": "acuracy"})
    with pytest.raises(UserError, match="eval.metric='acuracy': must be a computed metric"):
        Sweep(config, tmp_path / "a")
    with pytest.raises(UserError, match="--storage nosuch://x: cannot be opened"):
        Sweep(_config(tiny), tmp_path / "b", storage="nosuch://x")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _sweep_cmd(config_file, folder, *extra):
    return [sys.executable, "scripts/sweep.py", f"--config={config_file}",
            f"--workdir={folder}", *extra]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "PYTHONUNBUFFERED": "1"}


def test_sigkill_then_rerun_finishes_the_study(tiny, tmp_path):
    """A worker killed in trial 1: the rerun resumes trial 1 from its checkpoint (as a new
    trial with the same parameters) and finishes; no trial is lost or run twice."""
    config = _config(tiny, **{"train.max_steps": 40})
    config.sweep.trials, config.sweep.pruner = 3, "none"
    config_file = write_config(config, tmp_path / "config.py")
    folder = tmp_path / "sweep"
    proc = subprocess.Popen(_sweep_cmd(config_file, folder), cwd=REPO, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    target = folder / "trials" / "0001" / "checkpoints" / "8"
    deadline = time.time() + 300
    while not target.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rerun = subprocess.run(_sweep_cmd(config_file, folder), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 1 died" in rerun.stderr and "resumed from" in rerun.stderr
    trials = _study(folder).trials
    finished = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished) == 3 and [t.number for t in trials] == list(range(len(trials)))
    dead = trials[1]
    assert dead.state == TrialState.FAIL
    resumed = [t for t in finished if t.user_attrs.get("resumes") == 1]
    assert len(resumed) == 1 and resumed[0].params == dead.params
    assert resumed[0].user_attrs["workdir"] == dead.user_attrs["workdir"]
    params = [tuple(t.params.items()) for t in finished]
    assert len(set(params)) == 3  # nothing ran twice
    rows = [json.loads(x) for x in (folder / "trials" / "0001" / "metrics.jsonl")
            .read_text().splitlines()]
    logged = [r["step"] for r in rows if "train/loss" in r]
    assert logged == sorted(set(logged)) and logged[-1] == 40  # resumed, not restarted
    assert "resumes" in (folder / "trials.csv").read_text().splitlines()[0]


def test_two_workers_share_one_study(tiny, tmp_path):
    config = _config(tiny)
    config.sweep.trials, config.sweep.pruner = 4, "none"
    config_file = write_config(config, tmp_path / "config.py")
    folder = tmp_path / "sweep"
    procs = [subprocess.Popen(_sweep_cmd(config_file, folder), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    trials = _study(folder).trials
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials))) and len(trials) >= 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    # The config's own values were enqueued once, by whichever worker came first.
    assert sum(t.params == {"train.learning_rate": config.train.learning_rate}
               for t in trials) == 1
    folders = {t.user_attrs["workdir"] for t in trials}
    assert len(folders) == len(trials)


def test_seeds_report_mean_std_and_the_ensemble(tiny, tmp_path):
    summary = run_seeds(_config(tiny), tmp_path / "seeds", 3)
    results = [json.loads((tmp_path / "seeds" / "seeds" / f"seed{s}" / "eval_results.json")
                          .read_text()) for s in range(3)]
    for key in ("accuracy", "f1_macro", "loss"):
        values = np.asarray([r[key] for r in results])
        assert summary[key]["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert summary[key]["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
        assert summary[key]["min"] == values.min() and summary[key]["max"] == values.max()
    reports = [evaluate_checkpoint(tmp_path / "seeds" / "seeds" / f"seed{s}") for s in range(3)]
    averaged = np.mean([r.probabilities for r in reports], axis=0)
    accuracy = float((averaged.argmax(-1) == reports[0].labels).mean())
    assert summary["ensemble"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert json.loads((tmp_path / "seeds" / "seeds.json").read_text())["seeds"] == 3


@pytest.mark.slow  # two workers sharing a study stay in the default suite (two_workers_share)
def test_two_processes_run_one_sweep(tiny, tmp_path):
    """A multi-host slice: process 0 talks to Optuna and broadcasts each trial's parameters
    (and pruning decisions); both processes train every trial together."""
    from tests.test_multihost import _free_port

    config = _config(tiny)
    config.sweep.trials, config.sweep.pruner = 2, "none"
    config_file = write_config(config, tmp_path / "config.py")
    folder, port = tmp_path / "sweep", _free_port()
    procs = [subprocess.Popen(
        _sweep_cmd(config_file, folder), cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
             "JAX_COORDINATOR_ADDRESS": f"localhost:{port}", "JAX_NUM_PROCESSES": "2",
             "JAX_PROCESS_ID": str(pid)}) for pid in range(2)]
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        errs.append(err)
    trials = _study(folder).trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert all(e.count("4 device(s), 2 process(es)") == 2 for e in errs)
    for t in trials:
        saved = json.loads((folder / "trials" / f"{t.number:04d}" / "eval_results.json")
                           .read_text())
        assert saved["step"] == config.train.max_steps
