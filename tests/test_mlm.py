"""Masked-LM training: every architecture's MLM head and loss against transformers'
`*ForMaskedLM`, the masking statistics on real tweets, the corpus rows, the export's parity, a
run's exact resume after SIGKILL, and fine-tuning onward from a workdir (head kept, permuted by
label name, or drawn fresh)."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as T

from flax_sentiment.data import corpus as corpus_lib
from flax_sentiment.data.masking import Masker, max_predictions, word_continuations
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.mlm import load_masked_lm
from flax_sentiment.models.pretrained import load_tokenizer
from flax_sentiment.training.steps import make_mlm_model_step, mlm_metrics
from tests.conftest import MINILM, REPO, SHARED_DATA
from tests.helpers import final_params, run_script, tiny_bert, write_config
from tests.test_models import (
    _albert,
    _bert,
    _deberta,
    _distilbert,
    _electra,
    _inputs,
    _modernbert,
    _mpnet,
    _roberta,
    _xlm_roberta,
)

HEADS = {
    "bert": (T.BertForMaskedLM, _bert(hidden_act="gelu_new")),
    "roberta": (T.RobertaForMaskedLM, _roberta()),
    "xlm-roberta": (T.XLMRobertaForMaskedLM, _xlm_roberta()),
    "albert": (T.AlbertForMaskedLM, _albert()),
    "distilbert": (T.DistilBertForMaskedLM, _distilbert(activation="relu")),
    "electra": (T.ElectraForMaskedLM, _electra()),
    "deberta-v2": (T.DebertaV2ForMaskedLM, _deberta()),
    "modernbert": (T.ModernBertForMaskedLM, _modernbert(classifier_activation="silu")),
    "mpnet": (T.MPNetForMaskedLM, _mpnet()),
    "camembert": (T.CamembertForMaskedLM, T.CamembertConfig(**{
        k: v for k, v in _roberta().to_dict().items()
        if k not in ("model_type", "architectures", "transformers_version")})),
}


def _randomise_mlm(model, vocab_size, seed=0):
    """tests.test_models._randomise's sensitive scale, for a model whose decoder is tied to the
    word embeddings: linear layers std 1/sqrt(fan_in), random norms and biases (the output bias
    too), the embeddings at std 0.3 so the tied decoder's logits are O(1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                if m.weight.shape[0] != vocab_size:  # the decoder is the embeddings
                    m.weight.normal_(0, m.in_features ** -0.5, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0, 0.2, generator=gen)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.3, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0, 0.3, generator=gen)
            elif isinstance(m, torch.nn.Embedding):
                std = 0.3 if m.weight.shape[0] == vocab_size else 0.02
                m.weight.normal_(0, std, generator=gen)
        for name, p in model.named_parameters():
            if name.endswith("bias") and p.shape == (vocab_size,):
                p.normal_(0, 0.2, generator=gen)


@pytest.fixture(scope="module")
def mlm_models(tmp_path_factory):
    cache = {}

    def get(case):
        if case not in cache:
            cls, cfg = HEADS[case]
            folder = tmp_path_factory.mktemp(case)
            torch.manual_seed(0)
            ref = cls(cfg).eval()
            _randomise_mlm(ref, cfg.vocab_size)
            ref.save_pretrained(folder)
            cache[case] = (ref, load_masked_lm(folder), folder)
        return cache[case]

    return get


