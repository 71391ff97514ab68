"""Hyperparameter search for MiniLM-L6 on SST-2, sized for a 2-core CPU:

    scripts/sweep.py --config configs/sst2_minilm_sweep.py --workdir runs/sst2_minilm_sweep

Each trial trains `sst2_minilm.py`'s setup for a reduced budget of 300 steps (not 2 epochs),
evaluated every 100 steps on the 872 validation sentences, where the median pruner stops
trials that fall behind; the best trial is also scored on the labelled test split it was not
chosen on. The winner went into `sst2_minilm_tuned.py` (docs/RESULTS.md has the run).
"""

from flax_sentiment.config import base_config, minilm_sst2


def get_config():
    c = minilm_sst2(base_config())
    c.train.batch_size = 32
    c.train.learning_rate = 1e-4
    c.train.warmup_ratio = 0.06
    # the search
    c.train.max_steps = 300
    c.eval.every_steps = 100
    c.checkpoint.every_steps = 100
    c.checkpoint.keep = 1
    c.sweep.trials = 12
    c.sweep.pruner = "median"
    c.sweep.pruner_startup_trials = 3
    c.sweep.keep = 3
    c.sweep.test_split = "test"
    c.sweep.space.train.learning_rate.low = 2e-5
    c.sweep.space.train.learning_rate.high = 5e-4
    return c
