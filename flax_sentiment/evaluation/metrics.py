"""Classification metrics from additive counts.

The eval step (jitted, sharded) only produces *sums* (`batch_counts`): a confusion matrix, the
loss sum, and calibration bins. Sums add across batches, devices and processes, so the last
uneven, padded batch and any data/model sharding cost nothing in exactness. Everything that
divides (precision, recall, F1, ECE, mean loss) happens once, on the host, in `compute_metrics`,
following scikit-learn's conventions (`labels=range(C)`, `zero_division=0`).

Counts are float32: integer counts stay exact up to 2**24 (~16.7M) examples per accumulator.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Counts = dict[str, jax.Array]

COUNT_KEYS = (
    "confusion",
    "loss_sum",
    "weight_sum",
    "bin_count",
    "bin_confidence_sum",
    "bin_correct_sum",
)


def init_counts(num_classes: int, num_bins: int = 15) -> Counts:
    """Zero accumulator with the same structure as `batch_counts`, to start a running sum."""
    return {
        "confusion": jnp.zeros((num_classes, num_classes), jnp.float32),
        "loss_sum": jnp.zeros((), jnp.float32),
        "weight_sum": jnp.zeros((), jnp.float32),
        "bin_count": jnp.zeros((num_bins,), jnp.float32),
        "bin_confidence_sum": jnp.zeros((num_bins,), jnp.float32),
        "bin_correct_sum": jnp.zeros((num_bins,), jnp.float32),
    }


def batch_counts(
    logits: jax.Array,
    labels: jax.Array,
    weights: jax.Array,
    num_classes: int,
    num_bins: int = 15,
) -> Counts:
    """Per-batch sums for the metrics; pure jnp so it runs inside the jitted eval step.

    `weights` is the padding mask (1 real row, 0 padding). Padded rows may hold anything,
    including NaN/inf logits or out-of-range labels: they are removed with `where`, not by
    multiplying, because `0 * nan` is nan. `num_classes` and `num_bins` must be static.

    Calibration bins are equal-width over [0, 1]: bin k holds confidences in [k/n, (k+1)/n),
    and a confidence of exactly 1.0 goes to the last bin.
    """
    logits = jnp.asarray(logits, jnp.float32)
    weights = jnp.asarray(weights, jnp.float32)
    labels = jnp.asarray(labels, jnp.int32)
    valid = weights != 0
    w = jnp.where(valid, weights, 0.0)
    # Sanitise padded rows so nothing non-finite reaches a sum.
    logits = jnp.where(valid[:, None], logits, 0.0)
    safe_labels = jnp.where(valid, labels, 0)

    log_probs = jax.nn.log_softmax(logits, axis=-1)
    predictions = jnp.argmax(logits, axis=-1)
    # A real row with a label outside [0, C) drops out of the confusion matrix (one_hot is all
    # zero) but not out of weight_sum; compute_metrics detects that mismatch and raises.
    true_onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * w[:, None]
    pred_onehot = jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
    # HIGHEST: the TPU default would round fractional weights to bfloat16 in the matmul.
    confusion = jnp.einsum(
        "bi,bj->ij", true_onehot, pred_onehot, precision=jax.lax.Precision.HIGHEST
    )

    label_log_prob = jnp.take_along_axis(
        log_probs, jnp.clip(safe_labels, 0, num_classes - 1)[:, None], axis=-1
    )[:, 0]
    loss_sum = jnp.sum(jnp.where(valid, -label_log_prob * w, 0.0))

    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    correct = (predictions == labels).astype(jnp.float32)
    bins = jnp.clip(jnp.floor(confidence * num_bins).astype(jnp.int32), 0, num_bins - 1)
    bin_onehot = jax.nn.one_hot(bins, num_bins, dtype=jnp.float32) * w[:, None]

    return {
        "confusion": confusion,
        "loss_sum": loss_sum,
        "weight_sum": jnp.sum(w),
        "bin_count": jnp.sum(bin_onehot, axis=0),
        "bin_confidence_sum": jnp.sum(bin_onehot * confidence[:, None], axis=0),
        "bin_correct_sum": jnp.sum(bin_onehot * correct[:, None], axis=0),
    }


def add_counts(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Sum two count dicts (jax or numpy); counts are additive by construction."""
    return jax.tree.map(operator.add, dict(a), dict(b))


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den == 0 (scikit-learn's zero_division=0)."""
    num = np.asarray(num, np.float64)
    den = np.asarray(den, np.float64)
    out = np.zeros(np.broadcast(num, den).shape, np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def compute_metrics(counts: Mapping[str, Any], label_names: Sequence[str]) -> dict[str, Any]:
    """Turn accumulated counts into the `eval_results.json` dict (plain Python, JSON-ready).

    Classes that never occur still count in the macro averages with recall 0 and support 0, and
    classes never predicted have precision 0, exactly like scikit-learn with `labels=range(C)`
    and `zero_division=0`. An empty evaluation gives zeros rather than NaN (not valid JSON).
    """
    c = {k: np.asarray(jax.device_get(counts[k]), np.float64) for k in COUNT_KEYS}
    confusion = c["confusion"]
    num_classes = confusion.shape[0]
    names = [str(n) for n in label_names]
    if confusion.shape != (num_classes, num_classes):
        raise ValueError(f"confusion must be square, got shape {confusion.shape}")
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} label names for {num_classes} classes: {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"label names must be unique: {names}")
    total = float(c["weight_sum"])
    if not np.isclose(confusion.sum(), total, rtol=1e-6, atol=1e-3):
        raise ValueError(
            f"confusion matrix holds {confusion.sum():g} of {total:g} examples: "
            f"some labels lie outside [0, {num_classes})"
        )

    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    precision = _divide(tp, predicted)
    recall = _divide(tp, support)
    f1 = _divide(2.0 * tp, support + predicted)

    def weighted(x: np.ndarray) -> float:
        return float(_divide(np.sum(x * support), np.sum(support)))

    def per_class(x: np.ndarray) -> dict[str, float]:
        return {name: float(v) for name, v in zip(names, x, strict=True)}

    gaps = np.abs(c["bin_correct_sum"] - c["bin_confidence_sum"])
    return {
        "accuracy": float(_divide(tp.sum(), total)),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "precision_weighted": weighted(precision),
        "recall_weighted": weighted(recall),
        "f1_weighted": weighted(f1),
        "precision": per_class(precision),
        "recall": per_class(recall),
        "f1": per_class(f1),
        "support": {name: int(round(v)) for name, v in zip(names, support, strict=True)},
        "confusion_matrix": [[int(round(v)) for v in row] for row in confusion],
        "loss": float(_divide(c["loss_sum"], total)),
        # ECE = sum_b (n_b / N) |acc_b - conf_b| = sum_b |correct_b - confidence_b| / N.
        "ece": float(_divide(gaps.sum(), total)),
        "num_examples": int(round(total)),
    }


def format_report(metrics: Mapping[str, Any], digits: int = 4) -> str:
    """A plain-text report in the layout of sklearn's classification_report, for logs/CLI."""
    names = list(metrics["support"])
    width = max([len(n) for n in names] + [len("weighted avg")])
    head = f"{'':>{width}} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>10}"
    lines = [head, ""]

    def row(name: str, p: float, r: float, f: float, s: int) -> str:
        return f"{name:>{width}} {p:>10.{digits}f} {r:>10.{digits}f} {f:>10.{digits}f} {s:>10}"

    for n in names:
        lines.append(
            row(
                n,
                metrics["precision"][n],
                metrics["recall"][n],
                metrics["f1"][n],
                metrics["support"][n],
            )
        )
    total = metrics["num_examples"]
    lines += [
        "",
        f"{'accuracy':>{width}} {'':>10} {'':>10} {metrics['accuracy']:>10.{digits}f} {total:>10}",
        row(
            "macro avg",
            metrics["precision_macro"],
            metrics["recall_macro"],
            metrics["f1_macro"],
            total,
        ),
        row(
            "weighted avg",
            metrics["precision_weighted"],
            metrics["recall_weighted"],
            metrics["f1_weighted"],
            total,
        ),
        "",
        f"{'loss':>{width}} {metrics['loss']:>10.{digits}f}",
        f"{'ECE':>{width}} {metrics['ece']:>10.{digits}f}",
    ]

    matrix = metrics["confusion_matrix"]
    cell = max([len(n) for n in names] + [len(str(v)) for r in matrix for v in r])
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(f"{'':>{width}} " + " ".join(f"{n:>{cell}}" for n in names))
    for n, r in zip(names, matrix, strict=True):
        lines.append(f"{n:>{width}} " + " ".join(f"{v:>{cell}}" for v in r))
    return "\n".join(lines) + "\n"
