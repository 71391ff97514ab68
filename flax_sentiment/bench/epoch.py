"""Section `data`: one SST-2 epoch, our length-bucketed batches vs fixed padding to --seq.

Epoch time = the sum over the epoch's real batch plan of the measured (median) train-step time
of each batch's shape; compiles are excluded and listed apart, so the ratio is what bucketing
saves in steady training, not in compiles.
"""

from __future__ import annotations

import time
import types
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_sentiment.bench.common import Context, log, median, sst2_subset
from flax_sentiment.bench.runners import make_trainer
from flax_sentiment.config import default_data_config
from flax_sentiment.data import batching, splits
from flax_sentiment.data.buckets import DEFAULT_BUCKETS


def sst2_data(args: types.SimpleNamespace, tokenizer: Any, buckets: list[int],
              workdir: Path) -> splits.Data:
    """SST-2's train split (the first --data_limit sentences), tokenized to --seq."""
    cfg = default_data_config()
    cfg.name_or_path = str(sst2_subset(args.data, workdir, args.data_limit))
    cfg.eval_split = ""
    cfg.max_length = args.seq
    cfg.buckets = buckets
    return splits.load_data(cfg, tokenizer)


def step_time(trainer: Any, state: Any, batch: dict[str, np.ndarray], reps: int
              ) -> tuple[float, float, Any]:
    """(compile s, median s/step, state) of the train step on one batch shape."""
    batch = batching.shard_batch(batch, trainer.data_sharding)
    t0 = time.perf_counter()
    state, m = trainer.train_step(state, batch)
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        state, m = trainer.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    return max(first - median(times), 0.0), median(times), state


def run(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    log(f"\n== SST-2 epoch: bucketed vs fixed padding to {args.seq} "
        f"(batch {args.batch}, model dtype float32)")
    trainer, bundle, params = make_trainer(ctx.folder, "float32", args.batch, 10)
    data = sst2_data(args, bundle.tokenizer, list(args.buckets or DEFAULT_BUCKETS),
                     ctx.tmp)
    lengths = data.train.lengths
    n = len(lengths)
    result: dict[str, Any] = {"examples": n}
    state = trainer.init_state(params)
    step_s: dict[int, float] = {}
    compile_s: dict[int, float] = {}
    for name, buckets in (("bucketed", list(data.buckets)), ("fixed", [args.seq])):
        it = batching.TrainIterator(data.train, args.batch, buckets, seed=0, pad_id=data.pad_id,
                                    process_index=0, process_count=1)
        plan_buckets, _ = it.plan(0)
        shapes = [buckets[b] for b in plan_buckets]
        t0 = time.perf_counter()
        host = [next(it) for _ in range(min(20, len(shapes)))]
        host_s = (time.perf_counter() - t0) / len(host)
        for length in sorted(set(shapes)):
            if length not in step_s:
                rows = next(b for b in host if b["input_ids"].shape[1] == length) \
                    if any(b["input_ids"].shape[1] == length for b in host) \
                    else batching.materialize(
                        data.train, np.arange(args.batch) % n, length, data.pad_id)
                c, s, state = step_time(trainer, state, rows, args.data_reps)
                step_s[length], compile_s[length] = s, c
                log(f"  train shape {args.batch}x{length:<4} step {1e3 * s:8.1f} ms, "
                    f"compile {c:5.1f} s")
        epoch_s = sum(step_s[s] for s in shapes)
        padded = len(shapes) * args.batch * np.asarray(shapes).mean()
        result[name] = {
            "steps": len(shapes), "epoch_s": epoch_s, "ex_s": n / epoch_s,
            "padding": 1 - lengths.sum() / padded, "shapes": len(set(shapes)),
            "host_ms": 1e3 * host_s, "compile_s": sum(compile_s[s] for s in set(shapes)),
        }
    result["step_s"], result["compile_s"] = step_s, compile_s
    log(f"\n{'SST-2 epoch':<12}{'steps':>7}{'shapes':>7}{'padding':>9}{'epoch s':>10}"
        f"{'ex/s':>9}{'compile s':>11}{'host ms/batch':>15}")
    for name in ("bucketed", "fixed"):
        r = result[name]
        log(f"{name:<12}{r['steps']:>7}{r['shapes']:>7}{100 * r['padding']:>8.1f}%"
            f"{r['epoch_s']:>10.1f}{r['ex_s']:>9.1f}{r['compile_s']:>11.1f}{r['host_ms']:>15.2f}")
    ratio = result["bucketed"]["ex_s"] / result["fixed"]["ex_s"]
    log(f"({n} examples; epoch = sum over the epoch's batch plan of the median step time of "
        f"each shape, compiles excluded)")
    log(f"RATIO SST-2 epoch bucketed/fixed-{args.seq} examples/s: {ratio:.2f}x")
    result["ratio"] = ratio
    return {"data": result}
