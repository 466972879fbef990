"""Pictures of a clustering, drawn with PIL only: cluster-size bar charts and sample montages.

SeCu's cluster-size constraint is easiest to judge from a chart of the sorted cluster
sizes, and the clusters' meaning from a montage of their members.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

# Size-plot layout, in pixels.
PLOT_PANEL_WIDTH = 480
PLOT_PANEL_HEIGHT = 240
_PLOT_MARGIN_LEFT = 56
_PLOT_MARGIN_RIGHT = 12
_PLOT_MARGIN_TOP = 28
_PLOT_MARGIN_BOTTOM = 30

# Montage layout, in pixels.
MONTAGE_LABEL_WIDTH = 96
MONTAGE_PADDING = 2

_BACKGROUND = (255, 255, 255)
_INK = (0, 0, 0)
_BAR = (70, 110, 180)
_MEAN_LINE = (200, 40, 40)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def ensure_parent_folder(path: str | os.PathLike) -> None:
    """Creates the folder that will hold the file ``path``, if missing.

    Examples:
        >>> import tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "new", "plot.png")
        >>> ensure_parent_folder(target)
        >>> os.path.isdir(os.path.dirname(target))
        True
    """
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)


def save_cluster_size_plot(
    counts_per_head: Sequence[np.ndarray | Sequence[int]],
    head_names: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """Saves a bar chart of the cluster sizes of each clustering head, sorted largest first.

    One panel per head, stacked vertically: bars of the sorted sizes, the size axis
    with 0 and the largest size, a red line at the mean size (the size every cluster would
    have if balanced) and a title with the head's name, number of clusters, min and max.

    The image is ``PLOT_PANEL_WIDTH`` x ``PLOT_PANEL_HEIGHT * len(head_names)`` pixels
    (480 x 240 per head).

    Args:
        counts_per_head: For each head, the number of samples in each of its clusters.
        head_names: One name per head.
        path: Where to write the image (PNG if the name ends in .png); parent folders are
            created.

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "sizes.png")
        >>> save_cluster_size_plot([np.array([5, 3, 2]), np.array([4, 4, 1, 1])],
        ...                        ["head 0", "head 1"], path)
        >>> Image.open(path).size
        (480, 480)
    """
    if len(counts_per_head) == 0:
        raise ValueError("counts_per_head is empty: need at least one head")
    if len(counts_per_head) != len(head_names):
        raise ValueError(
            f"got {len(counts_per_head)} count arrays but {len(head_names)} head names"
        )
    heads = []
    for name, counts in zip(head_names, counts_per_head):
        counts = np.asarray(counts)
        if counts.ndim != 1 or counts.size == 0:
            raise ValueError(f"counts of head {name!r} must be a non-empty 1-D array")
        if not np.issubdtype(counts.dtype, np.integer) or (counts < 0).any():
            raise ValueError(f"counts of head {name!r} must be non-negative integers")
        heads.append((str(name), np.sort(counts.astype(np.int64))[::-1]))

    canvas = Image.new("RGB", (PLOT_PANEL_WIDTH, PLOT_PANEL_HEIGHT * len(heads)), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    for panel, (name, sizes) in enumerate(heads):
        _draw_size_panel(draw, font, panel * PLOT_PANEL_HEIGHT, name, sizes)
    ensure_parent_folder(path)
    canvas.save(path)


def _draw_size_panel(
    draw: ImageDraw.ImageDraw,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    top: int,
    name: str,
    sizes: np.ndarray,
) -> None:
    """Draws one head's sorted cluster sizes into the panel starting at row ``top``."""
    left = _PLOT_MARGIN_LEFT
    right = PLOT_PANEL_WIDTH - _PLOT_MARGIN_RIGHT
    plot_top = top + _PLOT_MARGIN_TOP
    bottom = top + PLOT_PANEL_HEIGHT - _PLOT_MARGIN_BOTTOM
    largest = max(int(sizes[0]), 1)
    height = bottom - plot_top

    title = (
        f"{name}: {len(sizes)} clusters, {int(sizes.sum())} samples, "
        f"min {int(sizes[-1])}, max {int(sizes[0])}"
    )
    draw.text((left, top + 8), title, fill=_INK, font=font)

    bar_width = (right - left) / len(sizes)
    # Gaps between wide bars; none once bars get thin, so that thousands of clusters still show.
    gap = 0.2 * bar_width if bar_width >= 4 else 0.0
    for i, size in enumerate(sizes):
        if size == 0:
            continue
        x0 = left + i * bar_width + gap / 2
        x1 = max(x0, x0 + bar_width - gap - 1)
        draw.rectangle([x0, bottom - size / largest * height, x1, bottom], fill=_BAR)

    mean_y = bottom - sizes.mean() / largest * height
    draw.line([left, mean_y, right, mean_y], fill=_MEAN_LINE, width=1)
    draw.text((right - 60, mean_y - 12), f"mean {sizes.mean():.0f}", fill=_MEAN_LINE, font=font)

    draw.line([left, plot_top, left, bottom], fill=_INK)
    draw.line([left, bottom, right, bottom], fill=_INK)
    draw.text((left - 6, plot_top), str(largest), fill=_INK, font=font, anchor="ra")
    draw.text((left - 6, bottom), "0", fill=_INK, font=font, anchor="rb")
    draw.text((4, (plot_top + bottom) // 2), "size", fill=_INK, font=font, anchor="lm")
    draw.text(
        ((left + right) // 2, bottom + 6),
        "cluster (sorted by size)",
        fill=_INK,
        font=font,
        anchor="ma",
    )


def _as_pil_images(images: Sequence[Image.Image] | np.ndarray) -> Sequence[Image.Image] | None:
    """None when ``images`` is a uint8 array (converted lazily, per thumbnail)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(f"image array must be uint8, got {images.dtype}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3))):
            raise ValueError(
                f"image array must have shape (N, H, W) or (N, H, W, 3), got {images.shape}"
            )
        return None
    return images


def save_cluster_montage(
    images: Sequence[Image.Image] | np.ndarray,
    cluster_ids: np.ndarray | Sequence[int],
    path: str | os.PathLike | None,
    samples_per_cluster: int = 8,
    thumb_size: int = 32,
    max_clusters: int | None = None,
    seed: int = 0,
) -> Image.Image:
    """Saves a montage with one row of sample images per cluster, largest cluster first.

    Each row starts with a label "c<id> n=<size>" and shows up to ``samples_per_cluster``
    members, drawn at random (with ``seed``) and shown in dataset order; each thumbnail is
    the image padded to a square and resized to ``thumb_size``. Empty clusters do not occur
    in ``cluster_ids`` and so get no row; ties in size are ordered by cluster id.

    With ``rows = min(number of distinct cluster ids, max_clusters)`` the image is

    - width  = ``MONTAGE_LABEL_WIDTH + samples_per_cluster * (thumb_size + MONTAGE_PADDING)
      + MONTAGE_PADDING``  (96 + s * (t + 2) + 2),
    - height = ``rows * (thumb_size + MONTAGE_PADDING) + MONTAGE_PADDING``  (r * (t + 2) + 2).

    Args:
        images: PIL images, or a uint8 array (N, H, W) or (N, H, W, 3).
        cluster_ids: Cluster id of each image.
        path: Where to write the image (PNG if the name ends in .png); None to only return
            it. Parent folders are created.
        samples_per_cluster: Thumbnails per row.
        thumb_size: Side of each thumbnail in pixels.
        max_clusters: Show only this many of the largest clusters (all if None).
        seed: Seed for picking the samples.

    Returns:
        The montage as an RGB PIL image.

    Examples:
        >>> images = np.zeros((10, 28, 28), dtype=np.uint8)
        >>> montage = save_cluster_montage(images, [0, 0, 0, 1, 1, 2, 2, 2, 2, 2], None,
        ...                                samples_per_cluster=4, thumb_size=16)
        >>> montage.size  # (96 + 4 * 18 + 2, 3 * 18 + 2)
        (170, 56)
    """
    ids = np.asarray(cluster_ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"cluster_ids must be a 1-D integer array, got {ids.dtype} {ids.shape}")
    if len(ids) == 0:
        raise ValueError("cluster_ids is empty")
    if len(images) != len(ids):
        raise ValueError(f"got {len(images)} images but {len(ids)} cluster ids")
    if samples_per_cluster < 1 or thumb_size < 1:
        raise ValueError(
            f"samples_per_cluster and thumb_size must be >= 1, got {samples_per_cluster} "
            f"and {thumb_size}"
        )
    if max_clusters is not None and max_clusters < 1:
        raise ValueError(f"max_clusters must be >= 1 or None, got {max_clusters}")
    pil_images = _as_pil_images(images)

    clusters, sizes = np.unique(ids, return_counts=True)
    order = np.lexsort((clusters, -sizes))  # largest first, then by id
    if max_clusters is not None:
        order = order[:max_clusters]

    cell = thumb_size + MONTAGE_PADDING
    width = MONTAGE_LABEL_WIDTH + samples_per_cluster * cell + MONTAGE_PADDING
    height = len(order) * cell + MONTAGE_PADDING
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = _font()
    rng = np.random.default_rng(seed)
    for row, cluster_index in enumerate(order):
        cluster, size = int(clusters[cluster_index]), int(sizes[cluster_index])
        y = MONTAGE_PADDING + row * cell
        draw.text(
            (4, y + thumb_size // 2), f"c{cluster} n={size}", fill=_INK, font=font, anchor="lm"
        )
        members = np.flatnonzero(ids == cluster)
        if len(members) > samples_per_cluster:
            members = np.sort(rng.choice(members, samples_per_cluster, replace=False))
        for column, index in enumerate(members):
            if pil_images is None:
                image = Image.fromarray(np.asarray(images)[index].squeeze())
            else:
                image = pil_images[int(index)]
            thumb = ImageOps.pad(image.convert("RGB"), (thumb_size, thumb_size))
            canvas.paste(thumb, (MONTAGE_LABEL_WIDTH + column * cell, y))
    if path is not None:
        ensure_parent_folder(path)
        canvas.save(path)
    return canvas
