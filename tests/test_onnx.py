"""model.onnx (`export.py --onnx`): optimum's input and output names, dynamic batch and sequence
axes, onnxruntime parity with PyTorch and with our model, and the refusals."""

import os
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch
import transformers as T

import flax_sentiment as fs
from flax_sentiment.export import onnx as onnx_export
from flax_sentiment.export.huggingface import ONNX_EXAMPLE_TEXTS, ParityError, export_hf
from tests.conftest import MINILM
from tests.test_export import LABELS, TEXTS, _tiny_bundle

IDS, MASK, TYPES = "input_ids", "attention_mask", "token_type_ids"
# optimum's ONNX configs: token types for BERT, ALBERT, ELECTRA; none for RoBERTa, DistilBERT,
# XLM-R, ModernBERT, and DeBERTa-v3 (type_vocab_size 0).
INPUTS = {"bert": [IDS, MASK, TYPES], "roberta": [IDS, MASK], "albert": [IDS, MASK, TYPES],
          "distilbert": [IDS, MASK], "electra": [IDS, MASK, TYPES], "xlm-roberta": [IDS, MASK],
          "deberta-v2": [IDS, MASK], "modernbert": [IDS, MASK], "mpnet": [IDS, MASK]}


@pytest.fixture(scope="module")
def tokenizer():
    return fs.load_tokenizer(MINILM)


def _export(bundle, out, tokenizer, **kw):
    return export_hf(bundle.model, bundle.arch, bundle.hf_config, tokenizer,
                     LABELS[bundle.config.num_labels], out, **kw)


def _check_onnx(out, model, texts, expected_inputs):
    """ONNX logits on `texts` (a batch shaped unlike the export's example) vs PyTorch's and
    ours; returns (max diff vs PyTorch, max diff vs ours)."""
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == expected_inputs
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for i in session.get_inputs():  # symbolic, not fixed, batch and sequence axes
        assert all(isinstance(d, str) for d in i.shape), (i.name, i.shape)
    assert isinstance(session.get_outputs()[0].shape[0], str)

    tok = T.AutoTokenizer.from_pretrained(str(out))
    enc = tok(list(texts), padding=True, return_tensors="np")
    example = tok(list(ONNX_EXAMPLE_TEXTS), padding=True, return_tensors="np")["input_ids"]
    assert enc[IDS].shape[0] != example.shape[0] and enc[IDS].shape[1] != example.shape[1]
    feed = {n: enc[n].astype(np.int64) for n in names}
    got = session.run(["logits"], feed)[0]
    assert got.shape == (len(texts), model.config.num_labels)

    torch_model = T.AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        theirs = torch_model(**{k: torch.from_numpy(v) for k, v in feed.items()}).logits.numpy()
    types = enc[TYPES] if model.config.type_vocab_size > 0 and TYPES in enc else None
    ours = np.asarray(model(enc[IDS], enc[MASK], types))
    return float(np.abs(got - theirs).max()), float(np.abs(got - ours).max())


@pytest.mark.parametrize("arch", [
    "bert",
    pytest.param("roberta", marks=pytest.mark.slow),
    pytest.param("albert", marks=pytest.mark.slow),
    "distilbert",
    pytest.param("electra", marks=pytest.mark.slow),
    pytest.param("xlm-roberta", marks=pytest.mark.slow),
    "deberta-v2",
    "modernbert",
    "mpnet",
])
def test_every_architecture(arch, tmp_path, tokenizer):
    bundle = _tiny_bundle(arch, tmp_path / "src")
    out = tmp_path / "out"
    report = _export(bundle, out, tokenizer, onnx=True)
    onnx = report["onnx"]
    print(f"{arch}: onnxruntime vs PyTorch (built-in check) {onnx['max_abs_diff']:.2e}")
    assert onnx["max_abs_diff"] <= 1e-4 and onnx["inputs"] == INPUTS[arch]
    assert "model.onnx" in report["files"] and (out / "model.onnx").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no temp folder left
    vs_torch, vs_ours = _check_onnx(out, bundle.model, TEXTS, INPUTS[arch])
    print(f"{arch}: batch {len(TEXTS)}: vs PyTorch {vs_torch:.2e}, vs ours {vs_ours:.2e}")
    assert vs_torch <= 1e-4 and vs_ours <= 1e-4


def test_real_minilm(tmp_path):
    bundle = fs.load_pretrained_bundle(MINILM, num_labels=2)
    rng = np.random.RandomState(0)
    kernel = bundle.model.head.out.kernel
    kernel[...] = np.asarray(kernel[...]) + rng.normal(0, 0.2, kernel.shape).astype(np.float32)
    report = _export(bundle, tmp_path / "minilm", bundle.tokenizer, onnx=True)
    assert report["onnx"]["max_abs_diff"] <= 1e-4 and report["onnx"]["opset"] == 18
    long = " ".join(TEXTS[1:] * 3)  # ~150 tokens: far longer than anything the export saw
    texts = [long, *TEXTS, "Not bad at all.", "dreadful"]
    vs_torch, vs_ours = _check_onnx(tmp_path / "minilm", bundle.model, texts,
                                    [IDS, MASK, TYPES])
    print(f"minilm: batch {len(texts)}: vs PyTorch {vs_torch:.2e}, vs ours {vs_ours:.2e}")
    assert vs_torch <= 1e-4 and vs_ours <= 1e-4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_bundle("bert", tmp_path_factory.mktemp("tiny") / "src", seed=5)


@pytest.mark.parametrize("missing", [["onnxruntime"], ["onnx", "onnxscript"]])
def test_missing_package_writes_nothing(missing, tiny, tokenizer, tmp_path, monkeypatch):
    for name in missing:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError
    with pytest.raises(fs.UserError) as err:
        _export(tiny, tmp_path / "out", tokenizer, onnx=True)
    message = str(err.value)
    assert all(name in message for name in missing) and 'pip install -e ".[torch]"' in message
    assert os.listdir(tmp_path) == []


def test_script_missing_onnxruntime_is_one_line(tmp_path):
    """Checked before anything else: an empty workdir would otherwise fail differently."""
    from tests.helpers import run_script

    (tmp_path / "run").mkdir()
    out = tmp_path / "out"
    argv = ["scripts/export.py", f"--workdir={tmp_path / 'run'}", f"--output={out}", "--onnx"]
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; "
            f"sys.argv = {argv!r}; runpy.run_path('scripts/export.py', run_name='__main__')")
    result = run_script(["-c", code], timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "onnxruntime" in errors[0] and 'pip install -e ".[torch]"' in errors[0], errors[0]
    assert not out.exists()


def test_failed_onnx_check_leaves_nothing(tiny, tokenizer, tmp_path, monkeypatch):
    real = onnx_export.onnx_logits
    monkeypatch.setattr(onnx_export, "onnx_logits", lambda path, inputs: real(path, inputs) + 1e-3)
    with pytest.raises(ParityError, match="onnxruntime logits differ from PyTorch's"):
        _export(tiny, tmp_path / "new", tokenizer, onnx=True)
    assert os.listdir(tmp_path) == []  # no output, no temp folder
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(ParityError, match="onnxruntime"):
        _export(tiny, existing, tokenizer, overwrite=True, onnx=True)
    assert os.listdir(existing) == ["keep.txt"] and os.listdir(tmp_path) == ["existing"]
