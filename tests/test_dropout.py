"""The dropout mask hash: unchanged for ordinary shapes, no repeats past 2^32 elements."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax_sentiment.models.layers import (
    _flat_counter,
    _fmix32,
    counter_hash_bits,
    counter_hash_bits_at,
)

HUGE = (2048, 16, 512, 512)  # 2^33 elements: rows 1024 apart are 2^32 elements apart


def old_counter_hash_bits(key, shape):
    """The 32-bit-counter version, frozen: masks of arrays under 2^32 elements must not change."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride = (stride * shape[axis]) % (1 << 32)
    return _fmix32(_fmix32(index ^ seeds[0]) + seeds[1])


def old_counter_hash_bits_at(key, shape, coords):
    """The frozen version at chosen coordinates (its uint32 counter wraps at 2^32)."""
    flat = sum(int(c) * int(np.prod(shape[a + 1:], dtype=object)) for a, c in enumerate(coords))
    flat %= 1 << 32
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    return int(_fmix32(_fmix32(jnp.uint32(flat) ^ seeds[0]) + seeds[1]))


def _counter(shape, coords) -> list[int]:
    """Our flat element counter at `coords` [n, ndim], as Python ints."""
    hi, lo = _flat_counter(shape, [jnp.asarray(coords[:, a], jnp.uint32)
                                   for a in range(len(shape))])
    return ((np.asarray(hi).astype(object) << 32) + np.asarray(lo).astype(object)).tolist()


def _random_coords(shape, n, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, d, n) for d in shape], axis=-1)


@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (4, 2, 33, 17), (257,)])
def test_small_shapes_keep_their_bits(shape):
    key = jax.random.key(7)
    bits = np.asarray(counter_hash_bits(key, shape))
    np.testing.assert_array_equal(bits, np.asarray(old_counter_hash_bits(key, shape)))
    coords = np.indices(shape).reshape(len(shape), -1).T
    np.testing.assert_array_equal(np.asarray(counter_hash_bits_at(key, shape, coords)),
                                  bits.ravel())


def test_rows_2_to_the_32_elements_apart_get_different_bits():
    key = jax.random.key(0)
    lower = _random_coords(HUGE, 4096)
    lower[:, 0] %= 1024
    upper = lower + [1024, 0, 0, 0]
    a = np.asarray(counter_hash_bits_at(key, HUGE, lower))
    b = np.asarray(counter_hash_bits_at(key, HUGE, upper))
    assert (a != b).mean() > 0.999
    differing_bits = np.unpackbits((a ^ b).view(np.uint8)).mean()
    assert abs(differing_bits - 0.5) < 0.01  # as unrelated as two random words
    # The frozen 32-bit counter repeated them: this is the bug the test above catches.
    assert old_counter_hash_bits_at(key, HUGE, lower[0]) == old_counter_hash_bits_at(
        key, HUGE, upper[0])
    # The first 2^32 elements keep the bits the 32-bit counter gave them.
    assert [old_counter_hash_bits_at(key, HUGE, c) for c in lower[:8]] == a[:8].tolist()


@pytest.mark.parametrize("shape", [HUGE, (8192, 16, 512, 512), (70001, 3, 1000, 1001),
                                   (5, 2**31 + 11, 3), (3, 2**31 - 1, 2**31 + 5)])
def test_flat_counter_is_exact(shape):
    """(hi, lo) equals the Python-int row-major index, near and far beyond 2^32 (up to ~2^64)."""
    coords = _random_coords(shape, 512, seed=len(shape))
    last = np.array(shape) - 1
    coords[:3] = [last, last // 2, [d // 2 + 1 for d in shape[:1]] + [0] * (len(shape) - 1)]
    want = [sum(int(c) * int(np.prod(shape[a + 1:], dtype=object)) for a, c in enumerate(row))
            for row in coords]
    assert _counter(shape, coords) == want
    assert max(want) >= 1 << 32


def test_flat_counter_carries_across_2_to_the_32():
    """Consecutive elements around every multiple of 2^32 in a 2^35-element shape."""
    shape = (8192, 16, 512, 512)
    flat = np.array([(m << 32) + d for m in range(1, 8) for d in (-2, -1, 0, 1)], dtype=object)
    coords = np.array([np.unravel_index(int(f), shape) for f in flat], dtype=np.int64)
    assert _counter(shape, coords) == flat.tolist()
