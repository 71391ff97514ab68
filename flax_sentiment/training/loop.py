"""The training loop: `train_and_evaluate(config, workdir, hooks=())`.

Restore or start a run, then train; everything that happens *at* a step (logging, evaluation
and the best checkpoint, early stopping, checkpoints, a caller's own hooks such as a sweep's
pruning) is a `Hook` called every N global steps. The order within a step is fixed:

  1. the train step runs (asynchronously: its metrics stay on the device);
  2. if any hook is due, every train metric not read yet is fetched in one transfer and checked
     finite, so no hook (and no checkpoint) ever sees a diverged state;
  3. the hooks that are due run in this order: log, evaluate (saves the checkpoint that carries
     the eval metric), early stopping, the caller's hooks in the order given, checkpoint;
  4. every process checks for SIGTERM/SIGINT or a preemption notice (all stop at one step).

A hook returns a reason to stop (or None); with several processes the decision is shared, so
every process stops at the same step. The run then ends as a finished one (final evaluation,
`eval_results.json`); a signal instead saves a checkpoint and returns, to be resumed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from flax_sentiment import parallel
from flax_sentiment.config import eval_weights, metric_mode, option, to_json, validate
from flax_sentiment.data import batching, packing
from flax_sentiment.data import splits as splits_lib
from flax_sentiment.errors import UserError
from flax_sentiment.evaluation import metrics as metrics_lib
from flax_sentiment.models import lora
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.pretrained import load_pretrained_bundle
from flax_sentiment.training import distill, initialization
from flax_sentiment.training import start as start_lib
from flax_sentiment.training.checkpoint import Checkpoints
from flax_sentiment.training.steps import Steps, TrainState
from flax_sentiment.workdir import MetricsWriter, Workdir

log = logging.getLogger(__name__)

# Keys whose change makes a checkpoint meaningless for the new run (other keys may change on
# resume, e.g. train.max_steps to train longer). The data keys among them change which examples
# are trained and evaluated on (a carved validation split is drawn with data.seed from
# data.train_split) or their tokens; eval.weights is compared as resolved ('auto' = 'ema' with
# an EMA), since the best value so far was measured on those weights.
RESUME_KEYS = ("model.name_or_path", "data.name_or_path", "data.subset", "data.label_names",
               "data.label_map", "data.text_column", "data.label_column", "data.max_length",
               "data.buckets", "data.pack_length", "train.batch_size", "train.seed",
               "model.reinit_layers", "train.ema_decay", "train.teacher", "model.lora",
               "data.pack_row_multiple", "data.pack_sampling", "model.pooling",
               "data.seed", "data.truncation", "data.head_tokens", "data.train_split",
               "data.text_pair_column", "data.eval_split", "data.validation_size",
               "eval.weights", "data.train_examples")
# What keys added since are taken to be in checkpoints that predate them.
RESUME_DEFAULTS = {"model.reinit_layers": 0, "data.pack_length": 0, "train.ema_decay": 0.0,
                   "data.pack_row_multiple": 1, "data.pack_sampling": "uniform",
                   "model.pooling": "auto",
                   "train.teacher": [],
                   "model.lora": {"rank": None, "alpha": 16.0, "targets": "query_value",
                                  "dropout": 0.0},
                   "data.seed": 0, "data.truncation": "head", "data.head_tokens": 64,
                   "data.train_split": "train", "data.text_pair_column": "",
                   "data.eval_split": "validation", "data.validation_size": 0.0,
                   "eval.weights": "auto", "data.train_examples": 0}


class TrainingDiverged(UserError):
    """The loss, a gradient or a parameter became NaN/inf: the run stops, keeping every
    checkpoint it saved (all were checked finite first)."""


@dataclasses.dataclass
class Loop:
    """The run as hooks see it at a step. Hooks read it; `progress` is checkpointed."""

    config: ml_collections.ConfigDict
    workdir: Workdir
    steps: Steps
    state: TrainState
    step: int
    total_steps: int
    label_names: list[str]
    eval_batches: batching.EvalBatches | None
    checkpoints: Checkpoints
    writer: MetricsWriter
    meta: dict[str, Any]
    progress: dict[str, Any]
    data_state: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_metrics: list[dict[str, float]] = dataclasses.field(default_factory=list)
    eval_result: dict[str, Any] | None = None  # the evaluation at this step, if any
    last_eval: dict[str, Any] | None = None
    window_start: float = dataclasses.field(default_factory=time.perf_counter)
    bar: Any = None

    def evaluate(self) -> dict[str, Any] | None:
        """Evaluate the current parameters (and their moving average, when the run keeps one);
        updates the best-so-far by `eval.weights` and writes the metrics."""
        if self.eval_batches is None:
            return None
        t0 = time.perf_counter()
        candidates = {"raw": self.state.params}
        if self.state.ema is not None:
            candidates["ema"] = self.state.ema
        results = {name: self.steps.evaluate(params, self.eval_batches, self.label_names)
                   for name, params in candidates.items()}
        weights = eval_weights(self.config)
        result = dict(results[weights], step=self.step)
        if len(results) > 1:
            result["weights"] = weights
            for name, r in results.items():
                scalars = {k: v for k, v in r.items() if isinstance(v, int | float)}
                result[name] = scalars
                self.writer.write(self.step, {f"eval_{name}/{k}": v for k, v in scalars.items()})
                log.info("step %d eval (%s weights): %s", self.step, name, summarize(r))
        metric, mode = self.config.eval.metric, metric_mode(self.config)
        best = self.progress["best_value"]
        if best is None or (result[metric] > best if mode == "max" else result[metric] < best):
            self.progress.update(best_value=result[metric], best_step=self.step, bad_evals=0)
        else:
            self.progress["bad_evals"] += 1
        self.writer.write(self.step, {f"eval/{k}": v for k, v in result.items()
                                      if isinstance(v, int | float) and k != "step"})
        log.info("step %d eval: %s (%.1fs)", self.step, summarize(result),
                 time.perf_counter() - t0)
        self.eval_result = self.last_eval = result
        return result

    def save(self, metrics: dict[str, Any] | None = None) -> None:
        """Checkpoint this step (once: a second save at the same step is skipped)."""
        extra = {"data": self.data_state, "progress": self.progress, "meta": self.meta}
        if self.checkpoints.save(self.step, self.state, extra, metrics=metrics):
            self.writer.write(self.step, {"checkpoint/blocked_seconds":
                                          self.checkpoints.last_save_seconds})


@dataclasses.dataclass
class Hook:
    """`fn(loop)` at every global step that is a multiple of `every` (0 = never), counted from
    the start of the run, also after a resume, and at the last step when `at_end`. Returns a
    reason to stop the run, or None. Its decision must not depend on process-local state alone
    (the loop shares it: any process's request stops all)."""

    fn: Callable[[Loop], str | None]
    every: int
    at_end: bool = False

    def due(self, step: int, total_steps: int) -> bool:
        return (self.every > 0 and step % self.every == 0) or (self.at_end and
                                                               step == total_steps)


def summarize(result: dict[str, Any]) -> str:
    """One log line of an evaluation's headline metrics (a classifier's or a masked LM's)."""
    keys = ("accuracy", "f1_macro", "loss", "ece", "perplexity")
    return " ".join(f"{k}={result[k]:.4f}" for k in keys if k in result)


# --------------------------------------------------------------------------------------------
# The built-in hooks


def log_hook(loop: Loop) -> None:
    window, seconds = loop.train_metrics, time.perf_counter() - loop.window_start
    summary = {f"train/{k}": float(np.mean([m[k] for m in window]))
               for k in window[0] if k != "examples"}
    summary["train/learning_rate"] = window[-1]["learning_rate"]
    summary["train/examples_per_second"] = sum(m["examples"] for m in window) / max(seconds,
                                                                                    1e-9)
    loop.writer.write(loop.step, summary)
    loop.bar.set_postfix(loss=f"{summary['train/loss']:.4f}",
                         lr=f"{window[-1]['learning_rate']:.2e}",
                         ex_s=f"{summary['train/examples_per_second']:.0f}", refresh=False)
    loop.train_metrics, loop.window_start = [], time.perf_counter()


def eval_hook(loop: Loop) -> None:
    result = loop.evaluate()
    if result is not None:
        loop.save(metrics=result)  # the best checkpoint is chosen among these


def early_stopping_hook(loop: Loop) -> str | None:
    patience = loop.config.eval.early_stopping_patience
    if patience > 0 and loop.progress["bad_evals"] >= patience:
        return (f"early stopping: no {loop.config.eval.metric} improvement in {patience} "
                f"evaluations (best at step {loop.progress['best_step']})")
    return None


def checkpoint_hook(loop: Loop) -> None:
    loop.save()


def default_hooks(config: ml_collections.ConfigDict) -> tuple[list[Hook], list[Hook]]:
    """(before, after) the caller's hooks."""
    every_eval = config.eval.every_steps
    return ([Hook(log_hook, config.train.log_every_steps, at_end=True),
             Hook(eval_hook, every_eval, at_end=True),
             Hook(early_stopping_hook, every_eval)],
            [Hook(checkpoint_hook, config.checkpoint.every_steps)])


# --------------------------------------------------------------------------------------------
# The run


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Workdir,
                       hooks: Sequence[Hook] = ()) -> dict[str, Any]:
    """Fine-tune `config.model` on `config.data`; resumes from `workdir` when it has checkpoints.

    Returns the final evaluation (also written to `workdir/eval_results.json`), with
    `stop_reason` when a hook ended the run early, or `{"stopped", "step"}` when a signal did.
    Safe to call many times in one process: signal handlers and JAX settings are restored.
    """
    validate(config)
    return run_loop(config, workdir, hooks, _prepare)


