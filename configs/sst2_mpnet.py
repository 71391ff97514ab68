"""all-mpnet-base-v2 (MPNet-base, 12 layers, hidden 768, 109.5M parameters) fine-tuned on
SST-2: the strongest model here, and the teacher of configs/sst2_minilm_distilled.py. Run
`make mpnet` first: it puts the checkpoint in .cache/models/all-mpnet-base-v2 (or set
--config.model.name_or_path=sentence-transformers/all-mpnet-base-v2 where the hub is
reachable).

Sized for a 2-core CPU (docs/RESULTS.md, "MPNet"): half an epoch of batch 32 (1,052 steps),
each step's examples packed into rows of 66 tokens drawn from 32 length strata (one train
shape, as configs/sst2_minilm_fast.py), a mean-pooled head (sentence-transformers trained this
encoder's mean, not its first token), learning rate 5e-5 with 10% warmup, evaluated every 250
steps. float32: add --config.model.dtype=bfloat16 on CPUs with AVX512-BF16 or AMX, and on
GPUs and TPUs; with more time, --config.train.num_epochs=2."""

from flax_sentiment.config import base_config, minilm_sst2


def get_config():
    c = minilm_sst2(base_config())  # SST-2's files, columns and labels; 66 tokens
    c.model.name_or_path = ".cache/models/all-mpnet-base-v2"
    c.model.pooling = "mean"
    c.data.pack_length = -1  # rows of max_length
    c.data.pack_sampling = "stratified"
    c.train.batch_size = 32
    c.train.num_epochs = 0.5
    c.train.learning_rate = 5e-5
    c.train.warmup_ratio = 0.1
    c.eval.every_steps = 250
    c.checkpoint.every_steps = 250
    c.sweep.test_split = "test"
    return c
