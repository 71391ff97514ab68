"""Sequence packing: packed rows give every example the logits, loss and gradients it gets in a
padded batch (every architecture), and the packed iterators cover each example once per epoch,
resume exactly and split rows over processes."""

import functools

import jax
import numpy as np
import pytest
import transformers as T

import flax_sentiment as fs
from flax_sentiment.data import batching, packing
from flax_sentiment.data.splits import TokenizedSplit
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.training.steps import apply_model, loss_sum, make_model_step, per_example
from tests.test_encoders import CASES as NEW_CASES
from tests.test_models import CASES as OLD_CASES
from tests.test_models import _save

# One or more of each architecture and of each option that touches positions or pooling:
# absolute and RoBERTa-style positions, token types, ALBERT groups, ELECTRA's projection,
# DeBERTa's relative attention (with and without a position table), ModernBERT's rotary
# positions, sliding windows and mean pooling, MPNet's relative-position bias.
ARCHS = {**{k: OLD_CASES[k] for k in ("bert", "roberta", "albert-groups-inner", "distilbert",
                                      "electra-projection")},
         **{k: NEW_CASES[k] for k in ("xlm-roberta", "deberta-v3", "deberta-v2-c2p",
                                      "modernbert", "modernbert-mean-biases", "mpnet")}}


def _split(cfg, lengths, seed=0, token_types=False) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(3, cfg.vocab_size, n)) for n in lengths]
    enc = {"input_ids": ids}
    if token_types:
        enc["token_type_ids"] = [list(rng.integers(0, 2, n)) for n in lengths]
    labels = rng.integers(0, cfg.num_labels, len(lengths))
    return TokenizedSplit.from_encodings("t", enc, [f"x{i}" for i in range(len(lengths))],
                                         [str(i) for i in range(cfg.num_labels)], labels)


def _by_example(logits, batch, n):
    """Rows of `logits` (one per example or slot) put in example order."""
    index = np.asarray(per_example(batch)["index"])
    out = np.full((n, logits.shape[-1]), np.nan, np.float32)
    real = index >= 0
    out[index[real]] = np.asarray(logits)[real]
    return out


LENGTHS = [15, 3, 9, 1, 12, 7, 15, 2, 5, 11, 4, 8]  # longer than ModernBERT's windows too


@pytest.mark.parametrize("case", sorted(ARCHS))
def test_packed_logits_equal_padded_logits(case, tmp_path):
    cls, cfg, token_types = ARCHS[case]
    _save(cls, cfg, tmp_path, randomise=True)
    model = fs.load_pretrained_bundle(tmp_path).model
    split = _split(cfg, LENGTHS, token_types=token_types)
    pad = cfg.pad_token_id or 0
    padded = batching.materialize(split, np.arange(len(split)), max(LENGTHS), pad)
    rows = packing.first_fit_decreasing(split.lengths, 24)
    assert len(rows) < len(split) and max(len(r) for r in rows) >= 3  # really packed
    packed = packing.materialize_packed(split, rows + [[]], 24, 5, pad)  # an empty row too
    want = _by_example(apply_model(model, padded), padded, len(split))
    got = _by_example(apply_model(model, packed), packed, len(split))
    assert not np.isnan(got).any()
    tolerance = 1e-5 * np.abs(want).max() + 1e-6
    assert np.abs(got - want).max() <= tolerance, (np.abs(got - want).max(), tolerance)


def _no_dropout(cfg):
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout",
                "dropout", "attention_dropout", "seq_classif_dropout", "classifier_dropout_prob",
                "embedding_dropout", "mlp_dropout", "pooler_dropout"):
        if hasattr(cfg, key):
            setattr(cfg, key, 0.0)
    return cfg


@pytest.mark.parametrize("case", ["bert", "modernbert-mean-biases"])
def test_packed_loss_and_gradients_equal_padded(case, tmp_path):
    """The loss counts examples, not rows: the same sum, weight and gradients (no dropout, so
    both see the same function)."""
    cls, cfg, token_types = ARCHS[case]
    cfg = _no_dropout(T.AutoConfig.for_model(**cfg.to_dict()))
    _save(cls, cfg, tmp_path, randomise=True)
    model = fs.load_pretrained_bundle(tmp_path).model
    model_def, params = ModelDef(model), ModelDef.params_of(model)
    split = _split(cfg, LENGTHS, seed=1, token_types=token_types)
    padded = batching.materialize(split, np.arange(len(split)), max(LENGTHS), 0)
    rows = packing.first_fit_decreasing(split.lengths, 20)
    packed = packing.materialize_packed(split, rows, 20, 6, 0)
    weights = jax.numpy.asarray([1.0, 2.0, 0.5][: cfg.num_labels])

    def loss(p, batch):
        return loss_sum(model_def, p, batch, np.zeros(2, np.uint32), num_labels=cfg.num_labels,
                        label_smoothing=0.1, class_weights=weights)

    (l1, (w1, c1)), g1 = jax.value_and_grad(loss, has_aux=True)(params, padded)
    (l2, (w2, c2)), g2 = jax.value_and_grad(loss, has_aux=True)(params, packed)
    np.testing.assert_allclose(l2, l1, rtol=1e-5)
    assert float(w1) == pytest.approx(float(w2)) and int(c1) == int(c2)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(g1))
    for name in g1:
        np.testing.assert_allclose(g2[name], g1[name], atol=1e-5 * scale, err_msg=name)
    # The model step's per-class counts are the padded batch's too.
    step = make_model_step(model_def, cfg.num_labels)
    np.testing.assert_allclose(step(params, packed)["counts"]["confusion"],
                               step(params, padded)["counts"]["confusion"])


# ------------------------------------------------------------------------------ iterators


