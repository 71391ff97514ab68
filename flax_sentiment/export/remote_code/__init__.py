"""Modeling code that travels with an export whose head transformers' own class cannot express.

A mean-pooled head (config model.pooling="mean") on an architecture whose transformers class
reads the first token is exported with `modeling_mean_pooling.py` beside its weights and an
`auto_map` entry naming the class, so `from_pretrained(folder, trust_remote_code=True)` builds
it. ModernBERT needs none: its config's `classifier_pooling` says how it pools.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from flax_sentiment.models.architectures import Architecture

FILE = "modeling_mean_pooling.py"
SOURCE = Path(__file__).with_name(FILE)
NATIVE_POOLING = ("modernbert",)  # model types whose config says how they pool


def remote_class(arch: Architecture, pooling: str) -> str | None:
    """The class of `FILE` an export of `arch` pooling by `pooling` needs (None: transformers'
    own class pools that way)."""
    if pooling == "cls" or arch.model_type in NATIVE_POOLING:
        return None
    return "MeanPooled" + arch.hf_class


def config_changes(arch: Architecture, pooling: str) -> dict[str, Any]:
    """What an exported config.json says about `pooling`, beyond the source's settings."""
    if arch.model_type in NATIVE_POOLING:
        return {"classifier_pooling": pooling}
    name = remote_class(arch, pooling)
    if name is None:
        return {}
    return {"architectures": [name], "classifier_pooling": pooling,
            "auto_map": {"AutoModelForSequenceClassification": f"{FILE[:-3]}.{name}"}}


def write(folder: Path) -> None:
    shutil.copyfile(SOURCE, Path(folder) / FILE)


def is_ours(folder: Path, config: dict[str, Any]) -> bool:
    """True when `folder`'s config maps to our modeling file and the file is ours byte for
    byte: the only remote code the parity check runs."""
    auto_map = config.get("auto_map") or {}
    target = auto_map.get("AutoModelForSequenceClassification", "")
    path = Path(folder) / FILE
    return (bool(auto_map) and target.startswith(FILE[:-3] + ".") and path.is_file()
            and path.read_bytes() == SOURCE.read_bytes())
