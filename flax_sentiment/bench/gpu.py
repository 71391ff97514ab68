"""Section `gpu`, and the device check a lent GPU (or TPU) machine runs in one command:

    python -m flax_sentiment.bench.gpu [--budget_s 330] [--json FILE]

Parts, in order, each skipped (and said so) once the time budget is spent:
1. parity: a MiniLM-shaped model's logits through the fused attention path the backend takes
   under `model.attention=auto` (cuDNN on GPUs, splash on TPUs) against the einsum path,
   bfloat16, padded and packed rows; a wrong kernel input shows here before any timing.
2. sweep: BERT-base- and MiniLM-shaped models (random weights), bfloat16 train steps at batch
   32..256 x 128 tokens: ours on the einsum path with the checkpoint's attention dropout
   (0.1), ours fused (`auto`, `model.attention_dropout=0.0`), and PyTorch with SDPA and
   autocast, interleaved in this process; examples/s, the ratio to PyTorch, compile seconds,
   XLA's intermediate buffer.
3. memory: BERT-base at 128 and 512 tokens, with and without `model.remat`: the compiled train
   step's buffers at batch 8 (XLA's memory analysis, nothing run) and the largest batch that
   fits the device's memory at that rate.
4. autotune: the fused BERT-base step at batch 256 compiled in a fresh process at each
   `--xla_gpu_autotune_level` (0 = off, 1, 4 = XLA's default): compile seconds against step
   milliseconds.
The whole-process comparison with the Trainer (MiniLM, 400 steps) is the `trainer` section of
scripts/bench.py; scripts/device_bench.sh runs both. `--smoke` runs every part on any backend
at toy sizes (the CPU test of this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

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
ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


class Budget:
    """Seconds left for the parts; a part that would not fit is skipped and said so."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def allows(self, part: str, needs: float) -> bool:
        if self.left() >= needs:
            return True
        log(f"\n== {part}: skipped ({self.left():.0f} s of the budget left, needs ~{needs:.0f})")
        return False


def _sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        return {"shapes": ("tiny",), "batches": (4,), "seq": 32, "memory_seqs": (32, 64),
                "memory_batch": 2, "steps": 1, "reps": 2}
    return {"shapes": ("bert-base", "minilm-l6"), "batches": BATCHES, "seq": 128,
            "memory_seqs": (128, 512), "memory_batch": 8, "steps": 3, "reps": 5}


def parity(workdir: Path, smoke: bool) -> dict[str, Any]:
    """Max |fused - einsum| over logits, padded and packed (bfloat16, dropout off)."""
    import transformers as T

    from flax_sentiment.data import batching, packing
    from flax_sentiment.data.splits import TokenizedSplit
    from flax_sentiment.models import attention
    from flax_sentiment.models.pretrained import load_pretrained_bundle
    from flax_sentiment.training.steps import apply_model, per_example

    folder = resolve_model("tiny" if smoke else "minilm-l6", workdir)
    model = load_pretrained_bundle(str(folder), num_labels=2, dtype="bfloat16").model
    backend = jax.default_backend()
    # Off an accelerator `auto` is the einsum path itself: compare jax.nn's XLA path there.
    fused = attention.resolve("auto", backend=backend, dtype=model.encoder.dtype,
                              relative=False, local=False, extra=False, dropout=0.0,
                              training=False)
    fused = fused if fused != "einsum" else "xla"
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, 120 if not smoke else 30, 48)
    vocab = T.AutoConfig.from_pretrained(folder).vocab_size
    ids = [list(rng.integers(5, vocab, n)) for n in lengths]
    split = TokenizedSplit.from_encodings("t", {"input_ids": ids}, [str(i) for i in lengths],
                                          ["0", "1"], rng.integers(0, 2, len(ids)))
    n = 128 if not smoke else 32
    padded = batching.materialize(split, np.arange(len(split)), n, 0)
    packed = packing.materialize_packed(split, packing.first_fit_decreasing(split.lengths, n),
                                        n, 8, 0)

    def logits(batch) -> np.ndarray:
        out = np.asarray(apply_model(model, batch), np.float32)
        index = np.asarray(per_example(batch)["index"])
        return out[index >= 0][np.argsort(index[index >= 0])]

    model.encoder.set_attention("einsum", 0.0)
    ref = [logits(b) for b in (padded, packed)]
    model.encoder.set_attention(fused, 0.0)
    got = [logits(b) for b in (padded, packed)]
    errors = [float(np.abs(g - r).max()) for g, r in zip(got, ref, strict=True)]
    scale = float(np.abs(ref[0]).max())
    log(f"\n== parity ({backend}, bfloat16): {fused} vs einsum, max |logit difference| "
        f"padded {errors[0]:.2e}, packed {errors[1]:.2e} (largest logit {scale:.2f}; bfloat16 "
        "rounds at ~1e-2 of it)")
    return {"path": fused, "padded": errors[0], "packed": errors[1], "scale": scale}


