"""The train step, the optimizer, and full runs of train_and_evaluate on real SST-2 rows."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from flax_sentiment import parallel
from flax_sentiment.config import base_config
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.pretrained import load_pretrained_bundle
from flax_sentiment.training.loop import train_and_evaluate
from flax_sentiment.training.steps import (
    Steps,
    clip_by_global_norm,
    decay_mask,
    loss_sum,
    make_schedule,
)
from tests.helpers import run_script, sst2_subset, tiny_bert, tiny_config


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


def _trainer(model_dir, num_labels=2, dtype="float32", mesh=None, **train):
    config = base_config()
    for k, v in train.items():
        config.train[k] = v
    bundle = load_pretrained_bundle(model_dir, num_labels=num_labels, dtype=dtype)
    steps = Steps(ModelDef(bundle.model), num_labels, mesh or parallel.make_mesh(),
                  train=config.train, total_steps=100)
    steps.params0 = ModelDef.params_of(bundle.model)  # the weights a fresh state starts from
    return steps, bundle


def _put(trainer, batch):
    return {k: jax.device_put(v, trainer.data_sharding) for k, v in batch.items()}


def test_train_step_moves_every_parameter(tiny):
    # No weight decay: decay alone would move every matrix, gradient or not.
    trainer, _ = _trainer(tiny["model"], warmup_ratio=0.0, weight_decay=0.0)
    state = trainer.init_state(trainer.params0)
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
        state = trainer.init_state(trainer.params0)
        for _ in range(2):
            state, metrics = trainer.train_step(state, _put(trainer, batch))
        params[k] = (jax.device_get(state.params), float(metrics["loss"]))
    for name in params[1][0]:
        np.testing.assert_allclose(params[4][0][name], params[1][0][name], atol=1e-6,
                                   err_msg=name)
    assert params[4][1] == pytest.approx(params[1][1], rel=1e-5)


ACCUM_TRAIN = {"warmup_ratio": 0.0}
# Runs in a fresh process with 8 virtual CPU devices (XLA_FLAGS must be set before JAX starts).
ACCUMULATE_ON_EIGHT = """
import sys

import jax
import numpy as np

from tests.test_train import ACCUM_TRAIN, _batch, _put, _trainer

assert jax.device_count() == 8, jax.devices()
model, out = sys.argv[1:]
batch, result = _batch(np.random.RandomState(1), batch=32), {}
for k in (1, 4):
    trainer, _ = _trainer(model, grad_accum_steps=k, **ACCUM_TRAIN)
    assert len(trainer.data_sharding.device_set) == 8
    state = trainer.init_state(trainer.params0)
    for _ in range(2):
        state, metrics = trainer.train_step(state, _put(trainer, batch))
    result.update({f"{k}/{n}": v for n, v in jax.device_get(state.params).items()})
    result[f"{k}/loss"] = np.asarray(metrics["loss"])
