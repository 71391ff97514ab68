"""The one config every encoder is built from, derived from a Hugging Face `config.json`."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Shape and behaviour of a transformer encoder with a classification head.

    BERT, RoBERTa (XLM-R, CamemBERT), ALBERT, DistilBERT, ELECTRA, DeBERTa-v2/v3, ModernBERT
    and MPNet differ only in the fields below (and in their weight names, see
    `architectures.py`), so one stack serves them all. Every field added after the first five
    architectures defaults to their behaviour, so encoder configs saved before it still load
    unchanged.
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
    # --- Variants of newer encoders. ---
    absolute_positions: bool = True  # a learned position table (not DeBERTa-v3, ModernBERT)
    norm_bias: bool = True  # LayerNorms with a bias (ModernBERT's have a scale only)
    embedding_dropout: float | None = None  # None -> hidden_dropout
    # Pre-LayerNorm (ModernBERT): x + sublayer(norm(x)), a final norm after the last layer, and
    # no norm before the first attention (the embeddings were just normed).
    pre_norm: bool = False
    fused_qkv: bool = False  # one hidden -> 3*hidden projection, q|k|v (ModernBERT's Wqkv)
    attention_bias: bool = True  # biases on the q/k/v and output projections
    ffn_bias: bool = True
    gated_ffn: bool = False  # GLU: inner gives 2*intermediate, act(first half) * second half
    ffn_inner_dropout: float = 0.0  # between activation and output projection (ModernBERT)
    # Rotary position embeddings on q and k (0: none); local layers use their own theta.
    rope_theta: float = 0.0
    local_rope_theta: float = 0.0
    # Sliding-window attention: with local_attention > 0, layer i attends |q - k| <=
    # local_attention // 2 unless i % global_attn_every_n_layers == 0 (a global layer).
    local_attention: int = 0
    global_attn_every_n_layers: int = 1
    # DeBERTa's disentangled attention: content->position (c2p) and position->content (p2c)
    # scores from shared relative-position embeddings, bucketed logarithmically beyond
    # position_buckets // 2. c2p/p2c also set the score scale, even without relative_attention.
    relative_attention: bool = False
    c2p: bool = False
    p2c: bool = False
    position_buckets: int = 0  # 0 -> no buckets: relative distances clipped at max_relative
    max_relative_positions: int = 0
    share_att_key: bool = False  # positions projected by the content query/key projections
    norm_rel_embeddings: bool = False  # a LayerNorm over the relative embeddings
    # MPNet's (T5-style) relative-position bias: one [buckets, heads] table shared by every
    # layer, its bucket of the distance k - q added to every layer's scores (0: none). Half
    # the buckets per direction, exact below a quarter, logarithmic up to the max distance.
    position_bias_buckets: int = 0
    position_bias_max_distance: int = 128
    # Head: pooling ("cls": first token, "mean": over the attention mask), a LayerNorm after
    # the activation (ModernBERT), and the first dropout's own rate (DeBERTa's pooler_dropout).
    head_pooling: str = "cls"
    head_norm: bool = False
    head_dense_bias: bool = True
    head_input_dropout: float | None = None  # None -> classifier_dropout

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def relative_span(self) -> int:
        """Relative distances a DeBERTa layer tells apart on each side (its embeddings: 2x)."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    def is_local_layer(self, index: int) -> bool:
        return self.local_attention > 0 and index % self.global_attn_every_n_layers != 0

    @property
    def max_input_length(self) -> int:
        """Longest input the position embeddings allow (RoBERTa's positions start at pad + 1)."""
        limit = self.max_position_embeddings
        return limit - (self.pad_token_id + 1 if self.padding_aware_positions else 0)

    def replace(self, **changes: Any) -> EncoderConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
