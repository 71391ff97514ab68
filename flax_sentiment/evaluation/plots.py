"""PNG figures of an evaluation: confusion matrix, precision-recall, calibration, training curves.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never through pyplot: no
global backend switch (a notebook keeps its inline backend), no figures left open, and safe
in headless processes. Every function saves one PNG and returns its path.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

DPI = 120
NUM_BINS = 15  # metrics.batch_counts' default, so the diagram shows the bins behind `ece`


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=DPI, facecolor="white")
    return path


def _suptitle(fig: Any, text: str, title: str | None) -> None:
    fig.suptitle(f"{text} ({title})" if title else text, fontsize=13)


# --------------------------------------------------------------------------------------------
# Confusion matrix


def confusion_matrix(confusion: Sequence[Sequence[float]], label_names: Sequence[str],
                     path: str | Path, *, title: str | None = None) -> Path:
    """Counts and row-normalised rates side by side: counts show where the volume of errors
    is, rates show which classes the model recalls badly whatever their size."""
    counts = np.asarray(confusion, dtype=np.float64)
    n = len(label_names)
    support = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, support, out=np.zeros_like(counts), where=support != 0)
    side = max(4.2, 1.0 + 0.9 * n)
    fig = _figure(2 * side + 1.2, side + 0.4)
    axes = fig.subplots(1, 2)
    panels = [
        (axes[0], counts, "Counts", lambda v, r, c: f"{int(round(v))}"),
        (axes[1], rates, "Normalised by true class (recall)",
         lambda v, r, c: f"{v:.1%}\n({int(round(counts[r, c]))}/{int(round(support[r, 0]))})"),
    ]
    fontsize = 12 if n <= 3 else 10 if n <= 6 else 8
    for ax, values, name, fmt in panels:
        vmax = 1.0 if values is rates else max(values.max(), 1.0)
        image = ax.imshow(values, cmap="Blues", vmin=0.0, vmax=vmax)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        for r in range(n):
            for c in range(n):
                dark = values[r, c] > 0.55 * vmax
                ax.text(c, r, fmt(values[r, c], r, c), ha="center", va="center",
                        fontsize=fontsize, color="white" if dark else "#1a1a1a")
        ax.set_xticks(range(n), [str(x) for x in label_names],
                      rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center")
        ax.set_yticks(range(n), [str(x) for x in label_names])
        ax.set_xlabel("Predicted label")
        ax.set_ylabel("True label")
        ax.set_title(name)
    total = int(round(counts.sum()))
    accuracy = np.trace(counts) / total if total else 0.0
    _suptitle(fig, f"Confusion matrix: {total} examples, accuracy {accuracy:.1%}", title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Precision-recall


def precision_recall_curves(probabilities: np.ndarray, labels: np.ndarray,
                            label_names: Sequence[str], path: str | Path, *,
                            title: str | None = None) -> Path:
    """One-vs-rest precision-recall curve per class, with average precision (AP) and the
    chance level (the class's share) for reference."""
    from matplotlib import colormaps
    from sklearn.metrics import average_precision_score, precision_recall_curve

    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels)
    fig = _figure(7.2, 6.0)
    ax = fig.subplots()
    colors = colormaps["tab10"].colors
    for k, name in enumerate(label_names):
        positive = labels == k
        color = colors[k % len(colors)]
        share = positive.mean() if labels.size else 0.0
        if not positive.any():
            ax.plot([], [], color=color, label=f"{name} (no examples)")
            continue
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, k],
                                                      drop_intermediate=False)
        ap = average_precision_score(positive, probabilities[:, k])
        ax.plot(recall, precision, drawstyle="steps-post", color=color, linewidth=2,
                label=f"{name}: AP {ap:.3f} (chance {share:.2f})")
        ax.axhline(share, color=color, linestyle=":", linewidth=1, alpha=0.8)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.03)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=9, title="one-vs-rest, dotted = chance",
              title_fontsize=9, framealpha=0.9)
    _suptitle(fig, "Precision-recall by class", title)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Calibration


