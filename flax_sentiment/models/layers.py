"""Building blocks shared by every encoder: embeddings, attention, feed-forward, layers, heads.

Attribute names are ours and architecture-neutral; `weights.py` maps them to each Hugging Face
architecture's tensor names. Parameters are float32; `dtype` is the compute dtype.
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_sentiment.errors import UserError
from flax_sentiment.models import attention as attention_lib
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


# Dropout keys of layers swapped in after construction (LoRA's unmerged adapters,
# `lora.adapter_dropout`), set while a train step's forward pass is traced; None = none. The
# encoder hands it to each layer as an argument, so that `nnx.remat` carries its key counter
# into the checkpoint's trace and back.
ADAPTER_RNGS: contextvars.ContextVar[nnx.Rngs | None] = contextvars.ContextVar(
    "adapter_rngs", default=None)

LOW_PRECISION = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@jax.custom_vjp
def _mixed_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    return jnp.matmul(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _mixed_matmul_fwd(x, w):
    return _mixed_matmul(x, w), (x, w)


def _mixed_matmul_bwd(res, g):
    x, w = res
    g = g.astype(x.dtype)
    gx = jnp.matmul(g, w.T, preferred_element_type=jnp.float32).astype(x.dtype)
    lead = tuple(range(x.ndim - 1))
    gw = jnp.tensordot(x, g, (lead, lead), preferred_element_type=jnp.float32)
    return gx, gw.astype(w.dtype)


_mixed_matmul.defvjp(_mixed_matmul_fwd, _mixed_matmul_bwd)


def mixed_dot_general(x: jax.Array, w: jax.Array, dimension_numbers, precision=None,
                      preferred_element_type=None, **kwargs) -> jax.Array:
    """`Linear`'s product: for bfloat16/float16 operands, accumulated in float32 in the forward
    pass *and* in both backward products (returned in the compute dtype, like PyTorch's
    autocast). Why: XLA's CPU dots reach the AVX512-BF16 / AMX kernels only with a float32
    result, and plain autodiff of a float32-result dot runs its backward products in float32
    (measured on this CPU: the bfloat16 MiniLM step 312 ms plain, 212 ms this way, against 279
    ms float32). Other dtypes and shapes take `lax.dot_general` unchanged."""
    (contract_x, contract_w), batch = dimension_numbers
    if (x.dtype in LOW_PRECISION and w.dtype == x.dtype and preferred_element_type is None
            and precision is None and tuple(contract_x) == (x.ndim - 1,)
            and tuple(contract_w) == (0,) and batch == ((), ()) and w.ndim == 2
            and kwargs.get("out_sharding") is None):
        return _mixed_matmul(x, w)
    if preferred_element_type is not None:
        kwargs["preferred_element_type"] = preferred_element_type
    return jax.lax.dot_general(x, w, dimension_numbers, precision=precision, **kwargs)


def normal_init(stddev: float) -> Callable[..., jax.Array]:
    """`nnx.initializers.normal(stddev)`, the same draws, with the scaling kept out of the
    sampler's fusion: under `jit` (`pretrained` builds a fresh head that way) XLA would
    otherwise fuse the multiply into the sampler and round 1 ulp apart from an eager build."""
    def init(key: jax.Array, shape, dtype=jnp.float32, out_sharding=None) -> jax.Array:
        draw = jax.random.normal(key, shape, dtype, out_sharding=out_sharding)
        return jax.lax.optimization_barrier(draw) * jnp.array(stddev, dtype)
    return init


def _linear(cfg: EncoderConfig, din: int, dout: int, dtype, rngs: nnx.Rngs, *,
            bias: bool = True) -> nnx.Linear:
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
        kernel_init=normal_init(cfg.initializer_range), rngs=rngs,
        dot_general=mixed_dot_general,
    )


def norm_layer(cfg: EncoderConfig, dim: int, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # LayerNorm statistics stay float32 even under bfloat16 compute.
    return nnx.LayerNorm(dim, epsilon=cfg.layer_norm_eps, use_bias=cfg.norm_bias,
                         dtype=jnp.float32, param_dtype=jnp.float32, rngs=rngs)


def _embed(cfg: EncoderConfig, num: int, dim: int, dtype, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(num, dim, dtype=dtype, param_dtype=jnp.float32,
                     embedding_init=normal_init(cfg.initializer_range), rngs=rngs)


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


def rotary(x: jax.Array, theta: float, positions: jax.Array | None = None) -> jax.Array:
    """Rotary position embedding of `x` [batch, length, heads, head_dim] at `positions`
    [batch, length] (default 0..n-1; a packed row restarts them at each example).

    As transformers computes it (so long positions round alike): float32 inverse frequencies
    and angles, and the rotate-half layout (dimension i pairs with i + head_dim / 2).
    """
    n, d = x.shape[1], x.shape[-1]
    inv_freq = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float32) / np.float32(d)))
    if positions is None:
        positions = jnp.arange(n)[None, :]
    angles = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., : d // 2]], axis=-1)
    return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _log_buckets(rel: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """DeBERTa's `make_log_bucket_position`, in float32 like it: distances below buckets // 2
    stay exact, longer ones share logarithmically wider buckets up to max_position."""
    mid = buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel)).astype(np.float32)
    log_pos = np.ceil(np.log(abs_pos / np.float32(mid))
                      / np.log(np.float32((max_position - 1) / mid))
                      * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel, log_pos * np.sign(rel)).astype(np.int64)


def relative_position_index(length: int, cfg: EncoderConfig) -> np.ndarray:
    """[length, length] rows of DeBERTa's relative embeddings for (query q, key k): the
    (bucketed) distance q - k shifted by the span and clipped to the table.

    Static for a sequence length, so computed once at trace time. Bucketing is odd in q - k, so
    the position->content term (distance k - q, negated) uses the same index.
    """
    pos = np.arange(length)
    rel = pos[:, None] - pos[None, :]
    if cfg.position_buckets > 0 and cfg.max_relative_positions > 0:
        rel = _log_buckets(rel, cfg.position_buckets, cfg.max_relative_positions)
    span = cfg.relative_span
    return np.clip(rel + span, 0, 2 * span - 1).astype(np.int32)


class RelativePositions(nnx.Module):
    """DeBERTa's relative-position embeddings, shared by every layer (optionally LayerNormed):
    `(table [2 * span, hidden], index [length, length])` for the attention layers.

    transformers builds the norm whenever `norm_rel_ebd` asks, even without relative attention;
    it is kept then (unused) so that an export has every tensor.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.table = (_embed(cfg, 2 * cfg.relative_span, cfg.hidden_size, dtype, rngs)
                      if cfg.relative_attention else None)
        self.norm = norm_layer(cfg, cfg.hidden_size, rngs) if cfg.norm_rel_embeddings else None

    def __call__(self, length: int) -> tuple[jax.Array, np.ndarray]:
        table = self.table.embedding[...]
        if self.norm is not None:
            table = self.norm(table)
        return table.astype(self.dtype), relative_position_index(length, self.cfg)


