"""3-class: the pip-shipped MiniLM-L6 on TweetEval sentiment from ../shared/data.

TweetEval's train split is not shipped there, so (as its README says) this trains on the
12,284-tweet test file and evaluates on the 2,000-tweet validation file.
"""

from flax_sentiment.config import base_config, tweet_eval_minilm


def get_config():
    return tweet_eval_minilm(base_config())
