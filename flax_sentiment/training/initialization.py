"""A run's starting parameters beyond the pretrained ones: re-initialised top layers, and a
digest that tells whether two runs started from the same model (checkpoint averaging needs it).
"""

from __future__ import annotations

import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from flax_sentiment.errors import UserError
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.functional import Params

# Folded into the head seed for re-initialised parameters: a stream of their own, apart from
# the one the fresh head is drawn from (which would otherwise repeat some of its draws).
REINIT_STREAM = 0x5E1417

# ModernBERT's `_init_weights`: truncated normals (at +-2 std, its initializer_cutoff_factor)
# whose std depends on the matrix: "in" initializer_range, "out" initializer_range /
# sqrt(2 L), the classifier hidden_size ** -0.5.
_MODERNBERT_OUT = (".attention.out.kernel", ".ffn.outer.kernel", "head.dense.kernel")
MODERNBERT_CUTOFF = 2.0


def _init_std(name: str, cfg: EncoderConfig) -> tuple[float, float | None]:
    """(std, truncation in stds or None) of a re-initialised matrix or embedding."""
    if cfg.model_type != "modernbert":
        return cfg.initializer_range, None
    if name == "head.out.kernel":
        return cfg.hidden_size ** -0.5, MODERNBERT_CUTOFF
    if name.endswith(_MODERNBERT_OUT):
        return cfg.initializer_range / (2.0 * cfg.num_layers) ** 0.5, MODERNBERT_CUTOFF
    return cfg.initializer_range, MODERNBERT_CUTOFF


def reinit_top_layers(params: Params, cfg: EncoderConfig, k: int, seed: int) -> Params:
    """`params` with the top `k` encoder layers and the whole head drawn afresh with the
    architecture's own initialisation (BERT's `_init_weights`: matrices and embeddings
    normal(initializer_range), biases 0, norm scales 1; ModernBERT's truncated normals, see
    `_init_std`), from `seed` (the head seed) folded with `REINIT_STREAM`.

    Re-initialising "the top layers" of ALBERT would re-initialise every depth (its layers
    share one set of parameters), so it is refused.
    """
    if k <= 0:
        return params
    if any(name.startswith("encoder.groups.") for name in params):
        raise UserError(f"config model.reinit_layers={k}: this model (ALBERT) shares its layer "
                        "parameters across all depths, so its top layers cannot be "
                        "re-initialised alone; use 0")
    if k > cfg.num_layers:
        raise UserError(f"config model.reinit_layers={k}: the model has only "
                        f"{cfg.num_layers} layers")
    top = re.compile(r"encoder\.layers\.(\d+)\.")
    key = jax.random.fold_in(jax.random.key(seed), REINIT_STREAM)
    out = dict(params)
    for i, name in enumerate(sorted(params)):
        m = top.match(name)
        if not (name.startswith("head.") or (m and int(m.group(1)) >= cfg.num_layers - k)):
            continue
        value = params[name]
        if name.endswith((".kernel", ".embedding")):
            std, cut = _init_std(name, cfg)
            draw = jax.random.fold_in(key, i)
            new = std * (jax.random.normal(draw, value.shape, jnp.float32) if cut is None else
                         jax.random.truncated_normal(draw, -cut, cut, value.shape, jnp.float32))
        elif name.endswith(".scale"):
            new = jnp.ones(value.shape, jnp.float32)
        elif name.endswith(".bias"):
            new = jnp.zeros(value.shape, jnp.float32)
        else:
            raise UserError(f"model.reinit_layers: no initialisation rule for parameter {name}")
        out[name] = new.astype(value.dtype)
    return out


def order_head(params: Params, head_labels: list[str], label_names: list[str]) -> Params:
    """`params` with the head's output rows put in the order of `label_names`, when the
    checkpoint's head labels are the same names in another order (compared case-blind): a
    classifier fine-tuned elsewhere keeps what each output means. Otherwise unchanged."""
    fold = [str(n).lower() for n in head_labels]
    want = [str(n).lower() for n in label_names]
    if fold == want or sorted(fold) != sorted(want) or len(set(fold)) != len(fold):
        return params
    order = np.asarray([fold.index(n) for n in want])
    out = dict(params)
    out["head.out.kernel"] = params["head.out.kernel"][..., order]
    out["head.out.bias"] = params["head.out.bias"][..., order]
    return out


def params_digest(params: Params) -> str:
    """SHA-256 of the parameters by name: equal digests = the same starting model."""
    h = hashlib.sha256()
    for name in sorted(params):
        value = np.asarray(jax.device_get(params[name]))
        h.update(name.encode())
        h.update(str(value.dtype).encode() + str(value.shape).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()
