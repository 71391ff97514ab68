"""The loop's contract: hooks at global steps (also after a resume), a hook's stop request,
repeated in-process runs, and inference paths that never build an optimizer."""

import json
import signal

import jax
import numpy as np
import pytest

from flax_sentiment.models.functional import ModelDef
from flax_sentiment.training import steps as steps_lib
from flax_sentiment.training.loop import Hook, train_and_evaluate
from flax_sentiment.workdir import Workdir, load_run
from tests.helpers import sst2_subset, tiny_bert, tiny_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("loop")
    return {"model": tiny_bert(root / "model"), "data": sst2_subset(root / "sst2", 192, 64),
            "root": root}


@pytest.fixture(scope="module")
def finished(tiny):
    """A finished 12-step run (evals at 6 and 12)."""
    workdir = tiny["root"] / "finished"
    train_and_evaluate(tiny_config(tiny["model"], tiny["data"]), workdir)
    return workdir


def test_custom_hook_every_n_global_steps_across_a_resume(tiny, tmp_path):
    config = tiny_config(tiny["model"], tiny["data"], **{"eval.every_steps": 6,
                                                         "checkpoint.every_steps": 4})
    seen = []

    def stop_at_six(loop):
        seen.append((loop.step, None if loop.eval_result is None else loop.eval_result["step"]))
        return "enough at six" if loop.step == 6 else None

    results = train_and_evaluate(config, tmp_path / "run", hooks=[Hook(stop_at_six, every=3)])
    # Called at 3 and 6 only; at 6 after that step's evaluation (the documented order).
    assert seen == [(3, None), (6, 6)]
    assert results["stop_reason"] == "enough at six" and results["step"] == 6
    saved = json.loads((tmp_path / "run" / "eval_results.json").read_text())
    assert saved["stop_reason"] == "enough at six" and saved["step"] == 6
    assert Workdir(tmp_path / "run").checkpoints(read_only=True).latest_step() == 6

    # The same command resumes at 6; `every` counts the global step, not the steps of this run.
    again = []
    results = train_and_evaluate(config, tmp_path / "run",
                                 hooks=[Hook(lambda loop: again.append(loop.step), every=4)])
    assert again == [8, 12] and results["step"] == 12 and "stop_reason" not in results


def test_repeated_runs_in_one_process_restore_what_they_change(tiny, tmp_path):
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
              jax.config.jax_compilation_cache_dir,
              jax.config.jax_persistent_cache_min_compile_time_secs)
    for i in range(2):
        config = tiny_config(tiny["model"], tiny["data"], **{"train.max_steps": 2})
        config.compilation_cache_dir = str(tmp_path / "xla")
        assert train_and_evaluate(config, tmp_path / f"run{i}")["step"] == 2
        after = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT),
                 jax.config.jax_compilation_cache_dir,
                 jax.config.jax_persistent_cache_min_compile_time_secs)
        assert after == before


def test_inference_reads_parameters_only(finished, tmp_path, monkeypatch):
    """Evaluation, prediction and export restore the parameters alone (orbax partial restore):
    building an optimizer would raise here. The parameters equal a full restore's."""
    from flax_sentiment import parallel
    from flax_sentiment.config import from_dict
    from flax_sentiment.evaluation.evaluate import evaluate_checkpoint
    from flax_sentiment.evaluation.predict import Classifier
    from flax_sentiment.export.huggingface import export_hf

    # The reference: the whole train state, restored as the training loop restores it.
    run = load_run(finished)
    config = from_dict(json.loads((finished / "config.json").read_text()))
    full_steps = steps_lib.Steps(ModelDef(run.model), 2, parallel.make_mesh(),
                                 train=config.train, total_steps=12)
    ckpts = Workdir(finished).checkpoints(read_only=True)
    _, state, _ = ckpts.restore(full_steps.abstract_state)
    ckpts.close()
    full = jax.device_get(state.params)

    def no_optimizer(*args, **kwargs):
        raise AssertionError("an optimizer was built for inference")

    monkeypatch.setattr(steps_lib, "make_optimizer", no_optimizer)
    params = ModelDef.params_of(load_run(finished).model)
    assert params.keys() == full.keys()
    for name in full:
        np.testing.assert_array_equal(np.asarray(params[name]), full[name], err_msg=name)

    expected = json.loads((finished / "eval_results.json").read_text())
    report = evaluate_checkpoint(finished)
    assert report.metrics["confusion_matrix"] == expected["confusion_matrix"]
    probs = Classifier.from_workdir(finished).predict_proba(["a fine film", "dull"])
    assert probs.shape == (2, 2) and np.allclose(probs.sum(-1), 1, atol=1e-6)
    run = load_run(finished)
    report = export_hf(run.model, run.arch, run.hf_config, run.tokenizer, run.label_names,
                       tmp_path / "export")
    assert report["max_abs_diff"] <= 1e-4
