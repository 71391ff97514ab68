"""3-class tweets: roberta-base on TweetEval sentiment (cardiffnlp/tweet_eval, 'sentiment')."""

from flax_sentiment.config import base_config, tweet_eval_sentiment


def get_config():
    c = tweet_eval_sentiment(base_config())
    c.model.name_or_path = "FacebookAI/roberta-base"
    return c
