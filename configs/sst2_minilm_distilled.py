"""all-MiniLM-L6-v2 on SST-2, distilled from the MPNet teacher of configs/sst2_mpnet.py: the
student of `sst2_minilm_best.py` (rows of 66 tokens from length strata, a mean-pooled head, an
EMA of the weights that the run is judged by and exports) learning from the teacher's
softened probabilities (temperature 2) at weight 0.8 and the labels at 0.2, for one epoch, so
that a run fits 20 minutes on a 2-core AVX2 CPU (docs/RESULTS.md, "MPNet").

First train the teacher into runs/sst2_mpnet:

    scripts/train.py --config configs/sst2_mpnet.py --workdir runs/sst2_mpnet

Its logits on the 67,349 train texts are computed by the first student and cached (in the
student's workdir and beside the tokenized splits), so further seeds read them."""

from flax_sentiment.config import base_config, baseline_training, minilm_sst2


def get_config():
    c = baseline_training(minilm_sst2(base_config()))
    c.data.pack_length = -1  # rows of max_length
    c.data.pack_sampling = "stratified"
    c.model.pooling = "mean"
    c.train.num_epochs = 1.0
    c.train.ema_decay = 0.999
    c.train.teacher = ("runs/sst2_mpnet@best",)
    c.train.distill_weight = 0.8
    c.train.distill_temperature = 2.0
    c.eval.weights = "ema"
    c.eval.every_steps = 500
    c.checkpoint.every_steps = 500
    c.sweep.test_split = "test"
    return c
