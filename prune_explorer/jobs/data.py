"""Datasets for fine-tuning: ImageFolder trees, Caltech101, Fashion-MNIST and scikit-learn digits.

`load_dataset` returns `(train_ds, val_ds, num_classes, in_channels)`. Small sets (Fashion-MNIST,
digits) live in memory as tensors so a training step never waits for decoding; ImageFolder
trees (and Caltech101, an ImageFolder of torchvision's layout) use the AWS example's transforms.
Subsets are drawn per class, reproducibly from a seed. For a pretrained start, grey sets take
ImageNet's normalisation over three channels (`normalize="imagenet"`) and light augmentation
(`augment=True`: random shifts, flips where the classes allow them), on the training split only.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset

DATASETS = ("imagefolder", "caltech101", "fashion-mnist", "digits")
NORMALIZATIONS = ("dataset", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CALTECH101_FOLDER = "101_ObjectCategories"      # torchvision: ROOT/caltech101/101_ObjectCategories/<class>/*.jpg
CALTECH101_EXCLUDED = ("BACKGROUND_Google",)   # torchvision drops it: "not a real class"
FLIPPABLE = {"fashion-mnist"}                   # grey sets whose classes survive a horizontal flip (digits do not)
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
    normalize: str | None = None,
    augment: bool | None = None,
) -> tuple[Dataset, Dataset, int, int]:
    """Load a named dataset; returns `(train_ds, val_ds, num_classes, in_channels)`.

    `channels=3` repeats grey images over three channels (for ImageNet-shaped models);
    `image_size` resizes (grey sets, default native) or sets the crop size (image folders,
    default 224). `val_dir` names a separate validation tree (SageMaker's test channel) for
    ImageFolder. `subset` / `val_subset` keep that many examples, drawn per class from `seed`.
    `normalize`: "dataset" (grey sets' own mean/std, their default) or "imagenet" (ImageNet's
    per-channel mean/std over three channels: what pretrained weights expect; image folders always).
    `augment` (training split only): image folders default to the AWS example's RandomResizedCrop
    + flip, grey sets to none; True gives grey sets random shifts up to 1/8 (and flips for
    Fashion-MNIST). Fashion-MNIST is looked for in `data_dir` (idx files, plain or .gz, or
    torchvision's FashionMNIST/raw/ layout), then in /usr/share/datasets/fashion-mnist (Debian
    package dataset-fashion-mnist), then downloaded by torchvision when `download` is true; its
    test split is the validation set. Caltech101 is torchvision's layout under `data_dir`
    (`caltech101/101_ObjectCategories/<class>/*.jpg`, BACKGROUND_Google left out), downloaded by
    torchvision when `download` is true. Digits, Caltech101 and single-folder ImageFolder trees
    are split by `seed`.
    """
    key = name.lower().replace("_", "-")
    if normalize is not None and normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if key in ("fashion-mnist", "fashionmnist"):
        key = "fashion-mnist"
        train, val, classes = _fashion_mnist(data_dir, download=download)
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
    elif key == "digits":
        train, val, classes = _digits(seed, split_val)
        mean, std = DIGITS_MEAN, DIGITS_STD
    elif key in ("imagefolder", "caltech101"):
        if normalize == "dataset":
            raise ValueError(f"dataset {name!r}: image folders are normalised with ImageNet's mean/std "
                             "(normalize='imagenet'); 'dataset' is for the grey sets")
        if key == "caltech101":
            return _caltech101(data_dir, image_size, subset, val_subset, seed, split_val, download, augment)
        return _imagefolder(data_dir, val_dir, image_size, subset, val_subset, seed, split_val, augment)
    else:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    (train_x, train_y), (val_x, val_y) = train, val
    train_x, train_y = _take(train_x, train_y, subset, seed)
    val_x, val_y = _take(val_x, val_y, val_subset, seed)
    if normalize == "imagenet":
        if channels not in (None, 3):
            raise ValueError(f"normalize='imagenet' gives three channels; channels={channels} asked for {name!r}")
        channels, mean, std = 3, IMAGENET_MEAN, IMAGENET_STD
    out_channels = channels or 1
    if out_channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3 for {name!r}, got {channels}")
    train_ds = _grey_tensors(train_x, train_y, mean, std, image_size, out_channels)
    if augment:
        train_ds = Augmented(train_ds, flip=key in FLIPPABLE)
    return train_ds, _grey_tensors(val_x, val_y, mean, std, image_size, out_channels), classes, out_channels


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
    if isinstance(dataset, Augmented):
        return labels_of(dataset.dataset)
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


def _grey_tensors(x: np.ndarray, y: np.ndarray, mean, std, size: int | None, channels: int):
    images = torch.from_numpy(np.ascontiguousarray(x))
    labels = torch.from_numpy(np.ascontiguousarray(y))
    size = size or images.shape[-1]
    nbytes = len(images) * channels * size * size * 4
    if nbytes > IN_MEMORY_LIMIT_BYTES:
        return _ResizingDataset(images, labels, mean, std, size, channels)
    return TensorDataset(_prepare(images, mean, std, size, channels), labels)


def _prepare(images: torch.Tensor, mean, std, size: int, channels: int) -> torch.Tensor:
    """Scale to [0, 1], resize, repeat over `channels`, normalise (`mean`/`std`: one value or one per channel)."""
    x = images.float()
    if images.dtype == torch.uint8:
        x = x / 255.0
    x = x.unsqueeze(1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if channels > 1:
        x = x.expand(-1, channels, -1, -1)
    shape = (1, -1, 1, 1)
    return ((x - torch.tensor(mean).reshape(shape)) / torch.tensor(std).reshape(shape)).contiguous()


def with_channels(dataset: Dataset, channels: int) -> Dataset:
    """The same grey images repeated over `channels` (a model whose first conv wants RGB)."""
    if isinstance(dataset, Augmented):
        return Augmented(with_channels(dataset.dataset, channels), flip=dataset.flip)
    if isinstance(dataset, TensorDataset) and dataset.tensors[0].shape[1] == 1:
        images, labels = dataset.tensors
        return TensorDataset(images.expand(-1, channels, -1, -1).contiguous(), labels)
    if isinstance(dataset, _ResizingDataset) and dataset.channels == 1:
        return _ResizingDataset(dataset.images, dataset.labels, dataset.mean, dataset.std, dataset.size, channels)
    raise ValueError(f"{type(dataset).__name__} of {int(dataset[0][0].shape[0])}-channel images cannot be "
                     f"repeated over {channels} channels")


class Augmented(Dataset):
    """Light training-time augmentation of an image tensor set: a random shift of up to 1/8 of the
    size (edges repeated) and, when `flip`, a random horizontal flip. Randomness from torch's seed."""

    def __init__(self, dataset: Dataset, flip: bool = False):
        self.dataset, self.flip = dataset, flip

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        x, y = self.dataset[index]
        size = x.shape[-1]
        pad = max(1, size // 8)
        padded = torch.nn.functional.pad(x.unsqueeze(0), (pad, pad, pad, pad), mode="replicate")[0]
        top, left = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        x = padded[:, top: top + x.shape[-2], left: left + size]
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, y


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
def imagefolder_transforms(image_size: int | None = None, augment: bool | None = None):
    """The AWS example's transforms: RandomResizedCrop + flip to train (`augment=False`: as to evaluate),
    Resize + CenterCrop to evaluate; ImageNet's normalisation on both."""
    from torchvision import transforms

    size = image_size or 224
    normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    evaluate = transforms.Compose(
        [transforms.Resize(int(round(size * 256 / 224))), transforms.CenterCrop(size), transforms.ToTensor(), normalize]
    )
    if augment is False:
        return evaluate, evaluate
    train = transforms.Compose(
        [transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    return train, evaluate


def _imagefolder(data_dir, val_dir, image_size, subset, val_subset, seed, split_val, augment):
    from torchvision.datasets import ImageFolder

    if data_dir is None:
        raise ValueError("dataset 'imagefolder' needs data_dir (a folder of class folders, or train/ and val/)")
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist; pass --data-dir pointing at your images")
    if val_dir is not None:
        train_root, val_root = root, Path(val_dir)
    elif (root / "train").is_dir():
        train_root = root / "train"
        val_root = next((root / s for s in ("val", "validation", "test") if (root / s).is_dir()), None)
    else:
        train_root, val_root = root, None
    return _folder_splits(ImageFolder, train_root, val_root, image_size, subset, val_subset, seed, split_val, augment)


def _folder_splits(folder_cls, train_root, val_root, image_size, subset, val_subset, seed, split_val, augment):
    """Train and validation sets of class folders: `val_root`'s, or a per-class split of `train_root` by seed."""
    train_tf, eval_tf = imagefolder_transforms(image_size, augment)
    train_full = _open_folder(folder_cls, train_root, train_tf)
    if val_root is None:
        labels = np.asarray(train_full.targets)
        val_idx = stratified_indices(labels, int(round(len(labels) * split_val)), seed)
        train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
        train_ds: Dataset = Subset(train_full, train_idx.tolist())
        val_ds: Dataset = Subset(_open_folder(folder_cls, train_root, eval_tf), val_idx.tolist())
    else:
        train_ds = train_full
        val_ds = _open_folder(folder_cls, val_root, eval_tf)
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


# --- Caltech101 ---------------------------------------------------------------------------------
def _caltech101_folder_cls():
    from torchvision.datasets import ImageFolder

    class Caltech101Folder(ImageFolder):
        """torchvision's Caltech101 classes (sorted, BACKGROUND_Google left out), images read as RGB
        (the set has grey ones; torchvision's own Caltech101 hands those over as they are)."""

        def find_classes(self, directory):
            classes, _ = super().find_classes(directory)
            classes = [c for c in classes if c not in CALTECH101_EXCLUDED]
            return classes, {c: i for i, c in enumerate(classes)}

    return Caltech101Folder


def caltech101_root(data_dir: str | os.PathLike | None, download: bool = False) -> Path:
    """The `101_ObjectCategories` folder: `data_dir` itself, or under it (`caltech101/` as torchvision lays it out).

    Downloaded by torchvision into `data_dir` (default ~/.cache/prune_explorer) when absent and `download`.
    """
    base = Path(data_dir) if data_dir else Path.home() / ".cache" / "prune_explorer"
    candidates = [base, base / CALTECH101_FOLDER, base / "caltech101" / CALTECH101_FOLDER]
    for candidate in candidates:
        if candidate.name == CALTECH101_FOLDER and candidate.is_dir():
            return candidate
    if download:
        from torchvision.datasets import Caltech101

        try:
            Caltech101(str(base), download=True)
        except (OSError, RuntimeError) as exc:
            raise FileNotFoundError(f"Caltech101: the torchvision download into {base} failed: {exc}") from exc
        return base / "caltech101" / CALTECH101_FOLDER
    raise FileNotFoundError(
        f"Caltech101 not found: looked for {', '.join(str(c) for c in candidates[1:])}. Pass --data-dir "
        f"holding torchvision's layout (caltech101/{CALTECH101_FOLDER}/<class>/*.jpg), or let torchvision "
        "download it (--download, needs internet)."
    )


def _caltech101(data_dir, image_size, subset, val_subset, seed, split_val, download, augment):
    root = caltech101_root(data_dir, download)
    return _folder_splits(_caltech101_folder_cls(), root, None, image_size, subset, val_subset, seed, split_val,
                          augment)
