"""3-class TweetEval with the quality techniques: configs/tweet_eval_minilm.py plus a
mean-pooled head, layer-wise learning-rate decay 0.8 (with twice the base rate, since the decay
lowers every layer's rate below the head's), the top layer and the head re-initialised, and an
EMA (0.99) that judges and exports the run. docs/RESULTS.md has the seeds and the comparison
with the first-token version."""

from flax_sentiment.config import base_config, tweet_eval_minilm, tweet_eval_techniques


def get_config():
    c = tweet_eval_techniques(tweet_eval_minilm(base_config()))
    return c
