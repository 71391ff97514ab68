"""Device mesh, shardings and multi-process start-up: one code path from 1 CPU to a pod."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from flax_sentiment.errors import UserError

log = logging.getLogger(__name__)

DATA_AXIS = "data"


def initialize_distributed(config: Any = None) -> None:
    """Start JAX's multi-controller runtime when the environment or config asks for it.

    TPU VM pod slices configure themselves (`jax.distributed.initialize()` with no arguments);
    elsewhere `distributed.coordinator_address`, `num_processes` and `process_id` (config keys)
    or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID give them. Single-process
    runs need nothing.
    """
    if jax.distributed.is_initialized():
        return
    dist = config.get("distributed", None) if config is not None else None
    address = (dist.get("coordinator_address", "") if dist else "") or os.environ.get(
        "JAX_COORDINATOR_ADDRESS", "")
    num = int((dist.get("num_processes", 0) if dist else 0) or os.environ.get(
        "JAX_NUM_PROCESSES", 0) or 0)
    pid = (dist.get("process_id", -1) if dist else -1)
    pid = int(os.environ.get("JAX_PROCESS_ID", -1)) if pid is None or pid < 0 else int(pid)
    if address and num > 1:
        if pid < 0:
            raise UserError("distributed.coordinator_address is set but no process id "
                            "(config distributed.process_id or JAX_PROCESS_ID)")
        timeout = int(dist.get("initialization_timeout", 300)) if dist else 300
        heartbeat = int(dist.get("heartbeat_timeout_seconds", 100)) if dist else 100
        # CPU processes need a cross-process collectives backend (TPU/GPU have their own).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        log.info("jax.distributed: process %d of %d, coordinator %s", pid, num, address)
        jax.distributed.initialize(address, num, pid, initialization_timeout=timeout,
                                   heartbeat_timeout_seconds=heartbeat)
    elif os.environ.get("TPU_WORKER_HOSTNAMES", "").count(",") >= 1:
        jax.distributed.initialize()  # multi-host TPU slice: discovers everything itself


def make_mesh() -> Mesh:
    """A 1-D data-parallel mesh over every device of every process."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the data axis, everything else whole."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def round_up(n: int, multiple: int) -> int:
    """The smallest multiple of `multiple` >= n (eval batches must split evenly over devices)."""
    return -(-n // multiple) * multiple


def is_main_process() -> bool:
    return jax.process_index() == 0


def check_batch_size(batch_size: int, mesh: Mesh, key: str = "train.batch_size") -> None:
    devices = mesh.devices.size
    if batch_size <= 0 or batch_size % devices:
        raise UserError(f"{key}={batch_size} must be a positive multiple of the device count "
                        f"({devices} devices)")


@contextlib.contextmanager
def compilation_cache(directory: str) -> Iterator[None]:
    """Persist compiled steps across runs (a resumed or repeated run skips recompiling), unless
    the user configured JAX's cache already; JAX's settings are restored on exit."""
    if not directory or jax.config.jax_compilation_cache_dir:
        yield
        return
    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    before = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program, however quick to compile: a sweep's trials and a resumed run then load
    # all of theirs (many small ones add up to seconds per run).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    try:
        yield
    finally:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before)


COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
CACHE_HIT_EVENT = "/jax/compilation_cache/cache_hits"


@contextlib.contextmanager
def compile_timer() -> Iterator[dict[str, float]]:
    """{'seconds', 'programs', 'cached'}: time XLA spent making executables while inside, how
    many, and how many of those were loaded from the persistent compilation cache."""
    totals = {"seconds": 0.0, "programs": 0, "cached": 0}

    def on_duration(event: str, duration: float, **kwargs) -> None:
        if event == COMPILE_EVENT:
            totals["seconds"] += duration
            totals["programs"] += 1

    def on_event(event: str, **kwargs) -> None:
        if event == CACHE_HIT_EVENT:
            totals["cached"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)
    try:
        yield totals
    finally:
        jax.monitoring.unregister_event_duration_listener(on_duration)
        jax.monitoring.unregister_event_listener(on_event)