def sweep(workdir: Path, sizes: dict[str, Any], budget: Budget) -> dict[str, Any]:
    """{shape: {batch: {runner: examples/s, ...}}}."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    log(f"\n== sweep: bfloat16 train steps, {sizes['seq']} tokens; PyTorch on {device} with "
        "SDPA and autocast")
    log(f"{'model':>10}{'batch':>6}{'einsum':>9}{'fused':>9}{'torch':>9}{'fused/torch':>12}"
        f"{'einsum/torch':>13}{'TFLOP/s':>9}{'compile s e/f':>15}{'temp GiB e/f':>14}")
    out: dict[str, Any] = {}
    for spec in sizes["shapes"]:
        folder = resolve_model(spec, workdir)
        shape = Shape.of(folder)
        for b in sizes["batches"]:
            if not budget.allows(f"sweep {spec} batch {b}", 60 if spec == "bert-base" else 30):
                continue
            batch = random_batch(b, sizes["seq"], shape.vocab)
            runners = {
                "einsum": Ours(folder, "bfloat16", batch, sizes["steps"]),
                "fused": Ours(folder, "bfloat16", batch, sizes["steps"], attention="auto",
                              attention_dropout=0.0),
                "torch": Torch(folder, True, batch, device=device),
            }
            t = interleaved(runners, sizes["reps"], sizes["steps"])
            ex = {k: b / median(v) for k, v in t.items()}
            tflops = ex["fused"] * shape.train_flops(sizes["seq"]) / 1e12
            comp = [runners[k].compile_s for k in ("einsum", "fused")]
            temp = [runners[k].temp_bytes / 2**30 for k in ("einsum", "fused")]
            log(f"{spec:>10}{b:>6}{ex['einsum']:>9.0f}{ex['fused']:>9.0f}{ex['torch']:>9.0f}"
                f"{ex['fused'] / ex['torch']:>12.2f}{ex['einsum'] / ex['torch']:>13.2f}"
                f"{tflops:>9.1f}{comp[0]:>8.1f}/{comp[1]:<6.1f}{temp[0]:>7.2f}/{temp[1]:<6.2f}")
            out.setdefault(spec, {})[b] = {**ex, "fused_tflops": tflops, "compile_s": comp,
                                          "temp_gib": temp}
            del runners
            forget_trainers()
    return out


def memory(workdir: Path, sizes: dict[str, Any], budget: Budget, smoke: bool) -> dict[str, Any]:
    """Bytes a train step holds at a small batch, and the batch that fits the device."""
    folder = resolve_model("tiny" if smoke else "bert-base", workdir)
    shape = Shape.of(folder)
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    log(f"\n== memory: {folder.name}, bfloat16, fused attention, batch {sizes['memory_batch']}"
        f" compiled; device limit {limit / 2**30:.1f} GiB" if limit else
        f"\n== memory: {folder.name}, batch {sizes['memory_batch']} (no device limit here)")
    log(f"{'tokens':>7}{'remat':>7}{'state GiB':>11}{'temp MiB/example':>18}{'fits batch':>12}")
    out = {}
    b = sizes["memory_batch"]
    for seq in sizes["memory_seqs"]:
        for remat in (False, True):
            if not budget.allows(f"memory {seq} remat={remat}", 45):
                continue
            ours = Ours(folder, "bfloat16", random_batch(b, seq, shape.vocab), 1, remat=remat,
                        attention="auto", attention_dropout=0.0)
            state = sum(x.nbytes for x in jax.tree.leaves(ours.state))
            per_example = ours.temp_bytes / b
            fits = int((0.9 * limit - state) // per_example) if limit else None
            log(f"{seq:>7}{str(remat):>7}{state / 2**30:>11.2f}{per_example / 2**20:>18.1f}"
                f"{fits if fits is not None else '-':>12}")
            out[f"{seq}{'_remat' if remat else ''}"] = {"state_bytes": state,
                                                        "temp_per_example": per_example,
                                                        "fits": fits}
            del ours
            forget_trainers()
    return out


_AUTOTUNE_CHILD = """
import json, sys, time
from pathlib import Path
from flax_sentiment.bench.common import random_batch, Shape
from flax_sentiment.bench.runners import Ours
folder, batch, seq = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ours = Ours(folder, "bfloat16", random_batch(batch, seq, Shape.of(folder).vocab), 3,
            attention="auto", attention_dropout=0.0)
