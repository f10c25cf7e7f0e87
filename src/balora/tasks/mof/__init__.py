"""MOF band gaps: CoRE MOF / QMOF structures with band-gap labels, regressed by CHGNet or the
Materials-Project band-gap CGCNN with adapters and a Gaussian head (docs/mof.md).

    config.py   MOFTaskConfig and the backbones' constants
    data.py     CIFs, the CoRE MOF archive and label CSVs → MofDataset;  qmof.py  QMOF
    graphs.py   structures → cached CrystalGraphs → padded model inputs
    crystal.py  what the two backbone wrappers share
    chgnet.py   CHGNetRegressor            cgcnn.py  CGCNNRegressor
    recipe.py   load_mof_task / load_mof_run_task and the `Recipe` for ``--task mof``
"""

from balora.tasks.mof.cgcnn import CGCNNRegressor, load_cgcnn
from balora.tasks.mof.chgnet import CHGNetRegressor, load_chgnet
from balora.tasks.mof.config import MOFTaskConfig
from balora.tasks.mof.crystal import CrystalOutput, CrystalRegressor
from balora.tasks.mof.data import (
    CORE_MOF_DATASETS,
    DEFAULT_CORE_MOF_DATASET,
    LABEL_COLUMNS,
    LABEL_DIAGNOSTIC_COLUMNS,
    MofDataset,
    MofEntry,
    core_mof_archive,
    core_mof_dir,
    core_mof_index,
    count_cif_atoms,
    default_labels_path,
    load_band_gap_labels,
    read_cif,
    read_label_rows,
)
from balora.tasks.mof.graphs import (
    CrystalGraph,
    Featurized,
    UnsupportedStructureError,
    collate,
    featurize,
    featurize_many,
    mof_data,
    structure_key,
)
from balora.tasks.mof.qmof import QMOF_GAP_COLUMN, load_qmof
from balora.tasks.mof.recipe import (
    MOFRecipe,
    MOFTask,
    default_targets,
    fresh_model,
    load_mof_backbone,
    load_mof_dataset,
    load_mof_run_task,
    load_mof_task,
    read_structures,
)

__all__ = [
    "CORE_MOF_DATASETS",
    "DEFAULT_CORE_MOF_DATASET",
    "LABEL_COLUMNS",
    "LABEL_DIAGNOSTIC_COLUMNS",
    "QMOF_GAP_COLUMN",
    "CGCNNRegressor",
    "CHGNetRegressor",
    "CrystalGraph",
    "CrystalOutput",
    "CrystalRegressor",
    "Featurized",
    "MOFRecipe",
    "MOFTask",
    "MOFTaskConfig",
    "MofDataset",
    "MofEntry",
    "UnsupportedStructureError",
    "collate",
    "core_mof_archive",
    "core_mof_dir",
    "core_mof_index",
    "count_cif_atoms",
    "default_labels_path",
    "default_targets",
    "featurize",
    "featurize_many",
    "fresh_model",
    "load_band_gap_labels",
    "load_cgcnn",
    "load_chgnet",
    "load_mof_backbone",
    "load_mof_dataset",
    "load_mof_run_task",
    "load_mof_task",
    "load_qmof",
    "mof_data",
    "read_cif",
    "read_label_rows",
    "read_structures",
    "structure_key",
]
