"""Evaluate a saved checkpoint on any split, for notebooks and `scripts/evaluate.py`.

One pass over the split gives both the additive metric counts (the very `eval_step` the trainer
uses, so the numbers equal `eval_results.json` for the same checkpoint and split) and every
example's probabilities, so the mistakes behind the numbers can be read and plotted.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from flax_sentiment import data as data_lib
from flax_sentiment import metrics as metrics_lib
from flax_sentiment import parallel
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef


@dataclasses.dataclass
class Report:
    """Metrics and per-example predictions of one checkpoint on one split."""

    metrics: dict[str, Any]  # exactly metrics.compute_metrics' dict (eval_results.json keys)
    predictions: Any  # pandas.DataFrame, one row per example in split order
    label_names: list[str]
    step: int
    split: str
    workdir: Path
    dataset: str  # data.name_or_path that was evaluated
    probabilities: np.ndarray = dataclasses.field(repr=False)  # float32 [N, num_labels]
    labels: np.ndarray = dataclasses.field(repr=False)  # int32 [N]
    same_data_as_run: bool = True  # False when data.name_or_path was overridden

    @property
    def stem(self) -> str:
        """File-name stem for this evaluation, e.g. `eval_validation_step1200`."""
        parts = ["eval"]
        if not self.same_data_as_run:
            parts.append(_slug(Path(self.dataset.rstrip("/")).stem or self.dataset))
        parts += [_slug(self.split), f"step{self.step}"]
        return "_".join(parts)

    def table(self) -> str:
        """The classification report as plain text (as the trainer logs it)."""
        return metrics_lib.format_report(self.metrics)

    def to_json(self, path: str | Path) -> Path:
        """Write the metrics (plus step, split and dataset) in eval_results.json's layout."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {**self.metrics, "step": self.step, "split": self.split,
                   "dataset": self.dataset, "workdir": str(self.workdir)}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path

    def mistakes(self, n: int = 10, most_confident: bool = True) -> Any:
        """Wrong predictions, the most (or least) confident first: where the model is
        surely wrong is where labels are noisy or the model learned a shortcut."""
        df = self.predictions
        wrong = df[~df["correct"]]
        return wrong.sort_values("confidence", ascending=not most_confident,
                                 kind="stable").head(n)

    def least_confident_correct(self, n: int = 10) -> Any:
        """Right answers the model nearly got wrong: the borderline cases."""
        df = self.predictions
        right = df[df["correct"]]
        return right.sort_values("confidence", ascending=True, kind="stable").head(n)

    def plot_all(self, folder: str | Path) -> list[Path]:
        """Confusion matrix, PR curves, reliability diagram and (if the run logged them)
        training curves, as PNGs named after `stem` in `folder`."""
        from flax_sentiment import plots

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        where = f"step {self.step}, {self.split}"
        paths = [
            plots.confusion_matrix(self.metrics["confusion_matrix"], self.label_names,
                                   folder / f"{self.stem}_confusion.png", title=where),
            plots.precision_recall_curves(self.probabilities, self.labels, self.label_names,
                                          folder / f"{self.stem}_pr.png", title=where),
            plots.reliability_diagram(self.probabilities, self.labels,
                                      folder / f"{self.stem}_reliability.png",
                                      ece=self.metrics["ece"], title=where),
        ]
        history = self.workdir / "metrics.jsonl"
        if history.exists():
            paths.append(plots.training_curves(history, folder / "training_curves.png",
                                               title=self.workdir.name))
        return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "data"


def _coerce(key: str, value: str, current: Any) -> Any:
    """A command-line string as the type of the config value it replaces."""
    if isinstance(current, bool):
        if value.lower() in ("true", "1", "yes"):
            return True
        if value.lower() in ("false", "0", "no"):
            return False
        raise UserError(f"data.{key}={value!r}: expected true or false")
    if isinstance(current, str) or current is None:
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        if isinstance(current, list | tuple):  # a,b,c
            return [v.strip() for v in value.split(",") if v.strip()]
        kind = {"int": "an integer", "float": "a number"}.get(type(current).__name__,
                                                              f"a {type(current).__name__}")
        raise UserError(f"data.{key}={value!r}: expected {kind}") from None
    if isinstance(current, list | tuple) and isinstance(parsed, str | int | float):
        parsed = [parsed]
    return list(parsed) if isinstance(parsed, tuple) else parsed


def apply_data_overrides(data_config: ml_collections.ConfigDict,
                         overrides: Mapping[str, Any] | ml_collections.ConfigDict | None
                         ) -> ml_collections.ConfigDict:
    """A copy of a run's `data` config with `overrides` applied; strings (from a command
    line) are converted to the type of the value they replace."""
    config = ml_collections.ConfigDict(data_config.to_dict())
    if overrides is None:
        return config
    if hasattr(overrides, "to_dict"):
        overrides = overrides.to_dict()
    for key, value in dict(overrides).items():
        if key not in config:
            raise UserError(f"data.{key}: no such data config key (known: "
                            f"{', '.join(sorted(config.keys()))})")
        current = config[key]
        if isinstance(value, str):
            value = _coerce(key, value, current)
        if hasattr(current, "to_dict") and isinstance(value, Mapping):
            value = ml_collections.ConfigDict(dict(value))
        try:
            config[key] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"data.{key}={value!r}: {e}") from None
    return config


