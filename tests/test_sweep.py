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
from flax_sentiment.evaluation.evaluate import evaluate_checkpoint
from flax_sentiment.tuning.sweep import Sweep, run_seeds, search_space
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


def _start_and_signal(cmd, target, sig):
    """Start `cmd`, send `sig` once `target` (a checkpoint folder) exists; (returncode, stderr)."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not target.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _logged_steps(folder):
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def _no_holes(trials, n):
    """Trials 0..n-1, every one complete: no failed or open trial in the table."""
    assert [t.number for t in trials] == list(range(n))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n


def test_sigkill_then_rerun_finishes_the_study(tiny, tmp_path):
    """A worker killed in trial 1: the rerun continues trial 1 itself (same number, from its
    checkpoint) and finishes the study; no trial is lost, failed or run twice."""
    config = _config(tiny, **{"train.max_steps": 40})
    config.sweep.trials, config.sweep.pruner = 3, "none"
    config_file = write_config(config, tmp_path / "config.py")
    folder = tmp_path / "sweep"
    code, _ = _start_and_signal(_sweep_cmd(config_file, folder),
                                folder / "trials" / "0001" / "checkpoints" / "8", signal.SIGKILL)
    assert code == -signal.SIGKILL
    rerun = subprocess.run(_sweep_cmd(config_file, folder), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 1 continues" in rerun.stderr and "died" in rerun.stderr
    assert "resumed from" in rerun.stderr
    trials = _study(folder).trials
    _no_holes(trials, 3)
    assert len({tuple(t.params.items()) for t in trials}) == 3  # nothing ran twice
    logged = _logged_steps(folder / "trials" / "0001")
    assert logged == sorted(set(logged)) and logged[-1] == 40  # resumed, not restarted
    assert logged[0] == 2 and 8 in logged


def test_sigterm_in_trial_zero_saves_exits_zero_and_the_rerun_continues_it(tiny, tmp_path):
    """SIGTERM in trial 0 (the config as given): the trial saves its checkpoint, the worker
    writes the table and exits 0; the trial stays open, so the same command continues trial 0
    itself from that checkpoint, and the study ends with no hole."""
    config = _config(tiny, **{"train.max_steps": 40})
    config.sweep.trials, config.sweep.pruner = 2, "none"
    config_file = write_config(config, tmp_path / "config.py")
    folder = tmp_path / "sweep"
    code, err = _start_and_signal(_sweep_cmd(config_file, folder),
                                  folder / "trials" / "0000" / "checkpoints" / "8",
                                  signal.SIGTERM)
    assert code == 0, err[-3000:]
    assert "trial 0 stopped" in err and "Traceback" not in err
    (t0,) = _study(folder).trials
    assert t0.state == TrialState.RUNNING
    lease = json.loads((folder / "trials" / "0000" / "lease.json").read_text())
    assert lease["released"] is True
    assert "RUNNING" in (folder / "trials.csv").read_text()
    stopped_at = max(int(p.name) for p in (folder / "trials" / "0000" / "checkpoints").iterdir()
                     if p.name.isdigit())
    assert 8 <= stopped_at < 40
    rerun = subprocess.run(_sweep_cmd(config_file, folder), cwd=REPO, env=_env(),
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "trial 0 continues" in rerun.stderr and "stopped" in rerun.stderr
    assert f"resumed from {folder / 'trials' / '0000' / 'checkpoints'} at step {stopped_at}" \
        in rerun.stderr
    trials = _study(folder).trials
    _no_holes(trials, 2)
    assert trials[0].params == {"train.learning_rate": config.train.learning_rate}
    assert trials[0].user_attrs["origin"] == "the config as given"
    logged = _logged_steps(folder / "trials" / "0000")
    assert logged == sorted(set(logged)) and logged[-1] == 40
    assert not (folder / "trials" / "0000" / "lease.json").exists()
    rows = (folder / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and "RUNNING" not in "".join(rows)


def test_a_diverging_trial_is_recorded_and_the_study_goes_on(tiny, tmp_path):
    """A trial whose loss turns NaN fails with its reason; the next trials run, and trials.csv
    and best.json are written after each trial."""
    config = _config(tiny)
    config.sweep.space = {"train": {"learning_rate": {"low": 1e-4, "high": 1e31, "log": True}}}
    config.sweep.trials, config.sweep.pruner = 1, "none"
    sweep = Sweep(config, tmp_path / "sweep")
    sweep.study.enqueue_trial({"train.learning_rate": 1e30})  # AdamW steps of 1e30: inf norms
    written = []
    report = sweep.write_results

    def spy():
        out = report()
        written.append(json.loads((tmp_path / "sweep" / "best.json").read_text()))
        return out

    sweep.write_results = spy
    sweep.run()
    trials = _study(tmp_path / "sweep").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[0].user_attrs["failure"] == "diverged"
    assert "training diverged at step" in trials[0].user_attrs["fail_reason"]
    assert trials[1].params == {"train.learning_rate": config.train.learning_rate}
    assert [(w["finished"], w["failed"]) for w in written] == [(0, 1), (1, 1)]
    assert "best_trial" not in written[0] and written[1]["best_trial"] == 1
    assert not (tmp_path / "sweep" / "trials" / "0000" / "checkpoints").exists()
    csv = (tmp_path / "sweep" / "trials.csv").read_text()
    assert "training diverged" in csv and "FAIL" in csv


def test_config_outside_the_space_is_refused_before_anything_runs(tiny, tmp_path):
    config = _config(tiny, **{"train.batch_size": 48})
    config.sweep.space = {"train": {"batch_size": {"choices": (16, 32, 64)}}}
    with pytest.raises(UserError, match=r"config train.batch_size=48 is outside "
                                        r"sweep.space.train.batch_size \(choices \[16, 32, 64\]\)"):
        Sweep(config, tmp_path / "a")
    config = _config(tiny, **{"train.learning_rate": 0.5})
    with pytest.raises(UserError, match=r"train.learning_rate=0.5 is outside "
                                        r"sweep.space.train.learning_rate \(range"):
        Sweep(config, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_sweep_without_an_evaluation_split_is_refused(tiny, tmp_path):
    config = _config(tiny, **{"eval.every_steps": 0})
    config.data.eval_split = ""
    with pytest.raises(UserError, match="data.eval_split='': a sweep compares its trials"):
        Sweep(config, tmp_path / "a")
    with pytest.raises(UserError, match="data.eval_split='': --seeds compares"):
        run_seeds(config, tmp_path / "b", 2)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_trial_zero_is_queued_until_it_has_an_outcome(tiny, tmp_path):
    """A trial 0 that failed for another reason than divergence is queued again; one that
    completed, is queued or diverged is not."""
    sweep = Sweep(_config(tiny), tmp_path / "sweep")
    study, given = sweep.study, {"train.learning_rate": 1e-3}

    def zeros():
        return [t for t in study.get_trials() if t.user_attrs.get("origin")]

    sweep._enqueue_config()
    sweep._enqueue_config()  # queued already
    assert [t.state for t in zeros()] == [TrialState.WAITING]
    trial = study.ask()
    assert trial.params == {} and trial.number == 0
    study.tell(trial, state=TrialState.FAIL)  # e.g. an error, or a crash before training
    sweep._enqueue_config()
    assert [t.state for t in zeros()] == [TrialState.FAIL, TrialState.WAITING]
    assert zeros()[1].system_attrs["fixed_params"] == given
    trial = study.ask()
    trial.set_user_attr("failure", "diverged")
    study.tell(trial, state=TrialState.FAIL)
    sweep._enqueue_config()
    assert len(zeros()) == 2  # the config diverges: not queued again


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
    # Each worker samples from its own stream: no parameters are tried twice.
    params = [t.params["train.learning_rate"] for t in trials]
    assert len(set(params)) == len(params), params
    assert not any("duplicate_of" in t.user_attrs for t in trials)


def _two_workers_in_threads(config, folder, monkeypatch):
    """Two workers of one study in threads of this process, both made before either runs,
    training replaced by an instant result (the learning rate as the value); the learning
    rates that were trained."""
    import threading

    from flax_sentiment.tuning import sweep as sweep_lib

    trained = []

    def instant(config, workdir, hooks=()):
        trained.append(float(config.train.learning_rate))
        time.sleep(0.05)
        return {"best_value": float(config.train.learning_rate), "best_step": 1, "step": 1}

    monkeypatch.setattr(sweep_lib, "train_and_evaluate", instant)
    workers = [Sweep(config, folder) for _ in range(2)]
    threads = [threading.Thread(target=w.run) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return trained


def test_workers_started_together_never_draw_the_same_parameters(tiny, tmp_path, monkeypatch):
    """Two workers that join the study at the same moment (both before either has queued a
    trial): each samples from its own stream, so no parameters repeat. (With one seed per
    study size, both drew the same stream.) The two real processes of
    `test_two_workers_share_one_study` check it end to end."""
    config = _config(tiny)
    config.sweep.trials, config.sweep.pruner, config.sweep.sampler = 12, "none", "random"
    _two_workers_in_threads(config, tmp_path / "sweep", monkeypatch)
    trials = _study(tmp_path / "sweep").trials
    assert len(trials) >= 12 and all(t.state == TrialState.COMPLETE for t in trials)
    params = [t.params["train.learning_rate"] for t in trials]
    assert len(set(params)) == len(params), params


def test_a_parameter_set_is_trained_once_and_repeats_take_its_outcome(tiny, tmp_path,
                                                                     monkeypatch):
    """A space of three values and a study of six trials over two workers: each value trains
    once; a trial that draws a value already tried takes that trial's outcome (duplicate_of)
    and the study still ends."""
    config = _config(tiny)
    config.sweep.space = {"train": {"learning_rate": {"choices": (1e-3, 2e-3, 3e-3)}}}
    config.sweep.trials, config.sweep.pruner, config.sweep.sampler = 6, "none", "random"
    trained = _two_workers_in_threads(config, tmp_path / "sweep", monkeypatch)
    assert sorted(trained) == sorted(set(trained))
    trials = _study(tmp_path / "sweep").trials
    assert len(trials) >= 6 and all(t.state != TrialState.RUNNING for t in trials)
    first = {}
    for t in trials:
        lr = t.params["train.learning_rate"]
        if "duplicate_of" in t.user_attrs:
            original = trials[t.user_attrs["duplicate_of"]]
            assert original.params == t.params and original.number < t.number
            assert t.value == original.value or t.state == TrialState.PRUNED
        else:
            assert lr not in first
            first[lr] = t.number
    assert sorted(first) == sorted(trained)


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


def test_seeds_stop_on_ctrl_c_and_the_same_command_resumes_the_seed(tiny, tmp_path):
    """Ctrl-C in the second of three seeds: that seed saves, no third seed starts, the summary
    counts the one finished seed, exit 0; the same command continues the second seed from its
    checkpoint and then reports all three."""
    config = _config(tiny, **{"train.max_steps": 40})
    config_file = write_config(config, tmp_path / "config.py")
    folder = tmp_path / "seeds"
    cmd = _sweep_cmd(config_file, folder, "--seeds=3")
    code, err = _start_and_signal(cmd, folder / "seeds" / "seed1" / "checkpoints" / "8",
                                  signal.SIGINT)
    assert code == 0, err[-3000:]
    assert "stopped in seed 2 of 3" in err and "Traceback" not in err
    assert not (folder / "seeds" / "seed2").exists()
    partial = json.loads((folder / "seeds.json").read_text())
    assert partial["seeds"] == 1 and partial["requested"] == 3
    assert partial["stopped"]["seed"] == 1 and "ensemble" not in partial
    assert not (folder / "seeds" / "seed1" / "eval_results.json").exists()
    rerun = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resumed from" in rerun.stderr
    assert "3 seeds finished" in rerun.stdout
    summary = json.loads((folder / "seeds.json").read_text())
    assert summary["seeds"] == 3 == summary["requested"] and "stopped" not in summary
    logged = _logged_steps(folder / "seeds" / "seed1")
    assert logged == sorted(set(logged)) and logged[-1] == 40
    accuracies = [json.loads((folder / "seeds" / f"seed{s}" / "eval_results.json").read_text())
                  ["accuracy"] for s in range(3)]
    assert summary["accuracy"]["values"] == accuracies


def test_the_lease_is_renewed_while_a_trial_runs_and_released_on_a_stop(tmp_path, monkeypatch):
    """The lease stays fresh whatever the trial is doing (a thread renews it, not a train
    hook), is removed when the trial has its outcome, and marks the trial open for any worker
    after a stop (released) or a second Ctrl-C."""
    from flax_sentiment.tuning import sweep as sweep_lib

    monkeypatch.setattr(sweep_lib, "LEASE_RENEW", 0.05)
    folder, read = tmp_path / "t", lambda: json.loads((tmp_path / "t" / "lease.json").read_text())
    with sweep_lib.Lease(folder):
        first = read()
        time.sleep(0.5)  # e.g. tokenizing, compiling or a long evaluation: no step runs
        assert read()["time"] > first["time"] and sweep_lib.lease_alive(read())
    assert not (folder / "lease.json").exists()
    with sweep_lib.Lease(folder) as lease:
        lease.release()
    assert read()["released"] and not sweep_lib.lease_alive(read())
    with pytest.raises(KeyboardInterrupt), sweep_lib.Lease(folder):
        raise KeyboardInterrupt
    assert read()["released"]
    monkeypatch.setattr(sweep_lib, "LEASE_TIMEOUT", 0.1)  # another host's lease: by its age
    sweep_lib.write_lease(folder)
    stale = dict(read(), host="elsewhere")
    assert sweep_lib.lease_alive(stale)
    time.sleep(0.2)
    assert not sweep_lib.lease_alive(stale)


def test_a_study_of_the_other_direction_is_refused(tiny, tmp_path):
    folder = tmp_path / "sweep"
    config = _config(tiny, **{"eval.metric": "loss", "eval.metric_mode": "max"})
    Sweep(config, folder)  # creates the study: maximize
    config = _config(tiny, **{"eval.metric": "loss"})  # auto: minimize
    with pytest.raises(UserError, match=r"created to maximize eval.metric=loss, this config "
                                        r"would minimize it; set --config.eval.metric_mode=max"):
        Sweep(config, folder)
    assert _study(folder).direction.name == "MAXIMIZE"
