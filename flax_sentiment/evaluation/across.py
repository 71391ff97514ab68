"""One checkpoint on several datasets: one row each (accuracy, macro F1, ECE), for judging how a
model carries across domains (movie reviews -> tweets) without a training run per dataset.

Each dataset's labels are ids into *its own* class names (given in the spec, the run's own when
it is the run's data, the hub's ClassLabel names, known for the datasets of ../shared/data, or
the label values themselves when they are names). Those classes must meet the model's labels by
name or through the spec's label map (a class -> a model label, or `drop` to leave its rows
out); a class the model lacks with no map entry is refused, not silently mislabelled.

A model with labels a dataset lacks (3 classes on 2-class data) is scored as it is: its
predictions of a missing class count as errors, and macro F1 averages over the model labels the
dataset has (`Row.classes`), so an absent class adds no zero to the mean. ECE is over the model's
full softmax, as for any evaluation.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from flax_sentiment import parallel
from flax_sentiment.config import from_dict, option, with_overrides
from flax_sentiment.data import splits
from flax_sentiment.data.loading import FILE_FORMATS, SplitLoader
from flax_sentiment.errors import UserError
from flax_sentiment.evaluation.evaluate import Evaluator, Report
from flax_sentiment.workdir import Run, load_run

DROP = "drop"  # a label-map target: leave the class's rows out of the metrics
SETTINGS = ("text", "label", "classes", "subset")  # spec keys that are not classes
TEXT_COLUMNS = ("text", "sentence")  # tried, in order, when the run's text column is absent
# Class names of datasets whose labels are bare integers: the local folders of ../shared/data
# (by folder name) and the hub ids (with their subset) the configs name.
_NEG_POS = ("negative", "positive")
_NEG_NEU_POS = ("negative", "neutral", "positive")
_SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
KNOWN_CLASSES: dict[str, tuple[str, ...]] = {
    "sst2": _NEG_POS, "glue/sst2": _NEG_POS, "nyu-mll/glue/sst2": _NEG_POS,
    "stanfordnlp/sst2": _NEG_POS, "sst5": _SST5, "tweet_eval_sentiment": _NEG_NEU_POS,
    "tweet_eval/sentiment": _NEG_NEU_POS, "cardiffnlp/tweet_eval/sentiment": _NEG_NEU_POS,
}
# Overrides that --datasets sets per dataset: refused as --config.data.* beside it.
PER_DATASET_KEYS = ("name_or_path", "subset", "text_column", "label_column", "label_map")
SPEC_SYNTAX = ("PATH_OR_HUB_ID[:SPLIT][{CLASS=LABEL|drop, text=COLUMN, label=COLUMN, "
               "classes=NAME|NAME|..., subset=NAME}]")


# --------------------------------------------------------------------------------------------
# Dataset specs


@dataclasses.dataclass
class DatasetSpec:
    """One dataset to evaluate on: where it is, which split, and how its classes meet the
    model's labels (`SPEC_SYNTAX`; `DatasetSpec.parse` reads it)."""

    source: str  # data.name_or_path: hub id, file, folder or pip:PKG/sub/path
    split: str | None = None  # None: the default split (--split, else data.eval_split)
    label_map: dict[str, str] = dataclasses.field(default_factory=dict)  # class -> label|drop
    text_column: str | None = None
    label_column: str | None = None
    classes: tuple[str, ...] | None = None  # the dataset's class names, in label-id order
    subset: str | None = None  # hub config name

    @classmethod
    def parse(cls, entry: str) -> DatasetSpec:
        """`../shared/data/tweet_eval_sentiment:validation{neutral=drop}` -> a spec."""
        text = entry.strip()

        def bad(why: str) -> UserError:
            return UserError(f"--datasets entry {entry!r}: {why}; expected {SPEC_SYNTAX}, e.g. "
                             f"'../shared/data/tweet_eval_sentiment:validation{{neutral=drop}}'")

        if not text:
            raise bad("empty")
        body = None
        if "{" in text:
            head, _, body = text.partition("{")
            if not body.endswith("}"):
                raise bad("the braces must close at the end of the entry")
            body = body[:-1]
            if "{" in body or "}" in body:
                raise bad("one pair of braces only")
        elif "}" in text:
            raise bad("'}' without '{'")
        else:
            head = text
        source, split = _source_and_split(head.strip(), bad)
        spec = cls(source=source, split=split)
        seen: set[str] = set()
        for item in (body.split(",") if body is not None and body.strip() else []):
            key, sep, value = (x.strip() for x in item.partition("="))
            if not sep or not key or not value:
                raise bad(f"{item.strip()!r} is not KEY=VALUE")
            if key.lower() in seen:
                raise bad(f"{key!r} is given twice")
            seen.add(key.lower())
            if key.lower() in ("text", "label", "subset"):
                setattr(spec, {"text": "text_column", "label": "label_column"}.get(
                    key.lower(), "subset"), value)
            elif key.lower() == "classes":
                names = tuple(n.strip() for n in value.split("|"))
                if len(names) < 2 or not all(names) or \
                        len({n.lower() for n in names}) != len(names):
                    raise bad(f"classes={value!r} must list two or more distinct names, in "
                              "label-id order, separated by '|'")
                spec.classes = names
            else:
                spec.label_map[key] = value
        return spec

    def __str__(self) -> str:
        items = [f"{k}={v}" for k, v in self.label_map.items()]
        items += [f"{k}={v}" for k, v in (("text", self.text_column),
                                          ("label", self.label_column),
                                          ("subset", self.subset)) if v]
        if self.classes:
            items.append("classes=" + "|".join(self.classes))
        return (self.source + (f":{self.split}" if self.split else "")
                + ("{" + ",".join(items) + "}" if items else ""))


