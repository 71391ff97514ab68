"""`sst2_minilm.py` with the hyperparameters the sweep chose (configs/sst2_minilm_sweep.py, 13
trials of 300 steps; docs/RESULTS.md): batch 64, learning rate 2.0e-4, warmup 14%, weight decay
0.022. `sst2_minilm.py` stays the fixed baseline other measurements compare with."""

from flax_sentiment.config import base_config, minilm_sst2, sweep_tuned


def get_config():
    c = sweep_tuned(minilm_sst2(base_config()))
    c.train.num_epochs = 2.0
    c.eval.every_steps = 250
    c.checkpoint.every_steps = 250
    c.sweep.test_split = "test"
    return c
