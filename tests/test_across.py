"""One checkpoint on several datasets (evaluation.across, scripts/evaluate.py --datasets): each
row equals scikit-learn and a numpy ECE on evaluate_checkpoint's per-example predictions of the
same rows; a class the model lacks is refused unless the entry maps or drops it."""

import csv
import json
import re

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from flax_sentiment.errors import UserError
from flax_sentiment.evaluation.across import evaluate_datasets, parse_datasets
from flax_sentiment.evaluation.evaluate import evaluate_checkpoint
from flax_sentiment.training.loop import train_and_evaluate
from tests.helpers import run_script, sst2_subset, tiny_bert, tiny_config

ROWS = 60


def first_rows(src, folder, n=ROWS, keep=None, header=None, split="validation"):
    """`folder/<split>.tsv`: the first `n` rows of a real TSV (those whose label `keep` accepts),
    optionally under another header."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(src, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    body = [r for r in rows[1:n + 1] if keep is None or keep(r[-1])]
    with open(folder / f"{split}.tsv", "w", newline="") as f:
        csv.writer(f, delimiter="\t").writerows([header or rows[0], *body])
    return folder


def labels_of(folder, split="validation"):
    with open(folder / f"{split}.tsv", newline="") as f:
        return [r[-1] for r in list(csv.reader(f, delimiter="\t"))[1:]]


def numpy_ece(probabilities, labels, bins=15):
    """Expected calibration error, 15 equal-width confidence bins (written apart from
    metrics.py)."""
    confidence = probabilities.max(-1)
    correct = probabilities.argmax(-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    gaps = [abs(correct[which == b].sum() - confidence[which == b].sum()) for b in range(bins)]
    return float(np.sum(gaps) / len(labels))


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """A tiny 2-class SST-2 run, and 60-row slices of the real SST-2, SST-5 and TweetEval
    validation files in folders named as in ../shared/data."""
    root = tmp_path_factory.mktemp("across")
    config = tiny_config(tiny_bert(root / "model", dropout=0.0),
                         sst2_subset(root / "train", 128, ROWS),
                         **{"train.learning_rate": 3e-3})
    workdir = root / "run"
    train_and_evaluate(config, workdir)
    data = root / "data"
    return {"workdir": workdir, "root": root, "own": root / "train",
            **{name: first_rows(shared_data / name / "validation.tsv", data / name)
               for name in ("sst2", "sst5", "tweet_eval_sentiment")},
            "tweets_src": shared_data / "tweet_eval_sentiment" / "validation.tsv"}


@pytest.fixture(scope="module")
def across(run):
    return evaluate_datasets(run["workdir"], [
        f"{run['sst2']}:validation",
        f"{run['tweet_eval_sentiment']}:validation{{neutral=drop}}"])


def assert_row_matches(row, report):
    """The row against scikit-learn and numpy on a single-dataset report's predictions."""
    labels, probabilities = report.labels, report.probabilities
    predicted = probabilities.argmax(-1)
    assert row.examples == len(labels)
    assert row.accuracy == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert row.f1_macro == pytest.approx(
        f1_score(labels, predicted, labels=[0, 1], average="macro", zero_division=0), abs=1e-9)
    assert row.ece == pytest.approx(numpy_ece(probabilities, labels), abs=1e-5)


def test_rows_equal_sklearn_on_single_dataset_predictions(run, across, tmp_path):
    sst2, tweets = across.rows
    assert (sst2.dataset, sst2.split) == (str(run["sst2"]), "validation")
    assert (sst2.examples, sst2.dropped) == (ROWS, 0)
    single = evaluate_checkpoint(run["workdir"], data={"name_or_path": str(run["sst2"])},
                                 split="validation")
    assert_row_matches(sst2, single)

    # The same tweets without the neutral ones, evaluated alone (labels 0 and 2 as the model's).
    no_neutral = first_rows(run["tweets_src"], tmp_path / "tweets", keep=lambda y: y != "1")
    alone = evaluate_checkpoint(run["workdir"], split="validation", data={
        "name_or_path": str(no_neutral), "text_column": "text",
        "label_map": {"0": "negative", "2": "positive"}})
    assert_row_matches(tweets, alone)
    assert across.reports[1].predictions["text"].tolist() == alone.predictions["text"].tolist()
    # Exactly the neutral rows are dropped, and said so.
    neutral = labels_of(run["tweet_eval_sentiment"]).count("1")
    assert 0 < neutral < ROWS
    assert (tweets.examples, tweets.dropped) == (ROWS - neutral, neutral)
    assert tweets.label_map == {"negative": "negative", "neutral": "drop",
                                "positive": "positive"}
    assert tweets.classes == ["negative", "positive"] and tweets.text_column == "text"

    table = across.table()
    lines = table.splitlines()
    assert lines[0].split("|")[1:-1] == [
        f" {h.ljust(len(c) - 2)} " if i in (0, 1, 7) else f" {h.rjust(len(c) - 2)} "
        for i, (h, c) in enumerate(zip(
            ["dataset", "split", "examples", "dropped", "accuracy", "macro F1", "ECE",
             "label map"], lines[0].split("|")[1:-1], strict=True))]
    cells = [c.strip() for c in lines[3].split("|")[1:-1]]
    assert cells == [str(run["tweet_eval_sentiment"]), "validation", str(ROWS - neutral),
                     str(neutral), f"{tweets.accuracy:.4f}", f"{tweets.f1_macro:.4f}",
                     f"{tweets.ece:.4f}", "neutral=drop"]


