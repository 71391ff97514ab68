"""Evaluate a saved checkpoint on any split, for notebooks and `scripts/evaluate.py`.

One pass of `steps.model_step` (the model step the trainer evaluates with, so the numbers equal
`eval_results.json` for the same checkpoint and split) gives both the additive metric counts and
every example's probabilities, so the mistakes behind the numbers can be read and plotted.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from flax_sentiment import parallel
from flax_sentiment.config import option, with_overrides
from flax_sentiment.data import packing, splits
from flax_sentiment.errors import UserError
from flax_sentiment.evaluation import metrics as metrics_lib
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.training.steps import Steps
from flax_sentiment.workdir import Run, Workdir, load_run


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
    ensemble: list[str] | None = None  # the workdirs averaged, for an ensemble

    @property
    def stem(self) -> str:
        """File-name stem for this evaluation, e.g. `eval_validation_step1200`."""
        parts = ["eval"] + (["ensemble"] if self.ensemble else [])
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
        if self.ensemble:
            payload["ensemble"] = self.ensemble
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
        from flax_sentiment.evaluation import plots

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
        history = Workdir(self.workdir).metrics_file
        if history.exists():
            paths.append(plots.training_curves(history, folder / "training_curves.png",
                                               title=self.workdir.name))
        return paths


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", str(text)).strip("-") or "data"


def evaluate_checkpoint(workdir: str | Path, *, step: int | str | None = None,
                        data: Mapping[str, Any] | None = None,
                        overrides: Mapping[str, Any] | None = None, split: str | None = None,
                        batch_size: int | None = None, dtype: str | None = None) -> Report:
    """Evaluate the checkpoint of `workdir` at `step` (None = latest, 'best' or a number).

    `data` overrides keys of the run's data config (e.g. `{'name_or_path': ...}`), `overrides`
    any `data.*` / `eval.*` key by its dotted name; keys that would change the model, its labels
    or its tokenization are refused. `split` defaults to `data.eval_split`, `batch_size` to the
    run's `eval.batch_size` (the trainer's batches, so the same metrics as eval_results.json).
    """
    changes = {**{f"data.{k}": v for k, v in dict(data or {}).items()}, **dict(overrides or {})}
    run = load_run(workdir, step, dtype=dtype, weights=changes.get("eval.weights"),
                   task="classify")
    if batch_size is not None:
        changes["eval.batch_size"] = int(batch_size)
    config = with_overrides(run.config, changes)
    if config.eval.batch_size < 1:
        raise UserError(f"eval.batch_size={config.eval.batch_size}: must be at least 1")
    split = split or str(option(config.data, "eval_split", ""))
    if not split:
        raise UserError("no split to evaluate: the run has no data.eval_split; pass a split "
                        "(--split NAME)")
    with parallel.compilation_cache(str(option(config, "compilation_cache_dir", ""))):
        examples = splits.load_split(config.data, run.tokenizer, split)
        if len(examples) == 0:
            raise UserError(f"split {split!r} of {config.data.name_or_path} is empty")
        return Evaluator(run, config).evaluate(examples, split=split,
                                               dataset=str(config.data.name_or_path))


class Evaluator:
    """A restored run placed on the mesh once, for any number of tokenized splits: evaluating
    several datasets with one model loads it once and reuses its compiled model step."""

    def __init__(self, run: Run, config: ml_collections.ConfigDict):
        self.run, self.config = run, config  # config: the run's, with inference overrides
        self.mesh = parallel.make_mesh()
        self.steps = Steps(ModelDef(run.model), len(run.label_names), self.mesh)
        self.params = self.steps.place(ModelDef.params_of(run.model))

    def evaluate(self, examples: splits.TokenizedSplit, *, split: str, dataset: str) -> Report:
        """Metrics and predictions of `examples`, whose labels are ids of the run's labels."""
        run, config = self.run, self.config
        batches = packing.eval_batches(examples, config.data, config.eval.batch_size,
                                       pad_id=splits.pad_token_id(run.tokenizer),
                                       multiple=self.mesh.devices.size)
        num_labels = len(run.label_names)
        probabilities = np.full((len(examples), num_labels), np.nan, np.float32)
        predicted = np.zeros(len(examples), np.int32)
        seen = np.zeros(len(examples), np.int32)
        counts = None
        for out in self.steps.run(self.params, batches):
            c = out["counts"]
            counts = c if counts is None else metrics_lib.add_counts(counts, c)
            index = np.asarray(out["index"])
            real = index >= 0
            probabilities[index[real]] = np.asarray(out["probabilities"])[real]
            predicted[index[real]] = np.asarray(out["predicted"])[real]
            np.add.at(seen, index[real], 1)
        if not np.all(seen == 1):  # a batching bug, not a user error
            raise RuntimeError(f"{int(np.sum(seen != 1))} examples were not evaluated exactly "
                               "once")
        metrics = metrics_lib.compute_metrics(jax.device_get(counts), run.label_names)
        return Report(metrics=metrics,
                      predictions=_predictions_frame(examples, probabilities, predicted,
                                                     run.label_names),
                      label_names=list(run.label_names), step=run.step, split=split,
                      workdir=run.workdir, dataset=dataset,
                      probabilities=probabilities,
                      labels=np.asarray(examples.labels, np.int32),
                      same_data_as_run=dataset == str(run.config.data.name_or_path))


def evaluate_ensemble(workdirs: Sequence[str | Path], *, step: int | str | None = None,
                      **kwargs: Any) -> Report:
    """The ensemble of several runs (e.g. seeds): each run's probabilities on the same split,
    averaged, scored like one model. `kwargs` as for `evaluate_checkpoint`."""
    if not workdirs:
        raise UserError("an ensemble needs at least one workdir")
    return ensemble_of([evaluate_checkpoint(w, step=step, **kwargs) for w in workdirs])


def ensemble_of(reports: Sequence[Report]) -> Report:
    """One report from several runs' reports on the same split: averaged probabilities."""
    first = reports[0]
    for r in reports[1:]:
        if r.label_names != first.label_names or not np.array_equal(r.labels, first.labels):
            raise UserError(f"{r.workdir} and {first.workdir} do not share labels and split "
                            f"rows: they cannot be ensembled")
    probabilities = np.mean([r.probabilities for r in reports], axis=0).astype(np.float32)
    num_labels = len(first.label_names)
    counts = metrics_lib.batch_counts(np.log(np.maximum(probabilities, 1e-30)), first.labels,
                                      np.ones(len(first.labels), np.float32), num_labels)
    metrics = metrics_lib.compute_metrics(jax.device_get(counts), first.label_names)
    predicted = probabilities.argmax(-1).astype(np.int32)
    frame = first.predictions.copy()
    names = np.asarray(first.label_names, dtype=object)
    frame["predicted"] = names[predicted]
    frame["confidence"] = probabilities[np.arange(len(predicted)), predicted]
    frame["correct"] = predicted == first.labels
    for i, name in enumerate(first.label_names):
        frame[f"p_{name}"] = probabilities[:, i]
    return dataclasses.replace(first, metrics=metrics, predictions=frame,
                               probabilities=probabilities,
                               ensemble=[str(r.workdir) for r in reports])


def _predictions_frame(examples: splits.TokenizedSplit, probabilities: np.ndarray,
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
