"""LoRA: adapters on every architecture (tiny real models and the real MiniLM), PEFT adapter
export with PEFT's own key names and logits, merged = unmerged, training that touches only the
head and the adapters (and stores only them), composition with EMA, layer decay and averaging,
LoRA dropout (the adapters' input only, in training only), exact resume after SIGKILL, and bad
input refused before anything is written."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_sentiment.errors import UserError
from flax_sentiment.models import lora
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.lora import Adapters, LoraSpec
from flax_sentiment.models.pretrained import load_pretrained_bundle
from flax_sentiment.training.steps import layer_decay_exponents
from tests.conftest import MINILM, REPO
from tests.helpers import (
    assert_same_run,
    final_params,
    keep_until,
    run_script,
    sst2_subset,
    tiny_bert,
    tiny_config,
    write_config,
)

ARCHS = ["bert", "roberta", "albert", "electra", "distilbert", "xlm-roberta", "deberta-v2",
         "modernbert", "mpnet"]
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny real models of each architecture, made on first use."""
    root = tmp_path_factory.mktemp("lora_models")
    made = {}

    def get(model_type: str):
        if model_type not in made:
            made[model_type] = tiny_bert(root / model_type, model_type=model_type, seed=1)
        return made[model_type]

    return get


def random_adapters(name: str, targets: str, *, rank: int = 4, alpha: float = 8.0,
                    seed: int = 0, dropout: float = 0.0):
    """The pretrained `name` with adapters whose B is not zero and a perturbed head (what a
    trained run has): (merged model, Adapters, bundle)."""
    bundle = load_pretrained_bundle(name, num_labels=2, seed=seed)
    params = {k: np.asarray(v) for k, v in ModelDef.params_of(bundle.model).items()}
    spec = LoraSpec(lora.resolve_targets(targets, params), rank, alpha, dropout)
    trainable = {k: np.asarray(v) for k, v in spec.init(params, seed).items()}
    rng = np.random.RandomState(seed)
    for k, v in trainable.items():
        if k.endswith(".lora_b"):
            trainable[k] = rng.normal(0, 0.5, v.shape).astype(np.float32)
        elif k.startswith("head."):
            trainable[k] = (v + rng.normal(0, 0.2, v.shape)).astype(np.float32)
    merged = jax.device_get(spec.merge(trainable, lora.frozen_params(params)))
    model = ModelDef(bundle.model).merge(merged)
    return model, Adapters(spec, trainable, str(name)), bundle


def without_adapters(model, adapters):
    """`model` with its adapters taken out (the base and the same head)."""
    params = ModelDef.params_of(model)
    params.update({m + ".kernel": params[m + ".kernel"] - adapters.spec.scale * (
        adapters.params[m + ".lora_a"] @ adapters.params[m + ".lora_b"])
        for m in adapters.spec.modules})
    return ModelDef(model).merge(params)


