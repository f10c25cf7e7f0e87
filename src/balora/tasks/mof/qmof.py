"""A user-supplied QMOF download as a `MofDataset` of PBE band gaps (Rosen et al., Matter 4,
1578 (2021); figshare DOI 10.6084/m9.figshare.13147324): ``qmof.csv`` or ``qmof.json`` with
``relaxed_structures/`` CIFs or ``qmof_structure_data.json``."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from balora.tasks.mof.data import (
    MofDataset,
    StructureSource,
    count_cif_atoms,
    label_value,
    open_table,
)

QMOF_GAP_COLUMN = "outputs.pbe.bandgap"
"""The QMOF property used as the label: the PBE(-D3(BJ)) band gap in eV."""


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"outputs": {"pbe": {"bandgap": 1.2}}}`` -> ``{"outputs.pbe.bandgap": 1.2}`` (as
    ``pandas.json_normalize`` names QMOF's columns in ``qmof.csv``)."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _read_json_list(path: Path, what: str) -> list[Mapping[str, Any]]:
    open_table(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from e
    if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
        raise ValueError(f"{what} {path} should hold a JSON list of objects")
    return data


def _qmof_table(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".json":
        return [_flatten(r) for r in _read_json_list(path, "QMOF property file")]
    open_table(path, "QMOF property file")
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _qmof_files(path: Path) -> tuple[Path, Path]:
    """``(property table, folder holding the structures)`` for a QMOF file or folder."""
    if path.is_dir():
        for name in ("qmof.csv", "qmof.json"):
            if (path / name).is_file():
                return path / name, path
        raise FileNotFoundError(
            f"no qmof.csv or qmof.json in {path}: pass the folder of the QMOF download "
            "(figshare DOI 10.6084/m9.figshare.13147324) or the property file itself"
        )
    if not path.is_file():
        raise FileNotFoundError(f"no such QMOF file or folder: {path}")
    if path.suffix not in (".csv", ".json"):
        raise ValueError(f"{path}: expected QMOF's qmof.csv or qmof.json")
    return path, path.parent


def _qmof_structures(root: Path) -> Mapping[str, StructureSource] | Path:
    """The CIF folder ``relaxed_structures/`` when present, else the structures of
    ``qmof_structure_data.json`` by qmof_id."""
    cifs = root / "relaxed_structures"
    if cifs.is_dir():
        return cifs
    data = root / "qmof_structure_data.json"
    if data.is_file():
        out: dict[str, StructureSource] = {}
        for i, entry in enumerate(_read_json_list(data, "QMOF structure file")):
            if "qmof_id" not in entry or "structure" not in entry:
                raise ValueError(f"{data}: entry {i} lacks 'qmof_id' or 'structure'")
            out[str(entry["qmof_id"])] = dict(entry["structure"])
        return out
    raise FileNotFoundError(
        f"no structures next to the QMOF property file: neither {cifs}/ nor {data}"
    )


def _n_sites(source: StructureSource) -> int:
    if isinstance(source, Path):
        return count_cif_atoms(source)
    if isinstance(source, Mapping):
        return len(source.get("sites", ()))
    return len(source)


def load_qmof(path: str | os.PathLike[str], *, max_atoms: int | None = None) -> MofDataset:
    """A QMOF download as a `MofDataset` of PBE band gaps (``outputs.pbe.bandgap``, eV).

    `path` is the unpacked download folder or its ``qmof.csv`` / ``qmof.json``. The format (as
    the QMOF figshare release lays it out): ``qmof.json`` is a list of records with ``qmof_id``,
    ``name``, ``info`` (``natoms``, ...) and ``outputs`` (``pbe`` -> ``bandgap``, ...);
    ``qmof.csv`` is the same table flattened with dotted column names (``outputs.pbe.bandgap``,
    ``info.natoms``). Structures come from ``relaxed_structures/<qmof_id>.cif`` beside it, else
    from ``qmof_structure_data.json`` (a list of ``{"qmof_id", "name", "structure"}`` with
    pymatgen ``Structure.as_dict()`` structures). Names are the ``qmof_id``s. Rows without a
    PBE gap are skipped; `max_atoms` keeps structures with at most that many atoms per cell.
    """
    table_path, root = _qmof_files(Path(path))
    rows = _qmof_table(table_path)
    if not rows:
        raise ValueError(f"QMOF property file {table_path} has no rows")
    for column in ("qmof_id", QMOF_GAP_COLUMN):
        if column not in rows[0]:
            raise ValueError(f"{table_path}: no {column!r} column (is this QMOF's qmof.csv/.json?)")
    structures = _qmof_structures(root)
    names: list[str] = []
    sources: list[StructureSource] = []
    gaps: list[float] = []
    n_atoms: list[int] = []
    missing: list[str] = []
    for i, row in enumerate(rows):
        qmof_id = str(row["qmof_id"])
        raw_gap = row.get(QMOF_GAP_COLUMN)
        if raw_gap is None or str(raw_gap).strip() in ("", "nan", "NaN", "None"):
            continue
        gap = label_value(raw_gap, f"{table_path} (row {i + 1}, {qmof_id})", QMOF_GAP_COLUMN)
        if isinstance(structures, Path):
            source: StructureSource = structures / f"{qmof_id}.cif"
            if not source.is_file():
                missing.append(str(source))
                continue
        elif qmof_id in structures:
            source = structures[qmof_id]
        else:
            missing.append(qmof_id)
            continue
        natoms = row.get("info.natoms")
        n = int(float(natoms)) if natoms not in (None, "") else _n_sites(source)
        if max_atoms is not None and n > max_atoms:
            continue
        names.append(qmof_id)
        sources.append(source)
        gaps.append(gap)
        n_atoms.append(n)
    if missing:
        where = structures if isinstance(structures, Path) else root / "qmof_structure_data.json"
        raise FileNotFoundError(
            f"{len(missing)} QMOF entries of {table_path} have no structure in {where}, "
            f"e.g. {missing[:3]}"
        )
    if not names:
        raise ValueError(f"{table_path}: no row with a {QMOF_GAP_COLUMN} value")
    return MofDataset(
        names,
        sources,
        np.asarray(gaps, dtype=np.float64),
        np.asarray(n_atoms, dtype=np.int64),
        "PBE (QMOF)",
    )
