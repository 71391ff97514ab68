"""XLM-RoBERTa / CamemBERT, DeBERTa-v2/v3 and ModernBERT against transformers' PyTorch (float32):
logits, the variants each adds, the options we refuse, and their own tokenizers end to end."""

import json
import random
import shutil

import numpy as np
import pytest
import torch
import transformers as T
from flax import nnx

import flax_sentiment as fs
from flax_sentiment.evaluation.predict import Classifier
from flax_sentiment.export.huggingface import export_hf
from flax_sentiment.models.classifier import SequenceClassifier
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.layers import relative_position_index
from tests.conftest import MINILM, REPO
from tests.test_models import (
    SENTENCES,
    SMALL,
    _deberta,
    _inputs,
    _modernbert,
    _mpnet,
    _num_params,
    _save,
    _torch_logits,
    _xlm_roberta,
)

CASES = {
    "xlm-roberta": (T.XLMRobertaForSequenceClassification, _xlm_roberta(num_labels=3), False),
    "camembert": (T.CamembertForSequenceClassification,
                  T.CamembertConfig(**SMALL, hidden_size=32, num_hidden_layers=2,
                                    intermediate_size=37, pad_token_id=1, type_vocab_size=1),
                  False),
    "deberta-v3": (T.DebertaV2ForSequenceClassification, _deberta(num_labels=3), False),
    # DeBERTa-v2 style: a position table and token types besides relative attention, distances
    # clipped at +-6 (no buckets), separate position projections, tanh pooler, raw embeddings.
    "deberta-v2-c2p": (T.DebertaV2ForSequenceClassification,
                       _deberta(pos_att_type=["c2p"], share_att_key=False, position_buckets=-1,
                                max_relative_positions=6, position_biased_input=True,
                                type_vocab_size=2, norm_rel_ebd="none", pooler_hidden_act="tanh",
                                num_labels=2), True),
    "deberta-p2c": (T.DebertaV2ForSequenceClassification,
                    _deberta(pos_att_type=["p2c"], share_att_key=False, num_labels=2), False),
    # No relative attention, yet pos_att_type still sets the score scale (sqrt(3 * head_dim)).
    "deberta-absolute": (T.DebertaV2ForSequenceClassification,
                         _deberta(relative_attention=False, position_biased_input=True,
                                  num_labels=2), False),
    "modernbert": (T.ModernBertForSequenceClassification, _modernbert(num_labels=3), False),
    "modernbert-mean-biases": (T.ModernBertForSequenceClassification,
                               _modernbert(classifier_pooling="mean", attention_bias=True,
                                           mlp_bias=True, norm_bias=True, classifier_bias=True,
                                           local_attention=4, global_attn_every_n_layers=3,
                                           classifier_activation="silu", num_labels=2), False),
    "mpnet": (T.MPNetForSequenceClassification, _mpnet(num_labels=3), False),
    "mpnet-2-labels": (T.MPNetForSequenceClassification,
                       _mpnet(hidden_act="relu", num_labels=2, max_position_embeddings=100),
                       False),
}
LENGTHS = (13, 7, 1 + 16)  # odd lengths, all longer than ModernBERT's +-3 (or +-2) windows


def _tolerance(ref: np.ndarray) -> float:
    return 1e-5 * np.abs(ref).max() + 1e-7


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """case -> (our bundle, [transformers models], {length: (inputs, reference logits)})."""
    cache = {}

    def get(case):
        if case not in cache:
            cls, cfg, types = CASES[case]
            folder = tmp_path_factory.mktemp(case)
            ref = _save(cls, cfg, folder, randomise=True)
            models = [ref]
            if cfg.model_type == "modernbert":  # sdpa by default on CPU; eager too
                models.append(cls.from_pretrained(folder, attn_implementation="eager").eval())
            data = {}
            for length in LENGTHS:
                ids, mask, tt = _inputs(cfg, length=length, seed=length, token_types=types)
                data[length] = ((ids, mask, tt), [_torch_logits(m, ids, mask, tt) for m in models])
            cache[case] = (fs.load_pretrained_bundle(folder), models, data)
        return cache[case]

    return get


