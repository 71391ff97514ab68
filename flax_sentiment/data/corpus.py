"""Unlabeled text for masked-LM training: files or folders -> token rows filled to full length.

Every step is a `datasets` map, so the texts, their tokens and the rows live in the Arrow cache
on disk and are read memory-mapped: a corpus larger than RAM works, and a second run (a resume,
another seed) finds all of it cached. Tokenizing happens once, ahead of training; the train
iterator only reads rows and masks them (`masking.py`).

Two row layouts (`mlm.layout`):
- "chunk": each text with its special tokens, concatenated, cut into rows of exactly
  `max_length` tokens (run_mlm.py's `group_texts`); a row may span texts and attends across
  them; the tail of each map batch of 1,000 texts that does not fill a row is dropped.
- "pack": whole texts placed into rows first-fit (longest first, per map batch), attention kept
  within each text (segment ids, as packed fine-tuning does); a text longer than a row is cut
  into row-sized pieces. Each text is seen as it will be in fine-tuning, alone.
The held-out texts are always evaluated in the "pack" layout, so both layouts' metrics measure
the same thing and compare.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from flax_sentiment import sources
from flax_sentiment.config import option
from flax_sentiment.data.loading import FILE_FORMATS, SplitLoader
from flax_sentiment.data.masking import Masker
from flax_sentiment.errors import UserError

log = logging.getLogger(__name__)

TEXT_FORMATS = (".txt", *FILE_FORMATS)
LAYOUTS = ("chunk", "pack")
MAP_BATCH = 1000
EVAL_STREAM = 2**31 - 1  # masking seeds of held-out rows: (seed, EVAL_STREAM, row)


def corpus_files(corpus: Sequence[str]) -> list[Path]:
    """The files `mlm.corpus` names: each entry a file, a folder (every supported file under it,
    in name order) or `pip:PKG/path`."""
    if isinstance(corpus, str):
        corpus = (corpus,)
    files: list[Path] = []
    for entry in corpus:
        entry = str(entry)
        path = (sources.resolve_pip(entry, folder=False) if entry.startswith(sources.PIP_PREFIX)
                else Path(entry).expanduser())
        if not path.exists():
            raise UserError(f"mlm.corpus: {entry!r}: no such file or folder")
        if path.is_dir():
            found = sorted(f for f in path.rglob("*")
                           if f.is_file() and f.suffix.lower() in TEXT_FORMATS)
            if not found:
                raise UserError(f"mlm.corpus: {path}: no text files (expected {TEXT_FORMATS})")
            files += found
        elif path.suffix.lower() not in TEXT_FORMATS:
            raise UserError(f"mlm.corpus: {path}: unsupported file type {path.suffix!r} "
                            f"(expected one of {TEXT_FORMATS})")
        else:
            files.append(path)
    if not files:
        raise UserError("mlm.corpus is empty: name the files or folders of unlabeled text")
    return files


def load_texts(files: Sequence[Path], *, text_column: str, encoding: str = "utf-8",
               cache_dir: str | None = None) -> Any:
    """One `datasets.Dataset` with a `text` column: a `.txt` file's lines, the `text_column` of
    a table (its other columns, labels included, are ignored); empty texts dropped."""
    import datasets

    parts = []
    for f in files:
        if f.suffix.lower() == ".txt":
            try:
                ds = datasets.load_dataset("text", data_files=str(f), split="train",
                                           encoding=encoding, cache_dir=cache_dir)
            except Exception as e:
                raise SplitLoader(ml_collections.ConfigDict(
                    {"name_or_path": str(f), "encoding": encoding}))._read_error(f, e) from None
        else:
            loader = SplitLoader(ml_collections.ConfigDict(
                {"name_or_path": str(f), "encoding": encoding, "cache_dir": cache_dir or ""}))
            ds = loader._load_file(f)
            if text_column not in ds.column_names:
                raise UserError(f"{f}: no column {text_column!r} (mlm.text_column); columns "
                                f"found: {ds.column_names}")
            ds = ds.select_columns([text_column])
            if text_column != "text":
                ds = ds.rename_column(text_column, "text")
        ds = ds.cast_column("text", datasets.Value("string"))
        parts.append(ds)
    ds = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    ds = ds.filter(lambda b: [bool(t and t.strip()) for t in b["text"]], batched=True,
                   desc="dropping empty texts")
    if len(ds) == 0:
        raise UserError(f"mlm.corpus: no non-empty texts in {[str(f) for f in files]}")
    return ds


def _chunk(ids: list[list[int]], length: int) -> dict[str, list]:
    flat = [t for seq in ids for t in seq]
    n = len(flat) // length
    return {"input_ids": [flat[i * length:(i + 1) * length] for i in range(n)],
            "segment_ids": [[1] * length for _ in range(n)], "num_tokens": [length] * n}


def _pack(ids: list[list[int]], length: int, pad_id: int) -> dict[str, list]:
    pieces = [seq[i:i + length] for seq in ids for i in range(0, len(seq), length)]
    order = sorted(range(len(pieces)), key=lambda i: -len(pieces[i]))
    free: list[int] = []
    rows: list[list[int]] = []
    for i in order:
        n = len(pieces[i])
        fits = [r for r, f in enumerate(free) if f >= n]
        if fits:
            r = fits[0]
        else:
            r, free = len(rows), free + [length]
            rows.append([])
        rows[r].append(i)
        free[r] -= n
    out_ids, out_seg, counts = [], [], []
    for members in rows:
        row, seg = [], []
        for s, i in enumerate(members, start=1):
            row += pieces[i]
            seg += [s] * len(pieces[i])
        out_ids.append(row + [pad_id] * (length - len(row)))
        out_seg.append(seg + [0] * (length - len(seg)))
        counts.append(len(row))
    return {"input_ids": out_ids, "segment_ids": out_seg, "num_tokens": counts}


def build_rows(texts: Any, tokenizer: Any, *, length: int, layout: str, pad_id: int) -> Any:
    """Texts -> rows of `length` tokens (`input_ids`, `segment_ids`: 1.. per text, 0 padding;
    the chunk layout gives 1 everywhere), via cached `datasets` maps."""
    if layout not in LAYOUTS:
        raise UserError(f"config mlm.layout={layout!r}: must be one of {LAYOUTS}")

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        enc = tokenizer(batch["text"], add_special_tokens=True, truncation=False,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        return {"input_ids": enc["input_ids"]}

    tokens = texts.map(tokenize, batched=True, batch_size=MAP_BATCH, remove_columns=["text"],
                       desc="tokenizing")

    def group(batch: dict[str, list]) -> dict[str, list]:
        if layout == "chunk":
            return _chunk(batch["input_ids"], length)
        return _pack(batch["input_ids"], length, pad_id)

    rows = tokens.map(group, batched=True, batch_size=MAP_BATCH, remove_columns=["input_ids"],
                      desc=f"{layout} rows of {length}")
    if len(rows) == 0:
        raise UserError(f"mlm.corpus: too little text for one row of {length} tokens")
    return rows.with_format("numpy")


@dataclasses.dataclass
class Corpus:
    train: Any  # datasets.Dataset of rows (numpy format)
    eval: Any | None
    num_texts: int
    num_eval_texts: int
    tokens: int  # real tokens in the train rows


def load_corpus(config: ml_collections.ConfigDict, tokenizer: Any) -> Corpus:
    """`config.mlm.corpus` -> train rows in `mlm.layout` and held-out rows (packed), the
    held-out texts drawn with `data.seed` (`mlm.eval_size`: a fraction < 1 or a count)."""
    import datasets

    m, d = config.mlm, config.data
    entries = tuple(m.corpus)
    encodings = (m.encoding,) if isinstance(m.encoding, str) else tuple(m.encoding)
    if len(encodings) == 1:
        encodings = encodings * len(entries)
    if len(encodings) != len(entries):
        raise UserError(f"config mlm.encoding={tuple(encodings)!r}: one encoding for all of "
                        f"mlm.corpus, or one per entry ({len(entries)})")
    cache_dir = str(option(d, "cache_dir", "")) or None
    parts = [load_texts(corpus_files((entry,)), text_column=str(m.text_column),
                        encoding=str(enc), cache_dir=cache_dir)
             for entry, enc in zip(entries, encodings, strict=True)]
    texts = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    size = float(m.eval_size)
    held = None
    if size > 0:
        count = int(round(size * len(texts))) if size < 1 else int(size)
        if not 0 < count < len(texts):
            raise UserError(f"config mlm.eval_size={m.eval_size}: holds out {count} of "
                            f"{len(texts)} texts; must leave some for training and hold out "
                            "at least one")
        parts = texts.train_test_split(test_size=count, seed=int(d.seed), shuffle=True)
        texts, held = parts["train"], parts["test"]
    length = int(d.max_length)
    train = build_rows(texts, tokenizer, length=length, layout=str(m.layout), pad_id=pad_id)
    evals = (build_rows(held, tokenizer, length=length, layout="pack", pad_id=pad_id)
             if held is not None else None)
    import pyarrow.compute as pc

    tokens = int(pc.sum(train.data.column("num_tokens")).as_py())
    return Corpus(train=train, eval=evals, num_texts=len(texts),
                  num_eval_texts=0 if held is None else len(held), tokens=tokens)


def _fields(ids: np.ndarray, seg: np.ndarray, pad_id: int, packed: bool) -> dict[str, np.ndarray]:
    """The model's inputs of rows: an attention mask, or (packed) segment ids and positions."""
    if not packed:
        return {"attention_mask": (seg > 0).astype(np.int32)}
    starts = np.concatenate([np.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    index = np.arange(seg.shape[1])[None, :].repeat(len(seg), 0)
    first = np.maximum.accumulate(np.where(starts, index, 0), axis=1)
    return {"segment_ids": seg.astype(np.int32), "positions": (index - first).astype(np.int32),
            "starts": np.zeros((len(seg), 1), np.int32)}


def make_batch(rows: dict[str, np.ndarray], masker: Masker, seeds: Sequence[Sequence[int]],
               num_targets: int, pad_id: int, packed: bool,
               real: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Rows -> a masked batch: inputs, `targets` / `target_ids` / `target_weights`, and per-row
    `weights` (0 for filler rows, whose targets weigh 0 too)."""
    ids = np.asarray(rows["input_ids"], np.int32)
    seg = np.asarray(rows["segment_ids"], np.int32)
    batch = masker.mask_rows(ids, seeds, num_targets)
    batch["input_ids"] = batch["input_ids"].astype(np.int32)
    batch.update(_fields(ids, seg, pad_id, packed))
    weights = np.ones(len(ids), np.float32) if real is None else real.astype(np.float32)
    batch["target_weights"] = batch["target_weights"] * weights[:, None]
    batch["weights"] = weights
    return batch


class MlmTrainIterator:
    """Global masked batches forever; each process materializes its rows of each. Per epoch the
    rows are shuffled with `default_rng([seed, epoch])` and cut into full batches (the rest wait
    for the next epoch's shuffle). Resumable from `get_state()`, as `batching.TrainIterator`."""

    def __init__(self, rows: Any, batch_size: int, masker: Masker, *, seed: int, pad_id: int,
                 num_targets: int, packed: bool, process_index: int = 0,
                 process_count: int = 1):
        if batch_size % process_count:
            raise UserError(f"train.batch_size {batch_size} is not divisible by the "
                            f"{process_count} processes")
        self.rows, self.batch_size, self.masker = rows, int(batch_size), masker
        self.steps_per_epoch = len(rows) // self.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(f"mlm.corpus gives {len(rows)} rows, fewer than one batch of "
                            f"train.batch_size={batch_size}: lower the batch size or "
                            "data.max_length, or add text")
        per = self.batch_size // process_count
        self._local = slice(process_index * per, (process_index + 1) * per)
        self.seed, self.pad_id, self.num_targets = int(seed), int(pad_id), int(num_targets)
        self.packed = packed
        self.epoch, self.position = 0, 0
        self._plan: tuple[int, np.ndarray] | None = None

    def plan(self, epoch: int) -> np.ndarray:
        if self._plan is None or self._plan[0] != epoch:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            self._plan = (epoch, order[: self.steps_per_epoch * self.batch_size]
                          .reshape(self.steps_per_epoch, self.batch_size))
        return self._plan[1]

    def upcoming(self, num_steps: int) -> list[int]:
        return [0]  # one shape

    def dummy(self, key: int = 0) -> dict[str, np.ndarray]:
        n = self._local.stop - self._local.start
        length = int(self.rows[0]["input_ids"].shape[-1])
        rows = {"input_ids": np.full((n, length), self.pad_id, np.int32),
                "segment_ids": np.zeros((n, length), np.int32)}
        return make_batch(rows, self.masker, [(0,)] * n, self.num_targets, self.pad_id,
                          self.packed, real=np.zeros(n))

    def __iter__(self) -> MlmTrainIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.position >= self.steps_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        global_rows = self.plan(self.epoch)[self.position]
        local = global_rows[self._local]
        first = self.position * self.batch_size + self._local.start
        seeds = [(self.seed, self.epoch, first + j) for j in range(len(local))]
        self.position += 1
        order = np.argsort(local)  # sorted reads from the memory-mapped table
        fetched = self.rows[local[order].tolist()]
        back = np.argsort(order)
        rows = {k: np.asarray(v)[back] for k, v in fetched.items()}
        return make_batch(rows, self.masker, seeds, self.num_targets, self.pad_id, self.packed)

    def get_state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_examples": len(self.rows), "batch_size": self.batch_size}

    def set_state(self, state: dict[str, Any]) -> None:
        for key, mine in (("num_examples", len(self.rows)), ("batch_size", self.batch_size)):
            if int(state.get(key, mine)) != mine:
                raise UserError(f"cannot resume the data position: the checkpoint has "
                                f"{key}={state[key]} but the current corpus gives {mine}")
        self.seed, self.epoch = int(state.get("seed", self.seed)), int(state["epoch"])
        self.position, self._plan = int(state["position"]), None


class MlmEvalBatches:
    """The held-out rows, masked once with fixed seeds (the same targets at every evaluation),
    in batches of `batch_size` rows (the last filled with weight-0 rows); this process's rows
    of each. Materialized once: held-out slices are small."""

    def __init__(self, rows: Any, batch_size: int, masker: Masker, *, seed: int, pad_id: int,
                 num_targets: int, multiple: int = 1, process_index: int = 0,
                 process_count: int = 1):
        step = -(-batch_size // (multiple * process_count)) * multiple * process_count
        n = len(rows)
        data = rows[:]
        self._batches = []
        for start in range(0, n, step):
            idx = np.arange(start, start + step)
            real = idx < n
            take = np.where(real, idx, 0)
            chunk = {"input_ids": np.asarray(data["input_ids"])[take],
                     "segment_ids": np.where(real[:, None],
                                             np.asarray(data["segment_ids"])[take], 0)}
            chunk["input_ids"] = np.where(real[:, None], chunk["input_ids"], pad_id)
            seeds = [(seed, EVAL_STREAM, int(i)) for i in idx]
            batch = make_batch(chunk, masker, seeds, num_targets, pad_id, True, real=real)
            per = step // process_count
            local = slice(process_index * per, (process_index + 1) * per)
            self._batches.append({k: v[local] for k, v in batch.items()})

    def __len__(self) -> int:
        return len(self._batches)

    def shapes(self) -> list[dict[str, np.ndarray]]:
        return self._batches[:1]

    def __iter__(self):
        return iter(self._batches)
