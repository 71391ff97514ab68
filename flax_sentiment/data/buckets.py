"""Length buckets: the few padded lengths a split's batches take, so XLA compiles one program
per bucket. Its own module (no imports of ours) because the config's defaults, the tokenized
splits and the batching all need it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

# Fine steps at the short end: SST-2/tweets are mostly < 32 tokens, where coarse buckets waste most.
DEFAULT_BUCKETS = (6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def make_buckets(buckets: Iterable[int], max_length: int) -> list[int]:
    """Sorted bucket lengths clipped to `max_length`, which is always the last bucket."""
    kept = sorted({int(b) for b in buckets if 0 < int(b) < int(max_length)})
    return kept + [int(max_length)]


def bucket_of(lengths: np.ndarray, buckets: Sequence[int]) -> np.ndarray:
    """Index of the smallest bucket >= each length."""
    ids = np.searchsorted(np.asarray(buckets), lengths, side="left")
    if ids.size and ids.max() >= len(buckets):
        raise ValueError(f"an example of {int(lengths.max())} tokens is longer than the largest "
                         f"bucket {buckets[-1]}")
    return ids
