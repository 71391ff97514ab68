"""Fine-tuning techniques: layer-wise learning-rate decay, weight EMA, re-initialised top layers,
checkpoint averaging and distillation, each against an independent computation."""

import json
import signal

import jax
import numpy as np
import pytest

from flax_sentiment import parallel
from flax_sentiment.config import base_config
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.pretrained import load_pretrained_bundle
from flax_sentiment.training.initialization import reinit_top_layers
from flax_sentiment.training.loop import train_and_evaluate
from flax_sentiment.training.steps import Steps, distillation_kl, loss_sum
from flax_sentiment.workdir import load_run
from tests.conftest import MINILM
from tests.helpers import (
    final_params,
    run_script,
    sst2_subset,
    tiny_bert,
    tiny_config,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    return {"model": tiny_bert(root / "model"), "nodrop": tiny_bert(root / "nodrop", dropout=0.0),
            "albert": tiny_bert(root / "albert", model_type="albert"),
            "electra": tiny_bert(root / "electra", model_type="electra"),
            "data": sst2_subset(root / "sst2")}


def _steps(model_dir, num_labels=2, **train):
    config = base_config()
    for k, v in train.items():
        config.train[k] = v
    bundle = load_pretrained_bundle(model_dir, num_labels=num_labels)
    steps = Steps(ModelDef(bundle.model), num_labels, parallel.make_mesh(),
                  train=config.train, total_steps=100)
    return steps, ModelDef.params_of(bundle.model), bundle


def _batch(seed, batch=16, length=16, teachers=0, num_labels=2):
    rng = np.random.RandomState(seed)
    ids = rng.randint(1000, 30522, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[::3, length // 2:] = 0
    out = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids),
           "labels": rng.randint(0, num_labels, batch).astype(np.int32),
           "weights": np.r_[np.ones(batch - 3), np.zeros(3)].astype(np.float32),
           "index": np.arange(batch, dtype=np.int32)}
    if teachers:
        out["teacher_logits"] = 3 * rng.randn(batch, teachers, num_labels).astype(np.float32)
    return out


def _put(steps, batch):
    return {k: jax.device_put(v, steps.data_sharding) for k, v in batch.items()}


# --------------------------------------------------------------------------------------------
# Layer-wise learning-rate decay

# The learning-rate factor each parameter must get at layer_decay=0.5 in a 2-layer model,
# written out by hand (head 1, top layer 0.5, layer 0 0.25, embeddings 0.125).
EXPECTED_SCALE = {
    "bert": [("head.", 1.0), ("encoder.layers.1.", 0.5), ("encoder.layers.0.", 0.25),
             ("encoder.embeddings.", 0.125)],
    # ALBERT: the one shared group learns at the top layer's rate; the embedding projection
    # with the embeddings.
    "albert": [("head.", 1.0), ("encoder.groups.", 0.5), ("encoder.embeddings.", 0.125)],
    "electra": [("head.", 1.0), ("encoder.layers.1.", 0.5), ("encoder.layers.0.", 0.25),
                ("encoder.embeddings.", 0.125)],
}


@pytest.mark.parametrize("arch", ["bert", "albert", "electra"])
def test_layer_decay_gives_each_parameter_its_learning_rate(tiny, arch):
    """One real train step with Adam's first update (|update| = lr * |g| / (|g| + eps), so with
    a negligible eps every element with a gradient moves by its learning rate): read the rates
    off the step."""
    lr = 1e-3
    model = tiny["model" if arch == "bert" else arch]
    steps, params0, _ = _steps(model, learning_rate=lr, schedule="constant", warmup_ratio=0.0,
                               weight_decay=0.0, max_grad_norm=0.0, layer_decay=0.5,
                               adam_eps=1e-30)
    state = steps.init_state(params0)
    new, _ = steps.train_step(state, _put(steps, _batch(0)))
    after = jax.device_get(new.params)
    for name, before in params0.items():
        moved = float(np.max(np.abs(np.asarray(after[name]) - np.asarray(before)))) / lr
        expected = next(s for prefix, s in EXPECTED_SCALE[arch] if name.startswith(prefix))
        # Gradients that are ~0 (the key bias cancels in the softmax) move less than lr.
        if name.endswith(("token_type.embedding", "position.embedding", "key.bias")):
            assert moved <= expected * (1 + 1e-3), name
        else:
            assert moved == pytest.approx(expected, rel=2e-3), name


def test_layer_decay_one_changes_nothing(tiny):
    a, params0, _ = _steps(tiny["nodrop"])
    b, _, _ = _steps(tiny["nodrop"], layer_decay=1.0)
    batch = _batch(1)
    pa = jax.device_get(a.train_step(a.init_state(params0), _put(a, batch))[0].params)
    pb = jax.device_get(b.train_step(b.init_state(params0), _put(b, batch))[0].params)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


# --------------------------------------------------------------------------------------------
# EMA


def test_ema_is_numpys_bias_corrected_ema_of_the_parameters(tiny):
    decay = 0.8
    steps, params0, _ = _steps(tiny["model"], ema_decay=decay, learning_rate=1e-3)
    state = steps.init_state(params0)
    ema = {k: np.zeros(np.shape(v), np.float64) for k, v in params0.items()}
    for t in range(1, 6):
        state, _ = steps.train_step(state, _put(steps, _batch(t)))
        params = jax.device_get(state.params)
        for k in ema:  # zero-initialised, then debiased by 1 - decay^t
            ema[k] = decay * ema[k] + (1 - decay) * np.asarray(params[k], np.float64)
        got = jax.device_get(state.ema)
        for k in ema:
            np.testing.assert_allclose(got[k], ema[k] / (1 - decay ** t), rtol=1e-5,
                                       atol=1e-6, err_msg=f"{k} at step {t}")
    # The average is not the last parameters (the test would pass for ema = params otherwise).
    k = "encoder.layers.0.attention.query.kernel"
    assert np.max(np.abs(got[k] - params[k])) > 1e-4


def test_ema_run_reports_both_and_resumes_exactly_after_sigkill(run_setup, tmp_path):
    from tests.test_checkpoint import launch, wait_for_checkpoint

    extra = ["--config.train.max_steps=40", "--config.eval.every_steps=20",
             "--config.train.ema_decay=0.9"]
    killed, full = tmp_path / "killed", tmp_path / "full"
    proc = launch(run_setup["config"], killed, extra)
    wait_for_checkpoint(killed, proc, step=8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    args = ["scripts/train.py", f"--config={run_setup['config']}", *extra]
    relaunch = run_script([*args, f"--workdir={killed}"])
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "resumed from" in relaunch.stderr
    result = run_script([*args, f"--workdir={full}"])
    assert result.returncode == 0, result.stderr[-3000:]
    for weights in ("raw", "ema"):
        a = {k: np.asarray(v) for k, v in
             ModelDef.params_of(load_run(full, weights=weights).model).items()}
        b = {k: np.asarray(v) for k, v in
             ModelDef.params_of(load_run(killed, weights=weights).model).items()}
        for k in a:
            np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0, err_msg=f"{weights} {k}")
    # Both weights are evaluated; the run is judged by the EMA (eval.weights auto).
    saved = json.loads((full / "eval_results.json").read_text())
    assert saved["weights"] == "ema"
    assert saved["accuracy"] == saved["ema"]["accuracy"]
    assert {"raw", "ema"} <= saved.keys()
    rows = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert any("eval_raw/accuracy" in r for r in rows)
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint

    raw = evaluate_checkpoint(full, overrides={"eval.weights": "raw"})
    assert raw.metrics["loss"] == pytest.approx(saved["raw"]["loss"], rel=1e-5)
    ema = evaluate_checkpoint(full)
    assert ema.metrics["loss"] == pytest.approx(saved["ema"]["loss"], rel=1e-5)
    assert raw.metrics["loss"] != pytest.approx(ema.metrics["loss"], rel=1e-6)


def test_ema_weights_refused_where_there_are_none(reference_run):
    with pytest.raises(UserError, match="kept no moving average"):
        load_run(reference_run, weights="ema")


# --------------------------------------------------------------------------------------------
# Re-initialising the top layers


def test_reinit_top_layers():
    """On the real MiniLM (6 pretrained layers): the top 2 and the head are drawn afresh."""
    bundle = load_pretrained_bundle(MINILM, num_labels=2)
    params = {k: np.asarray(v) for k, v in ModelDef.params_of(bundle.model).items()}
    out = {k: np.asarray(v) for k, v in
           reinit_top_layers(params, bundle.config, 2, seed=3).items()}
    std = bundle.config.initializer_range
    for name, before in params.items():
        if name.startswith(("encoder.layers.4.", "encoder.layers.5.", "head.")):
            if name.endswith(".kernel"):
                assert not np.allclose(out[name], before), name
                assert np.std(out[name]) == pytest.approx(std, rel=0.2), name
            elif name.endswith(".scale"):
                np.testing.assert_array_equal(out[name], 1.0)
            else:
                np.testing.assert_array_equal(out[name], 0.0)
        else:
            np.testing.assert_array_equal(out[name], before, err_msg=name)
    # The pretrained top layer was not already "freshly initialised" (the test can fail).
    assert not np.allclose(params["encoder.layers.5.attention.norm.scale"], 1.0)
    assert not np.allclose(params["encoder.layers.5.ffn.outer.bias"], 0.0)
    again = reinit_top_layers(params, bundle.config, 2, seed=3)
    np.testing.assert_array_equal(again["head.dense.kernel"], out["head.dense.kernel"])


def test_reinit_draws_its_own_stream_with_modernberts_initialisation(tmp_path):
    """ModernBERT's top layer and head come back with its own truncated normals (the std of
    each matrix as torch's `_init_weights` draws it), and none of the draws repeats the fresh
    head's, which comes from the same seed."""
    import torch
    import transformers as T

    folder = tiny_bert(tmp_path / "modernbert", model_type="modernbert")
    bundle = load_pretrained_bundle(str(folder), num_labels=2, seed=0)
    cfg = bundle.config
    params = {k: np.asarray(v) for k, v in ModelDef.params_of(bundle.model).items()}
    out = {k: np.asarray(v) for k, v in reinit_top_layers(params, cfg, 1, seed=0).items()}
    torch.manual_seed(0)
    hf = T.AutoConfig.from_pretrained(folder, num_labels=2)
    ref = T.ModernBertForSequenceClassification(hf).state_dict()
    pairs = {"encoder.layers.1.attention.qkv.kernel": "model.layers.1.attn.Wqkv.weight",
             "encoder.layers.1.attention.out.kernel": "model.layers.1.attn.Wo.weight",
             "encoder.layers.1.ffn.inner.kernel": "model.layers.1.mlp.Wi.weight",
             "encoder.layers.1.ffn.outer.kernel": "model.layers.1.mlp.Wo.weight",
             "head.dense.kernel": "head.dense.weight", "head.out.kernel": "classifier.weight"}
    r, L = 0.02, 2
    stds = {"in": r, "out": r / np.sqrt(2 * L), "final": 32 ** -0.5}
    kinds = dict(zip(pairs, ("in", "out", "in", "out", "out", "final"), strict=True))
    trunc = 0.8796  # the std of a standard normal cut at +-2
    for ours, theirs in pairs.items():
        std = stds[kinds[ours]]
        tol = 4 / np.sqrt(2 * out[ours].size)  # ~4 sigma of a sample std's relative error
        for x in (out[ours], ref[theirs].float().numpy()):  # ours and torch's own draws
            assert np.std(x) == pytest.approx(trunc * std, rel=tol), ours
            assert np.abs(x).max() <= 2 * std * (1 + 1e-6), ours
    np.testing.assert_array_equal(out["encoder.layers.0.attention.qkv.kernel"],
                                  params["encoder.layers.0.attention.qkv.kernel"])
    for name in ("head.dense.kernel", "head.out.kernel"):  # the fresh head's own draws
        assert not np.allclose(out[name], params[name]), name


def test_a_permuted_head_is_reordered_by_label_name(tiny, tmp_path):
    """Fine-tuning from a classifier whose labels are the run's in another order: each output
    keeps its meaning (the head's rows follow the names), so the model predicts as before."""
    from flax_sentiment.evaluation.predict import Classifier
    from flax_sentiment.export.huggingface import export_hf

    source = load_pretrained_bundle(str(tiny["model"]), num_labels=3, seed=1)
    export_hf(source.model, source.arch, source.hf_config, source.tokenizer,
              ["positive", "neutral", "negative"], tmp_path / "clf")
    names = ["negative", "neutral", "positive"]
    config = tiny_config(tmp_path / "clf", tiny["data"], **{
        "data.label_names": tuple(names), "train.max_steps": 1, "train.learning_rate": 1e-12,
        "eval.every_steps": 0, "checkpoint.every_steps": 0, "train.warmup_steps": 0})
    config.data.label_map = {"0": "negative", "1": "positive"}
    train_and_evaluate(config, tmp_path / "run")
    texts = ["a gorgeous, witty film", "dull and long", "it is a film"]
    before = Classifier.from_pretrained(tmp_path / "clf").predict_proba(texts)
    after = Classifier.from_workdir(tmp_path / "run").predict_proba(texts)
    np.testing.assert_allclose(after, before[:, [2, 1, 0]], atol=1e-6)
    assert not np.allclose(after, before, atol=1e-3)


def test_reinit_refusals(tiny, tmp_path):
    config = tiny_config(tiny["albert"], tiny["data"], **{"model.reinit_layers": 1})
    with pytest.raises(UserError, match="ALBERT.*shares its layer"):
        train_and_evaluate(config, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    config = tiny_config(tiny["model"], tiny["data"], **{"model.reinit_layers": 3})
    with pytest.raises(UserError, match="has only 2 layers"):
        train_and_evaluate(config, tmp_path / "b")


# --------------------------------------------------------------------------------------------
# Checkpoint averaging


def test_average_of_last_checkpoints_is_numpys_mean(reference_run, tmp_path):
    from flax_sentiment.tuning import averaging

    chosen = averaging.choose_steps(reference_run, last=3)
    assert chosen == [6, 8, 12]  # checkpoints every 4 steps and at the evaluations (6, 12)
    out = averaging.write_average([(reference_run, s) for s in chosen], tmp_path / "soup")
    got = final_params(out)
    each = [final_params(reference_run, s) for s in chosen]
    for k in got:
        np.testing.assert_allclose(got[k], np.mean([p[k] for p in each], axis=0),
                                   rtol=1e-6, atol=1e-7, err_msg=k)
    assert not np.allclose(got["head.out.kernel"], each[-1]["head.out.kernel"])
    # Best k by the eval metric logged at each evaluation.
    best = averaging.choose_steps(reference_run, best=1)
    rows = [json.loads(x) for x in (reference_run / "metrics.jsonl").read_text().splitlines()]
    scored = {r["step"]: r["eval/accuracy"] for r in rows if "eval/accuracy" in r}
    assert best == [max(scored, key=scored.get)]
    # The average evaluates like any checkpoint and cannot be resumed as a run.
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint

    assert 0 <= evaluate_checkpoint(out).metrics["accuracy"] <= 1
    with pytest.raises(UserError, match="nothing was written"):
        averaging.write_average([(reference_run, 12)], out)


def test_best_checkpoints_are_ranked_by_the_weights_averaged(reference_run, tmp_path):
    """--best K --weights raw on an EMA run ranks by the raw weights' evaluations, not by
    `eval/` (the EMA's there)."""
    import shutil

    from flax_sentiment.tuning import averaging

    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    steps = averaging.choose_steps(run, last=3)
    raw, ema = dict(zip(steps, (0.9, 0.5, 0.1), strict=True)), dict(
        zip(steps, (0.1, 0.5, 0.9), strict=True))
    with open(run / "metrics.jsonl", "w") as f:
        for s in steps:
            f.write(json.dumps({"step": s, "eval/accuracy": ema[s], "eval_raw/accuracy": raw[s],
                                "eval_ema/accuracy": ema[s]}) + "\n")
    assert averaging.choose_steps(run, best=1, weights="raw") == [steps[0]]
    assert averaging.choose_steps(run, best=1, weights="ema") == [steps[2]]
    assert averaging.choose_steps(run, best=1) == [steps[2]]


def test_average_across_runs_needs_the_same_start(tiny, tmp_path):
    from flax_sentiment.tuning import averaging

    runs = {}
    for name, seed, head in (("a", 0, 0), ("b", 1, 0), ("c", 2, 5)):
        config = tiny_config(tiny["model"], tiny["data"], **{
            "train.seed": seed, "model.head_seed": head, "train.max_steps": 4,
            "eval.every_steps": 0, "checkpoint.every_steps": 0})
        train_and_evaluate(config, tmp_path / name)
        runs[name] = tmp_path / name
    out = averaging.write_average([(runs["a"], 4), (runs["b"], 4)], tmp_path / "ab")
    pa, pb, got = final_params(runs["a"]), final_params(runs["b"]), final_params(out)
    np.testing.assert_allclose(got["head.out.kernel"],
                               (pa["head.out.kernel"] + pb["head.out.kernel"]) / 2, rtol=1e-6)
    with pytest.raises(UserError, match="started from different parameters"):
        averaging.write_average([(runs["a"], 4), (runs["c"], 4)], tmp_path / "ac")
    assert not (tmp_path / "ac").exists()


def test_average_script_and_resume_refusal(reference_run, run_setup, tmp_path):
    out = tmp_path / "soup"
    result = run_script(["scripts/average.py", f"--workdir={reference_run}", "--last=2",
                         f"--output={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = json.loads((out / "eval_results.json").read_text())
    assert saved["averaged"] == 2 and "accuracy" in saved
    again = run_script(["scripts/train.py", f"--config={run_setup['config']}",
                        f"--workdir={out}"])
    assert again.returncode == 2 and "holds an average of checkpoints" in again.stderr
    bad = run_script(["scripts/average.py", f"--workdir={reference_run}", "--last=99",
                      f"--output={tmp_path / 'x'}"])
    assert bad.returncode == 2 and "--last 99 but the run kept" in bad.stderr
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------
# Distillation


def test_distillation_loss_is_torch_kl_div(tiny):
    import torch

    rng = np.random.RandomState(0)
    student = 3 * rng.randn(16, 3)
    teachers = 3 * rng.randn(16, 2, 3)
    T = 2.5
    got = np.asarray(distillation_kl(student.astype(np.float32),
                                     teachers.astype(np.float32), np.float32(T)))
    p = torch.softmax(torch.tensor(teachers) / T, -1).mean(1)
    ref = torch.nn.functional.kl_div(torch.log_softmax(torch.tensor(student) / T, -1), p,
                                     reduction="none").sum(-1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)

    # The whole loss: (1 - a) * torch's cross-entropy + a * T^2 * KL, over the real rows.
    a = 0.3
    batch = _batch(4, teachers=2, num_labels=2)
    bundle = load_pretrained_bundle(tiny["nodrop"], num_labels=2)
    model_def = ModelDef(bundle.model)
    params = ModelDef.params_of(bundle.model)
    total, (w, _) = loss_sum(model_def, params, batch, jax.random.key_data(jax.random.key(0)),
                             num_labels=2, label_smoothing=0.0,
                             class_weights=np.ones(2, np.float32), distill_weight=a,
                             distill_temperature=T)
    logits = torch.tensor(np.asarray(bundle.model(batch["input_ids"], batch["attention_mask"],
                                                  batch["token_type_ids"]), np.float64))
    real = torch.tensor(batch["weights"] > 0)
    ce = torch.nn.functional.cross_entropy(logits[real],
                                           torch.tensor(batch["labels"]).long()[real])
    pt = torch.softmax(torch.tensor(batch["teacher_logits"], dtype=torch.float64) / T,
                       -1).mean(1)[real]
    kl = torch.nn.functional.kl_div(torch.log_softmax(logits[real] / T, -1), pt,
                                    reduction="batchmean")
    expected = ((1 - a) * ce + a * T ** 2 * kl).item()
    assert float(total / w) == pytest.approx(expected, rel=1e-5)


def test_distill_weight_zero_trains_as_without_a_teacher(tiny):
    plain, params0, _ = _steps(tiny["model"], warmup_ratio=0.0)
    zero, _, _ = _steps(tiny["model"], warmup_ratio=0.0, distill_weight=0.0,
                        distill_temperature=3.0)
    sa, sb = plain.init_state(params0), zero.init_state(params0)
    for t in range(3):
        batch = _batch(t, teachers=2)
        sb, mb = zero.train_step(sb, _put(zero, batch))
        del batch["teacher_logits"]
        sa, ma = plain.train_step(sa, _put(plain, batch))
        assert float(mb["loss"]) == pytest.approx(float(ma["loss"]), rel=1e-6)
    pa, pb = jax.device_get(sa.params), jax.device_get(sb.params)
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-6, atol=1e-7, err_msg=k)
    # ... while a positive weight does change training.
    half, _, _ = _steps(tiny["model"], warmup_ratio=0.0, distill_weight=0.5)
    sc, mc = half.train_step(half.init_state(params0), _put(half, _batch(0, teachers=2)))
    sd, md = plain.train_step(plain.init_state(params0), _put(plain, _batch(0)))
    assert abs(float(mc["loss"]) - float(md["loss"])) > 1e-3
    k = "head.out.kernel"
    assert not np.allclose(jax.device_get(sc.params)[k], jax.device_get(sd.params)[k])


def test_distillation_from_a_workdir_teacher(reference_run, tiny, tmp_path, caplog):
    """The student's cached teacher logits are the teacher's own predictions on the train
    texts; a resumed run reads its workdir's copy, another student (another seed) the shared
    one; a teacher with other labels is refused."""
    from flax_sentiment.data.splits import load_data
    from flax_sentiment.evaluation.predict import Classifier
    from flax_sentiment.models.pretrained import load_tokenizer

    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.teacher": (str(reference_run),), "train.max_steps": 4,
        "eval.every_steps": 0, "checkpoint.every_steps": 0})
    train_and_evaluate(config, tmp_path / "student")
    cached = list((tmp_path / "student").glob("teacher_logits_*.npy"))
    assert len(cached) == 1
    logits = np.load(cached[0])
    train = load_data(config.data, load_tokenizer(tiny["model"])).train
    expected = Classifier.from_workdir(reference_run).logits(list(train.texts))
    assert logits.shape == (len(train), 1, 2)
    np.testing.assert_allclose(logits[:, 0], expected, rtol=1e-5, atol=1e-5)
    import logging

    with caplog.at_level(logging.INFO):
        config.train.max_steps = 6
        train_and_evaluate(config, tmp_path / "student")  # resumes; reads the cache
    assert f"teacher logits read from {tmp_path / 'student'}" in caplog.text

    from flax_sentiment.training.distill import shared_cache_dir

    caplog.clear()
    with caplog.at_level(logging.INFO):
        config.train.max_steps, config.train.seed = 2, 1
        train_and_evaluate(config, tmp_path / "seed1")
    assert f"teacher logits read from {shared_cache_dir(config.data) / cached[0].name}" \
        in caplog.text
    np.testing.assert_array_equal(np.load(tmp_path / "seed1" / cached[0].name), logits)

    bad = tiny_config(tiny["model"], tiny["data"], **{
        "train.teacher": (str(reference_run),), "data.label_names": ("bad", "good")})
    with pytest.raises(UserError, match=r"its labels \['negative', 'positive'\] are not"):
        train_and_evaluate(bad, tmp_path / "bad")


def test_a_teacher_that_trained_on_refuses_the_students_resume(reference_run, tiny, tmp_path):
    """A student distilled from a workdir's latest checkpoint: when the teacher has a newer
    checkpoint, the same spec means other soft targets, so resuming is refused by name."""
    import shutil

    from tests.helpers import keep_until

    teacher = tmp_path / "teacher"
    keep_until(reference_run, teacher, 8)
    config = tiny_config(tiny["model"], tiny["data"], **{
        "train.teacher": (str(teacher),), "train.max_steps": 2, "eval.every_steps": 0,
        "checkpoint.every_steps": 0})
    train_and_evaluate(config, tmp_path / "student")
    shutil.copytree(reference_run / "checkpoints" / "12", teacher / "checkpoints" / "12")
    config.train.max_steps = 4
    import re

    with pytest.raises(UserError, match=re.escape(
            f"cannot resume: config train.teacher '{teacher}' now resolves to step 12, not the "
            "teacher this run started with (step 8)")):
        train_and_evaluate(config, tmp_path / "student")


def test_teacher_stamps_change_with_the_teachers_files(tmp_path):
    """A folder or pip teacher is stamped by its files (a hub id by its snapshot's), so a
    changed teacher gets new cached logits."""
    import os

    from flax_sentiment.training.distill import teacher_stamp

    pip = teacher_stamp(MINILM)
    assert {"config.json", "model.safetensors"} <= {f[0] for f in pip["files"]}
    folder = tiny_bert(tmp_path / "teacher")
    before = teacher_stamp(str(folder))
    assert teacher_stamp(str(folder)) == before
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
    assert teacher_stamp(str(folder)) != before