def _synthetic(n=300, seed=0):
    lengths = np.random.default_rng(seed).integers(3, 40, n)
    return _split(T.BertConfig(vocab_size=100, num_labels=3), lengths, seed=seed)


def _examples(batch):
    index = np.asarray(batch["index"]).reshape(-1)
    return index[index >= 0]


def test_train_iterator_packs_each_step_and_covers_each_example_once_per_epoch():
    split = _synthetic()
    it = packing.PackedTrainIterator(split, 16, 64, seed=3, pad_id=0, row_multiple=2,
                                     process_index=0, process_count=1)
    assert it.steps_per_epoch == -(-len(split) // 16)
    seen = []
    for _ in range(it.steps_per_epoch):
        batch = next(it)
        rows = batch["input_ids"].shape[0]
        assert rows % 2 == 0 and batch["input_ids"].shape[1] == 64
        examples = _examples(batch)
        assert len(examples) == 16 or len(seen) + len(examples) == len(split)
        assert batch["weights"].sum() == len(examples)
        seg, pos = batch["segment_ids"], batch["positions"]
        for r, e in zip(*np.nonzero(batch["index"] >= 0), strict=True):
            i, start = batch["index"][r, e], batch["starts"][r, e]
            n = split.lengths[i]
            np.testing.assert_array_equal(batch["input_ids"][r, start:start + n], split.tokens(i))
            assert (seg[r] == e + 1).sum() == n and (seg[r, start:start + n] == e + 1).all()
            np.testing.assert_array_equal(pos[r, start:start + n], np.arange(n))
            assert batch["labels"][r, e] == split.labels[i]
        seen.extend(examples)
    assert sorted(seen) == list(range(len(split)))
    info = packing.describe(it)
    assert info["token_efficiency"] > 0.8 and len(info["row_counts"]) <= 6, info


@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_train_iterator_resumes_and_splits_rows_over_processes(sampling):
    split = _synthetic(seed=1)
    full = packing.PackedTrainIterator(split, 16, 64, seed=0, pad_id=0, row_multiple=4,
                                       sampling=sampling, process_index=0, process_count=1)
    batches = [next(full) for _ in range(25)]  # into the second epoch
    resumed = packing.PackedTrainIterator(split, 16, 64, seed=0, pad_id=0, row_multiple=4,
                                          sampling=sampling, process_index=0, process_count=1)
    resumed.set_state({**full.get_state(), "position": 2, "epoch": 1})
    for want in batches[full.steps_per_epoch + 2:]:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    parts = [packing.PackedTrainIterator(split, 16, 64, seed=0, pad_id=0, row_multiple=4,
                                         sampling=sampling, process_index=p, process_count=2)
             for p in range(2)]
    for want in batches[:5]:
        got = [next(p) for p in parts]
        assert got[0]["input_ids"].shape == got[1]["input_ids"].shape  # same rows each
        for key in want:
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), want[key],
                                          err_msg=key)


def test_stratified_steps_take_one_example_per_length_stratum_and_share_one_row_count():
    """Each step's k-th longest example lies in the k-th run of the epoch's sorted lengths, the
    steps are random samples (another epoch or seed deals them otherwise), every example comes
    once an epoch, and the row counts collapse to one where uniform draws need several."""
    split = _synthetic(2000, seed=4)
    make = functools.partial(packing.PackedTrainIterator, split, 16, 64, pad_id=0,
                             process_index=0, process_count=1)
    it = make(seed=0, sampling="stratified")
    s = it.steps_per_epoch
    ranked = np.sort(split.lengths)[::-1]
    ranked = np.concatenate([ranked, np.zeros(s * 16 - len(split), ranked.dtype)])
    low, high = ranked.reshape(16, s).min(1), ranked.reshape(16, s).max(1)
    _, steps = it.plan(0)
    seen = []
    for step in steps:
        lengths = np.sort(np.where(step >= 0, split.lengths[np.maximum(step, 0)], 0))[::-1]
        assert ((lengths >= low) & (lengths <= high)).all()
        seen.extend(step[step >= 0])
    assert sorted(seen) == list(range(len(split)))
    batches = [next(it) for _ in range(s)]
    assert sorted(np.concatenate([_examples(b) for b in batches])) == list(range(len(split)))
    assert not np.array_equal(np.sort(steps, 1), np.sort(it.plan(1)[1], 1))
    assert not np.array_equal(np.sort(steps, 1),
                              np.sort(make(seed=1, sampling="stratified").plan(0)[1], 1))
    uniform = make(seed=0, sampling="uniform")
    assert len(it.row_counts((0, 1, 2))) == 1 < len(uniform.row_counts((0, 1, 2)))
    info, before = packing.describe(it), packing.describe(uniform)
    assert info["rows_per_step"] <= before["rows_per_step"] + 0.5, (info, before)
    with pytest.raises(fs.UserError, match="data.pack_sampling='sorted' is not one of"):
        make(seed=0, sampling="sorted")


def test_eval_batches_cover_each_example_once_in_one_shape():
    split = _synthetic(250, seed=2)
    ev = packing.PackedEvalBatches(split, 6, 48, pad_id=0, process_index=0, process_count=1)
    batches = list(ev)
    assert len({b["input_ids"].shape for b in batches}) == 1
    seen = np.concatenate([_examples(b) for b in batches])
    assert sorted(seen) == list(range(len(split)))


def test_pack_length_shorter_than_an_example_is_refused():
    with pytest.raises(fs.UserError, match="data.pack_length=30 is shorter than the longest"):
        packing.PackedTrainIterator(_synthetic(), 16, 30, seed=0, pad_id=0, process_index=0,
                                    process_count=1)
