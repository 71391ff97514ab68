"""metrics.py against scikit-learn and an independent numpy ECE, with padded uneven batches."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from flax_sentiment.evaluation.metrics import (
    add_counts,
    batch_counts,
    compute_metrics,
    format_report,
    init_counts,
)

NUM_BINS = 15
# Two padded shapes, so each num_classes compiles at most twice across all seeds.
BATCH_SHAPES = (16, 32)


@partial(jax.jit, static_argnames=("num_classes", "num_bins"))
def _counts(logits, labels, weights, num_classes, num_bins=NUM_BINS):
    return batch_counts(logits, labels, weights, num_classes, num_bins)


def _garbage(rng: np.random.Generator, n: int, num_classes: int):
    """Padding rows: NaN/inf/huge logits and out-of-range labels."""
    logits = rng.normal(size=(n, num_classes)).astype(np.float32) * 1e4
    if n:
        logits[0, 0] = np.nan
        logits[-1, -1] = np.inf
        logits[n // 2, :] = -np.inf
    labels = rng.integers(-3, num_classes + 3, size=n)
    return logits, labels


def _accumulate(logits, labels, num_classes, rng, num_bins=NUM_BINS):
    """Split into uneven batches (sizes cycle over BATCH_SHAPES); pad the last with garbage."""
    counts = init_counts(num_classes, num_bins)
    start, i = 0, 0
    while start < len(labels):
        size = BATCH_SHAPES[i % len(BATCH_SHAPES)]
        x, y = logits[start : start + size], labels[start : start + size]
        pad = size - len(y)
        gx, gy = _garbage(rng, pad, num_classes)
        weights = np.concatenate([np.ones(len(y)), np.zeros(pad)]).astype(np.float32)
        batch = _counts(
            np.concatenate([x, gx]),
            np.concatenate([y, gy]).astype(np.int32),
            weights,
            num_classes=num_classes,
            num_bins=num_bins,
        )
        counts = add_counts(counts, batch)
        start, i = start + size, i + 1
    return jax.device_get(counts)


def _softmax64(logits):
    z = logits.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def _ece_numpy(probs, labels, num_bins):
    """Textbook ECE: loop over bins [lo, hi), the last one closed."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    ece = 0.0
    for b in range(num_bins):
        lo, hi = edges[b], edges[b + 1]
        in_bin = (conf >= lo) & ((conf < hi) if b < num_bins - 1 else (conf <= hi))
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return ece


