"""Section `gpu`: on a GPU (or TPU) backend, BERT-base (random weights) bf16 train steps at
batch 32..256 x seq 128, ours vs PyTorch CUDA, interleaved; skipped on a CPU backend. Ours also
with model.remat: its examples/s and XLA's intermediate buffer (activations) with and without;
and with model.scan_layers: its compile seconds (lowering + XLA) and examples/s.

Self-contained so a GPU machine can run it alone, in one command:
    python scripts/bench.py --sections gpu           # or
    python -m flax_sentiment.bench.gpu [--steps 2] [--reps 7]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import jax

from flax_sentiment.bench.common import (
    Context,
    Shape,
    interleaved,
    log,
    median,
    random_batch,
    resolve_model,
)
from flax_sentiment.bench.runners import Ours, Torch, forget_trainers

BATCHES = (32, 64, 128, 256)


def sweep(workdir: Path, steps: int, reps: int, batches: tuple[int, ...] = BATCHES
          ) -> dict[int, dict[str, float]] | None:
    """{batch: {'ours', 'torch', 'ours_tflops'}} examples/s, or None on a CPU backend."""
    backend = jax.default_backend()
    if backend not in ("gpu", "cuda", "rocm", "tpu"):
        log(f"\n== GPU sweep: skipped (backend is {backend}, no GPU/TPU)")
        return None
    import torch

    folder = resolve_model("bert-base", workdir)
    shape = Shape.of(folder)
    cuda = torch.cuda.is_available()
    log(f"\n== {backend} sweep: BERT-base bf16, seq 128"
        + ("" if cuda else " (PyTorch CUDA not available: ours only)"))
    log(f"{'batch':>6}{'ours ex/s':>11}{'torch ex/s':>12}{'ratio':>7}{'ours TFLOP/s':>14}"
        f"{'remat ex/s':>12}{'temp GiB':>10}{'remat temp GiB':>16}{'compile s':>11}"
        f"{'scan compile s':>16}{'scan ex/s':>11}")
    out = {}
    for b in batches:
        batch = random_batch(b, 128, shape.vocab)
        runners = {"ours": Ours(folder, "bfloat16", batch, steps),
                   "remat": Ours(folder, "bfloat16", batch, steps, remat=True),
                   "scan": Ours(folder, "bfloat16", batch, steps, scan=True)}
        if cuda:
            runners["torch"] = Torch(folder, True, batch, device="cuda")
        t = interleaved(runners, reps, steps)
        ours = b / median(t["ours"])
        theirs = b / median(t["torch"]) if cuda else float("nan")
        tflops = ours * shape.train_flops(128) / 1e12
        remat = b / median(t["remat"])
        scan = b / median(t["scan"])
        temp, remat_temp = (runners[k].temp_bytes / 2**30 for k in ("ours", "remat"))
        compile_s, scan_compile_s = (runners[k].compile_s for k in ("ours", "scan"))
        log(f"{b:>6}{ours:>11.0f}{theirs:>12.0f}{ours / theirs:>7.2f}{tflops:>14.1f}"
            f"{remat:>12.0f}{temp:>10.2f}{remat_temp:>16.2f}{compile_s:>11.1f}"
            f"{scan_compile_s:>16.1f}{scan:>11.0f}")
        out[b] = {"ours": ours, "torch": theirs, "ours_tflops": tflops, "remat": remat,
                  "temp_gib": temp, "remat_temp_gib": remat_temp, "compile_s": compile_s,
                  "scan_compile_s": scan_compile_s, "scan": scan}
        del runners
        forget_trainers()  # ~440 MB of device weights per cached trainer
    return out


def run(ctx: Context) -> dict[str, Any]:
    result = sweep(ctx.tmp, ctx.args.steps, ctx.args.reps,
                   tuple(getattr(ctx.args, "gpu_batches", BATCHES)))
    return {"gpu": result} if result is not None else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2, help="Train steps per round and runner.")
    parser.add_argument("--reps", type=int, default=7, help="Interleaved rounds (median).")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    args = parser.parse_args()
    log(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")
    with tempfile.TemporaryDirectory(prefix="fs_bench_gpu_") as tmp:
        sweep(Path(tmp), args.steps, args.reps, tuple(args.batches))


if __name__ == "__main__":
    main()