def _forward(model_def: ModelDef, num_labels: int, mesh: jax.sharding.Mesh) -> Any:
    """The trainer's eval computation (forward + `batch_counts`, so metrics match it exactly)
    plus each row's probabilities and predicted class (argmax of the same logits the counts
    use). Outputs are replicated so every process sees every row."""

    def step(params, batch):
        logits = model_def.merge(params)(batch["input_ids"], batch["attention_mask"],
                                         batch.get("token_type_ids"))
        counts = metrics_lib.batch_counts(logits, batch["labels"], batch["weights"], num_labels)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        return counts, probs, jnp.argmax(logits, axis=-1), batch["index"]

    replicated = parallel.replicated(mesh)
    return jax.jit(step, in_shardings=(replicated, parallel.data_sharded(mesh)),
                   out_shardings=replicated)


def check_label_names(data_names: Any, run_names: Any, workdir: Path) -> None:
    """Metrics are meaningless when class ids mean other classes than the model learned."""
    data_names = [str(n) for n in data_names]
    run_names = [str(n) for n in run_names]
    if [n.lower() for n in data_names] != [n.lower() for n in run_names]:
        raise UserError(
            f"label mismatch: data.label_names {data_names} differ from the labels the "
            f"checkpoint in {workdir} was trained with {run_names}; evaluate on data with the "
            f"same classes in the same order (data.label_map can rename or merge raw labels)")


def evaluate_checkpoint(workdir: str | Path, *, step: int | str | None = None,
                        data: Mapping[str, Any] | ml_collections.ConfigDict | None = None,
                        split: str | None = None, batch_size: int | None = None,
                        dtype: str | None = None) -> Report:
    """Evaluate the checkpoint of `workdir` at `step` (None = latest, 'best' or a number).

    `data` overrides keys of the run's data config (e.g. `{'name_or_path': ..., 'eval_split':
    ...}`); `split` defaults to its `eval_split`. `batch_size` defaults to the run's
    `eval.batch_size`, which gives the trainer's batches and so bit-identical metrics.
    """
    from flax_sentiment.train import enable_compilation_cache
    from flax_sentiment.workdir import load_run

    saved = Path(workdir).expanduser() / "config.json"
    if saved.is_file():  # fail fast, before restoring the checkpoint
        early = ml_collections.ConfigDict(json.loads(saved.read_text()))
        check_label_names(apply_data_overrides(early.data, data).label_names,
                          early.data.label_names, Path(workdir).expanduser().absolute())
    run = load_run(workdir, step, dtype=dtype)
    enable_compilation_cache(str(run.config.get("compilation_cache_dir", "") or ""))
    config = apply_data_overrides(run.config.data, data)
    check_label_names(config.label_names, run.label_names, run.workdir)
    split = split or str(config.get("eval_split", "") or "")
    if not split:
        raise UserError("no split to evaluate: the run has no data.eval_split; pass a split "
                        "(--split NAME)")
    examples = data_lib.load_split(config, run.tokenizer, split)
    if len(examples) == 0:
        raise UserError(f"split {split!r} of {config.name_or_path} is empty")

    mesh = parallel.make_mesh()
    n_dev = mesh.devices.size
    if batch_size is None:
        batch_size = int(run.config.get("eval", {}).get("batch_size", 128))
    if batch_size < 1:
        raise UserError(f"batch_size={batch_size}: must be at least 1")
    batch_size = parallel.round_up(batch_size, n_dev)
    buckets = data_lib.make_buckets(config.get("buckets", data_lib.DEFAULT_BUCKETS),
                                    int(config.max_length))
    batches = data_lib.EvalBatches(examples, batch_size, buckets,
                                   pad_id=data_lib.pad_token_id(run.tokenizer))

    num_labels = len(run.label_names)
    model_def = ModelDef(run.model)
    params = jax.device_put(ModelDef.params_of(run.model), parallel.replicated(mesh))
    forward = _forward(model_def, num_labels, mesh)
    probabilities = np.full((len(examples), num_labels), np.nan, np.float32)
    predicted = np.zeros(len(examples), np.int32)
    seen = np.zeros(len(examples), np.int32)
    counts = None
    sharding = parallel.data_sharded(mesh)
    for batch in data_lib.prefetch(iter(batches), 2,
                                   lambda b: data_lib.shard_batch(b, sharding)):
        c, probs, preds, index = forward(params, batch)
        counts = c if counts is None else metrics_lib.add_counts(counts, c)
        index = np.asarray(index)
        real = index >= 0
        probabilities[index[real]] = np.asarray(probs)[real]
        predicted[index[real]] = np.asarray(preds)[real]
        np.add.at(seen, index[real], 1)
    if not np.all(seen == 1):  # a batching bug, not a user error
        raise RuntimeError(f"{int(np.sum(seen != 1))} examples were not evaluated exactly once")
    metrics = metrics_lib.compute_metrics(jax.device_get(counts), run.label_names)

    labels = np.asarray(examples.labels, np.int32)
    return Report(metrics=metrics,
                  predictions=_predictions_frame(examples, probabilities, predicted,
                                                 run.label_names),
                  label_names=list(run.label_names), step=run.step, split=split,
                  workdir=run.workdir, dataset=str(config.name_or_path),
                  probabilities=probabilities, labels=labels,
                  same_data_as_run=(str(config.name_or_path)
                                    == str(run.config.data.name_or_path)))


def _predictions_frame(examples: data_lib.TokenizedSplit, probabilities: np.ndarray,
                       predicted: np.ndarray, label_names: list[str]) -> Any:
    import pandas as pd

    names = np.asarray(label_names, dtype=object)
    frame = pd.DataFrame({
        "text": list(examples.texts),
        "label": names[examples.labels],
        "predicted": names[predicted],
        "confidence": probabilities[np.arange(len(predicted)), predicted],
        "correct": predicted == examples.labels,
    }, index=pd.Index(np.asarray(examples.rows), name="row"))
    for i, name in enumerate(label_names):
        frame[f"p_{name}"] = probabilities[:, i]
    return frame
