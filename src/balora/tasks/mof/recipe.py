"""The MOF band-gap recipe: CHGNet or CGCNN with adapters and a Gaussian head on labelled
MOF structures (default: the CoRE MOF GFN1-xTB labels that ship with balora).

    label CSV / QMOF ─► MofDataset (data.py) ─► structures ─► graphs (graphs.py)
        ─► random or size-shift split ─► Data ─► CHGNetRegressor / CGCNNRegressor
           (chgnet.py / cgcnn.py) ─► (b, 2) = (mean gap, log σ²) in eV

Default adapters: the later blocks' linear layers (docs/mof.md says why); the new head(s)
train with them.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from balora.dataset import Data
from balora.errors import UserError
from balora.predict import Prediction
from balora.splits import random_split, size_shift_split
from balora.tasks.mof.cgcnn import CGCNNRegressor, load_cgcnn
from balora.tasks.mof.chgnet import load_chgnet
from balora.tasks.mof.config import MOFTaskConfig
from balora.tasks.mof.crystal import CrystalRegressor
from balora.tasks.mof.data import default_labels_path, load_band_gap_labels, read_cif
from balora.tasks.mof.graphs import (
    UnsupportedStructureError,
    collate,
    featurize_many,
    mof_data,
)
from balora.tasks.mof.qmof import load_qmof
from balora.tasks.recipe import (
    Encoded,
    EvaluationSource,
    LoadedTask,
    TrainedTask,
    inputs_from,
)

# Later blocks with adapters by default (docs/mof.md, "Design")
CHGNET_ADAPTED_BLOCKS = ("atom_conv_layers.2", "atom_conv_layers.3")
CGCNN_TARGETS = ("convs.2.fc_full", "convs.3.fc_full", "conv_to_fc", "fc_out")
# Crystals per prediction call: CHGNet's angle graphs make larger batches run out of memory
EVAL_BATCH = {"chgnet": 8, "cgcnn": 64}


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """The later blocks' linear layers (docs/mof.md says why)."""
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


def _skipped(errors: dict[int, UnsupportedStructureError]) -> dict[str, str]:
    return {str(e.name or i): e.reason for i, e in errors.items()}


def _cif_paths(items: Sequence[str]) -> tuple[list[Path], dict[str, str]]:
    """CIF files from file and folder arguments (a folder: its *.cif files), and why each
    unusable argument was skipped."""
    paths, errors = [], {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() == ".cif" and p.is_file())
            if not found:
                errors[item] = "a folder without .cif files"
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            errors[item] = "no such file or folder"
    return paths, errors


def _std(variance: Any) -> float:
    """A standard deviation from a variance, to 4 significant digits."""
    return float(f"{math.sqrt(max(float(variance), 0.0)):.4g}")


def _number(metrics: dict[str, Any], key: str) -> str:
    value = metrics.get(key)
    return "undefined" if value is None else f"{value:.4f}"


