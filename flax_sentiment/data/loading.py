"""Files, folders and hub datasets -> `datasets.Dataset` splits with their columns checked.

Every read error (encoding, malformed rows, a missing split or column) becomes a `UserError`
that names the file, line, split or column at fault.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flax_sentiment import sources
from flax_sentiment.config import option
from flax_sentiment.errors import UserError

# Extension -> (datasets builder, builder kwargs).
FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}


def _resolve_local(name: str) -> Path | None:
    """A local file/folder for `name`, or None when it should be a hub id.

    `pip:PKG/sub/path` is found without importing PKG (some data packages fail to import).
    """
    if name.startswith(sources.PIP_PREFIX):
        return sources.resolve_pip(name, folder=False)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 2:
        raise UserError(f"data.name_or_path={name!r}: no such file or folder")
    return None


class SplitLoader:
    """Finds the splits of a file, folder or hub dataset and loads them with `datasets`."""

    def __init__(self, config: Any):
        self.config = config
        self.name = str(config.name_or_path)
        self.encoding = str(option(config, "encoding", "utf-8")) or "utf-8"
        self.cache_dir = str(option(config, "cache_dir", "")) or None
        self.local = _resolve_local(self.name)
        self._hub: Any = None  # datasets.DatasetDict, loaded on first use
        self._raw: dict[str, Any] = {}

    def splits(self) -> dict[str, Any]:
        """Split name -> file (local) or Dataset (hub)."""
        if self.local is None:
            return dict(self._hub_splits())
        if self.local.is_file():
            return {str(self.config.train_split): self.local}
        files = {}
        for f in sorted(self.local.iterdir()):
            if f.suffix.lower() in FILE_FORMATS and f.is_file():
                files.setdefault(f.stem, f)
        if not files:
            raise UserError(f"{self.local}: no data files (expected split files such as "
                            f"train.tsv, validation.csv; formats {sorted(FILE_FORMATS)})")
        return files

    def missing_split(self, split: str) -> UserError:
        where = self.local if self.local is not None else self.name
        return UserError(f"{where}: no split {split!r}; splits found: {sorted(self.splits())}"
                         + ("" if self.local is None or self.local.is_dir() else
                            " (a single file is the train split; set data.validation_size "
                            "to carve an evaluation split from it)"))

    def _hub_splits(self) -> Any:
        if self._hub is None:
            import datasets

            subset = str(option(self.config, "subset", "")) or None
            attempts = [(self.name, subset)]
            parts = self.name.split("/")
            if subset is None and len(parts) == 3:
                attempts = [("/".join(parts[:2]), parts[2])]
            elif subset is None and len(parts) == 2:
                attempts.append((parts[0], parts[1]))  # 'glue/sst2': dataset glue, subset sst2
            errors = []
            for repo, sub in attempts:
                try:
                    self._hub = datasets.load_dataset(repo, sub, cache_dir=self.cache_dir)
                    break
                except Exception as e:  # offline, missing repo, bad subset: all the user's to fix
                    errors.append(f"load_dataset({repo!r}, {sub!r}): {type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''}")
            else:
                offline = os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0", "false")
                raise UserError(
                    f"data.name_or_path={self.name!r} is not a local file or folder and could not "
                    f"be loaded from the Hugging Face hub"
                    + (" (HF_DATASETS_OFFLINE is set and it is not in the local cache)"
                       if offline else "") + ": " + "; ".join(errors))
        return self._hub

    def where(self, split: str) -> str:
        source = self.splits().get(split)
        return str(source) if isinstance(source, Path) else f"{self.name} [{split}]"

    def raw(self, split: str) -> Any:
        """The split as a `datasets.Dataset` with its columns checked."""
        if split in self._raw:
            return self._raw[split]
        splits = self.splits()
        if split not in splits:
            raise self.missing_split(split)
        source = splits[split]
        ds = self._load_file(source) if isinstance(source, Path) else source
        columns = [self.config.text_column, self.config.label_column]
        if option(self.config, "text_pair_column", ""):
            columns.append(self.config.text_pair_column)
        for key, col in zip(("text_column", "label_column", "text_pair_column"), columns,
                            strict=False):
            if col not in ds.column_names:
                raise UserError(f"{self.where(split)}: no column {col!r} (data.{key}); columns "
                                f"found: {ds.column_names}")
        if len(ds) == 0:
            raise UserError(f"{self.where(split)}: split {split!r} is empty (no rows)")
        self._raw[split] = ds
        return ds

    def _load_file(self, path: Path) -> Any:
        import datasets

        builder, kwargs = FILE_FORMATS.get(path.suffix.lower(), (None, {}))
        if builder is None:
            raise UserError(f"{path}: unsupported file type {path.suffix!r}; "
                            f"expected one of {sorted(FILE_FORMATS)}")
        kwargs = dict(kwargs)
        if builder == "csv":
            # Read every column as text (no per-chunk type guessing, 'NA'/'null' stay texts);
            # labels are parsed later, where a bad one can be named.
            columns = self._csv_header(path, kwargs.get("delimiter", ","))
            kwargs.update(encoding=self.encoding, keep_default_na=False,
                          features=datasets.Features({c: datasets.Value("string")
                                                      for c in columns}))
        elif builder == "json" and self.encoding.replace("-", "").lower() not in ("utf8",):
            kwargs["encoding"] = self.encoding
        try:
            ds = datasets.load_dataset(builder, data_files=str(path), split="train",
                                       cache_dir=self.cache_dir, **kwargs)
        except UserError:
            raise
        except Exception as e:
            raise self._read_error(path, e) from None
        return ds

    def _csv_header(self, path: Path, delimiter: str) -> list[str]:
        import pandas as pd

        try:
            header = pd.read_csv(path, sep=delimiter, nrows=0, encoding=self.encoding)
        except Exception as e:
            raise self._read_error(path, e) from None
        if len(set(header.columns)) != len(header.columns):
            raise UserError(f"{path}: duplicate column names in header {list(header.columns)}")
        return [str(c) for c in header.columns]

    def _read_error(self, path: Path, error: BaseException) -> UserError:
        chain, e = [], error
        while e is not None and len(chain) < 10:
            chain.append(e)
            e = e.__cause__ or e.__context__
        for e in chain:
            if isinstance(e, UnicodeDecodeError):
                line = _undecodable_line(path, self.encoding)
                return UserError(
                    f"{path}: not valid {self.encoding} text"
                    + (f" (line {line})" if line else "") + f": {e.reason} "
                    f"(byte {e.object[e.start:e.start + 1]!r}). Set data.encoding to the file's "
                    f"encoding, e.g. 'latin-1' or 'cp1252'.")
        for e in chain:
            text = str(e)
            if "Error tokenizing data" in text or type(e).__name__ == "ParserError":
                return UserError(f"{path}: malformed rows: {text.strip()} (every row needs as "
                                 f"many fields as the header; quote fields containing the "
                                 f"delimiter)")
            if type(e).__name__ == "EmptyDataError":
                return UserError(f"{path}: file is empty (no header, no rows)")
        first = chain[-1]
        return UserError(f"{path}: could not be read: {type(first).__name__}: "
                         f"{str(first).splitlines()[0] if str(first) else ''}")


def _undecodable_line(path: Path, encoding: str) -> int | None:
    """1-based line of the first byte that does not decode (only called on the error path)."""
    data = path.read_bytes()
    try:
        data.decode(encoding)
    except UnicodeDecodeError as e:
        return data[: e.start].count(b"\n") + 1
    except LookupError:
        return None
    return None
