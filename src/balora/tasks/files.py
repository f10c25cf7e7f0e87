"""Reading what users and packages provide: tabular files, hub datasets, data files inside
installed packages. Shared by the tasks that read rows (text classification, multiple choice).

``datasets`` and ``pyarrow`` are imported lazily, inside the functions that need them.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.metadata
import importlib.util
import json
import os
from pathlib import Path
from typing import IO, Any

TABLE_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".parquet")


def package_file(distribution: str, module: str, relative: Path) -> Path:
    """A data file inside an installed package, found by path: the package is never imported."""
    candidates = []
    spec = importlib.util.find_spec(module)  # top-level: locates without executing the module
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(loc) / relative for loc in spec.submodule_search_locations]
    try:
        files = importlib.metadata.distribution(distribution).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    wanted = (Path(module) / relative).as_posix()
    candidates += [Path(str(f.locate())) for f in files if Path(str(f)).as_posix() == wanted]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"{relative.as_posix()} not found in the {distribution!r} package; install it "
        f"(pip install {distribution}) or pass the file's path explicitly"
    )


def open_text(path: Path) -> IO[str]:
    """Open a UTF-8 text file for reading (a byte-order mark, as Excel writes, is dropped),
    decompressing ``.gz`` / ``.bz2`` by suffix."""
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8-sig", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def read_text(path: Path) -> str:
    """A whole UTF-8 text file (see `open_text`), or a `ValueError` that names the file."""
    try:
        with open_text(path) as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(_not_utf8(path, e)) from None


def _not_utf8(path: Path, e: UnicodeDecodeError) -> str:
    return (
        f"{path} is not UTF-8 text (byte {e.object[e.start : e.start + 1]!r} at offset "
        f"{e.start}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
    )


def file_format(path: Path) -> str:
    suffixes = path.suffixes
    if suffixes and suffixes[-1] in (".gz", ".bz2"):
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext not in TABLE_EXTENSIONS:
        raise ValueError(
            f"{path}: unknown file extension {ext or '(none)'!r}; supported: "
            f"{', '.join(TABLE_EXTENSIONS)} (optionally followed by .gz or .bz2; no "
            f"compression for .parquet)"
        )
    return ext


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of a CSV, TSV, JSONL or Parquet file as dicts, chosen by the file extension.

    CSV / TSV rows are dicts of strings (header as keys); JSONL rows keep their JSON types
    (blank lines are skipped). ``.gz`` / ``.bz2`` compression is handled by suffix. Parquet
    needs ``pyarrow`` (imported only then).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such data file: {path}")
    ext = file_format(path)
    if ext == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(
                f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
            ) from exc
        return pq.read_table(path).to_pylist()
    try:
        return _read_table(path, ext)
    except UnicodeDecodeError as e:
        raise ValueError(_not_utf8(path, e)) from None
    except csv.Error as e:
        raise ValueError(f"{path}: not a well-formed {ext[1:].upper()} file: {e}") from None


def _read_table(path: Path, ext: str) -> list[dict[str, Any]]:
    with open_text(path) as f:
        if ext in (".csv", ".tsv"):
            # long fields (whole documents) are fine: lift the csv module's 128 kB field limit
            csv.field_size_limit(max(csv.field_size_limit(), 1 << 30))
            return list(csv.DictReader(f, delimiter="\t" if ext == ".tsv" else ","))
        rows = []
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(
                    f"{path}: line {line_no} is a JSON {type(row).__name__}, expected an object"
                )
            rows.append(row)
        return rows


def import_datasets() -> Any:
    """The ``datasets`` module, or an `ImportError` that says how to install it."""
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(
            "loading from the Hugging Face hub needs the `datasets` package "
            "(pip install datasets); offline, use a local file instead"
        ) from exc
    return datasets


def hub_load(name: str, config: str | None = None, **kwargs: Any) -> Any:
    """``datasets.load_dataset(name, config)`` with a clear error when the hub is unreachable."""
    datasets = import_datasets()
    try:
        return datasets.load_dataset(name, config, **kwargs)
    except OSError as exc:  # offline (ConnectionError), unknown name (FileNotFoundError), I/O
        where = name if config is None else f"{name} (config {config!r})"
        raise OSError(
            f"could not load {where} from the Hugging Face hub: {exc}. Without a network "
            "(or with HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set and no cached copy), save the "
            "data to a local file and use the file loader instead"
        ) from exc
    except RuntimeError as exc:  # e.g. "Dataset scripts are no longer supported" (datasets>=4)
        raise RuntimeError(
            f"datasets could not load {name!r} (config {config!r}, {kwargs or 'no options'}): "
            f"{exc}. Try another revision or mirror of the dataset, or a local file"
        ) from exc
