"""What a packed row tells the model: which tokens belong together, where each example starts.

A packed row holds several examples one after another (`packing.py` builds them on the host).
Attention stays inside an example (a block-diagonal mask from `segment_ids`), positions restart
at each example, and the head reads one vector per example slot, so every example gets the
logits it would get alone in a padded batch.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class PackedRows:
    """segment_ids [rows, length]: 1..E for the examples of a row in order, 0 for padding;
    positions [rows, length]: 0-based within each example; starts [rows, E]: the first token
    of example slot e (segment e + 1) of each row (any in-range value for an empty slot)."""

    segment_ids: jax.Array
    positions: jax.Array
    starts: jax.Array

    def attends(self) -> jax.Array:
        """[rows, 1, length, length]: query and key in the same segment. Padding attends to
        padding only, so no softmax row is empty."""
        seg = self.segment_ids
        return (seg[:, :, None] == seg[:, None, :])[:, None]

    def pool(self, hidden: jax.Array, pooling: str) -> jax.Array:
        """[rows * E, hidden]: each slot's first token ("cls") or the mean over its segment
        ("mean"; an empty slot gives zeros)."""
        rows, slots = self.starts.shape
        if pooling == "mean":
            ids = jnp.arange(1, slots + 1, dtype=self.segment_ids.dtype)
            member = (self.segment_ids[:, None, :] == ids[None, :, None]).astype(jnp.float32)
            total = jnp.einsum("rel,rlh->reh", member, hidden.astype(jnp.float32))
            x = (total / jnp.maximum(member.sum(-1, keepdims=True), 1.0)).astype(hidden.dtype)
        else:
            x = jnp.take_along_axis(hidden, self.starts[:, :, None], axis=1)
        return x.reshape(rows * slots, hidden.shape[-1])
