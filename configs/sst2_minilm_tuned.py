"""`sst2_minilm.py` with the hyperparameters the sweep chose (configs/sst2_minilm_sweep.py, 13
trials of 300 steps; docs/RESULTS.md): batch 64, learning rate 2.0e-4, warmup 14%, weight decay
0.022. `sst2_minilm.py` stays the fixed baseline other measurements compare with."""

from flax_sentiment.config import base_config, minilm_sst2


def get_config():
    c = minilm_sst2(base_config())
    c.train.num_epochs = 2.0
    c.train.batch_size = 64
    c.train.learning_rate = 2.0e-4
    c.train.warmup_ratio = 0.14
    c.train.weight_decay = 0.022
    c.eval.every_steps = 250
    c.checkpoint.every_steps = 250
    c.sweep.test_split = "test"
    return c
