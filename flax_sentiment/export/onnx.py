"""An exported Hugging Face folder -> `model.onnx` for serving, checked with onnxruntime.

The graph comes from the PyTorch model transformers loads from the folder (itself checked against
our logits) through torch's `torch.export`-based ONNX exporter (`dynamo=True`, torch's default
since 2.9; it needs onnxscript). The TorchScript exporter (`dynamo=False`) also gives correct
graphs for the five architectures today, but it is deprecated, and it traces: every Python
decision taken on the example (transformers 5's mask and SDPA code read shapes as Python values,
with TracerWarnings) is frozen into the graph, silently wrong for other shapes should one of them
ever matter. torch.export keeps the batch and sequence axes symbolic and fails loudly on a branch
it cannot keep. Either way the check below runs a batch size and length the export never saw.

Names follow optimum's `ORTModelForSequenceClassification`: inputs `input_ids`, `attention_mask`
and, for models with more than one token type (BERT, ALBERT, ELECTRA), `token_type_ids`; output
`logits`. Batch and sequence axes are dynamic.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flax_sentiment.errors import UserError

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
# torch's ONNX exporter translates to opset 18 natively (torchlib); another opset would add a
# version-conversion pass for nothing. onnxruntime runs opset 18 since 1.14.
OPSET = 18
# What `--onnx` needs beyond the base install; all are in the `torch` extra.
ONNX_PACKAGES = ("torch", "onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = 'pip install -e ".[torch]"'
# ONNX files are protobufs, limited to 2 GiB: bigger models keep their weights in model.onnx.data.
_PROTOBUF_LIMIT = 2**31 - 2**26


def require_onnx() -> None:
    """Raise `UserError` naming every package an ONNX export lacks (call before writing)."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"an ONNX export needs {', '.join(missing)}, not installed: "
                        f"{INSTALL_HINT}")


def input_names(config: Any) -> list[str]:
    """The model's ONNX inputs: token types only where there is more than one (RoBERTa's single
    type and DistilBERT's none are constants, as in optimum's exports)."""
    names = ["input_ids", "attention_mask"]
    if (getattr(config, "type_vocab_size", 0) or 0) > 1:
        names.append("token_type_ids")
    return names


def encode(tokenizer: Any, texts: Sequence[str], names: Sequence[str], max_length: int
           ) -> dict[str, np.ndarray]:
    """int64 inputs for `names`, one padded batch (token types are zeros if not produced)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="np")
    out = {n: np.asarray(enc[n], np.int64) for n in names if n in enc}
    if "token_type_ids" in names and "token_type_ids" not in out:
        out["token_type_ids"] = np.zeros_like(out["input_ids"])
    return out


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's warnings and notices (torchvision absent, deprecations, every optimizer
    pass) are not ours."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _param_bytes(torch_model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in torch_model.parameters())


def write_onnx(torch_model: Any, path: Path, example: dict[str, np.ndarray]) -> Path:
    """Export `torch_model` (a transformers sequence classifier) to `path`, its batch and
    sequence axes dynamic. `example` (batch and length >= 2, or torch.export fixes the axis)
    only has to be valid input."""
    import torch

    names = list(example)
    if any(v.shape[0] < 2 or v.shape[1] < 2 for v in example.values()):
        raise ValueError("the example batch needs >= 2 rows of >= 2 tokens for dynamic axes")

    class Logits(torch.nn.Module):
        def __init__(self, model: Any):
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None
                    ) -> Any:
            kw = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, **kw).logits

    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    args = tuple(torch.from_numpy(example[n]) for n in names)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(
            Logits(torch_model).eval(), args, input_names=names, output_names=["logits"],
            dynamic_shapes=tuple({0: batch, 1: sequence} for _ in names),
            opset_version=OPSET, dynamo=True, external_data=False, verbose=False,
            optimize=True)
        program.save(str(path), external_data=_param_bytes(torch_model) > _PROTOBUF_LIMIT)
    return path


def onnx_logits(path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """float32 logits of `path` under onnxruntime (CPU), fed the inputs the graph declares."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: inputs[i.name] for i in session.get_inputs()}
    return np.asarray(session.run(["logits"], feed)[0], np.float32)


def export_onnx(folder: Path, tokenizer: Any, texts: Sequence[str], *, max_length: int,
                example_texts: Sequence[str], tolerance: float = 1e-4) -> dict[str, Any]:
    """Write `folder/model.onnx` from the PyTorch model in `folder` and check that onnxruntime
    reproduces its logits on `texts` (padded as one batch) within `tolerance`.

    `example_texts` (two or more, shaped unlike `texts`) trace the graph, so the check itself
    runs a batch size and length the export never saw. Raises `export.ParityError` on a
    mismatch; the caller removes the folder.
    """
    from flax_sentiment.export.pytorch import ParityError, load_torch_model, torch_logits

    folder = Path(folder)
    torch_model = load_torch_model(folder)
    names = input_names(torch_model.config)
    path = write_onnx(torch_model, folder / ONNX_FILE,
                      encode(tokenizer, example_texts, names, max_length))
    inputs = encode(tokenizer, texts, names, max_length)
    theirs = torch_logits(torch_model, inputs["input_ids"], inputs["attention_mask"],
                          inputs.get("token_type_ids"))
    try:
        ours = onnx_logits(path, inputs)
    except ImportError:
        raise
    except Exception as e:  # e.g. an axis the graph fixed to the example's size
        detail = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ParityError(f"{path.name}: onnxruntime could not run it on inputs of shape "
                          f"{inputs['input_ids'].shape} ({type(e).__name__}: {detail})") from e
    if ours.shape != theirs.shape:
        raise ParityError(f"{path.name}: onnxruntime logits have shape {ours.shape}, PyTorch's "
                          f"{theirs.shape}")
    diff = float(np.abs(ours - theirs).max())
    if not diff <= tolerance:
        raise ParityError(f"{path.name}: onnxruntime logits differ from PyTorch's by {diff:.3g} "
                          f"(tolerance {tolerance:.3g}); nothing was written")
    log.info("wrote %s (opset %d, inputs %s); onnxruntime logits within %.2g of PyTorch's",
             path.name, OPSET, names, diff)
    return {"file": path.name, "opset": OPSET, "inputs": names, "outputs": ["logits"],
            "max_abs_diff": diff, "tolerance": tolerance,
            "bytes": sum(p.stat().st_size for p in folder.glob(f"{ONNX_FILE}*"))}
