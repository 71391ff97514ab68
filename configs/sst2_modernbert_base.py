"""answerdotai/ModernBERT-base on GLUE SST-2 from the hub: pre-norm, rotary, alternating
global/local attention; no token types (an untuned starting point; tune it with
scripts/sweep.py)."""

from flax_sentiment.config import base_config, glue_sst2


def get_config():
    c = glue_sst2(base_config())
    c.model.name_or_path = "answerdotai/ModernBERT-base"
    c.train.learning_rate = 5e-5
    c.train.warmup_ratio = 0.06
    return c
