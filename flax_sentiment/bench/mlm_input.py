"""Section `mlm-input`: can masked-LM training's input keep up with its step?

On the tweets corpus of configs/tweets_mlm.py (or --mlm_corpus), with --model's tokenizer:
1. tokenizing and building the rows (the `datasets` maps, into a fresh cache): tokens/s, paid
   once, ahead of training;
2. the train iterator (memory-mapped reads, masking, the batch's fields): tokens/s, what runs
   beside every step, in the prefetch thread;
3. the masked-LM train step itself at --batch x --seq: tokens/s.
The ratio of (2) to (3) says how far input is from stalling the step (> 1: never).
"""

from __future__ import annotations

import time
from typing import Any

import jax

from flax_sentiment.bench.common import Context, log, median


def run(ctx: Context) -> dict[str, Any]:
    from flax_sentiment import parallel
    from flax_sentiment.config import base_config
    from flax_sentiment.data import batching
    from flax_sentiment.data.corpus import MlmTrainIterator, build_rows, corpus_files, load_texts
    from flax_sentiment.data.masking import Masker, max_predictions
    from flax_sentiment.models.functional import ModelDef
    from flax_sentiment.models.mlm import load_masked_lm
    from flax_sentiment.models.pretrained import load_tokenizer
    from flax_sentiment.training.steps import Steps

    args = ctx.args
    corpus = list(args.mlm_corpus)
    encodings = list(args.mlm_encodings) or ["utf-8"] * len(corpus)
    log(f"\n== masked-LM input vs step: rows of {args.seq}, batch {args.batch}, "
        f"corpus {', '.join(corpus)}")
    tokenizer = load_tokenizer(ctx.folder)
    cache = str(ctx.tmp / "mlm_cache")
    t0 = time.perf_counter()
    parts = [load_texts(corpus_files([c]), text_column="text", encoding=e, cache_dir=cache)
             for c, e in zip(corpus, encodings, strict=True)]
    import datasets

    texts = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
    if args.data_limit:
        texts = texts.select(range(min(args.data_limit, len(texts))))
    read_s = time.perf_counter() - t0
    pad = tokenizer.pad_token_id or 0
    t0 = time.perf_counter()
    rows = build_rows(texts, tokenizer, length=args.seq, layout="chunk", pad_id=pad)
    build_s = time.perf_counter() - t0
    tokens = len(rows) * args.seq
    log(f"read {len(texts)} texts in {read_s:.1f} s; tokenized and cut into {len(rows)} rows "
        f"({tokens} tokens) in {build_s:.1f} s: {tokens / build_s:,.0f} tokens/s, once")

    masker = Masker.from_tokenizer(tokenizer)
    targets = max_predictions(args.seq, masker.rate)
    it = MlmTrainIterator(rows, args.batch, masker, seed=0, pad_id=pad, num_targets=targets,
                          packed=False)
    n = min(50, it.steps_per_epoch)
    next(it)
    t0 = time.perf_counter()
    for _ in range(n):
        next(it)
    input_s = (time.perf_counter() - t0) / n
    input_tps = args.batch * args.seq / input_s
    log(f"train iterator: {input_s * 1e3:.1f} ms a batch ({n} batches): {input_tps:,.0f} "
        "tokens/s (one thread)")

    bundle = load_masked_lm(ctx.folder)
    mesh = parallel.make_mesh()
    config = base_config()
    steps = Steps(ModelDef(bundle.model), 1, mesh, train=config.train, total_steps=100,
                  task="mlm")
    state = steps.init_state(ModelDef.params_of(bundle.model))
    batch = batching.shard_batch(next(it), steps.data_sharding)
    state, m = steps.train_step(state, batch)
    jax.block_until_ready(m)
    times = []
    for _ in range(max(args.reps, 3)):
        t0 = time.perf_counter()
        state, m = steps.train_step(state, batch)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    step_s = median(times)
    step_tps = args.batch * args.seq / step_s
    ratio = input_tps / step_tps
    log(f"masked-LM train step: {step_s * 1e3:.0f} ms: {step_tps:,.0f} tokens/s")
    verdict = "input never stalls the step" if ratio > 1 else "INPUT-BOUND"
    log(f"input / step: {ratio:.1f}x ({verdict})")
    return {"mlm_input": {"texts": len(texts), "rows": len(rows), "build_tokens_per_s":
                          tokens / build_s, "iterator_tokens_per_s": input_tps,
                          "step_tokens_per_s": step_tps, "ratio": ratio,
                          "step_ms": step_s * 1e3, "iterator_ms": input_s * 1e3}}