def test_own_data_and_merged_classes(run):
    """The run's own data needs no split or classes; SST-5's five classes (names with spaces,
    known for a folder named sst5) merge onto the model's two, neutral dropped."""
    result = evaluate_datasets(run["workdir"], [
        str(run["own"]),
        f"{run['sst5']}:validation{{very negative=negative, very positive=positive, "
        f"neutral=drop}}"])
    own, sst5 = result.rows
    expected = json.loads((run["workdir"] / "eval_results.json").read_text())
    assert own.split == "validation" and own.examples == expected["num_examples"] == ROWS
    assert own.accuracy == expected["accuracy"] and own.f1_macro == expected["f1_macro"]
    labels = labels_of(run["sst5"])
    assert (sst5.examples, sst5.dropped) == (ROWS - labels.count("2"), labels.count("2"))
    want = np.array([0, 0, -1, 1, 1])[[int(y) for y in labels]]
    assert result.reports[1].labels.tolist() == want[want >= 0].tolist()
    assert "very negative=negative,neutral=drop,very positive=positive" in result.table()


def test_two_class_model_on_three_class_data_is_refused(run):
    tweets = str(run["tweet_eval_sentiment"])
    with pytest.raises(UserError) as caught:
        evaluate_datasets(run["workdir"], [f"{run['sst2']}:validation", f"{tweets}:validation"])
    message = str(caught.value)
    assert tweets in message and "'neutral'" in message
    assert f"{tweets}:validation{{neutral=drop}}" in message  # how to pass the map
    assert "\n" not in message


