"""3-class TweetEval: configs/tweet_eval_minilm_best.py's MiniLM (mean-pooled head, layer decay
0.8 at twice the rate, the top layer re-initialised, EMA 0.99 judging and exporting the run)
distilled from the MPNet teacher of configs/tweet_eval_mpnet.py, at distillation weight 0.8 and
temperature 2 as configs/sst2_minilm_distilled.py (docs/RESULTS.md, "MPNet").
First train the teacher into runs/tweet_eval_mpnet:
    scripts/train.py --config configs/tweet_eval_mpnet.py --workdir runs/tweet_eval_mpnet
Its logits on the 12,284 labelled tweets are computed by the first student and cached."""

from flax_sentiment.config import base_config, tweet_eval_minilm, tweet_eval_techniques


def get_config():
    c = tweet_eval_techniques(tweet_eval_minilm(base_config()))
    c.train.teacher = ("runs/tweet_eval_mpnet@best",)
    c.train.distill_weight = 0.8
    c.train.distill_temperature = 2.0
    return c
