"""TEMI heads: an image and one of its nearest neighbours share a cluster, weighted by how
sure an ensemble of teacher heads is that they do.

After Adaloglou et al., "Exploring the Limits of Deep Image Clustering using Pretrained
Models" (BMVC 2023, TEMI-official-BMVC2023). Each of ``heads_per_k`` independent heads is an
MLP, Linear(dim, hidden) -> GELU -> Linear(hidden, bottleneck) -> L2 -> weight-normalised
Linear(bottleneck, K) without bias; its teacher is an EMA of it (no gradient). Per pair (x, x'),
x' drawn uniformly from x's ``num_neighbors`` nearest, q = softmax(logits / 0.1):

    loss_h(a -> b) = -log sum_k (q_student(k|a) q_teacher(k|b)) ** beta / prior_h(k)

with ``beta`` 0.6, prior_h an EMA (0.9) of the teacher's mean q (updated before the loss),
each pair weighted by the teacher ensemble's agreement w = mean_h sum_k q_t(k|x) q_t(k|x'),
symmetrised over the two directions, averaged over the heads. AdamW (weight decay on the
matrices only). The head kept per K is the one of lowest training loss over the last steps;
it predicts with its teacher's argmax.

CPU adaptation: the heads of one K train at once as batched matrices (``torch.bmm``); 4 heads
per K (TEMI: 16-50), 1,000 steps of 512 pairs, AdamW at 1e-2 with a short warm-up and a
cosine decay, EMA momentum 0.95 (TEMI: 0.996 over 100 epochs; over 1,000 steps such a teacher
barely leaves its random start), no last-layer freeze. These settings were chosen in scratch
runs on digits8 (a tune set); the recorded sweep is docs/frozen_objectives_tune.json.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

TEMI_DEFAULTS = {
    "heads_per_k": 4,
    "hidden": 256,
    "bottleneck": 128,
    "steps": 1000,
    "batch_size": 512,
    "lr": 1e-2,
    "beta": 0.6,
    "momentum": 0.95,
}


def _mlp_parameters(
    heads: int, dim: int, hidden: int, bottleneck: int, k: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """Batched parameters of ``heads`` heads: trunc-normal(0.02) matrices, zero biases, the
    last layer's direction (heads, bottleneck, k) and its weight-norm gain (heads, k) = 1."""

    def matrix(rows: int, cols: int) -> torch.Tensor:
        return (torch.randn(heads, rows, cols, generator=generator) * 0.02).clamp_(-0.04, 0.04)

    return [
        matrix(dim, hidden),
        torch.zeros(heads, 1, hidden),
        matrix(hidden, bottleneck),
        torch.zeros(heads, 1, bottleneck),
        matrix(bottleneck, k),
        torch.ones(heads, 1, k),
    ]


