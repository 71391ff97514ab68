"""`scripts/bench.py --quick`: the side-by-side benchmark runs end to end and prints its table."""

import os
import subprocess
import sys

from tests.conftest import REPO


def test_bench_quick_prints_table_and_ratios(shared_data):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench.py"), "--quick",
                           "--data", str(shared_data / "sst2")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "float32 matmul peak" in out
    for row in ("ours float32", "torch float32", "ours bfloat16", "torch bfloat16"):
        assert row in out
    for ratio in ("RATIO train float32 ours/torch examples/s:",
                  "RATIO train bfloat16 ours/torch examples/s:", "RATIO bf16/fp32 ours:",
                  "RATIO SST-2 epoch bucketed/fixed-32 examples/s:"):
        assert ratio in out
    assert "compiles in a full run:" in out
    assert "GPU sweep: skipped" in out
    assert out.rstrip().endswith("bench: done")
