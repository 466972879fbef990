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

CPU adaptation: linear heads, one per K of the bank, trained at once as the columns of one
matrix, full batch, Adam (SCAN's SGD at lr 5 was for unnormalised MoCo features).
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
}


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

    def __post_init__(self) -> None:
        super().__post_init__()
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
        total = sum(self.num_clusters)
        weight = ((torch.rand(total, dim, generator=generator) * 2 - 1) * bound).requires_grad_()
        bias = torch.zeros(total, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=self.lr)
        candidates = torch.cat([torch.arange(rows)[:, None], neighbors], 1)  # self included
        for _ in range(self.steps):
            pick = torch.randint(candidates.shape[1], (rows,), generator=generator)
            partner = candidates[torch.arange(rows), pick]
            probs = per_head_softmax(x @ weight.T + bias, self.num_clusters)
            loss = 0.0
            for anchor in probs.split(self.num_clusters, 1):
                agreement = (anchor * anchor[partner]).sum(1).clamp_min(1e-7)
                entropy = torch.special.entr(anchor.mean(0)).sum()
                loss = loss - agreement.log().mean() - self.entropy_weight * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
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
