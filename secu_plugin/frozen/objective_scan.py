"""SCAN heads: an image and its nearest neighbours fall in the same cluster, then the
confident images teach the rest.

After Van Gansbeke et al., "SCAN: Learning to Classify Images without Labels" (ECCV 2020),
the head-only recipe of its ImageNet runs (backbone frozen). Step 1, neighbour consistency:
each step pairs every image with one neighbour drawn from its ``num_neighbors`` nearest
(itself included, as in SCAN's loader) and lowers -mean log <p(image), p(neighbour)> minus
``entropy_weight`` x the entropy of the mean p (no empty clusters). Step 2, self-labeling:
the images whose probability exceeds ``confidence`` (SCAN's 0.99) are the targets of a
class-balanced cross-entropy on a perturbed copy of their features (Gaussian noise in place
of SCAN's strong image augmentation; the backbone is frozen, so only the head learns).

Several heads per K (``heads_per_k``; SCAN's ImageNet runs train 10) start from different
random weights; the one kept per K is SCAN's choice, the lowest consistency over every
(image, neighbour) pair minus 1.0 x the entropy of the mean p, computed without labels. Only
the kept head self-labels, as in SCAN.

CPU adaptation: linear heads, all K of the bank and all their copies trained at once as the
columns of one matrix, full batch, Adam (SCAN's SGD at lr 5 was for unnormalised MoCo features).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from secu_plugin.frozen.linear_heads import LinearHeads
from secu_plugin.frozen.objective_turtle import per_head_softmax

SCAN_DEFAULTS = {
    "entropy_weight": 5.0,
    "steps": 1500,
    "lr": 1e-2,
    "self_label_steps": 300,
    "confidence": 0.9,
    "noise": 0.5,
    "heads_per_k": 1,
}


def scan_criterion(probs: torch.Tensor, neighbors: torch.Tensor) -> float:
    """SCAN's label-free choice of a head (lower is better): -mean log <p(i), p(j)> over every
    image i and each of its ``neighbors`` (N, k) j, minus the entropy of the mean ``probs``.

    Examples:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
        >>> neighbors = torch.tensor([[1], [0], [3], [2]])
        >>> scan_criterion(probs, neighbors) < scan_criterion(probs, neighbors.flip(0))
        True
    """
    agreement = (probs[:, None, :] * probs[neighbors]).sum(2).clamp_min(1e-7)
    return float(-agreement.log().mean() - torch.special.entr(probs.mean(0)).sum())


@dataclass
class ScanHeads(LinearHeads):
    """Linear heads (one per K of ``num_clusters``) trained by SCAN on features (N, dim) and
    their ``neighbors`` (N, k) indices.

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> means = torch.randn(3, 8, generator=generator) * 4
        >>> truth = torch.arange(300) % 3
        >>> features = means[truth] + torch.randn(300, 8, generator=generator)
        >>> from secu_plugin.core.neighbors import nearest_neighbors
        >>> neighbors = nearest_neighbors(features, k=5)
        >>> heads = ScanHeads([3], steps=100).fit(features, neighbors, seed=0)
        >>> from secu_plugin.metrics import cluster_accuracy
        >>> cluster_accuracy(truth.numpy(), heads.predict(features)[0].numpy()) > 0.95
        True
    """

    entropy_weight: float = SCAN_DEFAULTS["entropy_weight"]
    steps: int = SCAN_DEFAULTS["steps"]
    lr: float = SCAN_DEFAULTS["lr"]
    self_label_steps: int = SCAN_DEFAULTS["self_label_steps"]
    confidence: float = SCAN_DEFAULTS["confidence"]
    noise: float = SCAN_DEFAULTS["noise"]
    heads_per_k: int = SCAN_DEFAULTS["heads_per_k"]
    # after fit: per K, every head's criterion (scan_criterion) before self-labeling
    criteria: list[list[float]] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.heads_per_k < 1:
            raise ValueError(f"scan heads_per_k must be positive, got {self.heads_per_k}")
        if self.steps < 1 or self.self_label_steps < 0 or self.lr <= 0:
            raise ValueError("scan steps and lr must be positive, self_label_steps >= 0")
        if not 0 < self.confidence < 1:
            raise ValueError(f"scan confidence must be in (0, 1), got {self.confidence}")

    def fit(self, features: torch.Tensor, neighbors: torch.Tensor, seed: int = 0) -> ScanHeads:
        """Neighbour consistency, then self-labeling, on ``features`` (N, dim); returns self."""
        x = features.float()
        rows, dim = x.shape
        if neighbors.shape[0] != rows:
            raise ValueError(f"neighbors has {neighbors.shape[0]} rows, features {rows}")
        generator = torch.Generator().manual_seed(seed)
        bound = dim**-0.5
        copies = [k for k in self.num_clusters for _ in range(self.heads_per_k)]
        total = sum(copies)
        weight = ((torch.rand(total, dim, generator=generator) * 2 - 1) * bound).requires_grad_()
        bias = torch.zeros(total, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=self.lr)
        candidates = torch.cat([torch.arange(rows)[:, None], neighbors], 1)  # self included
        for _ in range(self.steps):
            pick = torch.randint(candidates.shape[1], (rows,), generator=generator)
            partner = candidates[torch.arange(rows), pick]
            probs = per_head_softmax(x @ weight.T + bias, copies)
            loss = 0.0
            for anchor in probs.split(copies, 1):
                agreement = (anchor * anchor[partner]).sum(1).clamp_min(1e-7)
                entropy = torch.special.entr(anchor.mean(0)).sum()
                loss = loss - agreement.log().mean() - self.entropy_weight * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        weight, bias = self._keep_best_heads(x, neighbors, weight.detach(), bias.detach(), copies)
        weight.requires_grad_()
        bias.requires_grad_()
        optimizer = torch.optim.Adam([weight, bias], lr=self.lr)
        for _ in range(self.self_label_steps):
            with torch.no_grad():
                probs = per_head_softmax(x @ weight.T + bias, self.num_clusters)
            noisy = x + self.noise * torch.randn(x.shape, generator=generator)
            logits = noisy @ weight.T + bias
            loss = 0.0
            for part, target_probs in zip(
                logits.split(self.num_clusters, 1), probs.split(self.num_clusters, 1)
            ):
                top, target = target_probs.max(1)
                mask = top > self.confidence
                if not mask.any():
                    continue
                counts = torch.bincount(target[mask], minlength=part.shape[1]).float()
                balance = torch.where(counts > 0, mask.sum() / counts.clamp_min(1), 1.0)
                loss = loss + F.cross_entropy(part[mask], target[mask], weight=balance)
            if not torch.is_tensor(loss):  # no confident image in any head
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    @torch.no_grad()
    def _keep_best_heads(
        self,
        x: torch.Tensor,
        neighbors: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor,
        copies: list[int],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per K, the copy of lowest :func:`scan_criterion`: its rows of ``weight``, ``bias``."""
        weights, biases = weight.split(copies), bias.split(copies)
        self.criteria, kept = [], []
        for first in range(0, len(copies), self.heads_per_k):
            scores = [
                scan_criterion((x @ weights[h].T + biases[h]).softmax(1), neighbors)
                for h in range(first, first + self.heads_per_k)
            ]
            self.criteria.append([round(v, 4) for v in scores])
            kept.append(first + min(range(len(scores)), key=scores.__getitem__))
        return torch.cat([weights[h] for h in kept]), torch.cat([biases[h] for h in kept])
