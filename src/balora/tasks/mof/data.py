"""MOF band-gap data: CoRE MOF 2019 structures, their GFN1-xTB labels, and QMOF.

Data flows one way::

    CoRE-MOF package (2019-ASR.tar.xz) ──core_mof_dir: extract once──▶ <cache>/core-mof/2019-ASR/
        ──core_mof_index──▶ [MofEntry(name, n_atoms, path)]   (cached as 2019-ASR.index.csv)
    label CSV (scripts/label_mof_band_gaps.py) + CIF folder ──load_band_gap_labels──▶ MofDataset
    QMOF download (qmof.csv | qmof.json, relaxed_structures/ | qmof_structure_data.json)
        ──load_qmof──▶ MofDataset

Sources:

* The 12,020 CoRE MOF 2019 "all solvent removed" (ASR) CIFs shipped inside the
  ``core-mof==2019.1`` package (``pip install core-mof``; found by path, never imported). Its
  own ``get_structure`` rescans the 250 MB archive on every call, so `core_mof_dir` extracts the
  archive once (about 5 s) into ``$BALORA_CACHE/core-mof/`` (default ``~/.cache/balora``).
* Band-gap labels made by ``scripts/label_mof_band_gaps.py`` (periodic GFN1-xTB through
  ``tblite``; see ``docs/mof-labels.md``). A copy made for CoRE MOF ships with this package
  (`default_labels_path`); it holds names and gaps only, the structures come from the archive.
* A user-supplied download of the QMOF database (Rosen et al., Matter 4, 1578 (2021);
  figshare DOI 10.6084/m9.figshare.13147324): PBE band gaps (``outputs.pbe.bandgap``, eV).

Every loader returns a `MofDataset` (names, structure sources, gaps in eV, atoms per cell); errors
name the offending file. ``pymatgen`` is imported lazily, by the functions that parse structures.
"""

from __future__ import annotations

import csv
import math
import os
import shlex
import shutil
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from balora.io import cache_dir as cache_dir_of
from balora.io import publish_dir, write_csv
from balora.tasks.files import package_file

if TYPE_CHECKING:
    from pymatgen.core import Structure

__all__ = [
    "CORE_MOF_DATASETS",
    "DEFAULT_CORE_MOF_DATASET",
    "LABEL_COLUMNS",
    "LABEL_DIAGNOSTIC_COLUMNS",
    "MofDataset",
    "MofEntry",
    "StructureSource",
    "core_mof_archive",
    "core_mof_dir",
    "core_mof_index",
    "count_cif_atoms",
    "default_labels_path",
    "load_band_gap_labels",
    "read_cif",
    "read_label_rows",
]

CORE_MOF_DATASETS: tuple[str, ...] = ("2019-ASR", "2019-FSR", "2014")
"""The archives in ``core-mof==2019.1``: 2019 all-solvent-removed (12,020 CIFs), 2019
free-solvent-removed (7,061) and the 2014 release."""
DEFAULT_CORE_MOF_DATASET = "2019-ASR"

LABEL_COLUMNS: tuple[str, ...] = (
    "name",
    "n_atoms",
    "elements",
    "gap_ev",
    "method",
    "settings",
    "seconds",
)
"""The first columns of a label CSV written by ``scripts/label_mof_band_gaps.py``, in order."""
LABEL_DIAGNOSTIC_COLUMNS: tuple[str, ...] = (
    "uhf",
    "n_electrons",
    "charge",
    "gap_q0_ev",
    "energy_eh",
    "homo_ev",
    "lumo_ev",
    "frac_occ",
)
"""The columns after `LABEL_COLUMNS`: unpaired electrons of the state kept, its xTB valence
electrons and total charge (non-zero where the charge was set automatically, see
``docs/mof-labels.md``), the gap at charge 0 (eV), the total energy (Hartree), HOMO and LUMO (eV),
and ``frac_occ``, the largest distance of a per-spin orbital occupation from 0 or 1 (above 0.01:
partially filled levels at the Fermi level, typical of a structure with missing atoms)."""

StructureSource: TypeAlias = "Path | Structure | dict[str, Any]"
"""Where a structure comes from: a CIF path (parsed on demand), a parsed pymatgen Structure, or
a pymatgen ``Structure.as_dict()`` mapping (as in QMOF's ``qmof_structure_data.json``)."""

