"""Spherical k-means in torch: the warm start of SeCu's centers from features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def spherical_kmeans(
    features: torch.Tensor,
    k: int,
    iterations: int = 30,
    restarts: int = 3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means on the unit sphere (cosine similarity): ``(centers (k, D), labels (N,))`` of the
    restart with the largest total similarity.

    Deterministic for a given ``generator`` (the initial centers are drawn from it), so every
    process of a data-parallel run computes the same result from the same features.

    Examples:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> centers, labels = spherical_kmeans(points, 2, generator=torch.Generator().manual_seed(0))
        >>> bool(labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2])
        True
    """
    if features.ndim != 2 or not 1 <= k <= len(features):
        raise ValueError(f"need (N, D) features with N >= k = {k}, got {tuple(features.shape)}")
    z = F.normalize(features.float(), dim=1)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        first = torch.randperm(len(z), generator=generator)[:k].to(z.device)
        centers = z[first].clone()
        for _ in range(iterations):
            labels = (z @ centers.T).argmax(1)
            sums = torch.zeros_like(centers).index_add_(0, labels, z)
            empty = sums.norm(dim=1) == 0
            # An empty cluster keeps its center (no mean to move to).
            centers = torch.where(empty[:, None], centers, F.normalize(sums, dim=1))
        similarity = z @ centers.T
        labels = similarity.argmax(1)
        score = float(similarity.max(1).values.sum())
        if best is None or score > best[0]:
            best = (score, centers, labels)
    assert best is not None
    return best[1], best[2]