def _max_error(model, data) -> tuple[float, float]:
    """(largest |ours - theirs|, its tolerance) over the lengths and reference models."""
    worst, tol = 0.0, np.inf
    for (ids, mask, types), refs in data.values():
        ours = np.asarray(model(ids, mask, types))
        for ref in refs:
            assert ours.shape == ref.shape and ours.dtype == np.float32
            worst, tol = max(worst, float(np.abs(ours - ref).max())), min(tol, _tolerance(ref))
    return worst, tol


@pytest.mark.parametrize("case", sorted(CASES))
def test_logits_match_transformers(case, references):
    bundle, models, data = references(case)
    cfg = CASES[case][1]
    assert not bundle.fresh_head and bundle.config.num_labels == cfg.num_labels
    assert bundle.arch.hf_class == type(models[0]).__name__
    worst, tol = _max_error(bundle.model, data)
    assert worst <= tol, (worst, tol)
    assert _num_params(bundle.model) == sum(p.numel() for p in models[0].parameters())


def _rebuilt(bundle, **changes):
    """Our model with the same weights under a config differing in `changes`."""
    model = SequenceClassifier(bundle.config.replace(**changes), rngs=nnx.Rngs(0))
    nnx.update(model, nnx.state(bundle.model, nnx.Param))
    return model


# Each a plausible mistake in the variant; each must move the logits past the tolerance.
BREAKAGES = [
    ("modernbert", dict(layer_norm_eps=1e-12)),
    ("modernbert", dict(local_attention=8)),  # window +-4 instead of +-3
    ("modernbert", dict(local_attention=0)),  # every layer global
    ("modernbert", dict(global_attn_every_n_layers=3)),
    ("modernbert", dict(local_rope_theta=160_000.0)),  # the global theta everywhere
    ("modernbert", dict(hidden_act="gelu_pytorch_tanh")),
    ("modernbert-mean-biases", dict(head_pooling="cls")),
    ("deberta-v3", dict(layer_norm_eps=1e-12)),
    ("deberta-v3", dict(max_relative_positions=32)),  # other log buckets
    ("deberta-v3", dict(position_buckets=0, max_relative_positions=8)),  # clipped, no buckets
    ("deberta-v3", dict(hidden_act="gelu_new")),
    ("deberta-v2-c2p", dict(head_activation="gelu")),
    ("deberta-absolute", dict(c2p=False, p2c=False)),  # the score scale
    ("mpnet", dict(layer_norm_eps=1e-12)),
    ("mpnet", dict(position_bias_max_distance=32)),  # other log buckets
    ("mpnet", dict(padding_aware_positions=False)),  # BERT's positions from 0
    ("mpnet", dict(head_dropout_first=False, head_activation="gelu")),
]


@pytest.mark.parametrize("case,changes", BREAKAGES,
                         ids=[f"{c}-{next(iter(k))}={next(iter(k.values()))}"
                              for c, k in BREAKAGES])
def test_parity_notices_a_wrong_variant(case, changes, references):
    """The parity cases are at a scale where each of these mistakes shows."""
    bundle, _, data = references(case)
    worst, tol = _max_error(_rebuilt(bundle, **changes), data)
    assert worst > 10 * tol, (worst, tol)


@pytest.mark.parametrize("buckets,max_relative,length", [
    (256, 512, 512),  # deberta-v3-base/large
    (8, 64, 70),
    (4, 16, 40),
    (0, 6, 17),
])
def test_relative_positions_match_transformers(buckets, max_relative, length):
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    cfg = EncoderConfig(model_type="deberta-v2", vocab_size=5, hidden_size=8, num_layers=1,
                        num_heads=2, intermediate_size=8, max_position_embeddings=512,
                        embedding_size=8, relative_attention=True, position_buckets=buckets,
                        max_relative_positions=max_relative)
    x = torch.zeros(1, length, 8)
    rel = build_relative_position(x, x, bucket_size=buckets or -1, max_position=max_relative)[0]
    span = buckets or max_relative
    c2p = torch.clamp(rel + span, 0, 2 * span - 1).numpy()
    p2c = torch.clamp(-rel + span, 0, 2 * span - 1).numpy()  # transformers' [key, query] rows
    ours = relative_position_index(length, cfg)
    np.testing.assert_array_equal(ours, c2p)
    np.testing.assert_array_equal(ours, p2c.T)