CORE_MOF_DISTRIBUTION = "CoRE-MOF"
CORE_MOF_MODULE = "CoRE_MOF"
_LABELS_RELATIVE = Path("data") / "mof" / "core_mof_gfn1_band_gaps.csv"
_ATOM_TAGS = ("_atom_site_fract_x", "_atom_site_cartn_x")
_SYMOP_TAGS = ("_symmetry_equiv_pos_as_xyz", "_space_group_symop_operation_xyz")


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MofEntry:
    """One CoRE MOF structure: its name (the CIF's stem), atoms per cell and CIF path."""

    name: str
    n_atoms: int
    path: Path


@dataclass(frozen=True)
class MofDataset:
    """Parallel columns: names, structure sources, gaps ``(n,)`` in eV, atoms per cell ``(n,)``.

    `method` says where the gaps come from (e.g. ``"GFN1-xTB"`` or ``"PBE (QMOF)"``).
    Structures are parsed on demand (`structure`), so loading a dataset never parses thousands
    of CIFs.
    """

    names: list[str]
    sources: list[StructureSource]
    gaps_ev: np.ndarray
    n_atoms: np.ndarray
    method: str = ""

    def __post_init__(self) -> None:
        n = len(self.names)
        if len(self.sources) != n or self.gaps_ev.shape != (n,) or self.n_atoms.shape != (n,):
            raise ValueError(
                f"{n} names but {len(self.sources)} sources, gaps_ev of shape "
                f"{self.gaps_ev.shape} and n_atoms of shape {self.n_atoms.shape}"
            )
        if not np.all(np.isfinite(self.gaps_ev)):
            bad = [self.names[i] for i in np.flatnonzero(~np.isfinite(self.gaps_ev))[:5]]
            raise ValueError(f"non-finite band gaps for {bad}")

    def __len__(self) -> int:
        return len(self.names)

    def structure(self, index: int) -> Structure:
        """The pymatgen Structure of example `index` (a CIF is parsed now, every call)."""
        source = self.sources[index]
        if isinstance(source, Path):
            return read_cif(source)
        if isinstance(source, Mapping):
            from pymatgen.core import Structure

            return Structure.from_dict(source)
        return source

    def structures(self) -> Iterator[Structure]:
        """Every structure, in order (parsed one at a time)."""
        for i in range(len(self)):
            yield self.structure(i)

    def subset(self, indices: Sequence[int]) -> MofDataset:
        """The examples at `indices`, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return MofDataset(
            [self.names[i] for i in idx],
            [self.sources[i] for i in idx],
            self.gaps_ev[idx],
            self.n_atoms[idx],
            self.method,
        )


# --------------------------------------------------------------------------------------------
# CIF files
# --------------------------------------------------------------------------------------------


def read_cif(path: str | os.PathLike[str]) -> Structure:
    """A CIF file as a pymatgen Structure (the conventional cell as written, not primitive)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CIF file: {path}")
    try:
        from pymatgen.io.cif import CifParser
    except ImportError as e:
        raise ImportError("reading CIF files needs pymatgen (pip install pymatgen)") from e
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns on every rounded occupancy
            structures = CifParser(path).parse_structures(primitive=False)
    except Exception as e:  # pymatgen raises ValueError, KeyError, IndexError, ... on bad CIFs
        raise ValueError(f"cannot read CIF file {path}: {type(e).__name__}: {e}") from e
    if not structures:
        raise ValueError(f"cannot read CIF file {path}: no structure in it")
    if len(structures[0]) == 0:
        raise ValueError(f"cannot read CIF file {path}: the structure has no atoms")
    return structures[0]


def _tokens(line: str) -> list[str]:
    return shlex.split(line, posix=True) if ("'" in line or '"' in line) else line.split()


