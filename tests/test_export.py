"""Export to Hugging Face PyTorch (with its parity check) and bucketed inference."""

import json
import os

import jax
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

import flax_sentiment as fs
from flax_sentiment.evaluation.predict import Classifier
from flax_sentiment.export import huggingface as export_mod
from flax_sentiment.export.huggingface import ParityError, export_hf, parity_check
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.weights import iter_params
from tests.conftest import MINILM
from tests.test_models import (
    _albert,
    _bert,
    _deberta,
    _electra,
    _modernbert,
    _mpnet,
    _roberta,
    _xlm_roberta,
)

# Tiny models over the real MiniLM (BERT uncased) vocabulary, so a real tokenizer drives them.
BIG_VOCAB = dict(vocab_size=30522, max_position_embeddings=128)
TINY = {
    "bert": (T.BertForSequenceClassification, lambda: _bert(**BIG_VOCAB, num_labels=3)),
    "roberta": (T.RobertaForSequenceClassification, lambda: _roberta(**BIG_VOCAB, num_labels=2)),
    "albert": (T.AlbertForSequenceClassification,
               lambda: _albert(**BIG_VOCAB, num_hidden_layers=2, num_labels=3)),
    "distilbert": (T.DistilBertForSequenceClassification,
                   lambda: T.DistilBertConfig(**BIG_VOCAB, dim=32, n_layers=2, n_heads=4,
                                              hidden_dim=37, num_labels=2)),
    "electra": (T.ElectraForSequenceClassification, lambda: _electra(**BIG_VOCAB, num_labels=3)),
    "xlm-roberta": (T.XLMRobertaForSequenceClassification,
                    lambda: _xlm_roberta(**BIG_VOCAB, num_labels=3)),
    "deberta-v2": (T.DebertaV2ForSequenceClassification,
                   lambda: _deberta(**BIG_VOCAB, num_labels=3)),
    "modernbert": (T.ModernBertForSequenceClassification,
                   lambda: _modernbert(**BIG_VOCAB, num_labels=2)),
    "mpnet": (T.MPNetForSequenceClassification, lambda: _mpnet(**BIG_VOCAB, num_labels=3)),
}
LABELS = {2: ["negative", "positive"], 3: ["negative", "neutral", "positive"]}

