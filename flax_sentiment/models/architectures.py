"""Per-architecture tables: how a Hugging Face config becomes an `EncoderConfig`, and how our
parameter paths are named in that architecture's checkpoints.

The name rules are the one mapping both directions use: import looks up, for each of our
parameters, the checkpoint tensor its rule names; export writes each parameter under that name.
Adding an architecture means adding one `Architecture` entry here (and, for a new kind of
layer, an architecture-neutral option on `EncoderConfig` that `layers.py` honours).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any, NoReturn

from flax_sentiment.errors import UserError
from flax_sentiment.models.config import EncoderConfig

Rule = tuple[str, str]  # (regex on our module path, checkpoint module name; "{p}" = prefix)


@dataclasses.dataclass(frozen=True)
class Architecture:
    model_type: str
    prefix: str  # the base model's attribute in `*ForSequenceClassification` ("bert", ...)
    hf_class: str  # transformers class for export and parity
    encoder_config: Callable[[dict[str, Any]], EncoderConfig]
    rules: tuple[Rule, ...]
    # Checkpoint tensors that belong to other heads or are buffers: skipped, never an error.
    ignored: tuple[str, ...] = ()

    def hf_module_name(self, path: str) -> str:
        """`layers.3.attention.query` -> `bert.encoder.layer.3.attention.self.query`."""
        for pattern, template in self.rules:
            m = re.fullmatch(pattern, path)
            if m:
                return m.expand(template.replace("{p}", self.prefix))
        raise KeyError(f"{self.model_type}: no checkpoint name for parameter path {path!r}")

    def is_ignored(self, name: str) -> bool:
        return any(re.fullmatch(p, name) for p in self.ignored)


def _embedding_rules(base: str = "{p}.embeddings") -> tuple[Rule, ...]:
    return (
        (r"encoder\.embeddings\.word", base + ".word_embeddings"),
        (r"encoder\.embeddings\.position", base + ".position_embeddings"),
        (r"encoder\.embeddings\.token_type", base + ".token_type_embeddings"),
        (r"encoder\.embeddings\.norm", base + ".LayerNorm"),
    )


def _layer_rules(layer: str, names: dict[str, str],
                 ours: str = r"encoder\.layers\.(\d+)") -> tuple[Rule, ...]:
    """Rules for a stack of layers: `ours` matches our layer path, `layer` is its template."""
    return tuple((ours + r"\." + re.escape(k), layer + "." + v) for k, v in names.items())


_BERT_LAYERS = _embedding_rules() + _layer_rules(r"{p}.encoder.layer.\1", {
    "attention.query": "attention.self.query", "attention.key": "attention.self.key",
    "attention.value": "attention.self.value", "attention.out": "attention.output.dense",
    "attention.norm": "attention.output.LayerNorm", "ffn.inner": "intermediate.dense",
    "ffn.outer": "output.dense", "ffn.norm": "output.LayerNorm",
})
_CLS_HEAD = ((r"head\.dense", "classifier.dense"), (r"head\.out", "classifier.out_proj"))
_POOLER_HEAD = ((r"head\.dense", "{p}.pooler.dense"), (r"head\.out", "classifier"))
_BUFFERS = (r".*position_ids", r".*token_type_ids")


def _dropout(value: Any, default: float) -> float:
    return float(default if value is None else value)


def _require(hf: dict[str, Any], key: str) -> Any:
    if key not in hf:
        raise UserError(f"config.json of model_type {hf.get('model_type')!r} has no {key!r}")
    return hf[key]


def _bert_config(hf: dict[str, Any]) -> EncoderConfig:
    pos = hf.get("position_embedding_type", "absolute")
    if pos not in (None, "absolute"):
        raise UserError(f"position_embedding_type {pos!r} is not supported (only 'absolute')")
    hidden = _require(hf, "hidden_size")
    return EncoderConfig(
        model_type=hf["model_type"],
        vocab_size=_require(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=_require(hf, "num_hidden_layers"),
        num_heads=_require(hf, "num_attention_heads"),
        intermediate_size=_require(hf, "intermediate_size"),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        embedding_size=hf.get("embedding_size") or hidden,
        type_vocab_size=hf.get("type_vocab_size", 2),
        hidden_act=hf.get("hidden_act", "gelu"),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12),
        pad_token_id=hf.get("pad_token_id") or 0,
        hidden_dropout=hf.get("hidden_dropout_prob", 0.1),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.1),
        classifier_dropout=_dropout(hf.get("classifier_dropout"),
                                    hf.get("hidden_dropout_prob", 0.1)),
        initializer_range=hf.get("initializer_range", 0.02),
    )


def _refuse(option: str, value: Any, why: str) -> NoReturn:
    raise UserError(f"config.json: {option}={value!r} is not supported ({why})")


def _roberta_config(hf: dict[str, Any]) -> EncoderConfig:
    return _bert_config(hf).replace(padding_aware_positions=True, head_dropout_first=True,
                                    pad_token_id=hf.get("pad_token_id", 1))


def _electra_config(hf: dict[str, Any]) -> EncoderConfig:
    cfg = _bert_config(hf)
    return cfg.replace(head_dropout_first=True, head_activation="gelu",
                       project_embeddings=cfg.embedding_size != cfg.hidden_size)


def _albert_config(hf: dict[str, Any]) -> EncoderConfig:
    cfg = _bert_config({**hf, "hidden_act": hf.get("hidden_act", "gelu_new")})
    groups = hf.get("num_hidden_groups", 1)
    if cfg.num_layers % groups:
        raise UserError(f"num_hidden_layers {cfg.num_layers} is not divisible by "
                        f"num_hidden_groups {groups}")
    return cfg.replace(
        embedding_size=hf.get("embedding_size", 128),
        project_embeddings=True,
        num_hidden_groups=groups,
        inner_group_num=hf.get("inner_group_num", 1),
        hidden_dropout=hf.get("hidden_dropout_prob", 0.0),
        attention_dropout=hf.get("attention_probs_dropout_prob", 0.0),
        classifier_dropout=_dropout(hf.get("classifier_dropout_prob"), 0.1),
        ffn_output_dropout=False,
    )


def _distilbert_config(hf: dict[str, Any]) -> EncoderConfig:
    if hf.get("sinusoidal_pos_embds"):
        raise UserError("DistilBERT with sinusoidal_pos_embds=True is not supported")
    dim = _require(hf, "dim")
    return EncoderConfig(
        model_type="distilbert",
        vocab_size=_require(hf, "vocab_size"),
        hidden_size=dim,
        num_layers=_require(hf, "n_layers"),
        num_heads=_require(hf, "n_heads"),
        intermediate_size=_require(hf, "hidden_dim"),
        max_position_embeddings=hf.get("max_position_embeddings", 512),
        embedding_size=dim,
        type_vocab_size=0,
        hidden_act=hf.get("activation", "gelu"),
        layer_norm_eps=1e-12,
        pad_token_id=hf.get("pad_token_id") or 0,
        hidden_dropout=hf.get("dropout", 0.1),
        attention_dropout=hf.get("attention_dropout", 0.1),
        classifier_dropout=hf.get("seq_classif_dropout", 0.2),
        attention_output_dropout=False,
        head_activation="relu",
        initializer_range=hf.get("initializer_range", 0.02),
    )


def _deberta_v2_config(hf: dict[str, Any]) -> EncoderConfig:
    """DeBERTa-v2/v3: disentangled relative-position attention, ContextPooler head."""
    cfg = _bert_config({"type_vocab_size": 0, "layer_norm_eps": 1e-7, **hf,
                        "position_embedding_type": None})
    h = cfg.hidden_size
    if (hf.get("conv_kernel_size") or 0) > 0:
        _refuse("conv_kernel_size", hf["conv_kernel_size"], "DeBERTa-v2's convolution layer is "
                "not implemented; DeBERTa-v3 has none")
    for key in ("embedding_size", "pooler_hidden_size"):
        if hf.get(key) not in (None, h):
            _refuse(key, hf[key], f"only hidden_size {h}")
    if hf.get("attention_head_size") not in (None, cfg.head_dim):
        _refuse("attention_head_size", hf["attention_head_size"],
                f"only hidden_size / num_attention_heads = {cfg.head_dim}")
    pos_att = hf.get("pos_att_type") or []
    if isinstance(pos_att, str):
        pos_att = [x.strip() for x in pos_att.lower().split("|")]
    if not set(pos_att) <= {"c2p", "p2c"}:
        _refuse("pos_att_type", hf["pos_att_type"], "only 'c2p' and 'p2c'")
    norm_rel = [x.strip() for x in str(hf.get("norm_rel_ebd") or "none").lower().split("|")]
    if not set(norm_rel) <= {"none", "layer_norm"}:
        _refuse("norm_rel_ebd", hf["norm_rel_ebd"], "only 'none' or 'layer_norm'")
    max_relative = hf.get("max_relative_positions") or -1
    if max_relative < 1:
        max_relative = cfg.max_position_embeddings
    hidden_dropout = hf.get("hidden_dropout_prob", 0.1)
    return cfg.replace(
        absolute_positions=hf.get("position_biased_input", True),
        pad_token_id=hf.get("pad_token_id") or 0,
        relative_attention=hf.get("relative_attention", False),
        c2p="c2p" in pos_att,
        p2c="p2c" in pos_att,
        position_buckets=max(hf.get("position_buckets") or 0, 0),
        max_relative_positions=max_relative,
        share_att_key=hf.get("share_att_key", False),
        norm_rel_embeddings="layer_norm" in norm_rel,
        head_activation=hf.get("pooler_hidden_act", "gelu"),
        head_dropout_first=True,
        head_input_dropout=float(hf.get("pooler_dropout") or 0.0),
        classifier_dropout=_dropout(hf.get("cls_dropout"), hidden_dropout),
    )


def _mpnet_config(hf: dict[str, Any]) -> EncoderConfig:
    """MPNet: BERT's post-norm layers, RoBERTa's positions (counted from padding index 1) and
    head, no token types, and one relative-position bias shared by every layer."""
    if hf.get("pad_token_id", 1) != 1:
        _refuse("pad_token_id", hf["pad_token_id"], "MPNet numbers positions from padding "
                "index 1, whatever the config says; only 1")
    buckets = hf.get("relative_attention_num_buckets", 32)
    if buckets != 32:  # the table's size; the buckets looked up in it are always 32
        _refuse("relative_attention_num_buckets", buckets, "transformers' MPNet computes 32 "
                "buckets whatever the config says; only 32")
    return _bert_config({"layer_norm_eps": 1e-12, **hf}).replace(
        type_vocab_size=0, pad_token_id=1, padding_aware_positions=True,
        head_dropout_first=True, position_bias_buckets=buckets)


_ROPE_KEYS = {"rope_type", "rope_theta"}


def _rope_theta(hf: dict[str, Any], kind: str, old_key: str, default: float) -> float:
    """The theta of ModernBERT's `kind` layers ("full_attention" / "sliding_attention"), from
    `rope_parameters` (transformers 5) or the older `global_rope_theta` / `local_rope_theta`."""
    params = (hf.get("rope_parameters") or {}).get(kind) or {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        _refuse(f"rope_parameters[{kind!r}].rope_type", rope_type, "only 'default' rotary")
    extra = sorted(set(params) - _ROPE_KEYS - {"type"})
    if extra:
        _refuse(f"rope_parameters[{kind!r}].{extra[0]}", params[extra[0]],
                "only plain rotary embeddings (rope_type 'default', rope_theta)")
    theta = params.get("rope_theta", hf.get(old_key))
    return float(default if theta is None else theta)


def _modernbert_config(hf: dict[str, Any]) -> EncoderConfig:
    """ModernBERT: pre-norm, bias-free LayerNorms, rotary positions, GeGLU, sliding-window
    attention on all but every n-th layer, a dense+act+norm head over CLS or mean pooling."""
    pooling = hf.get("classifier_pooling", "cls")
    if pooling not in ("cls", "mean"):
        _refuse("classifier_pooling", pooling, "use 'cls' or 'mean'")
    if hf.get("rope_scaling"):
        _refuse("rope_scaling", hf["rope_scaling"], "only plain rotary embeddings")
    hidden, heads = _require(hf, "hidden_size"), _require(hf, "num_attention_heads")
    if hf.get("head_dim") not in (None, hidden // heads):
        _refuse("head_dim", hf["head_dim"], "only hidden_size / num_attention_heads")
    layers = _require(hf, "num_hidden_layers")
    every = int(hf.get("global_attn_every_n_layers") or 3)
    types = hf.get("layer_types")
    if types is not None:
        full = [i for i, t in enumerate(types) if t == "full_attention"]
        every = full[1] if len(full) > 1 else max(layers, 1)
        expected = ["sliding_attention" if i % every else "full_attention" for i in range(layers)]
        if list(types) != expected:
            _refuse("layer_types", types, "only a global layer every n layers, from the first")
    dropout = hf.get("attention_dropout", 0.0)
    return EncoderConfig(
        model_type="modernbert",
        vocab_size=_require(hf, "vocab_size"),
        hidden_size=hidden,
        num_layers=layers,
        num_heads=heads,
        intermediate_size=_require(hf, "intermediate_size"),
        max_position_embeddings=hf.get("max_position_embeddings", 8192),
        embedding_size=hidden,
        type_vocab_size=0,
        hidden_act=hf.get("hidden_activation", "gelu"),
        layer_norm_eps=hf.get("norm_eps", 1e-5),
        pad_token_id=hf.get("pad_token_id") or 0,
        # ModernBERT drops after the attention output projection at attention_dropout.
        hidden_dropout=dropout,
        attention_dropout=dropout,
        embedding_dropout=hf.get("embedding_dropout", 0.0),
        ffn_inner_dropout=hf.get("mlp_dropout", 0.0),
        ffn_output_dropout=False,
        classifier_dropout=hf.get("classifier_dropout", 0.0),
        head_activation=hf.get("classifier_activation", "gelu"),
        initializer_range=hf.get("initializer_range", 0.02),
        absolute_positions=False,
        norm_bias=hf.get("norm_bias", False),
        pre_norm=True,
        fused_qkv=True,
        attention_bias=hf.get("attention_bias", False),
        ffn_bias=hf.get("mlp_bias", False),
        gated_ffn=True,
        rope_theta=_rope_theta(hf, "full_attention", "global_rope_theta", 160_000.0),
        local_rope_theta=_rope_theta(hf, "sliding_attention", "local_rope_theta", 10_000.0),
        local_attention=hf.get("local_attention", 128),
        global_attn_every_n_layers=every,
        head_pooling=pooling,
        head_norm=True,
        head_dense_bias=hf.get("classifier_bias", False),
    )


_DEBERTA_LAYERS = _embedding_rules() + _layer_rules(r"{p}.encoder.layer.\1", {
    "attention.query": "attention.self.query_proj", "attention.key": "attention.self.key_proj",
    "attention.value": "attention.self.value_proj",
    "attention.pos_key": "attention.self.pos_key_proj",
    "attention.pos_query": "attention.self.pos_query_proj",
    "attention.out": "attention.output.dense", "attention.norm": "attention.output.LayerNorm",
    "ffn.inner": "intermediate.dense", "ffn.outer": "output.dense",
    "ffn.norm": "output.LayerNorm",
}) + (
    (r"encoder\.relative\.table", "{p}.encoder.rel_embeddings"),
    (r"encoder\.relative\.norm", "{p}.encoder.LayerNorm"),
)
_MODERNBERT_LAYERS = (
    (r"encoder\.embeddings\.word", "{p}.embeddings.tok_embeddings"),
    (r"encoder\.embeddings\.norm", "{p}.embeddings.norm"),
    (r"encoder\.final_norm", "{p}.final_norm"),
) + _layer_rules(r"{p}.layers.\1", {
    "attention.qkv": "attn.Wqkv", "attention.out": "attn.Wo", "attention.norm": "attn_norm",
    "ffn.inner": "mlp.Wi", "ffn.outer": "mlp.Wo", "ffn.norm": "mlp_norm",
})


_MPNET_LAYERS = _embedding_rules() + _layer_rules(r"{p}.encoder.layer.\1", {
    "attention.query": "attention.attn.q", "attention.key": "attention.attn.k",
    "attention.value": "attention.attn.v", "attention.out": "attention.attn.o",
    "attention.norm": "attention.LayerNorm", "ffn.inner": "intermediate.dense",
    "ffn.outer": "output.dense", "ffn.norm": "output.LayerNorm",
}) + ((r"encoder\.position_bias\.table", "{p}.encoder.relative_attention_bias"),)


def _roberta_like(model_type: str, hf_class: str) -> Architecture:
    """RoBERTa's architecture (also under the names XLM-RoBERTa and CamemBERT)."""
    return Architecture(
        model_type, "roberta", hf_class, _roberta_config, _BERT_LAYERS + _CLS_HEAD,
        ignored=_BUFFERS + (r"lm_head\..*", r"(roberta\.)?pooler\..*"),
    )


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in [
        Architecture(
            "bert", "bert", "BertForSequenceClassification", _bert_config,
            _BERT_LAYERS + _POOLER_HEAD,
            ignored=_BUFFERS + (r"cls\..*",),
        ),
        _roberta_like("roberta", "RobertaForSequenceClassification"),
        Architecture(
            "electra", "electra", "ElectraForSequenceClassification", _electra_config,
            _BERT_LAYERS + _CLS_HEAD
            + ((r"encoder\.embeddings\.projection", "{p}.embeddings_project"),),
            ignored=_BUFFERS + (r"discriminator_predictions\..*", r"generator_.*"),
        ),
        Architecture(
            "albert", "albert", "AlbertForSequenceClassification", _albert_config,
            _embedding_rules() + (
                (r"encoder\.embeddings\.projection", "{p}.encoder.embedding_hidden_mapping_in"),
            ) + _layer_rules(r"{p}.encoder.albert_layer_groups.\1.albert_layers.\2", {
                "attention.query": "attention.query", "attention.key": "attention.key",
                "attention.value": "attention.value", "attention.out": "attention.dense",
                "attention.norm": "attention.LayerNorm", "ffn.inner": "ffn",
                "ffn.outer": "ffn_output", "ffn.norm": "full_layer_layer_norm",
            }, ours=r"encoder\.groups\.(\d+)\.(\d+)") + (
                (r"head\.dense", "{p}.pooler"), (r"head\.out", "classifier"),
            ),
            ignored=_BUFFERS + (r"predictions\..*", r"sop_classifier\..*"),
        ),
        Architecture(
            "distilbert", "distilbert", "DistilBertForSequenceClassification",
            _distilbert_config,
            _embedding_rules() + _layer_rules(r"{p}.transformer.layer.\1", {
                "attention.query": "attention.q_lin", "attention.key": "attention.k_lin",
                "attention.value": "attention.v_lin", "attention.out": "attention.out_lin",
                "attention.norm": "sa_layer_norm", "ffn.inner": "ffn.lin1",
                "ffn.outer": "ffn.lin2", "ffn.norm": "output_layer_norm",
            }) + ((r"head\.dense", "pre_classifier"), (r"head\.out", "classifier")),
            ignored=_BUFFERS + (r"vocab_(transform|layer_norm|projector)\..*",),
        ),
        _roberta_like("xlm-roberta", "XLMRobertaForSequenceClassification"),
        _roberta_like("camembert", "CamembertForSequenceClassification"),
        Architecture(
            "deberta-v2", "deberta", "DebertaV2ForSequenceClassification", _deberta_v2_config,
            _DEBERTA_LAYERS + ((r"head\.dense", "pooler.dense"), (r"head\.out", "classifier")),
            # v3 checkpoints carry a position table their config does not use (transformers
            # skips it too), and their pre-training heads.
            ignored=_BUFFERS + (r"(deberta\.)?embeddings\.position_embeddings\.weight",
                                r"lm_predictions\..*", r"mask_predictions\..*", r"cls\..*"),
        ),
        Architecture(
            "modernbert", "model", "ModernBertForSequenceClassification", _modernbert_config,
            # An MLM checkpoint's head.dense / head.norm are the classifier's too (same class).
            _MODERNBERT_LAYERS + ((r"head\.dense", "head.dense"), (r"head\.norm", "head.norm"),
                                  (r"head\.out", "classifier")),
            ignored=_BUFFERS + (r"decoder\..*",),
        ),
        Architecture(
            "mpnet", "mpnet", "MPNetForSequenceClassification", _mpnet_config,
            _MPNET_LAYERS + _CLS_HEAD,
            # sentence-transformers' checkpoints keep the base model's pooler; MLM ones lm_head.
            ignored=_BUFFERS + (r"lm_head\..*", r"(mpnet\.)?pooler\..*"),
        ),
    ]
}


def get_architecture(model_type: str | None, *, source: str = "config.json") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]
