"""A run's starting model: `model.name_or_path` names a checkpoint folder (hub id, local, pip:)
or a training workdir (`DIR`, `DIR@best`, `DIR@1200`: a fine-tuning or a masked-LM run).

From a workdir the encoder's weights are the checkpoint's (its `eval.weights`: raw or the
moving average) and the tokenizer is the run's. The head:
- fine-tuning from a classifier run keeps the head when the label names are the same (compared
  case-blind; in another order its rows are permuted by name: "reordered"), and draws a fresh
  one when they differ (an SST-2 model starting a 3-class tweet task);
- fine-tuning from a masked-LM run, or masked-LM training from a classifier, draws a fresh head
  of the other kind; masked-LM training from a masked-LM run keeps its MLM head.
What was chosen is `Start.head` ("kept" | "reordered" | "fresh"), logged, kept in the run's
checkpoint metadata and written into the exported model card.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
from flax import nnx

from flax_sentiment.errors import UserError
from flax_sentiment.models import attention
from flax_sentiment.models.architectures import get_architecture
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.mlm import MaskedLM, load_masked_lm, mlm_architecture
from flax_sentiment.models.pretrained import Pretrained, as_dtype, head_pooling
from flax_sentiment.training import initialization

log = logging.getLogger(__name__)


def configure_encoder(model: SequenceClassifier | MaskedLM, options: Any) -> None:
    """The config's model-side switches (`config.model`: remat, scan_layers, attention,
    attention_dropout) set on a built model; they change the compiled program only."""
    get = options.get
    encoder = model.encoder
    encoder.remat = bool(get("remat", False))
    encoder.scan = bool(get("scan_layers", False))
    implementation = get("attention", "auto") or "auto"
    rate = get("attention_dropout", None)
    if rate is None:
        rate = attention.default_dropout(implementation, jax.default_backend())
    encoder.set_attention(implementation, rate)


def parse_spec(spec: str, key: str = "model.name_or_path") -> tuple[str, int | str | None]:
    """'DIR' (latest checkpoint), 'DIR@best', 'DIR@latest' or 'DIR@1200'; anything else as is
    (`key`: the config key that named it, for the error)."""
    path, sep, step = str(spec).rpartition("@")
    if not sep or "/" in step:
        return str(spec), None
    if step in ("best", "latest"):
        return path, step
    if step.isdigit():
        return path, int(step)
    raise UserError(f"config {key} {spec!r}: after '@' comes a step number, 'best' or "
                    "'latest'")


def is_workdir(spec: str) -> bool:
    path, _ = parse_spec(spec)
    return (Path(path).expanduser() / "checkpoints").is_dir()


@dataclasses.dataclass
class Start:
    """Where a run starts (for the checkpoint metadata and the model card)."""

    source: str
    step: int | None = None  # the workdir's checkpoint step
    task: str = "classify"  # the source run's task (a workdir)
    head: str = "fresh"  # kept | reordered | fresh
    source_labels: list[str] | None = None

    def describe(self) -> str:
        where = f"{self.source} (step {self.step})" if self.step is not None else self.source
        if self.head == "fresh":
            why = (f": its labels {self.source_labels} are not this run's"
                   if self.source_labels else "")
            return f"started from {where}; head drawn fresh{why}"
        return f"started from {where}; head {self.head} ({self.source_labels})"

    def to_meta(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _restore(spec: str, dtype: str) -> tuple[Any, Any]:
    """(Run, Workdir) of a workdir spec, its parameters restored on the host."""
    from flax_sentiment.workdir import Workdir

    path, step = parse_spec(spec)
    wd = Workdir(Path(path).expanduser())
    return wd.load_run(step, dtype=dtype), wd


def _transfer(model: nnx.Module, params: dict[str, Any], prefix: str = "encoder.") -> None:
    """Copy `params`' entries under `prefix` into `model` (same architecture and shapes)."""
    model_def = ModelDef(model)
    target = ModelDef.params_of(model)
    mine = {k for k in target if k.startswith(prefix)}
    source = {k: v for k, v in params.items() if k.startswith(prefix)}
    if set(source) != mine:
        raise AssertionError(f"parameters differ: {sorted(set(source) ^ mine)[:5]}")
    for k in mine:
        if tuple(source[k].shape) != tuple(target[k].shape):
            raise AssertionError(f"{k}: {source[k].shape} vs {target[k].shape}")
    merged = model_def.merge({**target, **{k: jax.numpy.asarray(source[k], target[k].dtype)
                                           for k in mine}})
    nnx.update(model, nnx.state(merged, nnx.Param))


