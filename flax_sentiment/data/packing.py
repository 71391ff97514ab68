"""Sequence packing: several short examples per row, so few row shapes serve every batch.

On short texts (SST-2 and tweets: mostly under 32 tokens) a padded batch is a compile per
length bucket and padding inside each bucket. Packed, a row of `pack_length` tokens holds
examples back to back; the model keeps them apart (`models.packing.PackedRows`: block-diagonal
attention, positions restarting per example, one head vector per example), so every example
gets the logits it would get alone.

What a batch is stays what it was: `train.batch_size` EXAMPLES per step (the learning-rate
schedule, steps per epoch and a sweep's batch sizes keep their meaning). Each step's examples
are packed first-fit-decreasing into as few rows as they need, rounded up to a multiple of
`row_multiple` (devices x micro-batches; every process gets the same number of rows): the row
count is the only shape that varies. Examples are drawn uniformly at random each epoch (no
length grouping), or, with `sampling="stratified"` (`data.pack_sampling`), each step takes one
example from each of `batch_size` length strata (the epoch sorted by length, ties in random
order, cut into `batch_size` runs of consecutive lengths; each run dealt over the steps in a
random order): every step then holds nearly the same number of tokens and needs the same row
count, so one shape is compiled instead of five or six (on SST-2 every step of an epoch packs
into 7 rows of 66, as many as uniform draws need on average), and each step is still a random
sample of every part of the length distribution. A changed sampling is another data order, so
a run does not resume under it. Per-example fields (labels, weights, index, teacher logits)
are [rows, slots]: slot e of a row is its segment e + 1; empty slots weigh 0.
Evaluation packs every example into rows in one fixed shape, a varying number per batch.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flax_sentiment.config import PACK_SAMPLINGS, option
from flax_sentiment.data import batching
from flax_sentiment.data.batching import Batch, TrainIterator, _local_rows
from flax_sentiment.data.buckets import make_buckets
from flax_sentiment.errors import UserError
from flax_sentiment.parallel import round_up

if TYPE_CHECKING:
    from flax_sentiment.data.splits import TokenizedSplit

log = logging.getLogger(__name__)


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Positions into `lengths` grouped into rows whose lengths sum to <= `capacity`: longest
    first, each into the first row with room (within 11/9 of the fewest rows possible)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = int(lengths[i])
        if n > capacity:
            raise UserError(f"an example of {n} tokens does not fit data.pack_length={capacity}")
        for r, free in enumerate(room):
            if n <= free:
                rows[r].append(int(i))
                room[r] -= n
                break
        else:
            rows.append([int(i)])
            room.append(capacity - n)
    return rows


def materialize_packed(split: TokenizedSplit, rows: Sequence[Sequence[int]], length: int,
                       slots: int, pad_id: int) -> Batch:
    """A packed batch: `rows[r]` are the examples (indices into `split`) of row r in order.

    Padding tokens form segment 0 (they attend to each other only); an empty row is all
    padding, an empty slot has weight 0 and index -1 (and reads token 0 of its row).
    """
    n = len(rows)
    input_ids = np.full((n, length), pad_id, np.int32)
    token_type_ids = np.zeros((n, length), np.int32)
    segment_ids = np.zeros((n, length), np.int32)
    positions = np.zeros((n, length), np.int32)
    starts = np.zeros((n, slots), np.int32)
    labels = np.zeros((n, slots), np.int32)
    weights = np.zeros((n, slots), np.float32)
    index = np.full((n, slots), -1, np.int32)
    teacher = split.teacher_logits
    teacher_logits = (None if teacher is None
                      else np.zeros((n, slots, *teacher.shape[1:]), np.float32))
    for r, members in enumerate(rows):
        if len(members) > slots:
            raise ValueError(f"row {r} holds {len(members)} examples, more than {slots} slots")
        at = 0
        for e, i in enumerate(members):
            m, s = int(split.lengths[i]), int(split.starts[i])
            input_ids[r, at:at + m] = split.input_ids[s:s + m]
            if split.token_type_ids is not None:
                token_type_ids[r, at:at + m] = split.token_type_ids[s:s + m]
            segment_ids[r, at:at + m] = e + 1
            positions[r, at:at + m] = np.arange(m)
            starts[r, e], labels[r, e], weights[r, e], index[r, e] = at, split.labels[i], 1.0, i
            if teacher_logits is not None:
                teacher_logits[r, e] = teacher[i]
            at += m
    batch = {"input_ids": input_ids, "token_type_ids": token_type_ids,
             "segment_ids": segment_ids, "positions": positions, "starts": starts,
             "labels": labels, "weights": weights, "index": index}
    if teacher_logits is not None:
        batch["teacher_logits"] = teacher_logits
    return batch


def check_pack_length(split: TokenizedSplit, pack_length: int) -> None:
    longest = int(split.lengths.max()) if len(split) else 0
    if longest > pack_length:
        raise UserError(f"data.pack_length={pack_length} is shorter than the longest example "
                        f"of {split.name} ({longest} tokens): use at least data.max_length")


class PackedTrainIterator(TrainIterator):
    """`TrainIterator`'s resumable epochs of `batch_size` examples, each step's examples packed
    into rows of `pack_length` tokens (see the module docstring). Same state, same resume."""

    def __init__(self, split: TokenizedSplit, batch_size: int, pack_length: int, *, seed: int,
                 pad_id: int, row_multiple: int = 1, sampling: str = "uniform",
                 state: dict[str, int] | None = None, process_index: int | None = None,
                 process_count: int | None = None):
        check_pack_length(split, pack_length)
        if sampling not in PACK_SAMPLINGS:
            raise UserError(f"data.pack_sampling={sampling!r} is not one of {PACK_SAMPLINGS}")
        self.pack_length, self.row_multiple = int(pack_length), int(row_multiple)
        self.sampling = sampling
        super().__init__(split, batch_size, (int(pack_length),), seed=seed, pad_id=pad_id,
                         state=state, process_index=process_index, process_count=process_count)
        self.steps_per_epoch = -(-len(split) // self.batch_size)
        self._rows = None  # rows, not examples, are split over processes here
        self._process = (process_index, process_count)
        # Slots per row: as many examples as can share one (static for the run).
        shortest = max(int(split.lengths.min()), 1)
        self.slots = min(self.batch_size, self.pack_length // shortest)

    def plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(row count per step [S], examples per step [S, batch_size], -1 = none); the packed
        rows of each step are kept with them for `__next__`."""
        if self._plan is None or self._plan[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.split))
            steps = np.full(self.steps_per_epoch * self.batch_size, -1, np.int64)
            if self.sampling == "stratified":
                # Longest first, ties in the random order; stratum k is the k-th run of
                # steps_per_epoch, dealt over the steps in a random order.
                steps[: len(order)] = order[np.argsort(-self.split.lengths[order], kind="stable")]
                strata = steps.reshape(self.batch_size, self.steps_per_epoch)
                steps = np.stack([rng.permutation(s) for s in strata], axis=1)
            else:
                steps[: len(order)] = order
                steps = steps.reshape(self.steps_per_epoch, self.batch_size)
            packed = [self.pack(s[s >= 0]) for s in steps]
            counts = np.array([round_up(len(rows), self.row_multiple) for rows in packed])
            self._plan = (epoch, counts, steps, packed)
        return self._plan[1], self._plan[2]

    def pack(self, examples: np.ndarray) -> list[list[int]]:
        """Rows of `examples` (split indices), each row's examples in packing order."""
        rows = first_fit_decreasing(self.split.lengths[examples], self.pack_length)
        return [[int(examples[i]) for i in row] for row in rows]

    def row_counts(self, epochs: Sequence[int] = (0,)) -> list[int]:
        """The distinct row counts (compiled shapes) of these epochs' steps."""
        return sorted({int(c) for e in epochs for c in self.plan(e)[0]})

    def dummy(self, key: int) -> Batch:
        """A batch of `key` rows (this process's share), all empty."""
        local = _local_rows(key, *self._process)
        return materialize_packed(self.split, [[]] * (local.stop - local.start),
                                  self.pack_length, self.slots, self.pad_id)

    def __next__(self) -> Batch:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        counts, _ = self.plan(self.epoch)
        count, rows = int(counts[self.position]), self._plan[3][self.position]
        self.position += 1
        rows = rows + [[] for _ in range(count - len(rows))]
        local = _local_rows(count, *self._process)
        return materialize_packed(self.split, rows[local], self.pack_length, self.slots,
                                  self.pad_id)


