"""Orbax checkpoints of the whole run: train state, data position, progress, and metadata.

A checkpoint holds everything needed to continue (parameters, optimizer state, step, rng, the
data iterator position, best-metric bookkeeping) and to rebuild the model without the original
config (label names, the checkpoint's Hugging Face config, the resolved run config).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from flax_sentiment.errors import UserError

log = logging.getLogger(__name__)

ITEMS = ("state", "extra")


def _tree(state: Any) -> Any:
    """A dataclass state as the dict orbax stores, without its None fields: a field added
    later as optional (TrainState.ema) changes nothing on disk while it is off, so older
    checkpoints still restore."""
    if dataclasses.is_dataclass(state):
        return {f.name: getattr(state, f.name) for f in dataclasses.fields(state)
                if getattr(state, f.name) is not None}
    return state


class Checkpoints:
    """`checkpoint.keep` latest checkpoints plus the best one by the tracked eval metric."""

    def __init__(self, directory: str | Path, *, keep: int = 2, metric: str = "accuracy",
                 mode: str = "max", async_save: bool = True, read_only: bool = False):
        self.directory = Path(directory).absolute()
        self.metric = metric
        policy = policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(get_metric_fn=lambda m: m[metric], reverse=mode == "min", n=1,
                           keep_checkpoints_without_metrics=False),
        ])
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policy,
            # best_fn makes orbax store each checkpoint's metrics (BestN above needs them).
            best_fn=lambda m: m[metric],
            best_mode=mode,
            enable_async_checkpointing=async_save,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, item_names=ITEMS, options=options)
        self.damaged: set[int] = set()
        self.last_save_seconds = 0.0

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def best_step(self) -> int | None:
        return self.manager.best_step()

    def save(self, step: int, state: Any, extra: dict[str, Any],
             metrics: dict[str, float] | None = None) -> bool:
        """Starts an (asynchronous) save; the previous one is finished first.

        `last_save_seconds` is how long the caller was blocked (device-to-host copy and, if
        the previous save is still running, waiting for it).
        """
        start = time.perf_counter()
        if step in self.damaged:
            log.warning("replacing the damaged checkpoint at step %d", step)
            self.manager.delete(step)
            self.damaged.discard(step)
        if step in self.manager.all_steps():
            return False
        tracked = {self.metric: float(metrics[self.metric])} if metrics else None
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(_tree(state)),
                                    extra=ocp.args.JsonSave(extra)),
            metrics=tracked,
            force=True,
        )
        self.last_save_seconds = time.perf_counter() - start
        return saved

    def restore_extra(self, step: int) -> dict[str, Any]:
        """Only the JSON part (metadata, data position): cheap, no arrays."""
        return self.manager.restore(step, args=ocp.args.Composite(
            extra=ocp.args.JsonRestore()))["extra"]

    def newest_extra(self) -> tuple[int, dict[str, Any]] | None:
        """(step, extra) of the newest checkpoint whose JSON part reads, skipping damaged ones
        as `restore` does; None when there is none."""
        try:
            s, restored = self._restore(None, ocp.args.Composite(extra=ocp.args.JsonRestore()))
        except UserError:  # no checkpoints, or none readable
            return None
        return s, restored["extra"]

    def restore(self, abstract_state: Any, step: int | None = None
                ) -> tuple[int, Any, dict[str, Any]]:
        """(step, state, extra) of `step`, or of the newest complete and readable checkpoint.

        `abstract_state` carries the target shardings, so a checkpoint written on 8 devices
        restores onto 1 and the reverse. A damaged newest checkpoint (a file lost, a save cut
        short) is skipped with a warning, never deleted.
        """
        s, restored = self._restore(step, ocp.args.Composite(
            state=ocp.args.StandardRestore(_tree(abstract_state)), extra=ocp.args.JsonRestore()))
        state = restored["state"]
        if dataclasses.is_dataclass(abstract_state):
            state = dataclasses.replace(abstract_state, **state)
        return s, state, restored["extra"]

    def restore_params(self, abstract_params: dict[str, jax.ShapeDtypeStruct],
                       sharding: jax.sharding.Sharding, step: int | None = None, *,
                       item: str = "params"
                       ) -> tuple[int, dict[str, jax.Array], dict[str, Any]]:
        """(step, params, extra) with the parameters alone read from disk (orbax partial
        restore): evaluation, prediction and export need no optimizer state. `item="ema"`
        reads the moving average instead. Falls back past damaged checkpoints as `restore`
        does."""
        s, restored = self._restore(step, ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item={item: abstract_params},
                restore_args={item: {k: ocp.ArrayRestoreArgs(sharding=sharding)
                                     for k in abstract_params}},
                partial_restore=True),
            extra=ocp.args.JsonRestore()))
        return s, restored["state"][item], restored["extra"]

    def _restore(self, step: int | None, args: Any) -> tuple[int, Any]:
        candidates = ([step] if step is not None
                      else [s for s in self.all_steps()[::-1] if s not in self.damaged])
        if not candidates:
            raise UserError(f"{self.directory}: no checkpoints")
        errors = []
        for s in candidates:
            if s not in self.manager.all_steps():
                raise UserError(f"{self.directory}: no checkpoint at step {s} "
                                f"(have {self.all_steps()})")
            try:
                restored = self.manager.restore(s, args=args)
            except Exception as e:  # orbax raises many types for damaged files
                reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                errors.append(f"step {s}: {reason}")
                self.damaged.add(s)
                if step is not None:
                    raise UserError(f"{self.directory}: checkpoint {s} is unreadable "
                                    f"({reason})") from None
                log.warning("checkpoint at step %d is incomplete or damaged (%s); trying an "
                            "older one", s, reason[:200])
                continue
            if errors:
                log.warning("using the checkpoint at step %d instead of the damaged newer "
                            "one(s)", s)
            return s, restored
        raise UserError(f"{self.directory}: no readable checkpoint ({'; '.join(errors)})")

    def reached_preemption(self, step: int) -> bool:
        """True on every process once the cluster (e.g. a TPU VM) announced a preemption."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
