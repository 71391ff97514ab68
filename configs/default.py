"""bert-base-uncased on GLUE SST-2 from the Hugging Face hub: what a TPU/GPU user runs."""

from flax_sentiment.config import base_config, glue_sst2


def get_config():
    c = glue_sst2(base_config())
    c.model.name_or_path = "bert-base-uncased"
    c.train.learning_rate = 2e-5
    return c