def _masked_batch(cfg, seed=0):
    """Inputs with padding, ~15% of the real tokens chosen as targets (some replaced by a mask
    id): our batch fields and transformers' labels (-100 elsewhere)."""
    ids, mask, _ = _inputs(cfg, length=13, seed=seed)
    rng = np.random.default_rng(seed)
    P = 4
    targets = np.zeros((len(ids), P), np.int32)
    weights = np.zeros((len(ids), P), np.float32)
    labels = np.full(ids.shape, -100, np.int64)
    masked = ids.copy()
    for r in range(len(ids)):
        real = np.flatnonzero(mask[r])
        chosen = np.sort(rng.choice(real, min(P, max(1, len(real) // 4)), replace=False))
        targets[r, :len(chosen)], weights[r, :len(chosen)] = chosen, 1.0
        labels[r, chosen] = ids[r, chosen]
        masked[r, chosen[::2]] = 4  # some become "[MASK]", the others stay (the 10% case)
    return masked, mask, targets, weights, labels


@pytest.mark.parametrize("case", sorted(HEADS))
def test_mlm_logits_and_loss_equal_transformers(case, mlm_models):
    ref, ours, _ = mlm_models(case)
    cfg = HEADS[case][1]
    assert not ours.fresh_head and ours.arch.hf_class == type(ref).__name__
    ids, mask, targets, weights, labels = _masked_batch(cfg)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                  labels=torch.tensor(labels))
    theirs = out.logits.numpy()
    logits = np.asarray(ours.model(ids, mask))
    real = mask.astype(bool)
    assert np.abs(theirs).max() > 3  # the sensitive scale: logits O(1), not O(0.01)
    np.testing.assert_allclose(logits[real], theirs[real], atol=2e-5 * np.abs(theirs).max())
    # The train/eval objective on the gathered targets: transformers' mean loss.
    step = make_mlm_model_step(ModelDef(ours.model))
    target_ids = np.take_along_axis(ids, targets, 1)
    target_ids = np.where(weights > 0, np.take_along_axis(np.where(labels >= 0, labels, 0),
                                                          targets, 1), 0)
    counts = step(ModelDef.params_of(ours.model),
                  {"input_ids": ids, "attention_mask": mask, "targets": targets,
                   "target_ids": target_ids.astype(np.int32), "target_weights": weights})
    metrics = mlm_metrics(counts)
    assert metrics["targets"] == int((labels >= 0).sum())
    assert metrics["loss"] == pytest.approx(float(out.loss), rel=1e-5)


def test_mlm_breakages_move_the_logits(mlm_models):
    """The sensitive scale catches a wrong head activation or norm epsilon."""
    from flax import nnx

    from flax_sentiment.models.mlm import MaskedLM

    _, ours, _ = mlm_models("roberta")
    ids, mask, _ = _inputs(HEADS["roberta"][1], length=13)
    base = np.asarray(ours.model(ids, mask))
    for change in (dict(layer_norm_eps=1e-5), dict(model_type="bert", hidden_act="relu")):
        broken = MaskedLM(ours.config.replace(**change), rngs=nnx.Rngs(0))
        nnx.update(broken, nnx.state(ours.model, nnx.Param))
        # past the parity test's tolerance (2e-5 of the largest logit)
        assert np.abs(np.asarray(broken(ids, mask)) - base).max() > 2e-5 * np.abs(base).max()


def test_base_checkpoint_gets_a_fresh_head_the_architecture_way(tmp_path):
    folder = tiny_bert(tmp_path / "base")
    bundle = load_masked_lm(folder, seed=3)
    assert bundle.fresh_head
    params = ModelDef.params_of(bundle.model)
    assert np.all(np.asarray(params["mlm.bias"]) == 0)
    assert np.all(np.asarray(params["mlm.norm.scale"]) == 1)
    assert np.std(np.asarray(params["mlm.dense.kernel"])) == pytest.approx(0.02, rel=0.1)


def test_an_untied_decoder_is_refused(tmp_path):
    folder = tiny_bert(tmp_path / "base")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(UserError, match="config.json: tie_word_embeddings=False"):
        load_masked_lm(folder)


# --- masking ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tweet_rows():
    import csv

    with open(SHARED_DATA / "tweet_eval_sentiment" / "validation.tsv", newline="") as f:
        texts = [row[0] for row in list(csv.reader(f, delimiter="\t"))[1:801]]
    tokenizer = load_tokenizer(MINILM)
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=64,
                    return_tensors="np")
    return tokenizer, enc["input_ids"].astype(np.int32)


def test_masking_statistics_on_real_tweets(tweet_rows):
    tokenizer, ids = tweet_rows
    masker = Masker.from_tokenizer(tokenizer)
    P = max_predictions(64, 0.15)
    out = masker.mask_rows(ids, [(0, 0, i) for i in range(len(ids))], P)
    special = np.isin(ids, tokenizer.all_special_ids)
    chosen = np.zeros(ids.shape, bool)
    rows = np.repeat(np.arange(len(ids))[:, None], P, 1)
    real = out["target_weights"] > 0
    chosen[rows[real], out["targets"][real]] = True
    assert not (chosen & special).any()  # [CLS], [SEP] and padding never masked
    n = (~special).sum(1)
    np.testing.assert_array_equal(chosen.sum(1), np.maximum(1, np.round(0.15 * n)))
    assert chosen.sum() / (~special).sum() == pytest.approx(0.15, abs=0.01)
    np.testing.assert_array_equal(out["target_ids"][real], ids[rows[real], out["targets"][real]])
    after = out["input_ids"][chosen]
    before = ids[chosen]
    frac_mask = np.mean(after == tokenizer.mask_token_id)
    frac_same = np.mean(after == before)
    assert frac_mask == pytest.approx(0.8, abs=0.03)
    assert frac_same == pytest.approx(0.1, abs=0.03)  # kept (a random draw rarely hits it)
    assert 1 - frac_mask - frac_same == pytest.approx(0.1, abs=0.03)
    np.testing.assert_array_equal(out["input_ids"][~chosen], ids[~chosen])  # nothing else
    again = masker.mask_rows(ids, [(0, 0, i) for i in range(len(ids))], P)
    np.testing.assert_array_equal(again["input_ids"], out["input_ids"])  # seeded per row
    other = masker.mask_rows(ids, [(0, 1, i) for i in range(len(ids))], P)
    assert not np.array_equal(other["targets"], out["targets"])  # dynamic: per epoch


def test_whole_words_are_masked_together(tweet_rows):
    tokenizer, ids = tweet_rows
    masker = Masker.from_tokenizer(tokenizer, whole_word=True)
    cont = word_continuations(tokenizer)
    assert cont[tokenizer.convert_tokens_to_ids("##ing")] and not cont[
        tokenizer.convert_tokens_to_ids("the")]
    P = max_predictions(64, 0.15)
    out = masker.mask_rows(ids, [(5, 0, i) for i in range(len(ids))], P)
    words = masker.word_ids(ids, masker.maskable(ids))
    multi = 0
    for r in range(len(ids)):
        sel = out["targets"][r][out["target_weights"][r] > 0]
        picked = set(words[r, sel].tolist())
        for w in picked:
            members = np.flatnonzero(words[r] == w)
            assert set(members) <= set(sel.tolist()), (r, w)  # all of the word's tokens
            multi += len(members) > 1
        n = int(masker.maskable(ids[r:r + 1]).sum())
        assert len(sel) <= max(1, round(0.15 * n))
    assert multi > 50  # words of several tokens were chosen, whole
    total = (out["target_weights"] > 0).sum() / masker.maskable(ids).sum()
    assert total == pytest.approx(0.15, abs=0.02)


# --- corpus rows --------------------------------------------------------------------------


def test_corpus_rows_chunk_and_pack(tmp_path, tweet_rows):
    tokenizer, _ = tweet_rows
    texts = ["a short tweet", "another one here about the match tonight", "x" * 5,
             " ".join(["word"] * 70)]
    (tmp_path / "t.txt").write_text("\n".join(texts) + "\n\n")
    ds = corpus_lib.load_texts(corpus_lib.corpus_files([str(tmp_path)]), text_column="text")
    assert list(ds["text"]) == texts  # the empty line dropped
    enc = tokenizer(texts)["input_ids"]
    chunk = corpus_lib.build_rows(ds, tokenizer, length=16, layout="chunk", pad_id=0)
    flat = [t for seq in enc for t in seq]
    assert len(chunk) == len(flat) // 16
    np.testing.assert_array_equal(np.asarray(chunk[:]["input_ids"]).ravel(),
                                  flat[: len(chunk) * 16])
    pack = corpus_lib.build_rows(ds, tokenizer, length=16, layout="pack", pad_id=0)
    rows = pack[:]
    ids, seg = np.asarray(rows["input_ids"]), np.asarray(rows["segment_ids"])
    pieces = sorted(tuple(ids[r][seg[r] == s]) for r in range(len(pack))
                    for s in range(1, seg[r].max() + 1))
    want = sorted(tuple(seq[i:i + 16]) for seq in enc for i in range(0, len(seq), 16))
    assert pieces == want  # every text (or its row-sized pieces) exactly once
    assert np.all(ids[seg == 0] == 0)
    fields = corpus_lib._fields(ids, seg, 0, packed=True)
    r = int(np.argmax(seg.max(1)))  # a row holding several texts: positions restart
    starts = np.flatnonzero(np.diff(np.concatenate([[0], seg[r]])) != 0)
    assert all(fields["positions"][r][s] == 0 for s in starts if seg[r][s] > 0)


def test_corpus_refusals(tmp_path):
    from flax_sentiment.errors import UserError

    (tmp_path / "a.csv").write_text("review,stars\nnice,5\n")
    with pytest.raises(UserError, match=r"a\.csv: no column 'text' .*\['review', 'stars'\]"):
        corpus_lib.load_texts([tmp_path / "a.csv"], text_column="text")
    (tmp_path / "b.doc").write_text("x")
    with pytest.raises(UserError, match=r"b\.doc: unsupported file type"):
        corpus_lib.corpus_files([str(tmp_path / "b.doc")])
    with pytest.raises(UserError, match="no such file"):
        corpus_lib.corpus_files([str(tmp_path / "missing")])


# --- runs: resume, export, fine-tuning onward ---------------------------------------------


def _mlm_config(model, corpus, **over):
    from flax_sentiment.config import base_config

    c = base_config()
    c.model.name_or_path = str(model)
    c.mlm.corpus = (str(corpus),)
    c.mlm.eval_size = 40
    c.data.max_length = 32
    c.train.batch_size = 8
    c.train.max_steps = 16
    c.train.learning_rate = 2e-2
    c.train.warmup_steps = 2
    c.train.log_every_steps = 2
    c.eval.every_steps = 8
    c.eval.batch_size = 16
    c.eval.metric = "loss"
    c.eval.metric_mode = "min"
    c.checkpoint.every_steps = 4
    for k, v in over.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


@pytest.fixture(scope="module")
def mlm_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm_run")
    model = tiny_bert(root / "model")
    corpus = root / "tweets.tsv"
    with open(SHARED_DATA / "tweet_eval_sentiment" / "test.tsv") as f:
        corpus.write_text("".join(f.readlines()[:400]))
    config = write_config(_mlm_config(model, corpus), root / "mlm_config.py")
    return {"root": root, "model": model, "config": config, "corpus": corpus}


def _pretrain(config, workdir, *args):
    return run_script(["scripts/pretrain.py", f"--config={config}", f"--workdir={workdir}",
                       *args])


@pytest.fixture(scope="module")
def mlm_run(mlm_setup):
    workdir = mlm_setup["root"] / "full"
    result = _pretrain(mlm_setup["config"], workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


def test_mlm_run_learns_and_resumes_exactly_after_sigkill(mlm_setup, mlm_run, tmp_path):
    rows = [json.loads(x) for x in (mlm_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval/loss"] for r in rows if "eval/loss" in r]
    # It learns: a tiny random encoder's fresh head starts at ln(30522) = 10.3 (uniform) and
    # picks up the tweets' token frequencies within the run's 16 steps.
    assert evals[0] < 9.5 and evals[-1] < evals[0] - 0.1, evals
    results = json.loads((mlm_run / "eval_results.json").read_text())
    assert results["perplexity"] == pytest.approx(np.exp(results["loss"]), rel=1e-6)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "scripts/pretrain.py", f"--config={mlm_setup['config']}",
         f"--workdir={killed}"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
    from tests.test_checkpoint import wait_for_checkpoint

    wait_for_checkpoint(killed, proc, step=8)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shutil.rmtree(killed / "checkpoints" / "12", ignore_errors=True)
    result = _pretrain(mlm_setup["config"], killed)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed from" in result.stderr
    a, b = final_params(mlm_run), final_params(killed)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], atol=1e-6, rtol=0, err_msg=k)
    again = json.loads((killed / "eval_results.json").read_text())
    assert again["loss"] == pytest.approx(results["loss"], abs=1e-6)


def test_mlm_resume_refuses_a_changed_corpus(mlm_setup, mlm_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(mlm_run, workdir)
    result = _pretrain(mlm_setup["config"], workdir, "--config.mlm.rate=0.3")
    assert result.returncode == 2
    assert "mlm.rate" in result.stderr.splitlines()[-1]


def test_exported_masked_lm_equals_ours_and_fine_tunes_onward(mlm_run, tmp_path):
    out = tmp_path / "export"
    result = run_script(["scripts/export.py", f"--workdir={mlm_run}", f"--output={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    from flax_sentiment.workdir import load_run

    run = load_run(mlm_run)
    with pytest.raises(UserError, match="is a masked-LM run .* no labels to evaluate"):
        load_run(mlm_run, task="classify")  # evaluate.py, predict.py, average.py
    torch_model = T.AutoModelForMaskedLM.from_pretrained(out).eval()
    tokenizer = load_tokenizer(out)
    enc = tokenizer(["so happy with the new phone", "worst game ever"], padding=True,
                    return_tensors="np")
    ours = np.asarray(run.model(enc["input_ids"], enc["attention_mask"]))
    with torch.no_grad():
        theirs = torch_model(**{k: torch.tensor(v) for k, v in enc.items()}).logits.numpy()
    real = enc["attention_mask"].astype(bool)
    np.testing.assert_allclose(ours[real], theirs[real], atol=1e-4)
    assert "masked-LM training" in (out / "README.md").read_text()
    # The folder is also a start for fine-tuning: its encoder loads under a fresh head.
    from flax_sentiment.models.pretrained import load_pretrained_bundle

    bundle = load_pretrained_bundle(out, num_labels=3)
    assert bundle.fresh_head
    enc_ours = {k: np.asarray(v) for k, v in ModelDef.params_of(bundle.model).items()
                if k.startswith("encoder.")}
    trained = ModelDef.params_of(run.model)
    for k, v in enc_ours.items():
        np.testing.assert_array_equal(v, np.asarray(trained[k]), err_msg=k)


def _logits(model, texts=("a gorgeous, witty movie", "terrible")):
    enc = load_tokenizer(MINILM)(list(texts), padding=True, return_tensors="np")
    return np.asarray(model(enc["input_ids"], enc["attention_mask"]))


def test_fine_tuning_onward_keeps_permutes_or_redraws_the_head(reference_run, mlm_run):
    """From a 2-class run: same labels keep the head, the same names in another order permute
    its rows, other labels get a fresh head; the encoder is the run's in every case. From a
    masked-LM run: its encoder under a fresh head."""
    from flax_sentiment.training.start import classifier_from_workdir
    from flax_sentiment.workdir import load_run

    source = load_run(reference_run)
    before = _logits(source.model)
    kept, start = classifier_from_workdir(str(reference_run), ["Negative", "Positive"],
                                          dtype="float32", seed=0)
    assert start.head == "kept" and not kept.fresh_head and start.step == source.step
    np.testing.assert_allclose(_logits(kept.model), before, atol=1e-6)
    swapped, start = classifier_from_workdir(f"{reference_run}@4", ["positive", "negative"],
                                             dtype="float32", seed=0)
    assert start.head == "reordered" and start.step == 4
    np.testing.assert_allclose(_logits(swapped.model)[:, ::-1],
                               _logits(load_run(reference_run, 4).model), atol=1e-6)
    fresh, start = classifier_from_workdir(str(reference_run),
                                           ["negative", "neutral", "positive"],
                                           dtype="float32", seed=0)
    assert start.head == "fresh" and fresh.fresh_head and "head drawn fresh" in start.describe()
    assert _logits(fresh.model).shape == (2, 3)
    a, b = ModelDef.params_of(fresh.model), ModelDef.params_of(source.model)
    for k in b:
        if k.startswith("encoder."):
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
    from_mlm, start = classifier_from_workdir(f"{mlm_run}@best", ["negative", "positive"],
                                              dtype="float32", seed=0)
    assert start.task == "mlm" and start.head == "fresh"
    mlm_params = ModelDef.params_of(load_run(mlm_run, "best").model)
    mine = ModelDef.params_of(from_mlm.model)
    for k, v in mlm_params.items():
        if k.startswith("encoder."):
            np.testing.assert_array_equal(np.asarray(mine[k]), np.asarray(v), err_msg=k)


def test_train_from_a_workdir_records_the_start_in_meta_and_card(run_setup, reference_run,
                                                                  tmp_path):
    workdir = tmp_path / "onward"
    result = run_script(["scripts/train.py", f"--config={run_setup['config']}",
                         f"--workdir={workdir}", f"--config.model.name_or_path={reference_run}",
                         "--config.data.label_names=('positive','negative')",
                         "--config.train.max_steps=4", "--config.eval.every_steps=4"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "head reordered" in result.stderr
    from flax_sentiment.workdir import load_run

    run = load_run(workdir)
    assert run.start["head"] == "reordered" and run.start["source"] == str(reference_run)
    out = tmp_path / "export"
    result = run_script(["scripts/export.py", f"--workdir={workdir}", f"--output={out}"])
    assert result.returncode == 0, result.stderr[-3000:]
    card = (out / "README.md").read_text()
    assert "Training started from the model" in card and "reordered by label name" in card
