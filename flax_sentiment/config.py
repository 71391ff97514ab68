"""The base config every `configs/*.py` starts from, and its validation.

Configs are code (`get_config()` returning an `ml_collections.ConfigDict`); every key exists
here with its default, so a typo on the command line (`--config.train.learnin_rate`) is an error.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

from flax_sentiment.data import default_data_config
from flax_sentiment.errors import UserError


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.name_or_path = "bert-base-uncased"  # hub id, local folder, or pip:PACKAGE/sub/folder
    # Compute dtype: float32 | bfloat16 (parameters and optimizer state stay float32). bfloat16
    # pays on TPUs and recent GPUs; on the 2-core CPU of docs/BENCHMARKS.md it was 1.01x float32.
    c.model.dtype = "float32"

    c.data = default_data_config()

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 32  # global, over all devices and processes
    c.train.num_epochs = 3.0
    c.train.max_steps = 0  # > 0 overrides num_epochs
    c.train.learning_rate = 2e-5
    c.train.schedule = "linear"  # warmup then linear | cosine | constant
    c.train.warmup_ratio = 0.1  # of the total steps (train.warmup_steps > 0 overrides)
    c.train.warmup_steps = 0
    c.train.weight_decay = 0.01  # AdamW; never on biases or LayerNorm parameters
    c.train.adam_b1 = 0.9
    c.train.adam_b2 = 0.999
    c.train.adam_eps = 1e-8
    c.train.max_grad_norm = 1.0  # global-norm clipping; 0 = off
    c.train.grad_accum_steps = 1  # micro-batches per step (batch_size is split, not multiplied)
    c.train.label_smoothing = 0.0
    c.train.class_weights = ()  # one weight per label, () = all 1
    c.train.seed = 0
    c.train.log_every_steps = 50

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 500  # 0 = only at the end
    c.eval.batch_size = 128
    c.eval.metric = "accuracy"  # tracked for the best checkpoint and early stopping
    c.eval.metric_mode = "max"  # max | min
    c.eval.early_stopping_patience = 0  # evals without improvement before stopping; 0 = off

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # 0 = only at the end (and at evals, for the best one)
    c.checkpoint.keep = 2  # latest checkpoints kept, plus the best by eval.metric
    c.checkpoint.async_save = True

    # XLA's persistent compilation cache: a resumed or repeated run skips recompiling its
    # bucket shapes. '' = off.
    c.compilation_cache_dir = "~/.cache/flax_sentiment/xla"

    c.distributed = ml_collections.ConfigDict()
    c.distributed.coordinator_address = ""  # host:port of process 0 ('' = single process/TPU)
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.distributed.initialization_timeout = 300
    # A process that stops answering for this long makes the others fail instead of hang.
    c.distributed.heartbeat_timeout_seconds = 100
    return c


def glue_sst2(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """GLUE SST-2 from the Hugging Face hub, as the hub recipes use it (eval on validation)."""
    c.data.name_or_path = "nyu-mll/glue"
    c.data.subset = "sst2"
    c.data.text_column = "sentence"
    c.data.label_names = ("negative", "positive")
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.eval.every_steps = 1000
    c.checkpoint.every_steps = 1000
    return c


def validate(config: ml_collections.ConfigDict) -> None:
    """Reject values that would fail later, deep inside JAX or the data pipeline."""
    t, e = config.train, config.eval

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise UserError(f"config {key}={value!r}: {why}")

    need(bool(config.model.name_or_path), "model.name_or_path", config.model.name_or_path,
         "must name a model")
    need(config.model.dtype in ("float32", "bfloat16"), "model.dtype", config.model.dtype,
         "must be float32 or bfloat16")
    need(bool(config.data.name_or_path), "data.name_or_path", config.data.name_or_path,
         "must name a dataset")
    need(len(config.data.label_names) >= 2, "data.label_names", list(config.data.label_names),
         "needs at least two labels")
    need(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "must be > 0")
    need(t.batch_size > 0, "train.batch_size", t.batch_size, "must be > 0")
    need(t.grad_accum_steps >= 1 and t.batch_size % t.grad_accum_steps == 0,
         "train.grad_accum_steps", t.grad_accum_steps,
         f"must be >= 1 and divide train.batch_size={t.batch_size}")
    need(t.max_steps > 0 or t.num_epochs > 0, "train.num_epochs", t.num_epochs,
         "must be > 0 when train.max_steps is 0")
    need(t.schedule in ("linear", "cosine", "constant"), "train.schedule", t.schedule,
         "must be linear, cosine or constant")
    need(0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "must be in [0, 1)")
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing,
         "must be in [0, 1)")
    need(not t.class_weights or len(t.class_weights) == len(config.data.label_names),
         "train.class_weights", tuple(t.class_weights),
         f"needs one weight per label ({len(config.data.label_names)})")
    need(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "must be > 0")
    need(e.batch_size > 0, "eval.batch_size", e.batch_size, "must be > 0")
    need(e.metric_mode in ("max", "min"), "eval.metric_mode", e.metric_mode, "must be max or min")
    need(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)
