"""Our NNX classifier -> a Hugging Face PyTorch folder, checked against PyTorch before it lands.

The folder is written into a temporary sibling, loaded back with transformers'
`AutoModelForSequenceClassification` and compared logit by logit with our model; its model card
(README.md) and, on request, `model.onnx` (checked with onnxruntime against that PyTorch model)
go into the same temporary folder. Only an export that passes every check is moved to `output`.
A failed export leaves `output` exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flax_sentiment.data.batching import EvalBatches
from flax_sentiment.data.buckets import DEFAULT_BUCKETS, make_buckets
from flax_sentiment.errors import UserError
from flax_sentiment.export import remote_code
from flax_sentiment.export.pytorch import ParityError, load_torch_model, torch_logits
from flax_sentiment.models.architectures import Architecture
from flax_sentiment.models.pretrained import head_pooling
from flax_sentiment.models.weights import export_state_dict

log = logging.getLogger(__name__)

# Real, varied-length sentences (short, long, negated, mixed) so the check exercises padding.
PARITY_TEXTS = [
    "A gorgeous, witty, seductive movie.",
    "Terrible.",
    "I didn't love it, but it was not nearly as bad as the reviews said.",
    "the plot is nothing but boilerplate cliches from start to finish, and the script assumes "
    "that not only would subtlety be lost on the target audience, but that it's also too "
    "difficult for the movie to handle",
    "It's a charming and often affecting journey.",
    "The service was slow and the food arrived cold; we will not be coming back.",
    "ok",
    "An unflinchingly bleak and desperate film that somehow left me smiling.",
]

# The ONNX graph is traced on these (batch 2, a few tokens), then checked on all of
# PARITY_TEXTS: the check itself runs a batch size and length the export never saw.
ONNX_EXAMPLE_TEXTS = PARITY_TEXTS[:2]

# Storage dtype -> relative logit tolerance for rounding the weights (measured on MiniLM:
# bfloat16 ~0.5% of the largest logit, float16 ~0.1%; ~3x margin).
# float32 is exact storage; bfloat16 keeps 8 mantissa bits, float16 keeps 11.
EXPORT_DTYPES = {"float32": 0.0, "bfloat16": 1.5e-2, "float16": 3e-3}

# Config keys that describe the source checkpoint rather than the exported model.
_STALE_KEYS = ("_name_or_path", "_commit_hash", "transformers_version", "architectures",
               "torch_dtype", "dtype", "id2label", "label2id", "num_labels", "problem_type",
               "finetuning_task", "gradient_checkpointing", "_attn_implementation_autoset")


# config.json key of an export: the tokenization the model was trained with (max_length,
# truncation, head_tokens), which `predict.Classifier.from_pretrained` applies. Its tokenizer's
# model_max_length is the same max_length, so `truncation=True` (pipelines too) cuts where
# training did; the head+tail cut is ours alone.
TOKENIZATION_KEY = "flax_sentiment_tokenization"


def run_tokenization(data: Any) -> dict[str, Any]:
    """The tokenization an export records, from a run's `data` config section."""
    from flax_sentiment.config import option

    return {"max_length": int(data.max_length),
            "truncation": str(option(data, "truncation", "head")),
            "head_tokens": int(option(data, "head_tokens", 64))}


def with_max_length(tokenizer: Any, tokenization: dict[str, Any] | None) -> Any:
    """A copy of `tokenizer` whose `model_max_length` is the training length (to be saved)."""
    if tokenization is None:
        return tokenizer
    out = copy.deepcopy(tokenizer)
    out.model_max_length = int(tokenization["max_length"])
    return out


def effective_tolerance(tolerance: float, dtype: str, logits: np.ndarray) -> float:
    """`tolerance` for float32; for 16-bit storage, the rounding error relative to logit size."""
    rel = EXPORT_DTYPES[dtype]
    scale = max(1.0, float(np.abs(logits).max())) if logits.size else 1.0
    return max(tolerance, rel * scale)


