"""`load_pretrained`: a Hugging Face checkpoint folder (hub id, local, pip:) -> NNX classifier."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flax_sentiment import sources
from flax_sentiment.errors import UserError
from flax_sentiment.models.architectures import Architecture, get_architecture
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.weights import (
    checkpoint_name,
    import_weights,
    iter_params,
    read_state_dict,
)

log = logging.getLogger(__name__)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def as_dtype(dtype: Any) -> Any:
    """'bfloat16' or jnp.bfloat16 -> jnp.bfloat16, with a clear error for anything else."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"dtype {dtype!r} is not supported (use one of {sorted(DTYPES)})")
        return DTYPES[dtype]
    return dtype


@dataclasses.dataclass
class Pretrained:
    """A loaded checkpoint: the model plus what is needed to use, retrain and export it."""

    model: SequenceClassifier
    arch: Architecture
    config: EncoderConfig
    hf_config: dict[str, Any]
    folder: Path
    label_names: list[str] | None  # from the checkpoint's id2label when it had a head
    fresh_head: bool

    @functools.cached_property
    def tokenizer(self):
        return load_tokenizer(self.folder)


def load_tokenizer(folder: str | Path):
    """The checkpoint's fast tokenizer (never built from a bare vocab file: see README): the
    class its tokenizer_config.json names, else what `AutoTokenizer` picks. Naming the class
    spares every command `AutoTokenizer`'s imports (transformers' model configs, and with them
    torch: ~1.5 s a process on a 2-core CPU) and gives the same tokenizer."""
    folder = sources.resolve(str(folder))
    named = _named_tokenizer_class(folder)
    if named is not None:
        try:
            return named.from_pretrained(str(folder))
        except Exception:  # AutoTokenizer, below, says what is wrong, if anything is
            pass
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as e:
        raise UserError(f"{folder}: could not load a tokenizer ({type(e).__name__}: {e})") from None


def _named_tokenizer_class(folder: Path) -> Any:
    """The fast tokenizer class tokenizer_config.json names, when the folder has the fast
    tokenizer's own file (tokenizer.json); None otherwise."""
    import transformers

    try:
        name = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str) or not (folder / "tokenizer.json").is_file():
        return None
    for candidate in (name if name.endswith("Fast") else f"{name}Fast", name):
        cls = getattr(transformers, candidate, None)
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedTokenizerFast):
            return cls
    return None


def read_hf_config(folder: Path) -> dict[str, Any]:
    path = Path(folder) / "config.json"
    if not path.exists():
        raise UserError(f"{folder}: no config.json (not a Hugging Face model folder)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


POOLINGS = ("cls", "mean")


def head_pooling(hf: dict[str, Any], asked: str = "auto", source: str = "config.json") -> str:
    """The pooling a head over checkpoint config `hf` uses: `asked` (config model.pooling), or
    for "auto" the checkpoint's own: its `classifier_pooling` (ModernBERT's, or a mean-pooled
    export of ours, any type: `remote_code`), else the first token."""
    if asked not in ("auto",) + POOLINGS:
        raise UserError(f"pooling {asked!r}: must be auto (the checkpoint's own), cls or mean")
    own = hf.get("classifier_pooling", "cls")
    if own not in POOLINGS:
        raise UserError(f"{source}: classifier_pooling {own!r} is not supported "
                        "(use 'cls' or 'mean')")
    return own if asked == "auto" else asked


def _initialise(model: SequenceClassifier, fresh: list[str],
                build: Callable[[], SequenceClassifier]) -> None:
    """Give the parameters the checkpoint lacks (a fresh head) the values an eager `build()`
    would give them, bit for bit: one jitted build that returns only those, so XLA drops every
    other draw. Why: building the whole model eagerly draws and then overwrites every imported
    tensor, and compiles one small program per initialiser and shape (23 for MiniLM, ~2.5 s
    of every command's start-up)."""
    wanted = set(fresh)
    if wanted:
        values = jax.jit(lambda: {path: param.get_value() for path, param
                                  in iter_params(build())
                                  if path in wanted})()
    left = []
    for path, param in iter_params(model):
        if path in wanted:
            param.set_value(values[path])
        elif isinstance(param.get_value(), jax.ShapeDtypeStruct):
            left.append(path)
    if left:  # import_weights fills or reports every other parameter: a bug if not
        raise AssertionError(f"parameters left without values: {left[:5]}")


def load_pretrained_bundle(name_or_path: str | Path, num_labels: int | None = None,
                           dtype: Any = jnp.float32, *, seed: int = 0,
                           pooling: str = "auto") -> Pretrained:
    """Like `load_pretrained`, but also returns the tokenizer, configs and label names.
    `pooling` ("auto" | "cls" | "mean") overrides the head's pooling (config model.pooling)."""
    folder = sources.resolve(str(name_or_path))
    if not folder.is_dir():
        raise UserError(f"{name_or_path!r}: expected a model folder, got a file ({folder})")
    hf = read_hf_config(folder)
    arch = get_architecture(hf.get("model_type"), source=str(folder / "config.json"))
    state_dict = read_state_dict(folder)

    head_out = checkpoint_name(arch, "head.out.kernel")[0]
    head_out = next((k for k in state_dict if k == head_out or k.endswith("." + head_out)), None)
    ckpt_labels = state_dict[head_out].shape[0] if head_out else None
    if num_labels is None:
        num_labels = ckpt_labels or 2
    if num_labels < 2:
        raise UserError(f"num_labels must be >= 2, got {num_labels}")
    cfg = arch.encoder_config(hf).replace(
        num_labels=num_labels,
        head_pooling=head_pooling(hf, pooling, source=str(folder / "config.json")))

    def build() -> SequenceClassifier:
        return SequenceClassifier(cfg, dtype=as_dtype(dtype), rngs=nnx.Rngs(seed))

    model = nnx.eval_shape(build)  # shapes only: nothing drawn, nothing compiled
    fresh = import_weights(model, arch, state_dict, source=str(folder))
    _initialise(model, fresh, build)
    if fresh:
        log.info("%s: no classification head in the checkpoint; initialised a fresh %d-way "
                 "head (%s)", name_or_path, num_labels,
                 ", ".join(sorted({p.rpartition(".")[0] for p in fresh})))
    label_names = None
    if not fresh and isinstance(hf.get("id2label"), dict):
        id2label = {int(k): v for k, v in hf["id2label"].items()}
        if sorted(id2label) == list(range(num_labels)):
            label_names = [id2label[i] for i in range(num_labels)]
    return Pretrained(model=model, arch=arch, config=cfg, hf_config=hf, folder=folder,
                      label_names=label_names, fresh_head=bool(fresh))


def load_pretrained(name_or_path: str | Path, num_labels: int | None = None,
                    dtype: Any = jnp.float32, *, seed: int = 0) -> SequenceClassifier:
    """An NNX sequence classifier with the checkpoint's weights.

    `name_or_path`: a hub id, a local Hugging Face folder, or `pip:PACKAGE/sub/folder`.
    With a classification head in the checkpoint it is loaded (and `num_labels` defaults to
    its size); without one a fresh head is initialised from `seed` and the log says so.
    `dtype` is the compute dtype; parameters stay float32.
    """
    return load_pretrained_bundle(name_or_path, num_labels, dtype, seed=seed).model