def classifier_from_workdir(spec: str, label_names: list[str], *, dtype: str, seed: int,
                            pooling: str = "auto") -> tuple[Pretrained, Start]:
    """A `Pretrained` bundle for fine-tuning from a workdir (see the module docstring)."""
    run, wd = _restore(spec, "float32")
    task = "mlm" if isinstance(run.model, MaskedLM) else "classify"
    enc = run.model.config
    src_labels = list(run.label_names) if task == "classify" else None
    same = (src_labels is not None and len(src_labels) == len(label_names)
            and sorted(n.lower() for n in src_labels) == sorted(str(n).lower()
                                                                 for n in label_names))
    own_pooling = enc.head_pooling if task == "classify" else head_pooling(run.hf_config)
    cfg = enc.replace(num_labels=len(label_names),
                      head_pooling=own_pooling if pooling == "auto" else pooling)
    model = SequenceClassifier(cfg, dtype=as_dtype(dtype), rngs=nnx.Rngs(seed))
    params = ModelDef.params_of(run.model)
    _transfer(model, params)
    head = "fresh"
    if same:
        _transfer(model, params, prefix="head.")
        ordered = initialization.order_head(ModelDef.params_of(model), src_labels, label_names)
        head = "kept" if [n.lower() for n in src_labels] == [str(n).lower()
                                                              for n in label_names] \
            else "reordered"
        nnx.update(model, nnx.state(ModelDef(model).merge(ordered), nnx.Param))
    start = Start(source=str(spec), step=run.step, task=task, head=head,
                  source_labels=src_labels)
    log.info("model.name_or_path: %s", start.describe())
    arch = get_architecture(enc.model_type)
    bundle = Pretrained(model=model, arch=arch, config=cfg, hf_config=run.hf_config,
                        folder=wd.tokenizer_dir, label_names=None, fresh_head=head == "fresh")
    return bundle, start


def masked_lm_start(spec: str, *, dtype: str, seed: int) -> tuple[Any, Start]:
    """A `PretrainedMLM` for masked-LM training from a folder, hub id or workdir, and its
    tokenizer's folder."""
    if not is_workdir(spec):
        path, step = parse_spec(spec)
        if step is not None:
            raise UserError(f"config model.name_or_path {spec!r}: {path} is not a training "
                            "workdir, so it has no checkpoint steps")
        bundle = load_masked_lm(spec, dtype=as_dtype(dtype), seed=seed)
        return bundle, Start(source=str(spec), head="fresh" if bundle.fresh_head else "kept")
    from flax_sentiment.models.mlm import PretrainedMLM

    run, wd = _restore(spec, "float32")
    task = "mlm" if isinstance(run.model, MaskedLM) else "classify"
    enc = run.model.config
    model = MaskedLM(enc, dtype=as_dtype(dtype), rngs=nnx.Rngs(seed))
    params = ModelDef.params_of(run.model)
    _transfer(model, params)
    if task == "mlm":
        _transfer(model, params, prefix="mlm.")
    start = Start(source=str(spec), step=run.step, task=task,
                  head="kept" if task == "mlm" else "fresh")
    log.info("model.name_or_path: %s (masked-LM head %s)", start.describe(), start.head)
    arch = mlm_architecture(get_architecture(enc.model_type), run.hf_config)
    return PretrainedMLM(model=model, arch=arch, config=enc, hf_config=run.hf_config,
                         folder=wd.tokenizer_dir, fresh_head=task != "mlm"), start
