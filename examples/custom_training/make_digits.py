"""Write scikit-learn's 8x8 digits (offline, 1,797 images) as PNG class folders: data for train.py.

    python make_digits.py digits/ --per-class 50
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def make_digits(root: str | Path, per_class: int | None = None, size: int = 32) -> Path:
    """root/<digit>/<n>.png, `per_class` images of each digit (all when None), upscaled to `size`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    root = Path(root)
    for digit in range(10):
        folder = root / str(digit)
        folder.mkdir(parents=True, exist_ok=True)
        members = np.flatnonzero(bunch.target == digit)[:per_class]
        for n, index in enumerate(members):
            pixels = (bunch.images[index] * (255.0 / 16.0)).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((size, size), Image.NEAREST).save(folder / f"{n:04d}.png")
    return root


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--per-class", type=int, default=None)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    print(make_digits(args.root, args.per_class, args.size))
