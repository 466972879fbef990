"""Images held in memory: a uint8 array as an image source, and the bundled MNIST-5k digits."""

from __future__ import annotations

import importlib.resources

import numpy as np
from PIL import Image


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Loads the 5000 bundled MNIST digits (500 per class, sorted by label).

    See ``secu_plugin/assets/MNIST5K.md`` for their origin and license.

    Returns:
        ``(images, labels)``: uint8 array of shape (5000, 28, 28), white digits on black,
        and int64 array of shape (5000,) with values 0..9.

    Examples:
        >>> images, labels = load_mnist5k()
        >>> images.shape, images.dtype, labels.shape, labels.dtype
        ((5000, 28, 28), dtype('uint8'), (5000,), dtype('int64'))
        >>> np.bincount(labels).tolist()
        [500, 500, 500, 500, 500, 500, 500, 500, 500, 500]
    """
    resource = importlib.resources.files("secu_plugin") / "assets" / "mnist5k.npz"
    with resource.open("rb") as file, np.load(file) as npz:
        images = np.asarray(npz["images"], dtype=np.uint8)
        labels = np.asarray(npz["labels"], dtype=np.int64)
    return images, labels


class ArraySource:
    """Images held in a uint8 array of shape (N, H, W) or (N, H, W, 3), as PIL images.

    Examples:
        >>> source = ArraySource(np.zeros((2, 4, 4), dtype=np.uint8))
        >>> len(source), source.load(1).size
        (2, (4, 4))
    """

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])
