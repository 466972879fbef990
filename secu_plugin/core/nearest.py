"""Nearest center: the one rule that turns a projection into a cluster id.

The bank (during training), :class:`secu_plugin.SeCuModel` (after export) and the evaluation
all predict with :func:`nearest_center`; every cosine similarity of projections to centers
(the confidence, self-labeling's logits, the report's similarities) is :func:`cosine_logits`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_logits(z: torch.Tensor, centers: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """cos(z, center) / temperature of every row of ``z`` and every center: (B, K) logits.

    Args:
        z: (B, dim) projections, not normalized.
        centers: (K, dim) centers of one head, raw or normalized.
        temperature: Divides the cosines (> 0); 1: the cosines themselves.

    Examples:
        >>> centers = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> cosine_logits(torch.tensor([[3.0, 0.0]]), centers, 0.5).tolist()
        [[2.0, 0.0]]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    centers = F.normalize(centers, dim=1)
    return F.normalize(z.to(centers.dtype), dim=1) @ centers.T / temperature


def center_probabilities(
    z: torch.Tensor, centers: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax over ``centers`` of :func:`cosine_logits`: (B, K).

    Examples:
        >>> centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> center_probabilities(torch.tensor([[3.0, 0.0]]), centers, 1.0).argmax(1).tolist()
        [0]
    """
    return cosine_logits(z, centers, temperature).softmax(dim=1)


def nearest_center(
    z: torch.Tensor, centers: torch.Tensor, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The most similar center (cosine) of each row, and its softmax probability.

    Args:
        z: (B, dim) projections, not normalized.
        centers: (K, dim) centers of one head, raw or normalized.
        temperature: Temperature of the confidence; the ids do not depend on it.

    Returns:
        ``(cluster_ids, confidence)``: int64 (B,) and float (B,).

    Examples:
        >>> centers = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
        >>> ids, confidence = nearest_center(torch.tensor([[0.1, 2.0], [-5.0, 1.0]]), centers)
        >>> ids.tolist(), bool((confidence > 1 / 3).all())
        ([1, 2], True)
    """
    confidence, cluster_ids = center_probabilities(z, centers, temperature).max(dim=1)
    return cluster_ids.long(), confidence
