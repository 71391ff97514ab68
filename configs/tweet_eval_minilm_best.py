"""3-class TweetEval with the quality techniques: configs/tweet_eval_minilm.py plus a
mean-pooled head, layer-wise learning-rate decay 0.8 (with twice the base rate, since the decay
lowers every layer's rate below the head's), the top layer and the head re-initialised, and an
EMA (0.99) that judges and exports the run. docs/RESULTS.md has the seeds and the comparison
with the first-token version."""

from flax_sentiment.config import base_config, tweet_eval_minilm


def get_config():
    c = tweet_eval_minilm(base_config())
    c.model.pooling = "mean"
    c.model.reinit_layers = 1
    c.train.learning_rate = 2e-4
    c.train.layer_decay = 0.8
    c.train.ema_decay = 0.99
    return c