class PackedEvalBatches:
    """Every example exactly once, packed: all rows of a split (first-fit-decreasing) in
    batches of `rows_per_batch` rows, one shape for the whole split; the last batch is filled
    with empty rows. `index` maps predictions back to `split.texts`."""

    def __init__(self, split: TokenizedSplit, rows_per_batch: int, pack_length: int, *,
                 pad_id: int, process_index: int | None = None,
                 process_count: int | None = None):
        check_pack_length(split, pack_length)
        self.split, self.pad_id, self.pack_length = split, int(pad_id), int(pack_length)
        self.rows_per_batch = int(rows_per_batch)
        self._local = _local_rows(self.rows_per_batch, process_index, process_count)
        rows = first_fit_decreasing(split.lengths, self.pack_length) if len(split) else []
        self.slots = max((len(r) for r in rows), default=1)
        rows += [[] for _ in range(round_up(max(len(rows), 1), self.rows_per_batch)
                                   - len(rows))]
        self._batches = [rows[i:i + self.rows_per_batch]
                         for i in range(0, len(rows), self.rows_per_batch)]

    def __len__(self) -> int:
        return len(self._batches)

    def shapes(self) -> list[Batch]:
        """One batch of the split's one shape."""
        return [next(iter(self))] if self._batches else []

    def __iter__(self) -> Iterator[Batch]:
        for rows in self._batches:
            yield materialize_packed(self.split, rows[self._local], self.pack_length,
                                     self.slots, self.pad_id)


