"""Where a train step's time goes at the shapes SST-2 really has: ours and PyTorch's, phase by
phase (forward, backward, clipping + AdamW), interleaved round by round like the other sections.

SST-2 sentences are short (median 11 MiniLM tokens, 90% under 26): a padded batch of 32 is
32 x 16 or 32 x 24 in our buckets; packed it is 4 rows of 128. The phases are separate jitted
programs on our side (so fusion across them is lost: their sum exceeds the one-program step,
which is printed too) and separate calls on torch's side.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax

from flax_sentiment.bench.common import Context, log
from flax_sentiment.bench.runners import make_trainer
from flax_sentiment.data import batching, packing
from flax_sentiment.data.splits import TokenizedSplit
from flax_sentiment.training.steps import loss_sum


def _split(lengths: list[int], vocab: int, seed: int = 0) -> TokenizedSplit:
    rng = np.random.default_rng(seed)
    ids = [list(rng.integers(min(1000, vocab // 2), vocab, n)) for n in lengths]
    return TokenizedSplit.from_encodings("profile", {"input_ids": ids}, ["x"] * len(lengths),
                                         ["negative", "positive"],
                                         rng.integers(0, 2, len(lengths)))


def sst2_like_lengths(batch: int, cap: int, seed: int = 0) -> list[int]:
    """`batch` lengths drawn around SST-2's (log-normal, median 11 tokens), at most `cap`."""
    rng = np.random.default_rng(seed)
    return [int(min(max(round(x), 3), cap)) for x in rng.lognormal(np.log(11), 0.6, batch)]


class OursPhases:
    """Our loss forward, forward + backward and the optimizer update as three programs, and the
    production train step as one."""

    def __init__(self, folder: Path, batch: dict[str, np.ndarray], examples: int):
        self.trainer, bundle, params = make_trainer(folder, "float32", examples, 10)
        trainer = self.trainer
        self.batch = batching.shard_batch(batch, trainer.data_sharding)
        self.state = trainer.init_state(params)
        model_def, h = trainer.model_def, trainer.hparams
        rng = np.zeros(2, np.uint32)

        def loss(p, b):
            return loss_sum(model_def, p, b, rng, num_labels=2, label_smoothing=0.0,
                            class_weights=h["class_weights"])[0]

        self.forward = jax.jit(loss)
        self.grad = jax.jit(jax.value_and_grad(loss))
        tx = trainer.tx

        def update(grads, opt_state, params):
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        self.update = jax.jit(update)
        self.grads = self.grad(self.state.params, self.batch)[1]
        self.run_all(1)

    def run_all(self, n: int) -> dict[str, float]:
        def whole():
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
            return metrics

        times: dict[str, float] = {}
        for name, fn in (
                ("forward", lambda: self.forward(self.state.params, self.batch)),
                ("forward+backward", lambda: self.grad(self.state.params, self.batch)),
                ("clip+AdamW", lambda: self.update(self.grads, self.state.opt_state,
                                                   self.state.params)),
                ("whole step", whole)):
            jax.block_until_ready(fn())
            t0 = time.perf_counter()
            for _ in range(n):
                out = fn()
            jax.block_until_ready(out)
            times[name] = (time.perf_counter() - t0) / n
        return times


class TorchPhases:
    """transformers' model in train mode: forward (with the loss), backward, clip + AdamW."""

    def __init__(self, folder: Path, batch: dict[str, np.ndarray]):
        import torch
        import transformers as T

        self.torch = torch
        torch.manual_seed(0)
        self.model = T.AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=2).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.01)
        self.batch = {k: torch.as_tensor(v.astype(np.int64)) for k, v in batch.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids", "labels")}
        self.run_all(1)

    def run_all(self, n: int) -> dict[str, float]:
        torch = self.torch
        times = {"forward": 0.0, "forward+backward": 0.0, "clip+AdamW": 0.0, "whole step": 0.0}
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = self.model(**self.batch).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            t3 = time.perf_counter()
            times["forward"] += (t1 - t0) / n
            times["forward+backward"] += (t2 - t0) / n
            times["clip+AdamW"] += (t3 - t2) / n
            times["whole step"] += (t3 - t0) / n
        return times


def run(ctx: Context) -> dict[str, Any]:
    """Phase times (ms, medians over interleaved rounds) at SST-2's shapes."""
    args, folder = ctx.args, ctx.folder
    vocab = ctx.shape.vocab
    examples, reps = args.batch, max(args.reps, 3)
    rows = []
    cases = [(f"padded {examples}x{n}", n, 0) for n in (16, 24)] + [("packed", 0, 128)]
    if args.quick:
        cases = cases[:1] + [("packed", 0, 32)]
    log(f"\nstep profile at SST-2 shapes ({examples} examples of median 11 tokens; ms, median "
        f"of {reps} rounds; phases run as separate programs, 'whole step' as the one program)")
    log(f"{'case':<22}{'side':<7}{'forward':>10}{'fwd+bwd':>10}{'clip+AdamW':>12}"
        f"{'whole step':>12}")
    for name, length, pack in cases:
        lengths = sst2_like_lengths(examples, length or pack)
        split = _split(lengths, vocab)
        if pack:
            packed_rows = packing.first_fit_decreasing(split.lengths, pack)
            ours_batch = packing.materialize_packed(split, packed_rows, pack,
                                                    max(map(len, packed_rows)), 0)
            name = f"packed {len(packed_rows)}x{pack}"
        else:
            ours_batch = batching.materialize(split, np.arange(examples), length, 0)
        torch_batch = batching.materialize(split, np.arange(examples),
                                           int(split.lengths.max()), 0)
        ours, theirs = OursPhases(folder, ours_batch, examples), TorchPhases(folder, torch_batch)
        samples: dict[str, list[dict[str, float]]] = {"ours": [], "torch": []}
        for _ in range(reps):
            samples["ours"].append(ours.run_all(1))
            samples["torch"].append(theirs.run_all(1))
        for side, runs in samples.items():
            med = {k: 1e3 * statistics.median(r[k] for r in runs) for k in runs[0]}
            rows.append({"case": name, "side": side, **med,
                         "tokens": int(ours_batch["input_ids"].size) if side == "ours"
                         else int(torch_batch["input_ids"].size)})
            log(f"{name:<22}{side:<7}{med['forward']:>10.1f}{med['forward+backward']:>10.1f}"
                f"{med['clip+AdamW']:>12.1f}{med['whole step']:>12.1f}")
    return {"profile": rows}
