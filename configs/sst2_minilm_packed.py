"""configs/sst2_minilm.py with sequence packing (flax_sentiment/data/packing.py): each step's 32
examples are packed into rows of 128 tokens, so a few row counts are compiled instead of one
shape per length bucket, and the validation set runs in one shape. Otherwise the baseline's
hyperparameters (a batch is still 32 examples, so the schedule is unchanged)."""

from flax_sentiment.config import base_config, baseline_training, minilm_sst2


def get_config():
    c = baseline_training(minilm_sst2(base_config()))
    c.data.pack_length = 128
    c.data.pack_sampling = "uniform"  # as recorded
    return c
