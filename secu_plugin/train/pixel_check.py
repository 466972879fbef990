"""Did a run learn anything the pixels do not already show? Its clusters against k-means on
the pixels of the same images, on one footing, and what to try when it did not.

- **With labels** (class subfolders): ACC of the scored head against the ACC of k-means on the
  pixels with the same K: on the raw pixels (:func:`secu_plugin.baselines.kmeans_baseline`) and
  on the whitened pixels (the neighbour space of :func:`secu_plugin.core.neighbors.whitened`,
  to 20, 50 and 256 dimensions, as ``benchmarks/kmeans_baseline.py`` and
  ``docs/scratch_heldout.json``'s ``kmeans_whitened_pixels_acc``); the best of them, picked
  with the labels, which can only favour k-means.
- **Without labels**: the recommended head's clusters and the same k-means clusterings (K of
  that head) scored by one label-free score, the k-NN modularity
  (:func:`secu_plugin.k_signals.knn_modularity`) on the k-NN graph of the run's backbone
  features (pooled, one row per image); the best k-means by that score.

Bounded for any folder: a seeded random sample of at most ``max_images`` images (2,000), their
pixels area-averaged down to at most ``max_side`` (32) pixels a side; the whitening is the
eigendecomposition of the sample's n x n Gram matrix (the same space as ``whitened``'s D x D
covariance, at a cost that does not grow with the pixels). About a second or two on 2 CPU cores.
A run within ``margin`` of k-means is "no better", and says so in words, with the next step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from secu_plugin.baselines import kmeans_clusters
from secu_plugin.data.describe import has_informative_labels
from secu_plugin.k_signals import knn_graph, knn_modularity, sample_indices
from secu_plugin.metrics import cluster_accuracy
from secu_plugin.train.evaluation import evaluation_head

MAX_IMAGES = 2_000
MAX_SIDE = 32
WHITENINGS = (20, 50, 256)
GRAPH_NEIGHBORS = 10
MARGIN = 0.02  # closer than this to k-means is "no better" (ACC, or modularity without labels)


def sample_pixels(
    images: Sequence, max_images: int = MAX_IMAGES, max_side: int = MAX_SIDE, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, pixels)``: a seeded sample of at most ``max_images`` of ``images`` (items
    ``(PIL image, label)``, an ``ImageDataset``) and their pixels (n, D) in [0, 1], every image
    in the first one's mode (grey or RGB) and size, area-averaged to at most ``max_side`` a side.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> data = ImageDataset.from_arrays(np.zeros((6, 64, 48), np.uint8))
        >>> indices, pixels = sample_pixels(data, max_images=4)
        >>> len(indices), pixels.shape
        (4, (4, 768))
    """
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1 pixel, got {max_side}")
    indices = sample_indices(len(images), max_images, seed)
    first = images[int(indices[0])][0]
    mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
    width, height = first.size
    scale = min(1.0, max_side / max(width, height))
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    rows = []
    for index in indices:
        image = images[int(index)][0].convert(mode)
        if image.size != (width, height):  # a folder of mixed sizes: the first one's
            image = image.resize((width, height))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        array = array.reshape(height, width, -1).permute(2, 0, 1)[None]
        if size != (height, width):
            array = F.interpolate(array, size=size, mode="area")
        rows.append(array.reshape(-1))
    return indices, torch.stack(rows).numpy()


def whitened_samples(pixels: np.ndarray, dims: Sequence[int]) -> list[np.ndarray]:
    """The rows of ``pixels`` (n, D) in :func:`~secu_plugin.core.neighbors.whitened`'s space
    (square root, L2 normalization, PCA whitening, L2-normalized) for each of ``dims`` (each
    capped at the sample's rank), from one eigendecomposition of the n x n Gram matrix: the
    whitened coordinates are the top eigenvectors times sqrt(n).

    Examples:
        >>> from secu_plugin.core.neighbors import whitened
        >>> x = np.random.default_rng(0).uniform(size=(30, 8)).astype(np.float32)
        >>> mine = whitened_samples(x, [3])[0]
        >>> theirs = F.normalize(whitened(torch.from_numpy(x), 3))
        >>> bool(np.allclose(np.abs(mine), np.abs(theirs.numpy()), atol=1e-4))
        True
        >>> [space.shape[1] for space in whitened_samples(x, [2, 50])]  # 50 capped at the rank
        [2, 8]
    """
    x = torch.from_numpy(pixels).double()
    x = F.normalize(x.sign() * x.abs().sqrt(), dim=1)
    x = x - x.mean(0)
    values, vectors = torch.linalg.eigh(x @ x.T)  # ascending
    kept = int((values > 1e-9 * values[-1].clamp_min(1e-30)).sum())  # the rank: no noise axes
    spaces = []
    for wanted in dims:
        top = vectors[:, -max(1, min(wanted, kept)) :].flip(1) * math.sqrt(len(x))
        spaces.append(F.normalize(top.float(), dim=1).numpy())
    return spaces


