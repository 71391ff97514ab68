"""What a training workdir holds, loaded back without the original config file: the model at
a step (latest, best or a number), its label names, tokenizer and configs."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from flax_sentiment import parallel
from flax_sentiment.checkpoint import Checkpoints
from flax_sentiment.errors import UserError
from flax_sentiment.models.architectures import Architecture, get_architecture
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.pretrained import as_dtype, load_tokenizer


@dataclasses.dataclass
class Run:
    """A trained model restored from `workdir/checkpoints` at `step`."""

    workdir: Path
    step: int
    model: SequenceClassifier
    arch: Architecture
    label_names: list[str]
    config: ml_collections.ConfigDict
    hf_config: dict[str, Any]

    @functools.cached_property
    def tokenizer(self):
        folder = self.workdir / "tokenizer"
        return load_tokenizer(folder if folder.is_dir() else self.config.model.name_or_path)


def _checkpoints(workdir: Path, config: ml_collections.ConfigDict | None = None) -> Checkpoints:
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise UserError(f"{workdir}: no checkpoints folder (not a training workdir, or the run "
                        "saved nothing yet)")
    metric = config.eval.metric if config is not None else "accuracy"
    mode = config.eval.metric_mode if config is not None else "max"
    ckpts = Checkpoints(directory, metric=metric, mode=mode, read_only=True)
    if not ckpts.all_steps():
        raise UserError(f"{directory}: no complete checkpoints")
    return ckpts


def load_run(workdir: str | Path, step: int | str | None = None, *,
             dtype: str | None = None) -> Run:
    """Restore the model of `workdir` at `step`: None = latest, 'best' = best by eval metric."""
    from flax_sentiment.train import Trainer  # train imports this module's callers, not this

    workdir = Path(workdir).expanduser().absolute()
    if not workdir.is_dir():
        raise UserError(f"--workdir {workdir}: no such folder")
    config_file = workdir / "config.json"
    config = (ml_collections.ConfigDict(json.loads(config_file.read_text()))
              if config_file.exists() else None)
    ckpts = _checkpoints(workdir, config)
    if step == "best":
        chosen = ckpts.best_step()
        if chosen is None:
            raise UserError(f"{workdir}: no checkpoint has eval metrics, so there is no best one "
                            f"(have steps {ckpts.all_steps()})")
    elif step is None or step == "latest":
        chosen = ckpts.latest_step()
    else:
        chosen = int(step)
        if chosen not in ckpts.all_steps():
            raise UserError(f"{workdir}: no checkpoint at step {chosen} "
                            f"(have {ckpts.all_steps()})")
    meta = ckpts.restore_extra(chosen)["meta"]
    config = ml_collections.ConfigDict(meta["config"])
    arch = get_architecture(meta["model_type"])
    enc = EncoderConfig(**meta["encoder_config"])
    model = SequenceClassifier(enc, dtype=as_dtype(dtype or config.model.dtype),
                               rngs=nnx.Rngs(0))
    trainer = Trainer(config, model, enc.num_labels, max(int(config.train.max_steps), 1),
                      parallel.make_mesh())
    # The latest may be damaged: then restore falls back to an older one and says so.
    latest = step is None or step == "latest"
    restored_step, state, _ = ckpts.restore(trainer.abstract_state, None if latest else chosen)
    ckpts.close()
    model = trainer.model_def.merge(jax.device_get(state.params))
    return Run(workdir=workdir, step=restored_step, model=model, arch=arch,
               label_names=list(meta["label_names"]), config=config,
               hf_config=meta["hf_config"])
