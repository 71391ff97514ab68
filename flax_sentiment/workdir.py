"""The one owner of a run folder: its layout (the workdir contract) and reading and writing it.

`config.json` (resolved config), `tokenizer/`, `checkpoints/` (orbax), `metrics.jsonl` (one JSON
object per line, each with `step`) plus TensorBoard events, and `eval_results.json`. Evaluation,
prediction and export load a `Run` from it: the parameters alone (an orbax partial restore),
with no optimizer and no random initialisation. A LoRA run's checkpoints hold its head and
adapters only: its `Run` is the pretrained base with them merged (an ordinary model), and keeps
them unmerged too (`Run.adapters`, for a PEFT adapter export).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from flax_sentiment import parallel
from flax_sentiment.config import eval_weights, from_dict, metric_mode, option, to_json
from flax_sentiment.errors import UserError
from flax_sentiment.models import lora
from flax_sentiment.models.architectures import Architecture, get_architecture
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.mlm import MaskedLM, mlm_architecture
from flax_sentiment.models.pretrained import as_dtype, load_tokenizer
from flax_sentiment.training.checkpoint import Checkpoints

log = logging.getLogger(__name__)


class Workdir:
    """Paths and files of one training run (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser().absolute()
        self.config_file = self.path / "config.json"
        self.tokenizer_dir = self.path / "tokenizer"
        self.checkpoints_dir = self.path / "checkpoints"
        self.metrics_file = self.path / "metrics.jsonl"
        self.results_file = self.path / "eval_results.json"

    def __str__(self) -> str:
        return str(self.path)

    # -- writing (the training run)

    def check_usable(self) -> None:
        """A workdir is a folder or does not exist yet (it and its parents are made later)."""
        for path in (self.path, *self.path.parents):
            if path.exists():
                if not path.is_dir():
                    raise UserError(f"--workdir {self.path}: {path} is a file, not a folder")
                return

    def write_run_files(self, config: ml_collections.ConfigDict, tokenizer: Any) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(to_json(config))
        tokenizer.save_pretrained(str(self.tokenizer_dir))

    def write_results(self, results: dict[str, Any]) -> None:
        self.results_file.write_text(json.dumps(results, indent=2))

    def metrics_writer(self, *, enabled: bool = True) -> MetricsWriter:
        return MetricsWriter(self.path, self.metrics_file, enabled=enabled)

    def checkpoints(self, *, read_only: bool = False, **options: Any) -> Checkpoints:
        """The run's checkpoints; "best" is by the run's own eval.metric and its mode (from
        config.json) unless `metric`/`mode` are given, so `DIR@best` of a run judged by macro
        F1 or a loss picks its best checkpoint, not a missing accuracy."""
        if "metric" not in options:
            config = self.read_config()
            if config is not None:
                options.setdefault("mode", metric_mode(config))
                options["metric"] = config.eval.metric
        return Checkpoints(self.checkpoints_dir, read_only=read_only, **options)

    # -- reading (evaluation, prediction, export, notebooks)

    def read_config(self) -> ml_collections.ConfigDict | None:
        """The resolved config the run wrote, or None when there is none (yet)."""
        if not self.config_file.is_file():
            return None
        try:
            return from_dict(json.loads(self.config_file.read_text()))
        except json.JSONDecodeError as e:
            raise UserError(f"{self.config_file}: not valid JSON ({e})") from None

    def read_results(self) -> dict[str, Any] | None:
        return json.loads(self.results_file.read_text()) if self.results_file.is_file() else None

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines()
                if line.strip()]

    def tokenizer(self, fallback: str) -> Any:
        """The tokenizer the run saved (`fallback`, the model's name, for older runs)."""
        return load_tokenizer(self.tokenizer_dir if self.tokenizer_dir.is_dir() else fallback)

    def load_run(self, step: int | str | None = None, *, dtype: str | None = None,
                 weights: str | None = None, task: str | None = None) -> Run:
        """The model at `step` (None = latest, 'best' = best by the eval metric, or a number),
        restored as parameters alone: the raw ones or their moving average (`weights` 'raw' |
        'ema'; None = the run's `eval.weights`). `task` "classify" refuses a masked-LM run
        (for evaluating, predicting, averaging: it has no labels); None takes either."""
        if not self.path.is_dir():
            raise UserError(f"--workdir {self.path}: no such folder")
        if not self.checkpoints_dir.is_dir():
            raise UserError(f"{self.path}: no checkpoints folder (not a training workdir, or "
                            "the run saved nothing yet)")
        config = self.read_config()
        ckpts = self.checkpoints(read_only=True)
        try:
            chosen = _choose_step(ckpts, step, self.path)
            # The checkpoint's own metadata builds the model: no config file or hub needed.
            meta = ckpts.restore_extra(chosen)["meta"]
            if task == "classify" and meta.get("task") == "mlm":
                raise UserError(f"{self.path} is a masked-LM run (scripts/pretrain.py): it has "
                                "no labels to evaluate or predict; fine-tune from it "
                                f"(--config.model.name_or_path={self.path}) or export it "
                                "(scripts/export.py)")
            enc = EncoderConfig(**meta["encoder_config"])
            config = from_dict(meta["config"])
            if weights in (None, "auto"):
                weights = eval_weights(config)
            if weights not in ("raw", "ema"):
                raise UserError(f"weights {weights!r}: must be raw, ema or auto")
            if weights == "ema" and option(config.train, "ema_decay", 0.0) <= 0:
                raise UserError(f"{self.path}: the run kept no moving average of its weights "
                                "(train.ema_decay=0); use the raw weights")
            compute = as_dtype(dtype or config.model.dtype)
            masked_lm = meta.get("task") == "mlm"
            model_cls = MaskedLM if masked_lm else SequenceClassifier
            abstract = nnx.eval_shape(lambda: model_cls(enc, dtype=compute, rngs=nnx.Rngs(0)))
            model_def = ModelDef(abstract)
            spec = lora.LoraSpec.from_meta(meta["lora"]) if meta.get("lora") else None
            stored = model_def.abstract_params()
            if spec is not None:
                stored = spec.abstract_trainable(stored)
            # The latest may be damaged: then the restore falls back and says so.
            latest = step is None or step == "latest"
            restored, params, _ = ckpts.restore_params(
                stored, parallel.replicated(parallel.make_mesh()),
                None if latest else chosen, item="params" if weights == "raw" else "ema")
        finally:
            ckpts.close()
        params = jax.device_get(params)
        adapters = None
        if spec is not None:
            frozen = lora.load_base(config.model.name_or_path, model_def.abstract_params(),
                                    enc.num_labels, meta["lora"].get("base_digest"))
            adapters = lora.Adapters(spec, params, config.model.name_or_path)
            params = jax.device_get(spec.merge(params, frozen))
        model = model_def.merge(params)
        _set_attention(model, config)
        arch = get_architecture(meta["model_type"])
        if masked_lm:
            arch = mlm_architecture(arch, meta["hf_config"])
        return Run(workdir=self.path, step=restored, model=model, arch=arch,
                   label_names=list(meta["label_names"]), config=config,
                   hf_config=meta["hf_config"], weights=weights, adapters=adapters,
                   start=meta.get("start"))