def pixel_clusterings(pixels: np.ndarray, k: int, seed: int) -> dict[str, np.ndarray]:
    """k-means clusters (n,) of ``pixels`` into ``k`` (:func:`~secu_plugin.baselines.
    kmeans_baseline`'s): on the raw pixels and on each whitening of :data:`WHITENINGS` (at
    most the sample's rank; already L2-normalized), by name."""
    spaces = {"raw": pixels}
    for space in whitened_samples(pixels, WHITENINGS):
        spaces.setdefault(f"whitened_{space.shape[1]}", space)
    return {
        name: kmeans_clusters(space, k, seed, normalize=False) for name, space in spaces.items()
    }


def compare_with_pixel_kmeans(
    images: Sequence,
    predictions: np.ndarray,
    num_clusters: list[int],
    recommended_head: int,
    labels: np.ndarray | None,
    pooled_features: Callable[[np.ndarray], torch.Tensor],
    next_step: str,
    seed: int = 0,
    max_images: int = MAX_IMAGES,
    max_side: int = MAX_SIDE,
) -> dict:
    """A run's clusters (``predictions`` (H, N) of ``images``) against k-means on the pixels.

    With informative ``labels``: the ACC of the head :func:`evaluation_head` scores; else the
    k-NN modularity of the ``recommended_head`` on the graph of ``pooled_features(rows)``
    (the backbone's (n, F) features of those images). Returns the record (``score``, ``run``,
    ``kmeans_pixels``, the k-means ``space`` that scored best, ``learned``, the sample) and,
    where the run is no better, ``advice``: those figures in words, then ``next_step`` (a
    command).

    Examples:
        >>> from secu_plugin.data import load_mnist5k, ImageDataset
        >>> digits, digit_labels = load_mnist5k()
        >>> digits, digit_labels = digits[::17], digit_labels[::17]  # 295 of every class
        >>> data = ImageDataset.from_arrays(digits, labels=digit_labels)
        >>> truth, noise = digit_labels[None], np.arange(len(digits))[None] % 10
        >>> def features(rows):
        ...     return torch.from_numpy(digits[rows].reshape(len(rows), -1)).float()
        >>> found = compare_with_pixel_kmeans(data, truth, [10], 0, data.labels, features, "cmd")
        >>> found["score"], found["run"], found["learned"], "advice" in found
        ('accuracy', 1.0, True, False)
        >>> found = compare_with_pixel_kmeans(data, noise, [10], 0, None, features, "try: cmd")
        >>> found["score"], found["learned"], found["advice"].endswith("try: cmd")
        ('knn_modularity', False, True)
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape != (len(num_clusters), len(images)):
        raise ValueError(
            f"predictions must be (heads, images) = ({len(num_clusters)}, {len(images)}), "
            f"got {predictions.shape}"
        )
    started = time.time()
    rows, pixels = sample_pixels(images, max_images, max_side, seed)
    by_labels = has_informative_labels(labels)
    if by_labels:
        head = evaluation_head(num_clusters, int(np.max(labels)) + 1)
        truth = np.asarray(labels)[rows]
        known = truth >= 0

        def score(ids: np.ndarray) -> float:
            return cluster_accuracy(truth[known], ids[known])
    else:
        head = recommended_head
        graph = knn_graph(torch.as_tensor(pooled_features(rows)).float(), GRAPH_NEIGHBORS)

        def score(ids: np.ndarray) -> float:
            return knn_modularity(graph, ids)[0]

    k = num_clusters[head]
    run_score = round(float(score(predictions[head][rows])), 4)
    kmeans = {
        name: round(float(score(ids)), 4)
        for name, ids in pixel_clusterings(pixels, min(k, len(rows)), seed).items()
    }
    space = max(kmeans, key=kmeans.get)
    found: dict = {
        "score": "accuracy" if by_labels else "knn_modularity",
        "num_clusters": k,
        "run": run_score,
        "kmeans_pixels": kmeans[space],
        "space": space,
        "every_space": kmeans,
        "learned": run_score > kmeans[space] + MARGIN,
        "images": len(rows),
        "of_images": len(images),
        "pixels": list(pixels.shape[1:]),
        "margin": MARGIN,
    }
    if not found["learned"]:
        figure = "ACC" if by_labels else "k-NN modularity on the backbone's feature graph"
        sample = "" if len(rows) == len(images) else f" of {len(rows)} of the {len(images)} images,"
        found["advice"] = (
            f"this run clusters no better than k-means on the pixels ({figure}{sample} K={k}: "
            f"{run_score:.3f} against {kmeans[space]:.3f}): it has learnt nothing the pixels "
            f"do not show already. Next: {next_step}"
        )
    found["seconds"] = round(time.time() - started, 2)
    return found


def final_line_fields(found: dict) -> dict:
    """The comparison's figures in a run's final JSON line.

    Examples:
        >>> final_line_fields({"score": "accuracy", "run": 0.9, "kmeans_pixels": 0.5,
        ...                    "learned": True})
        {'kmeans_pixels_accuracy': 0.5, 'beats_kmeans_pixels': True}
    """
    fields = {f"kmeans_pixels_{found['score']}": found["kmeans_pixels"]}
    if found["score"] != "accuracy":  # the run's own figure, which ACC already is
        fields[found["score"]] = found["run"]
    fields["beats_kmeans_pixels"] = found["learned"]
    if "advice" in found:
        fields["advice"] = found["advice"]
    return fields


def verdict(found: dict) -> str:
    """The comparison in one sentence, for the log and the report.

    Examples:
        >>> print(verdict({"score": "accuracy", "num_clusters": 10, "run": 0.9, "space": "raw",
        ...                "kmeans_pixels": 0.5, "learned": True, "images": 9, "of_images": 9}))
        ... # doctest: +NORMALIZE_WHITESPACE
        Against k-means on the pixels (ACC, K=10, 9 images): 0.900 for this run,
        0.500 for k-means (raw): the run learnt more than the pixels show.
    """
    figure = "ACC" if found["score"] == "accuracy" else "k-NN modularity"
    images = f"{found['images']} images"
    if found["images"] < found["of_images"]:
        images = f"a random {found['images']} of the {found['of_images']} images"
    outcome = "the run learnt more than the pixels show" if found["learned"] else "no better"
    return (
        f"Against k-means on the pixels ({figure}, K={found['num_clusters']}, {images}): "
        f"{found['run']:.3f} for this run, {found['kmeans_pixels']:.3f} for k-means "
        f"({found['space']}): {outcome}."
    )


def backbone_features(
    model: torch.nn.Module, images: Sequence, batch_size: int = 256
) -> Callable[[np.ndarray], torch.Tensor]:
    """``rows -> (n, F)``: the pooled backbone features of those ``images`` (items
    ``(PIL image, label)``) through ``model.embed`` (a ``SeCuNetwork``) in eval mode, on the
    CPU: the graph of :func:`compare_with_pixel_kmeans` where no cached features exist.

    Examples:
        >>> from secu_plugin.models import SeCuNetwork
        >>> from secu_plugin.data import ImageDataset
        >>> network = SeCuNetwork("secu_convnet_tiny", in_chans=1)
        >>> data = ImageDataset.from_arrays(np.zeros((5, 28, 28), np.uint8))
        >>> backbone_features(network, data, batch_size=2)(np.array([0, 3, 4])).shape[0]
        3
    """

    @torch.no_grad()
    def features(rows: np.ndarray) -> torch.Tensor:
        was_training = model.training
        model.eval()
        blocks = [
            model.embed([images[int(i)][0] for i in rows[start : start + batch_size]]).float()
            for start in range(0, len(rows), batch_size)
        ]
        model.train(was_training)
        return torch.cat(blocks).cpu()

    return features
