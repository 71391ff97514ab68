"""flax-sentiment: fine-tune pretrained text encoders for sentiment analysis in JAX/Flax NNX.

The names below load on first use (PEP 562), so that a script's first import (`cli`, `host`)
does not pay for JAX and transformers before `host.use_huge_pages` may restart the process.
"""

import importlib

_EXPORTS = {"Pretrained": "flax_sentiment.models.pretrained", "UserError": "flax_sentiment.errors",
            "load_pretrained": "flax_sentiment.models.pretrained",
            "load_pretrained_bundle": "flax_sentiment.models.pretrained",
            "load_tokenizer": "flax_sentiment.models.pretrained"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flax_sentiment' has no attribute {name!r}")
