"""The pure step functions and their jitted, sharded forms: what runs the model, everywhere.

`train_step(state, batch) -> (state, metrics)` trains; ONE `model_step(params, batch)` runs the
model for everything else (the loop's evaluation, `evaluate`, `predict`, export's split
comparison, the benchmark) and returns what each needs: additive per-class counts (metrics),
probabilities and logits, and the batch's `index` (predictions back to rows). `Steps` jits them
with explicit shardings over the mesh; an inference-only `Steps` builds no optimizer.

With LoRA (`lora.LoraSpec`) the state's `params` are the trainable ones only (head and
adapters): the frozen base is one more replicated argument of both steps (never donated,
differentiated or checkpointed), merged with them inside the step; with LoRA dropout the
train step runs the adapters unmerged instead (`lora.unmerged`), the model step still merges.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct

from flax_sentiment import parallel
from flax_sentiment.config import option
from flax_sentiment.data import batching
from flax_sentiment.errors import UserError
from flax_sentiment.evaluation import metrics as metrics_lib
from flax_sentiment.models.functional import ModelDef, Params
from flax_sentiment.models.lora import LoraSpec, adapter_dropout, unmerged
from flax_sentiment.models.packing import PackedRows

Batch = dict[str, jax.Array]


@struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar
    params: Params  # the trainable parameters: all of them, or with LoRA the head and adapters
    opt_state: optax.OptState
    rng: jax.Array  # raw uint32[2] key: a plain array checkpoints and reshards like any other
    # Exponential moving average of `params` (train.ema_decay > 0), else None (not saved).
    ema: Params | None = None


# --------------------------------------------------------------------------------------------
# Optimizer


def decay_mask(params: Params) -> dict[str, bool]:
    """AdamW decays matrices and embeddings, never biases or LayerNorm scales."""
    return {name: not name.endswith((".bias", ".scale")) for name in params}


_LAYER = re.compile(r"encoder\.layers\.(\d+)\.")


def layer_decay_exponents(names: Iterable[str], num_layers: int) -> dict[str, int]:
    """How many times `train.layer_decay` multiplies each parameter's learning rate: 0 for the
    head, L - i for layer i of L (0-based; the top layer 1), L + 1 for the embeddings. ELECTRA's
    `_get_layer_lrs` gives every encoder part one more (top layer 2, embeddings L + 2); the
    recorded recipes were tuned with this convention. Encoder parameters that several depths
    share (ALBERT's layer groups, a relative position table, a final norm) learn at the rate of
    the highest layer that uses them: 1."""
    exponents = {}
    for name in names:
        m = _LAYER.match(name)
        if m:
            exponents[name] = num_layers - int(m.group(1))
        elif name.startswith("encoder.embeddings."):
            exponents[name] = num_layers + 1
        elif name.startswith("encoder."):
            exponents[name] = 1
        else:
            exponents[name] = 0
    return exponents


def hyperparameters(t: ml_collections.ConfigDict, total_steps: int, num_labels: int
                    ) -> dict[str, np.ndarray]:
    """The train step's numeric hyperparameters. They enter the jitted step as arguments, not
    constants, so runs that differ only in them (the trials of a sweep) share one compiled
    program."""
    warmup = t.warmup_steps if t.warmup_steps > 0 else int(round(t.warmup_ratio * total_steps))
    warmup = min(warmup, max(total_steps - 1, 0))
    weights = tuple(t.class_weights) if len(t.class_weights) else (1.0,) * num_labels
    return {"learning_rate": np.float32(t.learning_rate), "warmup_steps": np.float32(warmup),
            "total_steps": np.float32(max(total_steps, 1)),
            "weight_decay": np.float32(t.weight_decay),
            "label_smoothing": np.float32(t.label_smoothing),
            "class_weights": np.asarray(weights, np.float32),
            "layer_decay": np.float32(option(t, "layer_decay", 1.0)),
            "ema_decay": np.float32(option(t, "ema_decay", 0.0)),
            "distill_weight": np.float32(option(t, "distill_weight", 0.0)),
            "distill_temperature": np.float32(option(t, "distill_temperature", 1.0))}


def schedule_value(kind: str, h: dict[str, Any], count: jax.Array) -> jax.Array:
    """Learning rate at `count`: linear warmup from 0, then linear/cosine decay to 0 at the
    last step, or constant (optax's warmup schedules, with traced lengths)."""
    lr, warmup, total = h["learning_rate"], h["warmup_steps"], h["total_steps"]
    count = jnp.asarray(count, jnp.float32)
    rising = lr * jnp.clip(count, 0, warmup) / jnp.maximum(warmup, 1.0)
    if kind == "cosine":
        span = jnp.maximum(total - warmup, 1.0)
        done = jnp.clip(count - warmup, 0, span) / span
        after = lr * 0.5 * (1 + jnp.cos(jnp.pi * done))
    elif kind == "constant":
        after = lr
    else:
        span = jnp.maximum(total - warmup, 1.0)
        after = lr * (1 - jnp.clip(count - warmup, 0, span) / span)
    return jnp.where(count < warmup, rising, after)


def make_schedule(t: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """`schedule_value` for this config's values (for logging and tests)."""
    h = hyperparameters(t, total_steps, 1)
    return lambda count: schedule_value(t.schedule, h, count)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """optax.clip_by_global_norm's rule (scale to `max_norm` when the global norm exceeds it) as
    one scalar factor: XLA then folds it into the AdamW moment updates instead of writing a
    clipped copy of every gradient and reading both copies in each moment's loop (optax's
    per-element select): 11 passes over the parameters' size a step instead of 15, ~10 ms of
    MiniLM's step on a 2-core CPU (docs/BENCHMARKS.md)."""

    def update(updates, state, params=None):
        norm = optax.tree.norm(updates)
        factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(t: ml_collections.ConfigDict, h: dict[str, Any], num_layers: int = 0
                   ) -> optax.GradientTransformation:
    """AdamW with clipping; the learning rate and weight decay come from `h` (traced).

    Layer-wise decay scales each parameter's whole AdamW update (its learning rate, hence its
    decoupled weight decay too) by `h["layer_decay"] ** layer_decay_exponents(...)`; at 1.0 the
    scale is exactly 1 (no separate program for runs without it).
    """
    parts = [clip_by_global_norm(t.max_grad_norm)] if t.max_grad_norm > 0 else []
    parts.append(optax.adamw(lambda count: schedule_value(t.schedule, h, count),
                             b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps,
                             weight_decay=h["weight_decay"], mask=decay_mask))
    if option(t, "layer_decay", 1.0) != 1.0:

        def scale(updates, params=None):
            exponents = layer_decay_exponents(updates, num_layers)
            return {k: u * h["layer_decay"] ** exponents[k] for k, u in updates.items()}

        parts.append(optax.stateless(scale))
    return optax.chain(*parts)


def ema_update(ema: Params, params: Params, step: jax.Array, decay: jax.Array) -> Params:
    """The bias-corrected EMA after `step` (>= 1) updates: what optax.ema(decay, debias=True)
    returns, i.e. zero-initialised, so the pretrained weights get no weight, kept directly in
    its debiased form: ema += (params - ema) * (1 - d) / (1 - d^step)."""
    c = (1.0 - decay) / (1.0 - decay ** jnp.asarray(step, jnp.float32))
    return jax.tree.map(lambda e, p: e + (p - e) * c, ema, params)


# --------------------------------------------------------------------------------------------
# Pure steps

# A packed batch's per-example fields are [rows, slots] (`packing.py`); everything that counts
# examples sees them flat, one entry per slot, in the order of the model's packed logits.
PER_EXAMPLE = ("labels", "weights", "index", "teacher_logits")


def apply_model(model: Any, batch: Batch, **kwargs: Any) -> jax.Array:
    """The model's logits on a padded batch, or one per example slot of a packed batch."""
    packed = None
    if "segment_ids" in batch:
        packed = PackedRows(batch["segment_ids"], batch["positions"], batch["starts"])
    return model(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                 packed=packed, **kwargs)


def per_example(batch: Batch) -> Batch:
    """`batch` with its per-example fields one entry per example (row or slot)."""
    if "segment_ids" not in batch:
        return batch
    return {k: v.reshape(-1, *v.shape[2:]) if k in PER_EXAMPLE else v for k, v in batch.items()}



def distillation_kl(logits: jax.Array, teacher_logits: jax.Array, temperature: jax.Array
                    ) -> jax.Array:
    """Per-row KL(p_teacher || p_student) at `temperature` (Hinton et al. 2015). With several
    teachers ([rows, teachers, classes]) p_teacher is the mean of their softened probabilities."""
    p = jnp.mean(jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1),
                 axis=1)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32) / temperature, axis=-1)
    return jnp.sum(jax.scipy.special.xlogy(p, p) - p * log_q, axis=-1)


