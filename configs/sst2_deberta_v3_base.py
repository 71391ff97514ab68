"""microsoft/deberta-v3-base on GLUE SST-2 from the hub: its SentencePiece tokenizer, no token
types (an untuned starting point; tune it with scripts/sweep.py)."""

from flax_sentiment.config import base_config, glue_sst2


def get_config():
    c = glue_sst2(base_config())
    c.model.name_or_path = "microsoft/deberta-v3-base"
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.06
    c.train.weight_decay = 0.01
    return c