def _set_attention(model: Any, config: ml_collections.ConfigDict) -> None:
    """The run's model.attention for evaluating and predicting, or `auto` where this machine
    cannot take it (a run trained with cuDNN, evaluated on a CPU)."""
    chosen = option(config.model, "attention", "auto")
    try:
        model.encoder.set_attention(chosen, option(config.model, "attention_dropout", None))
    except UserError as e:
        log.info("%s; evaluating with model.attention=auto", e)
        model.encoder.set_attention("auto")


def _choose_step(ckpts: Checkpoints, step: int | str | None, where: Path) -> int:
    if not ckpts.all_steps():
        raise UserError(f"{ckpts.directory}: no complete checkpoints")
    if step == "best":
        best = ckpts.best_step()
        if best is None:
            raise UserError(f"{where}: no checkpoint has eval metrics, so there is no best one "
                            f"(have steps {ckpts.all_steps()})")
        return best
    if step is None or step == "latest":
        return ckpts.latest_step()
    if int(step) not in ckpts.all_steps():
        raise UserError(f"{where}: no checkpoint at step {step} (have {ckpts.all_steps()})")
    return int(step)


@dataclasses.dataclass
class Run:
    """A trained model restored from a workdir at `step`."""

    workdir: Path
    step: int
    model: SequenceClassifier | MaskedLM  # a masked-LM run's: MaskedLM, no labels
    arch: Architecture
    label_names: list[str]
    config: ml_collections.ConfigDict
    hf_config: dict[str, Any]
    weights: str = "raw"  # 'raw' or 'ema' (the moving average)
    adapters: lora.Adapters | None = None  # a LoRA run's adapters and head, unmerged
    start: dict[str, Any] | None = None  # a run started from a workdir: `start.Start` fields

    @functools.cached_property
    def tokenizer(self) -> Any:
        return Workdir(self.workdir).tokenizer(self.config.model.name_or_path)


def load_run(workdir: str | Path, step: int | str | None = None, *,
             dtype: str | None = None, weights: str | None = None,
             task: str | None = None) -> Run:
    """`Workdir(workdir).load_run(step, dtype=dtype, weights=weights, task=task)`."""
    return Workdir(workdir).load_run(step, dtype=dtype, weights=weights, task=task)


class MetricsWriter:
    """metrics.jsonl (one JSON object per line, each with `step`) and the same scalars as
    TensorBoard events; only process 0 writes."""

    def __init__(self, folder: Path, path: Path, *, enabled: bool = True):
        self.enabled, self.folder, self.path = enabled, Path(folder), Path(path)
        self._tb = None

    def _board(self):
        if self._tb is None:
            self._tb = _summary_writer()(logdir=str(self.folder), flush_secs=30)
        return self._tb

    def write(self, step: int, scalars: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {"step": int(step), **{k: _jsonable(v) for k, v in scalars.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        board = self._board()
        for key, value in scalars.items():
            if isinstance(value, int | float) and math.isfinite(value):
                board.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the restored checkpoint (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _summary_writer() -> Any:
    """tensorboardX's SummaryWriter, imported without torch when torch is not loaded yet:
    tensorboardX imports it only to accept torch tensors (`try: import torch`), which costs a
    training command ~1.3 s of start-up on a 2-core CPU, and scalars need none of it."""
    if "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError while tensorboardX loads
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