def loss_sum(model_def: ModelDef, params: Params, batch: Batch, rng: jax.Array, *,
             num_labels: int, label_smoothing: float | jax.Array, class_weights: jax.Array,
             distill_weight: float | jax.Array = 0.0, distill_temperature: float | jax.Array = 1.0
             ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Sum (not mean) of weighted cross-entropy, so micro-batches add up to the full batch.

    PyTorch's CrossEntropyLoss(weight=w, label_smoothing=e), the definition users know:
    (1 - e) * w[y] * ce_y + e / C * sum_c w[c] * ce_c, normalised by sum w[y] (the caller
    divides by it). Per-row `weights` mask padded rows. A batch with `teacher_logits` mixes in
    distillation: (1 - a) * that + a * T^2 * w[y] * KL(teacher || student at T), a =
    `distill_weight` (T^2 keeps the soft targets' gradients on the labels' scale).
    """
    logits = apply_model(model_def.merge(params), batch, deterministic=False,
                         dropout_rng=jax.random.wrap_key_data(rng))
    batch = per_example(batch)
    nll = -jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    labels = batch["labels"]
    w_y = class_weights[labels]
    ce = w_y * jnp.take_along_axis(nll, labels[:, None], axis=-1)[:, 0]
    if not isinstance(label_smoothing, int | float) or label_smoothing:  # traced: always
        smooth = jnp.sum(nll * class_weights, axis=-1) / num_labels
        ce = (1.0 - label_smoothing) * ce + label_smoothing * smooth
    if "teacher_logits" in batch:
        t2 = distill_temperature ** 2
        kl = distillation_kl(logits, batch["teacher_logits"], distill_temperature)
        ce = (1.0 - distill_weight) * ce + distill_weight * t2 * w_y * kl
    w = batch["weights"] * w_y
    correct = (jnp.argmax(logits, -1) == labels) * batch["weights"]
    return jnp.sum(batch["weights"] * ce), (jnp.sum(w), jnp.sum(correct))


def apply_mlm(model: Any, batch: Batch, **kwargs: Any) -> jax.Array:
    """A `MaskedLM`'s vocabulary logits at the batch's `targets` [rows, P, vocab]."""
    packed = None
    if "segment_ids" in batch:
        packed = PackedRows(batch["segment_ids"], batch["positions"], batch["starts"])
    return model(batch["input_ids"], batch.get("attention_mask"), None,
                 targets=batch["targets"], packed=packed, **kwargs)


def mlm_counts(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Additive sums over the real targets: cross-entropy, correct predictions, targets."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    ids, w = batch["target_ids"], batch["target_weights"]
    nll = -jnp.take_along_axis(logp, ids[..., None], axis=-1)[..., 0]
    return {"loss_sum": jnp.sum(w * nll),
            "correct": jnp.sum((jnp.argmax(logits, -1) == ids) * w),
            "targets": jnp.sum(w)}


def mlm_loss_sum(model_def: ModelDef, params: Params, batch: Batch, rng: jax.Array,
                 **unused: Any) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """Masked-LM cross-entropy summed over the batch's targets (transformers' `*ForMaskedLM`
    loss times their count, so micro-batches add up); aux (targets, correct)."""
    logits = apply_mlm(model_def.merge(params), batch, deterministic=False,
                       dropout_rng=jax.random.wrap_key_data(rng))
    c = mlm_counts(logits, batch)
    return c["loss_sum"], (c["targets"], c["correct"])


def mlm_metrics(counts: dict[str, Any]) -> dict[str, float]:
    """Loss (mean over targets), accuracy and perplexity from summed `mlm_counts`."""
    n = float(counts["targets"])
    if n <= 0:
        raise UserError("masked-LM evaluation: no targets (the held-out texts are empty)")
    loss = float(counts["loss_sum"]) / n
    return {"loss": loss, "accuracy": float(counts["correct"]) / n,
            "perplexity": float(np.exp(min(loss, 700.0))), "targets": int(round(n))}


def full_params(params: Params, frozen: Params | None, lora: LoraSpec | None) -> Params:
    """What the model runs on: `params` itself, or with LoRA the frozen base and the adapters
    merged (`lora.LoraSpec.merge`)."""
    return params if lora is None else lora.merge(params, frozen)


def make_train_step(model_def: ModelDef, t: ml_collections.ConfigDict, *, num_labels: int,
                    num_layers: int = 0, lora: LoraSpec | None = None, task: str = "classify"
                    ) -> Callable[..., tuple[TrainState, Batch]]:
    """`train_step(state, batch, h)`; `h` = `hyperparameters(...)`, arguments of the step.
    With `lora`: `train_step(state, batch, h, frozen)`, gradients for `state.params` alone;
    with `lora.dropout` > 0 the model runs its adapters unmerged, their input dropped.
    `task` "mlm": the masked-LM loss (`mlm_loss_sum`), accuracy over the masked targets."""
    adapted = unmerged(model_def, lora) if lora is not None and lora.dropout > 0 else None
    objective = mlm_loss_sum if task == "mlm" else loss_sum

    def loss(params, frozen, batch, rng, **kwargs):
        if adapted is None:
            return objective(model_def, full_params(params, frozen, lora), batch, rng, **kwargs)
        with adapter_dropout(rng):
            return objective(adapted, {**frozen, **params}, batch, rng, **kwargs)

    grad_fn = jax.value_and_grad(loss, argnums=0, has_aux=True)
    k = t.grad_accum_steps

    def train_step(state: TrainState, batch: Batch, h: dict[str, jax.Array],
                   frozen: Params | None = None) -> tuple[TrainState, Batch]:
        tx = make_optimizer(t, h, num_layers)
        step_rng = jax.random.fold_in(state.rng, state.step)

        def micro(i, mb):
            rng = jax.random.key_data(jax.random.fold_in(jax.random.wrap_key_data(step_rng), i))
            (loss, (w, correct)), grads = grad_fn(state.params, frozen, mb, rng,
                                                  num_labels=num_labels,
                                                  label_smoothing=h["label_smoothing"],
                                                  class_weights=h["class_weights"],
                                                  distill_weight=h["distill_weight"],
                                                  distill_temperature=h["distill_temperature"])
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
        ema = (None if state.ema is None
               else ema_update(state.ema, params, state.step + 1, h["ema_decay"]))
        examples = jnp.sum(batch["weights"])
        metrics = {
            "loss": loss / denom,
            "accuracy": correct / jnp.maximum(w if task == "mlm" else examples, 1.0),
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": schedule_value(t.schedule, h, state.step),
            "examples": examples,
        }
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema=ema), metrics

    return train_step


def make_mlm_model_step(model_def: ModelDef) -> Callable[..., dict[str, jax.Array]]:
    """A masked-LM forward pass: the batch's additive `mlm_counts`."""

    def model_step(params: Params, batch: Batch) -> dict[str, jax.Array]:
        return mlm_counts(apply_mlm(model_def.merge(params), batch), batch)

    return model_step


