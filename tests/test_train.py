"""The train step, the optimizer, and full runs of train_and_evaluate on real SST-2 rows."""

import json

import jax
import numpy as np
import pytest

from flax_sentiment import parallel
from flax_sentiment.config import base_config
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.pretrained import load_pretrained_bundle
from flax_sentiment.train import (
    Trainer,
    decay_mask,
    make_schedule,
    train_and_evaluate,
)
from tests.helpers import sst2_subset, tiny_bert, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"model": tiny_bert(root / "model"), "model_nodrop": tiny_bert(root / "nodrop",
                                                                          dropout=0.0),
            "data": sst2_subset(root / "sst2")}


def _batch(rng, batch=16, length=16, vocab=30522):
    ids = rng.randint(1000, vocab, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, length // 2:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
            "labels": rng.randint(0, 2, batch).astype(np.int32),
            "weights": np.r_[np.ones(batch - 3), np.zeros(3)].astype(np.float32),
            "index": np.arange(batch, dtype=np.int32)}


def _trainer(model_dir, **train):
    config = base_config()
    for k, v in train.items():
        config.train[k] = v
    bundle = load_pretrained_bundle(model_dir, num_labels=2)
    return Trainer(config, bundle.model, 2, 100, parallel.make_mesh()), bundle


def _put(trainer, batch):
    return {k: jax.device_put(v, trainer.data_sharding) for k, v in batch.items()}


def test_train_step_moves_every_parameter(tiny):
    trainer, _ = _trainer(tiny["model"], warmup_ratio=0.0)
    state = trainer.initial_state()
    before = jax.device_get(state.params)
    state, metrics = trainer.train_step(state, _put(trainer, _batch(np.random.RandomState(0))))
    after = jax.device_get(state.params)
    unchanged = [k for k in before if np.array_equal(before[k], after[k])]
    assert not unchanged
    assert int(state.step) == 1
    assert metrics["examples"] == 13 and np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


def test_gradient_accumulation_matches_one_large_batch(tiny):
    batch = _batch(np.random.RandomState(1), batch=16)
    params = {}
    for k in (1, 4):
        trainer, _ = _trainer(tiny["model_nodrop"], grad_accum_steps=k, warmup_ratio=0.0)
        state = trainer.initial_state()
        for _ in range(2):
            state, metrics = trainer.train_step(state, _put(trainer, batch))
        params[k] = (jax.device_get(state.params), float(metrics["loss"]))
    for name in params[1][0]:
        np.testing.assert_allclose(params[4][0][name], params[1][0][name], atol=1e-6,
                                   err_msg=name)
    assert params[4][1] == pytest.approx(params[1][1], rel=1e-5)


def test_loss_applies_class_weights_and_label_smoothing(tiny):
    batch = _batch(np.random.RandomState(2))
    cw, ls = (0.25, 2.0), 0.1
    trainer, bundle = _trainer(tiny["model_nodrop"], class_weights=cw, label_smoothing=ls)
    state = trainer.initial_state()
    logits = np.asarray(bundle.model(batch["input_ids"], batch["attention_mask"]))
    _, metrics = trainer.train_step(state, _put(trainer, batch))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.eye(2)[batch["labels"]] * (1 - ls) + ls / 2
    ce = -(target * logp).sum(-1)
    w = batch["weights"] * np.asarray(cw)[batch["labels"]]
    assert float(metrics["loss"]) == pytest.approx((w * ce).sum() / w.sum(), rel=1e-5)


def test_optimizer_mask_and_schedule(tiny):
    bundle = load_pretrained_bundle(tiny["model"], num_labels=2)
    mask = decay_mask(ModelDef.params_of(bundle.model))
    assert mask["encoder.embeddings.word.embedding"] and mask["head.out.kernel"]
    assert not mask["head.out.bias"] and not mask["encoder.embeddings.norm.scale"]
    assert not mask["encoder.layers.1.ffn.norm.bias"]
    t = base_config().train
    t.learning_rate, t.warmup_ratio = 1e-3, 0.1
    s = make_schedule(t, 100)
    assert float(s(0)) == 0 and float(s(10)) == pytest.approx(1e-3)
    assert float(s(55)) == pytest.approx(0.5e-3) and float(s(100)) == pytest.approx(0, abs=1e-9)
    t.schedule = "cosine"
    assert float(make_schedule(t, 100)(55)) == pytest.approx(0.5e-3, rel=1e-3)