def _source_and_split(head: str, bad: Any) -> tuple[str, str | None]:
    """'path:split' -> (path, split); a colon inside the path ('pip:PKG/...', an existing file
    name) is not a split: split names hold no '/'."""
    if not head:
        raise bad("no dataset before ':' or '{'")
    prefix = "pip:" if head.startswith("pip:") else ""
    rest = head[len(prefix):]
    if ":" in rest and not Path(head).expanduser().exists():
        source, _, split = rest.rpartition(":")
        if "/" not in split and "\\" not in split:
            if not source or not split:
                raise bad("a dataset and a split go on either side of ':'")
            return prefix + source, split
    return head, None


def parse_datasets(values: Sequence[str | DatasetSpec]) -> list[DatasetSpec]:
    """Specs from `--datasets` values: each value one or more entries, separated by commas
    outside braces (`--datasets A,B` or `--datasets A --datasets B`)."""
    specs: list[DatasetSpec] = []
    for value in values:
        if isinstance(value, DatasetSpec):
            specs.append(value)
            continue
        depth, start, pieces = 0, 0, []
        for i, ch in enumerate(value):
            depth += {"{": 1, "}": -1}.get(ch, 0)
            if ch == "," and depth <= 0:
                pieces.append(value[start:i])
                start, depth = i + 1, 0
        pieces.append(value[start:])
        if len(pieces) > 1 and not all(x.strip() for x in pieces):
            raise UserError(f"--datasets {value!r}: an empty entry (a comma too many)")
        specs += [DatasetSpec.parse(x) for x in pieces]
    if not specs:
        raise UserError(f"--datasets: no datasets given; expected {SPEC_SYNTAX}")
    return specs


# --------------------------------------------------------------------------------------------
# Results


@dataclasses.dataclass
class Row:
    """One dataset's line of the table."""

    dataset: str  # the source as given
    split: str
    examples: int  # rows evaluated (after dropping)
    dropped: int  # rows of classes mapped to `drop`
    accuracy: float
    f1_macro: float  # over `classes`, the model labels this dataset has
    ece: float
    loss: float
    classes: list[str]
    label_map: dict[str, str]  # every dataset class -> model label or 'drop'
    text_column: str
    spec: str  # the entry that reproduces this row

    def mapping_text(self) -> str:
        """The non-identity part of the label map, in the spec's syntax ('-' when none)."""
        moved = [f"{k}={v}" for k, v in self.label_map.items() if k.lower() != v.lower()]
        return ",".join(moved) or "-"


