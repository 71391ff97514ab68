"""Two processes on localhost (jax.distributed, gloo CPU collectives) train like one."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, assert_same_run, keep_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch_group(config, workdir, processes=2, devices=2, extra=(), heartbeat=100):
    port = _free_port()
    procs = []
    for pid in range(processes):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
               "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(pid),
               "PYTHONUNBUFFERED": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, "scripts/train.py", f"--config={config}", f"--workdir={workdir}",
             f"--config.distributed.heartbeat_timeout_seconds={heartbeat}", *extra],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def _finish(procs, timeout=600):
    outputs = [p.communicate(timeout=timeout) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    return [err for _, err in outputs]


@pytest.fixture(scope="module")
def two_processes(run_setup):
    workdir = run_setup["root"] / "two_processes"
    errs = _finish(_launch_group(run_setup["config"], workdir))
    return workdir, errs


def test_two_processes_equal_one_process(reference_run, two_processes):
    workdir, errs = two_processes
    assert "2 process(es)" in errs[0]
    assert_same_run(reference_run, workdir, atol=1e-5)
    # Exactly one writer: one event file, no metrics line twice, only process 0 reports.
    assert len(list(workdir.glob("events.out.tfevents.*"))) == 1
    steps = [json.loads(x)["step"] for x in (workdir / "metrics.jsonl").read_text().splitlines()
             if "train/loss" in x]
    assert len(steps) == len(set(steps))
    assert "final evaluation" in errs[0] and "final evaluation" not in errs[1]


def test_two_process_checkpoint_resumes_in_one_process(run_setup, reference_run,
                                                       two_processes, tmp_path):
    from tests.helpers import train_script

    workdir = tmp_path / "run"
    keep_until(two_processes[0], workdir, 4)
    result = train_script(run_setup["config"], workdir, devices=1)
    assert re.search(r"resumed from .* at step 4", result.stderr)
    assert_same_run(reference_run, workdir, atol=1e-5)


def test_one_process_checkpoint_resumes_in_two_processes(run_setup, reference_run, tmp_path):
    workdir = tmp_path / "run"
    keep_until(reference_run, workdir, 4)
    errs = _finish(_launch_group(run_setup["config"], workdir))
    assert all(re.search(r"resumed from .* at step 4", e) for e in errs)
    assert_same_run(reference_run, workdir, atol=1e-5)


@pytest.mark.slow  # the default suite keeps the cross-process stop (sigterm_on_one_process)
def test_a_dead_process_makes_the_other_fail_fast(run_setup, tmp_path):
    workdir = tmp_path / "run"
    heartbeat = 10
    procs = _launch_group(run_setup["config"], workdir, heartbeat=heartbeat,
                          extra=["--config.train.max_steps=100000", "--config.eval.every_steps=0"])
    target = workdir / "checkpoints" / "4"
    deadline = time.time() + 300
    while not target.is_dir():
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    try:
        _, err = procs[0].communicate(timeout=heartbeat * 6)
    except subprocess.TimeoutExpired:
        procs[0].kill()
        pytest.fail("the surviving process hung after its peer died")
    assert procs[0].returncode != 0
    assert time.time() - killed_at < heartbeat * 6
    assert re.search(r"heartbeat|coordination|peer|disconnect|unavailable", err, re.I), err[-2000:]


def test_sigterm_on_one_process_stops_all_at_the_same_step(run_setup, tmp_path):
    """A preemption notice reaches one host only: every process still saves the same step
    (one collective checkpoint), exits 0, and the run resumes from it."""
    workdir = tmp_path / "run"
    long = ["--config.train.max_steps=100000", "--config.eval.every_steps=0"]
    procs = _launch_group(run_setup["config"], workdir, extra=long)
    deadline = time.time() + 300
    while not (workdir / "checkpoints" / "4").is_dir():
        assert all(p.poll() is None for p in procs), procs[0].communicate()[1][-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGTERM)
    errs = _finish(procs, timeout=300)
    stopped = [int(re.search(r"checkpoint saved at step (\d+)", e).group(1)) for e in errs]
    assert stopped[0] == stopped[1] > 4, stopped
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == stopped[0]
    end = stopped[0] + 4
    errs = _finish(_launch_group(run_setup["config"], workdir,
                                 extra=[f"--config.train.max_steps={end}",
                                        "--config.eval.every_steps=0"]))
    assert all(f"at step {stopped[0]}" in e and "resumed from" in e for e in errs)
    assert json.loads((workdir / "eval_results.json").read_text())["step"] == end


@pytest.mark.slow  # ~1 min; the row split itself is tested in tests/test_packing.py
def test_two_processes_pack_like_one(run_setup, tmp_path):
    """Packed rows split over two processes (each the same number): the run equals one
    process holding all four devices (the same global row shapes, hence the same dropout)."""
    from tests.helpers import run_script

    pack = "--config.data.pack_length=96"
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_script(["scripts/train.py", f"--config={run_setup['config']}",
                         f"--workdir={one}", pack], devices=4)
    assert result.returncode == 0, result.stderr[-3000:]
    errs = _finish(_launch_group(run_setup["config"], two, extra=[pack]))
    assert "packing: {" in errs[0] and "2 process(es)" in errs[0]
    assert_same_run(one, two, atol=1e-5)
