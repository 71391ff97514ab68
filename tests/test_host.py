"""host.use_huge_pages: a script restarts itself with glibc's huge-page tunable, and XLA's
per-execution temporary buffers then stop page-faulting in 4 KiB at a time."""

import os
import subprocess
import sys

import pytest

from flax_sentiment import host

PROBE = """
import os, resource, sys
from flax_sentiment import host
if sys.argv[1] == "restart":
    host.use_huge_pages()
import jax, jax.numpy as jnp
f = jax.jit(lambda a: jnp.sum(jnp.sin(a @ a.T)))  # a 48 MiB temporary (3500 x 3500 float32)
a = jnp.ones((3500, 3500), jnp.float32) * 1e-3
f(a).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    f(a).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(os.environ.get("GLIBC_TUNABLES", "-"), faults, *sys.argv[1:])
"""


def _probe(*args: str) -> tuple[str, float, list[str]]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         check=True, env=env).stdout.split()
    return out[0], float(out[1]), out[2:]


@pytest.mark.skipif(not host.huge_pages_available(), reason="needs glibc >= 2.35 and THP")
def test_restart_with_huge_pages_stops_the_per_call_page_faults():
    tunables, faults, argv = _probe("restart", "--an=argument")
    _, default, _ = _probe("default")
    assert tunables == host.TUNABLE and argv == ["restart", "--an=argument"]  # same arguments
    pages = 3500 * 3500 * 4 / 4096  # the temporary's 4 KiB pages
    assert default > 0.5 * pages  # without it every call faults the temporary in again
    assert faults < 0.1 * pages


def test_huge_pages_env_keeps_other_tunables_and_respects_the_opt_out(monkeypatch):
    monkeypatch.setattr(host, "huge_pages_available", lambda: True)
    env = host.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0", "X": "1"})
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.tcache_count=0:{host.TUNABLE}"
    assert env["X"] == "1"
    assert host.huge_pages_env(env) is None  # set already: no second restart
    assert host.huge_pages_env({host.OPT_OUT: "0"}) is None
    assert host.without_huge_pages(env)["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0"
    assert "GLIBC_TUNABLES" not in host.without_huge_pages({"GLIBC_TUNABLES": host.TUNABLE})
    monkeypatch.setattr(host, "huge_pages_available", lambda: False)
    assert host.huge_pages_env({}) is None