def position_bias_buckets(length: int, buckets: int, max_distance: int) -> np.ndarray:
    """[length, length] bucket of MPNet's relative-position bias for (query q, key k), as
    transformers' `MPNetEncoder.relative_position_bucket` computes it (float32 logarithms, so
    the bucket edges fall where they do there): keys before and after the query get half the
    buckets each; within a half, distances below a quarter of the buckets are exact, longer
    ones share logarithmically wider buckets, and max_distance and beyond share the last.
    Static for a sequence length, so computed once at trace time. Only the difference k - q
    enters, so a packed row (positions restarting at each example) needs no change: tokens of
    two examples never attend to each other."""
    pos = np.arange(length)
    n = pos[:, None] - pos[None, :]  # q - k: transformers' -relative_position
    half = buckets // 2
    out = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    exact = half // 2
    with np.errstate(divide="ignore"):
        scaled = (np.log(n.astype(np.float32) / np.float32(exact))
                  / np.float32(math.log(max_distance / exact)) * np.float32(half - exact))
    large = exact + np.where(n < exact, 0, scaled).astype(np.int64)
    out += np.where(n < exact, n, np.minimum(large, half - 1))
    return out.astype(np.int32)


class PositionBias(nnx.Module):
    """MPNet's relative-position bias, shared by every layer: [1, heads, length, length]."""

    def __init__(self, cfg: EncoderConfig, *, rngs: nnx.Rngs):
        self.buckets = cfg.position_bias_buckets
        self.max_distance = cfg.position_bias_max_distance
        self.table = _embed(cfg, self.buckets, cfg.num_heads, jnp.float32, rngs)

    def __call__(self, length: int) -> jax.Array:
        index = position_bias_buckets(length, self.buckets, self.max_distance)
        return self.table(jnp.asarray(index)).transpose(2, 0, 1)[None]


