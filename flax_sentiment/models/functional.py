"""An NNX model as a pure function of a flat parameter dict, for jit, optax and orbax.

Flat string keys ("encoder.layers.0.attention.query.kernel") make checkpoints self-describing
and optimizer masks a one-liner; `ModelDef` rebuilds the NNX module from them inside traced code.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
from flax import nnx

Params = dict[str, jax.Array]


class ModelDef:
    """The static half of a model (graph + parameter layout); params are the dynamic half."""

    def __init__(self, model: nnx.Module):
        self.graphdef, state = nnx.split(model, nnx.Param)
        flat = nnx.to_flat_state(state)
        self._paths = [path for path, _ in flat]
        self._templates = [var.replace(jax.ShapeDtypeStruct(var.shape, var.dtype))
                           for _, var in flat]
        self.names = [".".join(str(p) for p in path) for path in self._paths]
        # Depth of the encoder (layer-wise learning rates need it; ALBERT shares its layers).
        self.num_layers = int(getattr(getattr(model, "config", None), "num_layers", 0))

    @staticmethod
    def params_of(model: nnx.Module) -> Params:
        return {".".join(str(p) for p in path): var.get_value()
                for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}

    def key(self) -> tuple:
        """Hashable structure: equal for two models of the same architecture and shapes."""
        return (self.graphdef, tuple((n, t.shape, str(t.dtype))
                                     for n, t in zip(self.names, self._templates, strict=True)))

    def abstract_params(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Shapes and dtypes of the parameters, by name (what a checkpoint restores into)."""
        return {name: jax.ShapeDtypeStruct(t.shape, t.dtype)
                for name, t in zip(self.names, self._templates, strict=True)}

    def merge(self, params: Mapping[str, jax.Array]) -> nnx.Module:
        state = nnx.from_flat_state([
            (path, tmpl.replace(params[name]))
            for path, tmpl, name in zip(self._paths, self._templates, self.names, strict=True)
        ])
        return nnx.merge(self.graphdef, state)
