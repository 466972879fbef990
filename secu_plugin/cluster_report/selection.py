"""Which images a report shows, and their thumbnails, written once for every head.

A cluster shows its members nearest to the center and its least confident ones. The number
per cluster shrinks as K grows (a budget of images per head), so that a report of 50,000
images and heads of thousands of clusters stays a few hundred MB, however large the data.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from secu_plugin.data.files import UNREADABLE_IMAGE_ERRORS, read_image
from secu_plugin.data.transforms import to_uniform_mode

THUMBNAIL_FOLDER = "thumbs"


class ShownMembers:
    """The members one head's report shows per cluster: ``nearest[c]`` (most similar to the
    center first) and ``least_confident[c]`` (least confident first, none of ``nearest[c]``).

    Examples:
        >>> ids = np.array([0, 0, 0, 1, 1])
        >>> confidence = np.array([0.9, 0.5, 0.7, 0.8, 0.6])
        >>> similarity = np.array([0.1, 0.9, 0.5, 0.3, 0.4])
        >>> shown = ShownMembers(ids, confidence, similarity, num_clusters=3, per_row=1)
        >>> [c.tolist() for c in shown.nearest], [c.tolist() for c in shown.least_confident]
        ([[1], [4], []], [[2], [3], []])
        >>> shown.sizes.tolist()
        [3, 2, 0]
    """

    def __init__(
        self,
        cluster_ids: np.ndarray,
        confidence: np.ndarray,
        similarity: np.ndarray,
        num_clusters: int,
        per_row: int,
    ) -> None:
        self.sizes = np.bincount(cluster_ids, minlength=num_clusters)
        starts = np.concatenate([[0], np.cumsum(self.sizes)])
        by_similarity = np.lexsort((-similarity, cluster_ids))
        by_confidence = np.lexsort((confidence, cluster_ids))
        self.nearest: list[np.ndarray] = []
        self.least_confident: list[np.ndarray] = []
        for cluster in range(num_clusters):
            start, stop = starts[cluster], starts[cluster + 1]
            nearest = by_similarity[start : min(stop, start + per_row)]
            taken = set(nearest.tolist())
            unsure = []
            for index in by_confidence[start:stop]:  # stops after per_row: cheap for any size
                if len(unsure) == per_row:
                    break
                if int(index) not in taken:
                    unsure.append(int(index))
            self.nearest.append(nearest)
            self.least_confident.append(np.array(unsure, dtype=np.int64))

    def indices(self) -> set[int]:
        """Every image shown."""
        return {int(i) for rows in (self.nearest, self.least_confident) for r in rows for i in r}


def images_per_row(num_clusters: int, per_cluster: int, images_per_head: int) -> int:
    """Images per row of a cluster: ``per_cluster``, fewer (at least 1) when two rows of every
    cluster would pass ``images_per_head``.

    Examples:
        >>> images_per_row(10, per_cluster=12, images_per_head=4000)
        12
        >>> images_per_row(1000, per_cluster=12, images_per_head=4000)
        2
    """
    return int(np.clip(images_per_head // (2 * num_clusters), 1, per_cluster))


def image_at(images: Any, index: int) -> Image.Image:
    """Item ``index`` of a sequence of PIL images or image file paths, of a data set whose
    items are (image, label) pairs, or of a uint8 array (N, H, W) / (N, H, W, 3)."""
    item = images[index]
    if isinstance(item, tuple):
        item = item[0]
    if isinstance(item, (str, os.PathLike)):
        item = read_image(os.fspath(item))
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ValueError(f"image arrays must be uint8, got {item.dtype}")
        item = Image.fromarray(item)
    if not isinstance(item, Image.Image):
        raise ValueError(f"image {index} is a {type(item).__name__}, not a PIL image")
    return item


def write_thumbnails(
    directory: Path, images: Sequence[Any], indices: set[int], thumb_size: int
) -> dict[int, str]:
    """Writes one JPEG thumbnail (longest side at most ``thumb_size``) per image index under
    ``directory/thumbs``; returns index -> relative path. Images that cannot be read are left
    out (the page shows them as unreadable)."""
    folder = directory / THUMBNAIL_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for index in sorted(indices):
        try:
            image = image_at(images, index)
            image.load()
        except (*UNREADABLE_IMAGE_ERRORS, ValueError):
            continue
        image = to_uniform_mode(image).copy()  # JPEG takes L and RGB; 16-bit grey rescaled
        image.thumbnail((thumb_size, thumb_size))
        name = f"{THUMBNAIL_FOLDER}/{index}.jpg"
        image.save(os.path.join(directory, name), quality=85)
        written[index] = name
    return written
