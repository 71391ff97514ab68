"""Rows -> label ids -> cached tokens -> tokenized splits (a carved validation split, and a
nested stratified subset of the train split for learning curves).

Every process runs the same deterministic plan (same files, same tokens, same seed), so the
batch order `batching` derives from these splits is identical everywhere without
communication. Reading files and the hub is `loading`'s job.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from flax_sentiment.config import option
from flax_sentiment.data.buckets import DEFAULT_BUCKETS, make_buckets
from flax_sentiment.data.loading import SplitLoader
from flax_sentiment.errors import UserError

log = logging.getLogger(__name__)

TRUNCATIONS = ("head", "tail", "head_tail")
_CACHE_VERSION = "1"


# --------------------------------------------------------------------------------------------
# Tokenized splits


@dataclass(frozen=True)
class TokenizedSplit:
    """Tokens of one split as flat numpy arrays: selecting rows (carving, sharding) is free.

    Example `i` has tokens `input_ids[starts[i]:starts[i] + lengths[i]]`; `rows[i]` is its row in
    the source split (before empty texts were dropped) and `texts[i]` its text, so a batch's
    `index` field maps predictions back to texts.
    """

    name: str
    input_ids: np.ndarray  # int32, all examples' tokens concatenated
    token_type_ids: np.ndarray | None  # int8, same layout; None if the tokenizer makes none
    starts: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int32 [N]
    labels: np.ndarray  # int32 [N]
    rows: np.ndarray  # int64 [N]
    texts: Sequence[str]
    label_names: tuple[str, ...]
    # Distillation targets: float32 [N, teachers, classes] logits, or None.
    teacher_logits: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def select(self, indices: np.ndarray, name: str | None = None) -> TokenizedSplit:
        """A subset sharing the token store (no copy of the tokens)."""
        indices = np.asarray(indices, dtype=np.int64)
        texts = [self.texts[i] for i in indices]
        teacher = None if self.teacher_logits is None else self.teacher_logits[indices]
        return replace(self, name=name or self.name, starts=self.starts[indices],
                       lengths=self.lengths[indices], labels=self.labels[indices],
                       rows=self.rows[indices], texts=texts, teacher_logits=teacher)

    def tokens(self, i: int) -> np.ndarray:
        return self.input_ids[self.starts[i]: self.starts[i] + self.lengths[i]]

    @classmethod
    def from_encodings(cls, name: str, encodings: Mapping[str, Sequence[Sequence[int]]],
                       texts: Sequence[str], label_names: Sequence[str],
                       labels: np.ndarray | None = None) -> TokenizedSplit:
        """A split from a tokenizer's per-text id lists (labels 0 when there are none)."""
        ids = encodings["input_ids"]
        lengths = np.asarray([len(x) for x in ids], np.int32)
        starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)[:-1]]).astype(np.int64)
        flat = np.fromiter((t for x in ids for t in x), np.int32, int(lengths.sum()))
        types = encodings.get("token_type_ids")
        if types is not None:
            types = np.fromiter((t for x in types for t in x), np.int8, int(lengths.sum()))
        n = len(ids)
        return cls(name=name, input_ids=flat, token_type_ids=types, starts=starts,
                   lengths=lengths,
                   labels=np.zeros(n, np.int32) if labels is None else np.asarray(labels,
                                                                                  np.int32),
                   rows=np.arange(n, dtype=np.int64), texts=list(texts),
                   label_names=tuple(str(n) for n in label_names))

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(self.label_names))
        return {n: int(c) for n, c in zip(self.label_names, counts, strict=True)}


@dataclass(frozen=True)
class Data:
    """What the trainer needs: tokenized train/eval splits plus the batching settings."""

    train: TokenizedSplit
    eval: TokenizedSplit | None
    label_names: tuple[str, ...]
    buckets: tuple[int, ...]
    pad_id: int


def load_data(config: ml_collections.ConfigDict, tokenizer: Any) -> Data:
    """Train and eval splits of `config` (the `data` section), tokenized and cached on disk.

    Every process tokenizes the whole dataset (a cache hit after the first run): the lengths of
    all examples are needed anyway to plan identical batches everywhere.
    """
    _check_config(config)
    loader = SplitLoader(config)
    train_name = str(config.train_split)
    eval_name = str(option(config, "eval_split", ""))
    train = _tokenized(loader, train_name, tokenizer)
    evaluation, carved = None, False
    if eval_name:
        if eval_name in loader.splits() and eval_name != train_name:
            evaluation = _tokenized(loader, eval_name, tokenizer)
        else:
            train, evaluation = _carve(train, config, eval_name, loader)
            carved = True
    train = _subset(train, config, carved)  # after carving: the evaluation never changes with N
    return Data(train=train, eval=evaluation, label_names=tuple(config.label_names),
                buckets=tuple(make_buckets(option(config, "buckets", DEFAULT_BUCKETS),
                                           int(config.max_length))),
                pad_id=pad_token_id(tokenizer))