@pytest.mark.parametrize("buckets,max_distance", [(32, 128), (16, 128), (64, 256), (8, 20)])
def test_mpnet_position_buckets_match_transformers(buckets, max_distance):
    """Every (query, key) pair up to 512 tokens (all-mpnet-base-v2's limit) falls in the bucket
    transformers computes, the float32 logarithm's edges included."""
    from transformers.models.mpnet.modeling_mpnet import MPNetEncoder

    from flax_sentiment.models.layers import position_bias_buckets

    pos = torch.arange(512)
    theirs = MPNetEncoder.relative_position_bucket(pos[None, :] - pos[:, None],
                                                   num_buckets=buckets,
                                                   max_distance=max_distance).numpy()
    np.testing.assert_array_equal(position_bias_buckets(512, buckets, max_distance), theirs)
    assert len(np.unique(theirs)) > buckets // 2 + 2  # the logarithmic buckets are reached


@pytest.mark.parametrize("case", ["deberta-v3", "modernbert-mean-biases", "mpnet"])
def test_bfloat16_compute(case, references):
    bundle, models, data = references(case)
    model = fs.load_pretrained(bundle.folder, dtype="bfloat16")
    (ids, mask, types), refs = data[13]
    out = np.asarray(model(ids, mask, types))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, refs[0], atol=5e-2 * max(1.0, np.abs(refs[0]).max()))


def test_modernbert_hub_style_config(tmp_path):
    """The hub's ModernBERT config.json predates `layer_types` / `rope_parameters`: the thetas
    and the global layer period come from global_rope_theta, local_rope_theta and
    global_attn_every_n_layers (odd values here, so reading the defaults would show)."""
    cls, cfg, _ = CASES["modernbert"]
    _save(cls, cfg, tmp_path / "src", randomise=True)
    hf = json.loads((tmp_path / "src" / "config.json").read_text())
    del hf["layer_types"], hf["rope_parameters"]
    hf.update(global_rope_theta=20.0, local_rope_theta=3.0, global_attn_every_n_layers=3)
    (tmp_path / "src" / "config.json").write_text(json.dumps(hf))
    bundle = fs.load_pretrained_bundle(tmp_path / "src")
    assert (bundle.config.rope_theta, bundle.config.local_rope_theta) == (20.0, 3.0)
    assert [bundle.config.is_local_layer(i) for i in range(3)] == [False, True, True]
    ref = cls.from_pretrained(tmp_path / "src").eval()
    for length in LENGTHS:
        ids, mask, _ = _inputs(cfg, length=length, seed=length)
        theirs = _torch_logits(ref, ids, mask)
        ours = np.asarray(bundle.model(ids, mask))
        assert np.abs(ours - theirs).max() <= _tolerance(theirs)


# --- bad input: one clear error each ------------------------------------------------------

REFUSALS = [
    ("deberta-v3", {"conv_kernel_size": 3}, "conv_kernel_size=3"),
    ("deberta-v3", {"pos_att_type": ["c2p", "p2p"]}, "pos_att_type="),
    ("deberta-v3", {"pos_att_type": "p2c|c2p|p2p"}, "pos_att_type="),
    ("deberta-v3", {"norm_rel_ebd": "layer_norm|batch_norm"}, "norm_rel_ebd="),
    ("deberta-v3", {"embedding_size": 16}, "embedding_size=16"),
    ("deberta-v3", {"pooler_hidden_size": 16}, "pooler_hidden_size=16"),
    ("deberta-v3", {"attention_head_size": 4}, "attention_head_size=4"),
    ("modernbert", {"classifier_pooling": "max"}, "classifier_pooling='max'"),
    ("modernbert", {"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling="),
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 2.0},
                                        "sliding_attention": {"rope_type": "default"}}},
     "rope_type='yarn'"),
    ("modernbert", {"rope_parameters": {"full_attention": {"rope_type": "default",
                                                           "rope_theta": 1e4,
                                                           "partial_rotary_factor": 0.5}}},
     "partial_rotary_factor=0.5"),
    ("modernbert", {"layer_types": ["sliding_attention", "full_attention", "full_attention"]},
     "layer_types="),
    ("modernbert", {"head_dim": 4}, "head_dim=4"),
    ("mpnet", {"pad_token_id": 0}, "pad_token_id=0"),
    ("mpnet", {"relative_attention_num_buckets": 16}, "relative_attention_num_buckets=16"),
]


