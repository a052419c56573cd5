"""Datasets for fine-tuning: ImageFolder trees, Fashion-MNIST and scikit-learn digits.

`load_dataset` returns `(train_ds, val_ds, num_classes, in_channels)`. Small sets (Fashion-MNIST,
digits) live in memory as tensors so a training step never waits for decoding; ImageFolder
trees use the AWS example's transforms. Subsets are drawn per class, reproducibly from a seed.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

DATASETS = ("imagefolder", "fashion-mnist", "digits")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
DIGITS_MEAN, DIGITS_STD = 0.3051, 0.3785
IN_MEMORY_LIMIT_BYTES = 1 << 30
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    subset: int | None = None,
    val_subset: int | None = None,
    seed: int = 0,
    split_val: float = 0.2,
    channels: int | None = None,
    val_dir: str | os.PathLike | None = None,
    download: bool = True,
) -> tuple[Dataset, Dataset, int, int]:
    """Load a named dataset; returns `(train_ds, val_ds, num_classes, in_channels)`.

    `channels=3` repeats grey images over three channels (for ImageNet-shaped models);
    `image_size` resizes (grey sets, default native) or sets the crop size (ImageFolder, default
    224). `val_dir` names a separate validation tree (SageMaker's test channel) for ImageFolder.
    `subset` / `val_subset` keep that many examples, drawn per class from `seed`.
    Fashion-MNIST is looked for in `data_dir` (idx files, plain or .gz, or torchvision's
    FashionMNIST/raw/ layout), then in /usr/share/datasets/fashion-mnist (Debian package
    dataset-fashion-mnist), then downloaded by torchvision when `download` is true; its test
    split is the validation set. Digits and single-folder ImageFolder trees are split by `seed`.
    """
    key = name.lower().replace("_", "-")
    if key in ("fashion-mnist", "fashionmnist"):
        train, val, classes = _fashion_mnist(data_dir, download=download)
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    elif key == "digits":
        train, val, classes = _digits(seed, split_val)
        mean, std = DIGITS_MEAN, DIGITS_STD
    elif key == "imagefolder":
        return _imagefolder(data_dir, val_dir, image_size, subset, val_subset, seed, split_val)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    (train_x, train_y), (val_x, val_y) = train, val
    train_x, train_y = _take(train_x, train_y, subset, seed)
    val_x, val_y = _take(val_x, val_y, val_subset, seed)
    out_channels = channels or 1
    if out_channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for {name!r}, got {channels}")
    return (
        _grey_tensors(train_x, train_y, mean, std, image_size, out_channels),
        _grey_tensors(val_x, val_y, mean, std, image_size, out_channels),
        classes,
        out_channels,
    )


def stratified_indices(labels: Sequence[int] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """`n` indices whose class mix follows `labels`, the same for the same seed (sorted)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    if n <= 0:
        raise ValueError(f"subset size must be positive, got {n}")
    rng = np.random.default_rng(seed)
    position = np.empty(len(labels), dtype=np.float64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        order = rng.permutation(len(members))
        position[members[order]] = (np.arange(len(members)) + rng.random()) / len(members)
    keep = np.lexsort((rng.random(len(labels)), position))[:n]
    return np.sort(keep)


def labels_of(dataset: Dataset) -> np.ndarray:
    """The class label of every example, without decoding images."""
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1].numpy()
    if isinstance(dataset, _ResizingDataset):
        return dataset.labels.numpy()
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices)]
    targets = getattr(dataset, "targets", None)
    if targets is None:
        raise TypeError(f"cannot read labels of {type(dataset).__name__}")
    return np.asarray(targets)


# --- Fashion-MNIST ---------------------------------------------------------------------------
def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzip-compressed) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{path}: header says shape {shape} ({expected} bytes), file has {len(raw) - header}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).copy()


def _find_idx(directory: Path, stem: str) -> Path | None:
    for candidate in (
        directory / f"{stem}.gz",
        directory / stem,
        directory / "FashionMNIST" / "raw" / f"{stem}.gz",
        directory / "FashionMNIST" / "raw" / stem,
    ):
        if candidate.is_file():
            return candidate
    return None


def _fashion_from_dir(directory: Path):
    found = {split: tuple(_find_idx(directory, stem) for stem in stems) for split, stems in _FASHION_FILES.items()}
    if not all(all(paths) for paths in found.values()):
        return None
    arrays = []
    for split, (images, labels) in found.items():
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or len(x) != len(y):
            raise ValueError(f"{images}: expected N x 28 x 28 images matching {labels}, got {x.shape} / {y.shape}")
        arrays.append((x, y.astype(np.int64)))
    return arrays


