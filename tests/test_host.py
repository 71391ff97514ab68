"""host.keep_freed_memory: XLA's per-execution temporary buffers stop page-faulting in afresh."""

import subprocess
import sys

import pytest

from flax_sentiment import host

PROBE = """
import resource, sys
from flax_sentiment import host
applied = host.keep_freed_memory() if sys.argv[1] == "keep" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.sin(a @ a.T)))  # a 48 MiB temporary (3500 x 3500 float32)
a = jnp.ones((3500, 3500), jnp.float32) * 1e-3
f(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(a).block_until_ready()
print(applied, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def _faults_per_call(mode: str) -> tuple[bool, float]:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True, env={"PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    applied, faults = out.stdout.split()
    return applied == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_freed_memory_stops_the_per_call_page_faults():
    applied, kept = _faults_per_call("keep")
    _, default = _faults_per_call("default")
    assert applied
    pages = 3500 * 3500 * 4 / 4096  # the temporary's pages
    assert default > 0.5 * pages  # without it every call faults the temporary in again
    assert kept < 0.25 * pages  # (a small allocation elsewhere may still fault)


def test_opt_out(monkeypatch):
    monkeypatch.setenv(host.OPT_OUT, "0")
    assert host.keep_freed_memory() is False