def load_split(config: ml_collections.ConfigDict, tokenizer: Any, split: str) -> TokenizedSplit:
    """One split, tokenized; the carved validation set when `split` is the missing eval split."""
    _check_config(config)
    loader = SplitLoader(config)
    if split in loader.splits():
        return _tokenized(loader, split, tokenizer)
    if split == option(config, "eval_split", "") and split != config.train_split:
        return _carve(_tokenized(loader, str(config.train_split), tokenizer), config, split,
                      loader)[1]
    raise loader.missing_split(split)


def pad_token_id(tokenizer: Any) -> int:
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise UserError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no pad token")
    return int(pad)


def _check_config(config: Any) -> None:
    names = list(option(config, "label_names", []))
    if not names:
        raise UserError("data.label_names is empty: list the class names in label-id order")
    if len({str(n).lower() for n in names}) != len(names):
        raise UserError(f"data.label_names has duplicates: {names}")
    truncation = option(config, "truncation", "head")
    if truncation not in TRUNCATIONS:
        raise UserError(f"data.truncation={truncation!r}: expected one of {TRUNCATIONS}")
    if truncation == "head_tail" and option(config, "text_pair_column", ""):
        raise UserError("data.truncation='head_tail' cuts the middle of one text; it cannot be "
                        "combined with data.text_pair_column (use 'head' or 'tail')")
    if int(option(config, "max_length", 0)) < 4:
        raise UserError(f"data.max_length={option(config, 'max_length', 0)}: must be at least 4")
    if not option(config, "name_or_path", ""):
        raise UserError("data.name_or_path is empty: give a hub id, a file or a folder")


# --------------------------------------------------------------------------------------------
# Labels