def _inputs(tokenizer, model):
    from flax_sentiment.export.huggingface import PARITY_TEXTS

    enc = tokenizer(PARITY_TEXTS, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    types = enc.get("token_type_ids") if model.config.type_vocab_size > 0 else None
    return ids, mask, types


def check_adapter_export(name, targets, tmp_path):
    """Our adapter folder: PEFT's own key names and shapes for this config (from a PeftModel
    that PEFT builds itself), PEFT's logits = ours within 1e-4, and the merged export's
    PyTorch logits = PEFT's unmerged ones within 1e-5. The adapters were trained with LoRA
    dropout 0.1: the config says so, and PEFT, in eval mode, applies none (nor do we)."""
    import peft
    import torch

    from flax_sentiment.export.huggingface import export_hf, load_torch_model, torch_logits
    from flax_sentiment.export.peft import export_adapter, load_peft_model

    model, adapters, bundle = random_adapters(name, targets, dropout=0.1)
    out = tmp_path / "adapter"
    report = export_adapter(model, adapters, bundle.arch, bundle.tokenizer, LABELS, out)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(report["files"])
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0 and config["lora_dropout"] == 0.1
    assert len(config["target_modules"]) == len(adapters.spec.modules)

    # Key names and shapes: a PeftModel PEFT makes itself from the same settings.
    from safetensors.numpy import load_file
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(
        config["base_model_name_or_path"], num_labels=2, dtype=torch.float32)
    theirs = peft.get_peft_model(base, peft.LoraConfig(
        task_type="SEQ_CLS", r=4, lora_alpha=8, lora_dropout=0.1,
        target_modules=config["target_modules"], modules_to_save=config["modules_to_save"]))
    expected = {k: tuple(v.shape) for k, v in peft.get_peft_model_state_dict(theirs).items()}
    written = {k: v.shape for k, v in load_file(str(out / "adapter_model.safetensors")).items()}
    assert written == expected

    ids, mask, types = _inputs(bundle.tokenizer, model)
    ours = np.asarray(model(ids, mask, None if types is None else types.astype(np.int32)))
    unmerged = torch_logits(load_peft_model(out, config["base_model_name_or_path"], LABELS),
                            ids, mask, types)
    np.testing.assert_allclose(unmerged, ours, atol=1e-4, rtol=0)
    # The adapters move the logits far more than the tolerance: a wrong scale or a transposed
    # or missing adapter could not pass.
    plain = np.asarray(without_adapters(model, adapters)(
        ids, mask, None if types is None else types.astype(np.int32)))
    assert np.abs(ours - plain).max() > 1e-2

    merged_dir = tmp_path / "merged"
    export_hf(model, bundle.arch, bundle.hf_config, bundle.tokenizer, LABELS, merged_dir)
    merged = torch_logits(load_torch_model(merged_dir), ids, mask, types)
    # Both sides are torch: (W + BA)x against Wx + B(Ax) in float32, which rounds apart by up
    # to 1.1e-5 on logits of ~5 with oneDNN on an Intel AMX host (2026-12-03); the adapters
    # themselves move the logits by more than 1e-2 (above).
    np.testing.assert_allclose(merged, unmerged, atol=3e-5, rtol=0)


# Every architecture with its default targets; every linear layer too (slow, but for BERT).
CASES = [(a, "query_value") for a in ARCHS] + [
    pytest.param(a, "all", marks=[] if a == "bert" else pytest.mark.slow) for a in ARCHS]


@pytest.mark.parametrize("model_type,targets", CASES)
def test_peft_adapter_matches_for_every_architecture(tiny, tmp_path, model_type, targets):
    check_adapter_export(tiny(model_type), targets, tmp_path)


@pytest.mark.parametrize("targets", [
    "query_value", pytest.param("attention.query,ffn.outer", marks=pytest.mark.slow)])
def test_peft_adapter_matches_on_real_minilm(tmp_path, targets):
    check_adapter_export(MINILM, targets, tmp_path)


# --------------------------------------------------------------------------------------------
# Targets, per architecture


def _abstract(tiny, model_type):
    bundle = load_pretrained_bundle(tiny(model_type), num_labels=2)
    return ModelDef(bundle.model).abstract_params()


def test_query_value_is_the_fused_matrix_where_the_architecture_has_one(tiny):
    assert lora.resolve_targets("query_value", _abstract(tiny, "bert")) == (
        "encoder.layers.0.attention.query", "encoder.layers.0.attention.value",
        "encoder.layers.1.attention.query", "encoder.layers.1.attention.value")
    assert lora.resolve_targets("query_value", _abstract(tiny, "modernbert")) == (
        "encoder.layers.0.attention.qkv", "encoder.layers.1.attention.qkv")
    # ALBERT shares one layer across depths: one adapter per shared module, as PEFT.
    assert lora.resolve_targets("query_value", _abstract(tiny, "albert")) == (
        "encoder.groups.0.0.attention.query", "encoder.groups.0.0.attention.value")
    everything = lora.resolve_targets("all", _abstract(tiny, "electra"))
    assert "encoder.embeddings.projection" in everything and len(everything) == 1 + 2 * 6


def test_a_target_that_names_no_layer_is_one_clear_line(tiny):
    with pytest.raises(UserError) as e:
        lora.resolve_targets("attention.query,attention.nothing", _abstract(tiny, "bert"))
    message = str(e.value)
    assert "\n" not in message
    assert "model.lora.targets" in message and "'attention.nothing'" in message
    assert ("it has attention.key, attention.out, attention.query, attention.value, ffn.inner, "
            "ffn.outer;") in message  # what the model has
    with pytest.raises(UserError, match="'attention.query' names no linear layer"):
        lora.resolve_targets("attention.query", _abstract(tiny, "modernbert"))


def test_adapters_start_as_peft_initialises_them():
    """A ~ U(+-1/sqrt(in)) (kaiming-uniform, a=sqrt(5)), B = 0: the merged model is the base."""
    params = {"encoder.layers.0.attention.query.kernel": np.ones((384, 384), np.float32),
              "head.out.kernel": np.ones((384, 2), np.float32)}
    spec = LoraSpec(("encoder.layers.0.attention.query",), 8, 16.0)
    init = spec.init(params, seed=3)
    a = np.asarray(init["encoder.layers.0.attention.query.lora_a"])
    assert a.shape == (384, 8) and np.abs(a).max() <= 1 / np.sqrt(384)
    assert np.abs(a).max() > 0.9 / np.sqrt(384) and abs(a.mean()) < 0.005
    assert not np.asarray(init["encoder.layers.0.attention.query.lora_b"]).any()
    merged = spec.merge(init, {k: v for k, v in params.items() if not k.startswith("head.")})
    np.testing.assert_array_equal(merged["encoder.layers.0.attention.query.kernel"], 1.0)
    assert spec.init(params, seed=3).keys() == init.keys()
    np.testing.assert_array_equal(spec.init(params, seed=3)[
        "encoder.layers.0.attention.query.lora_a"], a)


def test_layer_decay_gives_adapters_their_layer_rate():
    names = ["encoder.layers.3.attention.query.lora_a", "encoder.layers.0.ffn.inner.lora_b",
             "encoder.groups.0.0.attention.value.lora_a", "head.out.kernel"]
    assert layer_decay_exponents(names, 4) == {names[0]: 1, names[1]: 4, names[2]: 1,
                                               names[3]: 0}


# --------------------------------------------------------------------------------------------
# Training


@pytest.fixture(scope="module")
def lora_setup(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("lora_runs")
    return {"root": root, "model": tiny_bert(root / "model"),
            "data": sst2_subset(root / "sst2", 256, 64)}


def lora_config(setup, **overrides):
    c = tiny_config(setup["model"], setup["data"], **overrides)
    c.model.lora.rank = 4
    c.model.lora.alpha = 8.0
    c.checkpoint.keep = 5
    return c


@pytest.fixture(scope="module")
def lora_run(lora_setup):
    """12 steps of LoRA with EMA and layer-wise decay on: the other techniques compose."""
    from flax_sentiment.training.loop import train_and_evaluate

    workdir = lora_setup["root"] / "run"
    config = lora_config(lora_setup, **{"train.ema_decay": 0.9, "train.layer_decay": 0.8})
    config.eval.weights = "raw"
    train_and_evaluate(config, workdir)
    return workdir


def _size(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_lora_trains_and_stores_only_the_head_and_the_adapters(lora_setup, lora_run):
    import orbax.checkpoint as ocp

    from flax_sentiment.training.checkpoint import Checkpoints
    from flax_sentiment.workdir import load_run

    base = {k: np.asarray(v) for k, v in ModelDef.params_of(
        load_pretrained_bundle(lora_setup["model"], num_labels=2).model).items()}
    run = load_run(lora_run)
    assert run.step == 12 and run.adapters is not None
    merged = {k: np.asarray(v) for k, v in ModelDef.params_of(run.model).items()}
    changed = sorted(k for k in merged if not np.array_equal(merged[k], base[k]))
    adapted = [m + ".kernel" for m in run.adapters.spec.modules]
    assert changed == sorted(adapted + [k for k in base if k.startswith("head.")])

    ckpts = Checkpoints(lora_run / "checkpoints", read_only=True)
    try:
        state = ckpts.manager.restore(12, args=ocp.args.Composite(
            state=ocp.args.StandardRestore()))["state"]  # as stored, no target structure
    finally:
        ckpts.close()
    trainable = set(run.adapters.params)
    assert set(state["params"]) == trainable == set(state["ema"])
    # AdamW moments (mu, nu) for the trainable parameters only.
    moments = [leaf for leaf in jax.tree.leaves(state["opt_state"]) if np.ndim(leaf) > 0]
    assert len(moments) == 2 * len(trainable)
    frozen_bytes = sum(v.nbytes for k, v in base.items() if not k.startswith("head."))
    assert _size(lora_run / "checkpoints" / "12") < frozen_bytes / 20

    ema = load_run(lora_run, weights="ema")  # the moving average of the trainable parameters
    assert ema.adapters.params.keys() == run.adapters.params.keys()
    assert not np.array_equal(ema.adapters.params["head.out.kernel"],
                              run.adapters.params["head.out.kernel"])


def test_trained_run_exports_merged_and_as_a_peft_adapter(lora_run, tmp_path):
    """scripts/export.py: the merged folder (as today) and --adapter (PEFT's folder)."""
    import torch  # noqa: F401  (the torch extra)

    for flag, name in (([], "merged"), (["--adapter"], "adapter")):
        result = run_script(["scripts/export.py", f"--workdir={lora_run}",
                             f"--output={tmp_path / name}", "--card_splits=", *flag])
        assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter" / "model.safetensors").exists()
    assert "max_abs_diff" in result.stdout


def test_averaging_lora_checkpoints_averages_the_merged_weights(lora_run, tmp_path):
    from flax_sentiment.tuning.averaging import write_average
    from flax_sentiment.workdir import load_run

    out = write_average([(lora_run, 8), (lora_run, 12)], tmp_path / "avg", weights="raw")
    a, b = final_params(lora_run, 8), final_params(lora_run, 12)
    avg = load_run(out)
    assert avg.adapters is None  # plain (merged) parameters
    for k, v in ModelDef.params_of(avg.model).items():
        np.testing.assert_allclose(np.asarray(v), (a[k] + b[k]) / 2, atol=1e-6, err_msg=k)


def test_lora_student_distills_from_a_lora_teacher(lora_setup, lora_run, tmp_path):
    from flax_sentiment.training.loop import train_and_evaluate

    config = lora_config(lora_setup, **{"train.max_steps": 4, "eval.every_steps": 0,
                                        "checkpoint.every_steps": 0})
    config.train.teacher = (str(lora_run),)  # loaded merged, like any trained run
    result = train_and_evaluate(config, tmp_path / "student")
    assert result["step"] == 4
    assert len(list((tmp_path / "student").glob("teacher_logits_*.npy"))) == 1


def test_a_changed_base_model_is_refused_on_load(lora_setup, tmp_path):
    """The checkpoints hold no base weights: loading reads them again and checks they are the
    ones the adapters were trained on."""
    import shutil

    from flax_sentiment.training.loop import train_and_evaluate
    from flax_sentiment.workdir import load_run

    model = tmp_path / "model"
    shutil.copytree(lora_setup["model"], model)
    config = lora_config(lora_setup, **{"train.max_steps": 2, "eval.every_steps": 0,
                                        "checkpoint.every_steps": 0})
    config.model.name_or_path = str(model)
    train_and_evaluate(config, tmp_path / "run")
    load_run(tmp_path / "run")
    tiny_bert(model, seed=5)  # same architecture, other weights
    with pytest.raises(UserError, match="not the ones this LoRA run was trained on"):
        load_run(tmp_path / "run")


# --------------------------------------------------------------------------------------------
# LoRA dropout: PEFT's lora_dropout, on the adapters' input, in training only


def _unmerged_model(bundle, adapters, dropout):
    """The model of `random_adapters` with its adapters unmerged (`LoraLinear`s, `dropout`)."""
    spec = dataclasses.replace(adapters.spec, dropout=dropout)
    frozen = lora.frozen_params(ModelDef.params_of(bundle.model))
    model_def = lora.unmerged(ModelDef(bundle.model), spec)
    assert sorted(model_def.names) == sorted({**frozen, **adapters.params})  # same names
    return model_def.merge({**frozen, **adapters.params})


def _train_logits(model, ids, mask, types, key, adapter_dropout=True):
    """Logits in train mode (dropout on) for the dropout key `key`, as the train step runs
    them: the adapters' masks from the same key."""
    rng = jax.random.key_data(key)
    if not adapter_dropout:
        return np.asarray(model(ids, mask, types, deterministic=False, dropout_rng=key))
    with lora.adapter_dropout(rng):
        return np.asarray(model(ids, mask, types, deterministic=False, dropout_rng=key))


@pytest.mark.parametrize("model_type", ARCHS)
def test_unmerged_adapters_are_the_merged_model_without_dropout(tiny, model_type):
    """Evaluation runs the merged weights; the train step's unmerged `LoraLinear`s compute the
    same model (every linear layer adapted; ALBERT's shared and DeBERTa's relative-position
    uses of a layer included), and in train mode with LoRA dropout 0 the same logits as the
    merged model for the same key: the base's own dropout masks are untouched."""
    from flax_sentiment.models.lora import LoraLinear

    merged, adapters, bundle = random_adapters(tiny(model_type), "all")
    ids, mask, types = _inputs(bundle.tokenizer, merged)
    types = None if types is None else types.astype(np.int32)
    unmerged = _unmerged_model(bundle, adapters, dropout=0.3)
    swapped = [".".join(map(str, path)) for path, node in nnx.iter_graph(unmerged)
               if isinstance(node, LoraLinear)]
    assert sorted(swapped) == sorted(adapters.spec.modules)
    want = np.asarray(merged(ids, mask, types))
    np.testing.assert_allclose(np.asarray(unmerged(ids, mask, types)), want, atol=1e-5, rtol=0)
    # Outside `adapter_dropout` (evaluation) LoraLinear drops nothing, even in train mode.
    key = jax.random.key(3)
    np.testing.assert_allclose(_train_logits(unmerged, ids, mask, types, key, False),
                               _train_logits(merged, ids, mask, types, key, False), atol=1e-5,
                               rtol=0)
    no_dropout = _unmerged_model(bundle, adapters, dropout=0.0)
    np.testing.assert_allclose(_train_logits(no_dropout, ids, mask, types, key),
                               _train_logits(merged, ids, mask, types, key, False), atol=1e-5,
                               rtol=0)


def test_lora_dropout_changes_only_the_adapters_path(tiny):
    """In train mode, dropout on the adapters moves the logits; with B = 0 (no adapter
    contribution) the model is the base model for the same key, so its path is untouched."""
    merged, adapters, bundle = random_adapters(tiny("bert"), "all")
    ids, mask, types = _inputs(bundle.tokenizer, merged)
    types = types.astype(np.int32)
    key = jax.random.key(4)
    dropped = _train_logits(_unmerged_model(bundle, adapters, 0.5), ids, mask, types, key)
    plain = _train_logits(merged, ids, mask, types, key, False)
    assert np.abs(dropped - plain).max() > 1e-2
    zero_b = {k: np.zeros_like(v) if k.endswith(".lora_b") else v
              for k, v in adapters.params.items()}
    base = ModelDef(bundle.model).merge({**ModelDef.params_of(bundle.model),
                                         **{k: v for k, v in zero_b.items()
                                            if k.startswith("head.")}})
    unmerged = _unmerged_model(bundle, Adapters(adapters.spec, zero_b, adapters.base), 0.5)
    np.testing.assert_allclose(_train_logits(unmerged, ids, mask, types, key),
                               _train_logits(base, ids, mask, types, key, False), atol=1e-6,
                               rtol=0)


def test_lora_linear_is_peft_with_the_mask_its_key_gives():
    """h = x W + b + (alpha / r) * B(A(mask * x / (1 - p))), the mask recomputed here from the
    key (the adapters' stream: fold_in(key, ADAPTER_STREAM), then one key a call) and
    `layers.Dropout`'s threshold; the base term is the plain layer's, bit for bit; each call
    (ALBERT reuses layers) draws a new mask; outside `adapter_dropout` nothing is dropped."""
    from flax_sentiment.models.layers import counter_hash_bits
    from flax_sentiment.models.lora import LoraLinear

    rng = np.random.RandomState(0)
    base = nnx.Linear(48, 40, rngs=nnx.Rngs(0))
    a = rng.normal(0, 0.3, (48, 4)).astype(np.float32)
    b = rng.normal(0, 0.3, (4, 40)).astype(np.float32)
    x = rng.normal(0, 1, (3, 7, 48)).astype(np.float32)
    plain = np.asarray(base(x))
    layer = LoraLinear(base, a, b, scale=2.0, dropout=0.5)
    key = jax.random.key(11)
    with lora.adapter_dropout(jax.random.key_data(key)):
        first, second = np.asarray(layer(x)), np.asarray(layer(x))
    stream = jax.random.fold_in(key, lora.ADAPTER_STREAM)
    for i, got in enumerate((first, second)):
        keep = np.asarray(counter_hash_bits(jax.random.fold_in(stream, i), x.shape)) >= 2 ** 31
        assert 0.45 < keep.mean() < 0.55
        want = plain + 2.0 * (np.where(keep, x / 0.5, 0.0) @ a @ b)
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=0)
    assert np.abs(first - second).max() > 0.1  # a new mask each call
    np.testing.assert_allclose(np.asarray(layer(x)), plain + 2.0 * (x @ a @ b), atol=2e-5,
                               rtol=0)
    zero_b = LoraLinear(base, a, np.zeros_like(b), scale=2.0, dropout=0.5)
    with lora.adapter_dropout(jax.random.key_data(key)):
        np.testing.assert_array_equal(np.asarray(zero_b(x)), plain)


def _lora_trainer(model_dir, dropout):
    from flax_sentiment.config import base_config
    from flax_sentiment.training.steps import Steps

    bundle = load_pretrained_bundle(model_dir, num_labels=2)
    params = ModelDef.params_of(bundle.model)
    spec = LoraSpec(lora.resolve_targets("query_value", params), 4, 8.0, dropout)
    config = base_config()
    config.train.warmup_steps = 0
    config.train.learning_rate = 1e-2
    steps = Steps(ModelDef(bundle.model), 2, jax.sharding.Mesh(jax.devices()[:1], ("data",)),
                  train=config.train, total_steps=10, lora=spec,
                  frozen=lora.frozen_params(params))
    return steps, spec.init(params, 0)


def _three_steps(model_dir, dropout):
    steps, init = _lora_trainer(model_dir, dropout)
    rng = np.random.RandomState(0)
    state = steps.init_state(init)
    for _ in range(3):
        ids = rng.randint(1000, 30000, (16, 16)).astype(np.int32)
        batch = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.zeros_like(ids),
                 "labels": rng.randint(0, 2, 16).astype(np.int32),
                 "weights": np.ones(16, np.float32), "index": np.arange(16, dtype=np.int32)}
        state, metrics = steps.train_step(
            state, {k: jax.device_put(v, steps.data_sharding) for k, v in batch.items()})
        assert np.isfinite(metrics["loss"])
    return jax.device_get(state.params)


def test_lora_dropout_changes_training_and_is_reproducible(tiny):
    with_dropout, without = _three_steps(tiny("bert"), 0.5), _three_steps(tiny("bert"), 0.0)
    assert with_dropout.keys() == without.keys()
    # Every adapter: B from step 1 on (through A @ dropped x), A from step 3 (its first Adam
    # update, at step 2, is about lr * sign(gradient) in both); the head a little, later.
    for k in with_dropout:
        diff = np.abs(with_dropout[k] - without[k]).max()
        assert diff > (1e-3 if ".lora_" in k else 1e-7), k
    again = _three_steps(tiny("bert"), 0.5)
    for k in with_dropout:
        np.testing.assert_array_equal(again[k], with_dropout[k], err_msg=k)


def test_lora_dropout_run_resumes_exactly_and_exports_its_rate(lora_setup, tmp_path, caplog):
    """A run with LoRA dropout, stopped after step 4 and resumed in-process, ends where the
    uninterrupted run does; its PEFT adapter config carries lora_dropout."""
    import logging

    caplog.set_level(logging.INFO)
    from flax_sentiment.export.peft import adapter_config
    from flax_sentiment.training.loop import train_and_evaluate
    from flax_sentiment.workdir import load_run

    config = lora_config(lora_setup, **{"train.max_steps": 8, "eval.every_steps": 4,
                                        "checkpoint.every_steps": 4})
    config.model.lora.dropout = 0.1
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train_and_evaluate(config, full)
    assert "LoRA rank 4, alpha 8, dropout 0.1 on 4 layers" in caplog.text
    keep_until(full, resumed, 4)
    train_and_evaluate(config, resumed)
    assert_same_run(full, resumed, atol=1e-6)
    run = load_run(full)
    assert run.adapters.spec.dropout == 0.1
    assert adapter_config(run.adapters, run.arch)["lora_dropout"] == 0.1


# --------------------------------------------------------------------------------------------
# Bad input: one clear line, nothing written


@pytest.mark.parametrize("key,value,says", [
    ("rank", 0, "config model.lora.rank=0: must be an integer > 0"),
    ("rank", -2, "config model.lora.rank=-2: must be an integer > 0"),
    ("targets", "attention.qery", "config model.lora.targets='attention.qery': "
                                  "'attention.qery' names no linear layer"),
    ("dropout", 1.0, "config model.lora.dropout=1.0: must be in [0, 1)"),
    ("dropout", -0.1, "config model.lora.dropout=-0.1: must be in [0, 1)"),
])
def test_bad_lora_config_is_refused_before_anything_is_written(lora_setup, tmp_path, key,
                                                               value, says):
    from flax_sentiment.training.loop import train_and_evaluate

    config = lora_config(lora_setup)
    config.model.lora[key] = value
    with pytest.raises(UserError) as e:
        train_and_evaluate(config, tmp_path / "run")
    assert str(e.value).startswith(says) and "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_reinit_layers_with_lora_is_refused(lora_setup, tmp_path):
    from flax_sentiment.training.loop import train_and_evaluate

    config = lora_config(lora_setup, **{"model.reinit_layers": 1})
    with pytest.raises(UserError, match="model.reinit_layers=1: must be 0 with LoRA"):
        train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_adapter_export_of_a_full_fine_tuning_run_is_refused(tmp_path):
    from flax_sentiment.export.peft import export_adapter

    with pytest.raises(UserError, match="not trained with LoRA"):
        export_adapter(None, None, None, None, LABELS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_adapter_export_of_a_mean_pooled_run_is_refused(tiny, tmp_path):
    """PEFT puts the adapter on the base's own (first-token) class: a mean-pooled run's adapter
    would give other logits, so only its merged export is offered."""
    from flax_sentiment.export.peft import export_adapter

    model, adapters, bundle = random_adapters(tiny("bert"), "query_value")
    pooled = ModelDef(fs_classifier(model.config.replace(head_pooling="mean"))).merge(
        ModelDef.params_of(model))
    with pytest.raises(UserError, match="pools by 'mean' .* export the merged model"):
        export_adapter(pooled, adapters, bundle.arch, bundle.tokenizer, LABELS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def fs_classifier(cfg):
    from flax import nnx

    from flax_sentiment.models.classifier import SequenceClassifier

    return nnx.eval_shape(lambda: SequenceClassifier(cfg, rngs=nnx.Rngs(0)))


# --------------------------------------------------------------------------------------------
# Exact resume


LONG = ["--config.train.max_steps=40", "--config.eval.every_steps=20"]


def test_lora_run_resumes_exactly_after_sigkill(lora_setup, tmp_path):
    config = write_config(lora_config(lora_setup, **{"checkpoint.every_steps": 4}),
                          tmp_path / "config.py")
    killed, uninterrupted = tmp_path / "killed", tmp_path / "uninterrupted"
    args = ["scripts/train.py", f"--config={config}", *LONG]
    proc = subprocess.Popen([sys.executable, *args, f"--workdir={killed}"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu",
                                 "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "8").is_dir():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    steps = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
    assert 8 in steps and max(steps) < 40
    relaunch = run_script([*args, f"--workdir={killed}"])
    assert relaunch.returncode == 0, relaunch.stderr[-3000:]
    assert "resumed from" in relaunch.stderr and "LoRA rank 4" in relaunch.stderr
    full = run_script([*args, f"--workdir={uninterrupted}"])
    assert full.returncode == 0, full.stderr[-3000:]
    assert_same_run(uninterrupted, killed, atol=1e-6)


@pytest.mark.parametrize("option", ["remat", "scan"])
def test_lora_dropout_under_remat_or_scan_gives_the_same_gradients(tiny, option):
    """model.remat / model.scan_layers with LoRA dropout: the adapters' key stream crosses each
    layer's checkpoint (an argument of the rematerialised call) or the scan (in its carry), so
    gradients equal the plain model's, and the adapters' masks really apply (without them the
    gradients differ)."""
    merged, adapters, bundle = random_adapters(tiny("bert"), "all")
    ids, mask, types = _inputs(bundle.tokenizer, merged)
    types = types.astype(np.int32)
    key = jax.random.key(4)

    def grads(on, adapter_dropout=True):
        model = _unmerged_model(bundle, adapters, 0.5)
        setattr(model.encoder, option, on)
        model_def, params = ModelDef(model), ModelDef.params_of(model)

        def loss(p):
            context = (lora.adapter_dropout(jax.random.key_data(key)) if adapter_dropout
                       else contextlib.nullcontext())
            with context:
                logits = model_def.merge(p)(ids, mask, types, deterministic=False,
                                            dropout_rng=key)
            return jnp.sum(logits ** 2)

        return jax.jit(jax.grad(loss))(params)

    plain, other = grads(False), grads(True)
    for name, g in plain.items():
        np.testing.assert_allclose(other[name], g, rtol=1e-5,  # float32 sums reordered
                                   atol=max(1e-6, 1e-5 * float(np.abs(g).max())), err_msg=name)
    undropped = grads(True, adapter_dropout=False)
    assert max(float(np.abs(undropped[k] - plain[k]).max()) for k in plain) > 1e-3
