"""flax-sentiment: fine-tune pretrained text encoders for sentiment analysis in JAX/Flax NNX."""

from flax_sentiment.errors import UserError
from flax_sentiment.pretrained import (
    Pretrained,
    load_pretrained,
    load_pretrained_bundle,
    load_tokenizer,
)

__all__ = ["Pretrained", "UserError", "load_pretrained", "load_pretrained_bundle",
           "load_tokenizer"]