def _check_against_sklearn(logits, labels, num_classes, rng):
    names = [f"class_{k}" for k in range(num_classes)]
    m = compute_metrics(_accumulate(logits, labels, num_classes, rng), names)
    json.dumps(m, allow_nan=False)  # plain Python, strict JSON

    preds = logits.argmax(axis=1)
    cls = list(range(num_classes))
    close = partial(pytest.approx, abs=1e-6)
    close_f32 = partial(pytest.approx, rel=1e-6, abs=1e-6)  # loss is summed in float32
    assert m["num_examples"] == len(labels)
    assert m["accuracy"] == close(skm.accuracy_score(labels, preds))
    p, r, f, s = skm.precision_recall_fscore_support(
        labels, preds, labels=cls, average=None, zero_division=0
    )
    for k, name in enumerate(names):
        assert m["precision"][name] == close(p[k])
        assert m["recall"][name] == close(r[k])
        assert m["f1"][name] == close(f[k])
        assert m["support"][name] == int(s[k])
    for avg in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(
            labels, preds, labels=cls, average=avg, zero_division=0
        )
        assert m[f"precision_{avg}"] == close(p)
        assert m[f"recall_{avg}"] == close(r)
        assert m[f"f1_{avg}"] == close(f)
    expected_cm = skm.confusion_matrix(labels, preds, labels=cls).tolist()
    assert m["confusion_matrix"] == expected_cm
    probs = _softmax64(logits)
    z = logits.astype(np.float64)
    log_probs = z - z.max(axis=1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
    assert m["loss"] == close_f32(-log_probs[np.arange(len(labels)), labels].mean())
    if probs[np.arange(len(labels)), labels].min() > 1e-12:  # log_loss clips tiny probs
        assert m["loss"] == close_f32(skm.log_loss(labels, probs, labels=cls))
    assert m["ece"] == close(_ece_numpy(probs, labels, NUM_BINS))
    return m, preds


@pytest.mark.parametrize("num_classes", [2, 3, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn(num_classes, seed):
    rng = np.random.default_rng(seed * 10 + num_classes)
    n = int(rng.integers(50, 140))
    labels = rng.integers(0, num_classes, size=n)
    # Logits correlated with the labels so the metrics are not all near chance.
    logits = rng.normal(size=(n, num_classes)).astype(np.float32) * 2
    logits[np.arange(n), labels] += rng.uniform(0, 3, size=n).astype(np.float32)
    _check_against_sklearn(logits, labels, num_classes, rng)


def test_class_never_occurs():
    rng = np.random.default_rng(7)
    n, num_classes = 90, 5
    labels = rng.choice([0, 1, 2, 4], size=n)  # class 3 is never a true label
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    logits[:5, 3] = 10.0  # ... but is predicted a few times
    m, preds = _check_against_sklearn(logits, labels, num_classes, rng)
    assert m["support"]["class_3"] == 0
    assert m["recall"]["class_3"] == 0.0
    assert m["precision"]["class_3"] == 0.0
    assert (preds == 3).any()


def test_class_never_predicted():
    rng = np.random.default_rng(8)
    n, num_classes = 77, 3
    labels = rng.integers(0, num_classes, size=n)
    logits = rng.normal(size=(n, num_classes)).astype(np.float32)
    logits[:, 2] = -100.0  # class 2 occurs but is never predicted
    m, preds = _check_against_sklearn(logits, labels, num_classes, rng)
    assert not (preds == 2).any()
    assert m["support"]["class_2"] > 0
    assert m["precision"]["class_2"] == 0.0
    assert m["recall"]["class_2"] == 0.0
    assert m["f1"]["class_2"] == 0.0


def test_padding_changes_nothing():
    rng = np.random.default_rng(3)
    num_classes, real, size = 3, 11, 16
    logits = np.zeros((size, num_classes), np.float32)
    labels = np.zeros(size, np.int32)
    logits[:real] = rng.normal(size=(real, num_classes))
    labels[:real] = rng.integers(0, num_classes, size=real)
    weights = (np.arange(size) < real).astype(np.float32)

    results = []
    for fill in range(3):
        x, y = logits.copy(), labels.copy()
        gx, gy = _garbage(np.random.default_rng(100 + fill), size - real, num_classes)
        x[real:], y[real:] = gx, gy
        results.append(jax.device_get(_counts(x, y, weights, num_classes=num_classes)))
    unpadded = jax.device_get(
        _counts(logits[:real], labels[:real], weights[:real], num_classes=num_classes)
    )
    for key, value in results[0].items():
        assert np.all(np.isfinite(value)), key
        for other in results[1:]:
            np.testing.assert_array_equal(value, other[key], err_msg=key)
        np.testing.assert_allclose(value, unpadded[key], rtol=1e-6, atol=1e-6, err_msg=key)
    assert float(results[0]["weight_sum"]) == real


def test_ece_all_correct_and_certain_is_zero():
    logits = jnp.array([[100.0, 0.0], [0.0, 100.0], [100.0, 0.0]])
    labels = jnp.array([0, 1, 0])
    counts = _counts(logits, labels, jnp.ones(3), num_classes=2)
    assert float(counts["bin_count"][-1]) == 3  # confidence exactly 1.0 -> last bin
    m = compute_metrics(counts, ["neg", "pos"])
    assert m["ece"] == 0.0
    assert m["accuracy"] == 1.0


def test_ece_two_bin_example():
    # Bin [0, 0.5): confidences 0.4, 0.4, one correct -> |0.5 - 0.4| = 0.1, weight 1/2.
    # Bin [0.5, 1]: confidences 0.9, 0.7, one correct -> |0.5 - 0.8| = 0.3, weight 1/2.
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # label 0: correct
            [0.7, 0.2, 0.1],  # label 1: wrong
            [0.4, 0.35, 0.25],  # label 0: correct
            [0.3, 0.3, 0.4],  # label 0: wrong
        ],
        np.float32,
    )
    labels = np.array([0, 1, 0, 0])
    counts = _counts(np.log(probs), labels, np.ones(4, np.float32), num_classes=3, num_bins=2)
    np.testing.assert_array_equal(counts["bin_count"], [2, 2])
    m = compute_metrics(counts, ["a", "b", "c"])
    assert m["ece"] == pytest.approx(0.2, abs=1e-6)


def test_confidence_on_bin_edge_goes_up():
    counts = _counts(jnp.zeros((1, 2)), jnp.array([0]), jnp.ones(1), num_classes=2, num_bins=2)
    np.testing.assert_array_equal(counts["bin_count"], [0, 1])  # 0.5 is in [0.5, 1]


def test_format_report():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, size=40)
    logits = rng.normal(size=(40, 3)).astype(np.float32)
    names = ["negative", "neutral", "positive"]
    m = compute_metrics(_accumulate(logits, labels, 3, rng), names)
    report = format_report(m)
    for name in names:
        assert name in report
    assert f"{m['accuracy']:.4f}" in report
    assert f"{m['ece']:.4f}" in report
    assert "macro avg" in report and "weighted avg" in report


def test_rejects_bad_inputs():
    counts = _counts(jnp.zeros((2, 2)), jnp.array([0, 5]), jnp.ones(2), num_classes=2)
    with pytest.raises(ValueError, match="outside"):
        compute_metrics(counts, ["a", "b"])
    good = _counts(jnp.zeros((2, 2)), jnp.array([0, 1]), jnp.ones(2), num_classes=2)
    with pytest.raises(ValueError, match="label names"):
        compute_metrics(good, ["a", "b", "c"])
    with pytest.raises(ValueError, match="unique"):
        compute_metrics(good, ["a", "a"])


def test_empty_evaluation_is_json_safe():
    m = compute_metrics(init_counts(2), ["a", "b"])
    json.dumps(m, allow_nan=False)
    assert m["num_examples"] == 0 and m["accuracy"] == 0.0 and m["loss"] == 0.0