np.savez(out, **result)
"""


def test_gradient_accumulation_on_eight_devices(tiny, tmp_path):
    """4 micro-batches of 8 rows, each split over 8 devices (1 row per device), step like one
    batch of 32 on the same 8 devices, and like that batch on one device."""
    out = tmp_path / "eight.npz"
    result = run_script(["-c", ACCUMULATE_ON_EIGHT, str(tiny["model_nodrop"]), str(out)],
                        devices=8)
    assert result.returncode == 0, result.stderr[-3000:]
    eight = np.load(out)
    one_device = Mesh(np.asarray(jax.devices()[:1]), (parallel.DATA_AXIS,))
    trainer, _ = _trainer(tiny["model_nodrop"], mesh=one_device, **ACCUM_TRAIN)
    state, batch = trainer.init_state(trainer.params0), _batch(np.random.RandomState(1), batch=32)
    for _ in range(2):
        state, metrics = trainer.train_step(state, _put(trainer, batch))
    single = jax.device_get(state.params)
    for name in single:
        np.testing.assert_allclose(eight[f"4/{name}"], eight[f"1/{name}"], atol=1e-6, rtol=0,
                                   err_msg=name)
        np.testing.assert_allclose(eight[f"1/{name}"], single[name], atol=1e-6, rtol=0,
                                   err_msg=name)
    assert float(eight["4/loss"]) == pytest.approx(float(eight["1/loss"]), rel=1e-5)
    assert float(eight["1/loss"]) == pytest.approx(float(metrics["loss"]), rel=1e-5)


def test_loss_is_torch_cross_entropy_with_class_weights_and_label_smoothing(tiny):
    """The train step's loss is torch.nn.CrossEntropyLoss(weight=cw, label_smoothing=ls) of the
    real (weight 1) rows, computed by torch itself."""
    import torch

    rng = np.random.RandomState(2)
    batch = _batch(rng)
    batch["labels"] = np.array([0, 1, 2, 2, 2, 1, 2, 2, 0, 2, 2, 1, 2, 0, 1, 0], np.int32)
    # Three classes, uneven weights and labels: a formula that weights the whole smoothed row
    # by w[y] (what this step computed before) is off by 0.6% here, 600x the tolerance.
    cw, ls = (0.25, 2.0, 1.0), 0.2
    trainer, bundle = _trainer(tiny["model_nodrop"], num_labels=3, class_weights=cw,
                               label_smoothing=ls)
    logits = np.asarray(bundle.model(batch["input_ids"], batch["attention_mask"],
                                     batch["token_type_ids"]), np.float64)
    _, metrics = trainer.train_step(trainer.init_state(trainer.params0), _put(trainer, batch))
    valid = batch["weights"] > 0
    expected = torch.nn.functional.cross_entropy(
        torch.tensor(logits[valid]), torch.tensor(batch["labels"][valid], dtype=torch.long),
        weight=torch.tensor(cw, dtype=torch.float64), label_smoothing=ls).item()
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)

    # The test can tell the two definitions apart: the old one misses by far more than 1e-5.
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.eye(3)[batch["labels"]] * (1 - ls) + ls / 3
    w = batch["weights"] * np.asarray(cw)[batch["labels"]]
    old = (w * -(target * logp).sum(-1)).sum() / w.sum()
    assert abs(old - expected) > 100 * 1e-5 * expected, (old, expected)


def _global_rel(a, b):
    """|a - b| / |b| over all parameters together."""
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in b) /
                         sum(np.sum(b[k] ** 2) for k in b)))


def test_bfloat16_trains_like_float32(tiny):
    """model.dtype="bfloat16" (bf16 compute, f32 parameters and Adam) keeps losses and gradients
    finite, fully padded rows included, and follows the float32 run within bf16 rounding."""
    batch = _batch(np.random.RandomState(4))
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        batch[key][-3:] = 0  # the 3 weight-0 rows are dummies: not one token attended

    def run(trainer, batch, steps=3):
        state = trainer.init_state(trainer.params0)
        before, losses = jax.device_get(state.params), []
        for _ in range(steps):
            state, metrics = trainer.train_step(state, _put(trainer, batch))
            losses.append(float(metrics["loss"]))
            assert np.isfinite(losses[-1]) and np.isfinite(float(metrics["grad_norm"]))
        after = jax.device_get(state.params)
        assert all(np.isfinite(v).all() for v in after.values())
        return np.array(losses), {k: after[k] - before[k] for k in before}

    trainers = {dtype: _trainer(tiny["model_nodrop"], dtype=dtype, warmup_ratio=0.0,
                                learning_rate=1e-3)[0] for dtype in ("float32", "bfloat16")}
    (loss32, delta32), (loss16, delta16) = (run(trainers[d], batch) for d in trainers)
    # bfloat16 keeps 8 significant bits: each rounding is off by up to u = 2^-8 (0.4%). The loss
    # is computed in float32 from bf16 logits: a relative loss error of u is generous (measured
    # 3e-6; this check is for gross errors). Parameter deltas are the sharp check: Adam divides
    # each gradient by its own RMS, so elements whose gradient is within bf16 noise of zero get
    # updates of random sign; that, more than the ~1% gradient error, sets the difference.
    # Measured 0.026 of |delta| over all parameters; bound 16u = 0.0625. A bf16 run with a 10%
    # higher learning rate is off by 0.097, a float32 run on another batch by 1.7.
    u = 2.0 ** -8
    np.testing.assert_allclose(loss16, loss32, rtol=u)
    assert 1e-3 < _global_rel(delta16, delta32) < 16 * u  # > 1e-3: bf16 really was used
    # The bound sees a wrong run: float32 itself on another batch falls far outside it.
    other = _batch(np.random.RandomState(5))
    assert _global_rel(run(trainers["float32"], other)[1], delta32) > 16 * u


@pytest.mark.parametrize("max_norm", [0.5, 1e3])  # clipped, and left alone
def test_clip_by_global_norm_matches_torch(max_norm):
    import torch

    rng = np.random.default_rng(0)
    grads = {"a": rng.standard_normal((7, 5)).astype(np.float32),
             "b": rng.standard_normal(11).astype(np.float32) * 3}
    ours, _ = jax.jit(clip_by_global_norm(max_norm).update)(grads, None)
    tensors = [torch.nn.Parameter(torch.zeros(g.shape)) for g in grads.values()]
    for t, g in zip(tensors, grads.values(), strict=True):
        t.grad = torch.from_numpy(g.copy())
    torch.nn.utils.clip_grad_norm_(tensors, max_norm)  # factor max_norm / (norm + 1e-6), <= 1
    for t, name in zip(tensors, grads, strict=True):
        np.testing.assert_allclose(ours[name], t.grad.numpy(), rtol=2e-6, atol=0)
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads.values()))
    assert (norm > max_norm) == (max_norm == 0.5)  # the two cases really are both sides


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
    from flax_sentiment.bench.trainer import tensorboard_scalars

    board = tensorboard_scalars(workdir)  # the same scalars as TensorBoard events
    assert sorted(board["train/loss"]) == [2, 4, 6, 8, 10, 12]
    np.testing.assert_allclose([board["train/loss"][r["step"]][1] for r in train_rows],
                               [r["train/loss"] for r in train_rows], rtol=1e-6)
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
    with pytest.raises(UserError, match=r"diverged at step \d+: .*last good checkpoint"):
        train_and_evaluate(config, workdir)
    assert not (workdir / "eval_results.json").exists()


@pytest.mark.parametrize("key,value,message", [
    ("train.learning_rate", 0.0, "train.learning_rate=0.0: must be > 0"),
    ("train.grad_accum_steps", 5, "must be >= 1 and divide train.batch_size=16"),
    ("model.dtype", "float64", "model.dtype='float64'"),
    ("data.pack_row_multiple", 0, "data.pack_row_multiple=0: must be an integer >= 1"),
    ("data.pack_sampling", "sorted", "data.pack_sampling='sorted': must be one of"),
    ("model.pooling", "max", "model.pooling='max': must be auto (the checkpoint's own), cls"),
])
def test_bad_config_values(tiny, tmp_path, key, value, message):
    config = tiny_config(tiny["model"], tiny["data"], **{key: value})
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_and_evaluate(config, tmp_path / "run")


def test_a_changed_pack_sampling_refuses_to_resume():
    """The stratified steps are another data order: a checkpoint made before the key existed
    (uniform draws) resumes under uniform, and is refused under stratified, by name."""
    from flax_sentiment.training.loop import check_resumable

    config = base_config()
    config.data.pack_length = 66
    config.data.pack_sampling = "uniform"  # the default before stratified draws
    saved = json.loads(config.to_json())
    del saved["data"]["pack_sampling"]  # a checkpoint that predates the key
    check_resumable(saved, config)
    config.data.pack_sampling = "stratified"
    with pytest.raises(UserError, match="cannot resume: config data.pack_sampling is "
                                        "'stratified' but the checkpoint was trained with "
                                        "'uniform'"):
        check_resumable(saved, config)


def test_resume_compares_the_resolved_pack_length_and_ignores_sampling_when_padded():
    """data.pack_length=-1 (rows of max_length) resumes a run saved with the same rows as a
    number; a padded run (pack_length 0) resumes whatever the packing keys say, and a changed
    row length is still refused."""
    from flax_sentiment.training.loop import check_resumable

    config = base_config()
    config.data.max_length = 66
    saved = json.loads(config.to_json())
    saved["data"]["pack_length"] = 66
    check_resumable(saved, config)
    config.data.max_length = 64
    with pytest.raises(UserError, match="data.max_length"):
        check_resumable(saved, config)
    config.data.pack_length, config.data.max_length = 0, 66
    padded = json.loads(config.to_json())
    padded["data"]["pack_sampling"], padded["data"]["pack_row_multiple"] = "uniform", 3
    check_resumable(padded, config)
    config.data.pack_length = -1
    with pytest.raises(UserError, match="data.pack_length is 66 but the checkpoint was "
                                        "trained with 0"):
        check_resumable(padded, config)


@pytest.mark.parametrize("key,value", [
    ("data.seed", 1), ("data.truncation", "head_tail"), ("data.head_tokens", 32),
    ("data.train_split", "validation"), ("data.text_pair_column", "premise"),
    ("data.eval_split", "test"), ("data.validation_size", 0.1), ("eval.weights", "ema")])
def test_data_that_changes_the_examples_or_tokens_refuses_to_resume(key, value):
    """Each of these changes which examples are trained or evaluated on, their tokens, or the
    weights the best value was measured on; a checkpoint from before a key existed counts as
    its default."""
    from flax_sentiment.training.loop import check_resumable

    config = base_config()
    config.train.ema_decay = 0.99  # eval.weights: 'auto' resolves to 'ema', the same
    saved = json.loads(config.to_json())
    check_resumable(saved, config)
    section, name = key.split(".")
    del saved[section][name]  # a checkpoint that predates the key
    check_resumable(saved, config)
    if key == "eval.weights":
        config.eval.weights, value = "raw", "raw"
    else:
        config[section][name] = value
    with pytest.raises(UserError, match=f"cannot resume: config {key} is {value!r} but"):
        check_resumable(saved, config)


def test_a_new_data_seed_is_refused_on_a_carved_validation_split(tiny, tmp_path):
    """The quickstart's case: the evaluation split is carved from train with data.seed, so a
    resumed run under another seed would evaluate on examples it trained on."""
    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.max_steps": 2, "eval.every_steps": 0, "checkpoint.every_steps": 0})
    config.data.eval_split, config.data.validation_size = "heldout", 32
    train_and_evaluate(config, tmp_path / "run")
    config.train.max_steps, config.data.seed = 4, 1
    with pytest.raises(UserError, match="cannot resume: config data.seed is 1 but the "
                                        "checkpoint was trained with 0"):
        train_and_evaluate(config, tmp_path / "run")
    config.data.seed = 0
    assert train_and_evaluate(config, tmp_path / "run")["step"] == 4


def test_pack_row_multiple_rounds_every_packed_step_up(tiny, tmp_path, monkeypatch):
    """data.pack_row_multiple: every packed step's row count is a multiple of it and of the
    grad_accum_steps multiple (their lcm), so fewer shapes compile; steps still hold
    train.batch_size examples each."""
    from flax_sentiment.data import packing

    made = []

    class Recorded(packing.PackedTrainIterator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(packing, "PackedTrainIterator", Recorded)
    counts = {}
    for multiple in (1, 3):
        config = tiny_config(tiny["model"], tiny["data"], **{
            "data.pack_length": 64, "data.pack_row_multiple": multiple,
            "data.pack_sampling": "uniform" if multiple == 1 else "stratified",
            "train.grad_accum_steps": 2, "train.max_steps": 2, "eval.every_steps": 0,
            "checkpoint.every_steps": 0})
        train_and_evaluate(config, tmp_path / str(multiple))
        it = made[-1]
        assert it.sampling == config.data.pack_sampling
        counts[multiple] = it.row_counts()
        examples = [int((np.asarray(next(it)["index"]) >= 0).sum()) for _ in range(3)]
        assert examples == [16, 16, 16]
    assert all(c % 2 == 0 for c in counts[1]) and all(c % 6 == 0 for c in counts[3]), counts
    assert len(counts[3]) <= len(counts[1]) and max(counts[3]) >= max(counts[1])


def test_missing_workdir_parents_are_made(tiny, tmp_path):
    """As every trainer does (the README's `--workdir runs/quickstart` on a fresh clone)."""
    workdir = tmp_path / "no" / "such" / "run"
    train_and_evaluate(tiny_config(tiny["model"], tiny["data"], **{"train.max_steps": 2}),
                       workdir)
    assert (workdir / "eval_results.json").is_file()


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


@pytest.mark.parametrize("mode", ["max", "auto"])
def test_best_checkpoint_is_kept_and_loadable(tiny, tmp_path, mode):
    from flax_sentiment.workdir import load_run

    # "max": best = highest loss, an early step, so the best is not also the latest. "auto"
    # (the default) judges a loss the way it improves: best = lowest.
    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.max_steps": 12, "eval.every_steps": 2, "checkpoint.every_steps": 0,
        "checkpoint.keep": 1, "eval.metric": "loss", "eval.metric_mode": mode})
    results = train_and_evaluate(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["eval/loss"] for r in rows if "eval/loss" in r}
    best = (max if mode == "max" else min)(losses, key=losses.get)
    assert results["best_step"] == best
    assert mode == "auto" or best < 12
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == sorted({best, 12})  # the latest plus the best, nothing else
    assert load_run(tmp_path / "run", "best").step == best


