"""LoRA (Hu et al. 2021) as a reparameterisation of the flat parameter dict, for every encoder.

A LoRA run trains the classification head and, for each chosen linear layer of the encoder, two
low-rank matrices `A` [in, rank] and `B` [rank, out] named after the layer
("encoder.layers.3.attention.query.lora_a" / ".lora_b"); every other parameter is the frozen
pretrained base. The forward pass uses the layer's kernel `W + (alpha / rank) * A @ B` (the
merged weights) in the unchanged model, so every architecture gets adapters without a module of
its own, and what evaluation, prediction and export load is an ordinary model. (The backward pass
then forms each adapted kernel's full gradient before projecting it onto A and B; computing the
adapters beside the layer instead, as PEFT does, measured no faster on the 2-core CPU: MiniLM,
batch 32 x 64 tokens, all linear layers adapted, 2.57 s a step against 2.41 s merged.)

LoRA dropout (`model.lora.dropout`, PEFT's `lora_dropout`) drops the adapter's input only:
`x W + b + (alpha / rank) * dropout(x) A B`, which merged weights cannot express. With it, the
train step runs the model with each adapted `nnx.Linear` swapped for a `LoraLinear` that
computes exactly that (`unmerged`: graph surgery on the abstract model, so again no module per
architecture; the flat names stay the same). Its masks are `layers.Dropout`'s, keyed from a
stream of their own derived from the micro-batch's dropout key (`adapter_dropout`): the base's
dropout masks are the ones a run without LoRA dropout draws, and a resumed run draws the same.
Evaluation, prediction and export, where dropout is off, keep the merged weights.

Only the trainable parameters are in the train state (gradients, optimizer moments, EMA,
checkpoints); the frozen base is a separate input of the jitted steps, read again from
`model.name_or_path` on resume and load (its digest, recorded at training, must still match).
Names end in `lora_a` / `lora_b` under the layer's path, so layer-wise learning-rate decay and
weight decay treat them as the layer's own matrices.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from flax_sentiment.config import option
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.layers import ADAPTER_RNGS, Dropout

log = logging.getLogger(__name__)

Params = dict[str, Any]

HEAD = "head."
LEAVES = ("lora_a", "lora_b")
PRESETS = ("query_value", "all")
# A layer's own module path, after its depth (or ALBERT's group and index).
_IN_LAYER = re.compile(r"encoder\.(?:layers\.\d+|groups\.\d+\.\d+)\.(.+)")


def rank_of(config: ml_collections.ConfigDict) -> int | None:
    """`model.lora.rank`, or None when the run fine-tunes every parameter (LoRA off)."""
    return option(option(config.model, "lora", None), "rank", None)


def enabled(config: ml_collections.ConfigDict) -> bool:
    return rank_of(config) is not None


def linear_modules(abstract: Mapping[str, Any]) -> list[str]:
    """Module paths of the encoder's linear layers (2-D kernels), the layers LoRA can adapt."""
    return [name[: -len(".kernel")] for name, value in abstract.items()
            if name.startswith("encoder.") and name.endswith(".kernel")
            and len(value.shape) == 2]


def _short(module: str) -> str:
    m = _IN_LAYER.fullmatch(module)
    return m.group(1) if m else module