def _logits(params: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Every head's logits (heads, N, k) of ``x`` (N, dim)."""
    w1, b1, w2, b2, direction, gain = params
    hidden = F.gelu(torch.matmul(x, w1) + b1)
    bottleneck = F.normalize(torch.bmm(hidden, w2) + b2, dim=2)
    return torch.bmm(bottleneck, F.normalize(direction, dim=1)) * gain


@dataclass
class TemiHeads:
    """MLP heads (``heads_per_k`` per K of ``num_clusters``) trained by TEMI on features
    (N, dim) and their ``neighbors`` (N, k); ``predict`` gives each K's chosen head's clusters.

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> means = torch.randn(3, 8, generator=generator) * 4
        >>> truth = torch.arange(300) % 3
        >>> features = means[truth] + torch.randn(300, 8, generator=generator)
        >>> from secu_plugin.core.neighbors import nearest_neighbors
        >>> neighbors = nearest_neighbors(features, k=10)
        >>> heads = TemiHeads([3], heads_per_k=2, steps=100, batch_size=128)
        >>> heads = heads.fit(features, neighbors, seed=0)
        >>> from secu_plugin.metrics import cluster_accuracy
        >>> cluster_accuracy(truth.numpy(), heads.predict(features)[0].numpy()) > 0.95
        True
        >>> TemiHeads([3], beta=0.0)
        Traceback (most recent call last):
        ...
        ValueError: temi beta must be in (0, 1], got 0.0
    """

    num_clusters: Sequence[int]
    heads_per_k: int = TEMI_DEFAULTS["heads_per_k"]
    hidden: int = TEMI_DEFAULTS["hidden"]
    bottleneck: int = TEMI_DEFAULTS["bottleneck"]
    steps: int = TEMI_DEFAULTS["steps"]
    batch_size: int = TEMI_DEFAULTS["batch_size"]
    lr: float = TEMI_DEFAULTS["lr"]
    beta: float = TEMI_DEFAULTS["beta"]
    momentum: float = TEMI_DEFAULTS["momentum"]
    temperature: float = 0.1
    prior_momentum: float = 0.9
    weight_decay: float = 1e-4
    # after fit: per K, the chosen head's teacher parameters and every head's final loss
    teachers: list[list[torch.Tensor]] = field(default_factory=list)
    losses: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.num_clusters = [int(k) for k in self.num_clusters]
        if not self.num_clusters or min(self.num_clusters) < 2:
            raise ValueError(f"num_clusters needs heads of 2+ clusters, got {self.num_clusters}")
        sizes = (self.heads_per_k, self.hidden, self.bottleneck, self.steps, self.batch_size)
        if min(sizes) < 1:
            raise ValueError(f"temi heads, widths, steps and batch must be positive, got {sizes}")
        if not 0 < self.beta <= 1:
            raise ValueError(f"temi beta must be in (0, 1], got {self.beta}")
        if not 0 <= self.momentum < 1 or not 0 <= self.prior_momentum < 1:
            raise ValueError(f"temi momentum must be in [0, 1), got {self.momentum}")
        if self.lr <= 0 or self.temperature <= 0:
            raise ValueError(f"temi lr and temperature must be positive, got {self.lr}")

    def fit(self, features: torch.Tensor, neighbors: torch.Tensor, seed: int = 0) -> TemiHeads:
        """Trains every K's heads on ``features`` (N, dim); keeps the best head per K."""
        x = features.float()
        if neighbors.ndim != 2 or neighbors.shape[0] != len(x):
            raise ValueError(f"neighbors must be ({len(x)}, k), got {tuple(neighbors.shape)}")
        generator = torch.Generator().manual_seed(seed)
        self.teachers, self.losses = [], []
        for k in self.num_clusters:
            teacher, losses = self._fit_one_k(x, neighbors, k, generator)
            best = min(range(self.heads_per_k), key=losses.__getitem__)
            self.teachers.append([p[best : best + 1] for p in teacher])
            self.losses.append([round(v, 4) for v in losses])
        return self

    def _fit_one_k(
        self, x: torch.Tensor, neighbors: torch.Tensor, k: int, generator: torch.Generator
    ) -> tuple[list[torch.Tensor], list[float]]:
        rows, heads = len(x), self.heads_per_k
        student = _mlp_parameters(heads, x.shape[1], self.hidden, self.bottleneck, k, generator)
        teacher = [p.clone() for p in student]
        for p in student:
            p.requires_grad_()
        decayed = [student[0], student[2], student[4]]  # matrices: weight decay; the rest none
        optimizer = torch.optim.AdamW(
            [
                {"params": decayed, "weight_decay": self.weight_decay},
                {"params": [student[1], student[3], student[5]], "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        prior = torch.full((heads, 1, k), 1.0 / k)
        batch = min(self.batch_size, rows)
        warmup = max(1, self.steps // 10)
        recent = torch.zeros(heads)  # the heads' mean loss over the last steps
        tail = max(1, self.steps // 10)
        for step in range(self.steps):
            for group in optimizer.param_groups:  # linear warm-up, then cosine to 0
                group["lr"] = self.lr * min(1.0, (step + 1) / warmup)
                group["lr"] *= 0.5 * (1 + math.cos(math.pi * step / self.steps))
            anchors = torch.randperm(rows, generator=generator)[:batch]
            pick = torch.randint(neighbors.shape[1], (batch,), generator=generator)
            pairs = torch.cat([anchors, neighbors[anchors, pick]])
            with torch.no_grad():
                q_teacher = (_logits(teacher, x[pairs]) / self.temperature).softmax(2)
                prior.mul_(self.prior_momentum).add_(
                    q_teacher.mean(1, keepdim=True), alpha=1 - self.prior_momentum
                )
                q_t = q_teacher.split(batch, dim=1)
                weight = (q_t[0] * q_t[1]).sum(2).mean(0)  # the ensemble's agreement, (B,)
            q_s = (_logits(student, x[pairs]) / self.temperature).softmax(2).split(batch, dim=1)
            per_head = 0.0
            for a, b in ((0, 1), (1, 0)):  # student view a, teacher view b
                joint = ((q_s[a] * q_t[b]).clamp_min(1e-12) ** self.beta / prior).sum(2)
                per_head = per_head - 0.5 * (weight * joint.log()).mean(1)
            loss = per_head.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for t, s in zip(teacher, student):
                    t.mul_(self.momentum).add_(s.detach(), alpha=1 - self.momentum)
                if step >= self.steps - tail:
                    recent += per_head.detach() / tail
        return teacher, recent.tolist()

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per K, the (N,) cluster of every row of ``features``: its chosen teacher's argmax."""
        if not self.teachers:
            raise ValueError("TemiHeads.fit first")
        x = features.float()
        return [_logits(teacher, x)[0].argmax(1) for teacher in self.teachers]