@dataclasses.dataclass
class AcrossReport:
    """One checkpoint's rows over several datasets, plus each dataset's full `Report`."""

    rows: list[Row]
    reports: list[Report] = dataclasses.field(repr=False)
    workdir: Path
    step: int
    label_names: list[str]

    @property
    def stem(self) -> str:
        """File-name stem, e.g. `across_sst2-validation_tweet_eval_sentiment-validation_step12`
        (a digest of the entries when they make it too long)."""
        parts = [_slug(f"{Path(r.dataset.rstrip('/')).stem or r.dataset}-{r.split}")
                 for r in self.rows]
        middle = "_".join(parts)
        if len(middle) > 80:
            digest = hashlib.sha256("\n".join(r.spec for r in self.rows).encode()).hexdigest()
            middle = f"{len(self.rows)}datasets-{digest[:8]}"
        return f"across_{middle}_step{self.step}"

    def table(self) -> str:
        """The rows as an aligned Markdown table, with a note where macro F1 leaves out model
        labels a dataset lacks."""
        head = ["dataset", "split", "examples", "dropped", "accuracy", "macro F1", "ECE",
                "label map"]
        body = [[r.dataset, r.split, str(r.examples), str(r.dropped), f"{r.accuracy:.4f}",
                 f"{r.f1_macro:.4f}", f"{r.ece:.4f}", r.mapping_text()] for r in self.rows]
        right = {2, 3, 4, 5, 6}
        widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                     for i, (c, w) in enumerate(zip(cells, widths,
                                                                    strict=True))) + " |"

        rule = "|" + "|".join(("-" * (w + 1) + ":") if i in right else "-" * (w + 2)
                              for i, w in enumerate(widths)) + "|"
        lines = [line(head), rule, *(line(b) for b in body)]
        partial = [r for r in self.rows if len(r.classes) < len(self.label_names)]
        for r in partial:
            lines.append(f"\n{r.dataset}: macro F1 over {', '.join(r.classes)} (the model's "
                         f"labels it has); predictions of the others count as errors")
        return "\n".join(lines) + "\n"

    def to_csv(self, path: str | Path) -> Path:
        """One line per dataset; classes joined by '|', the label map in the spec's syntax."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = [f.name for f in dataclasses.fields(Row)]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in self.rows:
                row = dataclasses.asdict(r)
                row["classes"] = "|".join(r.classes)
                row["label_map"] = ",".join(f"{k}={v}" for k, v in r.label_map.items())
                writer.writerow(row)
        return path

    def to_json(self, path: str | Path) -> Path:
        """The rows with the checkpoint they score (workdir, step, the model's labels)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"workdir": str(self.workdir), "step": self.step,
                   "label_names": self.label_names,
                   "rows": [dataclasses.asdict(r) for r in self.rows]}
        path.write_text(json.dumps(payload, indent=2) + "\n")
        return path


# --------------------------------------------------------------------------------------------
# Evaluating


@dataclasses.dataclass
class _Plan:
    """A dataset resolved against the run: its data config and where each class goes."""

    spec: DatasetSpec
    split: str
    data: ml_collections.ConfigDict
    classes: list[str]
    targets: list[int]  # per dataset class: model label id, or -1 (drop)


def evaluate_datasets(workdir: str | Path, datasets: Sequence[str | DatasetSpec], *,
                      step: int | str | None = None, split: str | None = None,
                      overrides: Mapping[str, Any] | None = None,
                      batch_size: int | None = None, dtype: str | None = None) -> AcrossReport:
    """The checkpoint of `workdir` at `step` (None = latest, 'best' or a number) on every
    dataset of `datasets` (specs, or `--datasets` strings), loaded once.

    `split` is the split of entries that name none (default: the run's data.eval_split);
    `overrides` and `batch_size` as for `evaluate_checkpoint`, except the keys each dataset
    sets (`PER_DATASET_KEYS`). Every dataset is checked (columns, classes, label map) before
    any is evaluated, so a refusal comes before minutes of work.
    """
    specs = parse_datasets(datasets)
    changes = dict(overrides or {})
    clash = [k for k in changes if k.startswith("data.")
             and k.split(".")[1] in PER_DATASET_KEYS]
    if clash:
        raise UserError(f"--config.{clash[0]}: set it per dataset in --datasets ({SPEC_SYNTAX})")
    run = load_run(workdir, step, dtype=dtype, weights=changes.get("eval.weights"),
                   task="classify")
    if batch_size is not None:
        changes["eval.batch_size"] = int(batch_size)
    config = with_overrides(run.config, changes)
    if config.eval.batch_size < 1:
        raise UserError(f"eval.batch_size={config.eval.batch_size}: must be at least 1")
    default_split = split or str(option(config.data, "eval_split", ""))
    plans = [_plan(spec, config, run, default_split) for spec in specs]
    rows, reports = [], []
    with parallel.compilation_cache(str(option(config, "compilation_cache_dir", ""))):
        evaluator = Evaluator(run, config)
        for plan in plans:
            row, report = _evaluate(evaluator, plan)
            rows.append(row)
            reports.append(report)
    return AcrossReport(rows=rows, reports=reports, workdir=run.workdir, step=run.step,
                        label_names=list(run.label_names))


