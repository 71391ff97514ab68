"""The step runners the in-process sections alternate (`common.interleaved`): our production train
step (`Ours`), transformers' PyTorch model with torch AdamW (`Torch`) and a float32 matmul probe
(`PeakProbe`). Each has `step(n)`: n steps, synchronised at the end, so one clock measures all.

torch and transformers are imported inside `Torch`, `PeakProbe` and `pick_torch_threads` only.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_sentiment import parallel
from flax_sentiment.config import base_config
from flax_sentiment.data import batching
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.pretrained import load_pretrained_bundle
from flax_sentiment.training.steps import Steps

_TRAINERS: dict[tuple, Any] = {}


def make_trainer(folder: Path, dtype: str, batch: int, steps: int, remat: bool = False,
                 scan: bool = False, attention: str = "einsum",
                 attention_dropout: float | None = None) -> tuple[Steps, Any, Any]:
    """The production steps, as the loop builds them (cached: sections share compiled
    shapes), the bundle, and the initial weights. `remat`, `scan`, `attention`,
    `attention_dropout`: config model.remat, model.scan_layers, model.attention and
    model.attention_dropout (None: the checkpoint's)."""
    key = (str(folder), dtype, batch, remat, scan, attention, attention_dropout)
    if key not in _TRAINERS:
        _TRAINERS[key] = _make_trainer(folder, dtype, batch, steps, remat, scan, attention,
                                       attention_dropout)
    return _TRAINERS[key]


def forget_trainers() -> None:
    """Drop the cached steps and weights (the GPU sweep's batches each build their own)."""
    _TRAINERS.clear()


def _make_trainer(folder: Path, dtype: str, batch: int, steps: int, remat: bool, scan: bool,
                  attention: str, attention_dropout: float | None
                  ) -> tuple[Steps, Any, Any]:
    config = base_config()
    config.model.name_or_path = str(folder)
    config.model.dtype = dtype
    config.train.batch_size = batch
    config.train.max_steps = max(steps, 10)
    config.train.learning_rate = 1e-5  # small: many steps on random batches stay finite
    bundle = load_pretrained_bundle(str(folder), num_labels=2, dtype=dtype, seed=0)
    bundle.model.encoder.remat = remat
    bundle.model.encoder.scan = scan
    bundle.model.encoder.set_attention(attention, attention_dropout)
    trainer = Steps(ModelDef(bundle.model), 2, parallel.make_mesh(), train=config.train,
                    total_steps=config.train.max_steps)
    # A host copy of the initial weights: each section starts a fresh state from it.
    return trainer, bundle, jax.device_get(ModelDef.params_of(bundle.model))


def xla_flops(compiled: Any) -> float | None:
    with contextlib.suppress(Exception):
        cost = compiled.cost_analysis()
        if isinstance(cost, list | tuple):
            cost = cost[0]
        return float(cost["flops"])
    return None


class Ours:
    """Train steps of `flax_sentiment.training.steps.Steps` on one fixed batch (placed once)."""

    def __init__(self, folder: Path, dtype: str, batch: dict[str, np.ndarray], steps: int,
                 remat: bool = False, scan: bool = False, attention: str = "einsum",
                 attention_dropout: float | None = None):
        self.trainer, self.bundle, params = make_trainer(folder, dtype, len(batch["labels"]),
                                                         steps, remat, scan, attention,
                                                         attention_dropout)
        self.batch = batching.shard_batch(batch, self.trainer.data_sharding)
        self.state = self.trainer.init_state(params)
        t0 = time.perf_counter()
        lowered = self.trainer.train_step_jit.lower(self.state, self.batch,
                                                   self.trainer.hparams)
        compiled = lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.xla_flops = xla_flops(compiled)
        self.temp_bytes = float("nan")  # XLA's buffer for intermediates (activations)
        with contextlib.suppress(Exception):
            self.temp_bytes = float(compiled.memory_analysis().temp_size_in_bytes)
        self.step(1)  # first call: executable load, allocations

    def step(self, n: int) -> None:
        metrics = None
        for _ in range(n):  # no host sync inside the loop
            self.state, metrics = self.trainer.train_step(self.state, self.batch)
        jax.block_until_ready((self.state, metrics))
        loss = float(metrics["loss"])
        if not math.isfinite(loss):
            raise RuntimeError(f"our loss is {loss}")


class Torch:
    """transformers' PyTorch model in train mode + torch.optim.AdamW (+ grad clipping, as ours)."""

    def __init__(self, folder: Path, bf16: bool, batch: dict[str, np.ndarray],
                 device: str = "cpu"):
        import torch
        import transformers as T

        self.torch, self.device, self.bf16 = torch, device, bf16
        torch.manual_seed(0)
        self.model = T.AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=2).to(device).train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.01)
        self.batch = {k: torch.as_tensor(v.astype(np.int64)).to(device)
                      for k, v in batch.items() if k not in ("weights", "index")}
        self.step(1)

    def _sync(self) -> None:
        if self.device != "cpu":
            self.torch.cuda.synchronize()

    def step(self, n: int) -> None:
        torch = self.torch
        autocast = (torch.autocast(self.device.split(":")[0], dtype=torch.bfloat16)
                    if self.bf16 else contextlib.nullcontext())
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            with autocast:
                loss = self.model(**self.batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        self._sync()


def pick_torch_threads(requested: int, rows: int, hidden: int, inner: int) -> str:
    """Set PyTorch's intra-op threads: `requested` (scripts/bench.py passes its --threads
    policy's count, or --torch_threads), or with 0 the faster of 1 and all cores on a
    model-shaped matmul (on a loaded machine OpenMP barriers can make 2 threads slower than 1)."""
    import torch

    cores = os.cpu_count() or 1
    if requested > 0 or cores == 1:
        torch.set_num_threads(requested or 1)
        return f"{torch.get_num_threads()} (as asked)"
    a, b = torch.randn(rows, hidden), torch.randn(hidden, inner)
    best = {}
    for threads in (1, cores, 1, cores):
        torch.set_num_threads(threads)
        torch.mm(a, b)
        t0 = time.perf_counter()
        for _ in range(3):
            torch.mm(a, b)
        best[threads] = min(best.get(threads, 1e9), time.perf_counter() - t0)
    choice = min(best, key=best.get)
    torch.set_num_threads(choice)
    gf = {t: 6 * rows * hidden * inner / s / 1e9 for t, s in best.items()}
    return (f"{choice} (auto: {rows}x{hidden}x{inner} matmul "
            + ", ".join(f"{t} thread(s) {g:.0f} GFLOP/s" for t, g in gf.items()) + ")")


class PeakProbe:
    """float32 matmul GFLOP/s: one jnp.dot and one torch.mm on n x n per round. Run between the
    train steps, the peak that MFU divides by is the best seen under the same (varying) load as
    the steps themselves; run alone, it is the machine's peak (`peak.measure_peak`)."""

    def __init__(self, n: int):
        import torch

        self.n = n
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        self.jax_args = (a, a + 1)
        self.dot = jax.jit(lambda a, b: a @ b)
        self.dot(*self.jax_args).block_until_ready()
        self.torch_args = (torch.randn(n, n), torch.randn(n, n))
        self.mm = torch.mm
        self.mm(*self.torch_args)
        self.seconds: dict[str, list[float]] = {"jax": [], "torch": []}

    def step(self, n: int) -> None:
        for _ in range(n):
            for name, fn in (("jax", lambda: self.dot(*self.jax_args).block_until_ready()),
                             ("torch", lambda: self.mm(*self.torch_args))):
                t0 = time.perf_counter()
                fn()
                self.seconds[name].append(time.perf_counter() - t0)

    def gflops(self, seconds: float) -> float:
        return 2.0 * self.n ** 3 / seconds / 1e9

    @property
    def best(self) -> float:
        """The best round, not the median: a peak is what the hardware does when not
        preempted."""
        return max((self.gflops(min(t)) for t in self.seconds.values() if t), default=0.0)
