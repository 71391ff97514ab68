"""A LoRA run as a PEFT adapter folder, checked with PEFT before it lands.

`adapter_config.json` (LoRA, sequence classification, the Hugging Face names of the adapted
layers, the head's layers in `modules_to_save`), `adapter_model.safetensors` (each adapter's
`lora_A` / `lora_B` and the head's weights under PEFT's key names), the tokenizer and a README.
`PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, ...), OUT)`
loads it. PEFT's sequence-classification mode keeps only modules named `classifier` / `score`
on its own; the other layers our head trains (BERT's pooler, DistilBERT's pre_classifier,
DeBERTa's and ModernBERT's head layers) are listed in `modules_to_save`.

Written into a temporary sibling, loaded back with PEFT (every key must be one PEFT expects, and
none missing) and compared logit by logit with the merged model; only then moved to `output`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flax_sentiment import sources
from flax_sentiment.errors import UserError
from flax_sentiment.models.architectures import Architecture
from flax_sentiment.models.lora import HEAD, Adapters
from flax_sentiment.models.weights import checkpoint_name

log = logging.getLogger(__name__)

PREFIX = "base_model.model."  # PEFT's path to the wrapped transformers model
AUTO_SAVED = ("classifier", "score")  # what PEFT's SEQ_CLS task type keeps by itself
WEIGHTS = "adapter_model.safetensors"


def require_peft() -> None:
    """A missing package is one clear line, before anything is written."""
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
    except ImportError as e:
        raise UserError(f"--adapter needs peft and torch ({e.name} is not installed): pip install "
                        "'flax-sentiment[torch]'") from None


def target_modules(adapters: Adapters, arch: Architecture) -> list[str]:
    """The adapted layers' Hugging Face module names (full paths: they match only themselves)."""
    return [arch.hf_module_name(m) for m in adapters.spec.modules]


def modules_to_save(adapters: Adapters, arch: Architecture) -> list[str]:
    """The head's Hugging Face modules that PEFT must save and load besides the adapters, then
    the ones its SEQ_CLS mode adds by itself (as PEFT writes the list)."""
    names = dict.fromkeys(arch.hf_module_name(k.rpartition(".")[0])
                          for k in adapters.params if k.startswith(HEAD))
    extra = [n for n in names if not any(n == a or n.startswith(a + ".") for a in AUTO_SAVED)]
    return [*extra, *AUTO_SAVED]


def base_reference(name_or_path: str) -> str:
    """`base_model_name_or_path`: a hub id as it is, a local or pip: model as its folder."""
    if name_or_path.startswith(sources.PIP_PREFIX) or Path(name_or_path).expanduser().exists():
        return str(sources.resolve(name_or_path).absolute())
    return name_or_path


def adapter_config(adapters: Adapters, arch: Architecture) -> dict[str, Any]:
    spec = adapters.spec
    return {
        "peft_type": "LORA", "task_type": "SEQ_CLS",
        "base_model_name_or_path": base_reference(adapters.base),
        "r": spec.rank, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout,
        "target_modules": target_modules(adapters, arch),
        "modules_to_save": modules_to_save(adapters, arch),
        "bias": "none", "fan_in_fan_out": False, "use_rslora": False, "use_dora": False,
        "init_lora_weights": True, "inference_mode": True,
    }


def adapter_state_dict(adapters: Adapters, arch: Architecture) -> dict[str, np.ndarray]:
    """PEFT's tensors: `lora_A.weight` [rank, in] = A^T, `lora_B.weight` [out, rank] = B^T (our
    kernels are [in, out]), and the head's parameters under their transformers names."""
    out = {}
    for m in adapters.spec.modules:
        name = PREFIX + arch.hf_module_name(m)
        out[name + ".lora_A.weight"] = np.asarray(adapters.params[m + ".lora_a"]).T
        out[name + ".lora_B.weight"] = np.asarray(adapters.params[m + ".lora_b"]).T
    for k, v in adapters.params.items():
        if k.startswith(HEAD):
            name, transpose = checkpoint_name(arch, k)
            out[PREFIX + name] = np.asarray(v).T if transpose else np.asarray(v)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def write_adapter(folder: Path, adapters: Adapters, arch: Architecture,
                  label_names: Sequence[str]) -> None:
    """adapter_config.json, the weights and a README into an existing `folder`."""
    from safetensors.numpy import save_file

    config = adapter_config(adapters, arch)
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(adapter_state_dict(adapters, arch), str(folder / WEIGHTS),
              metadata={"format": "pt"})
    labels = {i: str(n) for i, n in enumerate(label_names)}
    (folder / "README.md").write_text(
        f"# LoRA adapter ({arch.model_type}, rank {adapters.spec.rank})\n\n"
        f"Base model: `{config['base_model_name_or_path']}`; labels {list(labels.values())}.\n\n"
        "```python\nfrom peft import PeftModel\n"
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
        f"base = AutoModelForSequenceClassification.from_pretrained(\n"
        f"    {config['base_model_name_or_path']!r}, num_labels={len(labels)},\n"
        f"    id2label={labels})\n"
        "model = PeftModel.from_pretrained(base, 'THIS_FOLDER').eval()\n"
        "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')\n```\n")


