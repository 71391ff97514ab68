"""Section `eval`: eval-step throughput and compile time per bucket shape, and how many
programs a full run compiles (one train and one eval program per bucket shape the data uses)."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np

from flax_sentiment.bench.common import Context, log, median
from flax_sentiment.bench.epoch import sst2_data
from flax_sentiment.bench.runners import make_trainer
from flax_sentiment.data import batching
from flax_sentiment.data.buckets import DEFAULT_BUCKETS, bucket_of


def run(ctx: Context) -> dict[str, Any]:
    args = ctx.args
    log(f"\n== eval: batch {args.eval_batch}, per bucket shape (float32)")
    trainer, bundle, params = make_trainer(ctx.folder, "float32", args.batch, 10)
    data = sst2_data(args, bundle.tokenizer, list(args.buckets or DEFAULT_BUCKETS),
                     ctx.tmp)
    params = trainer.place(params)
    buckets = list(data.buckets)
    used_train = sorted({buckets[b] for b in np.unique(
        bucket_of(data.train.lengths, buckets))})
    log(f"{'shape':>12}{'compile s':>11}{'step ms':>10}{'ex/s':>10}")
    rows = {}
    for length in used_train:
        batch = batching.materialize(
            data.train, np.arange(args.eval_batch) % len(data.train), length, data.pad_id)
        batch = batching.shard_batch(batch, trainer.data_sharding)
        t0 = time.perf_counter()
        compiled = trainer.model_step.lower(params, batch).compile()
        c = time.perf_counter() - t0
        jax.block_until_ready(compiled(params, batch))
        times = []
        for _ in range(args.data_reps):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(params, batch))
            times.append(time.perf_counter() - t0)
        s = median(times)
        rows[length] = (c, s)
        log(f"{args.eval_batch:>6}x{length:<5}{c:>11.2f}{1e3 * s:>10.1f}"
            f"{args.eval_batch / s:>10.0f}")
    log(f"compiles in a full run: {len(used_train)} train shapes + {len(used_train)} eval shapes "
        f"(buckets the data uses: {used_train}) = {2 * len(used_train)}; "
        f"eval compile total {sum(c for c, _ in rows.values()):.1f}s")
    return {"eval": {"shapes": used_train, "rows": rows}}