def _evaluate(evaluator: Evaluator, plan: _Plan) -> tuple[Row, Report]:
    run = evaluator.run
    examples = splits.load_split(plan.data, run.tokenizer, plan.split)
    ids = np.asarray(plan.targets, np.int32)[examples.labels]
    keep = np.flatnonzero(ids >= 0)
    if keep.size == 0:
        raise UserError(f"{plan.spec.source} [{plan.split}]: no rows left to evaluate: every "
                        f"one of its {len(examples)} rows is of a class mapped to {DROP}")
    kept = dataclasses.replace(examples.select(keep), labels=ids[keep],
                               label_names=tuple(run.label_names))
    report = evaluator.evaluate(kept, split=plan.split, dataset=plan.spec.source)
    present = sorted({t for t in plan.targets if t >= 0})
    names = [run.label_names[i] for i in present]
    m = report.metrics
    row = Row(dataset=plan.spec.source, split=plan.split, examples=len(kept),
              dropped=len(examples) - len(kept), accuracy=m["accuracy"],
              f1_macro=float(np.mean([m["f1"][n] for n in names])), ece=m["ece"],
              loss=m["loss"], classes=names,
              label_map={c: (run.label_names[t] if t >= 0 else DROP)
                         for c, t in zip(plan.classes, plan.targets, strict=True)},
              text_column=str(plan.data.text_column), spec=str(plan.spec))
    return row, report


def _plan(spec: DatasetSpec, config: ml_collections.ConfigDict, run: Run,
          default_split: str) -> _Plan:
    """Columns, classes and label map of one dataset, checked (no tokenizing yet)."""
    split = spec.split or default_split
    if not split:
        raise UserError(f"--datasets entry {str(spec)!r}: no split (the run has no "
                        f"data.eval_split): name one, e.g. {spec.source}:validation")
    own = _same_source(spec.source, str(config.data.name_or_path)) and \
        spec.subset in (None, str(option(config.data, "subset", "")))
    data = from_dict(config.data.to_dict())
    data.name_or_path = spec.source
    data.subset = spec.subset if spec.subset is not None else (
        str(option(config.data, "subset", "")) if own else "")
    data.label_map = ml_collections.ConfigDict(
        option(config.data, "label_map", ml_collections.ConfigDict()).to_dict()
        if own and not spec.classes else {})
    loader = SplitLoader(data)
    found = loader.splits()
    source_split = split
    if split not in found and split == str(option(data, "eval_split", "")):
        source_split = str(data.train_split)  # carved from train (data.validation_size)
    if source_split not in found:
        raise loader.missing_split(split)
    source = found[source_split]
    where = str(source) if isinstance(source, Path) else f"{spec.source} [{split}]"
    columns = _columns(source, loader.encoding)
    data.text_column = _text_column(spec, str(data.text_column), columns, where, split)
    data.label_column = spec.label_column or str(data.label_column)
    if columns is not None and data.label_column not in columns:
        raise UserError(f"{where}: no label column {data.label_column!r}; columns found: "
                        f"{columns}; name it in the entry: {spec.source}:{split}{{label=COLUMN}}")
    if spec.classes:
        classes = list(spec.classes)
    elif own:
        classes = list(run.label_names)  # with the run's own data.label_map
    else:
        classes = _dataset_classes(spec, data, loader, source_split, where, split)
    data.label_names = tuple(classes)
    return _Plan(spec=spec, split=split, data=data, classes=classes,
                 targets=_targets(spec, classes, run, split))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "data"


def _same_source(a: str, b: str) -> bool:
    if a.rstrip("/") == b.rstrip("/"):
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _columns(source: Any, encoding: str) -> list[str] | None:
    """Column names without loading the rows (None when unknown: the loader then names what is
    wrong)."""
    if not isinstance(source, Path):
        return list(source.column_names)
    suffix = source.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            import pandas as pd

            sep = FILE_FORMATS[suffix][1].get("delimiter", ",")
            return [str(c) for c in pd.read_csv(source, sep=sep, nrows=0,
                                                encoding=encoding).columns]
        if suffix == ".jsonl":
            import pandas as pd

            return [str(c) for c in pd.read_json(source, lines=True, nrows=1,
                                                 encoding=encoding).columns]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return list(pq.read_schema(source).names)
    except Exception:  # unreadable: SplitLoader reports it with the file and line
        return None
    return None