TEXTS = [
    "Loved it!",
    "the plot is nothing but boilerplate cliches from start to finish, and the script assumes "
    "that not only would subtlety be lost on the target audience",
    "meh",
    "A gorgeous, witty, seductive movie.",
    "I wanted to like this more than I did, honestly.",
    "Worst. Purchase. Ever.",
    "It's a charming and often affecting journey through a family that is, at heart, kind.",
    "",
    "Fine, I guess?",
    "Five stars without a doubt; the cast is superb and the ending lands perfectly.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return fs.load_tokenizer(MINILM)


def _perturb(model, seed=0, scale=0.3):
    """Move every head parameter (and a few encoder ones) off its initial value."""
    rng = np.random.RandomState(seed)
    encoder_hits = 0
    for path, param in iter_params(model):
        head = path.startswith("head.")
        if head or (encoder_hits < 4 and path.endswith(("kernel", "embedding", "scale"))):
            encoder_hits += not head
            value = np.asarray(param[...])
            param[...] = value + rng.normal(0, scale, value.shape).astype(value.dtype)


def _tiny_bundle(arch, folder, seed=0):
    cls, make = TINY[arch]
    torch.manual_seed(seed)
    cls(make()).save_pretrained(folder)
    bundle = fs.load_pretrained_bundle(folder)
    _perturb(bundle.model, seed)
    return bundle


def _torch_logits(folder, texts):
    model = T.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    tok = T.AutoTokenizer.from_pretrained(str(folder))
    enc = tok(texts, padding=True, return_tensors="pt")
    if model.config.model_type in ("distilbert", "roberta", "xlm-roberta", "modernbert",
                                   "mpnet"):
        enc.pop("token_type_ids", None)
    with torch.no_grad():
        return model(**enc).logits.numpy(), {k: v.numpy() for k, v in enc.items()}


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("arch", sorted(TINY))
def test_export_matches_transformers_and_pipeline(arch, tmp_path, tokenizer):
    bundle = _tiny_bundle(arch, tmp_path / "src")
    labels = LABELS[bundle.config.num_labels]
    out = tmp_path / "out"
    report = export_hf(bundle.model, bundle.arch, bundle.hf_config, tokenizer, labels, out)
    print(f"{arch}: parity max_abs_diff={report['max_abs_diff']:.2e}")
    assert report["max_abs_diff"] <= 1e-4 and report["num_labels"] == len(labels)
    assert _siblings(out) == ["src"]  # no temp folder left behind

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [bundle.arch.hf_class]
    assert config["id2label"] == {str(i): n for i, n in enumerate(labels)}
    assert "_name_or_path" not in config

    # Independently of the built-in check: padded batch of varied lengths, float32.
    theirs, enc = _torch_logits(out, TEXTS)
    ours = bundle.model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"))
    assert np.abs(np.asarray(ours) - theirs).max() <= 1e-4

    pipe = T.pipeline("text-classification", model=str(out), top_k=None)
    expected = [{d["label"]: d["score"] for d in row} for row in pipe(TEXTS)]
    clf = Classifier.from_pretrained(out, buckets=(16, 64), batch_size=8)
    got = clf.predict(TEXTS)
    for want, have in zip(expected, got, strict=True):
        assert have["label"] == max(want, key=want.get)
        assert set(have["probabilities"]) == set(labels)
        for name, p in want.items():
            assert abs(have["probabilities"][name] - p) <= 1e-5


@pytest.mark.parametrize("arch", sorted(TINY))
def test_mean_pooled_export_matches_transformers(arch, tmp_path, tokenizer):
    """model.pooling='mean' on every architecture: transformers' own layers (our modeling file
    beside them where its class reads the first token) reproduce our logits."""
    cls, make = TINY[arch]
    torch.manual_seed(0)
    cls(make()).save_pretrained(tmp_path / "src")
    bundle = fs.load_pretrained_bundle(tmp_path / "src", pooling="mean")
    assert bundle.config.head_pooling == "mean"
    _perturb(bundle.model)
    labels = LABELS[bundle.config.num_labels]
    out = tmp_path / "out"
    report = export_hf(bundle.model, bundle.arch, bundle.hf_config, tokenizer, labels, out)
    assert report["max_abs_diff"] <= 1e-4
    config = json.loads((out / "config.json").read_text())
    assert config["classifier_pooling"] == "mean"
    native = arch == "modernbert"
    assert config["architectures"] == [("" if native else "MeanPooled") + bundle.arch.hf_class]
    assert (out / "modeling_mean_pooling.py").is_file() != native
    assert ("auto_map" in config) != native

    model = T.AutoModelForSequenceClassification.from_pretrained(
        str(out), trust_remote_code=True).eval()
    enc = tokenizer(TEXTS, padding=True, return_tensors="pt")
    if arch in ("distilbert", "roberta", "xlm-roberta", "modernbert", "mpnet"):
        enc.pop("token_type_ids")
    with torch.no_grad():
        theirs = model(**enc).logits.numpy()
    args = (enc["input_ids"].numpy(), enc["attention_mask"].numpy(),
            None if "token_type_ids" not in enc else enc["token_type_ids"].numpy())
    assert np.abs(np.asarray(bundle.model(*args)) - theirs).max() <= 1e-4
    # The first token's reading of the same weights is another model: the check can fail.
    first = SequenceClassifier(bundle.config.replace(head_pooling="cls"), rngs=nnx.Rngs(0))
    nnx.update(first, nnx.state(bundle.model, nnx.Param))
    assert np.abs(np.asarray(first(*args)) - theirs).max() > 1e-2
    # Our loader reads the export back as mean-pooled (its config.json says so).
    again = fs.load_pretrained_bundle(out)
    assert again.config.head_pooling == "mean"
    assert np.abs(np.asarray(again.model(*args)) - theirs).max() <= 1e-4


def test_mean_pooling_is_the_masked_mean(tokenizer, tmp_path):
    """BERT's head over numpy's mean of the encoder output over the real tokens."""
    cls, make = TINY["bert"]
    torch.manual_seed(0)
    cls(make()).save_pretrained(tmp_path)
    bundle = fs.load_pretrained_bundle(tmp_path, pooling="mean")
    _perturb(bundle.model)
    enc = tokenizer(TEXTS, padding=True, return_tensors="np")
    ids, mask, types = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    hidden = np.asarray(bundle.model.encoder(ids, mask, types, deterministic=True, rngs=None))
    pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
    head = {k: np.asarray(v[...]) for k, v in iter_params(bundle.model) if k.startswith("head.")}
    x = np.tanh(pooled @ head["head.dense.kernel"] + head["head.dense.bias"])
    want = x @ head["head.out.kernel"] + head["head.out.bias"]
    np.testing.assert_allclose(np.asarray(bundle.model(ids, mask, types)), want, atol=1e-5)


def test_unknown_modeling_code_is_not_run(tiny_bert, tokenizer, tmp_path):
    out = tmp_path / "out"
    export_hf(tiny_bert.model, tiny_bert.arch, tiny_bert.hf_config, tokenizer,
              LABELS[tiny_bert.model.config.num_labels], out)
    config = json.loads((out / "config.json").read_text())
    config["auto_map"] = {"AutoModelForSequenceClassification": "evil.Model"}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(ParityError, match="not flax-sentiment's modeling_mean_pooling.py"):
        export_mod.load_torch_model(out)


@pytest.fixture(scope="module")
def minilm():
    bundle = fs.load_pretrained_bundle(MINILM, num_labels=2)
    assert bundle.fresh_head
    _perturb(bundle.model, seed=1, scale=0.1)
    return bundle


def test_real_minilm_round_trip(minilm, tmp_path):
    out = tmp_path / "minilm"
    report = export_hf(minilm.model, minilm.arch, minilm.hf_config, minilm.tokenizer,
                       LABELS[2], out)
    print(f"minilm float32: parity max_abs_diff={report['max_abs_diff']:.2e}")
    assert report["max_abs_diff"] <= 1e-4
    # JAX -> PyTorch folder -> JAX: the same weights, so the same logits.
    back = fs.load_pretrained_bundle(out)
    assert not back.fresh_head and back.label_names == LABELS[2]
    enc = back.tokenizer(TEXTS, padding=True, return_tensors="np")
    args = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    np.testing.assert_allclose(np.asarray(back.model(*args)), np.asarray(minilm.model(*args)),
                               atol=1e-6, rtol=0)
    # The parity helper on its own, with the original tokenizer.
    assert parity_check(minilm.model, out, minilm.tokenizer, TEXTS[:3]) <= 1e-4


def test_real_minilm_bfloat16(minilm, tmp_path):
    report = export_hf(minilm.model, minilm.arch, minilm.hf_config, minilm.tokenizer,
                       LABELS[2], tmp_path / "bf16", dtype="bfloat16")
    print(f"minilm bfloat16: max_abs_diff={report['max_abs_diff']:.3g} "
          f"(tolerance {report['tolerance']:.3g})")
    assert 0 < report["max_abs_diff"] <= report["tolerance"]
    assert report["weights_bytes"] < 0.55 * 90_000_000


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return _tiny_bundle("bert", tmp_path_factory.mktemp("tiny") / "src", seed=3)


def _export(bundle, tokenizer, out, **kw):
    return export_hf(bundle.model, bundle.arch, bundle.hf_config, tokenizer,
                     LABELS[bundle.config.num_labels], out, **kw)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_16bit_export(dtype, tiny_bert, tokenizer, tmp_path):
    full = _export(tiny_bert, tokenizer, tmp_path / "f32")
    half = _export(tiny_bert, tokenizer, tmp_path / dtype, dtype=dtype)
    print(f"tiny bert {dtype}: max_abs_diff={half['max_abs_diff']:.3g} "
          f"(tolerance {half['tolerance']:.3g})")
    assert half["max_abs_diff"] <= half["tolerance"] and half["tolerance"] > 1e-4
    assert half["weights_bytes"] < 0.55 * full["weights_bytes"]
    model = T.AutoModelForSequenceClassification.from_pretrained(str(tmp_path / dtype))
    assert model.dtype == getattr(torch, dtype)  # config.json says so; "auto" honours it


def test_bfloat16_compute_model_is_checked_in_float32(tiny_bert, tokenizer, tmp_path):
    """A model trained with bfloat16 compute exports float32 weights that PyTorch matches."""
    model = fs.load_pretrained(tiny_bert.folder, dtype="bfloat16")
    nnx.update(model, nnx.state(tiny_bert.model, nnx.Param))
    report = export_hf(model, tiny_bert.arch, tiny_bert.hf_config, tokenizer, LABELS[3],
                       tmp_path / "out")
    assert report["max_abs_diff"] <= 1e-4


def test_refuses_non_empty_output(tiny_bert, tokenizer, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(fs.UserError, match="not empty"):
        _export(tiny_bert, tokenizer, out)
    assert os.listdir(out) == ["keep.txt"] and _siblings(out) == []
    # An empty folder is fine; overwrite=True replaces a full one.
    (tmp_path / "empty").mkdir()
    _export(tiny_bert, tokenizer, tmp_path / "empty")
    report = _export(tiny_bert, tokenizer, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert report["max_abs_diff"] <= 1e-4 and _siblings(out) == ["empty"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(fs.UserError, match="not a folder"):
        _export(tiny_bert, tokenizer, tmp_path / "file", overwrite=True)


def _corrupt(monkeypatch, change):
    real = export_mod.export_state_dict

    def corrupted(model, arch, dtype=np.float32):
        state = real(model, arch, dtype)
        change(state)
        return state

    monkeypatch.setattr(export_mod, "export_state_dict", corrupted)


def _scale_classifier(state):
    state["classifier.weight"] = state["classifier.weight"] * 1.01


@pytest.mark.parametrize("how,match", [
    ("weight", "differ from ours"),
    ("missing", "did not load the export cleanly"),
    ("unexpected", "did not load the export cleanly"),
    ("tolerance", "differ from ours"),
])
def test_failed_check_leaves_nothing(how, match, tiny_bert, tokenizer, tmp_path, monkeypatch):
    kw = {}
    if how == "weight":
        _corrupt(monkeypatch, _scale_classifier)
    elif how == "missing":
        _corrupt(monkeypatch, lambda s: s.pop("bert.encoder.layer.1.output.dense.bias"))
    elif how == "unexpected":
        _corrupt(monkeypatch, lambda s: s.update({"bert.extra.weight": np.zeros(3, np.float32)}))
    else:
        kw["tolerance"] = -1.0
    with pytest.raises(ParityError, match=match):
        _export(tiny_bert, tokenizer, tmp_path / "new", **kw)
    assert os.listdir(tmp_path) == []  # no output, no temp folder
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ParityError):
        _export(tiny_bert, tokenizer, existing, overwrite=True, **kw)
    assert os.listdir(existing) == ["keep.txt"] and os.listdir(tmp_path) == ["existing"]


def test_bad_arguments(tiny_bert, tokenizer, tmp_path):
    with pytest.raises(fs.UserError, match="label names"):
        export_hf(tiny_bert.model, tiny_bert.arch, tiny_bert.hf_config, tokenizer, ["a", "b"],
                  tmp_path / "out")
    with pytest.raises(fs.UserError, match="dtype 'int8'"):
        _export(tiny_bert, tokenizer, tmp_path / "out", dtype="int8")
    assert os.listdir(tmp_path) == []


def test_classifier_buckets_order_and_compiles(tiny_bert, tokenizer):
    model = tiny_bert.model
    clf = Classifier(model, tokenizer, LABELS[3], max_length=48, buckets=(8, 16, 32),
                     batch_size=4)
    assert clf.buckets == [8, 16, 32, 48]
    assert clf.predict([]) == []
    texts = TEXTS + [TEXTS[1] * 3]  # one longer than max_length: truncated
    results = clf.predict(texts)
    assert len(results) == len(texts)
    lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=48)["input_ids"]]
    used = {min(b for b in clf.buckets if b >= n) for n in lengths}
    assert len(clf.compiled_shapes) == len(used) < len(texts)
    assert {shape[0] for shape in clf.compiled_shapes} == {4}
    # The reference: one padded batch in input order, straight through the model.
    enc = tokenizer(texts, truncation=True, max_length=48, padding=True, return_tensors="np")
    reference = np.asarray(jax.nn.softmax(model(enc["input_ids"], enc["attention_mask"],
                                                enc["token_type_ids"])))
    for result, probs in zip(results, reference, strict=True):
        got = np.array([result["probabilities"][n] for n in LABELS[3]])
        np.testing.assert_allclose(got, probs, atol=1e-5)
        assert abs(sum(result["probabilities"].values()) - 1) < 1e-5
        assert result["label"] == LABELS[3][int(probs.argmax())]
        assert result["score"] == max(result["probabilities"].values())
    compiled = clf.compiled_shapes
    clf.predict(list(reversed(texts)))
    assert clf.compiled_shapes == compiled  # no new compiles for the same buckets
    with pytest.raises(fs.UserError, match="list of strings"):
        clf.predict(["fine", None])


def test_classifier_from_pretrained_needs_a_head(tmp_path):
    T.BertModel(_bert()).save_pretrained(tmp_path)  # an encoder without a classifier
    with pytest.raises(fs.UserError, match="no sequence-classification head"):
        Classifier.from_pretrained(tmp_path)


# --- from a training workdir, per architecture ---------------------------------------------


@pytest.fixture(scope="module")
def sst2_rows(tmp_path_factory, shared_data):
    from tests.helpers import sst2_subset

    return sst2_subset(tmp_path_factory.mktemp("sst2"), 64, 48)


# Trained, in the default suite: BERT (with the whole-split comparison) and the newest
# architecture; the others are `slow`, their export parity is the default suite's
# test_export_matches_transformers_and_pipeline (perturbed weights, no training).
@pytest.mark.parametrize("model_type", ["bert", "mpnet", *(
    pytest.param(a, marks=pytest.mark.slow) for a in ("roberta", "albert", "distilbert",
                                                      "electra", "xlm-roberta", "deberta-v2",
                                                      "modernbert"))])
def test_trained_workdir_exports_with_parity(model_type, sst2_rows, tmp_path):
    """Train a few steps (the head leaves its initial values), export, load in transformers."""
    from flax_sentiment.training.loop import train_and_evaluate
    from flax_sentiment.workdir import load_run
    from tests.helpers import tiny_bert, tiny_config

    model_dir = tiny_bert(tmp_path / "model", model_type=model_type)
    config = tiny_config(model_dir, sst2_rows, **{"train.max_steps": 3, "eval.every_steps": 0,
                                                  "checkpoint.every_steps": 0,
                                                  "train.learning_rate": 1e-2})
    workdir = tmp_path / "run"
    train_and_evaluate(config, workdir)
    run = load_run(workdir)
    initial = fs.load_pretrained_bundle(model_dir, num_labels=2)
    assert not np.allclose(run.model.head.out.kernel[...], initial.model.head.out.kernel[...])

    out = tmp_path / "export"
    report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names, out)
    assert report["max_abs_diff"] <= 1e-4
    torch_model = T.AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert torch_model.config.id2label == {0: "negative", 1: "positive"}
    assert type(torch_model).__name__ == run.arch.hf_class
    tok = T.AutoTokenizer.from_pretrained(out)
    texts = export_mod.PARITY_TEXTS
    enc = tok(texts, padding=True, return_tensors="np")
    with torch.no_grad():
        ref = torch_model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    ours = np.asarray(run.model(enc["input_ids"], enc["attention_mask"],
                                enc.get("token_type_ids")))
    assert np.abs(ours - ref).max() <= 1e-4
    pipe = T.pipeline("text-classification", model=str(out), tokenizer=str(out))
    ours_pred = Classifier.from_workdir(workdir).predict(texts)
    assert [p["label"] for p in pipe(texts)] == [p["label"] for p in ours_pred]
    if model_type == "bert":  # the whole validation split through both frameworks
        from flax_sentiment.data.splits import load_split, pad_token_id
        from flax_sentiment.export.huggingface import compare_on_split

        split = load_split(run.config.data, run.tokenizer, "validation")
        result = compare_on_split(run.model, out, split, pad_id=pad_token_id(run.tokenizer))
        assert result["num_examples"] == 48
        assert result["jax_accuracy"] == result["torch_accuracy"]
        assert result["prediction_agreement"] == 1.0 and result["max_abs_logit_diff"] <= 1e-4
        jax_eval = json.loads((workdir / "eval_results.json").read_text())
        assert result["jax_accuracy"] == pytest.approx(jax_eval["accuracy"])


