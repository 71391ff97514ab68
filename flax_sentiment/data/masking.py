"""Dynamic masking for masked-LM training, on the host, per batch (BERT, Devlin et al. 2019).

Each row gets a fresh draw every time it is served (RoBERTa's dynamic masking): of its maskable
tokens (never special or padding tokens) `round(rate * n)` are chosen, at least one, and each
chosen one becomes the mask token (80%), a random token (10%) or stays (10%). The row's
generator is seeded by (seed, epoch, position of the row in the epoch), so a resumed run, or
any process layout, masks every row as an uninterrupted one does.

Whole-word masking chooses words, not tokens: words in a random order are taken while the
count stays within the row's budget, so the rate holds and a word is masked whole or not at
all (a row whose every word is longer than its budget gets no target, as with transformers'
DataCollatorForWholeWordMask). Word starts are read from the vocabulary: WordPiece
continuations start with "##"; a byte-level BPE ("Ġ") or SentencePiece ("▁") token without its
marker continues the word before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from flax_sentiment.errors import UserError


def max_predictions(length: int, rate: float) -> int:
    """Targets per row of `length` tokens at `rate`: the static width of the target arrays."""
    return max(1, int(round(rate * length)))


@dataclasses.dataclass(frozen=True)
class Masker:
    """What masking needs of the tokenizer, and the draw itself (`mask_rows`)."""

    mask_id: int
    vocab_size: int
    special_ids: np.ndarray  # never masked (and padding)
    continues: np.ndarray | None  # [vocab] True where a token continues the word before
    rate: float = 0.15
    replace_mask: float = 0.8  # of the chosen tokens: the mask token
    replace_random: float = 0.1  # a random token; the rest stay

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, *, rate: float = 0.15, whole_word: bool = False
                       ) -> Masker:
        if tokenizer.mask_token_id is None:
            raise UserError(f"tokenizer {type(tokenizer).__name__} has no mask token: it cannot "
                            "train a masked language model")
        vocab_size = len(tokenizer)
        specials = np.asarray(sorted(set(tokenizer.all_special_ids)), np.int64)
        continues = word_continuations(tokenizer) if whole_word else None
        return cls(mask_id=int(tokenizer.mask_token_id), vocab_size=vocab_size,
                   special_ids=specials, continues=continues, rate=float(rate))

    def maskable(self, input_ids: np.ndarray) -> np.ndarray:
        return ~np.isin(input_ids, self.special_ids)

    def word_ids(self, input_ids: np.ndarray, maskable: np.ndarray) -> np.ndarray:
        """[rows, length] word number of each maskable token (-1 elsewhere): a new word starts
        at a token that does not continue, or after an unmaskable one."""
        if self.continues is None:
            starts = maskable
        else:
            cont = self.continues[np.clip(input_ids, 0, len(self.continues) - 1)]
            after_special = np.concatenate(
                [np.ones_like(maskable[:, :1]), ~maskable[:, :-1]], axis=1)
            starts = maskable & (~cont | after_special)
        words = np.cumsum(starts, axis=1) - 1
        return np.where(maskable, words, -1)

    def mask_rows(self, input_ids: np.ndarray, seeds: Sequence[Sequence[int]],
                  num_targets: int) -> dict[str, np.ndarray]:
        """Masked copies of `input_ids` [rows, length] and their targets: `targets` (positions,
        [rows, P]), `target_ids` (the original tokens) and `target_weights` (1 real, 0 pad)."""
        rows, _ = input_ids.shape
        out = input_ids.copy()
        positions = np.zeros((rows, num_targets), np.int32)
        labels = np.zeros((rows, num_targets), np.int32)
        weights = np.zeros((rows, num_targets), np.float32)
        maskable = self.maskable(input_ids)
        words = self.word_ids(input_ids, maskable)
        for r in range(rows):
            candidates = np.flatnonzero(maskable[r])
            if candidates.size == 0:
                continue
            rng = np.random.default_rng(list(seeds[r]))
            budget = min(num_targets, max(1, int(round(self.rate * candidates.size))))
            chosen = self._choose(rng, candidates, words[r], budget)
            k = chosen.size
            positions[r, :k], labels[r, :k], weights[r, :k] = chosen, input_ids[r, chosen], 1.0
            roll = rng.random(k)
            to_mask = roll < self.replace_mask
            to_random = (roll >= self.replace_mask) & (roll < self.replace_mask
                                                        + self.replace_random)
            out[r, chosen[to_mask]] = self.mask_id
            out[r, chosen[to_random]] = rng.integers(0, self.vocab_size, int(to_random.sum()))
        return {"input_ids": out, "targets": positions, "target_ids": labels,
                "target_weights": weights}

    def _choose(self, rng: np.random.Generator, candidates: np.ndarray, words: np.ndarray,
                budget: int) -> np.ndarray:
        if self.continues is None:
            return np.sort(rng.choice(candidates, budget, replace=False))
        ids = words[candidates]
        order = rng.permutation(int(ids.max()) + 1)
        sizes = np.bincount(ids)
        taken, total = [], 0
        for w in order:
            if total + sizes[w] <= budget:
                taken.append(w)
                total += sizes[w]
                if total == budget:
                    break
        return np.sort(candidates[np.isin(ids, taken)])


def word_continuations(tokenizer: Any) -> np.ndarray:
    """[vocab] True for tokens that continue the word before (see the module docstring)."""
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    tokens = [""] * size
    for token, i in vocab.items():
        tokens[i] = token
    if any(t.startswith("##") for t in tokens):
        return np.asarray([t.startswith("##") for t in tokens])
    for marker in ("Ġ", "▁"):
        if sum(t.startswith(marker) for t in tokens) > size // 10:
            return np.asarray([bool(t) and not t.startswith(marker) for t in tokens])
    raise UserError(f"tokenizer {type(tokenizer).__name__}: cannot tell where words start "
                    "(no '##', 'Ġ' or '▁' tokens), so whole-word masking is not available; "
                    "set mlm.whole_word=False")