class MOFRecipe:
    """``--task mof``: MOF band-gap regression with a Gaussian head."""

    name = "mof"
    summary = "MOF band-gap regression with a Gaussian head"
    config_class = MOFTaskConfig
    kind = "regression"
    gaussian = True
    unit = "structures"

    def prepare(self, cfg: MOFTaskConfig) -> MOFTaskConfig:
        """`cfg` with its data paths absolute, so that run.json works from any directory."""
        paths = {k: getattr(cfg, k) for k in ("labels", "cif_dir", "qmof", "cache_dir")}
        absolute = {k: str(Path(v).resolve()) for k, v in paths.items() if v is not None}
        return replace(cfg, **absolute)

    def eval_batch_size(self, cfg: MOFTaskConfig) -> int:
        return EVAL_BATCH[cfg.backbone]

    def load(self, cfg: MOFTaskConfig, *, progress: bool) -> LoadedTask:
        task = load_mof_run_task(cfg, progress=progress)
        return LoadedTask(
            train=task.train,
            val=task.val,
            test=task.test,
            model_factory=task.model_factory,
            target_modules=task.target_modules,
            modules_to_save=task.modules_to_save,
            skipped=_skipped(task.errors),
            description=f"{cfg.backbone} backbone, band gaps in eV",
        )

    def load_trained(self, cfg: MOFTaskConfig, run: dict[str, Any]) -> TrainedTask:
        backbone = load_mof_backbone(cfg)  # the backbone (for evaluation) and a head factory
        return TrainedTask(lambda: fresh_model(backbone[0]), backbone)

    def read_inputs(
        self, cfg: MOFTaskConfig, run: dict[str, Any], items: Sequence[str], file: Path | None
    ) -> list[str]:
        return inputs_from(items, file, "CIF files, or --file listing them")

    def encode_inputs(
        self, cfg: MOFTaskConfig, run: dict[str, Any], trained: TrainedTask, items: list[str]
    ) -> Encoded:
        paths, errors = _cif_paths(items)
        structures, names = [], []
        for path in paths:
            try:
                structures.append(read_cif(path))
                names.append(str(path))
            except (ValueError, ImportError) as e:
                errors[str(path)] = str(e).removeprefix(f"cannot read CIF file {path}: ")
        done = featurize_many(structures, cfg, names)
        errors.update({names[i]: e.reason for i, e in done.errors.items()})
        if not done.graphs:
            raise UserError("no readable structure among the inputs")
        inputs = collate(done.graphs)
        return Encoded(
            [names[i] for i in done.index],
            Data(inputs, torch.zeros(len(done.graphs))),
            errors,
        )

    def read_evaluation(
        self, cfg: MOFTaskConfig, run: dict[str, Any], source: EvaluationSource
    ) -> EvaluationSource:
        return source  # read with the backbone's settings, once it is loaded

    def evaluation_data(
        self, cfg: MOFTaskConfig, run: dict[str, Any], trained: TrainedTask, read: Any
    ) -> tuple[Data, Data | None, dict[str, str]]:
        """Every structure of ``--data`` (a label CSV; CIFs in ``--cif-dir``, default the
        CSV's folder), or the run's own test split."""
        if read.data is None:
            task = load_mof_run_task(cfg, model=trained.encoder, progress=True)
            return task.test, None, _skipped(task.errors)
        cif_dir = read.cif_dir if read.cif_dir is not None else Path(read.data).parent
        source = replace(cfg, labels=str(read.data), cif_dir=str(cif_dir), qmof=None)
        dataset = load_mof_dataset(source)
        structures, kept, errors = read_structures(dataset)
        names = [dataset.names[i] for i in kept]
        done = featurize_many(structures, cfg, names, progress=True)
        skipped = _skipped({**errors, **{kept[i]: e for i, e in done.errors.items()}})
        if not done.graphs:
            raise UserError(f"no structure of {read.data} could be read")
        gaps = dataset.gaps_ev[[kept[i] for i in done.index]]
        return mof_data(done.graphs, gaps), None, skipped

    def rows(
        self, run: dict[str, Any], names: list[str], pred: Prediction
    ) -> tuple[list[dict[str, Any]], list[str]]:
        rows = [
            {
                "structure": name,
                "gap_ev": round(float(pred.mean[j]), 4),
                "std_ev": _std(pred.total[j]),
                "aleatoric_std_ev": _std(pred.aleatoric[j]),
                "epistemic_std_ev": _std(pred.epistemic[j]),
            }
            for j, name in enumerate(names)
        ]
        return rows, ["gap_ev", "std_ev", "aleatoric_std_ev", "epistemic_std_ev", "structure"]

    def describe(self, metrics: dict[str, Any]) -> str:
        return (
            f"MAE {_number(metrics, 'mae')} eV, RMSE {_number(metrics, 'rmse')} eV, NLL "
            f"{_number(metrics, 'nll')}, 95% coverage {_number(metrics, 'coverage_95')}"
        )
