"""Exact resume with real processes and signals, restore on another device count, damaged
checkpoints. Each run is scripts/train.py in a subprocess on a tiny BERT and real SST-2 rows."""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from flax_sentiment.workdir import load_run
from tests.helpers import REPO, STEPS, assert_same_run, keep_until, run_script, train_script


@pytest.fixture(scope="module")
def eight_devices(run_setup):
    workdir = run_setup["root"] / "eight"
    result = train_script(run_setup["config"], workdir, devices=8)
    assert "8 device(s), 1 process(es)" in result.stderr  # not silently one device
    return workdir


def test_eight_devices_equal_one_device(reference_run, eight_devices):
    """Data parallelism is exact: the same losses, parameters and metrics as on 1 device."""
    assert_same_run(reference_run, eight_devices, atol=1e-5)


@pytest.mark.parametrize("saved,devices", [("eight", 1), ("one", 8)])
def test_restore_on_another_device_count(run_setup, reference_run, eight_devices, tmp_path,
                                         saved, devices):
    workdir = tmp_path / "run"
    keep_until(eight_devices if saved == "eight" else reference_run, workdir, 4)
    result = train_script(run_setup["config"], workdir, devices=devices)
    assert f"{devices} device(s), 1 process(es)" in result.stderr
    assert re.search(r"resumed from .* at step 4", result.stderr)
    assert_same_run(reference_run, workdir, atol=1e-5)


LONG = ["--config.train.max_steps=60", "--config.eval.every_steps=20"]


def launch(config, workdir, args=tuple(LONG)):
    """scripts/train.py in the background (to be signalled or killed)."""
    return subprocess.Popen(
        [sys.executable, "scripts/train.py", f"--config={config}", f"--workdir={workdir}",
         *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})


def wait_for_checkpoint(workdir, proc, step, timeout=300):
    target = workdir / "checkpoints" / str(step)
    deadline = time.time() + timeout
    while not target.is_dir():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)


def _steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


