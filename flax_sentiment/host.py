"""Process-wide settings of the host that make XLA's CPU runtime faster.

`keep_freed_memory`: every execution of a jitted program on XLA's CPU backend allocates its
temporary buffers afresh (MiniLM's train step: one 153 MiB block) from a worker thread and frees
them at the end. glibc serves such a block from a fresh `mmap` (a thread's arena cannot hold it)
and `munmap`s it on free, so every step page-faults the whole block in again: ~39,000 faults and
~60 ms of kernel time a step on a 2-core host. With one arena and no mmap, the block comes from
the main heap and stays there for the next step (docs/BENCHMARKS.md: 7-8% faster float32 steps,
4-6% bfloat16).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
OPT_OUT = "FLAX_SENTIMENT_KEEP_FREED_MEMORY"


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel: one arena,
    no mmap for large blocks, trim only above 2 GiB. Call it before JAX starts its threads
    (the scripts do, first thing). The cost: the process keeps its peak heap (peak RSS is
    unchanged, as the next step reuses it). Returns whether it was applied: not on other C
    libraries or platforms, nor with FLAX_SENTIMENT_KEEP_FREED_MEMORY=0."""
    if os.environ.get(OPT_OUT, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, 2**31 - 1)))
    if not ok:
        log.warning("mallopt refused a setting; freed memory may still go back to the kernel")
    return ok
