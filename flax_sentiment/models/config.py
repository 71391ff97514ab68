"""The one config every encoder is built from, derived from a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and behaviour of a post-LayerNorm transformer encoder with a classification head.

    BERT, RoBERTa, ALBERT, DistilBERT and ELECTRA differ only in the fields below (and in
    their weight names, see `weights.py`), so one stack serves them all.
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int
    embedding_size: int
    project_embeddings: bool = False  # a dense layer embedding_size -> hidden (ALBERT, ELECTRA)
    type_vocab_size: int = 0  # 0 -> no token type embeddings (DistilBERT)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    padding_aware_positions: bool = False  # RoBERTa: positions count non-pad tokens from pad+1
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    classifier_dropout: float = 0.1
    # Where transformers applies `hidden_dropout` inside a layer. Defaults (BERT's) keep saved
    # encoder configs from before these fields loadable, with the dropout they were trained with.
    attention_output_dropout: bool = True  # after the attention output projection (not DistilBERT)
    ffn_output_dropout: bool = True  # after the feed-forward output (not ALBERT)
    # ALBERT's cross-layer sharing: `num_layers` passes over `num_hidden_groups` groups of
    # `inner_group_num` layers each; every other architecture has one layer per pass.
    num_hidden_groups: int = 0  # 0 -> no sharing
    inner_group_num: int = 1
    head_activation: str = "tanh"
    head_dropout_first: bool = False  # RoBERTa/ELECTRA heads apply dropout before the dense layer
    num_labels: int = 2
    initializer_range: float = 0.02

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def max_input_length(self) -> int:
        """Longest input the position embeddings allow (RoBERTa's positions start at pad + 1)."""
        limit = self.max_position_embeddings
        return limit - (self.pad_token_id + 1 if self.padding_aware_positions else 0)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
