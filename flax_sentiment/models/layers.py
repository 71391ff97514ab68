"""Building blocks shared by every encoder: embeddings, attention, feed-forward, layers, heads.

Attribute names are ours and architecture-neutral; `weights.py` maps them to each Hugging Face
architecture's tensor names. Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from flax_sentiment.errors import UserError
from flax_sentiment.models.config import EncoderConfig

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise UserError(
            f"hidden_act {name!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        ) from None


def _linear(cfg: EncoderConfig, din: int, dout: int, dtype, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        din, dout, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs,
    )


def _norm(cfg: EncoderConfig, dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # LayerNorm statistics stay float32 even under bfloat16 compute.
    return nnx.LayerNorm(dim, epsilon=cfg.layer_norm_eps, dtype=jnp.float32,
                         param_dtype=jnp.float32, rngs=rngs)


def _embed(cfg: EncoderConfig, num: int, dim: int, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=nnx.initializers.normal(cfg.initializer_range), rngs=rngs)


def _fmix32(x: jax.Array) -> jax.Array:
    """MurmurHash3's 32-bit finalizer: a bijection that mixes every input bit into every output."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * jnp.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def _mul_wide(a: jax.Array, b: int) -> tuple[jax.Array, jax.Array]:
    """(hi, lo) uint32 words of the exact 64-bit product a * b (b < 2^32), by 16-bit limbs."""
    a0, a1 = a & jnp.uint32(0xFFFF), a >> 16
    b0, b1 = jnp.uint32(b & 0xFFFF), jnp.uint32(b >> 16)
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> 16) + (p01 & jnp.uint32(0xFFFF)) + (p10 & jnp.uint32(0xFFFF))
    hi = p11 + (p01 >> 16) + (p10 >> 16) + (mid >> 16)
    return hi, (p00 & jnp.uint32(0xFFFF)) | (mid << 16)