def build_hf_config(hf_config: dict[str, Any], arch: Architecture, label_names: Sequence[str],
                    dtype: str = "float32", pooling: str | None = None) -> Any:
    """A transformers config for `arch.hf_class`: the source's settings, our labels and head
    (a `pooling` transformers' class lacks names our modeling code: `remote_code`; None: the
    source's own)."""
    from transformers import AutoConfig

    if pooling is None:
        pooling = head_pooling(hf_config)
    kw = {k: v for k, v in hf_config.items()
          if k not in _STALE_KEYS + ("auto_map", "classifier_pooling", TOKENIZATION_KEY)
          and k != "model_type"}
    kw.update(remote_code.config_changes(arch, pooling))
    kw.setdefault("architectures", [arch.hf_class])
    labels = [str(n) for n in label_names]
    if len(set(labels)) != len(labels):
        raise UserError(f"label names must be unique, got {labels}")
    try:
        config = AutoConfig.for_model(
            arch.model_type,
            **kw,
            id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)},
            problem_type="single_label_classification",
        )
    except Exception as e:
        raise UserError(f"could not build a {arch.model_type} config from the source "
                        f"config.json ({type(e).__name__}: {e})") from None
    config.dtype = dtype
    return config


def _save_weights(state: dict[str, np.ndarray], path: Path, dtype: str) -> None:
    if dtype == "float32":
        from safetensors.numpy import save_file

        save_file(state, str(path), metadata={"format": "pt"})
        return
    import torch  # numpy has no bfloat16
    from safetensors.torch import save_file

    tdtype = getattr(torch, dtype)
    tensors = {k: torch.from_numpy(v).to(tdtype).contiguous() for k, v in state.items()}
    bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
    if bad:
        raise UserError(f"weights overflow {dtype} (e.g. {bad[0]!r}); export as float32")
    save_file(tensors, str(path), metadata={"format": "pt"})


def _max_tokens(model: Any, tokenizer: Any) -> int:
    limit = model.config.max_input_length
    return int(min(limit, getattr(tokenizer, "model_max_length", None) or limit))