# padded: slow (`make test-all`); padded resume stays in the default suite through the EMA and
# LoRA SIGKILL tests, packed here.
@pytest.mark.parametrize("packed", [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=["padded", "packed"])
def test_sigkill_then_relaunch_resumes_exactly(run_setup, tmp_path, packed):
    """Killed after a checkpoint at k < N, relaunched with the same command: same end state
    (same data order after the resume, same dropout rngs), with padded or packed batches."""
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    more = ["--config.data.pack_length=96"] if packed else []
    proc = launch(run_setup["config"], killed, [*LONG, *more])
    wait_for_checkpoint(killed, proc, step=8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 8 in _steps(killed) and max(_steps(killed)) < 60
    args = ["scripts/train.py", f"--config={run_setup['config']}", *LONG, *more]
    relaunch = run_script([*args, f"--workdir={killed}"])
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "resumed from" in relaunch.stderr
    assert ("packing: {" in relaunch.stderr) == packed
    full = run_script([*args, f"--workdir={uninterrupted}"])
    assert full.returncode == 0, full.stderr[-3000:]
    assert_same_run(uninterrupted, killed, atol=1e-6)


def test_sigterm_saves_a_checkpoint_and_exits_zero(run_setup, tmp_path):
    workdir = tmp_path / "run"
    proc = launch(run_setup["config"], workdir)
    wait_for_checkpoint(workdir, proc, step=4)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    stopped = int(re.search(r"checkpoint saved at step (\d+)", err).group(1))
    assert "Resume with the same command" in err
    assert max(_steps(workdir)) == stopped < 60
    assert not (workdir / "eval_results.json").exists()


def test_changed_config_is_refused_on_resume(run_setup, reference_run, tmp_path):
    workdir = tmp_path / "run"
    keep_until(reference_run, workdir, 4)
    result = run_script(["scripts/train.py", f"--config={run_setup['config']}",
                         f"--workdir={workdir}", "--config.data.label_names=('bad','good')"])
    assert result.returncode == 2
    assert "cannot resume: config data.label_names is ['bad', 'good']" in result.stderr
    assert _steps(workdir) == [4]


def test_damaged_latest_checkpoint_falls_back_with_a_warning(reference_run, tmp_path, caplog):
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    latest = workdir / "checkpoints" / str(STEPS)
    # The array data (ocdbt's data files): parameters included, so even a params-only
    # restore cannot use this checkpoint.
    victims = [p for p in (latest / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert victims
    for victim in victims:
        victim.unlink()
    before = {p: p.stat().st_mtime for p in workdir.rglob("*") if p.is_file()}
    with caplog.at_level(logging.WARNING):
        run = load_run(workdir)
    assert run.step == 8
    assert f"checkpoint at step {STEPS} is incomplete or damaged" in caplog.text
    after = {p: p.stat().st_mtime for p in workdir.rglob("*") if p.is_file()}
    assert before == after  # nothing in the workdir was touched


def test_interrupted_save_is_never_taken_for_complete(reference_run, tmp_path):
    """A save cut short leaves orbax's temporary folder, which restore ignores."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    partial = workdir / "checkpoints" / f"{STEPS + 4}.orbax-checkpoint-tmp-1234"
    shutil.copytree(workdir / "checkpoints" / str(STEPS), partial)
    shutil.rmtree(partial / "extra")
    assert load_run(workdir).step == STEPS


@pytest.mark.parametrize("part", ["state", "extra"])
def test_training_resumes_past_a_damaged_latest_checkpoint(run_setup, reference_run, tmp_path,
                                                           part):
    """The newest checkpoint lost a file (its arrays, or its metadata that resume reads first):
    training warns, naming the step, resumes from the one before (step 6, an eval step) and
    ends as if uninterrupted."""
    workdir = tmp_path / "run"
    keep_until(reference_run, workdir, 8)
    damaged = workdir / "checkpoints" / "8" / part
    victim = (damaged / "metadata" if part == "extra" else
              next(p for p in sorted(damaged.rglob("*")) if p.is_file()
                   and p.stat().st_size > 0 and "metadata" not in p.name))
    victim.unlink()
    result = train_script(run_setup["config"], workdir)
    assert "checkpoint at step 8 is incomplete or damaged" in result.stderr
    assert re.search(r"resumed from .* at step 6", result.stderr)
    assert_same_run(reference_run, workdir, atol=1e-6)


def test_nan_state_is_never_saved_nor_called_good(run_setup, tmp_path, monkeypatch):
    """Parameters turn NaN at a checkpoint step that is not a logging step (its loss is still
    finite): that state is not saved, and the checkpoint the message names is finite."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from flax_sentiment.errors import UserError
    from flax_sentiment.training import loop as train
    from flax_sentiment.training import steps
    from tests.helpers import final_params, tiny_config

    nan_step, real = 6, steps.make_train_step

    def poisoned(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        def train_step(state, batch, hparams):
            state, metrics = step_fn(state, batch, hparams)
            bad = state.step == nan_step
            params = jax.tree.map(lambda p: jnp.where(bad, jnp.nan, p), state.params)
            return (state.replace(params=params),
                    {**metrics, "param_norm": optax.tree.norm(params)})

        return train_step

    monkeypatch.setattr(steps, "make_train_step", poisoned)
    monkeypatch.setattr(steps, "_JITTED", {})  # no step compiled by an earlier test
    root = run_setup["root"]
    config = tiny_config(root / "model", root / "sst2", **{
        "train.log_every_steps": 4, "checkpoint.every_steps": 1, "eval.every_steps": 0,
        "checkpoint.async_save": False})
    workdir = tmp_path / "run"
    with pytest.raises(UserError) as info:
        train.train_and_evaluate(config, workdir)
    message = str(info.value)
    assert f"diverged at step {nan_step}: param_norm=nan" in message, message
    named = int(re.search(r"last good checkpoint \(step (\d+)\)", message).group(1))
    assert named == nan_step - 1 and max(_steps(workdir)) == named
    assert all(np.isfinite(v).all() for v in final_params(workdir, named).values())


@pytest.mark.parametrize("metric,values,best", [("f1_macro", (0.60, 0.68, 0.66), 2),
                                                ("loss", (0.9, 0.7, 0.8), 2)])
def test_best_of_a_run_is_by_its_own_metric(metric, values, best, tmp_path):
    """`DIR@best` (a teacher, a learning-curve start, load_run) of a run judged by macro F1 or
    by its loss picks that run's best checkpoint by its metric and direction, not by accuracy
    (which such checkpoints do not carry)."""
    import numpy as np

    from flax_sentiment.config import base_config, to_json
    from flax_sentiment.training.distill import teacher_stamp
    from flax_sentiment.workdir import Workdir

    config = base_config()
    config.eval.metric = metric
    wd = Workdir(tmp_path / "run")
    wd.path.mkdir()
    wd.config_file.write_text(to_json(config))
    saving = wd.checkpoints(metric=metric, mode="min" if metric == "loss" else "max",
                            async_save=False, keep=3)
    for step, value in enumerate(values, start=1):
        saving.save(step, {"x": np.full(2, step, np.float32)}, {"meta": {}}, {metric: value})
    saving.close()
    reading = wd.checkpoints(read_only=True)
    assert reading.best_step() == best
    reading.close()
    assert teacher_stamp(f"{wd.path}@best")["step"] == best