def _text_column(spec: DatasetSpec, run_column: str, columns: list[str] | None, where: str,
                 split: str) -> str:
    """The spec's column, else the run's, else 'text' or 'sentence', whichever is there."""
    if spec.text_column:
        if columns is not None and spec.text_column not in columns:
            raise UserError(f"{where}: no text column {spec.text_column!r} (text= in the "
                            f"--datasets entry); columns found: {columns}")
        return spec.text_column
    if columns is None or run_column in columns:
        return run_column
    for name in TEXT_COLUMNS:
        if name in columns:
            return name
    raise UserError(f"{where}: no text column: neither the run's {run_column!r} nor "
                    f"{' nor '.join(map(repr, TEXT_COLUMNS))}; columns found: {columns}; name "
                    f"it in the entry: {spec.source}:{split}{{text=COLUMN}}")


def _dataset_classes(spec: DatasetSpec, data: ml_collections.ConfigDict, loader: SplitLoader,
                     source_split: str, where: str, split: str) -> list[str]:
    """The dataset's class names in label-id order: the hub's ClassLabel names, the known
    datasets' names, or the label values themselves when they are names, not integers."""
    local = loader.local
    if local is None:
        feature = loader.raw(source_split).features.get(data.label_column)
        if getattr(feature, "names", None):
            return [str(n) for n in feature.names]
    if local is not None:
        key = (local if local.is_dir() else local.parent).name.lower()
    else:
        key = "/".join(x for x in (spec.source.lower(), str(data.subset).lower()) if x)
    if key in KNOWN_CLASSES:
        return list(KNOWN_CLASSES[key])
    values = loader.raw(source_split).unique(data.label_column)
    texts = sorted({str(v).strip() for v in values if v is not None and str(v).strip()},
                   key=str.lower)
    if texts and not all(t.lstrip("-").isdigit() for t in texts):
        return texts
    raise UserError(f"{where}: its labels are integers ({', '.join(texts[:6])}) and its class "
                    f"names are unknown; give them in label-id order in the entry, e.g. "
                    f"{spec.source}:{split}{{classes=negative|neutral|positive}}")


def _targets(spec: DatasetSpec, classes: list[str], run: Run, split: str) -> list[int]:
    """Per dataset class, the model label id it counts as (-1: dropped); refuses a class the
    model lacks that the label map does not place."""
    model = {n.lower(): i for i, n in enumerate(run.label_names)}
    by_name = {c.lower(): i for i, c in enumerate(classes)}
    placed: dict[int, str] = {}
    for key, value in spec.label_map.items():
        i = by_name.get(key.lower())
        if i is None and key.isdigit() and int(key) < len(classes):
            i = int(key)
        if i is None:
            raise UserError(f"--datasets entry {str(spec)!r}: {key!r} is not a class of "
                            f"{spec.source} (its classes: {', '.join(classes)})")
        if i in placed:
            raise UserError(f"--datasets entry {str(spec)!r}: class {classes[i]!r} is mapped "
                            f"twice ({placed[i]!r} and {key!r})")
        if value.lower() != DROP and value.lower() not in model:
            raise UserError(f"--datasets entry {str(spec)!r}: {key}={value}: {value!r} is not "
                            f"a label of the model (its labels: {', '.join(run.label_names)}; "
                            f"or '{DROP}' to leave the rows out)")
        placed[i] = key
    targets, missing = [], []
    for i, name in enumerate(classes):
        if i in placed:
            value = spec.label_map[placed[i]].lower()
            targets.append(-1 if value == DROP else model[value])
        elif name.lower() in model:
            targets.append(model[name.lower()])
        else:
            targets.append(-1)
            missing.append(name)
    if missing:
        listed = ", ".join(map(repr, missing))
        example = ",".join(f"{m}={DROP}" for m in missing)
        raise UserError(
            f"{spec.source} [{split}] has class{'es' if len(missing) > 1 else ''} {listed} that "
            f"the model ({run.workdir.name}, labels {', '.join(run.label_names)}) does not have: "
            f"map each to a model label or drop its rows in the --datasets entry, e.g. "
            f"'{spec.source}:{split}{{{example}}}' or '{{{missing[0]}={run.label_names[0]}}}'")
    if all(t < 0 for t in targets):
        raise UserError(f"--datasets entry {str(spec)!r}: every class is dropped")
    return targets
