"""The encoder stack and the sequence classifier built on it (every architecture)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from flax_sentiment.errors import UserError
from flax_sentiment.models import attention as attention_lib
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.layers import (
    ADAPTER_RNGS,
    ClassificationHead,
    Embeddings,
    PositionBias,
    RelativePositions,
    TransformerLayer,
    norm_layer,
)
from flax_sentiment.models.packing import PackedRows


class Encoder(nnx.Module):
    """Embeddings + transformer layers -> last hidden states `[batch, length, hidden]`."""

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        self.embeddings = Embeddings(cfg, dtype=dtype, rngs=rngs)
        if cfg.num_hidden_groups:
            # ALBERT: a few groups of layers, reused across the `num_layers` passes.
            self.groups = nnx.List([
                nnx.List([TransformerLayer(cfg, dtype=dtype, rngs=rngs)
                          for _ in range(cfg.inner_group_num)])
                for _ in range(cfg.num_hidden_groups)
            ])
            self.layers = None
        else:
            self.groups = None
            self.layers = nnx.List([TransformerLayer(cfg, i, dtype=dtype, rngs=rngs)
                                    for i in range(cfg.num_layers)])
        self.relative = (RelativePositions(cfg, dtype=dtype, rngs=rngs)
                         if cfg.relative_attention or cfg.norm_rel_embeddings else None)
        self.final_norm = norm_layer(cfg, cfg.hidden_size, rngs) if cfg.pre_norm else None
        self.position_bias = (PositionBias(cfg, rngs=rngs) if cfg.position_bias_buckets > 0
                              else None)
        # Recompute each layer's activations in the backward pass instead of keeping them
        # (`nnx.remat`): activation memory of one layer instead of all, for ~1/3 more compute
        # (a second forward). For long sequences and large batches on accelerators; set by
        # config model.remat. A static attribute: changing it changes the compiled program only.
        self.remat = False
        # Apply each run of identically built layers as one `lax.scan` over their parameters,
        # stacked inside the step (the stored layout, checkpoints and weight names stay per
        # layer): XLA compiles one layer instead of all, so compile time stops growing with
        # depth. The stacking copies the layers' weights once per step (and their gradients
        # back), which is why it is a choice: config model.scan_layers. Static, like remat.
        self.scan = False

    def set_attention(self, implementation: str = "auto", dropout: float | None = None) -> None:
        """Every layer's attention path (`attention.IMPLEMENTATIONS`; config model.attention)
        and, unless None, its attention-probability dropout rate (config
        model.attention_dropout; None keeps the checkpoint's). An explicit kernel the model
        cannot take is refused (`attention.check`). Static: changes the compiled program only."""
        if dropout is not None and not 0.0 <= dropout < 1.0:
            raise UserError(f"model.attention_dropout={dropout!r}: must be in [0, 1)")
        for layer in self._schedule():
            att = layer.attention
            if dropout is not None:
                att.attention_dropout.rate = float(dropout)
            attention_lib.check(implementation, model_type=self.cfg.model_type,
                                relative=bool(att.c2p or att.p2c), local=att.local,
                                extra=self.position_bias is not None,
                                dropout=att.attention_dropout.rate, dtype=self.dtype)
            att.implementation = implementation

    def _schedule(self) -> list[TransformerLayer]:
        """The layers applied in order, with ALBERT's sharing expanded (same modules reused)."""
        if self.layers is not None:
            return list(self.layers)
        n, g = self.cfg.num_layers, self.cfg.num_hidden_groups
        order = []
        for i in range(n):
            order.extend(self.groups[int(i / (n / g))])
        return order

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, *, deterministic: bool = True,
                 rngs: nnx.Rngs | None = None, packed: PackedRows | None = None) -> jax.Array:
        extra = (self.position_bias(input_ids.shape[1])  # MPNet: [1, heads, n, n], every layer
                 if self.position_bias is not None else None)
        # Padding, or block-diagonal for packed rows: each token sees its own example only.
        mask = attention_lib.build_mask(attention_mask, input_ids, packed, extra)
        layers = self._schedule()
        local_mask = None
        if any(layer.local for layer in layers):  # sliding window: |q - k| <= local // 2
            local_mask = mask.windowed(self.cfg.local_attention // 2)
        rel = self.relative(input_ids.shape[1]) if self.cfg.relative_attention else None
        positions = None if packed is None else packed.positions
        x = self.embeddings(input_ids, token_type_ids, deterministic=deterministic, rngs=rngs,
                            positions=positions)
        def apply(layer, x, mask, rel, positions, rngs, adapter_rngs):
            token = ADAPTER_RNGS.set(adapter_rngs)  # inside remat: the checkpoint's own copy
            try:
                return layer(x, mask, rel, deterministic=deterministic, rngs=rngs,
                             positions=positions)
            finally:
                ADAPTER_RNGS.reset(token)

        adapter_rngs = ADAPTER_RNGS.get()
        single = nnx.remat(apply) if self.remat else apply
        for run in _runs(layers) if self.scan else [[layer] for layer in layers]:
            layer_mask = local_mask if run[0].local else mask
            if len(run) == 1:
                x = single(run[0], x, layer_mask, rel, positions, rngs, adapter_rngs)
            else:
                x = _scan(apply, run, x, (layer_mask, rel, positions), rngs, adapter_rngs,
                          remat=self.remat)
        if self.final_norm is not None:
            x = self.final_norm(x).astype(self.dtype)
        return x


def _runs(layers: list[TransformerLayer]) -> list[list[TransformerLayer]]:
    """Consecutive layers split into maximal runs of one graph structure (the same modules and
    static attributes: local vs global attention, a pre-norm stack's first layer differ)."""
    runs: list[tuple[nnx.GraphDef, list[TransformerLayer]]] = []
    for layer in layers:
        graph = nnx.graphdef(layer)
        if runs and runs[-1][0] == graph:
            runs[-1][1].append(layer)
        else:
            runs.append((graph, [layer]))
    return [run for _, run in runs]


_PICKED = "scan_picked_layer"


def _scan(apply, run: list[TransformerLayer], x: jax.Array, args: tuple,
          rngs: nnx.Rngs | None, adapter_rngs: nnx.Rngs | None, *, remat: bool) -> jax.Array:
    """`apply` each layer of `run` in turn, as one `lax.scan` over the layers' stacked state.
    The dropout streams (`rngs`, LoRA's `adapter_rngs`) travel in the carry, so every layer
    draws the keys the unrolled loop would (the same masks: equal results), and the streams
    leave with their counters advanced as after the loop. `remat`: the scanned body is a
    checkpoint (one layer's activations kept per step of the scan, as `nnx.remat` does).

    A module that recurs in the run (ALBERT's shared layers) is stacked once and picked by
    index at each step, so its weights and their gradient are not copied per pass."""
    graph = nnx.graphdef(run[0])
    unique = list({id(m): m for m in run}.values())
    picked = len(unique) < len(run)  # scan over indices into the unique modules' stack
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(nnx.state(m) for m in unique))
    if picked:
        where = {id(m): i for i, m in enumerate(unique)}
        shared, stacked = stacked, jnp.asarray([where[id(m)] for m in run], jnp.int32)
    streams = tuple(None if r is None else nnx.split(r) for r in (rngs, adapter_rngs))

    def body(carry, state):
        if picked:  # `state` is the index of this pass's module
            state = jax.tree.map(lambda leaf: checkpoint_name(leaf[state], _PICKED), shared)
        x, rng_states = carry
        live = [None if s is None else nnx.merge(s[0], r)
                for s, r in zip(streams, rng_states, strict=True)]
        x = apply(nnx.merge(graph, state), x, *args, *live)
        return (x, tuple(None if r is None else nnx.state(r) for r in live)), None

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)
    elif picked:  # the picked weights are sliced again, not saved per pass
        body = jax.checkpoint(body, prevent_cse=False,
                              policy=jax.checkpoint_policies.save_anything_except_these_names(
                                  _PICKED))
    start = tuple(None if s is None else s[1] for s in streams)
    (x, ends), _ = jax.lax.scan(body, (x, start), stacked)
    for r, end in zip((rngs, adapter_rngs), ends, strict=True):
        if r is not None:
            nnx.update(r, end)
    return x


class SequenceClassifier(nnx.Module):
    """`model(input_ids, attention_mask, token_type_ids=None, *, deterministic=True)` -> logits
    [rows, labels]; with `packed=PackedRows(...)` the rows are packed and the logits are one per
    example slot, [rows * slots, labels].

    Training passes `deterministic=False` and a `dropout_rng` key; the module holds no RNG
    state, so its `nnx.state` is parameters only and a train step stays a pure function.
    """

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
        self.head = ClassificationHead(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, *, deterministic: bool = True,
                 dropout_rng: jax.Array | None = None, packed: PackedRows | None = None
                 ) -> jax.Array:
        if not deterministic and dropout_rng is None:
            raise ValueError("deterministic=False needs a dropout_rng key")
        rngs = None if deterministic else nnx.Rngs(dropout=dropout_rng)
        hidden = self.encoder(input_ids, attention_mask, token_type_ids,
                              deterministic=deterministic, rngs=rngs, packed=packed)
        return self.head(hidden, attention_mask, deterministic=deterministic, rngs=rngs,
                         packed=packed)
