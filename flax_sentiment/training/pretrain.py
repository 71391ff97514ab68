"""Masked-LM training: `pretrain(config, workdir, hooks=())`, continued pretraining of an
encoder on unlabeled in-domain text (Gururangan et al., ACL 2020, "Don't Stop Pretraining").

The run is fine-tuning's (`loop.run_loop`): the same hooks, checkpoints, exact resume, signals,
mesh and progress output; only what it trains differs: a `MaskedLM` (the encoder plus the
architecture's MLM head, imported or drawn fresh) on rows from `data.corpus`, masked per batch
on the host (`data.masking`), judged on a held-out slice of the texts (loss, accuracy,
perplexity; `eval.metric` "loss", mode "min" by default in `configs/tweets_mlm.py`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections

from flax_sentiment import parallel
from flax_sentiment.config import metric_mode, option, to_json, validate
from flax_sentiment.data import batching
from flax_sentiment.data.corpus import MlmEvalBatches, MlmTrainIterator, load_corpus
from flax_sentiment.data.masking import Masker, max_predictions
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.pretrained import load_tokenizer
from flax_sentiment.training import initialization
from flax_sentiment.training import start as start_lib
from flax_sentiment.training.loop import (
    Hook,
    Loop,
    _log_trainable,
    _precompile,
    _progress_bar,
    check_max_length,
    mesh_and_resume,
    run_loop,
)
from flax_sentiment.training.steps import Steps
from flax_sentiment.workdir import Workdir

log = logging.getLogger(__name__)

# Keys whose change makes a masked-LM checkpoint meaningless for the new run.
RESUME_KEYS = ("model.name_or_path", "mlm.corpus", "mlm.text_column", "mlm.encoding",
               "mlm.rate", "mlm.whole_word", "mlm.layout", "mlm.eval_size", "data.max_length",
               "data.seed", "train.batch_size", "train.seed", "train.ema_decay",
               "eval.weights")


def pretrain(config: ml_collections.ConfigDict, workdir: str | Workdir,
             hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Train `config.model` as a masked LM on `config.mlm.corpus`; resumes from `workdir` when
    it has checkpoints. Returns the final held-out metrics (also in `eval_results.json`)."""
    validate(config, task="mlm")
    return run_loop(config, workdir, hooks, _prepare)


def _prepare(config: ml_collections.ConfigDict, wd: Workdir
             ) -> tuple[Loop, batching.Prefetcher]:
    mesh, resume_step, damaged = mesh_and_resume(config, wd, RESUME_KEYS)
    t = config.train
    seed = option(config.model, "head_seed", t.seed)
    bundle, start = start_lib.masked_lm_start(config.model.name_or_path,
                                              dtype=config.model.dtype, seed=seed)
    check_max_length(config, bundle.config)
    start_lib.configure_encoder(bundle.model, config.model)
    tokenizer = load_tokenizer(bundle.folder)
    model_def = ModelDef(bundle.model)
    initial = ModelDef.params_of(bundle.model)

    m = config.mlm
    corpus = load_corpus(config, tokenizer)
    masker = Masker.from_tokenizer(tokenizer, rate=float(m.rate), whole_word=bool(m.whole_word))
    if masker.vocab_size > bundle.config.vocab_size:
        log.warning("tokenizer has %d tokens, the model's vocabulary %d: random replacements "
                    "drawn from the model's", masker.vocab_size, bundle.config.vocab_size)
        masker = dataclasses.replace(masker, vocab_size=bundle.config.vocab_size)
    length = int(config.data.max_length)
    targets = max_predictions(length, float(m.rate))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pid, n_proc = jax.process_index(), jax.process_count()
    train_iter = MlmTrainIterator(corpus.train, t.batch_size, masker, seed=t.seed, pad_id=pad_id,
                                  num_targets=targets, packed=m.layout == "pack",
                                  process_index=pid, process_count=n_proc)
    eval_batches = None
    if corpus.eval is not None:
        eval_batches = MlmEvalBatches(corpus.eval, config.eval.batch_size, masker,
                                      seed=int(config.data.seed), pad_id=pad_id,
                                      num_targets=targets, multiple=mesh.devices.size,
                                      process_index=pid, process_count=n_proc)
    total = (t.max_steps if t.max_steps > 0
             else math.ceil(t.num_epochs * train_iter.steps_per_epoch))
    steps = Steps(model_def, 1, mesh, train=t, total_steps=total, task="mlm")
    checkpoints = wd.checkpoints(keep=config.checkpoint.keep, metric=config.eval.metric,
                                 mode=metric_mode(config),
                                 async_save=config.checkpoint.async_save)
    checkpoints.damaged |= damaged
    loop = Loop(config=config, workdir=wd, steps=steps, state=None, step=0, total_steps=total,
                label_names=[], eval_batches=eval_batches, checkpoints=checkpoints,
                writer=wd.metrics_writer(enabled=parallel.is_main_process()),
                meta={"config": json.loads(to_json(config)), "label_names": [], "task": "mlm",
                      "model_type": bundle.arch.model_type, "hf_config": bundle.hf_config,
                      "encoder_config": bundle.config.to_dict(), "start": start.to_meta()},
                progress={"best_value": None, "best_step": None, "bad_evals": 0})
    if resume_step is not None:
        loop.step, loop.state, extra = checkpoints.restore(steps.abstract_state)
        train_iter.set_state(extra["data"])
        loop.progress = extra["progress"]
        loop.meta["init_digest"] = extra["meta"].get("init_digest")
        loop.writer.truncate_after(loop.step)
        log.info("resumed from %s at step %d (epoch %d)", checkpoints.directory, loop.step,
                 extra["data"]["epoch"])
    else:
        loop.state = steps.init_state(initial)
        loop.meta["init_digest"] = initialization.params_digest(initial)
    _log_trainable(loop.state, None, model_def)
    if parallel.is_main_process():
        wd.write_run_files(config, tokenizer)
    log.info("masked LM: %d texts (%d held out) -> %d %s rows of %d (%d tokens, %.0f%% of the "
             "row slots); %d targets a row; %d steps/epoch, %d steps in all; %d device(s), "
             "%d process(es)", corpus.num_texts, corpus.num_eval_texts, len(corpus.train),
             m.layout, length, corpus.tokens,
             100.0 * corpus.tokens / max(len(corpus.train) * length, 1), targets,
             train_iter.steps_per_epoch, total, mesh.devices.size, n_proc)
    _precompile(loop, train_iter)
    loop.bar = _progress_bar(total, loop.step, parallel.is_main_process())
    batches = batching.prefetch(train_iter, 2,
                                lambda b: batching.shard_batch(b, steps.data_sharding))
    loop.data_state = batches.get_state()
    return loop, batches
