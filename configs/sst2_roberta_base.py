"""roberta-base on GLUE SST-2 from the hub (published: 94.8 validation accuracy)."""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "FacebookAI/roberta-base"
    c.data.name_or_path = "nyu-mll/glue"
    c.data.subset = "sst2"
    c.data.text_column = "sentence"
    c.data.label_names = ["negative", "positive"]
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.06
    c.train.weight_decay = 0.1
    c.eval.every_steps = 1000
    c.checkpoint.every_steps = 1000
    return c
