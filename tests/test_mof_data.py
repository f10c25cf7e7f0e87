"""MOF band-gap data: the GFN1-xTB labelling script (real tblite runs on tiny cells), resuming,
failures, the CoRE MOF cache, the label loader and the QMOF loader."""

from __future__ import annotations

import csv
import importlib.util
import json
import lzma
import multiprocessing as mp
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymatgen")
from pymatgen.core import Lattice, Structure

from balora.tasks.mof import data as mof
from balora.tasks.mof.qmof import load_qmof

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "label_mof_band_gaps.py"
HARTREE_TO_EV = 27.211386245988


@pytest.fixture(scope="module")
def script():
    """The labelling script as a module (its import pins the thread variables: restored)."""
    pytest.importorskip("tblite")
    saved = dict(os.environ)
    spec = importlib.util.spec_from_file_location("label_mof_band_gaps", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield module
    sys.modules.pop(spec.name, None)


needs_fork = pytest.mark.skipif(
    "fork" not in mp.get_all_start_methods(), reason="patching a worker needs the fork start"
)


# ── tiny structures ─────────────────────────────────────────────────────────────────────────

WATER = [("O", (0.0, 0.0, 0.0)), ("H", (0.757, 0.586, 0.0)), ("H", (-0.757, 0.586, 0.0))]
H2 = [("H", (0.0, 0.0, 0.0)), ("H", (0.74, 0.0, 0.0))]


def molecule_in_box(atoms, box: float = 6.0) -> Structure:
    """A molecule (Å) centred in a cubic cell of side `box` Å."""
    coords = np.array([xyz for _, xyz in atoms]) + box / 2
    return Structure(Lattice.cubic(box), [s for s, _ in atoms], coords, coords_are_cartesian=True)


def write_cif(folder: Path, name: str, structure: Structure) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.cif"
    structure.to(filename=str(path), fmt="cif")
    return path


@pytest.fixture
def cif_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "cifs"
    write_cif(folder, "h2", molecule_in_box(H2))
    write_cif(folder, "water", molecule_in_box(WATER))
    return folder


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def label(script, cif_dir: Path, output: Path, *extra: str) -> None:
    argv = ["--cif-dir", str(cif_dir), "--output", str(output), "--no-progress", *extra]
    assert script.main(argv) == 0


# ── the band gap from orbital energies ──────────────────────────────────────────────────────


def test_band_gap_restricted_and_unrestricted(script) -> None:
    energies = np.array([-3.0, -2.0, -1.0, 1.0])
    gap, homo, lumo = script.band_gap(energies, np.array([2.0, 2.0, 0.0, 0.0]))
    assert (gap, homo, lumo) == (1.0, -2.0, -1.0)
    # smeared occupations around the Fermi level: the gap still counts electrons (aufbau)
    gap, _, _ = script.band_gap(energies, np.array([2.0, 1.9, 0.1, 0.0]))
    assert gap == 1.0
    # unrestricted, one unpaired electron: alpha fills 3 levels, beta 2
    e2 = np.array([[-3.0, -2.0, -1.5, 1.0], [-2.8, -1.8, -0.5, 1.2]])
    o2 = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    gap, homo, lumo = script.band_gap(e2, o2)
    assert (homo, lumo) == (-1.5, -0.5)
    assert gap == pytest.approx(1.0)
    # the LUMO of one channel below the HOMO of the other: recorded as 0
    o3 = np.array([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert script.band_gap(e2, o3)[0] == 0.0
    with pytest.raises(ValueError, match="share"):
        script.band_gap(energies, o2)


# ── the labelling script: real GFN1-xTB runs ────────────────────────────────────────────────


def test_labels_tiny_cells_with_xtb(script, cif_dir: Path, tmp_path: Path) -> None:
    from tblite.interface import Calculator

    out = tmp_path / "labels.csv"
    label(script, cif_dir, out, "--workers", "2")
    with open(out, newline="") as f:
        assert tuple(next(csv.reader(f))) == (
            *mof.LABEL_COLUMNS,
            *mof.LABEL_DIAGNOSTIC_COLUMNS,
        )
    rows = {r["name"]: r for r in read_rows(out)}
    assert set(rows) == {"h2", "water"}
    assert read_rows(script.failures_path(out)) == []
    water = rows["water"]
    assert (water["n_atoms"], water["elements"], water["method"]) == ("3", "H O", "GFN1-xTB")
    for key in ("Gamma-only", "T_el=300K", "charge=0", "accuracy=1", "spin="):
        assert key in water["settings"]
    assert float(water["seconds"]) > 0
    assert (water["uhf"], water["n_electrons"], water["charge"]) == ("0", "8", "0")
    assert float(water["frac_occ"]) == 0.0
    assert water["gap_q0_ev"] == water["gap_ev"]
    gap = float(water["gap_ev"])
    assert gap == pytest.approx(float(water["lumo_ev"]) - float(water["homo_ev"]), abs=1e-3)
    # reference: the isolated molecule (no cell, restricted), HOMO = 4th of 8 orbitals
    bohr = 1 / 0.529177210903
    calc = Calculator("GFN1-xTB", np.array([8, 1, 1]), np.array([x for _, x in WATER]) * bohr)
    calc.set("verbosity", 0)
    e = calc.singlepoint().get("orbital-energies") * HARTREE_TO_EV
    assert gap == pytest.approx(e[4] - e[3], abs=0.2)  # a 6 Å box barely perturbs water
    assert 5.0 < float(rows["h2"]["gap_ev"]) < 20.0


def test_missing_electrons_from_the_frozen_spectrum(script) -> None:
    # 8 levels (eV) with a 3.4 eV gap above the 5th: 10 electrons fill them up to it
    levels = np.array([-12.0, -11.8, -11.6, -11.5, -11.4, -8.0, -7.9, -7.8]) / HARTREE_TO_EV
    assert script.missing_electrons(levels, 6) == 4  # an anion short of 4 electrons
    assert script.missing_electrons(levels, 12) == -2
    assert script.missing_electrons(levels, 10) == 0  # already at the gap
    flat = np.linspace(-10, -8, 20) / HARTREE_TO_EV  # no clear gap anywhere: leave it
    assert script.missing_electrons(flat, 10) == 0
    far = np.array([-12.0, *np.linspace(-11, -10.5, 15), -2.0]) / HARTREE_TO_EV
    assert script.missing_electrons(far, 2) == 0  # the gap is 30 electrons away
    # the nearest clear gap wins over a wider one further away
    two = np.array([-12.0, -11.9, -10.4, -10.3, -10.2, -6.0]) / HARTREE_TO_EV
    assert script.missing_electrons(two, 2) == 2


def test_auto_charge_fills_a_radical(script, tmp_path: Path) -> None:
    """OH in a box: charge 0 leaves a half-filled pi level (gap ~0); auto makes it OH-."""
    folder = tmp_path / "cifs"
    write_cif(folder, "oh", molecule_in_box([("O", (0, 0, 0)), ("H", (0.97, 0, 0))]))
    auto, zero = tmp_path / "auto.csv", tmp_path / "zero.csv"
    label(script, folder, auto)
    label(script, folder, zero, "--charge", "0")
    (a,), (z,) = read_rows(auto), read_rows(zero)
    assert (z["charge"], z["n_electrons"], z["uhf"]) == ("0", "7", "1")
    assert float(z["frac_occ"]) > 0.4
    assert float(z["gap_ev"]) < 0.1
    assert (a["charge"], a["n_electrons"], a["uhf"]) == ("-1", "8", "0")
    assert float(a["frac_occ"]) == 0.0
    assert float(a["gap_ev"]) > 5
    assert a["gap_q0_ev"] == z["gap_ev"]
    assert "auto" in a["settings"]
    assert "auto" not in z["settings"]


def test_rerun_adds_nothing_and_partial_csv_is_kept(script, cif_dir: Path, tmp_path: Path):
    out = tmp_path / "labels.csv"
    header = ",".join((*mof.LABEL_COLUMNS, *mof.LABEL_DIAGNOSTIC_COLUMNS))
    # an earlier run labelled h2 (a made-up gap, to see it survive) and was killed mid-row
    kept = "h2,2,H,99.0000,GFN1-xTB,earlier,1.00,0,2,0,99.0,-1.0,-14.0,-2.0,0.0000\n"
    out.write_text(header + "\n" + kept + "water,3,H O,9.1")
    label(script, cif_dir, out)
    text = out.read_text()
    assert text.startswith(header + "\n" + kept)  # the earlier row is kept as it was
    rows = read_rows(out)
    assert [r["name"] for r in rows] == ["h2", "water"]  # the half row is gone, water redone
    assert float(rows[1]["gap_ev"]) > 5
    label(script, cif_dir, out)
    assert out.read_text() == text  # nothing new to do


def test_failures_are_recorded_with_reasons(script, tmp_path: Path) -> None:
    folder = tmp_path / "cifs"
    write_cif(folder, "uranium", molecule_in_box([("U", (0, 0, 0)), ("O", (1.8, 0, 0))]))
    write_cif(folder, "water", molecule_in_box(WATER))
    (folder / "broken.cif").write_text("data_broken\n_cell_length_a 5\nnot a cif at all\n")
    out = tmp_path / "labels.csv"
    label(script, folder, out, "--max-iter", "2")  # 2 SCC iterations: water cannot converge
    assert read_rows(out) == []
    failures = {r["name"]: r for r in read_rows(script.failures_path(out))}
    assert set(failures) == {"uranium", "water", "broken"}
    assert "unsupported element(s) U" in failures["uranium"]["reason"]
    assert "SCF not converged" in failures["water"]["reason"]
    assert "unreadable CIF" in failures["broken"]["reason"]
    assert "broken.cif" in failures["broken"]["reason"]
    assert all(float(r["seconds"]) >= 0 for r in failures.values())
    # failures are not retried by default; --retry-failures retries them (water now converges)
    label(script, folder, out)
    assert read_rows(out) == []
    label(script, folder, out, "--retry-failures")
    assert [r["name"] for r in read_rows(out)] == ["water"]


@needs_fork
def test_timeouts_and_crash_are_failures(script, tmp_path: Path, monkeypatch) -> None:
    def misbehave(path, settings):
        name = Path(path).stem
        if name == "crash":
            os._exit(3)
        if name == "busy":
            while True:  # burns CPU time: stopped by the CPU-time limit
                pass
        time.sleep(60)  # burns no CPU time: stopped by the wall-clock limit

    monkeypatch.setattr(script, "label_structure", misbehave)  # inherited by forked workers
    entries = [mof.MofEntry(n, 1, tmp_path / f"{n}.cif") for n in ("sleepy", "busy", "crash")]
    out = tmp_path / "labels.csv"
    start = time.perf_counter()
    n_ok, n_failed = script.run(
        entries, out, script.XtbSettings(), workers=3, timeout=1, wall_timeout=8, progress=False
    )
    assert time.perf_counter() - start < 30
    assert (n_ok, n_failed) == (0, 3)
    failures = {r["name"]: r["reason"] for r in read_rows(script.failures_path(out))}
    assert failures == {
        "sleepy": "timeout: over 8 s of wall time",
        "busy": "timeout: over 1 s of CPU time",
        "crash": "worker died (exit code 3)",
    }


def test_selection_is_seeded_and_resumes_the_same_order(script, tmp_path: Path) -> None:
    entries = [mof.MofEntry(f"m{i:02d}", n, tmp_path / f"m{i:02d}.cif") for i, n in
               enumerate([10, 200, 30, 40, 50, 60, 70, 80, 90, 100, 101, 5])]  # fmt: skip
    first = script.select(entries, max_atoms=100, seed=0, skip=set(), limit=None)
    assert len(first) == 10
    assert all(e.n_atoms <= 100 for e in first)
    assert first == script.select(list(reversed(entries)), max_atoms=100, seed=0, skip=set(),
                                  limit=None)  # fmt: skip
    assert first != script.select(entries, max_atoms=100, seed=1, skip=set(), limit=None)
    done = {e.name for e in first[:4]}
    assert script.select(entries, max_atoms=100, seed=0, skip=done, limit=3) == first[4:7]


def test_a_second_run_on_the_same_output_is_refused(script, cif_dir: Path, tmp_path: Path):
    out = tmp_path / "labels.csv"
    with (
        script.lock_output(out),
        pytest.raises(RuntimeError, match="another labelling run"),
    ):
        label(script, cif_dir, out)
    label(script, cif_dir, out)  # released: runs
    assert len(read_rows(out)) == 2


def test_row_log_refuses_another_schema(script, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("name,gap\nx,1\n")
    with pytest.raises(ValueError, match="expected"):
        script.RowLog(path, script.OUTPUT_COLUMNS)


# ── CIF reading and counting ────────────────────────────────────────────────────────────────

ROCKSALT_CIF = """data_NaCl
_symmetry_space_group_name_H-M   'F m -3 m'
_cell_length_a   5.64
_cell_length_b   5.64
_cell_length_c   5.64
_cell_angle_alpha   90
_cell_angle_beta   90
_cell_angle_gamma   90
loop_
 _symmetry_equiv_pos_as_xyz
 'x, y, z'
 'x, y+1/2, z+1/2'
 'x+1/2, y, z+1/2'
 'x+1/2, y+1/2, z'
loop_
 _atom_site_label
 _atom_site_type_symbol
 _atom_site_fract_x
 _atom_site_fract_y
 _atom_site_fract_z
 Na1 Na 0 0 0
 Cl1 Cl 0.5 0.5 0.5
"""


def test_read_cif_and_count_atoms(tmp_path: Path) -> None:
    path = write_cif(tmp_path, "water", molecule_in_box(WATER))
    structure = mof.read_cif(path)
    assert len(structure) == 3
    assert mof.count_cif_atoms(path) == 3
    # a CIF with symmetry operations: counted from the expanded structure, not its 2 rows
    (tmp_path / "nacl.cif").write_text(ROCKSALT_CIF)
    assert mof.count_cif_atoms(tmp_path / "nacl.cif") == 8


def test_broken_cif_error_names_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.cif"
    broken.write_text("this is not a CIF\n")
    with pytest.raises(ValueError, match=r"broken\.cif"):
        mof.read_cif(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.cif"):
        mof.read_cif(tmp_path / "missing.cif")


# ── the label loader ────────────────────────────────────────────────────────────────────────


def write_labels(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow((*mof.LABEL_COLUMNS, *mof.LABEL_DIAGNOSTIC_COLUMNS))
        for name, n, gap, frac in rows:
            writer.writerow(
                (name, n, "H O", gap, "GFN1-xTB", "s", 1.0, 0, 8, 0, gap, -1, -9, 0, frac)
            )
    return path


def test_load_band_gap_labels(tmp_path: Path, cif_dir: Path) -> None:
    labels = write_labels(tmp_path / "labels.csv", [("water", 3, 9.29, 0.0), ("h2", 2, 11.86, 0.2)])
    data = mof.load_band_gap_labels(labels, cif_dir)
    assert data.names == ["water", "h2"]
    np.testing.assert_allclose(data.gaps_ev, [9.29, 11.86])
    assert data.gaps_ev.dtype == np.float64
    assert data.n_atoms.tolist() == [3, 2]
    assert data.method == "GFN1-xTB"
    assert len(data) == 2
    assert data.sources[0] == cif_dir / "water.cif"
    assert [len(s) for s in data.structures()] == [3, 2]
    assert data.subset([1]).names == ["h2"]
    assert mof.load_band_gap_labels(labels, cif_dir, max_atoms=2).names == ["h2"]
    assert mof.load_band_gap_labels(labels, cif_dir, max_frac_occ=0.01).names == ["water"]


def test_label_loader_errors(tmp_path: Path, cif_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.csv"):
        mof.load_band_gap_labels(tmp_path / "nothere.csv", cif_dir)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty"):
        mof.load_band_gap_labels(tmp_path / "empty.csv", cif_dir)
    header_only = write_labels(tmp_path / "header.csv", [])
    with pytest.raises(ValueError, match="no rows"):
        mof.load_band_gap_labels(header_only, cif_dir)
    (tmp_path / "wrong.csv").write_text("id,gap\nx,1\n")
    with pytest.raises(ValueError, match="missing column"):
        mof.load_band_gap_labels(tmp_path / "wrong.csv", cif_dir)
    orphan = write_labels(tmp_path / "orphan.csv", [("ghost", 3, 1.0, 0.0)])
    with pytest.raises(FileNotFoundError, match=r"ghost\.cif"):
        mof.load_band_gap_labels(orphan, cif_dir)
    bad = write_labels(tmp_path / "bad.csv", [("water", 3, "n/a", 0.0)])
    with pytest.raises(ValueError, match=r"bad\.csv:2: gap_ev"):
        mof.load_band_gap_labels(bad, cif_dir)


def test_shipped_labels_match_the_schema() -> None:
    path = mof.default_labels_path()
    if not path.is_file():
        pytest.skip(f"{path} not generated yet")
    rows = mof.read_label_rows(path)
    with open(path, newline="") as f:
        assert tuple(next(csv.reader(f))) == (*mof.LABEL_COLUMNS, *mof.LABEL_DIAGNOSTIC_COLUMNS)
    assert all(float(r["gap_ev"]) >= 0 and int(r["n_atoms"]) <= 100 for r in rows)
    assert len({r["name"] for r in rows}) == len(rows)


# ── the CoRE MOF cache ──────────────────────────────────────────────────────────────────────


def fake_archive(path: Path, cifs: dict[str, Structure]) -> Path:
    """A CoRE-MOF-like .tar.xz: CIFs under a folder, a macOS resource fork, an empty file."""
    staging = path.parent / "staging"
    for name, structure in cifs.items():
        write_cif(staging / "core", name, structure)
    (staging / "core" / "._water.cif").write_bytes(b"\x00\x05junk")
    (staging / "core" / "empty.cif").write_bytes(b"")
    with lzma.open(path, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        tar.add(staging / "core", arcname="core")
    return path


def test_core_mof_cache_extracts_once_and_indexes(tmp_path: Path, monkeypatch) -> None:
    archive = fake_archive(
        tmp_path / "2019-ASR.tar.xz",
        {"water": molecule_in_box(WATER), "h2": molecule_in_box(H2)},
    )
    monkeypatch.setattr(mof, "core_mof_archive", lambda dataset: archive)
    cache = tmp_path / "cache"
    root = mof.core_mof_dir(cache_dir=cache)
    assert root == cache / "core-mof" / "2019-ASR"
    assert sorted(p.name for p in root.iterdir()) == ["h2.cif", "water.cif"]
    assert sorted(p.name for p in root.parent.iterdir()) == ["2019-ASR"]  # no temp folder left
    index = mof.core_mof_index(cache_dir=cache)
    assert [(e.name, e.n_atoms) for e in index] == [("h2", 2), ("water", 3)]
    assert (root.parent / "2019-ASR.index.csv").read_text() == "name,n_atoms\nh2,2\nwater,3\n"
    archive.unlink()  # both are reused from the cache now
    assert mof.core_mof_dir(cache_dir=cache) == root
    assert mof.core_mof_index(cache_dir=cache) == index
    with pytest.raises(ValueError, match="unknown CoRE MOF dataset"):
        mof.core_mof_dir("2020", cache_dir=cache)


def test_core_mof_archive_missing_package_is_explained(monkeypatch) -> None:
    monkeypatch.setattr(mof, "CORE_MOF_MODULE", "no_such_module_xyz")
    monkeypatch.setattr(mof, "CORE_MOF_DISTRIBUTION", "no-such-distribution-xyz")
    with pytest.raises(FileNotFoundError, match="pip install no-such-distribution-xyz"):
        mof.core_mof_archive()


@pytest.mark.slow
def test_real_core_mof_archive(tmp_path: Path) -> None:
    """The 12,020 CIFs of core-mof 2019-ASR: about 5 s to extract and 10 s to index."""
    try:
        mof.core_mof_archive()
    except FileNotFoundError:
        pytest.skip("core-mof is not installed")
    index = mof.core_mof_index(cache_dir=tmp_path)
    assert len(index) == 12020
    small = [e for e in index if e.n_atoms <= 100]
    assert len(small) == 2775
    assert len(mof.read_cif(small[0].path)) == small[0].n_atoms


# ── QMOF ────────────────────────────────────────────────────────────────────────────────────


def qmof_records() -> list[dict]:
    """Three records as QMOF's qmof.json nests them (one without a PBE gap)."""
    return [
        {"qmof_id": "qmof-0a1b2c3", "name": "WATERX_FSR", "info": {"natoms": 3},
         "outputs": {"pbe": {"bandgap": 5.1, "cbm": 1.0, "vbm": -4.1}}},
        {"qmof_id": "qmof-4d5e6f7", "name": "HYDROG", "info": {"natoms": 2},
         "outputs": {"pbe": {"bandgap": 7.25}}},
        {"qmof_id": "qmof-8a9b0c1", "name": "NOGAP", "info": {"natoms": 2},
         "outputs": {"pbe": {"bandgap": None}}},
    ]  # fmt: skip


STRUCTURES = {
    "qmof-0a1b2c3": WATER,
    "qmof-4d5e6f7": H2,
    "qmof-8a9b0c1": H2,
}


@pytest.mark.parametrize("layout", ["json+cifs", "csv+cifs", "json+structure_data"])
def test_load_qmof(tmp_path: Path, layout: str) -> None:
    table, structures = layout.split("+")
    records = qmof_records()
    if table == "json":
        (tmp_path / "qmof.json").write_text(json.dumps(records))
    else:  # qmof.csv: the same table flattened with dotted column names
        with open(tmp_path / "qmof.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["qmof_id", "name", "info.natoms", "outputs.pbe.bandgap"])
            for r in records:
                gap = r["outputs"]["pbe"]["bandgap"]
                writer.writerow(
                    [r["qmof_id"], r["name"], r["info"]["natoms"], "" if gap is None else gap]
                )
    if structures == "cifs":
        for qmof_id, atoms in STRUCTURES.items():
            write_cif(tmp_path / "relaxed_structures", qmof_id, molecule_in_box(atoms))
    else:
        data = [
            {"qmof_id": q, "name": q, "structure": molecule_in_box(a).as_dict()}
            for q, a in STRUCTURES.items()
        ]
        (tmp_path / "qmof_structure_data.json").write_text(json.dumps(data))
    data = load_qmof(tmp_path)
    assert data.names == ["qmof-0a1b2c3", "qmof-4d5e6f7"]  # the row without a gap is skipped
    np.testing.assert_allclose(data.gaps_ev, [5.1, 7.25])
    assert data.n_atoms.tolist() == [3, 2]
    assert data.method == "PBE (QMOF)"
    assert [s.composition.reduced_formula for s in data.structures()] == ["H2O", "H2"]
    assert load_qmof(tmp_path / f"qmof.{table}", max_atoms=2).names == ["qmof-4d5e6f7"]


def test_load_qmof_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no qmof\.csv or qmof\.json"):
        load_qmof(tmp_path)
    (tmp_path / "qmof.json").write_text("")
    with pytest.raises(ValueError, match="empty"):
        load_qmof(tmp_path)
    (tmp_path / "qmof.json").write_text(json.dumps(qmof_records()))
    with pytest.raises(FileNotFoundError, match="relaxed_structures"):
        load_qmof(tmp_path)
    write_cif(tmp_path / "relaxed_structures", "qmof-0a1b2c3", molecule_in_box(WATER))
    with pytest.raises(FileNotFoundError, match="qmof-4d5e6f7"):
        load_qmof(tmp_path)
    (tmp_path / "qmof.json").write_text(json.dumps([{"qmof_id": "x", "bandgap": 1}]))
    with pytest.raises(ValueError, match=r"outputs\.pbe\.bandgap"):
        load_qmof(tmp_path)
