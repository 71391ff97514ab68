"""Per-architecture tables: how a Hugging Face config becomes an `EncoderConfig`, and how our
parameter paths are named in that architecture's checkpoints.

The name rules are the one mapping both directions use: import looks up, for each of our
parameters, the checkpoint tensor its rule names; export writes each parameter under that name.
Adding an architecture means adding one `Architecture` entry here.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

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


ARCHITECTURES: dict[str, Architecture] = {
    a.model_type: a
    for a in [
        Architecture(
            "bert", "bert", "BertForSequenceClassification", _bert_config,
            _BERT_LAYERS + _POOLER_HEAD,
            ignored=_BUFFERS + (r"cls\..*",),
        ),
        Architecture(
            "roberta", "roberta", "RobertaForSequenceClassification", _roberta_config,
            _BERT_LAYERS + _CLS_HEAD,
            ignored=_BUFFERS + (r"lm_head\..*", r"(roberta\.)?pooler\..*"),
        ),
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
    ]
}


def get_architecture(model_type: str | None, *, source: str = "config.json") -> Architecture:
    if model_type not in ARCHITECTURES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not supported "
            f"(supported: {', '.join(sorted(ARCHITECTURES))})"
        )
    return ARCHITECTURES[model_type]