def test_export_script_refusals(tmp_path):
    from tests.helpers import run_script

    (tmp_path / "empty_workdir").mkdir()
    result = run_script(["scripts/export.py", f"--workdir={tmp_path / 'empty_workdir'}",
                         f"--output={tmp_path / 'out'}"])
    assert result.returncode == 2 and "no checkpoints folder" in result.stderr
    assert not (tmp_path / "out").exists()


def test_export_cuts_long_texts_where_training_did(sst2_rows, tmp_path):
    """A run trained at 48 tokens with head+tail truncation: its export records both, its
    tokenizer's model_max_length is 48 (so truncation=True in transformers cuts there), and
    predicting from the folder equals predicting from the run on texts longer than 128
    tokens; the model card says how texts were cut."""
    from flax_sentiment.export.card import model_card
    from flax_sentiment.export.huggingface import TOKENIZATION_KEY, run_tokenization
    from flax_sentiment.training.loop import train_and_evaluate
    from flax_sentiment.workdir import load_run
    from tests.helpers import tiny_bert, tiny_config

    model_dir = tiny_bert(tmp_path / "model")
    encoder = T.BertModel.from_pretrained(model_dir)
    torch.manual_seed(0)
    with torch.no_grad():  # weights large enough that every token moves the logits
        for p in encoder.parameters():
            if p.ndim == 2:
                p.normal_(0, 0.3)
    encoder.save_pretrained(model_dir)
    config = tiny_config(model_dir, sst2_rows, **{
        "train.max_steps": 2, "eval.every_steps": 0, "checkpoint.every_steps": 0,
        "train.learning_rate": 1e-2})
    config.data.max_length, config.data.truncation, config.data.head_tokens = 48, "head_tail", 16
    train_and_evaluate(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    out = tmp_path / "export"
    export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names, out,
              tokenization=run_tokenization(run.config.data))
    saved = json.loads((out / "config.json").read_text())[TOKENIZATION_KEY]
    assert saved == {"max_length": 48, "truncation": "head_tail", "head_tokens": 16}
    tok = T.AutoTokenizer.from_pretrained(out)
    assert tok.model_max_length == 48 and run.tokenizer.model_max_length == 512
    long = [" ".join(export_mod.PARITY_TEXTS * k) for k in (2, 3)] + ["Terrible."]
    assert min(len(tok(t)["input_ids"]) for t in long[:2]) > 128
    ours = Classifier.from_workdir(tmp_path / "run").predict_proba(long)
    exported = Classifier.from_pretrained(out)
    assert (exported.max_length, exported.truncation, exported.head_tokens) == (48, "head_tail",
                                                                                16)
    np.testing.assert_allclose(exported.predict_proba(long), ours, atol=1e-5)
    at_128 = Classifier.from_pretrained(out, max_length=128, truncation="head")
    assert np.abs(at_128.predict_proba(long[:2]) - ours[:2]).max() > 1e-4  # the check can fail
    # transformers cuts the head at the training length (head+tail is ours alone).
    pipe = T.pipeline("text-classification", model=str(out), top_k=None)
    got = pipe(long, truncation=True)
    head = Classifier.from_pretrained(out, truncation="head").predict_proba(long)
    for row, expected in zip(got, head, strict=True):
        by_name = {r["label"]: r["score"] for r in row}
        np.testing.assert_allclose([by_name[n] for n in run.label_names], expected, atol=1e-4)
    card = model_card(run, [], model_name="export")
    assert "cut to 48 tokens" in card and "its first 16 and last tokens" in card
