"""3-class tweets with a multilingual encoder: cardiffnlp/twitter-xlm-roberta-base (XLM-R base,
further pre-trained on ~198M multilingual tweets) on TweetEval sentiment."""

from flax_sentiment.config import base_config, tweet_eval_sentiment


def get_config():
    c = tweet_eval_sentiment(base_config())
    c.model.name_or_path = "cardiffnlp/twitter-xlm-roberta-base"
    return c
