"""Distillation teachers: their logits on the train split, computed once and cached.

Precomputed rather than run inside the train step: a teacher's forward pass costs about a third
of a train step, so in the step every teacher adds a third to every step of the run, while the
pass over the train split, paid once, costs a third of an epoch of training (measured: 285 s for
SST-2's 67,349 texts with MiniLM on the loaded 2-core CPU), is cached for a resume or the next
student, and lets a teacher use another tokenizer than the student (each reads the texts with
its own).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from flax_sentiment.config import option
from flax_sentiment.data.splits import TokenizedSplit
from flax_sentiment.errors import UserError
from flax_sentiment.training.start import is_workdir, parse_spec

log = logging.getLogger(__name__)


def parse_teacher(spec: str) -> tuple[str, int | str | None]:
    """'DIR' (latest checkpoint), 'DIR@best' or 'DIR@1200'; a model folder or hub id as is."""
    return parse_spec(spec, key="train.teacher")


def load_teacher(spec: str, data: ml_collections.ConfigDict, batch_size: int):
    """A `predict.Classifier` for one teacher: a training workdir (its own tokenizer and
    weights, per its eval.weights) or a folder / hub id with a classification head."""
    from flax_sentiment.evaluation.predict import Classifier

    path, step = parse_teacher(spec)
    options = dict(batch_size=batch_size, max_length=data.max_length,
                   truncation=data.truncation, head_tokens=data.head_tokens)
    if is_workdir(path):  # with the tokenization it was trained with
        return Classifier.from_workdir(path, step, batch_size=batch_size)
    if step is not None:
        raise UserError(f"config train.teacher {spec!r}: {path} is not a training workdir, so "
                        "it has no checkpoint steps")
    return Classifier.from_pretrained(path, **options)


def _check_labels(spec: str, teacher: list[str], student: Sequence[str]) -> None:
    if [n.lower() for n in teacher] == [str(n).lower() for n in student]:
        return
    if teacher == [f"LABEL_{i}" for i in range(len(student))]:
        log.warning("teacher %s has no label names; its outputs are taken as %s, in order",
                    spec, list(student))
        return
    raise UserError(f"config train.teacher {spec!r}: its labels {teacher} are not the run's "
                    f"data.label_names {list(student)}")


def teacher_stamp(spec: str) -> dict[str, Any]:
    """What makes a teacher the same one later: for a training workdir the checkpoint the spec
    resolves to now (latest, best or the step; a teacher that trained on is another one) and
    its weights' choice; for a model folder, hub id or pip folder its files (a hub snapshot's
    folder names its revision) by name, size and modification time."""
    from flax_sentiment.sources import resolve

    path, step = parse_teacher(spec)
    if is_workdir(path):
        from flax_sentiment.config import eval_weights
        from flax_sentiment.workdir import Workdir, _choose_step

        wd = Workdir(Path(path).expanduser())
        ckpts = wd.checkpoints(read_only=True)
        try:
            chosen = _choose_step(ckpts, step, wd.path)
        finally:
            ckpts.close()
        config = wd.read_config()
        folder = wd.checkpoints_dir / str(chosen)
        return {"teacher": spec, "workdir": str(wd.path.absolute()), "step": chosen,
                "weights": eval_weights(config) if config is not None else "raw",
                "saved_ns": folder.stat().st_mtime_ns if folder.exists() else None}
    folder = resolve(path)
    files = sorted((str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in folder.rglob("*") if f.is_file())
    return {"teacher": spec, "folder": str(folder.absolute()), "files": files}


def _cache_key(stamps: Sequence[dict[str, Any]], split: TokenizedSplit,
               data: ml_collections.ConfigDict) -> str:
    """Changes when a teacher (`teacher_stamp`), the texts, the tokenization or the label names
    (which the teachers' labels are checked against when they are computed) do."""
    h = hashlib.sha256()
    h.update(json.dumps(list(stamps), sort_keys=True).encode())
    h.update(json.dumps([str(n) for n in split.label_names]).encode())
    h.update(json.dumps([data.max_length, data.truncation, data.head_tokens]).encode())
    for text in split.texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()[:20]


def shared_cache_dir(data: ml_collections.ConfigDict) -> Path:
    """Where every run finds the teacher logits any run computed: beside the tokenized splits
    (data.cache_dir, else the datasets cache). Why: the students of one teacher (seeds, an
    ablation) share its pass over the train split, the longest part of a student's run when
    the teacher is a base model (MPNet-base on SST-2: ~25 minutes on a 2-core CPU)."""
    import datasets

    root = str(option(data, "cache_dir", "")) or datasets.config.HF_DATASETS_CACHE
    return Path(root) / "flax_sentiment_teacher_logits"


def teacher_logits(specs: Sequence[str], split: TokenizedSplit,
                   data: ml_collections.ConfigDict, cache_dir: Path | None, *,
                   batch_size: int = 128, write_cache: bool = True,
                   stamps: Sequence[dict[str, Any]] | None = None) -> np.ndarray:
    """float32 `[len(split), len(specs), classes]`: each teacher's logits on `split`'s texts,
    read from `cache_dir` (the run's workdir) or the shared cache (`shared_cache_dir`) when
    this exact set was computed before, and written to both (`stamps`: the teachers'
    `teacher_stamp`s, computed here when not given)."""
    import jax

    if jax.process_count() > 1:  # predict.Classifier batches for one process
        raise UserError("config train.teacher: distillation runs on one process (one host, "
                        "any number of local devices); several processes are not supported")
    if data.text_pair_column:
        raise UserError("config train.teacher: distillation of text-pair tasks "
                        f"(data.text_pair_column={data.text_pair_column!r}) is not supported")
    paths: list[Path] = []
    if cache_dir is not None:
        if stamps is None:
            stamps = [teacher_stamp(s) for s in specs]
        name = f"teacher_logits_{_cache_key(stamps, split, data)}.npy"
        paths = [Path(cache_dir) / name, shared_cache_dir(data) / name]
        for path in paths:
            cached = _read_cached(path, (len(split), len(specs)))
            if cached is not None:
                log.info("teacher logits read from %s", path)
                if write_cache and path != paths[0]:
                    _write(paths[0], cached)
                return cached
    out = []
    for spec in specs:
        t0 = time.perf_counter()
        teacher = load_teacher(spec, data, batch_size)
        _check_labels(spec, teacher.label_names, split.label_names)
        logits = teacher.logits(list(split.texts))
        log.info("teacher %s: logits on %d train texts in %.1fs (accuracy on them %.4f)", spec,
                 len(split), time.perf_counter() - t0,
                 float(np.mean(logits.argmax(-1) == split.labels)))
        out.append(logits)
    result = np.stack(out, axis=1).astype(np.float32)
    if write_cache:
        for path in paths:
            _write(path, result)
    return result


def _read_cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array, or None (absent, unreadable or of another shape: computed again)."""
    if not path.is_file():
        return None
    try:
        cached = np.load(path)
    except (OSError, ValueError) as e:
        log.warning("%s: unreadable (%s); the teacher logits are computed again", path, e)
        return None
    return cached if cached.shape[:2] == shape else None


def _write(path: Path, logits: np.ndarray) -> None:
    """Written whole or not at all (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, logits)
    tmp.replace(path)
