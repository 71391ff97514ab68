"""Bad input to the scripts: one `error:` line naming what is wrong, exit status 2, and
nothing written."""

import pytest

from tests.helpers import run_script


def _train(*args):
    return run_script(["scripts/train.py", *args], timeout=300)


def _one_error_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("extra", [[], ["--config.train.max_steps=3"]])
def test_missing_config_file(tmp_path, extra):
    result = _train("--config", "configs/nope.py", f"--workdir={tmp_path / 'run'}", *extra)
    _one_error_line(result, "--config configs/nope.py: no such file")
    assert not (tmp_path / "run").exists()


def test_config_file_with_a_syntax_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n")
    result = _train(f"--config={bad}", f"--workdir={tmp_path / 'run'}")
    _one_error_line(result, f"--config {bad}, line 1: ")


@pytest.mark.parametrize("sub", ["", "sub"])
def test_workdir_that_is_a_file(tmp_path, sub):
    target = tmp_path / "file"
    target.write_text("keep me")
    workdir = target / sub if sub else target
    result = _train("--config=configs/quickstart.py", f"--workdir={workdir}")
    _one_error_line(result, f"--workdir {workdir}: {target} is a file, not a folder")
    assert target.read_text() == "keep me"


def test_max_length_beyond_the_position_embeddings(run_setup, tmp_path):
    """The tiny BERT has 128 positions: 200 would index past them (NaN embeddings)."""
    workdir = tmp_path / "run"
    result = _train(f"--config={run_setup['config']}", f"--workdir={workdir}",
                    "--config.data.max_length=200", "--config.data.buckets=(16,200)")
    _one_error_line(result, "data.max_length=200", "128 positions")
    assert not workdir.exists()


def test_position_limit_matches_transformers(tmp_path):
    """RoBERTa's positions start at pad + 1: 126 of 128 usable, as transformers' own model says."""
    import torch
    import transformers

    from flax_sentiment.models.pretrained import load_pretrained_bundle
    from tests.helpers import tiny_bert

    folder = tiny_bert(tmp_path / "roberta", model_type="roberta")
    limit = load_pretrained_bundle(folder, num_labels=2).config.max_input_length
    assert limit == 126
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        reference(torch.full((1, limit), 5))
        with pytest.raises((IndexError, RuntimeError), match="out of (range|bounds)"):
            reference(torch.full((1, limit + 1), 5))
