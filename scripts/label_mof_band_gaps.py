"""Label MOF band gaps with periodic GFN1-xTB (tblite): resumable, parallel, failures recorded.

    python scripts/label_mof_band_gaps.py --output labels.csv [--max-atoms 100] [--workers 4]
        [--limit N] [--timeout 600] [--seed 0] [--cif-dir DIR | --dataset 2019-ASR]

What it labels: the CoRE MOF 2019 structures (``core-mof==2019.1``, extracted once into the
balora cache) with at most ``--max-atoms`` atoms per cell, in a seeded random order (sorted
names, then ``numpy.random.default_rng(seed).permutation``), so that any prefix of the output is
a random sample. ``--cif-dir`` labels the ``*.cif`` files of a folder instead.

Settings (the ``settings`` column repeats them on every row):

* Hamiltonian: GFN1-xTB (Grimme, Bannwarth, Shushkov, JCTC 13, 1989 (2017)) as implemented in
  tblite, periodic in 3-D with the cell of the CIF; no geometry relaxation.
* k-points: the Γ point only (tblite has no k-point sampling, tblite/tblite#4), so the gap is the
  gap of the Γ-point eigenvalues of the CIF's cell. Many MOFs have nearly flat bands, but in small
  cells (a lattice vector under ~10 Å) this can differ from the gap of a k-converged calculation.
* Electronic temperature 300 K (Fermi smearing, tblite's default), SCC accuracy 1.0, at most 250
  SCC iterations, Broyden mixing (tblite defaults).
* Charge: 0, except with ``--charge auto`` (the default) where the charge-0 state has partially
  filled levels at the Fermi level (``frac_occ`` > 0.01). Many CoRE MOF "all solvent removed"
  frameworks lost their counter-ions with the solvent and are short of (or have extra) electrons;
  `missing_electrons` reads the number off the charge-0 closed-shell spectrum (the smallest
  shift, within ±8 electrons, that fills it up to a gap of at least 1 eV), and the structure is
  computed again with that total charge (tblite neutralises a charged cell with a uniform
  background). The charged state is kept only if it has no partial occupations; the ``charge``
  column says which charge the gap belongs to and ``gap_q0_ev`` keeps the charge-0 gap. Not for
  structures with open-shell 3d metals, where a closed shell could also be reached by changing
  the metals' oxidation state; those keep charge 0.
* Spin: the minimal-spin state is a closed-shell (restricted) calculation when the xTB
  valence-electron count is even, else an unrestricted one (tblite's ``spin-polarization``
  term) with one unpaired electron. Where the metals have open 3d shells the structure is also
  computed unrestricted with a high-spin ferromagnetic guess (`HIGH_SPIN_UNPAIRED` per metal
  atom, parity-adjusted), and the lower-energy converged state is kept; its number of unpaired
  electrons is the ``uhf`` column. (QMOF's PBE calculations likewise start from high-spin
  ferromagnetic moments.) Without the high-spin state, open-shell MOFs come out with
  fractionally filled d levels at the Fermi level and a gap near 0.
* Band gap: the aufbau gap of the chosen state, LUMO − HOMO over both spin channels, where in
  each channel the lowest N_σ orbitals are occupied (N_σ = that channel's electron count); tblite
  returns orbital energies in Hartree, converted with `HARTREE_TO_EV`. A negative value (the
  LUMO of one channel below the HOMO of the other) is recorded as 0.

Output: a CSV with the columns ``name, n_atoms, elements, gap_ev, method, settings, seconds``
followed by the diagnostics ``uhf, n_electrons, charge, gap_q0_ev, energy_eh, homo_ev, lumo_ev,
frac_occ`` (``frac_occ``: the largest distance of a per-spin orbital occupation from 0 or 1;
above 0.01 the Fermi level sits in partially filled levels, typical of a structure with missing
hydrogens or counter-ions, or of a wrong spin state: treat those gaps as unreliable). Failures
(SCF not converged, timeout, unsupported element, unreadable CIF, worker crash) go to
``<output stem>.failures.csv`` (``name, n_atoms, reason, seconds``).

Resuming: rerun the same command. MOFs already in the output or the failures file are skipped
(``--retry-failures`` tries the failed ones again); every row is written with one ``write`` and
flushed, and a partial last line left by a crash is cut off on start, so an interrupted run loses
at most the MOFs in flight. Each worker is a forked process running one MOF with one thread;
it is stopped after ``--timeout`` seconds of CPU time (a limit that a busy machine does not
trip early) or ``--wall-timeout`` seconds of wall time.
"""

