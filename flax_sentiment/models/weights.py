"""Hugging Face state dict <-> NNX parameters, both directions through `Architecture` rules."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_sentiment.errors import UserError
from flax_sentiment.models.architectures import Architecture

log = logging.getLogger(__name__)

# Our leaf name -> (checkpoint leaf name, transpose?). Linear kernels are [in, out] here and
# [out, in] in PyTorch.
_LEAVES = {"kernel": ("weight", True), "bias": ("bias", False), "scale": ("weight", False),
           "embedding": ("weight", False)}
HEAD_PREFIX = "head."


def read_state_dict(folder: Path) -> dict[str, np.ndarray]:
    """Tensors from `model.safetensors` (preferred, possibly sharded) or `pytorch_model.bin`."""
    folder = Path(folder)
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists() or index.exists():
        from safetensors.numpy import load_file

        files = [single] if single.exists() else sorted(
            {folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        out: dict[str, np.ndarray] = {}
        for f in files:
            try:
                out.update(load_file(str(f)))
            except Exception as e:
                raise UserError(f"{f}: not a readable safetensors file ({e})") from None
        return out
    binary = folder / "pytorch_model.bin"
    if binary.exists():
        try:
            import torch
        except ImportError:
            raise UserError(f"{binary}: reading pytorch_model.bin needs torch "
                            "(pip install 'flax-sentiment[torch]')") from None
        try:  # weights_only: never unpickle arbitrary objects from a downloaded file
            sd = torch.load(binary, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{binary}: could not be read as a weights-only state dict "
                            f"({type(e).__name__}: {e})") from None
        return {k: v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
                for k, v in sd.items()}
    raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin (no weights to load)")


def _normalise(name: str) -> str:
    # Old TF-converted checkpoints (bert-base-uncased) name LayerNorm parameters gamma/beta.
    if name.endswith(".gamma"):
        return name[: -len("gamma")] + "weight"
    if name.endswith(".beta"):
        return name[: -len("beta")] + "bias"
    return name


def iter_params(model: nnx.Module) -> Iterator[tuple[str, nnx.Param]]:
    """(dotted module path + leaf, Param variable) for every parameter of the model."""
    for path, value in nnx.iter_graph(model):
        if isinstance(value, nnx.Param):
            yield ".".join(str(p) for p in path), value


def checkpoint_name(arch: Architecture, param_path: str) -> tuple[str, bool]:
    module, _, leaf = param_path.rpartition(".")
    hf_leaf, transpose = _LEAVES[leaf]
    return f"{arch.hf_module_name(module)}.{hf_leaf}", transpose


def import_weights(model: nnx.Module, arch: Architecture, state_dict: dict[str, np.ndarray],
                   *, source: str, fresh_prefixes: tuple[str, ...] = (HEAD_PREFIX,)
                   ) -> list[str]:
    """Copy checkpoint tensors into `model` in place; returns the head parameters left fresh.

    A missing head layer (under `fresh_prefixes`: a base-model checkpoint has no classifier,
    maybe no pooler, often no MLM head) is expected and left freshly initialised; any other
    missing, unexpected or mis-shaped tensor is an error naming it.
    """
    sd = {_normalise(k): v for k, v in state_dict.items()}
    # Base-model checkpoints (AutoModel.save_pretrained) have no "bert." style prefix.
    strip = not any(k.startswith(arch.prefix + ".") for k in sd)
    plan = []
    for path, param in iter_params(model):
        name, transpose = checkpoint_name(arch, path)
        if strip and name.startswith(arch.prefix + "."):
            name = name[len(arch.prefix) + 1:]
        plan.append((path, param, name, transpose))
    missing_modules = {path.rpartition(".")[0] for path, _, name, _ in plan if name not in sd}
    fresh: list[str] = []
    used: set[str] = set()
    for path, param, name, transpose in plan:
        module = path.rpartition(".")[0]
        if module in missing_modules:
            present = [n for p, _, n, _ in plan if p.startswith(module + ".") and n in sd]
            if (module + ".").startswith(fresh_prefixes) and not present:
                fresh.append(path)
                continue
            raise UserError(f"{source}: tensor {name!r} is missing from the checkpoint")
        value = sd[name].T if transpose else sd[name]
        current = param.get_value()  # an array, or a ShapeDtypeStruct (nnx.eval_shape)
        if value.shape != current.shape:
            expected = current.shape[::-1] if transpose else current.shape
            hint = (" (a classifier for a different number of labels: set num_labels to match, "
                    "or start from the base model)" if module.startswith(HEAD_PREFIX) else "")
            raise UserError(f"{source}: tensor {name!r} has shape {tuple(sd[name].shape)}, "
                            f"expected {tuple(expected)}{hint}")
        param.set_value(jnp.asarray(value, dtype=current.dtype))
        used.add(name)
    unexpected = [k for k in sd if k not in used and not arch.is_ignored(k)]
    if unexpected:
        shown = ", ".join(repr(k) for k in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise UserError(f"{source}: unexpected tensor(s) {shown}{more} for model_type "
                        f"{arch.model_type!r}")
    return fresh


def export_state_dict(model: nnx.Module, arch: Architecture,
                      dtype: np.dtype = np.float32) -> dict[str, np.ndarray]:
    """Our parameters under the names and layouts of `arch.hf_class`'s state dict."""
    out = {}
    for path, param in iter_params(model):
        name, transpose = checkpoint_name(arch, path)
        value = np.asarray(param[...], dtype=np.float32)
        out[name] = np.ascontiguousarray(value.T if transpose else value).astype(dtype)
    return out
