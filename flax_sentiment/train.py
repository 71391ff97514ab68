"""Train state, the pure train/eval steps, and the loop: `train_and_evaluate(config, workdir)`."""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from flax_sentiment import data as data_lib
from flax_sentiment import metrics as metrics_lib
from flax_sentiment import parallel
from flax_sentiment.checkpoint import Checkpoints, abstract_with_shardings
from flax_sentiment.config import to_json, validate
from flax_sentiment.errors import UserError
from flax_sentiment.logging_utils import MetricsWriter
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.functional import ModelDef, Params
from flax_sentiment.pretrained import load_pretrained_bundle

log = logging.getLogger(__name__)

# Keys whose change makes a checkpoint meaningless for the new run (other keys may change on
# resume, e.g. train.max_steps to train longer).
RESUME_KEYS = ("model.name_or_path", "data.name_or_path", "data.subset", "data.label_names",
               "data.label_map", "data.text_column", "data.label_column", "data.max_length",
               "data.buckets", "train.batch_size", "train.seed")


class TrainingDiverged(UserError):
    """The loss became NaN/inf: the run stops and keeps its last good checkpoint."""


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32[2] key: a plain array checkpoints and reshards like any other


# --------------------------------------------------------------------------------------------
# Optimizer


def decay_mask(params: Params) -> dict[str, bool]:
    """AdamW decays matrices and embeddings, never biases or LayerNorm scales."""
    return {name: not name.endswith((".bias", ".scale")) for name in params}


def make_schedule(t: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    warmup = t.warmup_steps if t.warmup_steps > 0 else int(round(t.warmup_ratio * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    lr = t.learning_rate
    if t.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, 1), 0.0)
    decay = (optax.constant_schedule(lr) if t.schedule == "constant"
             else optax.linear_schedule(lr, 0.0, max(total_steps - warmup, 1)))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def make_optimizer(t: ml_collections.ConfigDict, schedule: optax.Schedule
                   ) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(t.max_grad_norm)] if t.max_grad_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                             weight_decay=t.weight_decay, mask=decay_mask))
    return optax.chain(*parts)


# --------------------------------------------------------------------------------------------
# Steps (pure functions; jitted with shardings by `Trainer`)