def calibration_bins(probabilities: np.ndarray, labels: np.ndarray, num_bins: int = NUM_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean confidence, accuracy) per equal-width confidence bin, binned exactly as
    `metrics.batch_counts` (bin k = [k/n, (k+1)/n), 1.0 in the last bin)."""
    probabilities = np.asarray(probabilities, np.float32)
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    bins = np.clip(np.floor(confidence * num_bins).astype(np.int64), 0, num_bins - 1)
    count = np.bincount(bins, minlength=num_bins).astype(np.float64)
    conf_sum = np.bincount(bins, weights=confidence.astype(np.float64), minlength=num_bins)
    correct_sum = np.bincount(bins, weights=correct, minlength=num_bins)
    mean_conf = np.divide(conf_sum, count, out=np.zeros_like(count), where=count > 0)
    accuracy = np.divide(correct_sum, count, out=np.zeros_like(count), where=count > 0)
    return count, mean_conf, accuracy


def reliability_diagram(probabilities: np.ndarray, labels: np.ndarray, path: str | Path, *,
                        num_bins: int = NUM_BINS, ece: float | None = None,
                        title: str | None = None) -> Path:
    """Accuracy against confidence per bin (a calibrated model sits on the diagonal), with
    the share of examples per bin below; `ece` defaults to the value of these bins."""
    count, mean_conf, accuracy = calibration_bins(probabilities, labels, num_bins)
    total = count.sum()
    if ece is None:
        ece = float(np.sum(count * np.abs(accuracy - mean_conf)) / total) if total else 0.0
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    width = 1.0 / num_bins
    used = count > 0
    fig = _figure(6.8, 7.4)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], linestyle="--", color="#333333", linewidth=1, zorder=3,
             label="perfect calibration")
    top.bar(edges[:-1][used], accuracy[used], width=width, align="edge", color="#4c72b0",
            edgecolor="#24426e", linewidth=0.8, label="accuracy in bin")
    gap_low = np.minimum(accuracy, mean_conf)[used]
    top.bar(edges[:-1][used], np.abs(mean_conf - accuracy)[used], bottom=gap_low,
            width=width, align="edge", facecolor=(0.87, 0.33, 0.32, 0.25),
            edgecolor="#c0392b", hatch="///", linewidth=0.8,
            label="gap: |accuracy - mean confidence|")
    top.plot(mean_conf[used], accuracy[used], "o", color="black", markersize=4, zorder=4,
             label="(mean confidence, accuracy)")
    top.set_xlim(0.0, 1.0)
    top.set_ylim(0.0, 1.0)
    top.set_ylabel("Accuracy")
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    share = count / total if total else count
    bottom.bar(edges[:-1], share, width=width, align="edge", color="#8c8c8c",
               edgecolor="#4d4d4d", linewidth=0.8)
    bottom.set_xlabel("Confidence (probability of the predicted class)")
    bottom.set_ylabel("Share of examples")
    bottom.set_ylim(0.0, max(float(share.max()) * 1.15, 0.05) if total else 1.0)
    bottom.grid(alpha=0.3)
    fig.suptitle(f"Reliability diagram: ECE = {ece:.4f}", fontsize=13)
    top.set_title(f"{int(total)} examples, {num_bins} confidence bins"
                  + (f"; {title}" if title else ""), fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# Training curves


def read_metrics_jsonl(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """key -> (steps, values) of every numeric series in a workdir's metrics.jsonl, sorted by
    step (a resumed run may have rewritten lines; the last value per step wins)."""
    series: dict[str, dict[int, float]] = {}
    for line in Path(path).read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash: skip it
            continue
        step = row.get("step")
        if not isinstance(step, int | float):
            continue
        for key, value in row.items():
            if key == "step" or isinstance(value, bool):
                continue
            if isinstance(value, str):  # 'nan' / 'inf' as written by MetricsWriter
                try:
                    value = float(value)
                except ValueError:
                    continue
            if isinstance(value, int | float):
                series.setdefault(key, {})[int(step)] = float(value)
    return {k: (np.array(sorted(v)), np.array([v[s] for s in sorted(v)]))
            for k, v in series.items()}


_EVAL_METRICS = {"eval/accuracy": "#4c72b0", "eval/f1_macro": "#dd8452"}


def training_curves(metrics_jsonl: str | Path, path: str | Path, *,
                    title: str | None = None) -> Path:
    """Loss, learning rate and eval metrics over steps, from the run's metrics.jsonl: the
    first look at whether a run under- or over-fitted and whether the schedule was sane."""
    series = read_metrics_jsonl(metrics_jsonl)

    def plot(ax, key, label, **style):
        if key in series:
            steps, values = series[key]
            marker = "o" if len(steps) <= 30 or key.startswith("eval/") else None
            ax.plot(steps, values, marker=marker, markersize=4, label=label, **style)
            return True
        return False

    fig = _figure(16.0, 4.6)
    loss_ax, lr_ax, eval_ax = fig.subplots(1, 3)
    drew = plot(loss_ax, "train/loss", "train", color="#4c72b0")
    drew |= plot(loss_ax, "eval/loss", "eval", color="#c44e52", linewidth=2)
    loss_ax.set_title("Loss (cross-entropy)")
    if drew:
        loss_ax.legend()
    if not plot(lr_ax, "train/learning_rate", "learning rate", color="#55a868"):
        lr_ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=lr_ax.transAxes)
    lr_ax.set_title("Learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    drew = False
    for key, color in _EVAL_METRICS.items():
        drew |= plot(eval_ax, key, f"eval {key.split('/', 1)[1]}", color=color, linewidth=2)
    drew |= plot(eval_ax, "train/accuracy", "train accuracy", color="gray", linestyle=":",
                 linewidth=1)
    eval_ax.set_title("Metrics (ECE on the right axis)" if "eval/ece" in series
                      else "Metrics")
    eval_ax.set_ylabel("accuracy / F1")
    if "eval/ece" in series:  # lower is better and on another scale: its own axis
        ece_ax = eval_ax.twinx()
        plot(ece_ax, "eval/ece", "eval ECE", color="#8172b3", linestyle="--", linewidth=1.5)
        ece_ax.set_ylabel("ECE", color="#8172b3")
        ece_ax.tick_params(axis="y", colors="#8172b3")
        ece_ax.set_ylim(bottom=0.0)
        handles = eval_ax.get_legend_handles_labels()
        extra = ece_ax.get_legend_handles_labels()
        eval_ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=9,
                       loc="best", framealpha=0.9)
    elif drew:
        eval_ax.legend(fontsize=9, loc="best", framealpha=0.9)
    if not drew:
        eval_ax.text(0.5, 0.5, "no evaluations logged", ha="center", va="center",
                     transform=eval_ax.transAxes)
    for ax in (loss_ax, lr_ax, eval_ax):
        ax.set_xlabel("Step")
        ax.grid(alpha=0.3)
    steps = [s for s, _ in series.values() if len(s)]
    last = int(max(s.max() for s in steps)) if steps else 0
    _suptitle(fig, f"Training curves: {last} steps", title)
    return _save(fig, path)
