"""`scripts/bench.py --quick`: the side-by-side benchmark runs end to end and prints its tables,
the in-process sections and the whole-process comparison with the Hugging Face Trainer."""

import json
import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

# A row of the trainer tables: variant, dtype, seed, cache, whole s, steady ex/s, whole ex/s,
# validation accuracy, peak RSS MiB, ...
TRAINER_ROW = re.compile(r"^(Trainer|sst2_minilm\S*)\s+(float32|bfloat16)\s+(\d+)\s+(cold|warm)"
                         r"\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\d+)\s", re.M)
ACCURACY_LINE = re.compile(r"^ACCURACY (trainer\S+) float32 (?:warm )?seeds 0: Trainer "
                           r"([\d.]+)%, sst2_minilm ([\d.]+)% \(([-+][\d.]+) points\): equal "
                           r"within 0.5 points: (yes|no)$", re.M)


def _bench(shared_data, tmp_path, *sections):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out_json = tmp_path / "bench.json"
    flags = [f"--sections={s}" for s in sections]
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick",
                           "--data", str(shared_data / "sst2"), "--json", str(out_json), *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:] + out[-3000:]
    assert out.rstrip().endswith("bench: done")
    return out, json.loads(out_json.read_text())


def _check_in_process_sections(out):
    assert "float32 matmul peak" in out
    for row in ("ours float32", "torch float32", "ours bfloat16", "torch bfloat16"):
        assert row in out
    for ratio in ("RATIO train float32 ours/torch examples/s:",
                  "RATIO train bfloat16 ours/torch examples/s:", "RATIO bf16/fp32 ours:",
                  "RATIO SST-2 epoch bucketed/fixed-32 examples/s:"):
        assert ratio in out
    assert "compiles in a full run:" in out
    assert "GPU check: skipped (backend is cpu" in out
    # The step profile: each case has a row per side with four positive phase times.
    profile = [line.split() for line in out.splitlines()
               if line.startswith(("padded ", "packed ")) and line.split()[2] in ("ours",
                                                                                  "torch")]
    assert {(p[0], p[2]) for p in profile} == {("padded", "ours"), ("padded", "torch"),
                                               ("packed", "ours"), ("packed", "torch")}
    assert all(float(x) > 0 for p in profile for x in p[3:]), profile


def _check_trainer_rows(out, results, sections):
    """The whole-process tables: one row per side and cache in each section, ratios, the
    accuracy line, and the JSON."""
    assert "FAILED" not in out, out[-3000:]
    rows = TRAINER_ROW.findall(out)
    seen = {(variant, dtype, cache) for variant, dtype, _, cache, *_ in rows}
    expected = {("Trainer", "float32", "cold"), ("sst2_minilm", "float32", "cold")}
    if "trainer-epoch" in sections:
        expected |= {("Trainer", "float32", "warm"), ("sst2_minilm", "float32", "warm")}
    assert seen == expected, rows
    assert len(rows) == 2 * len(sections)  # one per side in each section
    for *_, whole_s, steady, whole_ex_s, accuracy, rss in rows:
        assert 0.0 <= float(accuracy) <= 1.0
        assert float(whole_s) > 0 and float(steady) > 0 and float(whole_ex_s) > 0
        assert int(rss) > 100  # MiB: a whole Python process with a model
    parts = {"trainer": "trainer6 float32", "trainer-epoch": "trainer-epoch float32 warm"}
    for part in (parts[s] for s in sections):
        for kind in ("whole-process", "steady"):
            assert re.search(rf"^RATIO {part} sst2_minilm/Trainer {kind} examples/s: [\d.]+x$",
                             out, re.M), (part, kind)
    accuracies = ACCURACY_LINE.findall(out)
    labels = {"trainer": "trainer6", "trainer-epoch": "trainer-epoch"}
    assert {label for label, *_ in accuracies} == {labels[s] for s in sections}, accuracies
    for _, theirs, ours, points, _ in accuracies:
        assert 0.0 <= float(theirs) <= 100.0 and 0.0 <= float(ours) <= 100.0
        assert abs(float(ours) - float(theirs) - float(points)) < 0.02
    runs = results["trainer"]["runs"] + results.get("trainer_epoch", {}).get("runs", [])
    assert {r["side"] for r in runs} == {"ours", "trainer"}
    for r in runs:
        assert r["returncode"] == 0 and 0.0 <= r["accuracy"] <= 1.0 and r["peak_rss_mib"] > 0
    assert results["trainer"]["ratios"]["float32 cold"]["sst2_minilm"]["whole_ratio"] > 0


def test_bench_quick_in_process_sections_and_the_trainer(shared_data, tmp_path):
    """Every in-process section, and the whole-process comparison with the Trainer (one cold
    run a side); the warm reruns of the epoch section are `slow`'s sibling below."""
    sections = ("peak", "train", "profile", "data", "eval", "gpu", "mlm-input", "trainer")
    out, results = _bench(shared_data, tmp_path, *sections)
    _check_in_process_sections(out)
    mlm = results["mlm_input"]
    assert f"input / step: {mlm['ratio']:.1f}x" in out
    assert mlm["rows"] > 0 and mlm["iterator_tokens_per_s"] > 0 and mlm["step_tokens_per_s"] > 0
    assert "== trainer6: whole processes" in out and "trainer-epoch" not in out
    _check_trainer_rows(out, results, ("trainer",))


@pytest.mark.slow  # the default suite runs every section but trainer-epoch (above)
def test_bench_quick_prints_table_and_ratios(shared_data, tmp_path):
    """All sections, as `make bench ARGS=--quick` runs them: the trainer sections (quick: 6
    steps, the baseline config, seed 0, float32, cold; the epoch part reuses those caches, so
    its runs are the warm ones)."""
    out, results = _bench(shared_data, tmp_path)
    _check_in_process_sections(out)
    assert "== trainer6: whole processes" in out
    assert "== trainer-epoch: whole processes" in out
    _check_trainer_rows(out, results, ("trainer", "trainer-epoch"))
    assert results["trainer_epoch"]["ratios"]["float32 warm"]["sst2_minilm"]["steady_ratio"] > 0


@pytest.mark.slow  # ~2 min on 2 cores: every part of the device check at toy sizes
def test_device_check_smoke_runs_every_part(tmp_path):
    """`python -m flax_sentiment.bench.gpu --smoke`: the parts a lent GPU runs (parity, sweep
    against PyTorch, memory, autotuning levels) run on a CPU at toy sizes and write their JSON;
    the parity compares jax.nn's XLA path with the einsum path there."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    out_json = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "-m", "flax_sentiment.bench.gpu", "--smoke",
                           "--budget_s", "900", "--json", str(out_json)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out_json.read_text())
    assert result["parity"]["path"] == "xla"
    assert max(result["parity"]["padded"], result["parity"]["packed"]) < 1e-2
    row = result["sweep"]["tiny"]["4"]
    assert all(row[k] > 0 for k in ("einsum", "fused", "torch"))
    assert set(result["memory"]) == {"32", "32_remat", "64", "64_remat"}
    assert result["memory"]["64"]["temp_per_example"] > result["memory"]["32"][
        "temp_per_example"]
    assert set(result["autotune"]) == {"0", "1", "4"}
    assert "skipped" not in proc.stdout
