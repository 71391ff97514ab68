"""Attention through the fused paths (flax_sentiment/models/attention.py): every architecture's
logits and gradients equal the einsum reference's, padded and packed (an example's logits do
not change when other examples share its row); the Pallas kernels (TPU splash, GPU Triton) in
interpret mode on tiny shapes; cuDNN's ragged layout of packed rows; which path `auto` takes,
and the refusals of a path a model cannot take."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers as T

import flax_sentiment as fs
from flax_sentiment.config import base_config, validate
from flax_sentiment.data import batching, packing
from flax_sentiment.errors import UserError
from flax_sentiment.models import attention
from flax_sentiment.models.functional import ModelDef
from flax_sentiment.models.packing import PackedRows
from flax_sentiment.training.steps import apply_model, loss_sum
from tests.test_models import _save
from tests.test_packing import ARCHS, LENGTHS, _by_example, _split


def _set(model, implementation, interpret=False):
    for layer in model.encoder._schedule():
        layer.attention.implementation = implementation
        layer.attention.interpret = interpret


def _batches(cfg, token_types, seed=0):
    split = _split(cfg, LENGTHS, seed=seed, token_types=token_types)
    pad = cfg.pad_token_id or 0
    padded = batching.materialize(split, np.arange(len(split)), max(LENGTHS), pad)
    rows = packing.first_fit_decreasing(split.lengths, 24)
    packed = packing.materialize_packed(split, rows + [[]], 24, 5, pad)  # an empty row too
    return split, padded, packed


def _outputs(model, padded, packed, n, num_labels):
    """Logits of every example (padded and packed, example order) and the packed batch's
    gradients in a train step (hidden dropout on: both paths draw the same masks)."""
    model_def, params = ModelDef(model), ModelDef.params_of(model)

    def loss(p):
        total, _ = loss_sum(model_def, p, packed, np.array([5, 7], np.uint32),
                            num_labels=num_labels, label_smoothing=0.0,
                            class_weights=jnp.ones(num_labels))
        return total

    grads = jax.jit(jax.grad(loss))(params)
    return (_by_example(apply_model(model, padded), padded, n),
            _by_example(apply_model(model, packed), packed, n), grads)


def _load(case, tmp_path, attention_dropout=0.0):
    cls, cfg, token_types = ARCHS[case]
    cfg = T.AutoConfig.for_model(**cfg.to_dict())
    _save(cls, cfg, tmp_path, randomise=True)  # weights at a scale where a slip shows
    model = fs.load_pretrained_bundle(tmp_path).model
    model.encoder.set_attention("einsum", attention_dropout)
    return cfg, token_types, model


def _assert_same(got, want, what):
    logits_pad, logits_packed, grads = want
    tolerance = 1e-5 * np.abs(logits_pad).max() + 1e-6
    for name, ours, ref in (("padded", got[0], logits_pad), ("packed", got[1], logits_packed),
                            ("packed vs padded", got[1], logits_pad)):
        assert not np.isnan(ours).any()
        err = np.abs(ours - ref).max()
        assert err <= tolerance, (what, name, err, tolerance)
    scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads))
    for name in grads:
        np.testing.assert_allclose(got[2][name], grads[name], atol=2e-5 * scale,
                                   err_msg=f"{what}: {name}")


@pytest.mark.parametrize("case", sorted(k for k in ARCHS if not k.startswith("deberta")))
def test_xla_path_equals_einsum_padded_and_packed(case, tmp_path):
    """Logits (padded, packed) and a train step's gradients through jax.nn's attention equal
    the einsum path's; ModernBERT's local layers and MPNet's position bias included."""
    cfg, token_types, model = _load(case, tmp_path)
    split, padded, packed = _batches(cfg, token_types)
    want = _outputs(model, padded, packed, len(split), cfg.num_labels)
    model.encoder.set_attention("xla")
    _assert_same(_outputs(model, padded, packed, len(split), cfg.num_labels), want, case)


@pytest.mark.parametrize("kernel", ["splash", "triton"])
def test_pallas_kernels_in_interpret_mode_equal_einsum(kernel, tmp_path):
    """The TPU splash and GPU Triton flash kernels, run by Pallas' interpreter on a CPU: BERT's
    and RoBERTa-style (padding-aware positions) logits and gradients, packed rows kept apart
    by segment ids."""
    cfg, token_types, model = _load("roberta", tmp_path)
    split, padded, packed = _batches(cfg, token_types, seed=2)
    want = _outputs(model, padded, packed, len(split), cfg.num_labels)
    _set(model, kernel, interpret=True)
    _assert_same(_outputs(model, padded, packed, len(split), cfg.num_labels), want, kernel)