class Embeddings(nnx.Module):
    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.word = _embed(cfg, cfg.vocab_size, cfg.embedding_size, dtype, rngs)
        self.position = (
            _embed(cfg, cfg.max_position_embeddings, cfg.embedding_size, dtype, rngs)
            if cfg.absolute_positions else None
        )
        self.token_type = (
            _embed(cfg, cfg.type_vocab_size, cfg.embedding_size, dtype, rngs)
            if cfg.type_vocab_size > 0 else None
        )
        self.norm = norm_layer(cfg, cfg.embedding_size, rngs)
        self.dropout = Dropout(cfg.hidden_dropout if cfg.embedding_dropout is None
                               else cfg.embedding_dropout)
        self.projection = (
            _linear(cfg, cfg.embedding_size, cfg.hidden_size, dtype, rngs)
            if cfg.project_embeddings else None
        )

    def position_ids(self, input_ids: jax.Array, positions: jax.Array | None = None
                     ) -> jax.Array:
        """Rows of the position table. `positions` (0-based within each example of a packed
        row) are shifted as the architecture numbers them (RoBERTa: from pad + 1)."""
        if positions is not None:
            if self.cfg.padding_aware_positions:
                return positions + self.cfg.pad_token_id + 1
            return positions
        if self.cfg.padding_aware_positions:
            mask = (input_ids != self.cfg.pad_token_id).astype(jnp.int32)
            return jnp.cumsum(mask, axis=1) * mask + self.cfg.pad_token_id
        return jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)

    def __call__(self, input_ids, token_type_ids, *, deterministic: bool, rngs,
                 positions: jax.Array | None = None) -> jax.Array:
        x = self.word(input_ids)
        if self.position is not None:
            x = x + self.position(self.position_ids(input_ids, positions))
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
    """Multi-head self-attention with its residual connection and LayerNorm (after, or before).

    Config options: one fused q|k|v projection, rotary positions (`local` layers use their own
    theta), DeBERTa's disentangled relative-position scores. The mask (padding, packed
    segments, a sliding window; `attention.Mask`) comes from the encoder. `norm=False`: no norm
    (ModernBERT's first layer). `implementation` (static, set from config model.attention):
    the product's path, `attention.resolve`'d per call (a train step with attention dropout
    and `auto` takes `einsum`, its evaluation the kernel).
    """

    def __init__(self, cfg: EncoderConfig, *, local: bool = False, norm: bool = True,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        h = cfg.hidden_size
        if h % cfg.num_heads:
            raise UserError(f"hidden_size {h} is not divisible by num_attention_heads "
                            f"{cfg.num_heads}")
        self.num_heads = cfg.num_heads
        self.dtype = dtype
        self.pre_norm = cfg.pre_norm
        bias = cfg.attention_bias
        if cfg.fused_qkv:
            self.qkv = _linear(cfg, h, 3 * h, dtype, rngs, bias=bias)
            self.query = self.key = self.value = None
        else:
            self.qkv = None
            self.query = _linear(cfg, h, h, dtype, rngs, bias=bias)
            self.key = _linear(cfg, h, h, dtype, rngs, bias=bias)
            self.value = _linear(cfg, h, h, dtype, rngs, bias=bias)
        self.out = _linear(cfg, h, h, dtype, rngs, bias=bias)
        self.norm = norm_layer(cfg, h, rngs) if norm else None
        self.rope_theta = float(cfg.local_rope_theta if local else cfg.rope_theta)
        # DeBERTa divides each of its (1 + c2p + p2c) score terms by sqrt(that * head_dim).
        self.scale = 1 / math.sqrt(cfg.head_dim * (1 + cfg.c2p + cfg.p2c))
        rel = cfg.relative_attention
        self.c2p, self.p2c, self.share_att_key = rel and cfg.c2p, rel and cfg.p2c, cfg.share_att_key
        separate = not cfg.share_att_key
        self.pos_key = _linear(cfg, h, h, dtype, rngs) if self.c2p and separate else None
        self.pos_query = _linear(cfg, h, h, dtype, rngs) if self.p2c and separate else None
        self.pos_dropout = Dropout(cfg.hidden_dropout) if rel else None
        self.attention_dropout = Dropout(cfg.attention_dropout)
        self.implementation = "auto"
        self.interpret = False  # Pallas kernels in interpret mode (tests on a CPU)
        self.model_type, self.local = cfg.model_type, local
        # Rate 0 is the identity: DistilBERT has no dropout after its attention output projection.
        self.dropout = Dropout(cfg.hidden_dropout if cfg.attention_output_dropout else 0.0)

    def _project(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        b, n, h = x.shape
        shape = (b, n, self.num_heads, h // self.num_heads)
        if self.qkv is not None:
            qkv = self.qkv(x).reshape(b, n, 3, *shape[2:])
            return qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        return (self.query(x).reshape(shape), self.key(x).reshape(shape),
                self.value(x).reshape(shape))

    def _relative_scores(self, q, k, rel, *, deterministic: bool, rngs) -> jax.Array:
        """DeBERTa's c2p + p2c terms [batch, heads, q, k]; `q` is already scaled."""
        table, index = rel
        table = self.pos_dropout(table, deterministic=deterministic, rngs=rngs)
        rows, heads, d = table.shape[0], self.num_heads, q.shape[-1]
        b, n = q.shape[:2]
        scores = jnp.zeros((b, heads, n, n), jnp.float32)
        index = jnp.broadcast_to(jnp.asarray(index), (b, heads, n, n))
        if self.c2p:
            pos_key = (self.key if self.share_att_key else self.pos_key)(table)
            c2p = jnp.einsum("bqhd,rhd->bhqr", q, pos_key.reshape(rows, heads, d),
                             preferred_element_type=jnp.float32)
            scores = scores + jnp.take_along_axis(c2p, index, axis=-1)
        if self.p2c:
            pos_query = (self.query if self.share_att_key else self.pos_query)(table)
            pos_query = pos_query * jnp.asarray(self.scale, pos_query.dtype)
            p2c = jnp.einsum("bkhd,rhd->bhkr", k, pos_query.reshape(rows, heads, d),
                             preferred_element_type=jnp.float32)
            # [b, h, k, q] at row index[q, k], then to [b, h, q, k].
            scores = scores + jnp.take_along_axis(p2c, index.swapaxes(-1, -2),
                                                  axis=-1).swapaxes(-1, -2)
        return scores

    def path(self, mask: attention_lib.Mask, *, deterministic: bool) -> str:
        """The implementation this call takes (`attention.resolve`)."""
        return attention_lib.resolve(
            self.implementation, backend=jax.default_backend(), dtype=self.dtype,
            relative=bool(self.c2p or self.p2c), local=self.local,
            extra=mask.extra is not None, dropout=self.attention_dropout.rate,
            training=not deterministic, packed=mask.packed,
            length=mask.segment_ids.shape[1], capability=attention_lib.gpu_capability())

    def __call__(self, x, mask: attention_lib.Mask, rel=None, *, deterministic: bool, rngs,
                 positions: jax.Array | None = None) -> jax.Array:
        b, n, h = x.shape
        y = self.norm(x).astype(self.dtype) if self.pre_norm and self.norm is not None else x
        q, k, v = self._project(y)
        if self.rope_theta:
            q, k = rotary(q, self.rope_theta, positions), rotary(k, self.rope_theta, positions)
        # Scale q (b*n*h values) rather than the scores (b*h*n*n), as PyTorch's SDPA does.
        q = q * jnp.asarray(self.scale, q.dtype)
        path = "einsum" if rel is not None else self.path(mask, deterministic=deterministic)
        if path == "einsum":
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
            if rel is not None:
                scores = scores + self._relative_scores(q, k, rel, deterministic=deterministic,
                                                        rngs=rngs)
            scores = scores + mask.bias
            probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
            probs = self.attention_dropout(probs, deterministic=deterministic, rngs=rngs)
            ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, h)
        else:
            ctx = attention_lib.fused(q, k, v, mask, path,
                                      interpret=self.interpret).reshape(b, n, h)
        y = self.dropout(self.out(ctx), deterministic=deterministic, rngs=rngs)
        if self.pre_norm:
            return x + y
        return self.norm(y + x).astype(self.dtype)


class FeedForward(nnx.Module):
    """inner -> activation (or GLU) -> [dropout] -> outer -> dropout, residual, LayerNorm."""

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.pre_norm = cfg.pre_norm
        self.gated = cfg.gated_ffn
        self.act = activation(cfg.hidden_act)
        width = cfg.intermediate_size * (2 if cfg.gated_ffn else 1)
        self.inner = _linear(cfg, cfg.hidden_size, width, dtype, rngs, bias=cfg.ffn_bias)
        self.outer = _linear(cfg, cfg.intermediate_size, cfg.hidden_size, dtype, rngs,
                             bias=cfg.ffn_bias)
        self.norm = norm_layer(cfg, cfg.hidden_size, rngs)
        self.inner_dropout = Dropout(cfg.ffn_inner_dropout)
        # ALBERT builds this dropout but never applies it: rate 0, the identity.
        self.dropout = Dropout(cfg.hidden_dropout if cfg.ffn_output_dropout else 0.0)

    def __call__(self, x, *, deterministic: bool, rngs) -> jax.Array:
        y = self.inner(self.norm(x).astype(self.dtype) if self.pre_norm else x)
        if self.gated:
            y, gate = jnp.split(y, 2, axis=-1)
            y = self.act(y) * gate
        else:
            y = self.act(y)
        y = self.inner_dropout(y, deterministic=deterministic, rngs=rngs)
        y = self.dropout(self.outer(y), deterministic=deterministic, rngs=rngs)
        if self.pre_norm:
            return x + y
        return self.norm(y + x).astype(self.dtype)


class TransformerLayer(nnx.Module):
    """Attention then feed-forward; `index` (depth) decides local vs global attention and
    whether a pre-norm stack norms the attention input (not at depth 0)."""

    def __init__(self, cfg: EncoderConfig, index: int = 0, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.local = cfg.is_local_layer(index)
        self.attention = Attention(cfg, local=self.local, norm=not (cfg.pre_norm and index == 0),
                                   dtype=dtype, rngs=rngs)
        self.ffn = FeedForward(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x, mask: attention_lib.Mask, rel=None, *, deterministic: bool, rngs,
                 positions: jax.Array | None = None) -> jax.Array:
        x = self.attention(x, mask, rel, deterministic=deterministic, rngs=rngs,
                           positions=positions)
        return self.ffn(x, deterministic=deterministic, rngs=rngs)


class ClassificationHead(nnx.Module):
    """pool -> [dropout] -> dense -> activation -> [norm] -> dropout -> out.

    Pooling takes the first token, or the mean over the attention mask (ModernBERT's "mean").
    A packed batch (`packing.Packed`) pools each example of a row: its first token, or the mean
    over its own segment; the result has one row per example slot.
    BERT/ALBERT (pooler + classifier, tanh) and DistilBERT (pre_classifier, relu) skip the first
    dropout; RoBERTa (tanh), ELECTRA (gelu) and DeBERTa (gelu, its own pooler_dropout rate)
    apply it. ModernBERT norms after the activation.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if cfg.head_pooling not in ("cls", "mean"):
            raise UserError(f"head pooling {cfg.head_pooling!r} is not supported "
                            "(use 'cls' or 'mean')")
        self.act = activation(cfg.head_activation)
        self.pooling = cfg.head_pooling
        self.dense = _linear(cfg, cfg.hidden_size, cfg.hidden_size, dtype, rngs,
                             bias=cfg.head_dense_bias)
        self.norm = norm_layer(cfg, cfg.hidden_size, rngs) if cfg.head_norm else None
        self.out = _linear(cfg, cfg.hidden_size, cfg.num_labels, dtype, rngs)
        first = cfg.classifier_dropout if cfg.head_input_dropout is None else cfg.head_input_dropout
        self.input_dropout = Dropout(first) if cfg.head_dropout_first else None
        self.dropout = Dropout(cfg.classifier_dropout)

    def __call__(self, hidden, attention_mask=None, *, deterministic: bool, rngs,
                 packed=None) -> jax.Array:
        if packed is not None:
            x = packed.pool(hidden, self.pooling)
        elif self.pooling == "mean":
            if attention_mask is None:
                attention_mask = jnp.ones(hidden.shape[:2], jnp.int32)
            weights = attention_mask.astype(jnp.float32)[..., None]
            # At least 1: an all-padding row gives zeros, not NaN (transformers: NaN).
            x = (hidden.astype(jnp.float32) * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
            x = x.astype(hidden.dtype)
        else:
            x = hidden[:, 0]
        if self.input_dropout is not None:
            x = self.input_dropout(x, deterministic=deterministic, rngs=rngs)
        x = self.act(self.dense(x))
        if self.norm is not None:
            x = self.norm(x).astype(hidden.dtype)
        x = self.dropout(x, deterministic=deterministic, rngs=rngs)
        return self.out(x).astype(jnp.float32)