def resolve_targets(targets: str, abstract: Mapping[str, Any]) -> tuple[str, ...]:
    """The module paths `model.lora.targets` names in this model: 'query_value' (the query and
    value projections, or the fused q|k|v matrix where the architecture has one), 'all' (every
    linear layer of the encoder), or comma-separated layer names ('attention.query,ffn.inner')
    or full paths ('encoder.layers.5.attention.value'). A name that matches nothing is an
    error that lists what the model has."""
    linear = linear_modules(abstract)
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if names == ["all"]:
        return tuple(linear)
    if names == ["query_value"]:
        fused = [m for m in linear if _short(m) == "attention.qkv"]
        names = ["attention.qkv"] if fused else ["attention.query", "attention.value"]
    chosen: list[str] = []
    for name in names:
        found = [m for m in linear if m == name or m.endswith("." + name)]
        if not found:
            have = ", ".join(dict.fromkeys(_short(m) for m in linear))
            raise UserError(f"config model.lora.targets={targets!r}: {name!r} names no linear "
                            f"layer of this model (it has {have}; or use 'query_value' or "
                            "'all')")
        chosen += [m for m in found if m not in chosen]
    return tuple(m for m in linear if m in chosen)  # in the order of the parameters


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """Which layers carry adapters, their rank and scale (alpha / rank), and the dropout on
    their input in training (0: the train step runs on merged weights too)."""

    modules: tuple[str, ...]
    rank: int
    alpha: float
    dropout: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def key(self) -> tuple:
        """Hashable: the jitted model step's program depends on it (shapes and the scale; the
        train step's on `dropout` too)."""
        return (self.modules, self.rank, self.alpha)

    # -- the parameter layout

    def abstract_trainable(self, abstract: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes of the trainable parameters: the head's, then each adapter's A and B."""
        out = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in abstract.items()
               if k.startswith(HEAD)}
        for m in self.modules:
            din, dout = abstract[m + ".kernel"].shape
            out[m + ".lora_a"] = jax.ShapeDtypeStruct((din, self.rank), jnp.float32)
            out[m + ".lora_b"] = jax.ShapeDtypeStruct((self.rank, dout), jnp.float32)
        return out

    def init(self, params: Mapping[str, Any], seed: int) -> Params:
        """The starting trainable parameters: `params`' head, and adapters as PEFT initialises
        them (A kaiming-uniform with a=sqrt(5), i.e. U(+-1/sqrt(in)); B zero), from `seed`:
        the merged model starts exactly at `params`."""
        out = {k: v for k, v in params.items() if k.startswith(HEAD)}
        key = jax.random.key(seed)
        for i, m in enumerate(self.modules):
            din, dout = params[m + ".kernel"].shape
            bound = 1.0 / math.sqrt(din)
            out[m + ".lora_a"] = jax.random.uniform(jax.random.fold_in(key, i), (din, self.rank),
                                                    jnp.float32, -bound, bound)
            out[m + ".lora_b"] = jnp.zeros((self.rank, dout), jnp.float32)
        return out

    def merge(self, trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> Params:
        """The full parameters: the frozen base with `scale * A @ B` added to each adapted
        kernel, and the trainable head. Traceable (the train step's forward) and usable on host
        arrays (loading a run)."""
        out = dict(frozen)
        for m in self.modules:
            delta = jnp.matmul(trainable[m + ".lora_a"], trainable[m + ".lora_b"],
                               precision=jax.lax.Precision.HIGHEST)
            kernel = frozen[m + ".kernel"]
            out[m + ".kernel"] = kernel + (self.scale * delta).astype(kernel.dtype)
        out.update({k: v for k, v in trainable.items() if k.startswith(HEAD)})
        return out

    # -- checkpoint metadata

    def to_meta(self, base_digest: str) -> dict[str, Any]:
        return {"modules": list(self.modules), "rank": self.rank, "alpha": self.alpha,
                "dropout": self.dropout, "base_digest": base_digest}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> LoraSpec:
        return cls(tuple(meta["modules"]), int(meta["rank"]), float(meta["alpha"]),
                   float(meta.get("dropout", 0.0)))  # runs from before LoRA dropout: 0


def frozen_params(params: Mapping[str, Any]) -> Params:
    """Everything but the head: the pretrained encoder that a LoRA run never changes."""
    return {k: v for k, v in params.items() if not k.startswith(HEAD)}


def spec_from_config(config: ml_collections.ConfigDict, abstract: Mapping[str, Any]
                     ) -> LoraSpec | None:
    """The run's `LoraSpec` for a model with parameters `abstract`, or None when LoRA is off."""
    if not enabled(config):
        return None
    c = config.model.lora
    dropout = option(c, "dropout", 0.0)
    if not (isinstance(dropout, int | float) and 0 <= dropout < 1):
        raise UserError(f"config model.lora.dropout={dropout!r}: must be in [0, 1)")
    return LoraSpec(resolve_targets(option(c, "targets", "query_value"), abstract),
                    int(c.rank), float(c.alpha), float(dropout))


def describe(spec: LoraSpec, trainable: Mapping[str, Any], total: int) -> str:
    """One log line: what is adapted and how much of the model trains."""
    n = sum(int(np.prod(v.shape)) for v in trainable.values())
    kinds = ", ".join(dict.fromkeys(_short(m) for m in spec.modules))
    dropout = f", dropout {spec.dropout:g}" if spec.dropout else ""
    return (f"LoRA rank {spec.rank}, alpha {spec.alpha:g}{dropout} on {len(spec.modules)} layers "
            f"({kinds}): {n:,} trainable parameters of {total:,} "
            f"({100 * n / max(total, 1):.2f}%)")


# --------------------------------------------------------------------------------------------
# Unmerged adapters, for LoRA dropout in training


# The adapters' dropout keys live in `layers.ADAPTER_RNGS` while a train step's forward pass
# is traced (None: no dropout). ADAPTER_STREAM is folded into the micro-batch's dropout key
# for the adapters' stream. The model's own stream folds in its call count (0, 1, 2, ...: a
# few per layer), so this is none of its keys.
ADAPTER_STREAM = 0x4C6F5241  # "LoRA"


@contextlib.contextmanager
def adapter_dropout(dropout_rng: jax.Array) -> Iterator[None]:
    """While tracing the model's forward pass in here, `LoraLinear` layers drop their adapter's
    input, with `layers.Dropout` keys `rngs.dropout()` from `nnx.Rngs(dropout=fold_in(
    dropout_rng, ADAPTER_STREAM))` (one key a call, in call order: ALBERT's shared layers draw
    a new one at each depth). `dropout_rng` is the key the model's own dropout gets (raw
    uint32[2] data or a typed key), so the masks are a function of the train state's rng,
    step and micro-batch alone, like the model's."""
    key = dropout_rng
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.wrap_key_data(key)
    token = ADAPTER_RNGS.set(nnx.Rngs(dropout=jax.random.fold_in(key, ADAPTER_STREAM)))
    try:
        yield
    finally:
        ADAPTER_RNGS.reset(token)


class LoraLinear(nnx.Linear):
    """An `nnx.Linear` with its adapter beside it, as PEFT computes it:
    `x W + b + scale * dropout(x) A B`.

    Made from the layer it replaces: the same kernel and bias variables and settings (no new
    initialisation), so the base term is `nnx.Linear`'s own computation on `x`, unchanged.
    Dropout (`layers.Dropout`, inverted: kept inputs scaled by 1 / (1 - rate)) is on only
    inside `adapter_dropout`; outside, this equals the merged layer up to float rounding.
    """

    def __init__(self, base: nnx.Linear, lora_a: Any, lora_b: Any, *, scale: float,
                 dropout: float):
        # Not nnx.Linear.__init__: that would draw a new kernel. Adopt the base layer's instead.
        for name in ("in_features", "out_features", "use_bias", "dtype", "param_dtype",
                     "precision", "dot_general", "promote_dtype", "preferred_element_type"):
            setattr(self, name, getattr(base, name))
        self.kernel = base.kernel
        self.bias = base.bias if base.bias is not None else nnx.data(None)
        self.lora_a = nnx.Param(lora_a)
        self.lora_b = nnx.Param(lora_b)
        self.scale = float(scale)
        self.lora_dropout = Dropout(dropout)

    def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
        y = super().__call__(inputs, out_sharding)
        rngs = ADAPTER_RNGS.get()
        x = self.lora_dropout(inputs, deterministic=rngs is None, rngs=rngs)
        x, a, b = self.promote_dtype((x, self.lora_a[...], self.lora_b[...]), dtype=self.dtype)
        h = jnp.matmul(x, a, precision=self.precision) * jnp.asarray(self.scale, x.dtype)
        return y + jnp.matmul(h, b, precision=self.precision).astype(y.dtype)


def unmerged(model_def: ModelDef, spec: LoraSpec) -> ModelDef:
    """`model_def`'s model with each of `spec.modules` a `LoraLinear` (rate `spec.dropout`), as
    a `ModelDef`: its parameters are the frozen base's and the trainable ones, by the same
    names (`{**frozen, **trainable}`), and it runs on them without merging."""
    model = model_def.merge(model_def.abstract_params())  # shapes only: nothing computed
    for m in spec.modules:
        *parents, last = m.split(".")
        owner = model
        for p in parents:
            owner = owner[int(p)] if p.isdigit() else getattr(owner, p)
        base = owner[int(last)] if last.isdigit() else getattr(owner, last)
        if type(base) is not nnx.Linear:
            raise TypeError(f"LoRA target {m} is a {type(base).__name__}, not an nnx.Linear")
        din, dout = base.kernel.shape
        new = LoraLinear(base, jax.ShapeDtypeStruct((din, spec.rank), jnp.float32),
                         jax.ShapeDtypeStruct((spec.rank, dout), jnp.float32),
                         scale=spec.scale, dropout=spec.dropout)
        if last.isdigit():
            owner[int(last)] = new
        else:
            setattr(owner, last, new)
    return ModelDef(model)


# --------------------------------------------------------------------------------------------
# A trained LoRA run, unmerged (for the PEFT adapter export)


@dataclasses.dataclass
class Adapters:
    """The trained adapters and head of a LoRA run, as stored (not merged into the base)."""

    spec: LoraSpec
    params: dict[str, np.ndarray]  # head.* and *.lora_a / *.lora_b
    base: str  # model.name_or_path: where the frozen weights come from


def load_base(name_or_path: str, abstract: Mapping[str, Any], num_labels: int,
              digest: str | None) -> Params:
    """The frozen base of a LoRA run, read from `model.name_or_path` again and checked against
    the digest recorded at training (a changed or moved model is a clear error)."""
    from flax_sentiment.models.pretrained import load_pretrained_bundle
    from flax_sentiment.training.initialization import params_digest

    why = ("a LoRA run stores only its adapters and head; its frozen weights are read from "
           f"model.name_or_path={name_or_path!r}")
    try:
        bundle = load_pretrained_bundle(name_or_path, num_labels=num_labels)
    except UserError as e:
        raise UserError(f"{e} ({why})") from None
    frozen = frozen_params(ModelDef.params_of(bundle.model))
    shapes = {k: tuple(v.shape) for k, v in abstract.items() if not k.startswith(HEAD)}
    if {k: tuple(v.shape) for k, v in frozen.items()} != shapes or (
            digest is not None and params_digest(frozen) != digest):
        raise UserError(f"{name_or_path!r}: its weights are not the ones this LoRA run was "
                        f"trained on (the model changed since); {why}")
    return frozen

