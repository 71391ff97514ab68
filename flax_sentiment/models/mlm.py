"""The masked-language-model head and model of every architecture, for continued pretraining.

`MaskedLM` is the same `Encoder` the classifier uses plus the architecture's MLM head: dense ->
activation -> LayerNorm -> a decoder whose matrix is the word embeddings (tied, as in every
checkpoint here) plus an output bias. The head runs only at the masked positions it is given
(`targets` [rows, P]), so a step pays the vocabulary projection for ~15% of its tokens.

Weight names come from the classifier's rules (`architectures.py`) for the encoder and from
`MLM_HEADS` for the head: import reads `*ForMaskedLM` checkpoints (or a base model, or a
classifier, whose MLM head is then drawn fresh the architecture's way) and export writes the
`*ForMaskedLM` state dict.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flax_sentiment import sources
from flax_sentiment.errors import UserError
from flax_sentiment.models.architectures import Architecture, Rule, get_architecture
from flax_sentiment.models.classifier import Encoder
from flax_sentiment.models.config import EncoderConfig
from flax_sentiment.models.layers import activation, norm_layer, normal_init
from flax_sentiment.models.packing import PackedRows

log = logging.getLogger(__name__)

MLM_PREFIX = "mlm."


@dataclasses.dataclass(frozen=True)
class MlmHeadSpec:
    hf_class: str  # transformers' *ForMaskedLM class
    dense: str  # checkpoint module names ("{p}" = the base model's prefix)
    norm: str
    bias: str  # the module whose `.bias` is the decoder's output bias
    activation: str | None = None  # None: the encoder's hidden_act
    tied: tuple[str, ...] = ()  # tied copies a checkpoint may also hold (decoder.weight, ...)


MLM_HEADS: dict[str, MlmHeadSpec] = {
    "bert": MlmHeadSpec("BertForMaskedLM", "cls.predictions.transform.dense",
                        "cls.predictions.transform.LayerNorm", "cls.predictions",
                        tied=(r"cls\.predictions\.decoder\.(weight|bias)",)),
    "roberta": MlmHeadSpec("RobertaForMaskedLM", "lm_head.dense", "lm_head.layer_norm",
                           "lm_head", activation="gelu",
                           tied=(r"lm_head\.decoder\.(weight|bias)",)),
    "xlm-roberta": MlmHeadSpec("XLMRobertaForMaskedLM", "lm_head.dense", "lm_head.layer_norm",
                               "lm_head", activation="gelu",
                               tied=(r"lm_head\.decoder\.(weight|bias)",)),
    "camembert": MlmHeadSpec("CamembertForMaskedLM", "lm_head.dense", "lm_head.layer_norm",
                             "lm_head", activation="gelu",
                             tied=(r"lm_head\.decoder\.(weight|bias)",)),
    "mpnet": MlmHeadSpec("MPNetForMaskedLM", "lm_head.dense", "lm_head.layer_norm", "lm_head",
                         activation="gelu", tied=(r"lm_head\.decoder\.(weight|bias)",)),
    "electra": MlmHeadSpec("ElectraForMaskedLM", "generator_predictions.dense",
                           "generator_predictions.LayerNorm", "generator_lm_head",
                           activation="gelu", tied=(r"generator_lm_head\.weight",)),
    "albert": MlmHeadSpec("AlbertForMaskedLM", "predictions.dense", "predictions.LayerNorm",
                          "predictions", tied=(r"predictions\.decoder\.(weight|bias)",)),
    "distilbert": MlmHeadSpec("DistilBertForMaskedLM", "vocab_transform", "vocab_layer_norm",
                              "vocab_projector", tied=(r"vocab_projector\.weight",)),
    "deberta-v2": MlmHeadSpec("DebertaV2ForMaskedLM", "cls.predictions.transform.dense",
                              "cls.predictions.transform.LayerNorm", "cls.predictions",
                              tied=(r"cls\.predictions\.decoder\.(weight|bias)",)),
    "modernbert": MlmHeadSpec("ModernBertForMaskedLM", "head.dense", "head.norm", "decoder",
                              tied=(r"decoder\.weight",)),
}


def mlm_architecture(arch: Architecture, hf: dict[str, Any] | None = None) -> Architecture:
    """`arch` for the masked-LM model: the encoder's rules plus the MLM head's, the
    `*ForMaskedLM` class, and a classifier's head tensors ignored (a fine-tuned classifier is a
    valid start: its encoder is read, its head is not the MLM head's)."""
    spec = MLM_HEADS.get(arch.model_type)
    if spec is None:
        raise UserError(f"model_type {arch.model_type!r} has no masked-LM head here "
                        f"(supported: {', '.join(sorted(MLM_HEADS))})")
    if arch.model_type == "deberta-v2" and hf is not None and hf.get("legacy") is False:
        raise UserError("config.json: legacy=False (DeBERTa-v2's newer lm_predictions head) is "
                        "not supported; only the legacy cls.predictions head")
    if hf is not None and hf.get("tie_word_embeddings") is False:
        raise UserError("config.json: tie_word_embeddings=False (a decoder of its own) is not "
                        "supported; the masked-LM decoder here is tied to the word embeddings")
    if arch.model_type == "modernbert" and hf is not None and hf.get("decoder_bias") is False:
        raise UserError("config.json: decoder_bias=False is not supported (ModernBERT's MLM "
                        "decoder with a bias only)")
    encoder = tuple(r for r in arch.rules if not r[0].startswith(r"head\."))
    head_names = {t for p, t in arch.rules if p.startswith(r"head\.")}
    ignored = tuple(rf"({re.escape(arch.prefix)}\.)?{re.escape(n.replace('{p}.', ''))}\..*"
                    for n in head_names if n not in (spec.dense, spec.norm, spec.bias))
    rules: tuple[Rule, ...] = encoder + ((r"mlm\.dense", spec.dense), (r"mlm\.norm", spec.norm),
                                         (r"mlm", spec.bias))
    return dataclasses.replace(arch, hf_class=spec.hf_class, rules=rules,
                               ignored=arch.ignored + ignored + spec.tied)