def _weighted_ce_sum(model_def: ModelDef, params: Params, batch: dict[str, jax.Array],
                     rng: jax.Array, *, num_labels: int, label_smoothing: float,
                     class_weights: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Sum (not mean) of weighted cross-entropy, so micro-batches add up to the full batch."""
    logits = model_def.merge(params)(
        batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
        deterministic=False, dropout_rng=jax.random.wrap_key_data(rng))
    # PyTorch's CrossEntropyLoss(weight=w, label_smoothing=e), the definition users know:
    # (1 - e) * w[y] * ce_y + e / C * sum_c w[c] * ce_c, normalised by sum w[y] (the caller
    # divides by it). Per-row `weights` mask padded rows.
    nll = -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = batch["labels"]
    w_y = class_weights[labels]
    ce = w_y * jnp.take_along_axis(nll, labels[:, None], axis=-1)[:, 0]
    if label_smoothing:
        smooth = jnp.sum(nll * class_weights, axis=-1) / num_labels
        ce = (1.0 - label_smoothing) * ce + label_smoothing * smooth
    w = batch["weights"] * w_y
    correct = (jnp.argmax(logits, -1) == labels) * batch["weights"]
    return jnp.sum(batch["weights"] * ce), (jnp.sum(w), jnp.sum(correct))


def make_train_step(model_def: ModelDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, num_labels: int, grad_accum_steps: int = 1,
                    label_smoothing: float = 0.0, class_weights: Any = ()
                    ) -> Callable[[TrainState, dict[str, jax.Array]],
                                  tuple[TrainState, dict[str, jax.Array]]]:
    cw = jnp.asarray(class_weights if len(class_weights) else [1.0] * num_labels, jnp.float32)
    grad_fn = jax.value_and_grad(_weighted_ce_sum, argnums=1, has_aux=True)
    k = grad_accum_steps

    def train_step(state: TrainState, batch: dict[str, jax.Array]
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        step_rng = jax.random.fold_in(state.rng, state.step)

        def micro(i, mb):
            rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(step_rng), i))
            (loss, (w, correct)), grads = grad_fn(model_def, state.params, mb, rng,
                                                  num_labels=num_labels,
                                                  label_smoothing=label_smoothing,
                                                  class_weights=cw)
            return loss, w, correct, grads

        if k == 1:
            loss, w, correct, grads = micro(0, batch)
        else:
            # Row j*k + i goes to micro-batch i: each device keeps its own rows (no reshuffle).
            micro_batches = jax.tree.map(
                lambda x: x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, xs):
                i, mb = xs
                out = micro(i, mb)
                return jax.tree.map(jnp.add, carry, out), None

            zero = (jnp.zeros(()), jnp.zeros(()), jnp.zeros(()),
                    jax.tree.map(jnp.zeros_like, state.params))
            (loss, w, correct, grads), _ = jax.lax.scan(body, zero,
                                                        (jnp.arange(k), micro_batches))
        denom = jnp.where(w > 0, w, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        examples = jnp.sum(batch["weights"])
        metrics = {
            "loss": loss / denom,
            "accuracy": correct / jnp.maximum(examples, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
            "examples": examples,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

    return train_step


def make_eval_step(model_def: ModelDef, num_labels: int
                   ) -> Callable[[Params, dict[str, jax.Array]], dict[str, jax.Array]]:
    def eval_step(params: Params, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
        logits = model_def.merge(params)(batch["input_ids"], batch["attention_mask"],
                                         batch.get("token_type_ids"))
        return metrics_lib.batch_counts(logits, batch["labels"], batch["weights"], num_labels)

    return eval_step


def make_predict_step(model_def: ModelDef) -> Callable[[Params, dict[str, jax.Array]], jax.Array]:
    def predict_step(params: Params, batch: dict[str, jax.Array]) -> jax.Array:
        logits = model_def.merge(params)(batch["input_ids"], batch["attention_mask"],
                                         batch.get("token_type_ids"))
        return jax.nn.softmax(logits, axis=-1)

    return predict_step


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


# --------------------------------------------------------------------------------------------
# The run


def _get_path(config: ml_collections.ConfigDict, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = value.get(part) if hasattr(value, "get") else None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=list))


def check_resumable(saved: dict[str, Any], config: ml_collections.ConfigDict) -> None:
    """Refuse to continue a checkpoint under a config that changes what it means."""
    saved_cfg = ml_collections.ConfigDict(saved)
    for key in RESUME_KEYS:
        old, new = _get_path(saved_cfg, key), _get_path(config, key)
        if old != new:
            raise UserError(f"cannot resume: config {key} is {new!r} but the checkpoint was "
                            f"trained with {old!r} (use a new --workdir, or set it back)")


def _replicate(tree: Any, sharding: jax.sharding.NamedSharding) -> Any:
    """Host values (identical on every process) -> replicated global arrays."""
    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    return jax.tree.map(put, tree)


class Trainer:
    """The jitted steps and shardings of one run; `train_and_evaluate` drives it."""

    def __init__(self, config: ml_collections.ConfigDict, model, num_labels: int,
                 total_steps: int, mesh: jax.sharding.Mesh):
        t = config.train
        self.mesh = mesh
        self.num_labels = num_labels
        self.model_def = ModelDef(model)
        self.schedule = make_schedule(t, total_steps)
        self.tx = make_optimizer(t, self.schedule)
        self.replicated = parallel.replicated(mesh)
        self.data_sharding = parallel.data_sharded(mesh)
        params = jax.device_get(ModelDef.params_of(model))
        self._init_params = params
        self._seed = t.seed

        def init(params):
            return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=self.tx.init(params),
                              rng=jax.random.key_data(jax.random.key(t.seed)))

        abstract = jax.eval_shape(init, params)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
        self.abstract_state = abstract_with_shardings(abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        step = make_train_step(self.model_def, self.tx, self.schedule, num_labels=num_labels,
                               grad_accum_steps=t.grad_accum_steps,
                               label_smoothing=t.label_smoothing,
                               class_weights=tuple(t.class_weights))
        self.train_step = jax.jit(step, in_shardings=(self.state_sharding, self.data_sharding),
                                  out_shardings=(self.state_sharding, self.replicated),
                                  donate_argnums=0)
        self.eval_step = jax.jit(make_eval_step(self.model_def, num_labels),
                                 in_shardings=(self.state_sharding.params, self.data_sharding),
                                 out_shardings=self.replicated)

    def initial_state(self) -> TrainState:
        return self._init(_replicate(self._init_params, self.replicated))

    def evaluate(self, params: Params, batches: data_lib.EvalBatches,
                 label_names: list[str]) -> dict[str, Any]:
        counts = None
        for batch in data_lib.prefetch(iter(batches), 2,
                                       lambda b: data_lib.shard_batch(b, self.data_sharding)):
            c = self.eval_step(params, batch)
            counts = c if counts is None else metrics_lib.add_counts(counts, c)
        if counts is None:
            raise UserError("evaluation split is empty")
        return metrics_lib.compute_metrics(jax.device_get(counts), label_names)


def enable_compilation_cache(directory: str) -> None:
    """Persist compiled steps across runs (unless the user configured JAX's cache already)."""
    if directory and not jax.config.jax_compilation_cache_dir:
        path = Path(directory).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", str(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def check_workdir(workdir: Path) -> None:
    """A workdir is a folder or does not exist yet (it and its parents are made when needed)."""
    for path in (workdir, *workdir.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--workdir {workdir}: {path} is a file, not a folder")
            return


def resumable_step(checkpoints: Checkpoints, config: ml_collections.ConfigDict) -> int | None:
    """The newest checkpoint whose metadata reads, checked against `config`; damaged newer
    ones are skipped with a warning (never deleted: the next save at that step replaces them)."""
    for step in checkpoints.all_steps()[::-1]:
        try:
            saved = checkpoints.restore_extra(step)["meta"]["config"]
        except Exception as e:  # orbax raises many types for damaged files
            checkpoints.damaged.add(step)
            log.warning("checkpoint at step %d is incomplete or damaged (%s: %s); trying an "
                        "older one", step, type(e).__name__, str(e).splitlines()[0][:200]
                        if str(e) else "")
            continue
        check_resumable(saved, config)
        return step
    return None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict[str, Any]:
    """Fine-tune `config.model` on `config.data`; resumes from `workdir` when it has checkpoints.

    Returns the final evaluation (also written to `workdir/eval_results.json`).
    """
    validate(config)
    workdir = Path(workdir).expanduser().absolute()
    check_workdir(workdir)
    parallel.initialize_distributed(config)
    enable_compilation_cache(config.compilation_cache_dir)
    main = parallel.is_main_process()
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.train.batch_size, mesh)
    if (config.train.batch_size // config.train.grad_accum_steps) % mesh.devices.size:
        raise UserError(f"train.batch_size / train.grad_accum_steps = "
                        f"{config.train.batch_size // config.train.grad_accum_steps} must be a "
                        f"multiple of the device count ({mesh.devices.size})")
    label_names = list(config.data.label_names)

    # Refuse a resume that cannot work before loading anything, and write nothing until the
    # model and data have loaded (a bad name leaves no half-made workdir behind).
    resume_step, damaged = None, set()
    if (workdir / "checkpoints").is_dir():
        existing = Checkpoints(workdir / "checkpoints", read_only=True)
        resume_step = resumable_step(existing, config)
        damaged = existing.damaged
        existing.close()

    bundle = load_pretrained_bundle(config.model.name_or_path, num_labels=len(label_names),
                                    dtype=config.model.dtype, seed=config.train.seed)
    check_max_length(config, bundle.config)
    if bundle.label_names and not bundle.fresh_head and bundle.label_names != label_names:
        log.info("checkpoint head labels %s are used as %s", bundle.label_names, label_names)
    data = data_lib.load_data(config.data, bundle.tokenizer)
    n_dev, n_proc, pid = mesh.devices.size, jax.process_count(), jax.process_index()
    train_iter = data_lib.TrainIterator(data.train, config.train.batch_size, data.buckets,
                                        seed=config.train.seed, pad_id=data.pad_id,
                                        process_index=pid, process_count=n_proc)
    eval_batch = parallel.round_up(config.eval.batch_size, n_dev)
    eval_batches = (data_lib.EvalBatches(data.eval, eval_batch, data.buckets,
                                         pad_id=data.pad_id, process_index=pid,
                                         process_count=n_proc)
                    if data.eval is not None and len(data.eval) else None)
    steps_per_epoch = train_iter.steps_per_epoch
    total_steps = (config.train.max_steps if config.train.max_steps > 0
                   else math.ceil(config.train.num_epochs * steps_per_epoch))

    trainer = Trainer(config, bundle.model, len(label_names), total_steps, mesh)
    checkpoints = Checkpoints(workdir / "checkpoints", keep=config.checkpoint.keep,
                              metric=config.eval.metric, mode=config.eval.metric_mode,
                              async_save=config.checkpoint.async_save)
    checkpoints.damaged |= damaged
    meta = {
        "config": json.loads(to_json(config)),
        "label_names": label_names,
        "model_type": bundle.arch.model_type,
        "hf_config": bundle.hf_config,
        "encoder_config": bundle.config.to_dict(),
    }
    progress = {"best_value": None, "best_step": None, "bad_evals": 0}
    writer = MetricsWriter(workdir, enabled=main)
    if resume_step is not None:
        step0, state, extra = checkpoints.restore(trainer.abstract_state)  # falls back too
        train_iter.set_state(extra["data"])
        progress = extra["progress"]
        writer.truncate_after(step0)
        log.info("resumed from %s at step %d (epoch %d)", checkpoints.directory, step0,
                 extra["data"]["epoch"])
    else:
        state, step0 = trainer.initial_state(), 0
    if main:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "config.json").write_text(to_json(config))
        bundle.tokenizer.save_pretrained(str(workdir / "tokenizer"))
    log.info("%d train examples, %d steps/epoch, %d steps in all; %d device(s), %d process(es)",
             len(data.train), steps_per_epoch, total_steps, n_dev, n_proc)

    def extra_now(data_state: dict[str, Any]) -> dict[str, Any]:
        return {"data": data_state, "progress": progress, "meta": meta}

    def run_eval(step: int) -> dict[str, Any] | None:
        if eval_batches is None:
            return None
        t0 = time.perf_counter()
        result = trainer.evaluate(state.params, eval_batches, label_names)
        result["step"] = step
        value = result[config.eval.metric]
        better = (progress["best_value"] is None or
                  (value > progress["best_value"] if config.eval.metric_mode == "max"
                   else value < progress["best_value"]))
        if better:
            progress.update(best_value=value, best_step=step, bad_evals=0)
        else:
            progress["bad_evals"] += 1
        writer.write(step, {f"eval/{k}": v for k, v in result.items()
                            if isinstance(v, int | float) and k != "step"})
        log.info("step %d eval: accuracy=%.4f f1_macro=%.4f loss=%.4f ece=%.4f (%.1fs)", step,
                 result["accuracy"], result["f1_macro"], result["loss"], result["ece"],
                 time.perf_counter() - t0)
        return result

    batches = data_lib.prefetch(train_iter, 2,
                                lambda b: data_lib.shard_batch(b, trainer.data_sharding))
    step, last_eval, stop_reason = step0, None, None
    # The train step's metrics stay on the device until a log, evaluation or checkpoint step
    # reads them all at once (no per-step host sync); every state that is saved or evaluated
    # was checked finite first.
    unread = FiniteCheck(checkpoints)
    window: list[dict[str, float]] = []
    t_window = time.perf_counter()
    bar = _progress_bar(total_steps, step0, main)
    try:
        with StopRequest(checkpoints) as stop:
            while step < total_steps:
                batch = next(batches)
                state, step_metrics = trainer.train_step(state, batch)
                step += 1
                data_state = batches.get_state()
                unread.add(step, step_metrics)
                eval_now = (config.eval.every_steps > 0 and step % config.eval.every_steps == 0
                            and step < total_steps)
                save_now = eval_now or (config.checkpoint.every_steps > 0
                                        and step % config.checkpoint.every_steps == 0)
                if step % config.train.log_every_steps == 0 or step == total_steps or save_now:
                    window += unread.read()
                if step % config.train.log_every_steps == 0 or step == total_steps:
                    _log_window(writer, bar, step, window, time.perf_counter() - t_window)
                    window, t_window = [], time.perf_counter()
                bar.update(1)
                result = run_eval(step) if eval_now else None
                if result is not None:
                    last_eval = result
                if save_now:
                    checkpoints.save(step, state, extra_now(data_state), metrics=result)
                    writer.write(step, {"checkpoint/blocked_seconds":
                                        checkpoints.last_save_seconds})
                patience = config.eval.early_stopping_patience
                if patience > 0 and progress["bad_evals"] >= patience:
                    stop_reason = (f"early stopping: no {config.eval.metric} improvement in "
                                   f"{patience} evaluations (best at step "
                                   f"{progress['best_step']})")
                signalled = stop.should_stop(step)
                if signalled:
                    stop_reason = stop_reason or f"{signalled} at step {step}"
                if stop_reason:
                    break
            window += unread.read()
    finally:
        bar.close()
        batches.close()

    interrupted = stop_reason is not None and not stop_reason.startswith("early stopping")
    if interrupted:
        checkpoints.save(step, state, extra_now(batches.get_state()))
        checkpoints.wait()
        checkpoints.close()
        writer.close()
        log.warning("stopped (%s); checkpoint saved at step %d. Resume with the same command "
                    "(the same --config and --workdir %s).", stop_reason, step, workdir)
        return {"stopped": stop_reason, "step": step}
    if stop_reason:
        log.info("%s", stop_reason)

    final = last_eval if last_eval is not None and last_eval["step"] == step else run_eval(step)
    checkpoints.save(step, state, extra_now(batches.get_state()), metrics=final)
    checkpoints.wait()
    results = final or {"step": step}
    results.update(best_step=progress["best_step"], best_value=progress["best_value"],
                   metric=config.eval.metric)
    if main and final is not None:
        (workdir / "eval_results.json").write_text(json.dumps(results, indent=2))
        log.info("final evaluation (step %d):\n%s", step, metrics_lib.format_report(final))
    checkpoints.close()
    writer.close()
    return results


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


def _log_window(writer: MetricsWriter, bar, step: int, window: list[dict[str, float]],
                seconds: float) -> None:
    examples = sum(m["examples"] for m in window)
    summary = {f"train/{k}": float(np.mean([m[k] for m in window]))
               for k in window[0] if k != "examples"}
    summary["train/learning_rate"] = window[-1]["learning_rate"]
    summary["train/examples_per_second"] = examples / max(seconds, 1e-9)
    writer.write(step, summary)
    bar.set_postfix(loss=f"{summary['train/loss']:.4f}", lr=f"{window[-1]['learning_rate']:.2e}",
                    ex_s=f"{summary['train/examples_per_second']:.0f}", refresh=False)


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, desc="train",
                dynamic_ncols=True, mininterval=1.0)
