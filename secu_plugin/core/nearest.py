"""Nearest center: the one rule that turns a projection into a cluster id.

The bank (during training), :class:`secu_plugin.SeCuModel` (after export) and the evaluation
all predict with :func:`nearest_center`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_probabilities(
    z: torch.Tensor, centers: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax over ``centers`` of cos(z, center) / temperature: (B, K).

    Args:
        z: (B, dim) projections, not normalized.
        centers: (K, dim) centers of one head, raw or normalized.
        temperature: Softmax temperature (> 0).

    Examples:
        >>> centers = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> center_probabilities(torch.tensor([[3.0, 0.0]]), centers, 1.0).argmax(1).tolist()
        [0]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    centers = F.normalize(centers, dim=1)
    logits = F.normalize(z.to(centers.dtype), dim=1) @ centers.T / temperature
    return logits.softmax(dim=1)


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