def _norm_key(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip().lower()


def label_ids(values: Sequence[Any], label_names: Sequence[str],
              label_map: Mapping[Any, Any] | None = None, *, where: str = "data",
              column: str = "label") -> np.ndarray:
    """Raw labels -> int32 ids in `label_names` order.

    Order of lookup: `label_map` (raw value -> name or id, merging classes), then the label names
    (case-insensitive), then - only without a label_map - integers (or integer strings) as ids.
    Unknown values raise a UserError that shows them with a few of their rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = {str(n).lower(): i for i, n in enumerate(label_names)}
    mapping: dict[str, int] = {}
    for key, target in dict(label_map or {}).items():
        tid = names.get(_norm_key(target))
        if tid is None and isinstance(target, int) and 0 <= target < len(label_names):
            tid = int(target)
        if tid is None:
            raise UserError(f"data.label_map[{key!r}] = {target!r} is not one of "
                            f"data.label_names {list(label_names)}")
        mapping[_norm_key(key)] = tid

    def resolve(v: Any) -> int:
        if v is None or isinstance(v, bool):
            return -1
        key = _norm_key(v)
        if key in mapping:
            return mapping[key]
        if key in names:
            return names[key]
        if not mapping and key.lstrip("-").isdigit() and 0 <= int(key) < len(label_names):
            return int(key)
        return -1

    array = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else pa.array(values)
    encoded = pc.dictionary_encode(array)
    uniques = encoded.dictionary.to_pylist()
    table = np.array([resolve(v) for v in uniques] + [resolve(None)], dtype=np.int32)
    codes = encoded.indices.fill_null(len(uniques)).to_numpy(zero_copy_only=False)
    ids = table[codes]
    bad = np.flatnonzero(ids < 0)
    if bad.size:
        bad_codes, counts = np.unique(codes[bad], return_counts=True)
        shown = []
        for code, count in list(zip(bad_codes, counts, strict=True))[:5]:
            value = (uniques + [None])[code]
            rows = bad[codes[bad] == code][:3].tolist()
            shown.append(f"{value!r} ({count} rows, e.g. rows {rows})")
        hint = "" if mapping else " (integers index into label_names; use data.label_map to " \
                                  "merge or rename classes)"
        raise UserError(f"{where}: column {column!r} has labels that are not in data.label_names "
                        f"{list(label_names)}: " + "; ".join(shown)
                        + f"; {bad.size} bad rows in all (rows are 0-based data rows){hint}")
    return ids


# --------------------------------------------------------------------------------------------
# Tokenization


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    """Stable hash of what decides the token ids (vocab, normalizer, specials), not call state."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.all_special_tokens, list(tokenizer.model_input_names)]).encode())
    return h.hexdigest()[:16]


def tokenize_texts(tokenizer: Any, texts: list[str], pairs: list[str] | None = None, *,
                   max_length: int, truncation: str = "head",
                   head_tokens: int = 64) -> dict[str, list[list[int]]]:
    """Token ids (with special tokens) of a batch of texts, cut to `max_length`.

    head keeps the start, tail the end (where reviews often state the verdict), head_tail the
    first `head_tokens` and the rest from the end (Sun et al. 2019: best for long reviews).
    """
    if truncation == "head_tail":
        enc = tokenizer(texts, truncation=False, return_special_tokens_mask=True, verbose=False)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        out_ids, out_types = [], [] if types is not None else None
        for i, (seq, special) in enumerate(zip(ids, enc["special_tokens_mask"], strict=True)):
            if len(seq) > max_length:
                prefix = next((j for j, s in enumerate(special) if not s), 0)
                head = min(max(int(head_tokens), 0), max_length - prefix - 1) + prefix
                keep = list(range(head)) + list(range(len(seq) - (max_length - head), len(seq)))
                seq = [seq[j] for j in keep]
                if out_types is not None:
                    out_types.append([types[i][j] for j in keep])
            elif out_types is not None:
                out_types.append(types[i])
            out_ids.append(seq)
        result = {"input_ids": out_ids}
        if out_types is not None:
            result["token_type_ids"] = out_types
        return result
    side = tokenizer.truncation_side
    tokenizer.truncation_side = "left" if truncation == "tail" else "right"
    try:
        enc = tokenizer(texts, pairs, truncation=True, max_length=max_length,
                        return_attention_mask=False)
    finally:
        tokenizer.truncation_side = side
    result = {"input_ids": enc["input_ids"]}
    if "token_type_ids" in enc:
        result["token_type_ids"] = enc["token_type_ids"]
    return result


def _kept_rows_and_labels(ds: Any, config: Any, where: str, *, warn: bool = True
                          ) -> tuple[np.ndarray, np.ndarray]:
    """(rows, label ids) of the examples a split keeps: those whose text is not empty."""
    import pyarrow.compute as pc

    text_col = config.text_column
    texts_col = ds.data.column(text_col)
    keep = pc.fill_null(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(texts_col)), 0), False)
    keep = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
    dropped = int((~keep).sum())
    if dropped and warn:
        log.warning("%s: dropped %d of %d examples whose %r text is empty or whitespace-only",
                    where, dropped, len(keep), text_col)
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise UserError(f"{where}: no examples left: every {text_col!r} text is empty")
    labels = label_ids(ds.data.column(config.label_column).take(rows), config.label_names,
                       option(config, "label_map", None), where=where, column=config.label_column)
    return rows, labels