@pytest.mark.parametrize("case,edit,message", REFUSALS,
                         ids=[f"{c}-{next(iter(e))}" for c, e, _ in REFUSALS])
def test_unsupported_options_are_refused(case, edit, message, tmp_path):
    cls, cfg, _ = CASES[case]
    _save(cls, cfg, tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | edit))
    with pytest.raises(fs.UserError) as info:
        fs.load_pretrained(tmp_path)
    assert message in str(info.value) and "not supported" in str(info.value)
    assert "\n" not in str(info.value)


def test_new_model_types_are_listed(tmp_path):
    T.GPT2Config(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp_path)
    with pytest.raises(fs.UserError) as info:
        fs.load_pretrained(tmp_path)
    assert all(t in str(info.value) for t in
               ["camembert", "deberta-v2", "modernbert", "mpnet", "xlm-roberta"])


def test_pretraining_checkpoints_load_without_their_heads(tmp_path):
    """DeBERTa-v3's hub checkpoints hold a position table its config does not use (and
    transformers skips); ModernBERT's MLM checkpoint holds head.dense/head.norm, which are the
    classifier's too (transformers loads them; only `classifier` is new)."""
    from safetensors.numpy import save_file

    from flax_sentiment.models.weights import read_state_dict

    deberta = tmp_path / "deberta"
    _save(T.DebertaV2ForSequenceClassification, _deberta(), deberta)
    sd = read_state_dict(deberta)
    sd["deberta.embeddings.position_embeddings.weight"] = np.zeros((64, 32), np.float32)
    save_file({k: v for k, v in sd.items() if not k.startswith(("pooler.", "classifier."))},
              str(deberta / "model.safetensors"))
    bundle = fs.load_pretrained_bundle(deberta, num_labels=3)
    assert bundle.fresh_head and bundle.model.head.out.kernel.shape == (32, 3)

    modern = tmp_path / "modernbert"
    torch.manual_seed(0)
    mlm = T.ModernBertForMaskedLM(_modernbert()).eval()
    mlm.save_pretrained(modern)
    bundle = fs.load_pretrained_bundle(modern, num_labels=2)
    assert bundle.fresh_head
    np.testing.assert_array_equal(np.asarray(bundle.model.head.dense.kernel[...]),
                                  mlm.head.dense.weight.detach().numpy().T)
    ref = T.ModernBertForSequenceClassification.from_pretrained(modern, num_labels=2).eval()
    ids, mask, _ = _inputs(ref.config)
    with torch.no_grad():
        hidden = ref.model(input_ids=torch.tensor(ids),
                           attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(bundle.model.encoder(ids, mask))
    np.testing.assert_allclose(ours * mask[..., None], hidden * mask[..., None], atol=1e-5)


@pytest.mark.parametrize("cls", [T.MPNetModel, T.MPNetForMaskedLM])
def test_mpnet_base_and_masked_lm_checkpoints(cls, tmp_path):
    """all-mpnet-base-v2's layout (a base model without the `mpnet.` prefix, with the pooler
    sentence-transformers keeps) and an MLM checkpoint (lm_head) load with a fresh head, and
    the encoder's output equals transformers' base model's."""
    torch.manual_seed(0)
    ref = cls(_mpnet()).eval()
    ref.save_pretrained(tmp_path)
    bundle = fs.load_pretrained_bundle(tmp_path, num_labels=2)
    assert bundle.fresh_head
    ids, mask, _ = _inputs(ref.config, length=17)
    base = ref if cls is T.MPNetModel else ref.mpnet
    with torch.no_grad():
        hidden = base(input_ids=torch.tensor(ids),
                      attention_mask=torch.tensor(mask)).last_hidden_state.numpy()
    ours = np.asarray(bundle.model.encoder(ids, mask))
    np.testing.assert_allclose(ours * mask[..., None], hidden * mask[..., None], atol=1e-5)


MPNET = REPO / ".cache" / "models" / "all-mpnet-base-v2"


@pytest.mark.slow  # needs `make mpnet` (420 MB, not in CI); the tiny MPNet cases above run always
@pytest.mark.skipif(not (MPNET / "model.safetensors").is_file(), reason="run `make mpnet` first")
def test_real_all_mpnet_base_v2_hidden_states_match_automodel():
    from tests.test_models import SENTENCES as REAL

    bundle = fs.load_pretrained_bundle(MPNET, num_labels=2)
    assert bundle.fresh_head and bundle.config.num_layers == 12
    enc = bundle.tokenizer(REAL, padding=True, return_tensors="np")
    assert "token_type_ids" not in enc
    ref = T.AutoModel.from_pretrained(str(MPNET)).eval()
    with torch.no_grad():
        theirs = ref(**{k: torch.tensor(v) for k, v in enc.items()}).last_hidden_state.numpy()
    ours = np.asarray(bundle.model.encoder(enc["input_ids"], enc["attention_mask"]))
    mask = enc["attention_mask"][..., None]
    assert np.abs((ours - theirs) * mask).max() <= 1e-4


# --- export: JAX -> PyTorch -> JAX ---------------------------------------------------------

BIG_VOCAB = dict(vocab_size=30522, max_position_embeddings=128)  # MiniLM's tokenizer drives them


@pytest.mark.parametrize("case", ["xlm-roberta", "deberta-v3", "deberta-v2-c2p",
                                  "modernbert-mean-biases", "mpnet"])
def test_export_round_trip(case, tmp_path):
    """Exported weights load into transformers (parity) and back into ours unchanged."""
    cls, cfg, _ = CASES[case]
    cfg = cls.config_class(**cfg.to_dict() | BIG_VOCAB)
    _save(cls, cfg, tmp_path / "src", randomise=True)
    bundle = fs.load_pretrained_bundle(tmp_path / "src")
    labels = [f"label{i}" for i in range(cfg.num_labels)]
    tokenizer = fs.load_tokenizer(MINILM)
    report = export_hf(bundle.model, bundle.arch, bundle.hf_config, tokenizer, labels,
                       tmp_path / "out")
    assert report["max_abs_diff"] <= 1e-4
    back = fs.load_pretrained_bundle(tmp_path / "out")
    assert not back.fresh_head and back.label_names == labels
    assert back.config == bundle.config
    enc = tokenizer(SENTENCES, padding=True, return_tensors="np")
    args = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    np.testing.assert_allclose(np.asarray(back.model(*args)), np.asarray(bundle.model(*args)),
                               atol=1e-6, rtol=0)


# --- each model's own tokenizer, end to end ------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """300 lines of real English words (MiniLM's vocabulary) to train tiny tokenizers on."""
    rng = random.Random(0)
    words = sorted(w for w in fs.load_tokenizer(MINILM).get_vocab() if w.isascii() and w.isalpha())
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
             + rng.choice([".", "!", "?", ","]) for _ in range(300)]
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n".join(lines))
    return path


