"""Self-labeling after the SeCu phase, on cached features (SCAN's third step, for frozen heads).

The SeCu phase leaves heads whose clusters are right where the features are dense and
uncertain at the borders. Self-labeling trains each head to predict, from a perturbed copy of
an image's features, the cluster its plain features already fall in with confidence: the
confident images teach the border ones. What stays from SeCu: the projection head, the centers
(the classifier is the cosine similarity to them) and the clusters themselves.

Confidence is ranked within each cluster (the ``confident_fraction`` most confident images of
every cluster), not thresholded: a fixed probability threshold depends on the temperature and
lets a large cluster take over, a per-cluster share keeps every cluster's images in the
targets. The targets are redrawn at the start of every epoch from the head in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core.nearest import cosine_logits
from secu_plugin.frozen.head_presets import SelfLabelSettings
from secu_plugin.train.evaluation import project_features


@torch.no_grad()
def confident_targets(logits: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N,) int64 cluster of each row of ``logits`` (N, K), or -1 where the row is not among the
    ``fraction`` most confident (softmax probability) of the rows assigned to its cluster.

    Examples:
        >>> logits = torch.tensor([[5.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 0.5]])
        >>> confident_targets(logits, 0.5).tolist()
        [0, -1, 1, -1]
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"the confident fraction must be in (0, 1], got {fraction}")
    confidence, assigned = logits.softmax(dim=1).max(dim=1)
    targets = torch.full_like(assigned, -1)
    for cluster in assigned.unique():
        members = torch.nonzero(assigned == cluster).squeeze(1)
        keep = max(1, round(fraction * len(members)))
        best = members[confidence[members].topk(keep).indices]
        targets[best] = cluster
    return targets


def self_label_loss(
    projections: torch.Tensor,
    centers: Sequence[torch.Tensor],
    targets: torch.Tensor,
    keep: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Class-balanced cross-entropy of every head's softmax over
    :func:`~secu_plugin.core.nearest.cosine_logits` (``projections`` (B, dim) against its
    centers, at ``temperature``) against its ``targets``, over the images ``keep`` marks,
    summed over the heads. ``targets`` and ``keep``: (H, B), e.g. from
    :func:`confident_targets` (``targets.clamp(min=0)``, ``targets >= 0``).

    Summed, not averaged: each head's term weighs as it would alone, so SGD's learning rate
    (frozen heads) does not depend on the number of heads; AdamW (fine-tuning) is insensitive
    to the scale. A batch without any kept image gives a zero loss that has a gradient.

    Examples:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> loss = self_label_loss(z, [torch.eye(2)], torch.tensor([[0, 1]]),
        ...                        torch.tensor([[True, True]]), temperature=0.1)
        >>> round(float(loss), 4)
        0.0
    """
    if targets.shape != keep.shape or targets.shape != (len(centers), len(projections)):
        raise ValueError(
            f"targets and keep must be (heads, batch) = ({len(centers)}, {len(projections)}), "
            f"got {tuple(targets.shape)} and {tuple(keep.shape)}"
        )
    losses = []
    for head, head_centers in enumerate(centers):
        if not keep[head].any():
            continue
        logits = cosine_logits(projections, head_centers, temperature)[keep[head]]
        kept = targets[head][keep[head]]
        # Each cluster weighs the same in the batch (SCAN's class weights): large clusters
        # would otherwise pull the border images of the small ones over.
        counts = torch.bincount(kept, minlength=head_centers.shape[0])
        weight = torch.where(counts > 0, 1.0 / counts.clamp_min(1), 0.0).float()
        losses.append(F.cross_entropy(logits, kept, weight=weight))
    if not losses:
        return projections.sum() * 0.0  # no confident image in this batch: no gradient
    return sum(losses[1:], losses[0])


def self_label(
    head: nn.Module,
    centers: Sequence[nn.Parameter],
    features: torch.Tensor,
    settings: SelfLabelSettings,
    batch_size: int,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> list[float]:
    """Trains ``head`` and ``centers`` in place for ``settings.self_label_epochs`` epochs of
    class-balanced cross-entropy on the confident images; returns each epoch's share of images
    whose cluster changed (head 0).

    ``features``: (N, D) plain features, read batch by batch (a memory map is fine). Every draw
    comes from ``seed``: on several processes, each runs the same phase on all images and ends
    with the same head, without communication.

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> points = torch.cat([torch.randn(50, 8, generator=generator) + 4 * torch.eye(8)[i]
        ...                     for i in range(2)])
        >>> head = nn.Linear(8, 4)
        >>> centers = [nn.Parameter(torch.randn(2, 4, generator=generator))]
        >>> quiet = SelfLabelSettings(self_label_epochs=2)
        >>> len(self_label(head, centers, points, quiet, batch_size=32, log=lambda _: None))
        2
    """
    settings.check()
    device = next(head.parameters()).device
    generator = torch.Generator().manual_seed(seed + 7919)
    scale = features[: min(len(features), 10_000)].float().std(dim=0).clamp_min(1e-6).to(device)
    parameters = [*head.parameters(), *centers]
    optimizer = torch.optim.SGD(parameters, lr=settings.self_label_lr, momentum=0.9)
    steps = settings.self_label_epochs * max(1, len(features) // batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
    previous, changes = None, []
    for epoch in range(settings.self_label_epochs):
        with torch.no_grad():
            z = project_features(head, features)
            targets = torch.stack(
                [
                    confident_targets(
                        cosine_logits(z, c, settings.self_label_temperature),
                        settings.confident_fraction,
                    )
                    for c in centers
                ]
            )  # (H, N)
        assigned = cosine_logits(z, centers[0]).argmax(1)
        changes.append(0.0 if previous is None else float((assigned != previous).float().mean()))
        previous = assigned
        confident = (targets >= 0).float().mean().item()
        head.eval()  # BatchNorm keeps the SeCu phase statistics: noisy inputs must not shift them
        order = torch.randperm(len(features), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            rows = order[start : start + batch_size]
            x = features[rows].float().to(device)
            noise = torch.randn(x.shape, generator=generator).to(device)
            keep = (torch.rand(x.shape, generator=generator) >= settings.feature_dropout).to(device)
            x = (x + settings.feature_noise * scale * noise) * keep / (1 - settings.feature_dropout)
            batch_targets = targets[:, rows].to(device)
            if not (batch_targets >= 0).any():  # no confident image in this batch
                continue
            loss = self_label_loss(
                head(x),
                centers,
                batch_targets.clamp(min=0),
                batch_targets >= 0,
                settings.self_label_temperature,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(
            f"self-labeling epoch {epoch}: {confident:.0%} confident targets, "
            f"{changes[-1]:.1%} of head 0's clusters changed"
        )
    head.eval()
    return changes
