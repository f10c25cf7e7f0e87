"""Image classification: Fashion-MNIST / MNIST / CIFAR / image folders and a convolutional
net or ViT (offline default: EfficientNet-Lite0 on Fashion-MNIST, MNIST digits as OOD).

    data.py       ImageSplit / ImageClassificationData and the loaders (uint8 images)
    backbones.py  `ImageClassifier` around EfficientNet-Lite0, Hugging Face or timm models
    recipe.py     VisionTaskConfig, load_vision_task and the `Recipe` for ``--task vision``
"""

from balora.tasks.vision.backbones import ImageClassifier, load_vision_backbone
from balora.tasks.vision.data import (
    FASHION_MNIST_DIR,
    FASHION_MNIST_LABELS,
    ImageClassificationData,
    ImageSplit,
    load_cifar,
    load_fashion_mnist,
    load_idx_dataset,
    load_image_folder,
    load_mnist_sample,
    read_idx,
    read_image,
    read_images,
)
from balora.tasks.vision.recipe import (
    VisionRecipe,
    VisionTask,
    VisionTaskConfig,
    load_ood,
    load_vision_data,
    load_vision_task,
    subset,
    to_data,
)

__all__ = [
    "FASHION_MNIST_DIR",
    "FASHION_MNIST_LABELS",
    "ImageClassificationData",
    "ImageClassifier",
    "ImageSplit",
    "VisionRecipe",
    "VisionTask",
    "VisionTaskConfig",
    "load_cifar",
    "load_fashion_mnist",
    "load_idx_dataset",
    "load_image_folder",
    "load_mnist_sample",
    "load_ood",
    "load_vision_backbone",
    "load_vision_data",
    "load_vision_task",
    "read_idx",
    "read_image",
    "read_images",
    "subset",
    "to_data",
]