def _loss_and_grads(trainer, params, batch):
    """Mean loss and its gradient (the train step's, before the optimizer) on one batch."""
    def loss(p):
        total, (weight, _) = loss_sum(
            trainer.model_def, p, batch, jax.random.key_data(jax.random.key(0)),
            num_labels=trainer.num_labels, label_smoothing=0.0,
            class_weights=jnp.ones(trainer.num_labels))
        return total / weight

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    return float(value), jax.device_get(grads)


def test_bucket_padding_changes_nothing_but_cost(tiny):
    """The same examples padded to 16 or to 128 tokens give the same loss and gradients: the
    bucketed pipeline trains the model fixed-length padding trains, with less work."""
    trainer, _ = _trainer(tiny["model_nodrop"], warmup_ratio=0.0)
    state = trainer.init_state(trainer.params0)
    short = _batch(np.random.RandomState(3), length=16)
    long = {k: v for k, v in short.items()}
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        long[key] = np.pad(short[key], ((0, 0), (0, 112)))
    eval_counts = [jax.device_get(trainer.model_step(state.params, _put(trainer, b))["counts"])
                   for b in (short, long)]
    np.testing.assert_array_equal(eval_counts[0]["confusion"], eval_counts[1]["confusion"])
    assert float(eval_counts[0]["loss_sum"]) == pytest.approx(float(eval_counts[1]["loss_sum"]),
                                                              rel=1e-6)
    # Gradients, not one Adam step: Adam's first step is ~lr * sign(grad), blind to their size.
    (loss_s, grads_s), (loss_l, grads_l) = (_loss_and_grads(trainer, state.params, b)
                                            for b in (short, long))
    assert loss_l == pytest.approx(loss_s, rel=1e-6)
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads_s.values()))
    for name in grads_s:
        error, scale = np.linalg.norm(grads_l[name] - grads_s[name]), np.linalg.norm(grads_s[name])
        if name.endswith("attention.key.bias"):
            # Exactly 0 in exact arithmetic (softmax ignores a shift shared by all keys): what is
            # computed is rounding noise, ~1e-13 here, with no relative error to speak of.
            assert max(scale, np.linalg.norm(grads_l[name])) < 1e-9 * total, name
            continue
        assert error <= 1e-5 * scale, (name, error / scale)


