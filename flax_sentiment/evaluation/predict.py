"""Inference: texts -> labels and probabilities, with few compiles however the lengths vary.

Texts are tokenized as in training, then batched by `batching` into length buckets of fixed-size
batches (short batches are filled with dummy rows) and run through `steps.model_step`, so XLA
compiles one program per bucket actually used and never again.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from flax_sentiment import parallel
from flax_sentiment.data import batching
from flax_sentiment.data.buckets import DEFAULT_BUCKETS, make_buckets
from flax_sentiment.data.splits import TokenizedSplit, tokenize_texts
from flax_sentiment.errors import UserError
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.training.steps import Steps


class Classifier:
    """A sequence classifier ready for `predict(texts)`.

    Holds a snapshot of `model`'s weights taken at construction (later in-place changes to the
    model are not seen), the tokenizer that trained it and the label names of its outputs.
    """

    def __init__(self, model: nnx.Module, tokenizer: Any, label_names: Sequence[str],
                 max_length: int = 128, buckets: Iterable[int] = DEFAULT_BUCKETS,
                 batch_size: int = 32, truncation: str = "head", head_tokens: int = 64):
        cfg = model.config
        self.label_names = [str(n) for n in label_names]
        if len(self.label_names) != cfg.num_labels:
            raise UserError(f"{len(self.label_names)} label names {self.label_names} for a "
                            f"model with {cfg.num_labels} outputs")
        if batch_size < 1 or max_length < 2:
            raise UserError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} "
                            f"and {max_length}")
        self.tokenizer = tokenizer
        self.max_length = min(int(max_length), cfg.max_input_length)
        self.buckets = make_buckets(buckets, self.max_length)
        self.truncation, self.head_tokens = truncation, int(head_tokens)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = cfg.pad_token_id
        mesh = parallel.make_mesh()
        self.batch_size = parallel.round_up(int(batch_size), mesh.devices.size)
        self._steps = Steps(ModelDef(model), cfg.num_labels, mesh)
        self._params = self._steps.place(ModelDef.params_of(model))  # a snapshot
        self._shapes: set[tuple[int, int]] = set()

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, dtype: Any = "float32",
                        **kwargs: Any) -> Classifier:
        """A fine-tuned Hugging Face folder (e.g. our export); labels from its `id2label`.

        Texts are cut as the model was trained: our exports record max_length, truncation and
        head_tokens in config.json (`export.TOKENIZATION_KEY`); for other folders the
        tokenizer's model_max_length (within the model's positions) from the head, as
        transformers' pipelines do. `kwargs` override either."""
        from flax_sentiment.export.huggingface import TOKENIZATION_KEY
        from flax_sentiment.models.pretrained import load_pretrained_bundle

        bundle = load_pretrained_bundle(name_or_path, dtype=dtype)
        if bundle.fresh_head:
            raise UserError(f"{name_or_path}: has no sequence-classification head to predict "
                            "with (fine-tune it first, or pass an exported folder)")
        names = bundle.label_names or [f"LABEL_{i}" for i in range(bundle.config.num_labels)]
        limit = bundle.config.max_input_length
        saved = bundle.hf_config.get(TOKENIZATION_KEY) or {
            "max_length": min(int(getattr(bundle.tokenizer, "model_max_length", 0) or limit),
                              limit)}
        return cls(bundle.model, bundle.tokenizer, names, **{**saved, **kwargs})

    @classmethod
    def from_workdir(cls, workdir: str | Path, step: int | str | None = None, *,
                     dtype: str | None = None, overrides: Mapping[str, Any] | None = None,
                     **kwargs: Any) -> Classifier:
        """The model a training run saved (latest, 'best' or a step), with the run's
        tokenizer, labels, max length, buckets and truncation (`overrides` of `data.*` keys
        that keep the model's tokenization, e.g. `{'data.buckets': (16, 64)}`, apply)."""
        from flax_sentiment.config import with_overrides
        from flax_sentiment.workdir import load_run

        run = load_run(workdir, step, dtype=dtype,
                       weights=dict(overrides or {}).get("eval.weights"), task="classify")
        d = with_overrides(run.config, overrides or {}).data
        options = dict(max_length=d.max_length, buckets=d.buckets, truncation=d.truncation,
                       head_tokens=d.head_tokens)
        return cls(run.model, run.tokenizer, run.label_names, **{**options, **kwargs})

    @property
    def compiled_shapes(self) -> list[tuple[int, int]]:
        """(batch, length) of every program compiled so far: at most one per bucket."""
        return sorted(self._shapes)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """`[len(texts), num_labels]` probabilities, rows in input order."""
        return self._outputs(texts, "probabilities")

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """`[len(texts), num_labels]` logits, rows in input order (a distillation teacher's
        soft targets at any temperature come from these)."""
        return self._outputs(texts, "logits")

    def _outputs(self, texts: Sequence[str], key: str) -> np.ndarray:
        texts = list(texts)
        bad = next((t for t in texts if not isinstance(t, str)), texts)
        if bad is not texts:
            raise UserError(f"predict expects a list of strings, got a {type(bad).__name__}: "
                            f"{bad!r:.60}")
        out = np.zeros((len(texts), len(self.label_names)), np.float32)
        if not texts:
            return out
        enc = tokenize_texts(self.tokenizer, texts, max_length=self.max_length,
                             truncation=self.truncation, head_tokens=self.head_tokens)
        split = TokenizedSplit.from_encodings("predict", enc, texts, self.label_names)
        batches = batching.EvalBatches(split, self.batch_size, self.buckets, pad_id=self.pad_id)
        for result in self._steps.run(self._params, self._seen(batches)):
            index = np.asarray(result["index"])
            real = index >= 0
            out[index[real]] = np.asarray(result[key])[real]
        return out

    def _seen(self, batches: Iterable[batching.Batch]) -> Iterator[batching.Batch]:
        for batch in batches:
            self._shapes.add(tuple(batch["input_ids"].shape))
            yield batch

    def predict(self, texts: Sequence[str]) -> list[dict[str, Any]]:
        """One `{label, score, probabilities}` per text, in input order (texts longer than
        `max_length` tokens are truncated)."""
        probs = self.predict_proba(texts)
        results = []
        for row in probs:
            best = int(row.argmax())
            results.append({
                "label": self.label_names[best],
                "score": float(row[best]),
                "probabilities": {n: float(p) for n, p in zip(self.label_names, row,
                                                              strict=True)},
            })
        return results