def test_a_wrong_kernel_input_is_seen(tmp_path):
    """The comparison above can fail: the kernel given padding as one segment (so real tokens
    attend to the padding) changes the padded logits beyond the tolerance."""
    cfg, token_types, model = _load("bert", tmp_path)
    split, padded, _ = _batches(cfg, token_types)
    want = _by_example(apply_model(model, padded), padded, len(split))
    _set(model, "triton", interpret=True)
    no_padding = dict(padded, attention_mask=np.ones_like(padded["attention_mask"]))
    got = _by_example(apply_model(model, no_padding), padded, len(split))
    assert np.abs(got - want).max() > 1e-3 * np.abs(want).max()


def test_deberta_takes_einsum_and_refuses_a_kernel(tmp_path):
    cfg, token_types, model = _load("deberta-v3", tmp_path)
    split, padded, packed = _batches(cfg, token_types)
    want = _outputs(model, padded, packed, len(split), cfg.num_labels)
    model.encoder.set_attention("auto")
    _assert_same(_outputs(model, padded, packed, len(split), cfg.num_labels), want, "auto")
    for kernel in attention.KERNELS:
        with pytest.raises(UserError, match="relative-position.*model.attention=einsum"):
            model.encoder.set_attention(kernel)


def test_refusals_name_the_key(tmp_path):
    _, _, bert = _load("bert", tmp_path / "bert", attention_dropout=None)
    assert {layer.attention.attention_dropout.rate for layer in bert.encoder._schedule()} == {0.1}
    with pytest.raises(UserError, match="model.attention_dropout=0.0"):
        bert.encoder.set_attention("cudnn")  # the checkpoint's 0.1
    bert.encoder.set_attention("xla", 0.0)
    assert {layer.attention.attention_dropout.rate for layer in bert.encoder._schedule()} == {0.0}
    with pytest.raises(UserError, match="cuDNN runs on NVIDIA GPUs, this backend is cpu"):
        bert.encoder.set_attention("cudnn")
    with pytest.raises(UserError, match="the Pallas kernels run on GPUs and TPUs"):
        bert.encoder.set_attention("pallas")
    with pytest.raises(UserError, match="takes bfloat16 or float16.*model.dtype=bfloat16"):
        attention.check("cudnn", model_type="bert", relative=False, local=False, extra=False,
                        dropout=0.0, dtype=jnp.float32, backend="gpu")
    with pytest.raises(UserError, match=r"model.attention_dropout=1.0: must be in \[0, 1\)"):
        bert.encoder.set_attention("auto", 1.0)
    _, _, mpnet = _load("mpnet", tmp_path / "mpnet")
    with pytest.raises(UserError, match="position bias has no input in the Pallas kernels"):
        mpnet.encoder.set_attention("pallas")
    attention.check("cudnn", model_type="mpnet", relative=False, local=False, extra=True,
                    dropout=0.0, dtype=jnp.bfloat16, backend="gpu")
    _, _, modern = _load("modernbert-mean-biases", tmp_path / "modern")
    modern.encoder.set_attention("xla")  # the local layers' one kernel path
    with pytest.raises(UserError, match="sliding-window.*model.attention=xla"):
        attention.check("cudnn", model_type="modernbert", relative=False, local=True,
                        extra=False, dropout=0.0, dtype=jnp.bfloat16, backend="gpu")
    for key, value, message in (("attention", "flash", "model.attention"),
                                ("attention_dropout", 1.5, "model.attention_dropout")):
        c = base_config()
        c.model[key] = value
        with pytest.raises(UserError, match=message):
            validate(c)


def test_auto_by_backend_and_model():
    def pick(backend, dtype=jnp.bfloat16, implementation="auto", **kw):
        args = dict(relative=False, local=False, extra=False, dropout=0.0, training=True,
                    packed=False, length=64, capability=9.0)
        return attention.resolve(implementation, backend=backend, dtype=dtype,
                                 **{**args, **kw})

    assert pick("cpu") == "einsum"
    assert pick("gpu") == "cudnn" and pick("gpu", jnp.float32) == "xla"
    assert pick("gpu", packed=True) == "cudnn" and pick("rocm") == "xla"
    # cuDNN's ragged layout (packed rows) needs Hopper; a bias neither packed nor at odd lengths
    assert pick("gpu", packed=True, capability=8.0) == "xla"
    assert pick("gpu", capability=8.0) == "cudnn"
    assert pick("gpu", extra=True) == "cudnn"  # MPNet's bias is a cuDNN input
    assert pick("gpu", extra=True, packed=True) == "xla"
    assert pick("gpu", extra=True, length=65) == "xla"
    with pytest.raises(UserError, match="need a Hopper GPU.*data.pack_length=0"):
        pick("gpu", implementation="cudnn", packed=True, capability=8.0)
    assert pick("tpu") == "pallas" and pick("tpu", extra=True) == "xla"
    assert pick("gpu", local=True) == "xla" and pick("tpu", local=True) == "xla"
    assert pick("gpu", relative=True) == "einsum"
    # Attention dropout: the train step keeps einsum, evaluation takes the kernel.
    assert pick("gpu", dropout=0.1) == "einsum"
    assert pick("gpu", dropout=0.1, training=False) == "cudnn"
    assert pick("cpu", jnp.float32, implementation="xla", dropout=0.1) == "xla"