def _sentencepiece(corpus, prefix, **kw):
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=300,
                                   model_type="unigram", minloglevel=2, **kw)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def _deberta_v3_tokenizer(corpus, folder):
    """DeBERTa-v3's layout: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 inside the SentencePiece model."""
    sp = _sentencepiece(corpus, folder.parent / "deberta", pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                        pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
                        unk_piece="[UNK]", user_defined_symbols=["[MASK]"])
    shutil.copy(folder.parent / "deberta.model", folder / "spm.model")  # the hub's file name
    (folder / "tokenizer_config.json").write_text('{"do_lower_case": false, "vocab_type": "spm"}')
    special = {"cls_token": ("[CLS]", 1), "sep_token": ("[SEP]", 2), "pad_token": ("[PAD]", 0),
               "unk_token": ("[UNK]", 3), "mask_token": ("[MASK]", 4)}
    return special, lambda text: [1, *sp.encode(text), 2]


def _xlm_roberta_tokenizer(corpus, folder):
    """XLM-R's layout: fairseq's <s>=0 <pad>=1 </s>=2 <unk>=3, then the pieces shifted by one
    (SentencePiece's own <unk>, 0, becomes 3), <mask> last."""
    sp = _sentencepiece(corpus, folder.parent / "xlmr")
    shutil.copy(folder.parent / "xlmr.model", folder / "sentencepiece.bpe.model")
    special = {"cls_token": ("<s>", 0), "sep_token": ("</s>", 2), "pad_token": ("<pad>", 1),
               "unk_token": ("<unk>", 3), "mask_token": ("<mask>", 301)}
    return special, lambda text: [0, *[i + 1 if i else 3 for i in sp.encode(text)], 2]


