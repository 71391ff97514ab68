"""all-mpnet-base-v2 on 3-class TweetEval: the teacher of configs/tweet_eval_minilm_distilled.py.
Run `make mpnet` first (the checkpoint in .cache/models/all-mpnet-base-v2).

Sized for a 2-core CPU as configs/sst2_mpnet.py is (docs/RESULTS.md, "MPNet"): one epoch of
the 12,284 labelled tweets in steps of 32 (384 steps), each step's tweets packed into rows of
128 tokens drawn from length strata (one train shape), a mean-pooled head, learning rate 5e-5
with 10% warmup, judged by macro F1 on the 2,000 validation tweets. float32: add
--config.model.dtype=bfloat16 on CPUs with AVX512-BF16 or AMX, and on GPUs and TPUs."""

from flax_sentiment.config import base_config, tweet_eval_minilm


def get_config():
    c = tweet_eval_minilm(base_config())  # TweetEval's files, columns, labels; 128 tokens
    c.model.name_or_path = ".cache/models/all-mpnet-base-v2"
    c.model.pooling = "mean"
    c.data.pack_length = -1  # rows of max_length
    c.data.pack_sampling = "stratified"
    c.train.num_epochs = 1.0
    c.train.learning_rate = 5e-5
    c.train.warmup_ratio = 0.1
    c.eval.every_steps = 128
    c.checkpoint.every_steps = 128
    return c