def run_loop(config: ml_collections.ConfigDict, workdir: str | Workdir, hooks: Sequence[Hook],
             prepare: Callable[[ml_collections.ConfigDict, Workdir],
                               tuple[Loop, batching.Prefetcher]]) -> dict[str, Any]:
    """The run every task shares: `prepare` (fine-tuning's `_prepare`, or masked-LM
    training's) builds the `Loop` and its batches; then the hooks, the steps, and the end."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    wd.check_usable()
    parallel.initialize_distributed(config)
    with parallel.compilation_cache(config.compilation_cache_dir), \
            parallel.compile_timer() as compiled:
        loop, batches = prepare(config, wd)
        before, after = default_hooks(config)
        try:
            with StopRequest(loop.checkpoints) as stop:
                reason, interrupted = _train(loop, [*before, *hooks, *after], batches, stop)
        finally:
            loop.bar.close()
            batches.close()
        results = _finish(loop, reason, interrupted)
    log.info("XLA: %d new programs in %.1f s (%d of them loaded from the compilation cache; "
             "programs this process already has cost nothing)", compiled["programs"],
             compiled["seconds"], compiled["cached"])
    results["compile_seconds"] = round(compiled["seconds"], 3)
    return results


def mesh_and_resume(config: ml_collections.ConfigDict, wd: Workdir, keys: Sequence[str]
                    ) -> tuple[jax.sharding.Mesh, int | None, set[int]]:
    """The mesh (the batch checked against it) and the step to resume from (checked against
    `keys` before anything loads), with the damaged checkpoints seen on the way."""
    mesh = parallel.make_mesh()
    t = config.train
    parallel.check_batch_size(t.batch_size, mesh)
    if (t.batch_size // t.grad_accum_steps) % mesh.devices.size:
        raise UserError(f"train.batch_size / train.grad_accum_steps = "
                        f"{t.batch_size // t.grad_accum_steps} must be a multiple of the "
                        f"device count ({mesh.devices.size})")
    resume_step, damaged = None, set()
    if wd.checkpoints_dir.is_dir():  # refuse a resume that cannot work before loading
        existing = wd.checkpoints(read_only=True)
        resume_step, damaged = resumable_step(existing, config, keys), existing.damaged
        existing.close()
    return mesh, resume_step, damaged


def _prepare(config: ml_collections.ConfigDict, wd: Workdir
             ) -> tuple[Loop, batching.Prefetcher]:
    """Everything a run needs, restored from the newest readable checkpoint or fresh. Nothing
    is written until the model and data have loaded (a bad name leaves no half-made workdir)."""
    mesh, resume_step, damaged = mesh_and_resume(config, wd, RESUME_KEYS)
    t = config.train

    label_names = list(config.data.label_names)
    head_seed = option(config.model, "head_seed", t.seed)
    pooling = option(config.model, "pooling", "auto")
    if start_lib.is_workdir(config.model.name_or_path):
        bundle, start = start_lib.classifier_from_workdir(
            config.model.name_or_path, label_names, dtype=config.model.dtype, seed=head_seed,
            pooling=pooling)
    else:
        bundle = load_pretrained_bundle(config.model.name_or_path, num_labels=len(label_names),
                                        dtype=config.model.dtype, seed=head_seed,
                                        pooling=pooling)
        start = None
    check_max_length(config, bundle.config)
    start_lib.configure_encoder(bundle.model, config.model)
    model_def = ModelDef(bundle.model)
    pretrained = ModelDef.params_of(bundle.model)
    if bundle.label_names and not bundle.fresh_head and bundle.label_names != label_names:
        ordered = initialization.order_head(pretrained, bundle.label_names, label_names)
        if ordered is pretrained:
            log.warning("checkpoint head labels %s are used as %s, in order",
                        bundle.label_names, label_names)
        else:
            log.info("checkpoint head labels %s: outputs reordered by name to %s",
                     bundle.label_names, label_names)
        pretrained = ordered
    # LoRA: its targets are checked before the data is read; the frozen base is the pretrained
    # model, on resume too (the checkpoints hold only the head and the adapters).
    lora_spec = lora.spec_from_config(config, model_def.abstract_params())
    frozen = lora.frozen_params(pretrained) if lora_spec is not None else None
    initial = None
    if resume_step is None:  # checked before the data is read
        initial = initialization.reinit_top_layers(
            pretrained, bundle.config, option(config.model, "reinit_layers", 0), head_seed)
    teachers = [distill.teacher_stamp(spec) for spec in option(t, "teacher", ())]
    splits, train_iter, eval_batches = _load_data(config, bundle.tokenizer, mesh, wd, teachers)
    total = (t.max_steps if t.max_steps > 0
             else math.ceil(t.num_epochs * train_iter.steps_per_epoch))

    steps = Steps(model_def, len(label_names), mesh, train=t, total_steps=total, lora=lora_spec,
                  frozen=frozen)
    checkpoints = wd.checkpoints(keep=config.checkpoint.keep, metric=config.eval.metric,
                                 mode=metric_mode(config),
                                 async_save=config.checkpoint.async_save)
    checkpoints.damaged |= damaged
    loop = Loop(config=config, workdir=wd, steps=steps, state=None, step=0, total_steps=total,
                label_names=label_names, eval_batches=eval_batches, checkpoints=checkpoints,
                writer=wd.metrics_writer(enabled=parallel.is_main_process()),
                meta={"config": json.loads(to_json(config)), "label_names": label_names,
                      "model_type": bundle.arch.model_type, "hf_config": bundle.hf_config,
                      "encoder_config": bundle.config.to_dict()},
                progress={"best_value": None, "best_step": None, "bad_evals": 0})
    if lora_spec is not None:
        loop.meta["lora"] = lora_spec.to_meta(initialization.params_digest(frozen))
    if teachers:
        loop.meta["teachers"] = teachers
    if start is not None:
        loop.meta["start"] = start.to_meta()
    if resume_step is not None:
        loop.step, loop.state, extra = checkpoints.restore(steps.abstract_state)  # falls back
        _check_same_base(extra["meta"], loop.meta, config)
        _check_same_teachers(extra["meta"], loop.meta)
        train_iter.set_state(extra["data"])
        loop.progress = extra["progress"]
        if "init_digest" in extra["meta"]:
            loop.meta["init_digest"] = extra["meta"]["init_digest"]
        loop.writer.truncate_after(loop.step)
        log.info("resumed from %s at step %d (epoch %d)", checkpoints.directory, loop.step,
                 extra["data"]["epoch"])
    else:
        loop.state = steps.init_state(initial if lora_spec is None
                                      else lora_spec.init(initial, head_seed))
        # Runs with equal digests started from the same model: their checkpoints average (a
        # LoRA run's merged weights start at `initial` too: its B matrices start at zero).
        loop.meta["init_digest"] = initialization.params_digest(initial)
    _log_trainable(loop.state, lora_spec, model_def)
    if parallel.is_main_process():
        wd.write_run_files(config, bundle.tokenizer)
    log.info("%d train examples, %d steps/epoch, %d steps in all; %d device(s), %d process(es)",
             len(splits.train), train_iter.steps_per_epoch, total, mesh.devices.size,
             jax.process_count())
    _precompile(loop, train_iter)
    loop.bar = _progress_bar(total, loop.step, parallel.is_main_process())
    batches = batching.prefetch(train_iter, 2,
                                lambda b: batching.shard_batch(b, steps.data_sharding))
    loop.data_state = batches.get_state()
    return loop, batches


def _precompile(loop: Loop, train_iter: batching.TrainIterator) -> None:
    """Compile every train-step shape of the steps ahead and the evaluation's shapes now, in
    parallel (see `Steps.precompile`); a shape first met later compiles when it comes."""
    t0 = time.perf_counter()
    keys = train_iter.upcoming(loop.total_steps - loop.step)
    evals = loop.eval_batches.shapes() if loop.eval_batches is not None else []
    shapes = loop.steps.precompile([train_iter.dummy(k) for k in keys], evals)
    log.info("compiled %d step shapes in %.1f s (%d train, %d evaluation): %s", len(shapes),
             time.perf_counter() - t0, len(keys), len(evals),
             ", ".join(f"{name} {seconds:.1f} s" for name, seconds in shapes))


def _check_same_base(saved: dict[str, Any], meta: dict[str, Any],
                     config: ml_collections.ConfigDict) -> None:
    """A LoRA checkpoint continues only on the frozen weights it was trained on."""
    old, new = saved.get("lora"), meta.get("lora")
    if old and new and old.get("base_digest") != new["base_digest"]:
        raise UserError(f"cannot resume: the weights of model.name_or_path="
                        f"{config.model.name_or_path!r} are not the ones this LoRA run started "
                        "from (the model changed since); use a new --workdir")


def _check_same_teachers(saved: dict[str, Any], meta: dict[str, Any]) -> None:
    """A distilled run continues only on the soft targets it started with: a teacher workdir
    that trained on (or a teacher folder whose files changed) would change them mid-run."""
    for old, new in zip(saved.get("teachers") or [], meta.get("teachers") or [], strict=False):
        if old != new:
            what = ("now resolves to step {step}".format(**new) if "step" in new
                    else "has other files now")
            was = f" (step {old['step']})" if "step" in old else ""
            raise UserError(f"cannot resume: config train.teacher {new['teacher']!r} {what}, "
                            f"not the teacher this run started with{was}; its soft targets "
                            "would change mid-run. Pin the teacher (DIR@STEP) or use a new "
                            "--workdir")


def _log_trainable(state: TrainState, lora_spec: lora.LoraSpec | None,
                   model_def: ModelDef) -> None:
    """What trains and what its optimizer keeps (the LoRA vs full fine-tuning comparison)."""
    total = sum(math.prod(v.shape) for v in model_def.abstract_params().values())
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state.opt_state))
    if lora_spec is not None:
        log.info("%s", lora.describe(lora_spec, state.params, total))
    n = sum(math.prod(v.shape) for v in state.params.values())
    log.info("%d trainable parameters (of %d in the model); optimizer state %.1f MB", n,
             total, opt_bytes / 2**20)


def _load_data(config: ml_collections.ConfigDict, tokenizer: Any, mesh: jax.sharding.Mesh,
               wd: Workdir | None = None, teachers: Sequence[dict[str, Any]] = ()
               ) -> tuple[splits_lib.Data, batching.TrainIterator, batching.EvalBatches | None]:
    """Tokenized splits (the train split with its teachers' logits, when distilling), the
    resumable train iterator and the eval batches (this process's rows of each global batch)."""
    splits = splits_lib.load_data(config.data, tokenizer)
    specs = list(option(config.train, "teacher", ()))
    if specs:
        logits = distill.teacher_logits(
            specs, splits.train, config.data, wd.path if wd is not None else None,
            batch_size=config.eval.batch_size, write_cache=parallel.is_main_process(),
            stamps=list(teachers) or None)
        splits = dataclasses.replace(splits, train=dataclasses.replace(
            splits.train, teacher_logits=logits))
    n_proc, pid = jax.process_count(), jax.process_index()
    t, pack = config.train, packing.pack_length(config.data)
    if pack:
        train_iter = packing.PackedTrainIterator(
            splits.train, t.batch_size, pack, seed=t.seed, pad_id=splits.pad_id,
            row_multiple=math.lcm(mesh.devices.size * t.grad_accum_steps,
                                  int(option(config.data, "pack_row_multiple", 1))),
            sampling=option(config.data, "pack_sampling", "uniform"),
            process_index=pid, process_count=n_proc)
        log.info("packing: %s", packing.describe(train_iter))
    else:
        train_iter = batching.TrainIterator(splits.train, t.batch_size, splits.buckets,
                                            seed=t.seed, pad_id=splits.pad_id,
                                            process_index=pid, process_count=n_proc)
    eval_batches = None
    if splits.eval is not None and len(splits.eval):
        eval_batches = packing.eval_batches(
            splits.eval, config.data, config.eval.batch_size, pad_id=splits.pad_id,
            multiple=mesh.devices.size, process_index=pid, process_count=n_proc)
    return splits, train_iter, eval_batches


def _train(loop: Loop, hooks: list[Hook], batches: Iterator[Any], stop: StopRequest
           ) -> tuple[str | None, bool]:
    """Train to the last step or a stop; (stop reason, whether a signal caused it)."""
    unread = FiniteCheck(loop.checkpoints)
    while loop.step < loop.total_steps:
        loop.state, metrics = loop.steps.train_step(loop.state, next(batches))
        loop.step += 1
        loop.data_state = batches.get_state()
        unread.add(loop.step, metrics)
        loop.bar.update(1)
        due = [hook for hook in hooks if hook.due(loop.step, loop.total_steps)]
        reason = None
        if due:
            loop.train_metrics += unread.read()
            loop.eval_result = None
            reasons = [r for r in (hook.fn(loop) for hook in due) if r]
            reason = _agree(reasons[0] if reasons else None)
        signalled = stop.should_stop(loop.step)
        if signalled:
            return f"{signalled} at step {loop.step}", True
        if reason:
            return reason, False
    loop.train_metrics += unread.read()
    return None, False


def _finish(loop: Loop, reason: str | None, interrupted: bool) -> dict[str, Any]:
    """Save the last step; a finished run (not a signalled one) is evaluated there too."""
    try:
        if interrupted:
            loop.save()
            loop.checkpoints.wait()
            log.warning("stopped (%s); checkpoint saved at step %d. Resume with the same "
                        "command (the same --config and --workdir %s).", reason, loop.step,
                        loop.workdir)
            return {"stopped": reason, "step": loop.step}
        if reason:
            log.info("%s", reason)
        final = loop.last_eval
        if final is None or final["step"] != loop.step:
            final = loop.evaluate()
        loop.save(metrics=final)
        loop.checkpoints.wait()
        results = dict(final or {"step": loop.step})
        results.update(best_step=loop.progress["best_step"],
                       best_value=loop.progress["best_value"], metric=loop.config.eval.metric)
        if reason:
            results["stop_reason"] = reason
        if parallel.is_main_process() and final is not None:
            loop.workdir.write_results(results)
            report = (metrics_lib.format_report(final) if "f1_macro" in final
                      else summarize(final))
            log.info("final evaluation (step %d):\n%s", loop.step, report)
        return results
    finally:
        loop.checkpoints.close()
        loop.writer.close()


def _agree(reason: str | None) -> str | None:
    """One stop decision for all processes: any process's request stops every one."""
    if jax.process_count() == 1:
        return reason
    from jax.experimental import multihost_utils

    anyone = bool(np.any(multihost_utils.process_allgather(np.int32(reason is not None))))
    return reason or ("a hook on another process asked to stop" if anyone else None)


# --------------------------------------------------------------------------------------------
# Checks


def _get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=list))


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict,
                    keys: Sequence[str] = RESUME_KEYS) -> None:
    """Refuse to continue a checkpoint under a config that changes what it means."""
    saved_cfg = ml_collections.ConfigDict(saved)
    padded = not packing.pack_length(saved_cfg.data) and not packing.pack_length(config.data)
    for key in keys:
        if padded and key in ("data.pack_sampling", "data.pack_row_multiple"):
            continue  # how rows are packed means nothing to padded batches
        old, new = _get_path(saved_cfg, key), _get_path(config, key)
        old = RESUME_DEFAULTS.get(key) if old is None else old
        new = RESUME_DEFAULTS.get(key) if new is None else new
        if key == "eval.weights":
            old, new = eval_weights(saved_cfg), eval_weights(config)
        elif key == "data.pack_length":  # -1: rows of data.max_length, compared as resolved
            old, new = packing.pack_length(saved_cfg.data), packing.pack_length(config.data)
        if old != new:
            raise UserError(f"cannot resume: config {key} is {new!r} but the checkpoint was "
                            f"trained with {old!r} (use a new --workdir, or set it back)")


