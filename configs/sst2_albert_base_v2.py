"""albert-base-v2 on GLUE SST-2 from the hub (published: 92.9 validation accuracy)."""

from flax_sentiment.config import base_config, glue_sst2


def get_config():
    c = glue_sst2(base_config())
    c.model.name_or_path = "albert/albert-base-v2"
    c.train.learning_rate = 3e-5
    c.train.warmup_ratio = 0.06
    return c