def load_peft_model(folder: Path, base: str, label_names: Sequence[str]) -> Any:
    """The adapter as PEFT loads it on its transformers base (float32, eval mode)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as tlog

    labels = [str(n) for n in label_names]
    verbosity = tlog.get_verbosity()
    tlog.set_verbosity_error()  # the base's fresh classifier is expected: PEFT replaces it
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={n: i for i, n in enumerate(labels)}, dtype=torch.float32)
    finally:
        tlog.set_verbosity(verbosity)
    return PeftModel.from_pretrained(model, str(folder)).eval()


def check_keys(peft_model: Any, folder: Path) -> None:
    """Every tensor we wrote is one PEFT has for this config, and none is missing."""
    from peft import get_peft_model_state_dict
    from safetensors.numpy import load_file

    from flax_sentiment.export.huggingface import ParityError

    expected = set(get_peft_model_state_dict(peft_model))
    written = set(load_file(str(folder / WEIGHTS)))
    if expected != written:
        raise ParityError(f"{folder}: adapter tensors do not match PEFT's (missing "
                          f"{sorted(expected - written)[:3]}, unexpected "
                          f"{sorted(written - expected)[:3]})")


def _replace(tmp: Path, output: Path) -> None:
    """Move the checked folder into place; an old `output` goes only once that worked."""
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:8]}"
    if output.exists():
        os.replace(output, old)
    try:
        os.replace(tmp, output)
    except BaseException:
        if old.exists():
            os.replace(old, output)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _check_pooling(pooling: str, base: str) -> None:
    """PEFT loads the adapter onto the base's own transformers class, which pools as the base's
    config says: a run that pooled otherwise (config model.pooling) exports merged only."""
    from flax_sentiment import sources
    from flax_sentiment.models.pretrained import head_pooling, read_hf_config

    own = head_pooling(read_hf_config(sources.resolve(base)))
    if pooling != own:
        raise UserError(f"--adapter: this run's head pools by {pooling!r} (config "
                        f"model.pooling), but {base!r} loads into a transformers class that "
                        f"pools by {own!r}, so the adapter would give other logits; export the "
                        "merged model (without --adapter)")


def export_run_adapter(run: Any, output: str | Path, **options: Any) -> dict[str, Any]:
    """`export_adapter` for a `workdir.Run` (scripts/export.py --adapter)."""
    from flax_sentiment.export.huggingface import run_tokenization, with_max_length

    tokenizer = with_max_length(run.tokenizer, run_tokenization(run.config.data))
    return export_adapter(run.model, run.adapters, run.arch, tokenizer, run.label_names,
                          output, **options)


def export_adapter(model: Any, adapters: Adapters | None, arch: Architecture, tokenizer: Any,
                   label_names: Sequence[str], output: str | Path, *, overwrite: bool = False,
                   tolerance: float = 1e-4, texts: Sequence[str] | None = None,
                   dtype: str = "float32", onnx: bool = False) -> dict[str, Any]:
    """Write the PEFT adapter folder of a LoRA run (`model` is its merged model, the reference
    PEFT's logits must match within `tolerance`). Nothing is written on any failure."""
    from flax_sentiment.export.huggingface import (
        PARITY_TEXTS,
        ParityError,
        check_output,
        torch_logits,
    )

    if adapters is None:
        raise UserError("--adapter: this run was not trained with LoRA (model.lora.rank is "
                        "unset); export it without --adapter")
    if dtype != "float32" or onnx:
        raise UserError("--adapter writes float32 adapter weights and no ONNX file (--dtype and "
                        "--onnx are for the merged export, without --adapter)")
    _check_pooling(model.config.head_pooling, adapters.base)
    require_peft()
    output = Path(output).expanduser().absolute()
    check_output(output, overwrite)
    texts = list(PARITY_TEXTS if texts is None else texts)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)
        write_adapter(tmp, adapters, arch, label_names)
        tokenizer.save_pretrained(str(tmp))
        base = adapter_config(adapters, arch)["base_model_name_or_path"]
        peft_model = load_peft_model(tmp, base, label_names)
        check_keys(peft_model, tmp)
        limit = int(model.config.max_input_length)
        enc = tokenizer(texts, padding=True, truncation=True, return_tensors="np",
                        max_length=min(limit, getattr(tokenizer, "model_max_length", 0) or limit))
        ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
        types = enc.get("token_type_ids") if model.config.type_vocab_size > 0 else None
        ours = np.asarray(model(ids, mask, None if types is None else types.astype(np.int32)),
                          np.float32)
        theirs = torch_logits(peft_model, ids, mask, types)
        diff = float(np.abs(ours - theirs).max())
        if not diff <= tolerance:
            raise ParityError(f"{output}: PEFT's logits differ from ours by {diff:.3g} "
                              f"(tolerance {tolerance:.3g}); nothing was written")
        check_output(output, overwrite)
        files = sorted(p.name for p in tmp.iterdir())
        _replace(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote the LoRA adapter (%d layers) to %s; PEFT logits within %.2g of ours",
             len(adapters.spec.modules), output, diff)
    return {"path": str(output), "base_model_name_or_path": base, "model_type": arch.model_type,
            "rank": adapters.spec.rank, "lora_alpha": adapters.spec.alpha,
            "target_modules": len(adapters.spec.modules), "max_abs_diff": diff,
            "tolerance": tolerance, "num_parity_texts": len(texts),
            "weights_bytes": (output / WEIGHTS).stat().st_size, "files": files}
