"""A masked-LM run -> a Hugging Face `*ForMaskedLM` folder (AutoModelForMaskedLM), checked
against PyTorch before it lands, like the classifier export (`huggingface.py`): written into a
temporary sibling, loaded back with transformers, its vocabulary logits compared with ours on
every real token of `PARITY_TEXTS`; only a passing export is moved to `output`.

The decoder is tied to the word embeddings, so the state dict holds the embeddings and the
head's dense, norm and output bias; transformers ties the decoder on load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flax_sentiment.errors import UserError
from flax_sentiment.export.huggingface import (
    _STALE_KEYS,
    EXPORT_DTYPES,
    PARITY_TEXTS,
    _max_tokens,
    _save_weights,
    check_output,
    effective_tolerance,
    float32_reference,
    saved_tokenizer,
    staged,
)
from flax_sentiment.export.pytorch import ParityError, load_torch_model
from flax_sentiment.models.architectures import Architecture
from flax_sentiment.models.weights import export_state_dict


def build_mlm_config(hf_config: dict[str, Any], arch: Architecture, dtype: str) -> Any:
    from transformers import AutoConfig

    kw = {k: v for k, v in hf_config.items()
          if k not in _STALE_KEYS + ("auto_map", "classifier_pooling") and k != "model_type"
          and not k.startswith("flax_sentiment")}
    kw["architectures"] = [arch.hf_class]
    kw["tie_word_embeddings"] = True
    try:
        config = AutoConfig.for_model(arch.model_type, **kw)
    except Exception as e:
        raise UserError(f"could not build a {arch.model_type} config from the source "
                        f"config.json ({type(e).__name__}: {e})") from None
    config.dtype = dtype
    return config


def mlm_parity(model: Any, folder: Path, tokenizer: Any,
               texts: list[str]) -> tuple[float, np.ndarray]:
    """(max |ours - PyTorch's| over the real tokens' vocabulary logits, ours)."""
    import torch

    enc = tokenizer(texts, padding=True, truncation=True,
                    max_length=_max_tokens(model, tokenizer), return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    ours = np.asarray(model(ids, mask), np.float32)
    torch_model = load_torch_model(folder, "AutoModelForMaskedLM")
    with torch.no_grad():
        theirs = torch_model(input_ids=torch.from_numpy(ids.astype(np.int64)),
                             attention_mask=torch.from_numpy(mask.astype(np.int64))
                             ).logits.float().numpy()
    if ours.shape != theirs.shape:
        raise ParityError(f"{folder}: PyTorch logits have shape {theirs.shape}, ours {ours.shape}")
    real = mask.astype(bool)
    diff = float(np.abs(ours - theirs)[real].max())
    return (diff if np.isfinite(diff) else float("inf")), ours[real]


def export_masked_lm(model: Any, arch: Architecture, hf_config: dict[str, Any], tokenizer: Any,
                     output: str | Path, *, dtype: str = "float32", overwrite: bool = False,
                     tolerance: float = 1e-4, card: str | None = None) -> dict[str, Any]:
    """Write `model` (a `MaskedLM`) as `arch.hf_class` and prove PyTorch reproduces its logits.
    Raises `UserError` / `ParityError` with nothing written, as `export_hf` does."""
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"export dtype {dtype!r} is not supported (use one of "
                        f"{sorted(EXPORT_DTYPES)})")
    output = Path(output).expanduser().absolute()
    check_output(output, overwrite)
    config = build_mlm_config(hf_config, arch, dtype)
    texts = list(PARITY_TEXTS)
    with staged(output, overwrite) as tmp:
        config.save_pretrained(str(tmp))
        _save_weights(export_state_dict(model, arch), tmp / "model.safetensors", dtype)
        tokenizer.save_pretrained(str(tmp))
        reloaded = saved_tokenizer(tmp, tokenizer, texts, output)
        diff, ours = mlm_parity(float32_reference(model), tmp, reloaded, texts)
        limit = effective_tolerance(tolerance, dtype, ours)
        if not diff <= limit:
            raise ParityError(f"{output}: exported PyTorch logits differ from ours by {diff:.3g} "
                              f"(tolerance {limit:.3g}); nothing was written")
        if card is not None:
            (tmp / "README.md").write_text(card)
    files = sorted(p.name for p in output.iterdir())
    return {"path": str(output), "dtype": dtype, "model_type": arch.model_type,
            "hf_class": arch.hf_class, "max_abs_diff": diff, "tolerance": limit,
            "num_parity_texts": len(texts), "files": files,
            "weights_bytes": (output / "model.safetensors").stat().st_size}
