"""roberta-base on IMDB reviews (long texts): keep the first 128 and the last 382 tokens
(head_tail truncation, Sun et al. 2019), evaluate on the 25k test reviews."""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "FacebookAI/roberta-base"
    c.data.name_or_path = "stanfordnlp/imdb"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "positive")
    c.data.train_split = "train"
    c.data.eval_split = "test"
    c.data.max_length = 512
    c.data.truncation = "head_tail"
    c.data.head_tokens = 128
    c.data.buckets = (128, 256, 384, 512)
    c.train.batch_size = 32
    c.train.grad_accum_steps = 2  # 16 x 512 tokens per micro-batch
    c.train.num_epochs = 2.0
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.eval.batch_size = 64
    c.checkpoint.every_steps = 500
    return c
