"""configs/sst2_minilm.py with sequence packing (flax_sentiment/packing.py): each step's 32
examples are packed into rows of 128 tokens, so a few row counts are compiled instead of one
shape per length bucket, and the validation set runs in one shape. Otherwise the baseline's
hyperparameters (a batch is still 32 examples, so the schedule is unchanged)."""

from flax_sentiment.config import base_config, minilm_sst2


def get_config():
    c = minilm_sst2(base_config())
    c.data.pack_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    return c