def test_remat_and_scan_runs_train_like_the_plain_run(tiny, tmp_path, monkeypatch):
    """config model.remat and model.scan_layers reach the model (its layers are traced under
    nnx.remat, or as a lax.scan) and a run with dropout ends where the plain run does: they change
    memory, compute and compile time, not results."""
    from flax import nnx

    from flax_sentiment.models import classifier
    from flax_sentiment.workdir import load_run

    wrapped = []
    real_remat, real_scan = nnx.remat, classifier._scan

    def counting_remat(fn, *args, **kwargs):
        wrapped.append("remat")
        return real_remat(fn, *args, **kwargs)

    def counting_scan(*args, **kwargs):
        wrapped.append("scan")
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(nnx, "remat", counting_remat)
    monkeypatch.setattr(classifier, "_scan", counting_scan)
    params, traced = {}, {}
    for name in ("plain", "remat", "scan_layers"):
        wrapped.clear()
        config = tiny_config(tiny["model"], tiny["data"], **{
            "model.remat": name == "remat", "model.scan_layers": name == "scan_layers",
            "train.max_steps": 4, "eval.every_steps": 0, "checkpoint.every_steps": 0})
        train_and_evaluate(config, tmp_path / name)
        traced[name] = set(wrapped)
        params[name] = ModelDef.params_of(load_run(tmp_path / name).model)
    assert traced == {"plain": set(), "remat": {"remat"}, "scan_layers": {"scan"}}, traced
    for name in ("remat", "scan_layers"):
        assert params[name].keys() == params["plain"].keys()
        for key, value in params["plain"].items():
            np.testing.assert_allclose(params[name][key], value, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{name}: {key}")


def test_pooling_reaches_the_run_and_its_checkpoints(tiny, tmp_path):
    """config model.pooling: the run trains and saves a mean-pooled head, evaluation rebuilds it
    from the checkpoint, and a resume with another pooling is refused."""
    from flax_sentiment.workdir import load_run

    short = {"train.max_steps": 2, "eval.every_steps": 0, "checkpoint.every_steps": 0}
    config = tiny_config(tiny["model"], tiny["data"], **short, **{"model.pooling": "mean"})
    train_and_evaluate(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.model.config.head_pooling == "mean" and run.model.head.pooling == "mean"
    config.train.max_steps = 4
    config.model.pooling = "cls"
    with pytest.raises(UserError, match="config model.pooling is 'cls' but the checkpoint"):
        train_and_evaluate(config, tmp_path / "run")