def _tokenize_split(ds: Any, config: Any, tokenizer: Any, where: str) -> TokenizedSplit:
    """Tokenize with `Dataset.map`, cached beside the dataset under a fingerprint of the inputs.

    The fingerprint covers the loaded data (datasets' own fingerprint), the tokenizer's content
    and every setting that changes the tokens, so a second run only memory-maps the cache file.
    """
    import datasets

    text_col = config.text_column
    pair_col = str(option(config, "text_pair_column", "")) or None
    settings = dict(version=_CACHE_VERSION, data=ds._fingerprint,
                    tokenizer=_tokenizer_fingerprint(tokenizer), text=text_col, pair=pair_col,
                    max_length=int(config.max_length),
                    truncation=str(option(config, "truncation", "head")),
                    head_tokens=int(option(config, "head_tokens", 64)))
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])
    features = {"input_ids": datasets.Sequence(datasets.Value("int32"))}
    if with_types:
        features["token_type_ids"] = datasets.Sequence(datasets.Value("int8"))

    def tokenize(batch: dict[str, list]) -> dict[str, list]:
        texts = [t if isinstance(t, str) else "" for t in batch[text_col]]
        pairs = [t if isinstance(t, str) else "" for t in batch[pair_col]] if pair_col else None
        out = tokenize_texts(tokenizer, texts, pairs, max_length=settings["max_length"],
                             truncation=settings["truncation"],
                             head_tokens=settings["head_tokens"])
        if with_types and "token_type_ids" not in out:
            out["token_type_ids"] = [[0] * len(s) for s in out["input_ids"]]
        return {k: out[k] for k in features}

    map_kwargs: dict[str, Any] = dict(batched=True, batch_size=1000,
                                      remove_columns=ds.column_names,
                                      features=datasets.Features(features),
                                      new_fingerprint=fingerprint, desc=f"tokenizing {where}")
    if not ds.cache_files:  # in-memory dataset: keep the cache in an explicit file
        cache_root = Path(str(option(config, "cache_dir", "")) or datasets.config.HF_DATASETS_CACHE)
        cache_root.mkdir(parents=True, exist_ok=True)
        map_kwargs["cache_file_name"] = str(cache_root / f"flax_sentiment-{fingerprint}.arrow")
    tokens = ds.map(tokenize, **map_kwargs)

    ids_col = tokens.data.column("input_ids").combine_chunks()
    offsets = ids_col.offsets.to_numpy().astype(np.int64)
    flat_ids = ids_col.flatten().to_numpy()
    starts_all = offsets[:-1] - offsets[0]
    lengths_all = np.diff(offsets).astype(np.int32)
    types = None
    if with_types:
        types = tokens.data.column("token_type_ids").combine_chunks().flatten().to_numpy()

    rows, labels = _kept_rows_and_labels(ds, config, where)
    all_texts = ds.data.column(text_col).to_pylist()
    return TokenizedSplit(
        name=where, input_ids=flat_ids, token_type_ids=types, starts=starts_all[rows],
        lengths=lengths_all[rows], labels=labels, rows=rows.astype(np.int64),
        texts=[all_texts[i] for i in rows], label_names=tuple(config.label_names))


# --------------------------------------------------------------------------------------------
# Carving a validation split


