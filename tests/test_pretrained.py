"""A pretrained start, offline: a local weights file, a Caltech101-layout tree, a new head, ImageNet
normalisation — asserted on the batches the job itself fed its model (metrics.json `first_batch`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prune_explorer.jobs import data
from prune_explorer.jobs.data import IMAGENET_MEAN, IMAGENET_STD, load_dataset
from prune_explorer.model import store
from prune_explorer.jobs.train import train

COLOUR = (200, 120, 40)  # every image one flat colour: any crop or resize of it keeps the pixel values
CLASSES = ("accordion", "airplanes", "anchor")
SIZES = ((48, 36), (40, 64), (60, 60), (33, 47))


def make_caltech101(root: Path, per_class: int = 8) -> Path:
    """torchvision's Caltech101 layout, small: root/caltech101/101_ObjectCategories/<class>/image_NNNN.jpg."""
    categories = root / "caltech101" / "101_ObjectCategories"
    for name in ("BACKGROUND_Google", *CLASSES):
        folder = categories / name
        folder.mkdir(parents=True)
        for n in range(per_class):
            width, height = SIZES[n % len(SIZES)]
            Image.new("RGB", (width, height), COLOUR).save(folder / f"image_{n + 1:04d}.jpg", quality=95)
    return root


@pytest.fixture(scope="module")
def caltech(tmp_path_factory):
    return make_caltech101(tmp_path_factory.mktemp("caltech"))


@pytest.fixture(scope="module")
def imagenet_weights(tmp_path_factory):
    """A local state-dict file of a 1000-class torchvision resnet18 (the shape of IMAGENET1K_V1)."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    model = resnet18(num_classes=1000)
    path = tmp_path_factory.mktemp("weights") / "resnet18-imagenet.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_caltech101_layout_leaves_out_the_background_and_splits_by_seed(caltech):
    train_ds, val_ds, classes, channels = load_dataset("caltech101", caltech, image_size=32, seed=0)
    assert (classes, channels) == (3, 3)
    assert train_ds.dataset.classes == list(CLASSES)  # sorted, BACKGROUND_Google left out, as torchvision does
    assert len(train_ds) + len(val_ds) == 3 * 8 and len(val_ds) == round(0.2 * 24)
    assert sorted(set(train_ds.indices) | set(val_ds.indices)) == list(range(24))
    again, other = (load_dataset("caltech101", caltech, image_size=32, seed=s)[1] for s in (0, 1))
    assert again.indices == val_ds.indices and other.indices != val_ds.indices
    assert sorted(np.bincount(data.labels_of(val_ds), minlength=3)) == [1, 2, 2]  # per class: 5 from 3 classes
    x, y = val_ds[0]
    assert x.shape == (3, 32, 32)
    for where in (caltech / "caltech101", caltech / "caltech101" / "101_ObjectCategories"):
        assert load_dataset("caltech101", where, image_size=32, seed=0)[1].indices == val_ds.indices


def test_caltech101_missing_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="caltech101/101_ObjectCategories.*--download"):
        load_dataset("caltech101", tmp_path, download=False)


def test_a_pretrained_start_gets_a_new_head_and_imagenet_normalised_batches(caltech, imagenet_weights, tmp_path):
    path, pretrained = imagenet_weights
    metrics = train(dict(model="resnet18", weights=str(path), dataset="caltech101", data_dir=str(caltech),
                         image_size=32, epochs=1, batch_size=8, lr=1e-12, capture="none", measure_latency=False,
                         out_dir=str(tmp_path / "out")))
    assert metrics["num_classes"] == 3 and metrics["data_recipe"] == {"normalize": "imagenet", "augment": True}
    tuned = store.load(tmp_path / "out")
    assert tuned.fc.out_features == 3 and tuned.fc.in_features == 512  # the head replaced for the data's classes
    assert torch.allclose(tuned.layer3[1].conv2.weight, pretrained.layer3[1].conv2.weight, atol=1e-6)  # features kept

    seen = metrics["first_batch"]  # recorded by the job from the batch its model received
    assert seen["shape"] == [8, 3, 32, 32]  # resized / cropped to the chosen size
    expected = [(c / 255 - m) / s for c, m, s in zip(COLOUR, IMAGENET_MEAN, IMAGENET_STD)]
    tolerance = 3 / 255 / min(IMAGENET_STD)  # JPEG's rounding of a flat colour: a level or two
    assert seen["mean"] == pytest.approx(expected, abs=tolerance)
    assert seen["min"] == pytest.approx(expected, abs=tolerance) and seen["max"] == pytest.approx(expected,
                                                                                                 abs=tolerance)
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["first_batch"] == seen


def test_grey_data_for_a_pretrained_model_is_imagenet_normalised_rgb_with_light_augmentation_on_train_only():
    train_ds, val_ds, classes, channels = load_dataset("digits", image_size=16, normalize="imagenet", augment=True)
    assert channels == 3 and isinstance(train_ds, data.Augmented) and not isinstance(val_ds, data.Augmented)
    from sklearn.datasets import load_digits

    raw = load_digits()
    images = val_ds.tensors[0]
    # a constant region stays constant through the resize: the corner pixel is 0 in every digit image
    corner = torch.tensor([(0.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)])
    assert (raw.images[:, 0, 0] == 0).all() and torch.allclose(images[:, :, 0, 0], corner.expand(len(images), 3))
    torch.manual_seed(0)
    first = torch.stack([train_ds[i][0] for i in range(20)])
    torch.manual_seed(1)
    second = torch.stack([train_ds[i][0] for i in range(20)])
    assert first.shape == (20, 3, 16, 16) and not torch.equal(first, second)  # shifted at random
    assert torch.equal(val_ds[0][0], val_ds[0][0]) and train_ds.flip is False  # digits: no flips
    assert data.labels_of(train_ds).tolist() == data.labels_of(train_ds.dataset).tolist()
    with pytest.raises(ValueError, match="normalize must be one of"):
        load_dataset("digits", normalize="cifar")