def _cif_loops(lines: Iterable[str]) -> Iterator[tuple[list[str], list[str]]]:
    """``(tags, value tokens)`` of each ``loop_`` in a CIF's first data block."""
    tags: list[str] | None = None
    values: list[str] = []
    blocks = 0
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lower = line.lower()
        if lower.startswith("data_"):
            blocks += 1
            if blocks > 1:
                break
        if line.startswith(";"):
            raise ValueError("multi-line text field")  # the quick parser does not read these
        starts_item = lower.startswith(("loop_", "data_")) or (line.startswith("_") and values)
        if tags is not None and starts_item:
            yield tags, values
            tags, values = None, []
        if lower.startswith("loop_"):
            tags, values = [], []
        elif tags is not None:
            if line.startswith("_") and not values:
                tags.append(lower.split()[0])
            else:
                values.extend(_tokens(line))
    if tags is not None:
        yield tags, values


def _quick_count(path: Path) -> int | None:
    """Atom-site rows of a P1 CIF (one symmetry operation), else None."""
    n_ops = n_atoms = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for tags, values in _cif_loops(f):
            if not tags or len(values) % len(tags):
                return None
            rows = len(values) // len(tags)
            if any(t in tags for t in _SYMOP_TAGS):
                n_ops = rows
            elif any(t in tags for t in _ATOM_TAGS):
                n_atoms = rows
    return n_atoms if n_ops == 1 and n_atoms else None


def count_cif_atoms(path: str | os.PathLike[str]) -> int:
    """Atoms per cell of a CIF: its atom-site rows when it is P1, else the parsed structure's.

    Counting rows is about 100 times faster than parsing the structure. For a P1 CIF it can
    differ from ``len(read_cif(path))`` only where pymatgen merges coincident sites.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such CIF file: {path}")
    try:
        n = _quick_count(path)
    except ValueError:
        n = None
    return n if n is not None else len(read_cif(path))


# --------------------------------------------------------------------------------------------
# CoRE MOF 2019: extract once, index once
# --------------------------------------------------------------------------------------------


def _check_dataset(dataset: str) -> None:
    if dataset not in CORE_MOF_DATASETS:
        raise ValueError(f"unknown CoRE MOF dataset {dataset!r}; choose from {CORE_MOF_DATASETS}")


def core_mof_archive(dataset: str = DEFAULT_CORE_MOF_DATASET) -> Path:
    """The ``<dataset>.tar.xz`` archive inside the installed ``core-mof`` package."""
    _check_dataset(dataset)
    relative = Path("data") / f"{dataset}.tar.xz"
    return package_file(CORE_MOF_DISTRIBUTION, CORE_MOF_MODULE, relative)


def _extract_cifs(archive: Path, target: Path) -> None:
    """Every non-empty ``*.cif`` of `archive`, flattened into `target` (no other paths are
    written, so a hostile member name cannot escape `target`)."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or member.size == 0 or not name.endswith(".cif"):
                continue
            if name.startswith("."):  # macOS resource forks ("._X.cif")
                continue
            source = tar.extractfile(member)
            if source is None:
                continue
            with source, open(target / name, "wb") as out:
                shutil.copyfileobj(source, out)


