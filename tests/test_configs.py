"""Every shipped config loads, validates, and names real sources; bad command lines fail clearly."""

import importlib.util
from pathlib import Path

import pytest

from flax_sentiment.config import base_config, validate
from flax_sentiment.data import packing
from tests.helpers import REPO, run_script

CONFIGS = sorted((REPO / "configs").glob("*.py"))


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_is_valid(path):
    config = _load(path)
    if config.mlm.corpus:  # a masked-LM config (scripts/pretrain.py): no labelled data
        validate(config, task="mlm")
        assert config.model.name_or_path
        return
    validate(config)
    assert config.model.name_or_path and config.data.name_or_path


def test_expected_recipes_exist():
    names = {p.stem for p in CONFIGS}
    assert {"default", "quickstart", "sst2_roberta_base", "sst2_albert_base_v2",
            "imdb_roberta_base", "tweet_eval_roberta_base"} <= names


def test_unknown_config_key_is_an_error(tmp_path):
    result = run_script(["scripts/train.py", "--config=configs/quickstart.py",
                         f"--workdir={tmp_path / 'run'}", "--config.train.learnin_rate=1e-4"])
    assert result.returncode != 0
    assert "learnin_rate" in result.stderr
    assert not (tmp_path / "run").exists()


def test_batch_size_must_divide_over_devices(tmp_path):
    result = run_script(["scripts/train.py", "--config=configs/quickstart.py",
                         f"--workdir={tmp_path / 'run'}", "--config.train.batch_size=30"],
                        devices=8)
    assert result.returncode == 2
    # "(8 devices)" also proves the subprocess saw the 8 virtual devices (on 1 device, 30 would
    # be valid and the run would train); the run stops before its "N device(s)" log line.
    assert "train.batch_size=30 must be a positive multiple of the device count (8 devices)" \
        in result.stderr
    assert not (tmp_path / "run").exists()


def test_hub_model_offline_is_a_clear_error(tmp_path):
    result = run_script(["scripts/train.py", "--config=configs/default.py",
                         f"--workdir={tmp_path / 'run'}"],
                        env={"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "could not be downloaded" in last
    assert not (tmp_path / "run").exists()


def test_fast_config_rows_follow_max_length():
    """configs/sst2_minilm_fast.py packs rows of `max_length` tokens, also when that is
    overridden (a command-line override sets the field as this test does), and turning packing
    off leaves max_length alone."""
    config = _load(REPO / "configs" / "sst2_minilm_fast.py")
    assert packing.pack_length(config.data) == config.data.max_length == 66
    config.data.max_length = 80
    assert packing.pack_length(config.data) == 80
    validate(config)
    config.data.pack_length = 0
    assert packing.pack_length(config.data) == 0 and config.data.max_length == 80


# Recipes whose recorded numbers (docs/RESULTS.md, docs/BENCHMARKS.md) were made with padded,
# length-bucketed batches: they keep them under the packed default.
BUCKETED = ("sst2_minilm", "sst2_minilm_tuned", "sst2_minilm_sweep", "sst2_minilm_lora",
            "tweet_eval_minilm", "tweet_eval_minilm_best", "tweet_eval_minilm_distilled",
            "tweets_curve")


def test_packed_stratified_rows_are_the_default_and_recorded_recipes_keep_theirs():
    c = base_config()
    assert packing.pack_length(c.data) == c.data.max_length and c.data.pack_sampling == "stratified"
    c.data.max_length = 64
    assert packing.pack_length(c.data) == 64
    for name in BUCKETED:
        assert packing.pack_length(_load(REPO / "configs" / f"{name}.py").data) == 0, name
    for name in ("sst2_minilm_packed", "sst2_minilm_best"):  # packed with uniform draws
        recipe = _load(REPO / "configs" / f"{name}.py")
        assert packing.pack_length(recipe.data) > 0 and recipe.data.pack_sampling == "uniform"
    assert packing.pack_length(_load(REPO / "configs" / "quickstart.py").data) == 64


def test_packed_recipes_keep_the_baseline_hyperparameters():
    """The packed recipes are compared with configs/sst2_minilm.py (docs/BENCHMARKS.md): they
    differ from it in how batches are packed (data.pack_length, data.pack_sampling) alone."""
    baseline = _load(REPO / "configs" / "sst2_minilm.py").to_dict()
    for name, sampling in (("sst2_minilm_packed", "uniform"), ("sst2_minilm_fast", "stratified")):
        recipe = _load(REPO / "configs" / f"{name}.py").to_dict()
        assert recipe["data"].pop("pack_length") != 0
        assert recipe["data"].pop("pack_sampling") == sampling
        for key in ("pack_length", "pack_sampling"):
            baseline["data"].pop(key, None)
        assert recipe == baseline, name


def test_tweet_eval_best_is_the_base_recipe_plus_the_techniques():
    """configs/tweet_eval_minilm_best.py differs from configs/tweet_eval_minilm.py in the
    techniques' keys alone (docs/RESULTS.md compares the two)."""
    base = _load(REPO / "configs" / "tweet_eval_minilm.py").to_dict()
    best = _load(REPO / "configs" / "tweet_eval_minilm_best.py").to_dict()
    changed = {(section, key) for section in best for key in best[section]
               if isinstance(best[section], dict) and best[section][key] != base[section][key]}
    assert changed == {("model", "pooling"), ("model", "reinit_layers"),
                       ("train", "learning_rate"), ("train", "layer_decay"),
                       ("train", "ema_decay")}
    assert {k: v for k, v in best.items() if not isinstance(v, dict)} == \
        {k: v for k, v in base.items() if not isinstance(v, dict)}


def test_metric_mode_follows_the_metric_unless_set():
    from flax_sentiment.config import base_config, metric_mode

    c = base_config()
    assert c.eval.metric_mode == "auto" and metric_mode(c) == "max"  # accuracy
    for metric, mode in [("loss", "min"), ("ece", "min"), ("perplexity", "min"),
                         ("f1_macro", "max")]:
        c.eval.metric = metric
        assert metric_mode(c) == mode
    c.eval.metric_mode = "max"
    assert metric_mode(c) == "max"  # an explicit choice wins
    assert metric_mode(None) == "max"  # a workdir without a config