def _modernbert_tokenizer(corpus, folder):
    """ModernBERT's kind: a byte-level BPE, [CLS] x [SEP], no token type ids."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train([str(corpus)], trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                 show_progress=False))
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    plain = Tokenizer.from_str(bpe.to_str())
    plain.post_processor = None
    T.PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
    ).save_pretrained(str(folder))
    special = {"cls_token": ("[CLS]", 1), "sep_token": ("[SEP]", 2), "pad_token": ("[PAD]", 3),
               "unk_token": ("[UNK]", 0), "mask_token": ("[MASK]", 4)}
    return special, lambda text: [1, *plain.encode(text).ids, 2]


TOKENIZED = {
    "deberta-v2": (T.DebertaV2ForSequenceClassification, _deberta_v3_tokenizer,
                   lambda: _deberta(vocab_size=300, pad_token_id=0, max_position_embeddings=128)),
    "xlm-roberta": (T.XLMRobertaForSequenceClassification, _xlm_roberta_tokenizer,
                    lambda: _xlm_roberta(vocab_size=302, pad_token_id=1, bos_token_id=0,
                                         eos_token_id=2, max_position_embeddings=130)),
    "modernbert": (T.ModernBertForSequenceClassification, _modernbert_tokenizer,
                   lambda: _modernbert(vocab_size=300, pad_token_id=3, cls_token_id=1,
                                       sep_token_id=2, bos_token_id=1, eos_token_id=2,
                                       max_position_embeddings=128)),
}


@pytest.fixture(scope="module")
def sst2_rows(tmp_path_factory, shared_data):
    from tests.helpers import sst2_subset

    return sst2_subset(tmp_path_factory.mktemp("sst2"), 64, 48)


@pytest.mark.parametrize("model_type", sorted(TOKENIZED))
def test_own_tokenizer_trains_predicts_and_exports(model_type, corpus, sst2_rows, tmp_path):
    """A tiny model with a tokenizer of its kind (SentencePiece for DeBERTa-v3 and XLM-R, read
    through the `sentencepiece` package from the hub's raw model file): our loader finds the
    right special tokens, and training, prediction and the export work with it."""
    from flax_sentiment.export import huggingface as export_mod
    from flax_sentiment.training.loop import train_and_evaluate
    from flax_sentiment.workdir import load_run
    from tests.helpers import tiny_config

    cls, make_tokenizer, make_config = TOKENIZED[model_type]
    folder = tmp_path / "model"
    folder.mkdir()
    torch.manual_seed(0)
    cls(make_config()).save_pretrained(folder)
    special, encode = make_tokenizer(corpus, folder)

    tok = fs.load_tokenizer(folder)
    assert {k: (getattr(tok, k), getattr(tok, k + "_id")) for k in special} == special
    text = "A gorgeous, witty, seductive movie."
    assert tok(text)["input_ids"] == encode(text)
    assert tok.convert_ids_to_tokens(tok(text)["input_ids"])[1:-1] != ["[UNK]"] * 4
    assert ("token_type_ids" in tok(text)) == (model_type == "deberta-v2")

    config = tiny_config(folder, sst2_rows, **{"train.max_steps": 3, "eval.every_steps": 0,
                                               "checkpoint.every_steps": 0,
                                               "train.learning_rate": 1e-2})
    train_and_evaluate(config, tmp_path / "run")
    run = load_run(tmp_path / "run")
    texts = export_mod.PARITY_TEXTS
    ours = Classifier.from_workdir(tmp_path / "run").predict(texts)
    assert len(ours) == len(texts)

    out = tmp_path / "export"
    report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names, out)
    assert report["max_abs_diff"] <= 1e-4
    exported = T.AutoTokenizer.from_pretrained(out)
    assert {k: (getattr(exported, k), getattr(exported, k + "_id")) for k in special} == special
    assert exported(texts)["input_ids"] == tok(texts)["input_ids"]
    pipe = T.pipeline("text-classification", model=str(out), tokenizer=str(out))
    assert [p["label"] for p in pipe(texts)] == [p["label"] for p in ours]
