"""Evaluation of saved checkpoints: the API, the plots, scripts/evaluate.py and the notebook all
reproduce the trainer's eval_results.json for the same checkpoint and split."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from flax_sentiment.errors import UserError
from flax_sentiment.evaluation.evaluate import evaluate_checkpoint
from flax_sentiment.training.loop import train_and_evaluate
from tests.conftest import REPO
from tests.helpers import run_script, sst2_subset, tiny_bert, tiny_config

EXACT = ("accuracy", "f1_macro", "precision_macro", "recall_macro", "confusion_matrix",
         "support", "num_examples")


@pytest.fixture(scope="module")
def run(tmp_path_factory, shared_data):
    """One tiny finished training run (12 steps, evals at 6 and 12)."""
    root = tmp_path_factory.mktemp("evaluate")
    config = tiny_config(tiny_bert(root / "model", dropout=0.0),
                         sst2_subset(root / "sst2", 128, 96), **{"train.learning_rate": 3e-3})
    workdir = root / "run"
    train_and_evaluate(config, workdir)
    return {"workdir": workdir, "data": root / "sst2",
            "expected": json.loads((workdir / "eval_results.json").read_text())}


def assert_same_metrics(got: dict, expected: dict) -> None:
    for key in EXACT:
        assert got[key] == expected[key], key
    assert got["loss"] == pytest.approx(expected["loss"], abs=1e-5)
    assert got["ece"] == pytest.approx(expected["ece"], abs=1e-5)


def assert_real_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file() and path.suffix == ".png", path
    assert path.stat().st_size > 10_000, (path, path.stat().st_size)
    pixels = matplotlib.image.imread(path)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300, (path, pixels.shape)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20, path


@pytest.fixture(scope="module")
def report(run):
    return evaluate_checkpoint(run["workdir"])


def test_metrics_equal_eval_results(run, report):
    assert report.step == run["expected"]["step"] == 12
    assert report.split == "validation"
    assert set(report.metrics) >= set(run["expected"]) - {"step", "best_step", "best_value",
                                                          "metric"}
    assert_same_metrics(report.metrics, run["expected"])
    assert "precision" in report.table() and "confusion matrix" in report.table()


def test_predictions_agree_with_metrics(run, report):
    df = report.predictions
    assert len(df) == report.metrics["num_examples"] == 96
    assert list(df.columns[:5]) == ["text", "label", "predicted", "confidence", "correct"]
    probs = df[["p_negative", "p_positive"]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert df["correct"].mean() == pytest.approx(report.metrics["accuracy"], abs=1e-12)
    assert ((df["label"] == df["predicted"]) == df["correct"]).all()
    # Labels and texts in file order (rows map back to the TSV).
    rows = [line.split("\t") for line in (run["data"] / "validation.tsv").read_text()
            .splitlines()[1:]]
    assert df["text"].tolist() == [r[0] for r in rows]
    assert (df["label"] == np.array(["negative", "positive"])[[int(r[1]) for r in rows]]).all()
    # Per-example probabilities sit on the right rows: mean -log p(label) is the loss.
    p_label = np.where(df["label"] == "positive", df["p_positive"], df["p_negative"])
    assert -np.log(p_label).mean() == pytest.approx(report.metrics["loss"], abs=1e-5)
    # mistakes / borderline answers are what they say, in order.
    wrong = report.mistakes(5)
    assert (~wrong["correct"]).all() and wrong["confidence"].is_monotonic_decreasing
    assert len(wrong) == min(5, int((~df["correct"]).sum()))
    close = report.least_confident_correct(5)
    assert close["correct"].all() and close["confidence"].is_monotonic_increasing


def test_to_json(report, tmp_path):
    saved = json.loads(report.to_json(tmp_path / "m.json").read_text())
    assert saved["step"] == 12 and saved["split"] == "validation"
    assert {k: saved[k] for k in report.metrics} == report.metrics


@pytest.mark.parametrize("overrides,message", [
    ({"data.label_names": ("neg", "neu", "pos")}, "data.label_names: would change the labels"),
    ({"data.max_length": 32}, "data.max_length: would change the tokenization"),
    ({"train.learning_rate": 1.0}, "train.learning_rate: only data.* and eval.*"),
    ({"data.nme_or_path": "x"}, "data.nme_or_path: no such config key"),
    ({"eval.batch_size": "many"}, "eval.batch_size='many'"),
])
def test_overrides_that_would_change_the_model_are_refused(run, overrides, message):
    with pytest.raises(UserError, match=re.escape(message)):
        evaluate_checkpoint(run["workdir"], overrides=overrides)


def test_overrides_of_data_and_eval_apply(run):
    """Another batching of the same data gives the same metrics (padding is masked)."""
    report = evaluate_checkpoint(run["workdir"], overrides={"eval.batch_size": 7,
                                                            "data.buckets": (8, 64)},
                                 data={"name_or_path": str(run["data"])})
    assert_same_metrics(report.metrics, run["expected"])


def test_script_writes_json_and_plots(run, tmp_path):
    out = tmp_path / "out"
    result = run_script(["scripts/evaluate.py", "--workdir", str(run["workdir"]),
                         "--output", str(out), f"--config.data.name_or_path={run['data']}",
                         "--split", "validation"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "f1-score" in result.stdout
    saved = json.loads((out / "eval_validation_step12.json").read_text())
    assert_same_metrics(saved, run["expected"])
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(["eval_validation_step12_confusion.png", "training_curves.png",
                           "eval_validation_step12_pr.png",
                           "eval_validation_step12_reliability.png"])
    for name in pngs:
        assert_real_png(out / name)

    bad = run_script(["scripts/evaluate.py", "--workdir", str(run["workdir"]),
                      "--config.data.label_names=('neg','neu','pos')"], timeout=300)
    assert bad.returncode == 2, bad.stderr[-3000:]
    lines = bad.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --config.data.label_names: would change the labels")
    assert "Traceback" not in bad.stderr and len(lines) == 1


def test_notebook_runs_headless(run):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")

    path = REPO / "notebooks" / "evaluate.ipynb"
    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit the notebook with outputs cleared"
    first = nb.cells[0]
    assert "parameters" in first.metadata.get("tags", [])
    first.source, n = re.subn(r"^WORKDIR = .*$", f"WORKDIR = {str(run['workdir'])!r}",
                              first.source, flags=re.M)
    assert n == 1
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}}).execute()

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4
    tagged = [c for c in nb.cells if "metrics-json" in c.metadata.get("tags", [])]
    shown = json.loads("".join(o.text for o in tagged[0].outputs if o.output_type == "stream"))
    assert shown["step"] == 12 and shown["split"] == "validation"
    assert_same_metrics(shown, run["expected"])
    tables = [o for o in outputs if "text/html" in o.get("data", {})]
    assert len(tables) == 2  # the two DataFrames
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "A gorgeous, witty and deeply moving film." in text