def test_attention_dropout_default_by_backend(tmp_path):
    """model.attention_dropout unset: 0.0 on accelerators under auto (their kernels have none),
    the checkpoint's elsewhere; a set value always wins."""
    from flax_sentiment.training.start import configure_encoder

    assert attention.default_dropout("auto", "gpu") == 0.0
    assert attention.default_dropout("auto", "tpu") == 0.0
    assert attention.default_dropout("auto", "cpu") is None
    assert attention.default_dropout("einsum", "gpu") is None
    _, _, model = _load("bert", tmp_path, attention_dropout=None)
    c = base_config()
    configure_encoder(model, c.model)  # on this CPU: the checkpoint's 0.1
    assert {layer.attention.attention_dropout.rate for layer in model.encoder._schedule()} == {0.1}
    c.model.attention_dropout = 0.05
    configure_encoder(model, c.model)
    assert {layer.attention.attention_dropout.rate for layer in model.encoder._schedule()} == {0.05}


def test_cudnn_ragged_layout_of_packed_rows():
    """cuDNN's segment lengths and offsets describe exactly the packed rows' segments (so its
    kernel attends within each example) and the trailing padding as one more segment (so every
    output row is written), present segments first and -1 after them."""
    cls, cfg, _ = ARCHS["bert"]
    split = _split(cfg, LENGTHS)
    rows = packing.first_fit_decreasing(split.lengths, 24)
    batch = packing.materialize_packed(split, rows + [[]], 24, 5, 0)
    seg = np.asarray(batch["segment_ids"])
    lengths, offsets = map(np.asarray, attention.segment_layout(jnp.asarray(seg), 5))
    assert lengths.shape == (seg.shape[0], 6) and offsets.shape == (seg.shape[0], 7)
    assert (offsets[:, -1] == -1).all()
    for r in range(seg.shape[0]):
        count = int((lengths[r] > 0).sum())
        assert (lengths[r, count:] == -1).all() and (offsets[r, count:] == -1).all()
        rebuilt = np.full(seg.shape[1], -1)
        for e in range(count):
            assert offsets[r, e] == (0 if e == 0 else offsets[r, e - 1] + lengths[r, e - 1])
            rebuilt[offsets[r, e]:offsets[r, e] + lengths[r, e]] = seg[r, offsets[r, e]]
        np.testing.assert_array_equal(rebuilt, seg[r])  # every token in exactly its segment
        assert len(set(seg[r][offsets[r, :count]])) == count  # one entry per segment
    assert lengths[-1, 0] == 24 and (lengths[-1, 1:] == -1).all()  # the empty row: padding
    packed = PackedRows(jnp.asarray(seg), jnp.asarray(batch["positions"]),
                        jnp.asarray(batch["starts"]))
    mask = attention.build_mask(None, jnp.asarray(batch["input_ids"]), packed)
    assert mask.packed and mask.slots == 5


def test_train_step_with_attention_dropout_off(tmp_path):
    """model.attention_dropout=0.0 with the checkpoint's 0.1: a train step through the xla
    path equals the einsum path with the same rate (hidden dropout on in both), and differs
    from the einsum path at 0.1 (the override really reaches the layers)."""
    cls, cfg, token_types = ARCHS["bert"]
    _save(cls, cfg, tmp_path, randomise=True)
    model = fs.load_pretrained_bundle(tmp_path).model
    split, padded, packed = _batches(cfg, token_types)

    def train_logits():
        return np.asarray(apply_model(model, packed, deterministic=False,
                                      dropout_rng=jax.random.key(4)))

    model.encoder.set_attention("einsum")
    with_dropout = train_logits()
    model.encoder.set_attention("einsum", 0.0)
    einsum = train_logits()
    model.encoder.set_attention("xla", 0.0)
    xla = train_logits()
    np.testing.assert_allclose(xla, einsum, atol=1e-5 * np.abs(einsum).max())
    assert np.abs(with_dropout - einsum).max() > 1e-3 * np.abs(einsum).max()


def test_a_loaded_run_takes_its_attention_or_auto_where_it_cannot(tmp_path, caplog):
    """Evaluation and prediction (`load_run`) use the run's model.attention, and `auto` on a
    machine that cannot take it (a run trained with cuDNN, evaluated on a CPU), saying so."""
    from flax_sentiment.workdir import _set_attention

    _, _, model = _load("bert", tmp_path)
    config = base_config()
    config.model.attention, config.model.attention_dropout = "xla", 0.0
    _set_attention(model, config)
    assert {layer.attention.implementation for layer in model.encoder._schedule()} == {"xla"}
    config.model.attention = "cudnn"
    with caplog.at_level("INFO"):
        _set_attention(model, config)
    assert {layer.attention.implementation for layer in model.encoder._schedule()} == {"auto"}
    assert "cuDNN runs on NVIDIA GPUs" in caplog.text