def make_model_step(model_def: ModelDef, num_labels: int, lora: LoraSpec | None = None
                    ) -> Callable[..., dict[str, jax.Array]]:
    """The one forward pass on a batch that is not training (`model_step(params, batch)`, with
    `lora` `model_step(params, batch, frozen)`).

    `counts` are additive per-class sums (padded rows weigh 0, so any batching gives the same
    metrics); `probabilities` and `predicted` come from the same logits the counts use.
    """

    def model_step(params: Params, batch: Batch, frozen: Params | None = None
                   ) -> dict[str, jax.Array]:
        logits = apply_model(model_def.merge(full_params(params, frozen, lora)), batch)
        batch = per_example(batch)
        return {
            "counts": metrics_lib.batch_counts(logits, batch["labels"], batch["weights"],
                                               num_labels),
            "logits": logits.astype(jnp.float32),
            "probabilities": jax.nn.softmax(logits.astype(jnp.float32), axis=-1),
            "predicted": jnp.argmax(logits, axis=-1),
            "index": batch["index"],
        }

    return model_step


# --------------------------------------------------------------------------------------------
# Jitted and sharded


# The config keys the train step's program depends on (`hyperparameters` are arguments).
STATIC_TRAIN_KEYS = ("schedule", "adam_b1", "adam_b2", "adam_eps", "max_grad_norm",
                     "grad_accum_steps")