def stratified_split(labels: np.ndarray, size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) indices; each class keeps its share (largest remainder), seeded.

    `size` < 1 is a fraction of all examples, >= 1 a count. Both index arrays are sorted, so the
    held-out set keeps file order (deterministic evaluation).
    """
    n = len(labels)
    count = int(round(size * n)) if size < 1 else int(size)
    if not 0 < count < n:
        raise UserError(f"data.validation_size={size}: gives {count} of {n} examples; need "
                        f"between 1 and {n - 1}")
    classes, per_class = np.unique(labels, return_counts=True)
    quota = per_class * count / n
    take = np.floor(quota).astype(np.int64)
    extra = count - take.sum()
    take[np.argsort(-(quota - take), kind="stable")[:extra]] += 1
    rng = np.random.default_rng([int(seed), 0x5EED])
    held = [rng.permutation(np.flatnonzero(labels == c))[:k]
            for c, k in zip(classes, take, strict=True)]
    held_out = np.sort(np.concatenate(held))
    mask = np.ones(n, dtype=bool)
    mask[held_out] = False
    return np.flatnonzero(mask), held_out


def _carve(train: TokenizedSplit, config: Any, eval_name: str,
           loader: SplitLoader) -> tuple[TokenizedSplit, TokenizedSplit]:
    size = float(option(config, "validation_size", 0.0))
    if size <= 0:
        raise _nothing_to_carve(loader, config, eval_name)
    keep, held = stratified_split(train.labels, size, int(option(config, "seed", 0)))
    log.info("carved %d %r examples from %d %r examples (stratified, seed %s)", len(held),
             eval_name, len(train), config.train_split, option(config, "seed", 0))
    return (train.select(keep, f"{train.name} (minus {eval_name})"),
            train.select(held, f"{train.name} ({eval_name}, carved)"))


# --------------------------------------------------------------------------------------------
# A nested stratified subset of the train split (learning curves)


def nested_stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """An order of all indices of `labels` in which every prefix holds each class in
    proportion: for every prefix length N and class c, |count_c - N * n_c / n| <= 1 - 1/(2k-2)
    (k classes; 0.5 for two, 0.75 for three). So the first N indices are a stratified sample of
    N, and the samples of one seed are nested: N's is inside every larger N's.

    Each class is shuffled (seeded) and its m-th member must then land at a position N with
    (m - B) / p_c <= N <= (m - 1 + B) / p_c + 1 (B the bound, p_c = n_c / n): exactly what
    keeps every prefix within B. Such positions exist (Tijdeman's chairman assignment theorem)
    and earliest-deadline-first, which is optimal for unit tasks with release times, finds them
    (ties broken by the seed). Sorting the members by (j + 0.5) / n_c instead (Sainte-Lague)
    drifts past 1 when one class is rare among many (counts 241/1/1/7: 1.46).
    """
    labels = np.asarray(labels)
    n = len(labels)
    rng = np.random.default_rng([int(seed), 0x0C0DE])
    classes, counts = np.unique(labels, return_counts=True)
    members = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    k = len(classes)
    if k <= 1:
        return members[0] if k else np.zeros(0, np.int64)
    den, num = 2 * k - 2, 2 * k - 3  # B = num / den, in integers (no rounding at 67k rows)

    def release(c: int, m: int) -> int:  # first position where member m may stand
        return -(-((m * den - num) * n) // (den * int(counts[c])))

    def deadline(c: int, m: int) -> int:  # last position where it may stand
        return ((m - 1) * den + num) * n // (den * int(counts[c])) + 1

    taken = [0] * k
    waiting = sorted((release(c, 1), c) for c in range(k))  # (release, class) of each next one
    ready: list[tuple[int, float, int]] = []  # (deadline, tie-break, class)
    order = np.empty(n, np.int64)
    for position in range(1, n + 1):
        while waiting and waiting[0][0] <= position:
            _, c = waiting.pop(0)
            heapq.heappush(ready, (deadline(c, taken[c] + 1), float(rng.random()), c))
        if not ready or ready[0][0] < position:  # cannot happen (the theorem): say so loudly
            raise RuntimeError(f"nested_stratified_order: no class due at position {position}")
        _, _, c = heapq.heappop(ready)
        order[position - 1] = members[c][taken[c]]
        taken[c] += 1
        if taken[c] < counts[c]:
            waiting.append((release(c, taken[c] + 1), c))
            waiting.sort()
    return order


def _subset(train: TokenizedSplit, config: Any, carved: bool) -> TokenizedSplit:
    """The first `data.train_examples` of `nested_stratified_order` (seeded by data.seed), in
    file order; the whole split when it is 0."""
    count = int(option(config, "train_examples", 0))
    if count <= 0:
        return train
    if count > len(train):
        raise UserError(f"config data.train_examples={count}: the train split "
                        f"{config.train_split!r} has only {len(train)} examples"
                        + (f" once {config.eval_split!r} is carved from it" if carved else "")
                        + f"; use at most {len(train)} (0 = all)")
    seed = int(option(config, "seed", 0))
    keep = np.sort(nested_stratified_order(train.labels, seed)[:count])
    subset = train.select(keep, f"{train.name} ({count} examples, data.seed {seed})")
    log.info("training on %d of %d %r examples (stratified, nested, data.seed %d): %s", count,
             len(train), config.train_split, seed, subset.class_counts())
    return subset


def train_pool_labels(config: ml_collections.ConfigDict) -> np.ndarray:
    """Label ids of the examples `data.train_examples` draws from (the train split without
    empty texts and any carved validation split), read without tokenizing: a learning curve
    checks its budgets against it before it trains anything."""
    _check_config(config)
    loader = SplitLoader(config)
    train_name = str(config.train_split)
    _, labels = _kept_rows_and_labels(loader.raw(train_name), config, loader.where(train_name),
                                      warn=False)
    eval_name = str(option(config, "eval_split", ""))
    if eval_name and not (eval_name in loader.splits() and eval_name != train_name):
        size = float(option(config, "validation_size", 0.0))
        if size <= 0:
            raise _nothing_to_carve(loader, config, eval_name)
        keep, _ = stratified_split(labels, size, int(option(config, "seed", 0)))
        labels = labels[keep]
    return labels


def _nothing_to_carve(loader: SplitLoader, config: Any, eval_name: str) -> UserError:
    return UserError(f"{loader.missing_split(eval_name)} - or set data.validation_size "
                     f"(fraction or count) to carve it from {config.train_split!r}, or set "
                     f"data.eval_split='' for no evaluation")


def _tokenized(loader: SplitLoader, split: str, tokenizer: Any) -> TokenizedSplit:
    return _tokenize_split(loader.raw(split), loader.config, tokenizer, loader.where(split))