t0 = time.perf_counter(); ours.step(10); step = (time.perf_counter() - t0) / 10
print(json.dumps({"compile_s": ours.compile_s, "step_ms": 1000 * step}))
"""


def autotune(workdir: Path, sizes: dict[str, Any], budget: Budget, smoke: bool
             ) -> dict[str, Any]:
    folder = resolve_model("tiny" if smoke else "bert-base", workdir)
    b = sizes["batches"][-1]
    log(f"\n== autotune: {folder.name} fused step, batch {b} x {sizes['seq']}, a fresh process "
        "per --xla_gpu_autotune_level")
    log(f"{'level':>6}{'compile s':>11}{'step ms':>9}")
    out = {}
    for level in (0, 1, 4):
        if not budget.allows(f"autotune level {level}", 90 if not smoke else 20):
            continue
        env = dict(os.environ)
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_gpu_autotune_level={level}".strip()
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # a cold compile each time
        result = subprocess.run([sys.executable, "-c", _AUTOTUNE_CHILD, str(folder), str(b),
                                 str(sizes["seq"])], capture_output=True, text=True, env=env,
                                timeout=max(30.0, budget.left()))
        if result.returncode != 0:
            log(f"{level:>6}  failed: {result.stderr.strip().splitlines()[-1:]}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        log(f"{level:>6}{row['compile_s']:>11.1f}{row['step_ms']:>9.1f}")
        out[level] = row
    return out


def device_check(workdir: Path, budget_s: float, smoke: bool = False) -> dict[str, Any]:
    """Every part, in order, within `budget_s` seconds."""
    backend = jax.default_backend()
    if backend not in ACCELERATORS and not smoke:
        log(f"\n== GPU check: skipped (backend is {backend}; --smoke runs it at toy sizes)")
        return {}
    budget, sizes = Budget(budget_s), _sizes(smoke)
    log(f"jax {jax.__version__} on {backend}: {jax.devices()}")
    result: dict[str, Any] = {"backend": backend, "device": str(jax.devices()[0])}
    if budget.allows("parity", 20):
        result["parity"] = parity(workdir, smoke)
    result["sweep"] = sweep(workdir, sizes, budget)
    result["memory"] = memory(workdir, sizes, budget, smoke)
    result["autotune"] = autotune(workdir, sizes, budget, smoke)
    return result


def run(ctx: Context) -> dict[str, Any]:
    result = device_check(ctx.tmp, getattr(ctx.args, "gpu_budget_s", 330.0))
    return {"gpu": result} if result else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_s", type=float, default=330.0,
                        help="Seconds for all parts; parts that would overrun are skipped.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--smoke", action="store_true",
                        help="Every part at toy sizes on any backend (a CPU test).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fs_bench_gpu_") as tmp:
        result = device_check(Path(tmp), args.budget_s, args.smoke)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