def test_train_and_evaluate_writes_the_workdir_contract(tiny, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(tiny["model"], tiny["data"])
    results = train_and_evaluate(config, workdir)
    saved = json.loads((workdir / "eval_results.json").read_text())
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted",
                "precision", "recall", "f1", "support", "confusion_matrix", "loss",
                "num_examples", "ece"):
        assert key in saved, key
    assert saved["num_examples"] == 96 and sum(saved["support"].values()) == 96
    assert set(saved["precision"]) == {"negative", "positive"}
    assert saved["accuracy"] == results["accuracy"] and saved["step"] == 12
    assert json.loads((workdir / "config.json").read_text())["train"]["max_steps"] == 12
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r for r in rows)
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8, 10, 12]
    assert all(np.isfinite(r["train/loss"]) and r["train/grad_norm"] > 0 for r in train_rows)
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [6, 12]
    assert list(workdir.glob("events.out.tfevents.*"))
    assert (workdir / "tokenizer" / "tokenizer.json").exists()
    steps = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert 12 in steps and len(steps) <= 3  # keep=2 latest plus the best


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny, tmp_path):
    workdir = tmp_path / "run"
    config = tiny_config(tiny["model"], tiny["data"], **{"train.max_steps": 12,
                                                         "train.warmup_steps": 5,
                                                         "train.max_grad_norm": 0.0,
                                                         "train.learning_rate": 1e30,
                                                         "eval.every_steps": 0,
                                                         "checkpoint.every_steps": 1})
    with pytest.raises(UserError, match=r"loss became nan at step \d+.*last good checkpoint"):
        train_and_evaluate(config, workdir)
    assert not (workdir / "eval_results.json").exists()


@pytest.mark.parametrize("key,value,message", [
    ("train.learning_rate", 0.0, "train.learning_rate=0.0: must be > 0"),
    ("train.grad_accum_steps", 5, "must be >= 1 and divide train.batch_size=16"),
    ("model.dtype", "float64", "model.dtype='float64'"),
])
def test_bad_config_values(tiny, tmp_path, key, value, message):
    config = tiny_config(tiny["model"], tiny["data"], **{key: value})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_and_evaluate(config, tmp_path / "run")


def test_missing_workdir_parent(tiny, tmp_path):
    with pytest.raises(UserError, match="parent folder .* does not exist"):
        train_and_evaluate(tiny_config(tiny["model"], tiny["data"]), tmp_path / "no" / "run")


def test_early_stopping_ends_the_run_and_reports_the_best_step(tiny, tmp_path, caplog):
    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.max_steps": 40, "train.learning_rate": 1e-9, "eval.every_steps": 2,
        "eval.early_stopping_patience": 2, "eval.metric": "accuracy",
        "checkpoint.every_steps": 0})
    with caplog.at_level("INFO"):
        results = train_and_evaluate(config, tmp_path / "run")
    assert "early stopping: no accuracy improvement in 2 evaluations" in caplog.text
    assert results["step"] < 40 and results["best_step"] < results["step"]
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["best_step"] == results["best_step"]


def test_best_checkpoint_is_kept_and_loadable(tiny, tmp_path):
    from flax_sentiment.workdir import load_run

    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.max_steps": 12, "eval.every_steps": 2, "checkpoint.every_steps": 0,
        "checkpoint.keep": 1, "eval.metric": "loss",
        # "best" = highest loss: an early step, so the best is not also the latest.
        "eval.metric_mode": "max"})
    results = train_and_evaluate(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    best = max(losses, key=losses.get)
    assert results["best_step"] == best < 12
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == sorted({best, 12})  # the latest plus the best, nothing else
    assert load_run(tmp_path / "run", "best").step == best


def test_bucket_padding_changes_nothing_but_cost(tiny):
    """The same examples padded to 16 or to 128 tokens give the same loss and gradients: the
    bucketed pipeline trains the model fixed-length padding trains, with less work."""
    trainer, _ = _trainer(tiny["model_nodrop"], warmup_ratio=0.0)
    state = trainer.initial_state()
    short = _batch(np.random.RandomState(3), length=16)
    long = {k: v for k, v in short.items()}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        long[key] = np.pad(short[key], ((0, 0), (0, 112)))
    eval_counts = [jax.device_get(trainer.eval_step(state.params, _put(trainer, b)))
                   for b in (short, long)]
    np.testing.assert_array_equal(eval_counts[0]["confusion"], eval_counts[1]["confusion"])
    assert float(eval_counts[0]["loss_sum"]) == pytest.approx(float(eval_counts[1]["loss_sum"]),
                                                              rel=1e-6)
    params = []
    for b in (short, long):
        trainer_b, _ = _trainer(tiny["model_nodrop"], warmup_ratio=0.0)
        s, metrics = trainer_b.train_step(trainer_b.initial_state(), _put(trainer_b, b))
        params.append((jax.device_get(s.params), float(metrics["loss"])))
    assert params[0][1] == pytest.approx(params[1][1], rel=1e-6)
    for name in params[0][0]:
        np.testing.assert_allclose(params[1][0][name], params[0][0][name], atol=1e-6,
                                   err_msg=name)