from __future__ import annotations

import os

# One thread per worker process: parallelism comes from --workers. Set before numpy / tblite
# load their OpenMP / BLAS runtimes.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import csv  # noqa: E402
import dataclasses  # noqa: E402
import importlib.metadata  # noqa: E402
import io  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from multiprocessing.connection import Connection, wait  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Any  # noqa: E402

import numpy as np  # noqa: E402

from balora.tasks.mof import (  # noqa: E402
    CORE_MOF_DATASETS,
    DEFAULT_CORE_MOF_DATASET,
    LABEL_COLUMNS,
    LABEL_DIAGNOSTIC_COLUMNS,
    MofEntry,
    core_mof_index,
    count_cif_atoms,
    read_cif,
)

HARTREE_TO_EV = 27.211386245988
"""eV per Hartree (CODATA 2018): tblite returns energies in Hartree."""
BOHR_PER_ANGSTROM = 1.0 / 0.529177210903
"""Bohr per Ångström (CODATA 2018 Bohr radius): tblite takes positions in Bohr."""
BOLTZMANN_HARTREE_PER_KELVIN = 3.166811563455546e-6
"""k_B in Hartree per Kelvin (CODATA 2018): tblite takes the electronic temperature in Hartree."""
GFN1_MAX_Z = 86
"""GFN1-xTB is parametrised for H to Rn."""
METHOD = "GFN1-xTB"

HIGH_SPIN_UNPAIRED: dict[str, int] = {
    "Ti": 1,  # Ti(III) d1
    "V": 2,  # V(III) d2
    "Cr": 3,  # Cr(III) d3
    "Mn": 5,  # Mn(II) d5
    "Fe": 5,  # Fe(III) d5 (Fe(II) high spin: 4)
    "Co": 3,  # Co(II) d7 high spin
    "Ni": 2,  # Ni(II) d8
    "Cu": 1,  # Cu(II) d9
}
"""Unpaired electrons per atom in the high-spin guess: 3d metals at a common MOF oxidation state.
Other elements (d0 / d10 metals, 4d / 5d metals, lanthanides, whose f shell GFN1-xTB keeps in
the core) add none."""

FAILURE_COLUMNS: tuple[str, ...] = ("name", "n_atoms", "reason", "seconds")
FRACTIONAL_LIMIT = 0.01
"""A state whose largest per-spin occupation is further than this from 0 or 1 has partially
filled levels at the Fermi level (``frac_occ`` above it)."""
MAX_CHARGE_SHIFT = 8
"""The automatic charge adds or removes at most this many electrons per cell."""
MIN_FROZEN_GAP_EV = 1.0
"""The automatic charge fills the charge-0 spectrum up to a gap at least this wide."""


@dataclass(frozen=True)
class XtbSettings:
    """The tblite settings of a run; `describe` is what the ``settings`` column holds."""

    electronic_temperature_k: float = 300.0
    accuracy: float = 1.0
    max_iter: int = 250
    high_spin: bool = True
    auto_charge: bool = True

    def describe(self) -> str:
        spin = "closed shell if even electrons else unrestricted uhf=1"
        if self.high_spin:
            spin += " or unrestricted high-spin guess for open-shell 3d metals (lower energy)"
        charge = "0"
        if self.auto_charge:
            charge += (
                f" or auto (+-{MAX_CHARGE_SHIFT} e; where charge 0 leaves partial occupations)"
            )
        return (
            f"k-points=Gamma-only; T_el={self.electronic_temperature_k:g}K Fermi smearing; "
            f"accuracy={self.accuracy:g}; max_iter={self.max_iter}; charge={charge}; "
            f"spin={spin}; tblite {_tblite_version()}"
        )


@dataclass(frozen=True)
class Label:
    """One labelled structure (the non-name columns of an output row)."""

    n_atoms: int
    elements: str
    gap_ev: float
    uhf: int
    n_electrons: int
    charge: int
    gap_q0_ev: float
    energy_eh: float
    homo_ev: float
    lumo_ev: float
    frac_occ: float


