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


def reinit_top_layers(params: Params, cfg: EncoderConfig, k: int, seed: int) -> Params:
    """`params` with the top `k` encoder layers and the whole head drawn afresh with the
    architecture's own initialisation (BERT's `_init_weights`: matrices and embeddings
    normal(initializer_range), biases 0, norm scales 1), from `seed` (the head seed).

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
    key = jax.random.key(seed)
    out = dict(params)
    for i, name in enumerate(sorted(params)):
        m = top.match(name)
        if not (name.startswith("head.") or (m and int(m.group(1)) >= cfg.num_layers - k)):
            continue
        value = params[name]
        if name.endswith((".kernel", ".embedding")):
            new = cfg.initializer_range * jax.random.normal(jax.random.fold_in(key, i),
                                                            value.shape, jnp.float32)
        elif name.endswith(".scale"):
            new = jnp.ones(value.shape, jnp.float32)
        elif name.endswith(".bias"):
            new = jnp.zeros(value.shape, jnp.float32)
        else:
            raise UserError(f"model.reinit_layers: no initialisation rule for parameter {name}")
        out[name] = new.astype(value.dtype)
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