def eval_rows(batch_size: int, pack_length: int, mean_length: float, multiple: int) -> int:
    """Rows per packed eval batch that hold about `batch_size` examples of `mean_length`."""
    return round_up(int(np.ceil(batch_size * mean_length / pack_length)), multiple)


def describe(it: PackedTrainIterator) -> dict[str, Any]:
    """Row counts and the share of real tokens over the first epoch (for the log and bench)."""
    counts, _ = it.plan(0)
    tokens = int(it.split.lengths.sum())
    return {"row_counts": it.row_counts(), "rows_per_step": float(np.mean(counts)),
            "token_efficiency": tokens / float(counts.sum() * it.pack_length)}


def pack_length(data_config: Any) -> int:
    """Row length of a config's packed batches, 0 when it pads into length buckets:
    `data.pack_length` as set, -1 meaning rows of `data.max_length` (the default)."""
    pack = int(option(data_config, "pack_length", 0))
    return int(data_config.max_length) if pack == -1 else pack


def eval_batches(split: TokenizedSplit, data_config: Any, batch_size: int, *, pad_id: int,
                 multiple: int = 1, process_index: int | None = None,
                 process_count: int | None = None) -> Any:
    """A split's evaluation batches as the run's config asks: packed when `data.pack_length`
    is set (rows for about `batch_size` examples each), else length-bucketed."""
    pack = pack_length(data_config)
    if pack:
        mean = float(split.lengths.mean()) if len(split) else 1.0
        return PackedEvalBatches(split, eval_rows(batch_size, pack, mean, multiple), pack,
                                 pad_id=pad_id, process_index=process_index,
                                 process_count=process_count)
    buckets = make_buckets(data_config.buckets, int(data_config.max_length))
    return batching.EvalBatches(split, round_up(batch_size, multiple), buckets,
                                pad_id=pad_id, process_index=process_index,
                                process_count=process_count)
