"""Small real things for training tests: a tiny BERT with the real MiniLM tokenizer, real SST-2
rows, and a config that trains in seconds."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections

from flax_sentiment.config import base_config
from tests.conftest import MINILM, REPO, SHARED_DATA


def tiny_bert(folder: Path, *, dropout: float = 0.1, seed: int = 0, model_type: str = "bert"
              ) -> Path:
    """A randomly initialised 2-layer encoder (hidden 32) that uses the real uncased vocabulary."""
    import torch
    import transformers as T

    from flax_sentiment.models.pretrained import load_tokenizer

    folder.mkdir(parents=True, exist_ok=True)
    common = dict(vocab_size=30522, max_position_embeddings=128, num_attention_heads=4,
                  hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if model_type == "bert":
        cfg, cls = T.BertConfig(**common), T.BertModel
    elif model_type == "roberta":
        cfg, cls = T.RobertaConfig(**common, type_vocab_size=1), T.RobertaModel
    elif model_type == "albert":
        cfg, cls = T.AlbertConfig(**common, embedding_size=16), T.AlbertModel
    elif model_type == "electra":
        cfg, cls = T.ElectraConfig(**common, embedding_size=16), T.ElectraModel
    elif model_type == "xlm-roberta":
        cfg, cls = T.XLMRobertaConfig(**common, type_vocab_size=1), T.XLMRobertaModel
    elif model_type == "deberta-v2":  # v3's layout: relative positions only, log buckets
        cfg = T.DebertaV2Config(**common, relative_attention=True, position_biased_input=False,
                                pos_att_type=["p2c", "c2p"], position_buckets=16,
                                max_relative_positions=128, share_att_key=True,
                                norm_rel_ebd="layer_norm", type_vocab_size=0)
        cls = T.DebertaV2Model
    elif model_type == "modernbert":  # +-8 token windows, a global layer every 2
        cfg = T.ModernBertConfig(
            vocab_size=30522, max_position_embeddings=128, num_attention_heads=4, hidden_size=32,
            num_hidden_layers=2, intermediate_size=64, local_attention=16,
            global_attn_every_n_layers=2, embedding_dropout=dropout, attention_dropout=dropout,
            mlp_dropout=dropout, pad_token_id=0, cls_token_id=101, sep_token_id=102,
            bos_token_id=101, eos_token_id=102)
        cls = T.ModernBertModel
    elif model_type == "mpnet":
        cfg = T.MPNetConfig(**common, pad_token_id=1, layer_norm_eps=1e-5)
        cls = T.MPNetModel
    elif model_type == "distilbert":
        cfg = T.DistilBertConfig(vocab_size=30522, max_position_embeddings=128, dim=32,
                                 n_layers=2, n_heads=4, hidden_dim=64, dropout=dropout,
                                 attention_dropout=dropout, seq_classif_dropout=dropout)
        cls = T.DistilBertModel
    else:
        raise ValueError(model_type)
    torch.manual_seed(seed)
    cls(cfg).save_pretrained(folder)
    load_tokenizer(MINILM).save_pretrained(str(folder))
    return folder


def sst2_subset(folder: Path, n_train: int = 256, n_eval: int = 96) -> Path:
    """The first rows of the real SST-2 train and validation files."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("validation", n_eval)):
        with open(SHARED_DATA / "sst2" / f"{split}.tsv", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t"))[: n + 1]
        with open(folder / f"{split}.tsv", "w", newline="") as f:
            csv.writer(f, delimiter="\t").writerows(rows)
    return folder


def tiny_config(model: Path, data: Path, **overrides) -> ml_collections.ConfigDict:
    c = base_config()
    c.model.name_or_path = str(model)
    c.data.name_or_path = str(data)
    c.data.max_length = 64
    c.data.buckets = (16, 64)
    c.data.pack_length = 0  # padded batches: the tests of packing set their rows
    c.train.batch_size = 16
    c.train.max_steps = 12
    c.train.learning_rate = 1e-3
    c.train.warmup_steps = 2
    c.train.log_every_steps = 2
    c.eval.every_steps = 6
    c.eval.batch_size = 32
    c.checkpoint.every_steps = 4
    c.checkpoint.async_save = True
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def write_config(config: ml_collections.ConfigDict, path: Path) -> Path:
    """A configs/*.py style file holding `config`, for scripts/train.py in a subprocess.

    Lists go back to tuples, as in real configs: ml_collections overrides tuples, not lists.
    """
    path.write_text(
        "import json\nimport ml_collections\n\n\n"
        "def _tuples(x):\n"
        "    if isinstance(x, dict):\n"
        "        return {k: _tuples(v) for k, v in x.items()}\n"
        "    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x\n\n\n"
        "def get_config():\n"
        f"    return ml_collections.ConfigDict(_tuples(json.loads({config.to_json()!r})))\n")
    return path


def run_script(args: list[str], *, devices: int = 1, timeout: float = 600, env: dict | None = None,
               **kwargs) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=full_env, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


# --- one reference run, and comparing runs ------------------------------------------------

STEPS = 12


def train_script(config: Path, workdir: Path, devices: int = 1,
                 **kw) -> subprocess.CompletedProcess:
    result = run_script(["scripts/train.py", f"--config={config}", f"--workdir={workdir}"],
                        devices=devices, **kw)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def final_params(workdir: Path, step=None) -> dict:
    import numpy as np

    from flax_sentiment.models.functional import ModelDef
    from flax_sentiment.workdir import load_run

    return {k: np.asarray(v) for k, v in ModelDef.params_of(load_run(workdir, step).model).items()}


def assert_same_run(a: Path, b: Path, atol: float) -> None:
    """Same final parameters, eval results and logged train losses (no duplicated steps)."""
    import numpy as np
    import pytest

    pa, pb = final_params(a), final_params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], atol=atol, rtol=0, err_msg=k)
    ra = json.loads((a / "eval_results.json").read_text())
    rb = json.loads((b / "eval_results.json").read_text())
    assert ra["confusion_matrix"] == rb["confusion_matrix"]
    assert rb["loss"] == pytest.approx(ra["loss"], abs=atol * 10)

    def losses(workdir):
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["train/loss"]) for r in rows if "train/loss" in r]

    la, lb = losses(a), losses(b)
    assert [s for s, _ in la] == [s for s, _ in lb]
    np.testing.assert_allclose([v for _, v in lb], [v for _, v in la], rtol=1e-4)


def keep_until(src: Path, dst: Path, step: int) -> None:
    """A copy of a finished workdir as if the run had been stopped right after `step`."""
    import shutil

    shutil.copytree(src, dst)
    for ckpt in (dst / "checkpoints").iterdir():
        if ckpt.name.isdigit() and int(ckpt.name) > step:
            shutil.rmtree(ckpt)
    (dst / "eval_results.json").unlink()
