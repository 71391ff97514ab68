"""3-class tweets with a multilingual encoder: cardiffnlp/twitter-xlm-roberta-base (XLM-R base,
further pre-trained on ~198M multilingual tweets) on TweetEval sentiment."""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "cardiffnlp/twitter-xlm-roberta-base"
    c.data.name_or_path = "cardiffnlp/tweet_eval"
    c.data.subset = "sentiment"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 3.0
    c.train.learning_rate = 2e-5
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.eval.metric = "f1_macro"  # the TweetEval paper's metric is macro-averaged recall/F1
    c.checkpoint.every_steps = 500
    return c
