"""Writes small real image sets as PNG folders, in the layouts users train on, for the auto preset.

Every set comes from data available offline (scikit-learn's digits, the bundled MNIST-5k):

- ``digits8``: scikit-learn's 1,797 digits, 8 x 8, 17 grey levels (0..16 scaled to 0..255),
  as ``ROOT/<class>/``;
- ``mnist1797``: a random 1,797-image subset of MNIST-5k, 28 x 28, as ``ROOT/train/<class>/``
  only (no evaluation split: the run scores its training images);
- ``mnist8``: MNIST-5k reduced to 8 x 8 (box filter), ``ROOT/train/<class>/`` (4,000) and
  ``ROOT/test/<class>/`` (1,000, 100 per class);
- ``color32``: 2,000 MNIST-5k digits at 32 x 32 in RGB, each with its own random foreground
  and background colours (at least 120 apart in RGB), as ``ROOT/<class>/``;
- ``mnist56flat``: the 5,000 MNIST-5k digits at 56 x 56 in one flat folder (no labels: a run
  reports no ACC); their labels are kept aside in ``OUT/mnist56flat_labels.csv``
  (``file,label``) to score the clusters afterwards (``benchmarks/kmeans_baseline.py --score``).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets          # all sets
    python benchmarks/make_test_sets.py --out /tmp/secu_sets --sets digits8 color32
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from secu_plugin.data import load_mnist5k

SEED = 0


def _save(image: np.ndarray, folder: Path, name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(folder / name)


def _write_classes(images: np.ndarray, labels: np.ndarray, folder: Path) -> None:
    """``folder/<label>/<index>.png``; the index is the image's position in ``images``."""
    for index, (image, label) in enumerate(zip(images, labels)):
        _save(image, folder / str(int(label)), f"{index:05d}.png")


def _resize(images: np.ndarray, size: int, resample: int) -> np.ndarray:
    return np.stack(
        [np.asarray(Image.fromarray(im).resize((size, size), resample)) for im in images]
    )


def make_digits8(root: Path) -> dict:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    _write_classes(images, digits.target, root)
    return {"layout": "ROOT/<class>/", "images": len(images), "size": "8x8", "mode": "L"}


def make_mnist1797(root: Path) -> dict:
    images, labels = load_mnist5k()
    subset = np.sort(np.random.default_rng(SEED).permutation(len(images))[:1797])
    _write_classes(images[subset], labels[subset], root / "train")
    return {"layout": "ROOT/train/<class>/", "images": 1797, "size": "28x28", "mode": "L"}


def make_mnist8(root: Path) -> dict:
    images, labels = load_mnist5k()
    small = _resize(images, 8, Image.Resampling.BOX)
    rng = np.random.default_rng(SEED)
    # 100 test images per class (MNIST-5k has 500 per class), the rest for training.
    test = np.zeros(len(images), dtype=bool)
    for label in np.unique(labels):
        test[rng.permutation(np.flatnonzero(labels == label))[:100]] = True
    for split, chosen in (("train", ~test), ("test", test)):
        index = np.flatnonzero(chosen)
        for i in index:
            _save(small[i], root / split / str(int(labels[i])), f"{i:05d}.png")
    return {
        "layout": "ROOT/train/<class>/ + ROOT/test/<class>/",
        "images": f"{int((~test).sum())} + {int(test.sum())}",
        "size": "8x8",
        "mode": "L",
    }


def _contrasting_colours(rng: np.random.Generator, min_distance: float = 120.0):
    while True:
        foreground, background = rng.integers(0, 256, size=(2, 3)).astype(np.float64)
        if np.linalg.norm(foreground - background) >= min_distance:
            return foreground, background


def make_color32(root: Path) -> dict:
    images, labels = load_mnist5k()
    rng = np.random.default_rng(SEED)
    subset = np.sort(rng.permutation(len(images))[:2000])
    masks = _resize(images[subset], 32, Image.Resampling.BILINEAR).astype(np.float64) / 255.0
    coloured = []
    for mask in masks:
        foreground, background = _contrasting_colours(rng)
        mixed = background * (1.0 - mask[..., None]) + foreground * mask[..., None]
        coloured.append(np.clip(np.round(mixed), 0, 255).astype(np.uint8))
    _write_classes(np.stack(coloured), labels[subset], root)
    return {"layout": "ROOT/<class>/", "images": 2000, "size": "32x32", "mode": "RGB"}


def make_mnist56flat(root: Path) -> dict:
    images, labels = load_mnist5k()
    large = _resize(images, 56, Image.Resampling.BILINEAR)
    order = np.random.default_rng(SEED).permutation(len(images))  # no class order in the names
    rows = []
    for position, i in enumerate(order):
        name = f"{position:05d}.png"
        _save(large[i], root, name)
        rows.append((name, int(labels[i])))
    with open(root.parent / f"{root.name}_labels.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["file", "label"])
        writer.writerows(rows)
    return {"layout": "ROOT/*.png (flat, labels aside)", "images": 5000, "size": "56x56",
            "mode": "L"}  # fmt: skip


SETS: dict[str, Callable[[Path], dict]] = {
    "digits8": make_digits8,
    "mnist1797": make_mnist1797,
    "mnist8": make_mnist8,
    "color32": make_color32,
    "mnist56flat": make_mnist56flat,
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder that receives one folder per set")
    parser.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name in args.sets:
        root = out / name
        if root.exists():
            shutil.rmtree(root)
        written[name] = {"root": os.fspath(root), **SETS[name](root)}
        print(json.dumps({name: written[name]}), flush=True)
    return written


if __name__ == "__main__":
    main()
