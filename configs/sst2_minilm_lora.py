"""LoRA on the pip-shipped MiniLM-L6 for GLUE SST-2: rank-8 adapters (alpha 16) on every
layer's query and value projections, trained with the classification head while the encoder
stays frozen; otherwise `configs/sst2_minilm.py`'s recipe, with the larger learning rate LoRA
wants (docs/RESULTS.md compares the two on the same budget)."""

from flax_sentiment.config import base_config, minilm_sst2


def get_config():
    c = minilm_sst2(base_config())
    c.model.lora.rank = 8
    c.model.lora.alpha = 16.0
    c.model.lora.targets = "query_value"
    c.train.batch_size = 32
    c.train.num_epochs = 2.0
    c.train.learning_rate = 1e-3
    c.train.warmup_ratio = 0.06
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    return c