def resumable_step(checkpoints: Checkpoints, config: ml_collections.ConfigDict,
                   keys: Sequence[str] = RESUME_KEYS) -> int | None:
    """The newest checkpoint whose metadata reads, checked against `config`; damaged newer
    ones are skipped with a warning (never deleted: the next save at that step replaces them)."""
    found = checkpoints.newest_extra()
    if found is None:
        return None
    if "averaged_from" in found[1]["meta"]:
        raise UserError(f"{checkpoints.directory.parent} holds an average of checkpoints "
                        "(scripts/average.py), not a run to continue: use a new --workdir")
    check_resumable(found[1]["meta"]["config"], config, keys)
    return found[0]


def check_max_length(config: ml_collections.ConfigDict, encoder: EncoderConfig) -> None:
    """Positions past the embedding table give NaN embeddings: refuse before training."""
    limit = encoder.max_input_length
    if int(config.data.max_length) > limit:
        raise UserError(f"config data.max_length={config.data.max_length} is more than "
                        f"{config.model.name_or_path} takes ({limit} positions); set "
                        f"--config.data.max_length={limit} or lower")


class FiniteCheck:
    """Train-step metrics not yet read on the host; `read()` fetches them in one transfer and
    raises `TrainingDiverged` at the first step whose loss, gradient or parameter norm is not
    finite, naming the newest checkpoint (all of which were checked before they were saved)."""

    KEYS = ("loss", "grad_norm", "param_norm")

    def __init__(self, checkpoints: Checkpoints):
        self.checkpoints = checkpoints
        self.pending: list[tuple[int, dict[str, jax.Array]]] = []

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self.pending.append((step, metrics))

    def read(self) -> list[dict[str, float]]:
        fetched = jax.device_get([m for _, m in self.pending])
        steps = [s for s, _ in self.pending]
        self.pending = []
        values = [{k: float(v) for k, v in m.items()} for m in fetched]
        for step, v in zip(steps, values, strict=True):
            bad = {k: v[k] for k in self.KEYS if not math.isfinite(v[k])}
            if bad:
                self.checkpoints.wait()
                last = self.checkpoints.latest_step()
                kept = (f"the last good checkpoint (step {last}) is kept in "
                        f"{self.checkpoints.directory}" if last is not None
                        else "no checkpoint was written yet")
                what = ", ".join(f"{k}={x}" for k, x in bad.items())
                raise TrainingDiverged(f"training diverged at step {step}: {what} (try a lower "
                                       f"train.learning_rate); {kept}")
        return values


# --------------------------------------------------------------------------------------------
# Interrupts


class StopRequest:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit 0. A second Ctrl-C exits now.

    With several processes the stop step must be the same everywhere (each process saves its
    part of one collective checkpoint), so a signal is never acted on locally: SIGTERM is left
    to JAX's preemption notifier (a Python handler would shadow it), which tells every process,
    and SIGINT is turned into that same notice. `should_stop(step)` must then be called at every
    step by every process: it answers True on all of them at the same step.
    """

    def __init__(self, checkpoints: Checkpoints):
        self.signal: str | None = None
        self._checkpoints = checkpoints
        self._multi = jax.process_count() > 1
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        log.warning("%s received: saving a checkpoint at the %s step, then stopping "
                    "(Ctrl-C again to exit at once)", self.signal,
                    "next common" if self._multi else "current")
        if self._multi:
            signal.raise_signal(signal.SIGTERM)  # reaches JAX's notifier: all processes stop

    def should_stop(self, step: int) -> str | None:
        if self._checkpoints.reached_preemption(step):
            return self.signal or "preemption"
        return None if self._multi else self.signal

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for s in ((signal.SIGINT,) if self._multi else (signal.SIGTERM, signal.SIGINT)):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True, mininterval=1.0)

