"""The space the non-SeCu head objectives train in, and their export as a SeCu model.

TURTLE, TEMI and SCAN heads (``objective_*.py``) train on the cached features mapped by
:class:`WhitenedSpace`: centred, projected on their top principal components and whitened.
Why: every component then has unit variance, so one learning rate suits every backbone, and a
few hundred dimensions instead of the backbone's width make each step several times cheaper.
The map is affine, so the export folds it into the model's projection head, and the frozen
backbone's model predicts exactly what the trained heads predict (:func:`linear_heads_as_centers`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class LinearHeads:
    """Linear heads over one feature space, one per K of ``num_clusters``, stacked: ``weight``
    (sum K, dim) and ``bias`` (sum K,) once trained. What every non-SeCu objective fits
    (:class:`~secu_plugin.frozen.objective_turtle.TurtleHeads`,
    :class:`~secu_plugin.frozen.objective_scan.ScanHeads`), and how each predicts.

    Examples:
        >>> heads = LinearHeads([2, 3], weight=torch.eye(5, 4), bias=torch.zeros(5))
        >>> [w.shape[0] for w in heads.split()[0]]
        [2, 3]
        >>> [p.tolist() for p in heads.predict(torch.tensor([[0.0, 1.0, 0.0, 1.0]]))]
        [[1], [1]]
        >>> LinearHeads([1])
        Traceback (most recent call last):
        ...
        ValueError: num_clusters needs heads of 2+ clusters, got [1]
    """

    num_clusters: Sequence[int]
    weight: torch.Tensor | None = None  # (sum K, dim) after fit
    bias: torch.Tensor | None = None  # (sum K,)

    def __post_init__(self) -> None:
        self.num_clusters = [int(k) for k in self.num_clusters]
        if not self.num_clusters or min(self.num_clusters) < 2:
            raise ValueError(f"num_clusters needs heads of 2+ clusters, got {self.num_clusters}")

    def split(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per head: its weight (K, dim) and bias (K,)."""
        if self.weight is None or self.bias is None:
            raise ValueError(f"{type(self).__name__}.fit first")
        return list(self.weight.split(self.num_clusters)), list(self.bias.split(self.num_clusters))

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per head, the (N,) cluster of every row of ``features``: the argmax of its logits."""
        weights, biases = self.split()
        return [(features.float() @ w.T + b).argmax(1) for w, b in zip(weights, biases)]


@dataclass(frozen=True)
class WhitenedSpace:
    """An affine map of features (N, D) to (N, dim): ``(features - mean) @ matrix``, where
    ``matrix`` holds the top ``dim`` principal directions scaled by 1/sqrt(their variance).

    Examples:
        >>> features = torch.randn(200, 8) * torch.arange(1.0, 9.0)
        >>> space = WhitenedSpace.fit(features, dim=3)
        >>> reduced = space(features)
        >>> reduced.shape, [round(v, 2) for v in reduced.var(0, unbiased=False).tolist()]
        (torch.Size([200, 3]), [1.0, 1.0, 1.0])
    """

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, dim)

    @classmethod
    def fit(cls, features: torch.Tensor, dim: int) -> WhitenedSpace:
        """The whitening of ``features`` (N, D) to ``dim`` components (at most min(N - 1, D))."""
        rows, width = features.shape
        if not 1 <= dim <= min(rows - 1, width):
            raise ValueError(f"feature_dim must be in [1, {min(rows - 1, width)}], got {dim}")
        data = features.to(torch.float64)
        mean = data.mean(0)
        covariance = (data - mean).T @ (data - mean) / rows
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
        scale = eigenvalues[-dim:].flip(0).clamp_min(1e-12).rsqrt()
        matrix = eigenvectors[:, -dim:].flip(1) * scale
        return cls(mean.float(), matrix.float())

    @property
    def dim(self) -> int:
        return self.matrix.shape[1]

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.mean) @ self.matrix


def linear_heads_as_centers(
    space: WhitenedSpace, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]
) -> tuple[nn.Linear, list[torch.Tensor], float]:
    """Linear heads ``logits = space(features) @ weight.T + bias`` as SeCu's projection head
    and centers, with the same argmax under the cosine rule of
    :func:`secu_plugin.core.nearest.nearest_center`.

    The projection is ``[space(features), 1, 0]`` (one ``nn.Linear`` of the raw features); head
    h's centers are ``[weight, bias, s]`` with ``s`` chosen so that every center has the same
    norm R. The cosine of a projection p with a center is then ``logit / (|p| R)``: the same
    order as the logits, for every image. Returns ``(projection, centers, temperature)``; the
    temperature makes the exported confidence the heads' softmax for an image of median norm.

    Examples:
        >>> features = torch.randn(50, 6)
        >>> space = WhitenedSpace.fit(features, dim=4)
        >>> weight, bias = torch.randn(3, 4), torch.randn(3)
        >>> projection, centers, _ = linear_heads_as_centers(space, [weight], [bias])
        >>> from secu_plugin.core.nearest import nearest_center
        >>> ids, _ = nearest_center(projection(features), centers[0])
        >>> bool((ids == (space(features) @ weight.T + bias).argmax(1)).all())
        True
    """
    if len(weights) != len(biases) or not weights:
        raise ValueError("linear_heads_as_centers needs one bias per weight, and a head")
    width = space.mean.shape[0]
    projection = nn.Linear(width, space.dim + 2)
    with torch.no_grad():
        projection.weight.zero_()
        projection.weight[: space.dim] = space.matrix.T
        projection.bias.zero_()
        projection.bias[: space.dim] = -space.mean @ space.matrix
        projection.bias[space.dim] = 1.0
    rows = [
        torch.cat([w.detach().float(), b.detach().float()[:, None]], 1)
        for w, b in zip(weights, biases)
    ]
    radius = max(float(r.norm(dim=1).max()) for r in rows) * (1 + 1e-3)
    centers = [torch.cat([r, (radius**2 - r.pow(2).sum(1, keepdim=True)).sqrt()], 1) for r in rows]
    typical_norm = float((space.dim + 1) ** 0.5)  # whitened: |p|^2 ~ dim + 1
    return projection, centers, 1.0 / (radius * typical_norm)


def fit_linear_heads(
    features: torch.Tensor,
    labels: Sequence[torch.Tensor],
    num_clusters: Sequence[int],
    steps: int = 300,
    lr: float = 0.01,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per head, a linear classifier (weight (K, dim), bias (K,)) of ``features`` (N, dim)
    fitted to that head's cluster ``labels`` (N,): full-batch Adam on the cross-entropy. How a
    head trained in a non-linear space of the features becomes an exportable linear one.

    Examples:
        >>> features = torch.randn(100, 4)
        >>> labels = [(features[:, 0] > 0).long()]
        >>> weights, biases = fit_linear_heads(features, labels, [2])
        >>> bool(((features @ weights[0].T + biases[0]).argmax(1) == labels[0]).float().mean() > 0.95)
        True
    """
    x = features.float()
    weight = torch.zeros(sum(num_clusters), x.shape[1], requires_grad=True)
    bias = torch.zeros(sum(num_clusters), requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(steps):
        logits = (x @ weight.T + bias).split(list(num_clusters), 1)
        loss = sum(F.cross_entropy(part, target) for part, target in zip(logits, labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return list(weight.detach().split(list(num_clusters))), list(
        bias.detach().split(list(num_clusters))
    )