def static_train_key(t: ml_collections.ConfigDict) -> tuple:
    """What of `t` the train step's program depends on: the keys above, and which of layer
    decay and EMA are on (their values are arguments)."""
    return (*(t[k] for k in STATIC_TRAIN_KEYS), option(t, "layer_decay", 1.0) != 1.0,
            option(t, "ema_decay", 0.0) > 0)
# Jitted steps by (model structure, labels, mesh[, static train keys]): a second run of the same
# model in this process (a sweep's next trial) reuses the compiled programs, with no load.
_JITTED: dict[tuple, Any] = {}


def replicate(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host values (identical on every process) -> replicated global arrays."""
    sharding = parallel.replicated(mesh)

    def put(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(put, tree)


class Steps:
    """The jitted steps of one model on one mesh.

    `Steps(model_def, num_labels, mesh)` runs the model only (evaluation, prediction, export:
    no optimizer is built); `train=config.train, total_steps=N` adds the optimizer, the train
    step, the initial state and the abstract state (with shardings) that checkpoints restore to.
    With `lora` and the `frozen` base, the parameters it takes and trains are the head's and
    the adapters' (`lora.LoraSpec.abstract_trainable`).
    """

    def __init__(self, model_def: ModelDef, num_labels: int, mesh: jax.sharding.Mesh, *,
                 train: ml_collections.ConfigDict | None = None, total_steps: int = 0,
                 lora: LoraSpec | None = None, frozen: Params | None = None,
                 task: str = "classify"):
        self.model_def, self.num_labels, self.mesh = model_def, num_labels, mesh
        self.task = task
        if task == "mlm" and lora is not None:
            raise UserError("masked-LM training with LoRA is not supported: unset model.lora.rank")
        self.replicated = parallel.replicated(mesh)
        self.data_sharding = parallel.data_sharded(mesh)
        self.lora = lora
        if lora is not None and frozen is None:
            raise ValueError("Steps with lora needs the frozen base parameters")
        # The frozen base: one more argument of each step (nothing without LoRA).
        self._frozen = () if lora is None else (replicate(jax.device_get(frozen), mesh),)
        more = () if lora is None else (self.replicated,)
        key = (model_def.key(), num_labels, mesh, task) + (() if lora is None else (lora.key(),))
        if ("model", *key) not in _JITTED:
            _JITTED[("model", *key)] = jax.jit(
                make_mlm_model_step(model_def) if task == "mlm"
                else make_model_step(model_def, num_labels, lora),
                in_shardings=(self.replicated, self.data_sharding, *more),
                out_shardings=self.replicated)
        self.model_step = _JITTED[("model", *key)]
        if train is None:
            return
        self.hparams = replicate(hyperparameters(train, total_steps, num_labels), mesh)
        num_layers = model_def.num_layers
        # Its state's structure; values unused.
        self.tx = make_optimizer(train, self.hparams, num_layers)
        seed, ema = train.seed, option(train, "ema_decay", 0.0) > 0

        def init(params):
            return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                              opt_state=self.tx.init(params),
                              rng=jax.random.key_data(jax.random.key(seed)),
                              ema=jax.tree.map(jnp.copy, params) if ema else None)

        trainable = model_def.abstract_params()
        if lora is not None:
            trainable = lora.abstract_trainable(trainable)
        abstract = jax.eval_shape(init, trainable)
        self.state_sharding = jax.tree.map(lambda _: self.replicated, abstract)
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            abstract, self.state_sharding)
        self._init = jax.jit(init, out_shardings=self.state_sharding)
        static = static_train_key(train) + (() if lora is None else (lora.dropout,))
        if ("train", *key, static) not in _JITTED:
            _JITTED[("train", *key, static)] = jax.jit(
                make_train_step(model_def, train, num_labels=num_labels,
                                num_layers=num_layers, lora=lora, task=task),
                in_shardings=(self.state_sharding, self.data_sharding, self.replicated, *more),
                out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)
        self.train_step_jit = _JITTED[("train", *key, static)]

    def train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, Batch]:
        """The jitted `train_step(state, batch, hparams)` with this run's hyperparameters."""
        return self.train_step_jit(state, batch, self.hparams, *self._frozen)

    def _abstract_batch(self, batch: batching.Batch) -> dict[str, jax.ShapeDtypeStruct]:
        """The global, sharded shapes of a host batch of this process's rows."""
        procs = jax.process_count()
        return {k: jax.ShapeDtypeStruct((v.shape[0] * procs, *v.shape[1:]), v.dtype,
                                        sharding=self.data_sharding)
                for k, v in batch.items()}

    def precompile(self, train_batches: Iterable[batching.Batch] = (),
                   eval_batches: Iterable[batching.Batch] = (), *,
                   threads: int | None = None) -> list[tuple[str, float]]:
        """Compile the steps for these batches' shapes now, several at once, instead of one at
        a time when each shape first comes up mid-run: XLA compiles in parallel threads, and
        the jitted steps then find their programs compiled. Returns one ("train 7x66", seconds)
        per shape: its lowering and compile (or cache load), overlapping the others'."""
        jobs: list[tuple[str, Callable[[], Any]]] = []

        def label(kind: str, batch: batching.Batch) -> str:
            return f"{kind} {'x'.join(map(str, batch['input_ids'].shape))}"

        if train_batches:
            state = self.abstract_state
            jobs += [(label("train", b), lambda b=b: self.train_step_jit.lower(
                state, self._abstract_batch(b), self.hparams, *self._frozen).compile())
                for b in train_batches]
        if eval_batches:
            params = (self.abstract_state.params if hasattr(self, "abstract_state")
                      else None)
            if params is not None:
                jobs += [(label("eval", b), lambda b=b: self.model_step.lower(
                    params, self._abstract_batch(b), *self._frozen).compile())
                    for b in eval_batches]
        if not jobs:
            return []

        def timed(job: Callable[[], Any]) -> float:
            t0 = time.perf_counter()
            job()
            return time.perf_counter() - t0

        workers = threads or min(len(jobs), len(os.sched_getaffinity(0)))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = [(name, pool.submit(timed, job)) for name, job in jobs]
            return [(name, future.result()) for name, future in futures]

    def init_state(self, params: Params) -> TrainState:
        """A fresh train state (step 0, new optimizer moments) from these (trainable)
        parameters."""
        return self._init(replicate(jax.device_get(params), self.mesh))

    def place(self, params: Params) -> Params:
        """Parameters replicated over the mesh, ready for `run`."""
        return replicate(jax.device_get(params), self.mesh)

    def run(self, params: Params, batches: Iterable[batching.Batch]
            ) -> Iterator[dict[str, jax.Array]]:
        """`model_step` over host batches (sharded and prefetched in a background thread)."""
        with batching.prefetch(iter(batches), 2,
                               lambda b: batching.shard_batch(b, self.data_sharding)) as it:
            for batch in it:
                yield self.model_step(params, batch, *self._frozen)

    def evaluate(self, params: Params, batches: Iterable[batching.Batch],
                 label_names: list[str]) -> dict[str, Any]:
        """Every metric of `metrics.compute_metrics` from the summed counts of `batches` (a
        masked-LM's: `mlm_metrics`)."""
        counts = None
        for out in self.run(params, batches):
            c = out if self.task == "mlm" else out["counts"]
            counts = c if counts is None else metrics_lib.add_counts(counts, c)
        if counts is None:
            raise UserError("evaluation split is empty")
        if self.task == "mlm":
            return mlm_metrics(jax.device_get(counts))
        return metrics_lib.compute_metrics(jax.device_get(counts), label_names)