def parity_logits(model: Any, folder: Path, tokenizer: Any = None,
                  texts: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ours, PyTorch's) logits for `texts`, padded as one batch so padding is exercised too.

    `tokenizer` defaults to the one saved in `folder`, which is what users of the export get.
    """
    from transformers import AutoTokenizer

    texts = list(PARITY_TEXTS if texts is None else texts)
    if not texts:
        raise ValueError("parity check needs at least one text")
    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    enc = tokenizer(texts, padding=True, truncation=True, max_length=_max_tokens(model, tokenizer),
                    return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    types = enc.get("token_type_ids")
    if model.config.type_vocab_size == 0:
        types = None
    ours = np.asarray(model(ids, mask, None if types is None else types.astype(np.int32)),
                      dtype=np.float32)
    theirs = torch_logits(load_torch_model(folder), ids, mask, types)
    return ours, theirs


def parity_check(model: Any, folder: Path, tokenizer: Any = None,
                 texts: Sequence[str] | None = None) -> float:
    """Max |our logits - PyTorch logits| on `folder` (default texts: `PARITY_TEXTS`)."""
    return _parity(model, Path(folder), tokenizer, texts)[0]


def _parity(model: Any, folder: Path, tokenizer: Any, texts: Sequence[str] | None
            ) -> tuple[float, np.ndarray]:
    """(max abs logit difference, our logits); inf when shapes differ or values are not finite."""
    ours, theirs = parity_logits(model, folder, tokenizer, texts)
    if ours.shape != theirs.shape:
        raise ParityError(f"{folder}: PyTorch logits have shape {theirs.shape}, ours {ours.shape}")
    diff = float(np.abs(ours - theirs).max())
    return (diff if math.isfinite(diff) else math.inf), ours


def float32_reference(model: Any) -> Any:
    """`model` itself when it computes in float32, else a float32-compute twin with its weights.

    Parity is about the exported weights; bfloat16 compute on our side would swamp it.
    """
    from flax import nnx

    dtypes = {np.dtype(m.dtype) for _, m in nnx.iter_graph(model)
              if isinstance(m, nnx.Module) and getattr(m, "dtype", None) is not None}
    if dtypes <= {np.dtype(np.float32)}:
        return model
    twin = nnx.eval_shape(lambda: type(model)(model.config, rngs=nnx.Rngs(0)))
    nnx.update(twin, nnx.state(model, nnx.Param))
    return twin


def check_output(output: str | Path, overwrite: bool) -> None:
    """Refuse an `output` that is a file, or a non-empty folder without `overwrite`."""
    output = Path(output).expanduser().absolute()
    if output.is_symlink() or (output.exists() and not output.is_dir()):
        raise UserError(f"{output}: exists and is not a folder; choose another --output")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{output}: folder exists and is not empty (pass overwrite=True / "
                        f"--overwrite to replace it)")


def _replace(tmp: Path, output: Path) -> None:
    """Move the checked export into place; an old `output` is removed only once that worked."""
    if not output.exists():
        os.replace(tmp, output)
        return
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(output, old)
    try:
        os.replace(tmp, output)
    except BaseException:
        os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def staged(output: Path, overwrite: bool) -> Iterator[Path]:
    """A fresh folder beside `output` for an export to be written and checked in. When the block
    finishes, it replaces `output` (checked again: it may have appeared meanwhile); when the
    block raises (a failed check, Ctrl-C), it is removed and `output` stays exactly as it was."""
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the export is an ordinary folder
        yield tmp
        check_output(output, overwrite)
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def saved_tokenizer(folder: Path, tokenizer: Any, texts: Sequence[str], output: Path) -> Any:
    """The tokenizer saved in `folder`, reloaded as users will load it; it must encode `texts`
    exactly as the one we trained with."""
    from transformers import AutoTokenizer

    reloaded = AutoTokenizer.from_pretrained(str(folder))
    if reloaded(list(texts))["input_ids"] != tokenizer(list(texts))["input_ids"]:
        raise ParityError(f"{output}: the saved tokenizer encodes differently from the original")
    return reloaded


def export_hf(model: Any, arch: Architecture, hf_config: dict[str, Any], tokenizer: Any,
              label_names: Sequence[str], output: str | Path, *, dtype: str = "float32",
              overwrite: bool = False, parity_texts: Sequence[str] | None = None,
              tolerance: float = 1e-4, card: str | None = None, onnx: bool = False,
              tokenization: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a Hugging Face folder for `model` and prove PyTorch reproduces its logits.

    `card` is written as the folder's README.md (see `card.model_card`); `onnx` adds
    `model.onnx`, whose onnxruntime logits must match PyTorch's within `tolerance` (float32
    compute whatever the storage `dtype`). `tokenization` (`run_tokenization`) goes into
    config.json and sets the saved tokenizer's model_max_length. Returns a report (path,
    dtype, num_labels, label_names, max_abs_diff, tolerance, files, and `onnx` with its own
    check).
    Raises `UserError` (nothing written) for a non-empty `output` without `overwrite` or a
    missing ONNX package, and `ParityError` when PyTorch's logits differ by more than the
    tolerance, which for 16-bit exports grows with the storage rounding error, or onnxruntime's
    differ from PyTorch's.
    """
    if onnx:
        from flax_sentiment.export.onnx import require_onnx

        require_onnx()
    if dtype not in EXPORT_DTYPES:
        raise UserError(f"export dtype {dtype!r} is not supported (use one of "
                        f"{sorted(EXPORT_DTYPES)})")
    output = Path(output).expanduser().absolute()
    label_names = [str(n) for n in label_names]
    num_labels = model.config.num_labels
    if len(label_names) != num_labels:
        raise UserError(f"{len(label_names)} label names {label_names} for a model with "
                        f"{num_labels} outputs")
    check_output(output, overwrite)
    pooling = model.config.head_pooling
    config = build_hf_config(hf_config, arch, label_names, dtype, pooling)
    if tokenization is not None:
        setattr(config, TOKENIZATION_KEY, dict(tokenization))
    tokenizer = with_max_length(tokenizer, tokenization)

    texts = list(PARITY_TEXTS if parity_texts is None else parity_texts)
    with staged(output, overwrite) as tmp:
        config.save_pretrained(str(tmp))
        if remote_code.remote_class(arch, pooling) is not None:
            remote_code.write(tmp)
        _save_weights(export_state_dict(model, arch), tmp / "model.safetensors", dtype)
        tokenizer.save_pretrained(str(tmp))
        reloaded = saved_tokenizer(tmp, tokenizer, texts, output)
        diff, ours = _parity(float32_reference(model), tmp, reloaded, texts)
        limit = effective_tolerance(tolerance, dtype, ours)
        if not diff <= limit:
            raise ParityError(f"{output}: exported PyTorch logits differ from ours by {diff:.3g} "
                              f"(tolerance {limit:.3g}); nothing was written")
        if card is not None:
            (tmp / "README.md").write_text(card)
        onnx_report = None
        if onnx:
            from flax_sentiment.export.onnx import export_onnx

            try:
                onnx_report = export_onnx(tmp, reloaded, texts,
                                          max_length=_max_tokens(model, reloaded),
                                          example_texts=ONNX_EXAMPLE_TEXTS, tolerance=tolerance)
            except ParityError as e:
                raise ParityError(f"{output}: {e}") from None
    files = sorted(p.name for p in output.iterdir())
    size = (output / "model.safetensors").stat().st_size
    report = {"path": str(output), "dtype": dtype, "num_labels": num_labels,
              "label_names": label_names, "model_type": arch.model_type,
              "hf_class": config.architectures[0], "max_abs_diff": diff, "tolerance": limit,
              "num_parity_texts": len(texts), "weights_bytes": size, "files": files}
    if onnx_report is not None:
        report["onnx"] = onnx_report
    log.info("exported %s (%s, %d labels) to %s; PyTorch logits within %.2g of ours",
             config.architectures[0], dtype, num_labels, output, diff)
    return report


def compare_on_split(model: Any, folder: Path, split: Any, *, batch_size: int = 64,
                     buckets: Sequence[int] = DEFAULT_BUCKETS, pad_id: int = 0
                     ) -> dict[str, Any]:
    """Accuracy of our model and of the exported PyTorch folder on a whole labelled split.

    Both see the same token ids (the training pipeline's batches), so any gap is the export's
    alone. `split` is a `data.TokenizedSplit`; ours runs through `steps.model_step`.
    """
    from flax_sentiment import parallel
    from flax_sentiment.models.functional import ModelDef
    from flax_sentiment.training.steps import Steps

    torch_model = load_torch_model(Path(folder))
    mesh = parallel.make_mesh()
    steps = Steps(ModelDef(model), model.config.num_labels, mesh)
    use_types = model.config.type_vocab_size > 0
    batches = EvalBatches(split, parallel.round_up(batch_size, mesh.devices.size),
                          make_buckets(buckets, int(split.lengths.max())), pad_id=pad_id,
                          process_index=0, process_count=1)
    ours_pred, theirs_pred, labels, max_diff = [], [], [], 0.0
    outputs = steps.run(steps.place(ModelDef.params_of(model)), batches)
    for batch, out in zip(batches, outputs, strict=True):
        real = batch["weights"] > 0
        ours = np.asarray(out["logits"])[real]
        theirs = torch_logits(torch_model, batch["input_ids"], batch["attention_mask"],
                              batch["token_type_ids"] if use_types else None)[real]
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
        ours_pred.append(ours.argmax(-1))
        theirs_pred.append(theirs.argmax(-1))
        labels.append(batch["labels"][real])
    ours_pred, theirs_pred = np.concatenate(ours_pred), np.concatenate(theirs_pred)
    labels = np.concatenate(labels)
    return {"split": split.name, "num_examples": int(labels.size),
            "jax_accuracy": float((ours_pred == labels).mean()),
            "torch_accuracy": float((theirs_pred == labels).mean()),
            "prediction_agreement": float((ours_pred == theirs_pred).mean()),
            "max_abs_logit_diff": max_diff}
