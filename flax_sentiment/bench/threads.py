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
    """Resolve `--threads` (0 = auto) and, for 1 thread, make XLA single-threaded through
    XLA_FLAGS. Returns the count; torch gets the same one (`runners.pick_torch_threads`)."""
    threads = threads_from_argv(argv)
    if threads == 0:  # auto: a loaded machine preempts one of two threads at every barrier
        cores = os.cpu_count() or 1
        threads = 1 if cores <= 2 or os.getloadavg()[0] > 0.5 * cores else cores
    if threads == 1:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " "
                                   + SINGLE_THREAD_XLA_FLAGS).strip()
    return threads
