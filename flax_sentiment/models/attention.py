"""Attention's softmax(q k^T + bias) v, through the kernel the hardware runs best.

`model.attention` chooses (`IMPLEMENTATIONS`):
- `einsum`: two einsums and a float32 softmax that materialise [batch, heads, n, n]; the
  reference path, the only one with dropout on the attention probabilities and with DeBERTa's
  relative (c2p/p2c) terms.
- `xla`: `jax.nn.dot_product_attention(implementation="xla")` with a boolean mask: the same
  math, XLA's fusion of it.
- `cudnn`: cuDNN's fused flash attention on NVIDIA GPUs (bfloat16/float16). Padded rows go as
  sequence lengths (rows are padded on the right); packed rows as segment offsets and lengths,
  cuDNN's ragged layout, so no [b, 1, n, n] mask is built; MPNet's bias goes in as a bias.
- `pallas`: Pallas kernels that take segment ids: the splash attention kernel on TPUs,
  the Triton flash attention on GPUs (`interpret=True` runs either on a CPU, for tests).
- `auto`: by backend and model, `resolve()`: what runs where and why.

Where scores are more than q k^T plus a mask a kernel cannot take them: DeBERTa's c2p/p2c terms
(gathered position projections, per layer) always take `einsum`; ModernBERT's local layers
(a symmetric window, which cuDNN and these Pallas kernels do not offer for non-causal
attention) take `xla`; MPNet's shared position bias takes `cudnn` or `xla` (the Pallas kernels
have no bias input). None of the kernels drops attention probabilities, so a train step with
`attention_dropout > 0` takes `einsum` under `auto`, and an explicit kernel with it is refused
(`check`); on accelerators `auto` defaults the rate to 0.0 (`default_dropout`: it measured no
accuracy change, docs/RESULTS.md "Attention dropout").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from flax_sentiment.errors import UserError

IMPLEMENTATIONS = ("auto", "einsum", "xla", "cudnn", "pallas")
KERNELS = ("xla", "cudnn", "pallas")
PALLAS = ("splash", "triton")  # one Pallas kernel by name, whatever the backend (tests)
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")
# cuDNN's flash attention: half-precision inputs, head sizes up to 128 in multiples of 8.
CUDNN_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Mask:
    """Who attends whom in a batch, in each form an implementation takes.

    keep [b, 1, 1 | n, n]: attended (padding: keys only, as transformers masks; packed rows:
    query and key in one segment). bias: the additive form of `keep` (0 or float32's min) plus
    `extra`. extra [1, heads, n, n]: scores added in every layer (MPNet), or None.
    segment_ids [b, n]: 1..E for the examples of a packed row, 0 for padding; a padded batch's
    attention mask (1 real, 0 padding). `slots` (static): the most examples a row can hold (1 for
    a padded batch), `packed` (static): whether rows are packed."""

    keep: jax.Array
    bias: jax.Array
    extra: jax.Array | None
    segment_ids: jax.Array
    slots: int = dataclasses.field(default=1, metadata={"static": True})
    packed: bool = dataclasses.field(default=False, metadata={"static": True})

    def windowed(self, half: int) -> Mask:
        """Also |q - k| <= half (ModernBERT's local layers)."""
        n = self.segment_ids.shape[1]
        pos = jnp.arange(n)
        keep = self.keep & (jnp.abs(pos[:, None] - pos[None, :]) <= half)
        bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
        if self.extra is not None:
            bias = bias + self.extra
        return dataclasses.replace(self, keep=keep, bias=bias)


def build_mask(attention_mask: jax.Array | None, input_ids: jax.Array, packed=None,
               extra: jax.Array | None = None) -> Mask:
    """The `Mask` of a padded batch (`attention_mask`) or of packed rows (`PackedRows`)."""
    if packed is not None:
        keep = packed.attends()
        segment_ids, slots = packed.segment_ids.astype(jnp.int32), packed.starts.shape[1]
    else:
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        keep = attention_mask[:, None, None, :] > 0
        segment_ids, slots = (attention_mask > 0).astype(jnp.int32), 1
    # Additive mask as transformers builds it: 0 where attended, the dtype's min where not.
    bias = jnp.where(keep, 0.0, jnp.finfo(jnp.float32).min).astype(jnp.float32)
    if extra is not None:
        bias = bias + extra
    return Mask(keep=keep, bias=bias, extra=extra, segment_ids=segment_ids, slots=slots,
                packed=packed is not None)


def default_dropout(implementation: str, backend: str) -> float | None:
    """`model.attention_dropout`'s default: 0.0 on GPUs and TPUs under `auto`, so that the
    train step runs the fused kernel (docs/RESULTS.md, "Attention dropout": 0.0 instead of the
    checkpoints' 0.1 did not lower accuracy on SST-2 or TweetEval, 3 seeds each); None (the
    checkpoint's rate) elsewhere, where einsum applies it at no kernel's expense."""
    return 0.0 if implementation == "auto" and backend in ACCELERATORS else None


def gpu_capability() -> float:
    """The first device's CUDA compute capability (9.0 for Hopper), 0 off NVIDIA GPUs."""
    device = jax.devices()[0]
    try:
        return float(getattr(device, "compute_capability", 0) or 0)
    except (TypeError, ValueError):
        return 0.0


def resolve(implementation: str, *, backend: str, dtype, relative: bool, local: bool,
            extra: bool, dropout: float, training: bool, packed: bool = False,
            length: int = 0, capability: float = 0.0) -> str:
    """The implementation one layer's attention takes. `auto`: on a CPU `einsum` (measured
    there against `xla`: docs/BENCHMARKS.md); on an NVIDIA GPU `cudnn` for bfloat16/float16,
    else `xla`; on a TPU `pallas` (splash) without a bias, else `xla`. Then, for `auto` only:
    DeBERTa's relative terms and a train step with attention dropout take `einsum`; a local
    (windowed) layer takes `xla`; so do the cases cuDNN refuses: packed rows before Hopper
    (`capability` < 9.0: cuDNN's ragged layout needs it), a bias with packed rows (unspecified
    there) or at an odd length. An explicit `cudnn` in one of those cases is refused here."""
    if implementation not in IMPLEMENTATIONS + PALLAS:
        raise UserError(f"model.attention={implementation!r}: expected one of "
                        f"{', '.join(IMPLEMENTATIONS)}")
    cudnn_refuses = None
    if packed and capability < 9.0:
        cudnn_refuses = ("packed rows (cuDNN's ragged layout) need a Hopper GPU or newer "
                         f"(compute capability {capability})")
    elif extra and packed:
        cudnn_refuses = "a position bias with packed rows is not offered by cuDNN"
    elif extra and length % 2:
        cudnn_refuses = f"cuDNN takes a bias only at even lengths (got {length})"
    if implementation == "cudnn" and cudnn_refuses:
        raise UserError(f"model.attention=cudnn: {cudnn_refuses}; use model.attention=auto or "
                        "xla, or data.pack_length=0 for padded batches")
    if implementation != "auto":
        return implementation
    if relative or (training and dropout > 0) or backend not in ACCELERATORS:
        return "einsum"
    if local:
        return "xla"
    if backend == "tpu":
        return "xla" if extra else "pallas"
    if backend == "rocm" or jnp.dtype(dtype) not in CUDNN_DTYPES or cudnn_refuses:
        return "xla"
    return "cudnn"


def check(implementation: str, *, model_type: str, relative: bool, local: bool, extra: bool,
          dropout: float, dtype=jnp.float32, backend: str | None = None) -> None:
    """Refuse an explicit choice the model or the backend cannot take, naming the key to
    change."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"model.attention={implementation!r}: expected one of "
                        f"{', '.join(IMPLEMENTATIONS)}")
    if implementation not in KERNELS:
        return
    backend = backend or jax.default_backend()
    why = None
    if relative:
        why = f"{model_type}'s relative-position (c2p/p2c) scores need model.attention=einsum"
    elif dropout > 0:
        why = (f"{implementation} has no dropout on attention probabilities and this model's "
               f"is {dropout}: set model.attention_dropout=0.0, or model.attention=einsum")
    elif local and implementation != "xla":
        why = (f"{model_type}'s sliding-window layers are not offered by the "
               f"{implementation} kernels: use model.attention=xla or auto")
    elif extra and implementation == "pallas":
        why = (f"{model_type}'s position bias has no input in the Pallas kernels: use "
               "model.attention=cudnn, xla or auto")
    elif implementation == "cudnn" and backend not in ("gpu", "cuda"):
        why = f"cuDNN runs on NVIDIA GPUs, this backend is {backend}: use auto or xla"
    elif implementation == "cudnn" and jnp.dtype(dtype) not in CUDNN_DTYPES:
        why = (f"cuDNN's fused attention takes bfloat16 or float16, the model computes in "
               f"{jnp.dtype(dtype)}: set model.dtype=bfloat16, or model.attention=xla")
    elif implementation == "pallas" and backend not in ("gpu", "cuda", "tpu"):
        why = f"the Pallas kernels run on GPUs and TPUs, this backend is {backend}: use auto"
    if why:
        raise UserError(f"model.attention={implementation}: {why}")


def fused(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask, implementation: str, *,
          interpret: bool = False) -> jax.Array:
    """[b, n, heads, d] attention output of `q` (already scaled), `k`, `v` [b, n, heads, d].
    `implementation` may also name one Pallas kernel, `splash` (TPU) or `triton` (GPU), which
    `interpret=True` runs on any backend (slowly: tests, on tiny shapes)."""
    if implementation == "xla":
        return jax.nn.dot_product_attention(q, k, v, bias=mask.extra, mask=mask.keep,
                                            scale=1.0, implementation="xla")
    if implementation == "cudnn":
        return _cudnn(q, k, v, mask)
    if implementation == "pallas":  # the backend's own Pallas kernel
        implementation = "splash" if jax.default_backend() == "tpu" else "triton"
    if implementation == "splash":
        return _splash(q, k, v, mask.segment_ids, interpret=interpret)
    if implementation == "triton":
        return _triton(q, k, v, mask.segment_ids, interpret=interpret)
    raise ValueError(f"not a kernel: {implementation!r}")


def segment_layout(segment_ids: jax.Array, slots: int) -> tuple[jax.Array, jax.Array]:
    """cuDNN's ragged layout of packed rows: lengths [b, slots + 1] and offsets
    [b, slots + 2] of each row's segments in the row's order, its examples (segments 1..slots)
    then its trailing padding (segment 0: it attends to itself, as the einsum path's padding
    does, so that cuDNN writes every output and gradient row); -1 after a row's last segment,
    as cuDNN expects, and as the last offset."""
    ids = jnp.concatenate([jnp.arange(1, slots + 1, dtype=segment_ids.dtype),
                           jnp.zeros((1,), segment_ids.dtype)])
    member = segment_ids[:, None, :] == ids[None, :, None]  # [b, slots + 1, n]
    lengths = member.sum(-1).astype(jnp.int32)
    offsets = jnp.argmax(member, axis=-1).astype(jnp.int32)
    present = lengths > 0
    # Present segments first, in the order they sit in the row; absent ones after, as -1.
    order = jnp.argsort(jnp.where(present, offsets, segment_ids.shape[1] + 1), axis=1)
    lengths, offsets, present = (jnp.take_along_axis(x, order, axis=1)
                                 for x in (lengths, offsets, present))
    lengths, offsets = (jnp.where(present, x, -1) for x in (lengths, offsets))
    pad = jnp.full((segment_ids.shape[0], 1), -1, jnp.int32)
    return lengths, jnp.concatenate([offsets, pad], axis=1)


def _cudnn(q, k, v, mask: Mask) -> jax.Array:
    extra = None if mask.extra is None else jnp.broadcast_to(
        mask.extra, (q.shape[0], *mask.extra.shape[1:])).astype(q.dtype)
    if not mask.packed:  # right-padded rows: their lengths
        lengths = mask.segment_ids.sum(-1).astype(jnp.int32)
        return jax.nn.dot_product_attention(q, k, v, bias=extra, scale=1.0,
                                            query_seq_lengths=lengths,
                                            key_value_seq_lengths=lengths,
                                            implementation="cudnn")
    # Packed rows: segment lengths and offsets (cuDNN's ragged layout), which jax.nn's wrapper
    # does not expose; the cuDNN call under it does.
    from jax._src.cudnn import fused_attention_stablehlo as cudnn

    lengths, offsets = segment_layout(mask.segment_ids, mask.slots)
    return cudnn.dot_product_attention(q, k, v, extra, None, lengths, lengths, offsets, offsets,
                                       scale=1.0, mask_type=cudnn.MaskType.PADDING,
                                       qkv_layout="BTNH")


def _pad_tokens(q, k, v, segment_ids, full: int):
    """q, k, v and segment ids grown to `full` tokens of segment 0 (padding), which no real
    token attends to; the caller slices the padded queries off again."""
    n = q.shape[1]
    if full == n:
        return q, k, v, segment_ids
    grow = ((0, 0), (0, full - n), (0, 0), (0, 0))
    q, k, v = (jnp.pad(x, grow) for x in (q, k, v))
    return q, k, v, jnp.pad(segment_ids, ((0, 0), (0, full - n)))


def _triton(q, k, v, segment_ids, *, interpret: bool) -> jax.Array:
    from jax.experimental.pallas.ops.gpu import attention as pallas_gpu

    # Triton's blocks are powers of two (the kernel's block is min(128, length)).
    n = q.shape[1]
    full = 1 << max(n - 1, 1).bit_length() if n <= 128 else -(-n // 128) * 128
    q, k, v, segment_ids = _pad_tokens(q, k, v, segment_ids, full)
    out = pallas_gpu.mha(q, k, v, segment_ids, sm_scale=1.0, causal=False,
                         interpret=interpret)
    return out[:, :n]


def _splash(q, k, v, segment_ids, *, interpret: bool) -> jax.Array:
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as masks,
    )

    b, n, heads, _ = q.shape
    full = -(-n // 128) * 128  # the kernel tiles by 128 tokens
    q, k, v, segment_ids = _pad_tokens(q, k, v, segment_ids, full)
    block = 512 if full % 512 == 0 else 128
    sizes = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                              block_q_dkv=block, block_kv_dkv=block,
                              block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    kernel = splash.make_splash_mha(masks.MultiHeadMask([masks.FullMask((full, full))] * heads),
                                    block_sizes=sizes, head_shards=1, q_seq_shards=1,
                                    interpret=interpret)
    swap = (0, 2, 1, 3)  # the kernel's layout: [heads, n, d] per example
    out = jax.vmap(lambda q, k, v, s: kernel(q, k, v, splash.SegmentIds(q=s, kv=s)))(
        q.transpose(swap), k.transpose(swap), v.transpose(swap), segment_ids)
    return out.transpose(swap)[:, :n]