def _fashion_mnist(data_dir, *, download: bool):
    looked = []
    for directory in ([Path(data_dir)] if data_dir else []) + [FASHION_MNIST_SYSTEM_DIR]:
        looked.append(str(directory))
        arrays = _fashion_from_dir(directory)
        if arrays is not None:
            return arrays[0], arrays[1], 10
    if download:
        arrays = _fashion_download(Path(data_dir) if data_dir else Path.home() / ".cache" / "prune_explorer")
        if arrays is not None:
            return arrays[0], arrays[1], 10
    raise FileNotFoundError(
        "Fashion-MNIST not found: looked for train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), "
        f"t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz) in {', '.join(looked)}"
        f"{'; the torchvision download failed' if download else ''}. "
        "Install them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass "
        "--data-dir pointing at a folder holding those files (or let torchvision download them: --download)."
    )


def _fashion_download(root: Path):
    """torchvision's downloader, for machines that are online."""
    from torchvision.datasets import FashionMNIST

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except (OSError, RuntimeError):
        return None
    return _fashion_from_dir(root)


# --- digits ---------------------------------------------------------------------------------
def _digits(seed: int, split_val: float):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int64)
    if not 0.0 < split_val < 1.0:
        raise ValueError(f"split_val must be between 0 and 1, got {split_val}")
    val_idx = stratified_indices(y, int(round(len(y) * split_val)), seed)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[val_idx] = False
    return (x[train_mask], y[train_mask]), (x[val_idx], y[val_idx]), 10


# --- in-memory grey images ------------------------------------------------------------------
def _take(x: np.ndarray, y: np.ndarray, n: int | None, seed: int):
    if n is None:
        return x, y
    keep = stratified_indices(y, n, seed)
    return x[keep], y[keep]


def _grey_tensors(x: np.ndarray, y: np.ndarray, mean: float, std: float, size: int | None, channels: int):
    images = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(np.ascontiguousarray(y))
    size = size or images.shape[-1]
    nbytes = len(images) * channels * size * size * 4
    if nbytes > IN_MEMORY_LIMIT_BYTES:
        return _ResizingDataset(images, labels, mean, std, size, channels)
    return TensorDataset(_prepare(images, mean, std, size, channels), labels)


def _prepare(images: torch.Tensor, mean: float, std: float, size: int, channels: int) -> torch.Tensor:
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = ((x - mean) / std).unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.expand(-1, channels, -1, -1).contiguous() if channels > 1 else x.contiguous()


class _ResizingDataset(Dataset):
    """Grey images kept small in memory, resized per item when the resized set would not fit."""

    def __init__(self, images, labels, mean, std, size, channels):
        self.images, self.labels = images, labels
        self.mean, self.std, self.size, self.channels = mean, std, size, channels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        x = _prepare(self.images[index: index + 1], self.mean, self.std, self.size, self.channels)[0]
        return x, self.labels[index]


# --- ImageFolder ----------------------------------------------------------------------------
def imagefolder_transforms(image_size: int | None = None):
    """The AWS example's transforms: RandomResizedCrop + flip to train, Resize + CenterCrop to evaluate."""
    from torchvision import transforms

    size = image_size or 224
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    evaluate = transforms.Compose(
        [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
    )
    return train, evaluate


def _imagefolder(data_dir, val_dir, image_size, subset, val_subset, seed, split_val):
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise ValueError("dataset 'imagefolder' needs data_dir (a folder of class folders, or train/ and val/)")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass --data-dir pointing at your images")
    train_tf, eval_tf = imagefolder_transforms(image_size)
    if val_dir is not None:
        train_root, val_root = root, Path(val_dir)
    elif (root / "train").is_dir():
        train_root = root / "train"
        val_root = next((root / s for s in ("val", "validation", "test") if (root / s).is_dir()), None)
    else:
        train_root, val_root = root, None
    train_full = _open_folder(ImageFolder, train_root, train_tf)
    if val_root is None:
        labels = np.asarray(train_full.targets)
        val_idx = stratified_indices(labels, int(round(len(labels) * split_val)), seed)
        train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
        train_ds: Dataset = Subset(train_full, train_idx.tolist())
        val_ds: Dataset = Subset(_open_folder(ImageFolder, train_root, eval_tf), val_idx.tolist())
    else:
        train_ds = train_full
        val_ds = _open_folder(ImageFolder, val_root, eval_tf)
        if val_ds.classes != train_full.classes:
            raise ValueError(
                f"class folders differ between {train_root} ({len(train_full.classes)} classes) and "
                f"{val_root} ({len(val_ds.classes)} classes): "
                f"{sorted(set(train_full.classes) ^ set(val_ds.classes))[:5]}"
            )
    train_ds = _subset(train_ds, subset, seed)
    val_ds = _subset(val_ds, val_subset, seed)
    return train_ds, val_ds, len(train_full.classes), 3


def _open_folder(image_folder_cls, root: Path, transform):
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    try:
        return image_folder_cls(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise FileNotFoundError(f"{root}: not an image folder (one sub-folder per class with images): {exc}") from exc


def _subset(dataset: Dataset, n: int | None, seed: int) -> Dataset:
    if n is None:
        return dataset
    keep = stratified_indices(labels_of(dataset), n, seed)
    if isinstance(dataset, Subset):
        return Subset(dataset.dataset, [dataset.indices[i] for i in keep])
    return Subset(dataset, keep.tolist())
