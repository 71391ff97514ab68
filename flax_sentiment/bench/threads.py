"""`--threads`: the CPU thread count both sides of every comparison run with.

A module without JAX or torch because XLA reads XLA_FLAGS once, when its CPU backend starts
(the first `jax.devices()` or computation; importing jax does not start it): scripts/bench.py
calls `apply_threads_policy` before it imports any section. The whole-process sections pass the
same count on: their JAX children inherit XLA_FLAGS, their torch children get
`torch.set_num_threads` of it.
"""

from __future__ import annotations

import os

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def threads_from_argv(argv: list[str]) -> int:
    """The value of `--threads` in argv (0 when absent: auto)."""
    threads = 0
    for i, arg in enumerate(argv):
        if arg.startswith("--threads="):
            threads = int(arg.split("=", 1)[1])
        elif arg == "--threads" and i + 1 < len(argv):
            threads = int(argv[i + 1])
    return threads


def apply_threads_policy(argv: list[str]) -> int:
    """Resolve `--threads` (0 = every core, the way users run both frameworks) and, for 1
    thread, make XLA single-threaded through XLA_FLAGS. Returns the count; torch gets the same
    one (`runners.pick_torch_threads`).

    Why not single-threaded by default on small machines: XLA's CPU runtime runs independent
    operations of a step on its own threads, which the intra-op flags do not bound, so
    "1 thread" gave our side ~1.8 cores against torch's 1 (docs/BENCHMARKS.md, "Threads")."""
    threads = threads_from_argv(argv) or os.cpu_count() or 1
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   + SINGLE_THREAD_XLA_FLAGS).strip()
    return threads