class LabelError(RuntimeError):
    """A structure that cannot be labelled; the message is the recorded reason."""


def _tblite_version() -> str:
    try:
        return importlib.metadata.version("tblite")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ── the band gap ────────────────────────────────────────────────────────────────────────────


def _channels(energies: np.ndarray, occupations: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """``(orbital energies, electrons)`` per spin channel."""
    if energies.ndim == 1:  # restricted: occupations up to 2, both channels share the levels
        n = round(float(occupations.sum()))
        return [(energies, (n + 1) // 2), (energies, n // 2)]
    return [(e, round(float(o.sum()))) for e, o in zip(energies, occupations, strict=True)]


def band_gap(energies: np.ndarray, occupations: np.ndarray) -> tuple[float, float, float]:
    """``(gap, homo, lumo)`` in the units of `energies`, by aufbau filling of each spin channel.

    `energies` and `occupations` are tblite's ``orbital-energies`` / ``orbital-occupations``:
    shape ``(norb,)`` for a restricted calculation (occupations in [0, 2]) or ``(2, norb)`` for
    an unrestricted one (occupations in [0, 1]). The gap is clipped at 0.
    """
    energies = np.asarray(energies, dtype=np.float64)
    occupations = np.asarray(occupations, dtype=np.float64)
    if energies.shape != occupations.shape or energies.ndim not in (1, 2):
        raise ValueError(
            f"orbital energies {energies.shape} and occupations {occupations.shape} must share "
            "a shape (norb,) or (2, norb)"
        )
    homos, lumos = [], []
    for e, n in _channels(energies, occupations):
        e = np.sort(e)
        if n > 0:
            homos.append(e[n - 1])
        if n < len(e):
            lumos.append(e[n])
    if not homos or not lumos:
        raise LabelError("no occupied or no virtual orbital: cannot define a gap")
    homo, lumo = max(homos), min(lumos)
    return max(lumo - homo, 0.0), homo, lumo


def frac_occ(occupations: np.ndarray) -> float:
    """Largest distance of a per-spin occupation from an integer (0 for an insulator)."""
    occupations = np.asarray(occupations, dtype=np.float64)
    occ = occupations / 2.0 if occupations.ndim == 1 else occupations
    return float(np.abs(occ - np.round(occ)).max())


def missing_electrons(energies: np.ndarray, n_electrons: int) -> int:
    """Electrons to add (negative: remove) so that a closed shell fills the restricted
    spectrum `energies` (Hartree) up to its nearest gap of at least `MIN_FROZEN_GAP_EV`, within
    `MAX_CHARGE_SHIFT` electrons (of two equally near, the wider); 0 where there is none.

    A framework whose counter-ions were removed with the solvent (CoRE MOF's ASR set) is short
    of exactly the electrons the ions gave it: its charge-0 Fermi level sits inside a band
    (partial occupations, gap near 0) with a clear gap a few electrons away. Filling to that
    gap is the framework with its ions' electrons, the ions replaced by the uniform background
    of a charged periodic cell.
    """
    e = np.sort(np.asarray(energies, dtype=np.float64).reshape(-1)) * HARTREE_TO_EV
    for distance in range(MAX_CHARGE_SHIFT + 1):
        gaps = {}
        for shift in {distance, -distance}:
            n = n_electrons + shift
            if n % 2 == 0 and n > 0 and n // 2 < len(e):
                gaps[shift] = e[n // 2] - e[n // 2 - 1]
        wide = {k: g for k, g in gaps.items() if g >= MIN_FROZEN_GAP_EV}
        if wide:
            return max(wide, key=lambda k: wide[k])
    return 0


# ── one structure ───────────────────────────────────────────────────────────────────────────


def _electrons(result: Any) -> int:
    return round(float(np.asarray(result.get("orbital-occupations")).sum()))


def _frac_occ(result: Any) -> float:
    return frac_occ(result.get("orbital-occupations"))


def _singlepoint(numbers: np.ndarray, positions: np.ndarray, lattice: np.ndarray,
                 settings: XtbSettings, charge: int, uhf: int | None,
                 spin_polarized: bool) -> Any:  # fmt: skip
    from tblite.interface import Calculator

    calc = Calculator(
        METHOD,
        numbers,
        positions,
        charge=float(charge),
        uhf=uhf,
        lattice=lattice,
        periodic=np.array([True, True, True]),
    )
    calc.set("verbosity", 0)
    calc.set("accuracy", settings.accuracy)
    calc.set("max-iter", settings.max_iter)
    calc.set("temperature", settings.electronic_temperature_k * BOLTZMANN_HARTREE_PER_KELVIN)
    if spin_polarized:
        calc.add("spin-polarization")
    return calc.singlepoint()


def label_structure(path: str | os.PathLike[str], settings: XtbSettings) -> Label:
    """GFN1-xTB band gap of the structure in a CIF file; `LabelError` says why it failed."""
    from tblite.exceptions import TBLiteRuntimeError, TBLiteValueError

    try:
        structure = read_cif(path)
    except (OSError, ValueError) as e:
        raise LabelError(f"unreadable CIF: {e}") from e
    if not structure.is_ordered:
        raise LabelError("disordered structure (partial occupancies)")
    symbols = sorted({site.specie.symbol for site in structure})
    numbers = np.array(structure.atomic_numbers, dtype=np.int32)
    unsupported = sorted({s.specie.symbol for s in structure if s.specie.Z > GFN1_MAX_Z})
    if unsupported:
        raise LabelError(f"unsupported element(s) {' '.join(unsupported)} (GFN1-xTB: Z <= 86)")
    positions = structure.cart_coords * BOHR_PER_ANGSTROM
    lattice = structure.lattice.matrix * BOHR_PER_ANGSTROM

    high = sum(HIGH_SPIN_UNPAIRED.get(s.specie.symbol, 0) for s in structure)
    errors: list[str] = []

    def states(charge: int) -> tuple[dict[int, Any], Any]:
        """Converged states at one total charge by unpaired electrons (their energies are
        comparable: the spin term vanishes for a closed shell), and the restricted run."""
        found: dict[int, Any] = {}

        def attempt(uhf: int | None, spin_polarized: bool) -> Any:
            try:
                return _singlepoint(
                    numbers, positions, lattice, settings, charge, uhf, spin_polarized
                )
            except (TBLiteRuntimeError, TBLiteValueError) as e:
                kind = "unrestricted" if spin_polarized else "restricted"
                where = f"charge={charge} {kind} uhf={'minimal' if uhf is None else uhf}"
                errors.append(f"{where}: {e}")
                return None

        n_electrons: int | None = None
        closed = attempt(None, False)  # the cheap closed-shell run, which counts electrons
        if closed is not None:
            n_electrons = _electrons(closed)
            if n_electrons % 2 == 0:
                found[0] = closed
        if closed is None or n_electrons % 2:  # odd, or no closed-shell SCF: one unpaired
            minimal = attempt(None, True)
            if minimal is not None:
                n_electrons = _electrons(minimal)
                found[n_electrons % 2] = minimal
        if settings.high_spin and high > 1:
            # n_alpha - n_beta must have the parity of the electron count (unknown if both runs
            # above failed: then try both parities)
            parity = [high, high - 1] if n_electrons is None else [high - (high - n_electrons) % 2]
            for uhf in parity:
                if uhf > 1 and (state := attempt(uhf, True)) is not None:
                    found[uhf] = state
                    break
        return found, closed

    found, closed = states(0)
    if not found:
        raise LabelError("; ".join(errors))
    uhf = min(found, key=lambda k: found[k].get("energy"))
    best, charge = found[uhf], 0
    gap_q0 = band_gap(best.get("orbital-energies"), best.get("orbital-occupations"))[0]
    # open 3d shells: a closed shell could be reached by changing the metals' oxidation state
    # (filling a ligand-field gap) instead of restoring removed ions, so no automatic charge
    open_shell_metals = high > 1
    if (
        settings.auto_charge
        and not open_shell_metals
        and _frac_occ(best) > FRACTIONAL_LIMIT
        and closed is not None
    ):
        shift = missing_electrons(closed.get("orbital-energies"), _electrons(closed))
        if shift:
            charged, _ = states(-shift)
            if charged:
                k = min(charged, key=lambda k: charged[k].get("energy"))
                if _frac_occ(charged[k]) <= FRACTIONAL_LIMIT:
                    uhf, best, charge = k, charged[k], -shift
    gap, homo, lumo = band_gap(best.get("orbital-energies"), best.get("orbital-occupations"))
    return Label(
        n_atoms=len(structure),
        elements=" ".join(symbols),
        gap_ev=gap * HARTREE_TO_EV,
        uhf=uhf,
        n_electrons=_electrons(best),
        charge=charge,
        gap_q0_ev=gap_q0 * HARTREE_TO_EV,
        energy_eh=float(best.get("energy")),
        homo_ev=homo * HARTREE_TO_EV,
        lumo_ev=lumo * HARTREE_TO_EV,
        frac_occ=_frac_occ(best),
    )


# ── CSV files: append one whole row at a time ───────────────────────────────────────────────


OUTPUT_COLUMNS: tuple[str, ...] = (*LABEL_COLUMNS, *LABEL_DIAGNOSTIC_COLUMNS)


def failures_path(output: Path) -> Path:
    """``labels.csv`` -> ``labels.failures.csv``."""
    return output.with_name(f"{output.stem}.failures{output.suffix or '.csv'}")


def cut_partial_row(path: Path) -> None:
    """Drop a half-written last line (a run killed mid-write) from a CSV file."""
    if not path.is_file():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def recorded_names(path: Path) -> set[str]:
    """The names in a label or failures CSV (after cutting off a partial last row)."""
    cut_partial_row(path)
    if not path.is_file() or path.stat().st_size == 0:
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {row["name"] for row in csv.DictReader(f) if row.get("name")}


def lock_output(path: Path) -> IO[bytes]:
    """An open handle on `path` holding an exclusive lock (POSIX ``flock``), so that a second
    run on the same output stops at once instead of interleaving rows; close it to release."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "ab")  # noqa: SIM115
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RuntimeError(f"another labelling run is writing {path}; stop it first") from None
    return handle


class RowLog:
    """An append-only CSV: opened with its header checked, a partial last line cut off; each
    row is written with a single ``write`` call, then flushed and fsynced."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path = path
        self.columns = tuple(columns)
        self.names: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        cut_partial_row(path)
        if path.is_file() and path.stat().st_size > 0:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = tuple(next(reader, ()))
                if header != self.columns:
                    raise ValueError(
                        f"{path} has columns {list(header)}, expected {list(self.columns)}: "
                        "write to another file"
                    )
                self.names = {row[0] for row in reader if row}
            self._file = open(path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        else:
            self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._write(self.columns)

    def _write(self, values: Sequence[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(values)
        self._file.write(buf.getvalue())
        self._file.flush()
        os.fsync(self._file.fileno())

    def append(self, values: Sequence[Any]) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{len(values)} values for columns {list(self.columns)}")
        self._write(values)
        self.names.add(str(values[0]))

    def close(self) -> None:
        self._file.close()


# ── the pool: one forked process per structure, so a timeout can kill it ───────────────────


def _worker(conn: Connection, path: str, settings: XtbSettings, cpu_limit: float) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the parent's handler (see `main`)
    try:
        import resource

        # the kernel stops the process (SIGXCPU) after `cpu_limit` s of CPU time: a limit that
        # does not fire early when the machine is busy, as a wall-clock one would
        seconds = max(1, math.ceil(cpu_limit))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 5))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # and no core file for it
    except (ImportError, ValueError, OSError):
        pass  # not POSIX: only the wall-clock limit applies
    start = time.perf_counter()
    try:
        status, payload = "ok", dataclasses.asdict(label_structure(path, settings))
    except LabelError as e:
        status, payload = "fail", str(e) or type(e).__name__
    except Exception as e:  # anything else is recorded, not raised: the run goes on
        status, payload = "fail", f"{type(e).__name__}: {e}"
    conn.send((status, payload, time.perf_counter() - start))
    conn.close()


@dataclass
class _Job:
    entry: MofEntry
    process: Any
    conn: Connection
    start: float


def _context() -> Any:
    methods = mp.get_all_start_methods()
    return mp.get_context("fork" if "fork" in methods else "spawn")


def run(
    entries: Sequence[MofEntry],
    output: Path,
    settings: XtbSettings,
    *,
    workers: int = 1,
    timeout: float = 600.0,
    wall_timeout: float = 7200.0,
    progress: bool = True,
) -> tuple[int, int]:
    """Label `entries` (already filtered for resuming) into `output`; ``(labelled, failed)``.

    A worker is stopped after `timeout` seconds of CPU time or `wall_timeout` seconds of wall
    time, whichever comes first; both are recorded as failures.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    labels = RowLog(output, OUTPUT_COLUMNS)
    failures = RowLog(failures_path(output), FAILURE_COLUMNS)
    description = settings.describe()
    ctx = _context()
    pending = list(reversed(entries))
    running: list[_Job] = []
    n_ok = n_failed = 0
    bar = tqdm(total=len(entries), unit="mof", disable=not progress, smoothing=0.05)

    def finish(job: _Job, status: str, payload: Any, seconds: float) -> None:
        nonlocal n_ok, n_failed
        job.conn.close()
        job.process.join(timeout=5)
        if status == "ok":
            lab = Label(**payload)
            labels.append(
                (job.entry.name, lab.n_atoms, lab.elements, f"{lab.gap_ev:.4f}", METHOD,
                 description, f"{seconds:.2f}", lab.uhf, lab.n_electrons, lab.charge,
                 f"{lab.gap_q0_ev:.4f}",
                 f"{lab.energy_eh:.8f}", f"{lab.homo_ev:.4f}", f"{lab.lumo_ev:.4f}",
                 f"{lab.frac_occ:.4f}")
            )  # fmt: skip
            n_ok += 1
        else:
            reason = " ".join(str(payload).split())  # one line per row, always
            failures.append((job.entry.name, job.entry.n_atoms, reason, f"{seconds:.2f}"))
            n_failed += 1
        bar.update(1)
        bar.set_postfix(ok=n_ok, failed=n_failed)

    try:
        while pending or running:
            while pending and len(running) < workers:
                entry = pending.pop()
                receive, send = ctx.Pipe(duplex=False)
                process = ctx.Process(
                    target=_worker, args=(send, str(entry.path), settings, timeout), daemon=True
                )
                process.start()
                send.close()  # the child holds the only write end: EOF once it is gone
                running.append(_Job(entry, process, receive, time.perf_counter()))
            wait([job.conn for job in running], timeout=0.5)
            for job in list(running):
                elapsed = time.perf_counter() - job.start
                if job.conn.poll():
                    try:
                        status, payload, seconds = job.conn.recv()
                    except EOFError:
                        job.process.join(timeout=5)
                        code = job.process.exitcode
                        reason = f"worker died (exit code {code})"
                        if code == -getattr(signal, "SIGXCPU", 0):
                            reason = f"timeout: over {timeout:g} s of CPU time"
                        status, payload, seconds = "fail", reason, elapsed
                elif elapsed > wall_timeout:
                    job.process.kill()
                    reason = f"timeout: over {wall_timeout:g} s of wall time"
                    status, payload, seconds = "fail", reason, elapsed
                else:
                    continue
                running.remove(job)
                finish(job, status, payload, seconds)
    finally:
        for job in running:  # interrupted: in-flight structures are simply not recorded
            job.process.kill()
            job.process.join(timeout=5)
        bar.close()
        labels.close()
        failures.close()
    return n_ok, n_failed


# ── selection and the command line ──────────────────────────────────────────────────────────


def folder_entries(cif_dir: Path) -> list[MofEntry]:
    """Every ``*.cif`` of a folder with its atom count (0 where the CIF cannot be read)."""
    paths = sorted(cif_dir.glob("*.cif"))
    if not paths:
        raise FileNotFoundError(f"no *.cif files in {cif_dir}")
    entries = []
    for path in paths:
        try:
            n = count_cif_atoms(path)
        except ValueError:
            n = 0
        entries.append(MofEntry(path.stem, n, path))
    return entries


def select(
    entries: Sequence[MofEntry], *, max_atoms: int, seed: int, skip: set[str], limit: int | None
) -> list[MofEntry]:
    """Entries with at most `max_atoms` atoms, in a seeded random order, less `skip`, first
    `limit`. The order depends on the seed and the set of names only, so a resumed run
    continues the same sequence."""
    chosen = sorted((e for e in entries if e.n_atoms <= max_atoms), key=lambda e: e.name)
    order = np.random.default_rng(seed).permutation(len(chosen))
    todo = [chosen[i] for i in order if chosen[i].name not in skip]
    return todo if limit is None else todo[:limit]


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n", 1)[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output", type=Path, required=True, help="label CSV (appended to)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--cif-dir", type=Path, help="label the *.cif files of this folder")
    source.add_argument(
        "--dataset", default=DEFAULT_CORE_MOF_DATASET, choices=CORE_MOF_DATASETS,
        help="CoRE MOF archive of the core-mof package",
    )  # fmt: skip
    parser.add_argument("--cache-dir", type=Path, help="default: $BALORA_CACHE or ~/.cache/balora")
    parser.add_argument("--max-atoms", type=int, default=100, help="largest cell labelled")
    parser.add_argument("--seed", type=int, default=0, help="seed of the labelling order")
    parser.add_argument("--limit", type=int, help="label at most this many MOFs in this run")
    parser.add_argument("--workers", type=int, default=1, help="processes (one thread each)")
    parser.add_argument("--timeout", type=float, default=600.0, help="CPU seconds per MOF")
    parser.add_argument(
        "--wall-timeout", type=float, default=7200.0,
        help="wall-clock seconds per MOF (a busy machine stretches wall time, not CPU time)",
    )  # fmt: skip
    parser.add_argument("--temperature", type=float, default=300.0, help="electronic T in K")
    parser.add_argument("--accuracy", type=float, default=1.0, help="tblite SCC accuracy")
    parser.add_argument("--max-iter", type=int, default=250, help="SCC iterations")
    parser.add_argument(
        "--no-high-spin", action="store_true",
        help="only the minimal-spin state (no high-spin guess for open-shell 3d metals)",
    )  # fmt: skip
    parser.add_argument(
        "--charge", choices=("auto", "0"), default="auto",
        help="auto: where charge 0 leaves partially filled levels, also try the charge that "
        "fills the spectrum to its nearest clear gap (removed counter-ions)",
    )  # fmt: skip
    parser.add_argument(
        "--retry-failures", action="store_true", help="try MOFs in the failures file again"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.limit is not None and args.limit < 0:
        raise SystemExit(f"--limit must be >= 0, got {args.limit}")
    import tblite.interface  # noqa: F401  (imported once here, inherited by forked workers)

    settings = XtbSettings(
        electronic_temperature_k=args.temperature,
        accuracy=args.accuracy,
        max_iter=args.max_iter,
        high_spin=not args.no_high_spin,
        auto_charge=args.charge == "auto",
    )
    if args.cif_dir is not None:
        entries = folder_entries(args.cif_dir)
    else:
        entries = core_mof_index(args.dataset, args.cache_dir, progress=not args.no_progress)
    with lock_output(args.output):
        return _label(args, settings, entries)


def _label(args: argparse.Namespace, settings: XtbSettings, entries: list[MofEntry]) -> int:
    skip = recorded_names(args.output)
    if not args.retry_failures:
        skip |= recorded_names(failures_path(args.output))
    todo = select(entries, max_atoms=args.max_atoms, seed=args.seed, skip=skip, limit=args.limit)
    print(
        f"{len(todo)} MOFs to label ({len(skip)} already done or failed; "
        f"at most {args.max_atoms} atoms; {settings.describe()})",
        file=sys.stderr,
        flush=True,
    )
    main_thread = threading.current_thread() is threading.main_thread()
    if main_thread:  # `kill PID` unwinds like Ctrl-C: in-flight workers killed, no half rows
        previous = signal.signal(signal.SIGTERM, _terminate)
    start = time.perf_counter()
    try:
        n_ok, n_failed = run(
            todo,
            args.output,
            settings,
            workers=args.workers,
            timeout=args.timeout,
            wall_timeout=args.wall_timeout,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to resume ({args.output})", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    minutes = (time.perf_counter() - start) / 60
    rate = (n_ok + n_failed) / minutes if minutes > 0 else float("nan")
    print(
        f"labelled {n_ok}, failed {n_failed} in {minutes:.1f} min ({rate:.2f} MOFs/min) -> "
        f"{args.output}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
