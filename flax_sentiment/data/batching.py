"""Length-bucketed global batches, a resumable train iterator, prefetch and device placement.

Shapes are static per bucket (batch size x bucket length), so XLA compiles once per bucket.
The plan (which examples go in which batch, in which order) depends only on the example lengths,
the seed and the epoch: identical on every process. Each process materializes only its rows
`[process_index * B / P, (process_index + 1) * B / P)` of every global batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flax_sentiment.data.buckets import bucket_of
from flax_sentiment.errors import UserError

if TYPE_CHECKING:  # data builds on this module; only the type is needed here
    import jax

    from flax_sentiment.data.splits import TokenizedSplit

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]

def _local_rows(batch_size: int, process_index: int | None,
                process_count: int | None) -> slice:
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    if batch_size % process_count:
        raise UserError(f"batch size {batch_size} is not divisible by the {process_count} "
                        f"processes")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)


def _chunks(indices: np.ndarray, batch_size: int) -> np.ndarray:
    """[n_batches, batch_size] rows of `indices`, the last padded with -1 (dummy rows)."""
    n = -(-len(indices) // batch_size)
    out = np.full(n * batch_size, -1, dtype=np.int64)
    out[: len(indices)] = indices
    return out.reshape(n, batch_size)


def materialize(split: TokenizedSplit, rows: np.ndarray, length: int, pad_id: int) -> Batch:
    """A padded batch of `rows` (indices into `split`, -1 = dummy row with weight 0).

    Dummy rows attend to one pad token, so no attention softmax sees an all-masked row (NaN).
    """
    real = rows >= 0
    safe = np.where(real, rows, 0)
    lengths = np.where(real, split.lengths[safe], 0)
    starts = split.starts[safe]
    pos = np.arange(length)
    mask = pos[None, :] < lengths[:, None]
    gather = np.minimum(starts[:, None] + pos[None, :], max(split.input_ids.size - 1, 0))
    input_ids = np.where(mask, split.input_ids[gather], pad_id).astype(np.int32)
    if split.token_type_ids is not None:
        token_type_ids = np.where(mask, split.token_type_ids[gather], 0).astype(np.int32)
    else:
        token_type_ids = np.zeros_like(input_ids)
    attention = mask.astype(np.int32)
    attention[~real, 0] = 1
    batch = {
        "input_ids": input_ids,
        "attention_mask": attention,
        "token_type_ids": token_type_ids,
        "labels": np.where(real, split.labels[safe], 0).astype(np.int32),
        "weights": real.astype(np.float32),
        "index": np.where(real, rows, -1).astype(np.int32),
    }
    if split.teacher_logits is not None:  # dummy rows: any finite values (weight 0)
        batch["teacher_logits"] = np.where(real[:, None, None], split.teacher_logits[safe],
                                           0.0).astype(np.float32)
    return batch


def padding_efficiency(lengths: np.ndarray, batch_size: int, buckets: Sequence[int]) -> float:
    """Real tokens / tokens in the padded batches (dummy rows included) for one epoch."""
    lengths = np.asarray(lengths)
    counts = np.bincount(bucket_of(lengths, buckets), minlength=len(buckets))
    batches = -(-counts // batch_size)
    padded = int((batches * batch_size * np.asarray(buckets)).sum())
    return float(lengths.sum() / padded) if padded else 1.0


class TrainIterator:
    """Global training batches forever, epoch after epoch; resumable from `get_state()`.

    Per epoch, each bucket's examples are shuffled with `default_rng([seed, epoch])` and cut into
    batches of `batch_size` (the last one filled with weight-0 dummy rows, so every example is
    seen exactly once per epoch), then the order of all batches is shuffled.
    """

    def __init__(self, split: TokenizedSplit, batch_size: int, buckets: Sequence[int], *,
                 seed: int, pad_id: int, state: dict[str, int] | None = None,
                 process_index: int | None = None, process_count: int | None = None):
        if len(split) == 0:
            raise UserError(f"{split.name}: no training examples")
        self.split, self.batch_size, self.pad_id = split, int(batch_size), int(pad_id)
        self.buckets = tuple(int(b) for b in buckets)
        self._bucket = bucket_of(split.lengths, self.buckets)
        self._rows = _local_rows(self.batch_size, process_index, process_count)
        counts = np.bincount(self._bucket, minlength=len(self.buckets))
        self.steps_per_epoch = int((-(-counts // self.batch_size)).sum())
        self.seed, self.epoch, self.position = int(seed), 0, 0
        self._plan: tuple[int, np.ndarray, np.ndarray] | None = None
        if state is not None:
            self.set_state(state)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(bucket index per step [S], global rows per step [S, batch_size]) of an epoch."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            buckets, rows = [], []
            for b in range(len(self.buckets)):
                members = np.flatnonzero(self._bucket == b)
                if members.size:
                    chunks = _chunks(rng.permutation(members), self.batch_size)
                    rows.append(chunks)
                    buckets.append(np.full(len(chunks), b))
            order = rng.permutation(self.steps_per_epoch)
            self._plan = (epoch, np.concatenate(buckets)[order], np.concatenate(rows)[order])
        return self._plan[1], self._plan[2]

    def upcoming(self, num_steps: int, max_epochs: int = 3) -> list[int]:
        """The distinct shape keys (here bucket indices) of the next `num_steps` steps, looking
        at most `max_epochs` epochs ahead: what a run will compile."""
        keys: set[int] = set()
        epoch, position, left = self.epoch, self.position, int(num_steps)
        for _ in range(max_epochs):
            if left <= 0:
                break
            if position >= self.steps_per_epoch:
                epoch, position = epoch + 1, 0
            per_step = self.plan(epoch)[0][position:position + left]
            keys.update(int(k) for k in per_step)
            left -= len(per_step)
            position += len(per_step)
        self.plan(self.epoch)  # the current epoch's plan stays the cached one
        return sorted(keys)

    def dummy(self, key: int) -> Batch:
        """A batch of this process's rows in the shape of `key`, every row a dummy."""
        rows = np.full(self._rows.stop - self._rows.start, -1, np.int64)
        return materialize(self.split, rows, self.buckets[key], self.pad_id)

    def __iter__(self) -> TrainIterator:
        return self

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        buckets, rows = self.plan(self.epoch)
        b, r = buckets[self.position], rows[self.position]
        self.position += 1
        return materialize(self.split, r[self._rows], self.buckets[b], self.pad_id)

    def get_state(self) -> dict[str, int]:
        """JSON-able position: the next batch is batch `position` of epoch `epoch`."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": len(self.split), "batch_size": self.batch_size}

    def set_state(self, state: dict[str, Any]) -> None:
        for key, mine in (("num_examples", len(self.split)), ("batch_size", self.batch_size)):
            if key in state and int(state[key]) != mine:
                raise UserError(f"cannot resume the data position: the checkpoint has "
                                f"{key}={state[key]} but the current data gives {mine}")
        if int(state.get("seed", self.seed)) != self.seed:
            log.warning("resuming the data order of seed %s (config seed %s)", state["seed"],
                        self.seed)
        self.seed, self.epoch = int(state.get("seed", self.seed)), int(state["epoch"])
        self.position, self._plan = int(state["position"]), None


class EvalBatches:
    """Every example exactly once, in a fixed order (bucket by bucket, file order within).

    Each bucket's last batch is padded with dummy rows (weight 0, index -1); `index` maps
    predictions back to `split.texts`.
    """

    def __init__(self, split: TokenizedSplit, batch_size: int, buckets: Sequence[int], *,
                 pad_id: int, process_index: int | None = None,
                 process_count: int | None = None):
        self.split, self.batch_size, self.pad_id = split, int(batch_size), int(pad_id)
        self.buckets = tuple(int(b) for b in buckets)
        self._rows = _local_rows(self.batch_size, process_index, process_count)
        bucket = bucket_of(split.lengths, self.buckets)
        self._batches = [(b, rows) for b in range(len(self.buckets))
                         for rows in _chunks(np.flatnonzero(bucket == b), self.batch_size)]

    def __len__(self) -> int:
        return len(self._batches)

    def shapes(self) -> list[Batch]:
        """One batch of each shape the split uses (what evaluating it compiles)."""
        firsts = {b: rows for b, rows in reversed(self._batches)}
        return [materialize(self.split, rows[self._rows], self.buckets[b], self.pad_id)
                for b, rows in sorted(firsts.items())]

    def __iter__(self) -> Iterator[Batch]:
        for b, rows in self._batches:
            yield materialize(self.split, rows[self._rows], self.buckets[b], self.pad_id)


# --------------------------------------------------------------------------------------------
# Prefetch


_END = object()


class Prefetcher:
    """Runs `iterator` (and `transform`, e.g. shard_batch) in a thread, `size` batches ahead.

    `get_state()` is the wrapped iterator's state right after the last batch handed out here,
    not after the batches waiting in the queue, so a checkpoint resumes at the next batch the
    trainer would have consumed.
    """

    def __init__(self, iterator: Iterator[Any], size: int = 2,
                 transform: Callable[[Any], Any] | None = None):
        self._it, self._size, self._transform = iterator, max(int(size), 1), transform
        self._state = self._inner_state()
        self._start()

    def _inner_state(self) -> dict[str, Any] | None:
        get = getattr(self._it, "get_state", None)
        return dict(get()) if get is not None else None

    def _start(self) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=self._size)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._work, name="prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _work(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    item = next(self._it)
                except StopIteration:
                    self._put((_END, None))
                    return
                state = self._inner_state()
                if self._transform is not None:
                    item = self._transform(item)
                if not self._put((item, state)):
                    return
        except BaseException as e:  # handed to the consumer, raised there
            self._put((e, _END))

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item, state = self._queue.get()
        if item is _END:
            self._done = True
            raise StopIteration
        if state is _END:
            self._done = True
            raise item
        self._state = state
        return item

    def get_state(self) -> dict[str, Any]:
        if self._state is None:
            raise TypeError(f"{type(self._it).__name__} has no get_state()")
        return dict(self._state)

    def set_state(self, state: dict[str, Any]) -> None:
        """Stops the thread, repositions the wrapped iterator, refills from there."""
        self.close()
        self._it.set_state(state)
        self._state = self._inner_state()
        self._start()

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def prefetch(iterator: Iterator[Any], size: int = 2,
             transform: Callable[[Any], Any] | None = None) -> Prefetcher:
    """Keep the next `size` items ready in a background thread (see `Prefetcher`)."""
    return Prefetcher(iterator, size=size, transform=transform)


# --------------------------------------------------------------------------------------------
# Device placement


def shard_batch(batch: Batch, sharding: jax.sharding.NamedSharding) -> dict[str, jax.Array]:
    """Global `jax.Array`s split on the leading (data) axis from this process's rows.

    `batch` holds this process's rows (what TrainIterator/EvalBatches yield); the global batch
    is process_count times as long. Rank-1 fields (labels, weights, index) use the same leading
    axis partition as the token arrays.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec

    spec = tuple(sharding.spec)
    axis = spec[0] if spec else None
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        target = NamedSharding(sharding.mesh, PartitionSpec(axis, *[None] * (value.ndim - 1)))
        global_shape = (value.shape[0] * jax.process_count(), *value.shape[1:])
        out[key] = jax.make_array_from_process_local_data(target, value, global_shape)
    return out
