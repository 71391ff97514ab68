"""Learning curves: the nested stratified subsets (real TweetEval labels), data.train_examples
through load_data, and scripts/learning_curve.py on tiny BERTs and real SST-2 rows: the table,
summary and plot, rerunning, resuming and two workers."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from flax_sentiment.config import validate
from flax_sentiment.data.splits import load_data, nested_stratified_order
from flax_sentiment.errors import UserError
from flax_sentiment.training.loop import Hook
from flax_sentiment.tuning import curve as curve_lib
from flax_sentiment.tuning.curve import Curve, parse_ints, parse_starts, trial_steps
from tests.helpers import REPO, SHARED_DATA, sst2_subset, tiny_bert, tiny_config, write_config

THREE = ("negative", "neutral", "positive")
BUDGETS, SEEDS = (40, 120), (0, 1)
METRICS = ("accuracy", "f1_macro", "loss")


def _max_deviation(labels, order):
    """The largest |count_c - N * p_c| over every prefix length N and class c."""
    labels = np.asarray(labels)[order]
    n = np.arange(1, len(labels) + 1)
    return max(float(np.abs(np.cumsum(labels == c) - n * np.mean(labels == c)).max())
               for c in np.unique(labels))


@pytest.fixture(scope="module")
def tweet_labels(shared_data):
    frame = pd.read_csv(SHARED_DATA / "tweet_eval_sentiment" / "test.tsv", sep="\t",
                        keep_default_na=False, dtype={"label": int})
    assert len(frame) == 12284
    return frame.label.to_numpy()


def test_the_order_is_stratified_in_every_prefix_and_seeded(tweet_labels):
    orders = {seed: nested_stratified_order(tweet_labels, seed) for seed in (0, 1)}
    for order in orders.values():
        assert sorted(order.tolist()) == list(range(len(tweet_labels)))  # every index, once
        # Every prefix within 1 of proportional (the bound is 0.75 for three classes).
        assert _max_deviation(tweet_labels, order) <= 0.75 + 1e-9
    np.testing.assert_array_equal(nested_stratified_order(tweet_labels, 0), orders[0])
    for n in (250, 1000, 4000):  # other seeds draw other subsets
        assert set(orders[0][:n].tolist()) != set(orders[1][:n].tolist())
    # A rare class among many: sorting by (j + 0.5) / n_c drifts to 1.46 here.
    skewed = np.repeat([0, 1, 2, 3], [241, 1, 1, 7])
    assert _max_deviation(skewed, nested_stratified_order(skewed, 0)) <= 1 - 1 / 6 + 1e-9
    two = np.repeat([0, 1], [300, 17])
    assert _max_deviation(two, nested_stratified_order(two, 3)) <= 0.5 + 1e-9


@pytest.fixture(scope="module")
def tokenizer():
    from flax_sentiment.models.pretrained import load_tokenizer
    from tests.conftest import MINILM

    return load_tokenizer(MINILM)


def _tweet_config(**data):
    from flax_sentiment.config import default_data_config

    c = default_data_config()
    c.name_or_path = str(SHARED_DATA / "tweet_eval_sentiment")
    c.text_column, c.label_names = "text", THREE
    c.train_split, c.eval_split = "test", "validation"
    for key, value in data.items():
        c[key] = value
    return c


def test_train_examples_gives_a_nested_stratified_subset(shared_data, tokenizer, tweet_labels):
    full = load_data(_tweet_config(), tokenizer)
    shares = np.bincount(tweet_labels) / len(tweet_labels)
    subsets = {}
    for n, seed in ((250, 0), (1000, 0), (250, 1)):
        d = load_data(_tweet_config(train_examples=n, seed=seed), tokenizer)
        counts = np.asarray(list(d.train.class_counts().values()))
        assert len(d.train) == n and np.all(np.abs(counts - n * shares) <= 1)
        assert np.all(np.diff(d.train.rows) > 0)  # file order
        np.testing.assert_array_equal(d.eval.rows, full.eval.rows)  # the evaluation is fixed
        subsets[n, seed] = set(d.train.rows.tolist())
    assert subsets[250, 0] < subsets[1000, 0]  # nested for one seed
    assert subsets[250, 0] != subsets[250, 1]
    every = load_data(_tweet_config(train_examples=12284), tokenizer)
    np.testing.assert_array_equal(every.train.rows, full.train.rows)
    with pytest.raises(UserError, match=r"data.train_examples=12285: the train split 'test' "
                                        r"has only 12284 examples"):
        load_data(_tweet_config(train_examples=12285), tokenizer)


def test_the_subset_comes_after_a_carved_validation_split(shared_data, tokenizer, tmp_path):
    data = sst2_subset(tmp_path / "sst2", 200, 0)
    (data / "validation.tsv").unlink()
    c = _tweet_config(name_or_path=str(data), text_column="sentence",
                      label_names=("negative", "positive"), train_split="train",
                      validation_size=50, seed=2)
    whole = load_data(c, tokenizer)
    c.train_examples = 60
    part = load_data(c, tokenizer)
    np.testing.assert_array_equal(part.eval.rows, whole.eval.rows)
    assert len(part.train) == 60 and set(part.train.rows) < set(whole.train.rows)
    c.train_examples = 151
    with pytest.raises(UserError, match=r"train_examples=151: .* has only 150 examples once "
                                        r"'validation' is carved from it"):
        load_data(c, tokenizer)


@pytest.mark.parametrize("value", [-1, True])
def test_train_examples_must_be_a_count(value):
    from flax_sentiment.config import base_config

    c = base_config()
    c.data.name_or_path = "x"
    c.data.unlock()
    c.data.train_examples = value
    with pytest.raises(UserError, match="data.train_examples"):
        validate(c)


# ------------------------------------------------------------------------------ the curve


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("curve")
    config = tiny_config(root / "model_a", sst2_subset(root / "sst2", 192, 64),
                         **{"checkpoint.every_steps": 4, "train.batch_size": 16,
                            "checkpoint.async_save": False, "eval.metric": "loss",
                            "eval.metric_mode": "min"})
    return {"root": root, "config": config,
            "starts": {"a": str(tiny_bert(root / "model_a")),
                       "b": str(tiny_bert(root / "model_b", seed=1))}}


def _curve(tiny, folder, **options):
    return Curve(tiny["config"], folder, tiny["starts"], BUDGETS, SEEDS,
                 **{"epochs": 1.0, "min_steps": 5, **options})


def _table(folder):
    """curve.csv without its timings, keyed by trial."""
    with open(folder / "curve.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return {(r["start"], r["n"], r["seed"]): {k: v for k, v in r.items() if "seconds" not in k}
            for r in rows}


@pytest.fixture(scope="module")
def reference(tiny, tmp_path_factory):
    """An uninterrupted curve: 2 starts x 2 budgets x 2 seeds."""
    import logging

    class Lines(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    folder, lines, handler = tmp_path_factory.mktemp("reference") / "curve", [], Lines()
    logger = logging.getLogger("flax_sentiment")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        summary = _curve(tiny, folder).run()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return folder, summary, lines


def test_a_curve_writes_its_table_summary_and_plot(tiny, reference):
    folder, summary, lines = reference
    rows = _table(folder)
    assert len(rows) == 8 and all(r["status"] == "finished" for r in rows.values())
    steps = {n: trial_steps(n, 16, 1.0, 5) for n in BUDGETS}
    assert steps == {40: 5, 120: 8}  # the floor, then one epoch
    for (start, n, seed), row in rows.items():
        trial = folder / start / f"n{n}" / f"seed{seed}"
        results = json.loads((trial / "eval_results.json").read_text())
        assert int(row["steps"]) == results["step"] == steps[int(n)]
        for key in METRICS:
            assert float(row[key]) == pytest.approx(results[key], rel=1e-12)
        config = json.loads((trial / "config.json").read_text())
        assert (config["model"]["name_or_path"], config["data"]["train_examples"],
                config["data"]["seed"], config["train"]["seed"]) == (
                    tiny["starts"][start], int(n), int(seed), int(seed))
        assert not (trial / "checkpoints").exists()  # deleted once finished
        logged = [json.loads(x)["step"] for x in (trial / "metrics.jsonl").read_text()
                  .splitlines() if "eval/f1_macro" in x]
        assert logged == [steps[int(n)]]  # evaluated once, at the end
    saved = json.loads((folder / "curve.json").read_text())
    assert saved["metric"] == "loss" and saved["split"] == "validation"
    assert saved["rule"] == "steps = max(5, ceil(1 * N / 16))"
    for start in ("a", "b"):
        points = saved["starts"][start]["points"]
        assert [p["n"] for p in points] == list(BUDGETS)
        for p in points:
            values = [float(rows[start, str(p["n"]), str(s)]["loss"]) for s in SEEDS]
            assert p["count"] == 2 and p["values"] == pytest.approx(values)
            assert p["mean"] == pytest.approx(np.mean(values))
            assert p["std"] == pytest.approx(np.std(values, ddof=1)) != 0
    assert saved == summary
    assert (folder / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / "curve.png").stat().st_size > 10_000
    # Each trial trained on its N examples of the 192.
    for n in BUDGETS:
        assert sum(f"training on {n} of 192 'train' examples" in x for x in lines) == 4
        assert sum(x.startswith(f"{n} train examples") for x in lines) == 4


def test_rerunning_a_finished_curve_trains_nothing(tiny, reference, monkeypatch):
    folder, summary, _ = reference
    def written():
        return {p: p.stat().st_mtime_ns for name in ("metrics.jsonl", "curve_trial.json",
                                                      "eval_results.json")
                for p in folder.rglob(name)}

    before = written()
    assert len(before) == 3 * 8
    table = _table(folder)

    def refuse(*args, **kwargs):
        raise AssertionError("a finished trial was trained again")

    monkeypatch.setattr(curve_lib, "train_and_evaluate", refuse)
    assert _curve(tiny, folder).run() == summary
    assert _table(folder) == table
    assert written() == before
    # Other settings would mix other runs into the table: refused, naming the difference.
    with pytest.raises(UserError, match=r"finished with other settings \(train.max_steps 5 -> "
                                        r"6\)"):
        _curve(tiny, folder, min_steps=6).run()


def test_an_interrupted_curve_resumes_to_the_same_table(tiny, reference, tmp_path,
                                                        monkeypatch, caplog):
    """The N=40 trials finished (copied from the uninterrupted curve), a crash inside trial 5
    (after its checkpoint at step 4), then SIGTERM inside trial 6: each rerun continues the
    open trial from its checkpoint, trains no finished trial again, and the final table is the
    uninterrupted one."""
    import shutil

    folder, real = tmp_path / "curve", curve_lib.train_and_evaluate
    for start in ("a", "b"):
        shutil.copytree(reference[0] / start / "n40", folder / start / "n40")
    calls = []

    def interrupt_at(step, action):
        def hook(loop):
            if loop.step == step:
                action()
        return Hook(hook, every=1)

    def crash():
        raise RuntimeError("crash")

    def run(config, workdir, hooks=(), *, extra=None):
        calls.append(str(workdir).split("curve/")[1])
        return real(config, workdir, hooks=[*hooks, *([extra] if extra else [])])

    monkeypatch.setattr(curve_lib, "train_and_evaluate",
                        lambda c, w, hooks=(): run(c, w, hooks, extra=interrupt_at(
                            6, crash) if not calls else None))
    with pytest.raises(RuntimeError, match="crash"):
        _curve(tiny, folder).run()
    assert calls == ["a/n120/seed0"]
    assert not (folder / "a" / "n120" / "seed0" / "lease.json").exists()
    assert (folder / "a" / "n120" / "seed0" / "checkpoints" / "4").is_dir()

    calls.clear()
    monkeypatch.setattr(curve_lib, "train_and_evaluate",
                        lambda c, w, hooks=(): run(c, w, hooks, extra=interrupt_at(
                            3, lambda: signal.raise_signal(signal.SIGTERM))
                            if len(calls) == 1 else None))
    with caplog.at_level("INFO", logger="flax_sentiment"):
        summary = _curve(tiny, folder).run()
    assert f"resumed from {folder / 'a/n120/seed0/checkpoints'} at step 4" in caplog.text
    caplog.clear()
    assert calls == ["a/n120/seed0", "b/n120/seed0"]
    assert summary["stopped"] == {"trial": "b/n120/seed0", "step": 3}
    lease = json.loads((folder / "b" / "n120" / "seed0" / "lease.json").read_text())
    assert lease["released"] is True

    calls.clear()
    monkeypatch.setattr(curve_lib, "train_and_evaluate", lambda c, w, hooks=(): run(c, w, hooks))
    with caplog.at_level("INFO", logger="flax_sentiment"):
        _curve(tiny, folder).run()
    assert f"resumed from {folder / 'b/n120/seed0/checkpoints'} at step 3" in caplog.text
    assert "trial b/n120/seed0 continues (its worker" in caplog.text and "stopped)" in \
        caplog.text
    assert calls == ["b/n120/seed0", "a/n120/seed1", "b/n120/seed1"]
    for trial in ("a/n120/seed0", "b/n120/seed0"):
        rows = [json.loads(x) for x in (folder / trial / "metrics.jsonl").read_text()
                .splitlines()]
        steps = [r["step"] for r in rows if "train/loss" in r]
        assert steps == sorted(set(steps)) and steps[-1] == 8, (trial, steps)
    ours, theirs = _table(folder), _table(reference[0])
    assert ours.keys() == theirs.keys()
    for key, row in ours.items():
        for column, value in row.items():
            if column in ("spec",):
                continue
            try:
                assert float(value) == pytest.approx(float(theirs[key][column]), abs=1e-7), \
                    (key, column)
            except ValueError:
                assert value == theirs[key][column]


def test_a_test_split_scores_the_final_model_and_draws_the_curve(tiny, tmp_path):
    """--test_split: each final model is evaluated there too (before its checkpoints go), and
    the curve is drawn on it. Here it is the eval split itself, so the numbers must agree."""
    summary = Curve(tiny["config"], tmp_path / "curve", {"a": tiny["starts"]["a"]}, [40], [0],
                    epochs=1.0, min_steps=5, test_split="validation").run()
    (row,) = _table(tmp_path / "curve").values()
    assert float(row["test_loss"]) == pytest.approx(float(row["loss"]), abs=1e-5)
    assert float(row["test_accuracy"]) == float(row["accuracy"])
    (point,) = summary["starts"]["a"]["points"]
    assert point["values"] == [float(row["test_loss"])]
    assert point["eval_split"]["values"] == [float(row["loss"])]
    assert point["std"] is None and point["count"] == 1
    assert not (tmp_path / "curve" / "a" / "n40" / "seed0" / "checkpoints").exists()


# --------------------------------------------------------------------------------- script


def _cmd(config_file, folder, *extra, starts="a=A,b=B", budgets="40,120", seeds="0"):
    return [sys.executable, "scripts/learning_curve.py", f"--config={config_file}",
            f"--workdir={folder}", f"--starts={starts}", f"--budgets={budgets}",
            f"--seeds={seeds}", "--epochs=1", "--min_steps=5", *extra]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
            "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}


def test_two_workers_run_every_trial_once(tiny, tmp_path):
    config_file = write_config(tiny["config"], tmp_path / "config.py")
    folder = tmp_path / "curve"
    starts = ",".join(f"{k}={v}" for k, v in tiny["starts"].items())
    procs = [subprocess.Popen(_cmd(config_file, folder, starts=starts), cwd=REPO, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    trained = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        trained += [line.split("trial ")[1].split(":")[0] for line in err.splitlines()
                    if ": training " in line]
    assert sorted(trained) == sorted(f"{s}/n{n}/seed0" for s in "ab" for n in BUDGETS)
    rows = _table(folder)
    assert len(rows) == 4 and all(r["status"] == "finished" for r in rows.values())
    assert json.loads((folder / "curve.json").read_text())["finished"] == 4
    assert not list(folder.rglob("lease.json"))


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("text,message", [
    ("minilm", r"--starts 'minilm': expected NAME=SPEC"),
    ("a/b=pip:x/y", r"the name 'a/b' names the start's folder"),
    ("a=x,a=y", r"the name 'a' is given twice"),
    ("", r"give at least one NAME=SPEC"),
])
def test_bad_starts(text, message):
    with pytest.raises(UserError, match=message):
        parse_starts(text)


def test_bad_budgets_and_seeds():
    assert parse_ints("1000, 250", "budgets", low=1) == [250, 1000]
    with pytest.raises(UserError, match=r"--budgets 0: must be >= 1"):
        parse_ints("250,0", "budgets", low=1)
    with pytest.raises(UserError, match=r"--budgets '1e3': not an integer"):
        parse_ints("1e3", "budgets", low=1)
    with pytest.raises(UserError, match=r"--seeds: 1 is given twice"):
        parse_ints("1,1", "seeds", low=0)


def test_bad_input_is_refused_before_anything_is_written(tiny, tmp_path):
    with pytest.raises(UserError, match=r"--budgets 193: the labelled pool .* has 192 "
                                        r"examples"):
        Curve(tiny["config"], tmp_path / "a", tiny["starts"], [40, 193], [0])
    with pytest.raises(UserError, match=r"--starts c=/no/such/model: no such model folder"):
        Curve(tiny["config"], tmp_path / "b", {"c": "/no/such/model"}, [40], [0])
    with pytest.raises(UserError, match=r"--starts c=runs/none@best: runs/none is not a "
                                        r"training workdir"):
        Curve(tiny["config"], tmp_path / "b", {"c": "runs/none@best"}, [40], [0])
    with pytest.raises(UserError, match=r"--test_split 'train' is the train split"):
        Curve(tiny["config"], tmp_path / "c", tiny["starts"], [40], [0], test_split="train")
    assert not any((tmp_path / x).exists() for x in "abc")


def test_the_script_exits_2_with_one_line(tiny, tmp_path):
    config_file = write_config(tiny["config"], tmp_path / "config.py")
    starts = f"a={tiny['starts']['a']},a={tiny['starts']['b']}"
    t0 = time.perf_counter()
    result = subprocess.run(_cmd(config_file, tmp_path / "curve", starts=starts), cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == \
        "error: --starts: the name 'a' is given twice"
    assert "Traceback" not in result.stderr and not (tmp_path / "curve").exists()
    assert time.perf_counter() - t0 < 120