class MlmHead(nnx.Module):
    """dense (hidden -> embedding size) -> activation -> LayerNorm -> tied decoder + bias,
    initialised as the architectures' `_init_weights` do (normal(initializer_range), zero
    biases, unit norm scales)."""

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        spec = MLM_HEADS[cfg.model_type]
        name = spec.activation or (cfg.head_activation if cfg.model_type == "modernbert"
                                   else cfg.hidden_act)
        self.act = activation(name)
        self.dense = nnx.Linear(cfg.hidden_size, cfg.embedding_size, dtype=dtype,
                                param_dtype=jnp.float32,
                                use_bias=cfg.head_dense_bias or cfg.model_type != "modernbert",
                                kernel_init=normal_init(cfg.initializer_range), rngs=rngs)
        self.norm = norm_layer(cfg, cfg.embedding_size, rngs)
        self.bias = nnx.Param(jnp.zeros((cfg.vocab_size,), jnp.float32))
        self.dtype = dtype

    def __call__(self, hidden: jax.Array, embedding: jax.Array) -> jax.Array:
        x = self.act(self.dense(hidden))
        x = self.norm(x).astype(self.dtype)
        logits = jnp.einsum("...e,ve->...v", x, embedding.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        return logits + self.bias[...]


class MaskedLM(nnx.Module):
    """`model(input_ids, attention_mask, token_type_ids, targets=None)` -> vocabulary logits
    [rows, P, vocab] at the positions `targets` [rows, P] (all positions when None); with
    `packed=PackedRows(...)` attention stays within each example of a row. Like
    `SequenceClassifier`, it holds no RNG state: training passes a `dropout_rng`."""

    def __init__(self, cfg: EncoderConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = cfg
        self.encoder = Encoder(cfg, dtype=dtype, rngs=rngs)
        self.mlm = MlmHead(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None, *, targets: jax.Array | None = None,
                 deterministic: bool = True, dropout_rng: jax.Array | None = None,
                 packed: PackedRows | None = None) -> jax.Array:
        if not deterministic and dropout_rng is None:
            raise ValueError("deterministic=False needs a dropout_rng key")
        rngs = None if deterministic else nnx.Rngs(dropout=dropout_rng)
        hidden = self.encoder(input_ids, attention_mask, token_type_ids,
                              deterministic=deterministic, rngs=rngs, packed=packed)
        if targets is not None:
            hidden = jnp.take_along_axis(hidden, targets[..., None], axis=1)
        return self.mlm(hidden, self.encoder.embeddings.word.embedding[...])


@dataclasses.dataclass
class PretrainedMLM:
    """A loaded masked-LM start: the model, its rules and configs, and what it lacked."""

    model: MaskedLM
    arch: Architecture  # mlm_architecture(...)
    config: EncoderConfig
    hf_config: dict[str, Any]
    folder: Path
    fresh_head: bool


def load_masked_lm(name_or_path: str | Path, dtype: Any = jnp.float32, *, seed: int = 0
                   ) -> PretrainedMLM:
    """A `MaskedLM` from a hub id, folder or pip: folder: a `*ForMaskedLM` checkpoint gives its
    head; a base model or a classifier (all-MiniLM-L6-v2 ships no MLM head) gets a fresh one
    (the log says so), drawn from `seed`."""
    from flax_sentiment.models.pretrained import _initialise, as_dtype, read_hf_config
    from flax_sentiment.models.weights import import_weights, read_state_dict

    folder = sources.resolve(str(name_or_path))
    if not folder.is_dir():
        raise UserError(f"{name_or_path!r}: expected a model folder, got a file ({folder})")
    hf = read_hf_config(folder)
    arch = mlm_architecture(get_architecture(hf.get("model_type"),
                                             source=str(folder / "config.json")), hf)
    cfg = arch.encoder_config(hf)

    def build() -> MaskedLM:
        return MaskedLM(cfg, dtype=as_dtype(dtype), rngs=nnx.Rngs(seed))

    model = nnx.eval_shape(build)
    fresh = import_weights(model, arch, read_state_dict(folder), source=str(folder),
                           fresh_prefixes=(MLM_PREFIX,))
    _initialise(model, fresh, build)
    if fresh:
        log.info("%s: no masked-LM head in the checkpoint; initialised a fresh one (%s)",
                 name_or_path, ", ".join(sorted({p.rpartition(".")[0] for p in fresh})))
    return PretrainedMLM(model=model, arch=arch, config=cfg, hf_config=hf, folder=folder,
                         fresh_head=bool(fresh))
