"""Tests for secu_plugin.viz: the files are valid PNGs of the documented sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from secu_plugin.viz import (
    MONTAGE_LABEL_WIDTH,
    MONTAGE_PADDING,
    PLOT_PANEL_HEIGHT,
    PLOT_PANEL_WIDTH,
    save_cluster_montage,
    save_cluster_size_plot,
)


def _open_png(path: Path) -> Image.Image:
    image = Image.open(path)
    assert image.format == "PNG"
    image.load()
    return image


def test_size_plot(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    counts = [
        np.bincount(rng.integers(0, 10, 1000), minlength=10),
        np.bincount(rng.integers(0, 2000, 5000), minlength=2000),  # thin bars
        np.array([0, 0, 5]),  # empty clusters
    ]
    path = tmp_path / "nested" / "sizes.png"
    save_cluster_size_plot(counts, ["k=10", "k=2000", "degenerate"], path)
    image = _open_png(path)
    assert image.size == (PLOT_PANEL_WIDTH, 3 * PLOT_PANEL_HEIGHT) == (480, 720)
    # Something was drawn in every panel, not only the background.
    pixels = np.asarray(image.convert("L"))
    for panel in range(3):
        rows = pixels[panel * PLOT_PANEL_HEIGHT : (panel + 1) * PLOT_PANEL_HEIGHT]
        assert (rows < 200).mean() > 0.05


def test_size_plot_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="head names"):
        save_cluster_size_plot([np.array([1, 2])], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        save_cluster_size_plot([np.array([1, -2])], ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="empty"):
        save_cluster_size_plot([], [], tmp_path / "x.png")


@pytest.mark.parametrize(
    ("samples", "thumb", "max_clusters", "rows"),
    [(8, 32, None, 4), (3, 20, 2, 2), (1, 8, 10, 4)],
)
def test_montage_size(tmp_path: Path, samples: int, thumb: int, max_clusters, rows: int) -> None:
    images = np.random.default_rng(0).integers(0, 256, (30, 28, 28), dtype=np.uint8)
    cluster_ids = np.array([5] * 12 + [2] * 9 + [9] * 6 + [0] * 3)
    path = tmp_path / "montage.png"
    returned = save_cluster_montage(
        images,
        cluster_ids,
        path,
        samples_per_cluster=samples,
        thumb_size=thumb,
        max_clusters=max_clusters,
    )
    expected = (
        MONTAGE_LABEL_WIDTH + samples * (thumb + MONTAGE_PADDING) + MONTAGE_PADDING,
        rows * (thumb + MONTAGE_PADDING) + MONTAGE_PADDING,
    )
    assert returned.size == expected
    assert _open_png(path).size == expected


def test_montage_orders_largest_cluster_first() -> None:
    # Cluster 1 (bright images) is the largest, so its thumbnails fill the first row.
    images = [Image.new("L", (10, 10), 0)] * 2 + [Image.new("RGB", (12, 8), (255,) * 3)] * 5
    montage = save_cluster_montage(
        images, [0, 0, 1, 1, 1, 1, 1], None, samples_per_cluster=2, thumb_size=10
    )
    pixels = np.asarray(montage.convert("L"))
    first_thumb = pixels[MONTAGE_PADDING + 5, MONTAGE_LABEL_WIDTH + 5]
    second_row_thumb = pixels[MONTAGE_PADDING + 12 + 5, MONTAGE_LABEL_WIDTH + 5]
    assert first_thumb == 255 and second_row_thumb == 0


def test_montage_bad_input() -> None:
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="3 images but 2"):
        save_cluster_montage(images, [0, 1], None)
    with pytest.raises(ValueError, match="uint8"):
        save_cluster_montage(images.astype(np.float32), [0, 1, 2], None)
    with pytest.raises(ValueError, match="max_clusters"):
        save_cluster_montage(images, [0, 1, 2], None, max_clusters=0)