def _flat_counter(shape: tuple[int, ...], coords: list[jax.Array]
                  ) -> tuple[jax.Array | None, jax.Array]:
    """(hi, lo) uint32 words of the row-major flat index of uint32 `coords` (one per axis).

    hi is None when the array has at most 2^32 elements (decided at trace time): then lo is the
    whole index, computed as before hi existed, so ordinary shapes keep their masks at no cost.
    """
    size = math.prod(shape)
    if size > 1 << 64:
        raise ValueError(f"counter_hash_bits: shape {shape} has over 2^64 elements")
    lo = jnp.zeros((), jnp.uint32)
    hi = None if size <= 1 << 32 else jnp.zeros((), jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        c, p_hi = coords[axis], None
        if (shape[axis] - 1) * stride < 1 << 32:
            p_lo = c * jnp.uint32(stride % (1 << 32))  # exact (c < shape[axis])
        else:  # c * stride needs 64 bits
            p_hi, p_lo = _mul_wide(c, stride % (1 << 32))
            if stride >> 32:
                p_hi = p_hi + c * jnp.uint32(stride >> 32)
        lo = lo + p_lo  # wraps mod 2^32, as the index always did
        if hi is not None:  # add with carry
            hi = hi + (lo < p_lo).astype(jnp.uint32)
            if p_hi is not None:
                hi = hi + p_hi
        stride *= shape[axis]
    return hi, lo


def _hash(key: jax.Array, hi: jax.Array | None, lo: jax.Array) -> jax.Array:
    """Two seeds from `key` (so the bits are a pure function of it) enter before and between the
    hashes; hi enters through fmix32(hi), which is 0 for hi == 0 (bits below 2^32 unchanged)."""
    seeds = jax.random.bits(key, (2,), jnp.uint32)
    second = seeds[1] if hi is None else seeds[1] ^ _fmix32(hi)
    return _fmix32(_fmix32(lo ^ seeds[0]) + second)


def counter_hash_bits(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """uint32 random bits of `shape`: a double-hashed element counter, seeded from `key`.

    jax.random's threefry runs as a rolled loop on CPU (~40 ns per number); dropout on the
    attention probabilities needs ~40M numbers per BERT-small step. This is ~10 integer ops per
    element, fused into the consumer: dropout masks for free. The counter is 64-bit (two
    uint32 words) for arrays of 2^32 elements or more, so no two elements share a counter.
    """
    coords = [jax.lax.broadcasted_iota(jnp.uint32, shape, axis) for axis in range(len(shape))]
    hi, lo = _flat_counter(shape, coords)
    return _hash(key, hi, jnp.broadcast_to(lo, shape))


def counter_hash_bits_at(key: jax.Array, shape: tuple[int, ...], coords) -> jax.Array:
    """`counter_hash_bits(key, shape)[tuple(coords.T)]` without building `shape`: [n] uint32.

    Lets tests look at chosen elements of shapes too big to materialise.
    """
    coords = jnp.asarray(coords, jnp.uint32)
    hi, lo = _flat_counter(shape, [coords[:, axis] for axis in range(len(shape))])
    return _hash(key, hi, jnp.broadcast_to(lo, coords.shape[:1]))


class Dropout(nnx.Module):
    """`nnx.Dropout`'s interface and semantics (inverted dropout, `rngs.dropout()` keys), with the
    keep mask from `counter_hash_bits` instead of `jax.random.bernoulli`."""

    def __init__(self, rate: float):
        self.rate = float(rate)

    def __call__(self, x: jax.Array, *, deterministic: bool, rngs=None) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        if rngs is None:
            raise ValueError("Dropout needs rngs when deterministic=False")
        threshold = min(int(round(self.rate * 2.0 ** 32)), 2 ** 32 - 1)
        keep = counter_hash_bits(rngs.dropout(), x.shape) >= jnp.uint32(threshold)
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.word = _embed(cfg, cfg.vocab_size, cfg.embedding_size, dtype, rngs)
        self.position = _embed(cfg, cfg.max_position_embeddings, cfg.embedding_size, dtype, rngs)
        self.token_type = (
            _embed(cfg, cfg.type_vocab_size, cfg.embedding_size, dtype, rngs)
            if cfg.type_vocab_size > 0 else None
        )
        self.norm = _norm(cfg, cfg.embedding_size, rngs)
        self.dropout = Dropout(cfg.hidden_dropout)
        self.projection = (
            _linear(cfg, cfg.embedding_size, cfg.hidden_size, dtype, rngs)
            if cfg.project_embeddings else None
        )

    def position_ids(self, input_ids: jax.Array) -> jax.Array:
        if self.cfg.padding_aware_positions:
            mask = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(mask, axis=1) * mask + self.cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs) -> jax.Array:
        x = self.word(input_ids) + self.position(self.position_ids(input_ids))
        if self.token_type is not None:
            if token_type_ids is None:
                token_type_ids = jnp.zeros_like(input_ids)
            x = x + self.token_type(token_type_ids)
        x = self.norm(x).astype(self.dtype)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        if self.projection is not None:
            x = self.projection(x)
        return x


class Attention(nnx.Module):
    """Multi-head self-attention with the residual connection and post-LayerNorm."""

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        h = cfg.hidden_size
        if h % cfg.num_heads:
            raise UserError(f"hidden_size {h} is not divisible by num_attention_heads "
                            f"{cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.dtype = dtype
        self.query = _linear(cfg, h, h, dtype, rngs)
        self.key = _linear(cfg, h, h, dtype, rngs)
        self.value = _linear(cfg, h, h, dtype, rngs)
        self.out = _linear(cfg, h, h, dtype, rngs)
        self.norm = _norm(cfg, h, rngs)
        self.attention_dropout = Dropout(cfg.attention_dropout)
        # Rate 0 is the identity: DistilBERT has no dropout after its attention output projection.
        self.dropout = Dropout(cfg.hidden_dropout if cfg.attention_output_dropout else 0.0)

    def __call__(self, x, bias, *, deterministic: bool, rngs) -> jax.Array:
        b, n, h = x.shape
        heads, d = self.num_heads, h // self.num_heads
        # Scale q (b*n*h values) rather than the scores (b*h*n*n), as PyTorch's SDPA does.
        q = (self.query(x) * jnp.asarray(1 / math.sqrt(d), x.dtype)).reshape(b, n, heads, d)
        k = self.key(x).reshape(b, n, heads, d)
        v = self.value(x).reshape(b, n, heads, d)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
        scores = scores + bias
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        probs = self.attention_dropout(probs, deterministic=deterministic, rngs=rngs)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, h)
        y = self.dropout(self.out(ctx), deterministic=deterministic, rngs=rngs)
        return self.norm(y + x).astype(self.dtype)


class FeedForward(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.act = activation(cfg.hidden_act)
        self.inner = _linear(cfg, cfg.hidden_size, cfg.intermediate_size, dtype, rngs)
        self.outer = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, dtype, rngs)
        self.norm = _norm(cfg, cfg.hidden_size, rngs)
        # ALBERT builds this dropout but never applies it: rate 0, the identity.
        self.dropout = Dropout(cfg.hidden_dropout if cfg.ffn_output_dropout else 0.0)

    def __call__(self, x, *, deterministic: bool, rngs) -> jax.Array:
        y = self.outer(self.act(self.inner(x)))
        y = self.dropout(y, deterministic=deterministic, rngs=rngs)
        return self.norm(y + x).astype(self.dtype)


class TransformerLayer(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.attention = Attention(cfg, dtype=dtype, rngs=rngs)
        self.ffn = FeedForward(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, bias, *, deterministic: bool, rngs) -> jax.Array:
        x = self.attention(x, bias, deterministic=deterministic, rngs=rngs)
        return self.ffn(x, deterministic=deterministic, rngs=rngs)


class ClassificationHead(nnx.Module):
    """first token -> [dropout] -> dense -> activation -> dropout -> out.

    BERT/ALBERT (pooler + classifier, tanh) and DistilBERT (pre_classifier, relu) skip the first
    dropout; RoBERTa (tanh) and ELECTRA (gelu) apply it.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.act = activation(cfg.head_activation)
        self.dropout_first = cfg.head_dropout_first
        self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, dtype, rngs)
        self.out = _linear(cfg, cfg.hidden_size, cfg.num_labels, dtype, rngs)
        self.dropout = Dropout(cfg.classifier_dropout)

    def __call__(self, hidden, *, deterministic: bool, rngs) -> jax.Array:
        x = hidden[:, 0]
        if self.dropout_first:
            x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        x = self.act(self.dense(x))
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return self.out(x).astype(jnp.float32)