def core_mof_dir(
    dataset: str = DEFAULT_CORE_MOF_DATASET, cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """The folder of ``<name>.cif`` files of a CoRE MOF dataset, extracted on first use.

    The archive is extracted into a temporary sibling folder that is renamed into place once
    complete, so an interrupted extraction never leaves a partial folder behind. Delete the
    folder to extract again.
    """
    _check_dataset(dataset)
    final = cache_dir_of("core-mof", dataset, root=cache_dir)
    if final.is_dir():
        return final
    archive = core_mof_archive(dataset)

    def extract(tmp: Path) -> None:
        _extract_cifs(archive, tmp)
        if not any(tmp.iterdir()):
            raise ValueError(f"no CIF files in {archive}")

    return publish_dir(final, extract)


def core_mof_index(
    dataset: str = DEFAULT_CORE_MOF_DATASET,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    progress: bool = False,
) -> list[MofEntry]:
    """Every structure of a CoRE MOF dataset with its atoms per cell, sorted by name.

    The first call extracts the archive (`core_mof_dir`) and counts atoms (`count_cif_atoms`,
    about a minute for the 12,020 CIFs of 2019-ASR); the counts are cached next to the folder
    as ``<dataset>.index.csv`` (``name,n_atoms``) and reused.
    """
    root = core_mof_dir(dataset, cache_dir)
    index_path = root.parent / f"{dataset}.index.csv"
    if index_path.is_file():
        with open(index_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        try:
            return [MofEntry(r["name"], int(r["n_atoms"]), root / f"{r['name']}.cif") for r in rows]
        except (KeyError, TypeError, ValueError):
            pass  # damaged (hand-edited?): rebuild it
    paths = sorted(root.glob("*.cif"))
    iterator: Iterable[Path] = paths
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(paths, desc=f"counting atoms ({dataset})", unit="cif")
    entries = []
    for path in iterator:
        try:
            n_atoms = count_cif_atoms(path)
        except ValueError:
            n_atoms = 0  # unreadable: kept, so that a label run reports it as a failure
        entries.append(MofEntry(path.stem, n_atoms, path))
    write_csv(index_path, ("name", "n_atoms"), ((e.name, e.n_atoms) for e in entries))
    return entries


# --------------------------------------------------------------------------------------------
# Band-gap labels
# --------------------------------------------------------------------------------------------


def default_labels_path() -> Path:
    """The GFN1-xTB band gaps of CoRE MOF 2019-ASR that ship with balora."""
    return Path(__file__).resolve().parents[2] / _LABELS_RELATIVE  # balora/data/mof/


def open_table(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"no such {what}: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {path} is empty")
    return path


def read_label_rows(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a label CSV as dicts (strings), checked for the `LABEL_COLUMNS` header."""
    path = open_table(Path(path), "label CSV")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("name", "n_atoms", "gap_ev") if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; a label CSV has {list(LABEL_COLUMNS)}"
            )
        return list(reader)


def label_value(value: Any, where: str, column: str) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {column} is not a number: {value!r}") from None
    return out


def load_band_gap_labels(
    labels: str | os.PathLike[str] | None = None,
    cif_dir: str | os.PathLike[str] | None = None,
    *,
    dataset: str = DEFAULT_CORE_MOF_DATASET,
    cache_dir: str | os.PathLike[str] | None = None,
    max_atoms: int | None = None,
    max_frac_occ: float | None = None,
) -> MofDataset:
    """A label CSV (default: `default_labels_path`) joined with its CIFs.

    CIFs are looked up as ``<cif_dir>/<name>.cif``; without `cif_dir`, in the extracted CoRE MOF
    `dataset` (extracted on first use). `max_atoms` keeps the structures with at most that many
    atoms per cell; `max_frac_occ` (e.g. 0.01) keeps those whose ``frac_occ`` diagnostic is at
    most that, dropping the metallic-looking results of structures with missing atoms. Rows come
    in file order (the labelling order, a seeded shuffle).
    """
    path = Path(labels) if labels is not None else default_labels_path()
    rows = read_label_rows(path)
    if not rows:
        raise ValueError(f"label CSV {path} has a header but no rows")
    root = Path(cif_dir) if cif_dir is not None else core_mof_dir(dataset, cache_dir)
    names: list[str] = []
    sources: list[StructureSource] = []
    gaps: list[float] = []
    n_atoms: list[int] = []
    methods: set[str] = set()
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        n = int(label_value(row["n_atoms"], where, "n_atoms"))
        if max_atoms is not None and n > max_atoms:
            continue
        if max_frac_occ is not None:
            if "frac_occ" not in row:
                raise ValueError(f"{path}: max_frac_occ needs a 'frac_occ' column")
            if label_value(row["frac_occ"], where, "frac_occ") > max_frac_occ:
                continue
        gap = label_value(row["gap_ev"], where, "gap_ev")
        if not math.isfinite(gap):
            raise ValueError(f"{where}: gap_ev is {gap}")
        cif = root / f"{row['name']}.cif"
        if not cif.is_file():
            raise FileNotFoundError(f"{where}: no CIF for {row['name']!r} (looked for {cif})")
        names.append(row["name"])
        sources.append(cif)
        gaps.append(gap)
        n_atoms.append(n)
        methods.add(row.get("method") or "")
    return MofDataset(
        names,
        sources,
        np.asarray(gaps, dtype=np.float64),
        np.asarray(n_atoms, dtype=np.int64),
        " / ".join(sorted(m for m in methods if m)),
    )
