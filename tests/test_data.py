"""Datasets: in-memory grey sets, idx reading, per-class subsets, ImageFolder layouts, clear errors."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from conftest import require
from prune_explorer.jobs import data
from prune_explorer.jobs.data import labels_of, load_dataset, read_idx, stratified_indices


def write_idx(path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def fake_fashion_dir(root, n_train=40, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
        arrays[prefix] = (images, labels)
    return arrays


def test_read_idx_round_trips_values_and_shape(tmp_path):
    values = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", values)
    write_idx(tmp_path / "y-idx1-ubyte", np.array([7, -3], dtype=">i4"))
    assert np.array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), values)
    assert read_idx(tmp_path / "y-idx1-ubyte").tolist() == [7, -3]


def test_read_idx_rejects_bad_magic_and_truncation_naming_the_file(tmp_path):
    bad = tmp_path / "bad-idx1-ubyte"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="bad-idx1-ubyte.*magic"):
        read_idx(bad)
    short = tmp_path / "short-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="short-idx1-ubyte"):
        read_idx(short)


def test_fashion_mnist_from_data_dir_keeps_pixels_labels_and_normalises(tmp_path):
    arrays = fake_fashion_dir(tmp_path)
    train, val, classes, channels = load_dataset("fashion-mnist", tmp_path, download=False)
    assert (classes, channels, len(train), len(val)) == (10, 1, 40, 20)
    assert isinstance(train, TensorDataset)
    x, y = train.tensors
    assert x.shape == (40, 1, 28, 28) and x.dtype == torch.float32
    images, labels = arrays["train"]
    expected = (images[5].astype(np.float32) / 255.0 - data.FASHION_MNIST_MEAN) / data.FASHION_MNIST_STD
    assert np.allclose(x[5, 0].numpy(), expected, atol=1e-6)
    assert y.tolist() == labels.tolist()


def test_fashion_mnist_three_channels_and_resize(tmp_path):
    fake_fashion_dir(tmp_path)
    train, _, _, channels = load_dataset("fashion-mnist", tmp_path, image_size=32, channels=3, download=False)
    x = train.tensors[0]
    assert channels == 3 and x.shape == (40, 3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2])


def test_missing_fashion_mnist_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", tmp_path / "mine", download=False)
    message = str(info.value)
    assert str(tmp_path / "mine") in message and str(tmp_path / "system") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message


def test_system_fashion_mnist_subset_is_per_class():
    require(all(data.FASHION_MNIST_SYSTEM_DIR.joinpath(f).exists() for f in (
        "train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")), "dataset-fashion-mnist (apt)")
    train, val, classes, _ = load_dataset("fashion-mnist", subset=200, val_subset=50, seed=3)
    assert classes == 10 and len(train) == 200 and len(val) == 50
    assert np.bincount(labels_of(train), minlength=10).tolist() == [20] * 10


def test_digits_split_is_disjoint_reproducible_and_upsampled():
    train, val, classes, channels = load_dataset("digits", image_size=16, seed=1)
    assert (classes, channels) == (10, 1)
    assert len(train) + len(val) == 1797 and abs(len(val) - 0.2 * 1797) < 1
    assert train.tensors[0].shape[1:] == (1, 16, 16)
    again, val_again, _, _ = load_dataset("digits", image_size=16, seed=1)
    assert torch.equal(val.tensors[0], val_again.tensors[0])
    other = load_dataset("digits", image_size=16, seed=2)[1]
    assert not torch.equal(val.tensors[0], other.tensors[0])
    train_rows = {tuple(r) for r in train.tensors[0].flatten(1).numpy().round(4).tolist()}
    shared = sum(tuple(r) in train_rows for r in val.tensors[0].flatten(1).numpy().round(4).tolist())
    assert shared < 0.05 * len(val)  # only genuine duplicate images in load_digits can repeat


def test_stratified_indices_follow_class_mix_and_seed():
    labels = np.array([0] * 80 + [1] * 20)
    pick = stratified_indices(labels, 10, seed=0)
    assert len(set(pick)) == 10 and np.bincount(labels[pick]).tolist() == [8, 2]
    assert np.array_equal(pick, stratified_indices(labels, 10, seed=0))
    assert not np.array_equal(pick, stratified_indices(labels, 10, seed=1))
    assert len(stratified_indices(labels, 500)) == 100


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match="imagefolder.*fashion-mnist.*digits"):
        load_dataset("cifar-1000")


# --- ImageFolder -------------------------------------------------------------------------------
def make_image_tree(root, classes=("cat", "dog"), per_class=6, size=20):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return root


def test_imagefolder_train_val_layout_uses_aws_transforms(tmp_path):
    make_image_tree(tmp_path / "train")
    make_image_tree(tmp_path / "val", per_class=3)
    train, val, classes, channels = load_dataset("imagefolder", tmp_path, image_size=16)
    assert (classes, channels, len(train), len(val)) == (2, 3, 12, 6)
    x, y = val[0]
    assert x.shape == (3, 16, 16) and y == 0
    assert torch.equal(val[0][0], val[0][0])  # eval transform is deterministic
    assert train[0][0].shape == (3, 16, 16)


def test_imagefolder_single_folder_is_split_by_seed(tmp_path):
    make_image_tree(tmp_path / "all", per_class=10)
    train, val, classes, _ = load_dataset("imagefolder", tmp_path / "all", image_size=8, split_val=0.2, seed=0)
    assert classes == 2 and len(val) == 4 and len(train) == 16
    assert set(train.indices).isdisjoint(val.indices)
    assert np.bincount(labels_of(val)).tolist() == [2, 2]
    sub_train, _, _, _ = load_dataset("imagefolder", tmp_path / "all", image_size=8, subset=6, seed=0)
    assert len(sub_train) == 6 and set(sub_train.indices) <= set(train.indices)


def test_imagefolder_separate_val_dir_must_have_same_classes(tmp_path):
    make_image_tree(tmp_path / "train")
    make_image_tree(tmp_path / "test", classes=("cat", "emu"))
    with pytest.raises(ValueError, match="class folders differ.*emu"):
        load_dataset("imagefolder", tmp_path / "train", val_dir=tmp_path / "test")


def test_imagefolder_missing_folder_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_dataset("imagefolder", tmp_path / "nowhere")


def test_sets_too_big_for_memory_resize_per_item_with_the_same_values(tmp_path, monkeypatch):
    fake_fashion_dir(tmp_path)
    eager, _, _, _ = load_dataset("fashion-mnist", tmp_path, image_size=40, channels=3, download=False)
    monkeypatch.setattr(data, "IN_MEMORY_LIMIT_BYTES", 0)
    lazy, _, _, _ = load_dataset("fashion-mnist", tmp_path, image_size=40, channels=3, download=False)
    assert not isinstance(lazy, TensorDataset) and len(lazy) == len(eager)
    for i in (0, 17, 39):
        assert torch.allclose(lazy[i][0], eager[i][0], atol=1e-6) and int(lazy[i][1]) == int(eager[i][1])
    assert labels_of(lazy).tolist() == labels_of(eager).tolist()
