"""Process-wide settings of the host that make XLA's CPU runtime faster.

`use_huge_pages`: every execution of a jitted program on XLA's CPU backend allocates its
temporary buffers afresh (MiniLM's train step: one 153 MiB block) and frees them at the end.
glibc serves a block that large with a fresh `mmap` and `munmap`s it on free, so every step
page-faults the whole block in again, 4 KiB at a time: ~39,000 faults and ~60 ms of kernel time
a step on a 2-core host. glibc's `glibc.malloc.hugetlb=1` tunable asks for transparent huge
pages on such blocks (2 MiB a fault): ~600 faults a step, 10% faster float32 steps
(docs/BENCHMARKS.md). Keeping the freed memory instead (`mallopt`: one arena, no mmap) removes
the faults too, but one arena doubles XLA's compile time (its threads contend for the lock).
Tunables are read when a process starts, hence the restart.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "FLAX_SENTIMENT_HUGE_PAGES"
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_version() -> tuple[int, ...]:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    except (ValueError, OSError, AttributeError):  # not glibc (musl, macOS)
        return ()
    return tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else ()


def huge_pages_available() -> bool:
    """glibc >= 2.35 (the tunable) and transparent huge pages the kernel grants on request."""
    try:
        thp = THP.read_text()
    except OSError:
        return False
    return _glibc_version() >= (2, 35) and ("[madvise]" in thp or "[always]" in thp)


def huge_pages_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to restart with, or None when there is nothing to do: already set,
    opted out (FLAX_SENTIMENT_HUGE_PAGES=0), or not available on this host."""
    env = dict(os.environ if environ is None else environ)
    tunables = env.get("GLIBC_TUNABLES", "")
    if env.get(OPT_OUT, "1") == "0" or "glibc.malloc.hugetlb" in tunables:
        return None
    if not huge_pages_available():
        return None
    env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}" if tunables else TUNABLE
    return env


def use_huge_pages() -> None:
    """Restart this process (same interpreter, same arguments) with `TUNABLE` set, unless it
    is set already or cannot apply. Call it first thing, before JAX loads: the scripts do
    (`cli.run`), and in a notebook set GLIBC_TUNABLES=glibc.malloc.hugetlb=1 before starting
    the kernel instead."""
    env = huge_pages_env()
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def without_huge_pages(env: dict[str, str]) -> dict[str, str]:
    """`env` with `TUNABLE` taken out of GLIBC_TUNABLES again: a child process starts as it
    would from the user's shell (the benchmark's Trainer side; our side restarts itself)."""
    env = dict(env)
    rest = [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t and t != TUNABLE]
    if rest:
        env["GLIBC_TUNABLES"] = ":".join(rest)
    else:
        env.pop("GLIBC_TUNABLES", None)
    return env