@pytest.mark.parametrize("entry,message", [
    ("", "empty"),
    ("data:validation,,data:test", "an empty entry"),
    ("data:validation{neutral=drop", "the braces must close at the end"),
    ("data:validation{neutral}", "'neutral' is not KEY=VALUE"),
    ("data:{neutral=drop}", "a dataset and a split go on either side of ':'"),
    ("data{a=b}{c=d}", "one pair of braces only"),
    ("data:validation{classes=negative}", "must list two or more distinct names"),
    ("data:validation{neutral=drop,Neutral=negative}", "'Neutral' is given twice"),
])
def test_bad_spec_strings(entry, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_datasets([entry])


def test_spec_syntax():
    specs = parse_datasets([
        "../shared/data/sst2:validation,../shared/data/tweet_eval_sentiment{neutral=drop}",
        "pip:pkg/data:test{ very negative = negative , text=review, classes=a|b|c}",
        "pip:pkg/data"])
    assert [(s.source, s.split) for s in specs] == [
        ("../shared/data/sst2", "validation"), ("../shared/data/tweet_eval_sentiment", None),
        ("pip:pkg/data", "test"), ("pip:pkg/data", None)]
    assert specs[1].label_map == {"neutral": "drop"}
    assert specs[2].label_map == {"very negative": "negative"}
    assert (specs[2].text_column, specs[2].classes) == ("review", ("a", "b", "c"))
    assert [str(s) for s in parse_datasets([str(s) for s in specs])] == [str(s) for s in specs]


def test_bad_datasets_are_named(run, tmp_path):
    def refused(entry, *parts):
        with pytest.raises(UserError) as caught:
            evaluate_datasets(run["workdir"], [entry])
        for part in parts:
            assert part in str(caught.value), (part, str(caught.value))

    tweets = run["tweet_eval_sentiment"]
    refused(f"{tweets}:validation{{nuetral=drop}}", "'nuetral' is not a class of",
            "negative, neutral, positive")
    refused(f"{tweets}:validation{{neutral=mixed}}", "'mixed' is not a label of the model",
            "negative, positive")
    refused(f"{tweets}:validation{{negative=drop,positive=drop,neutral=drop}}",
            "every class is dropped")
    refused(f"{tweets}:test", "no split 'test'", "['validation']")
    # Integer labels of a dataset not known by name: its classes must be given.
    unknown = first_rows(run["tweets_src"], tmp_path / "mytweets")
    refused(f"{unknown}:validation", "class names are unknown", "classes=")
    three = "classes=negative|neutral|positive"
    assert evaluate_datasets(run["workdir"], [
        f"{unknown}:validation{{{three},neutral=drop}}"]).rows[0].dropped > 0
    # No text column the run or the defaults know: the file and its columns are named.
    renamed = first_rows(run["tweets_src"], tmp_path / "renamed", header=["tweet", "label"])
    refused(f"{renamed}:validation{{{three},neutral=drop}}",
            f"{renamed / 'validation.tsv'}: no text column", "['tweet', 'label']", "text=")
    refused(f"{renamed}:validation{{{three},neutral=drop,text=body}}", "'body'",
            "['tweet', 'label']")
    row = evaluate_datasets(run["workdir"], [
        f"{renamed}:validation{{{three},neutral=drop,text=tweet}}"]).rows[0]
    assert row.text_column == "tweet" and row.examples + row.dropped == ROWS
    # --config.data.* that --datasets sets per entry.
    with pytest.raises(UserError, match=re.escape("--config.data.name_or_path: set it per")):
        evaluate_datasets(run["workdir"], [str(tweets)],
                          overrides={"data.name_or_path": "x"})


def test_script_prints_one_table_and_writes_csv_json(run, across, tmp_path):
    out = tmp_path / "out"
    result = run_script(["scripts/evaluate.py", "--workdir", str(run["workdir"]),
                         "--output", str(out), "--datasets", f"{run['sst2']}:validation",
                         "--datasets", f"{run['tweet_eval_sentiment']}:validation"
                         "{neutral=drop}"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| dataset" in result.stdout and "neutral=drop" in result.stdout
    stem = "across_sst2-validation_tweet_eval_sentiment-validation_step12"
    saved = json.loads((out / f"{stem}.json").read_text())
    assert saved["step"] == 12 and saved["label_names"] == ["negative", "positive"]
    for got, want in zip(saved["rows"], across.rows, strict=True):
        for key in ("dataset", "examples", "dropped", "accuracy", "f1_macro", "ece"):
            assert got[key] == pytest.approx(getattr(want, key), abs=1e-6), key
    with open(out / f"{stem}.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["dropped"] for r in table] == [str(r.dropped) for r in across.rows]
    assert table[1]["label_map"] == "negative=negative,neutral=drop,positive=positive"

    bad = run_script(["scripts/evaluate.py", "--workdir", str(run["workdir"]), "--datasets",
                      f"{run['tweet_eval_sentiment']}:validation"], timeout=300)
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in bad.stderr
    assert lines[0].startswith(f"error: {run['tweet_eval_sentiment']} [validation] has class "
                               "'neutral'")


def test_three_class_model_on_two_class_data(run, tmp_path):
    """A model label the dataset lacks stays in play: predicting it is an error, and macro F1
    averages over the labels the dataset has (scikit-learn with labels= those)."""
    config = tiny_config(run["root"] / "model", run["tweet_eval_sentiment"], **{
        "data.text_column": "text", "data.label_names": ("negative", "neutral", "positive"),
        "data.train_split": "validation", "data.eval_split": "", "train.max_steps": 2,
        "checkpoint.every_steps": 0})
    train_and_evaluate(config, tmp_path / "run3")
    result = evaluate_datasets(tmp_path / "run3", [f"{run['sst2']}:validation"])
    row = result.rows[0]
    assert row.classes == ["negative", "positive"] and row.dropped == 0
    single = evaluate_checkpoint(tmp_path / "run3", split="validation", data={
        "name_or_path": str(run["sst2"]), "text_column": "sentence",
        "label_map": {"0": "negative", "1": "positive"}})
    labels, probabilities = single.labels, single.probabilities
    predicted = probabilities.argmax(-1)
    assert set(labels.tolist()) == {0, 2}
    assert row.accuracy == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    assert row.f1_macro == pytest.approx(
        f1_score(labels, predicted, labels=[0, 2], average="macro", zero_division=0), abs=1e-9)
    assert row.ece == pytest.approx(numpy_ece(probabilities, labels), abs=1e-5)
    # Over all three labels the absent one adds a zero: the table's number leaves it out.
    assert single.metrics["f1_macro"] == pytest.approx(row.f1_macro * 2 / 3, abs=1e-9)
    assert "macro F1 over negative, positive" in result.table()
