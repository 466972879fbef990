"""The heads of a non-SeCu objective (TURTLE, TEMI, SCAN) trained on cached features, as the
projection head and centers of a SeCu model, so that the export, the evaluation, the K
recommendation and the report of ``recipes/train_head.py`` stay those of SeCu heads.

The heads train in the neighbour space of the features (square root, L2, PCA whitening:
:func:`secu_plugin.core.neighbors.whitened`), where linear heads find the classes far better
than on the raw features (measured on MNIST-5k through Lite0: SCAN 0.85 against 0.72 in the
plain whitened space). That space is not an affine map of the features, so each trained head
is refitted as a linear classifier of the affinely whitened features (its clusters as
targets) and exported exactly (:func:`~secu_plugin.frozen.linear_heads.linear_heads_as_centers`):
the model predicts what the refitted heads predict; ``agreement`` says how close they are.
TEMI's heads are MLPs (not a linear map of any space): the same refit is what exports them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from secu_plugin.core.neighbors import nearest_neighbors, whitened
from secu_plugin.frozen.head_presets import ObjectiveSettings
from secu_plugin.frozen.linear_heads import WhitenedSpace, fit_linear_heads, linear_heads_as_centers
from secu_plugin.frozen.objective_scan import SCAN_DEFAULTS, ScanHeads
from secu_plugin.frozen.objective_temi import TEMI_DEFAULTS, TemiHeads
from secu_plugin.frozen.objective_turtle import TURTLE_DEFAULTS, TurtleHeads

# The affinely whitened space of the exported heads: wide enough that a linear classifier
# reproduces the trained heads' clusters (agreement ~0.98 on MNIST-5k).
EXPORT_DIM = 256


@dataclass
class ObjectiveHeads:
    """Trained heads as SeCu's pieces: ``projection`` (an ``nn.Linear`` of the backbone's
    features), one (K, dim) ``centers`` tensor per head, the softmax ``temperature``, every
    head's clusters of the training features (``labels``, (H, N)), the share of images where
    the exported heads agree with the trained ones (``agreement``, per head)."""

    projection: nn.Linear
    centers: list[torch.Tensor]
    temperature: float
    labels: torch.Tensor
    agreement: list[float]


def objective_space(features: torch.Tensor, dim: int) -> torch.Tensor:
    """Where the heads train: the neighbour space of ``dim`` dimensions (0: raw features).

    Examples:
        >>> objective_space(torch.rand(20, 6), dim=3).shape
        torch.Size([20, 3])
    """
    if dim == 0:
        return features.float()
    return whitened(features, min(dim, features.shape[1], features.shape[0] - 1))


def train_objective_heads(
    settings: ObjectiveSettings,
    features: torch.Tensor,
    num_clusters: list[int],
    seed: int = 0,
    neighbors: torch.Tensor | None = None,
) -> ObjectiveHeads:
    """Trains one head per K of ``num_clusters`` on ``features`` (N, D) with
    ``settings.objective`` and exports them. ``neighbors`` (N, k): SCAN's or TEMI's pairs
    (default, or when fewer than the objective's neighbours: found in the objective's space).

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> truth = torch.arange(200) % 2
        >>> features = torch.randn(2, 16, generator=generator).abs()[truth] * 3
        >>> features = features + torch.rand(200, 16, generator=generator)
        >>> settings = ObjectiveSettings(objective="scan", objective_dim=8, objective_steps=200)
        >>> heads = train_objective_heads(settings, features, [2, 3])
        >>> [tuple(c.shape) for c in heads.centers], heads.projection.out_features
        ([(2, 18), (3, 18)], 18)
        >>> from secu_plugin.metrics import cluster_accuracy
        >>> cluster_accuracy(truth.numpy(), heads.labels[0].numpy())
        1.0
    """
    if settings.objective not in ("turtle", "temi", "scan"):
        raise ValueError(
            f"train_objective_heads trains turtle, temi or scan heads, not {settings.objective!r}"
        )
    torch.manual_seed(seed)
    space = objective_space(features, settings.objective_dim)
    if settings.objective in ("scan", "temi"):
        k = min(getattr(settings, f"{settings.objective}_neighbors"), len(space) - 1)
        if neighbors is None or neighbors.shape[1] < k:
            neighbors = nearest_neighbors(space, k)
    if settings.objective == "turtle":
        trained = TurtleHeads(
            num_clusters,
            gamma=settings.turtle_gamma,
            iterations=settings.objective_steps or TURTLE_DEFAULTS["iterations"],
            inner_steps=settings.turtle_inner_steps,
            lr=settings.objective_lr or TURTLE_DEFAULTS["lr"],
            inner_lr=settings.turtle_inner_lr,
            warm_start=settings.turtle_warm_start,
        ).fit(space, seed=seed)
    elif settings.objective == "temi":
        trained = TemiHeads(
            num_clusters,
            heads_per_k=settings.temi_heads,
            steps=settings.objective_steps or TEMI_DEFAULTS["steps"],
            lr=settings.objective_lr or TEMI_DEFAULTS["lr"],
            beta=settings.temi_beta,
            momentum=settings.temi_momentum,
        ).fit(space, neighbors[:, :k], seed=seed)
    else:
        trained = ScanHeads(
            num_clusters,
            entropy_weight=settings.scan_entropy_weight,
            steps=settings.objective_steps or SCAN_DEFAULTS["steps"],
            lr=settings.objective_lr or SCAN_DEFAULTS["lr"],
            self_label_steps=settings.scan_self_label_steps,
            confidence=settings.scan_confidence,
            noise=settings.scan_noise,
            heads_per_k=settings.scan_heads,
        ).fit(space, neighbors[:, :k], seed=seed)
    labels = trained.predict(space)
    export_space = WhitenedSpace.fit(
        features, min(EXPORT_DIM, features.shape[1], len(features) - 1)
    )
    affine = export_space(features)
    weights, biases = fit_linear_heads(affine, labels, num_clusters)
    projection, centers, temperature = linear_heads_as_centers(export_space, weights, biases)
    exported = [(affine @ w.T + b).argmax(1) for w, b in zip(weights, biases)]
    agreement = [round(float((e == t).float().mean()), 4) for e, t in zip(exported, labels)]
    return ObjectiveHeads(projection, centers, temperature, torch.stack(exported), agreement)
