"""The exported folder as transformers' PyTorch loads and runs it: what the Hugging Face, ONNX
and PEFT exports check their logits against."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flax_sentiment.errors import UserError
from flax_sentiment.export import remote_code


class ParityError(UserError):
    """The exported PyTorch model does not reproduce our logits (nothing was written)."""


@contextlib.contextmanager
def _transformers_log() -> Iterator[list[str]]:
    """Collect transformers' warnings (the load report) and silence its progress bars."""
    from transformers.utils import logging as tlog

    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    bars = tlog.is_progress_bar_enabled()
    tlog.disable_progress_bar()
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        if bars:
            tlog.enable_progress_bar()


def load_torch_model(folder: Path, auto_class: str = "AutoModelForSequenceClassification"
                     ) -> Any:
    """The exported folder as transformers loads it (float32) with `auto_class` (a masked-LM
    export: AutoModelForMaskedLM); any key problem is an error."""
    import transformers

    auto = getattr(transformers, auto_class)
    config = json.loads((Path(folder) / "config.json").read_text())
    if config.get("auto_map") and not remote_code.is_ours(folder, config):
        raise ParityError(f"{folder}: its config.json maps to modeling code that is not "
                          f"flax-sentiment's {remote_code.FILE}; it is not run here")
    with _transformers_log() as messages:
        import torch

        model, info = auto.from_pretrained(
            str(folder), dtype=torch.float32, output_loading_info=True,
            trust_remote_code=bool(config.get("auto_map")))
    problems = {k: sorted(v) for k, v in info.items() if v}
    reported = [m for m in messages
                if any(w in m.lower() for w in ("missing", "unexpected", "newly initialized",
                                                "not used", "mismatch"))]
    if problems or reported:
        detail = "; ".join(f"{k}: {v[:5]}" for k, v in problems.items()) or reported[0]
        raise ParityError(f"{folder}: transformers did not load the export cleanly ({detail})")
    if type(model).__name__ != config["architectures"][0]:
        raise ParityError(f"{folder}: transformers built {type(model).__name__}, expected "
                          f"{config['architectures'][0]}")
    return model.eval()


def torch_logits(torch_model: Any, ids: np.ndarray, mask: np.ndarray,
                 types: np.ndarray | None) -> np.ndarray:
    """float32 logits of a transformers model on numpy inputs (no gradients)."""
    import torch

    kw = {"input_ids": torch.from_numpy(ids.astype(np.int64)),
          "attention_mask": torch.from_numpy(mask.astype(np.int64))}
    if types is not None:
        kw["token_type_ids"] = torch.from_numpy(types.astype(np.int64))
    with torch.no_grad():
        return torch_model(**kw).logits.float().numpy()
