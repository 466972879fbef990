"""TURTLE heads: the labelling on which a linear classifier generalises best.

After Gadetsky et al., "Let Go of Your Labels with Unsupervised Transfer" (ICML 2024), one
representation space. The labelling is a linear task encoder's softmax y = softmax(theta z)
(weight-normalised rows). Each outer step trains a fresh linear classifier W on (z, y) for a
few Adam steps (cold start: the inner learner forgets, so only labellings that are quick to
fit score well), then moves theta to lower that classifier's cross-entropy on y minus
``gamma`` x the entropy of the mean label (no empty clusters). The first-order gradient: W is
held fixed in the outer loss, and the gradient reaches theta through y alone.

CPU adaptation: every head K of the bank trains at once (the columns of one matrix; the heads
share nothing but the matmuls), the inner learner and its Adam are plain tensors with their
gradient written out, full batch. ``warm_start`` is TURTLE's ``--warm_start``: the inner
classifier and its Adam state carry over from one outer step to the next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from secu_plugin.frozen.linear_heads import LinearHeads

TURTLE_DEFAULTS = {
    "gamma": 10.0,
    "iterations": 300,
    "inner_steps": 10,
    "lr": 1e-3,
    "inner_lr": 1e-3,
}


def per_head_softmax(logits: torch.Tensor, num_clusters: Sequence[int]) -> torch.Tensor:
    """Softmax over each head's columns of ``logits`` (N, sum K), stacked back: (N, sum K).

    Examples:
        >>> per_head_softmax(torch.zeros(1, 5), [2, 3]).tolist()[0]
        [0.5, 0.5, 0.3333333432674408, 0.3333333432674408, 0.3333333432674408]
    """
    return torch.cat([part.softmax(dim=1) for part in logits.split(list(num_clusters), 1)], 1)


@dataclass
class TurtleHeads(LinearHeads):
    """Linear heads (one per K of ``num_clusters``) trained by TURTLE on features (N, dim).

    ``gamma``: the entropy weight (the paper's 10); ``iterations``: outer steps; ``inner_steps``:
    the inner classifier's Adam steps from a fresh start (M = 10); ``lr``, ``inner_lr``: the
    task encoder's and the inner classifier's Adam rates (1e-3 both in the paper).

    Examples:
        >>> means = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)) * 4
        >>> truth = torch.arange(300) % 3
        >>> features = means[truth] + torch.randn(300, 8, generator=torch.Generator().manual_seed(1))
        >>> heads = TurtleHeads([3], iterations=100).fit(features, seed=0)
        >>> from secu_plugin.metrics import cluster_accuracy
        >>> cluster_accuracy(truth.numpy(), heads.predict(features)[0].numpy()) > 0.95
        True
    """

    gamma: float = TURTLE_DEFAULTS["gamma"]
    iterations: int = TURTLE_DEFAULTS["iterations"]
    inner_steps: int = TURTLE_DEFAULTS["inner_steps"]
    lr: float = TURTLE_DEFAULTS["lr"]
    inner_lr: float = TURTLE_DEFAULTS["inner_lr"]
    warm_start: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.iterations < 1 or self.inner_steps < 1:
            raise ValueError("turtle iterations and inner_steps must be positive")
        if self.gamma < 0 or self.lr <= 0 or self.inner_lr <= 0:
            raise ValueError(f"turtle gamma must be >= 0 and lr > 0, got {self.gamma}, {self.lr}")

    def fit(self, features: torch.Tensor, seed: int = 0) -> TurtleHeads:
        """Trains the heads on ``features`` (N, dim), full batch; returns self."""
        x = features.float()
        dim = x.shape[1]
        total = sum(self.num_clusters)
        generator = torch.Generator().manual_seed(seed)
        bound = dim**-0.5  # nn.Linear's initialisation
        direction = ((torch.rand(total, dim, generator=generator) * 2 - 1) * bound).requires_grad_()
        gain = direction.detach().norm(dim=1).clone().requires_grad_()
        bias = ((torch.rand(total, generator=generator) * 2 - 1) * bound).requires_grad_()
        outer = torch.optim.Adam([direction, gain, bias], lr=self.lr)
        inner = None  # a fresh inner classifier every outer step (cold start), or carried over
        for _ in range(self.iterations):
            weight = gain[:, None] * F.normalize(direction, dim=1)
            labels = per_head_softmax(x @ weight.T + bias, self.num_clusters)
            if inner is None or not self.warm_start:
                inner = self.fresh_inner(dim, total, generator)
            inner_logits = self.inner_fit(x, labels.detach(), inner)
            log_probs = torch.cat(
                [p.log_softmax(1) for p in inner_logits.split(self.num_clusters, 1)], 1
            )
            fit_loss = -(labels * log_probs).sum(1).mean()  # summed over heads
            entropy = sum(
                torch.special.entr(part.mean(0)).sum()
                for part in labels.split(self.num_clusters, 1)
            )
            loss = fit_loss - self.gamma * entropy
            outer.zero_grad(set_to_none=True)
            loss.backward()
            outer.step()
        with torch.no_grad():
            self.weight = gain[:, None] * F.normalize(direction, dim=1)
            self.bias = bias.detach().clone()
        return self

    @staticmethod
    def fresh_inner(dim: int, total: int, generator: torch.Generator) -> dict:
        """A new inner classifier, nn.Linear's initialisation, and its zero Adam state."""
        bound = dim**-0.5
        weight = (torch.rand(dim, total, generator=generator) * 2 - 1) * bound
        bias = (torch.rand(total, generator=generator) * 2 - 1) * bound
        zeros = [torch.zeros_like(t) for t in (weight, weight, bias, bias)]
        return {"weight": weight, "bias": bias, "moments": zeros, "step": 0}

    @torch.no_grad()
    def inner_fit(self, x: torch.Tensor, labels: torch.Tensor, inner: dict) -> torch.Tensor:
        """The inner classifier's logits (N, sum K) after ``inner_steps`` more full-batch Adam
        steps on soft ``labels`` (``inner`` updated in place): the gradient of the mean
        cross-entropy is x.T (softmax - labels) / N, written out (no autograd, no optimizer)."""
        rows = x.shape[0]
        weight, bias = inner["weight"], inner["bias"]
        m_w, v_w, m_b, v_b = inner["moments"]
        beta1, beta2, eps = 0.9, 0.999, 1e-8
        for _ in range(self.inner_steps):
            inner["step"] += 1
            step = inner["step"]
            residual = per_head_softmax(x @ weight + bias, self.num_clusters) - labels
            residual /= rows
            for value, grad, (m, v) in (
                (weight, x.T @ residual, (m_w, v_w)),
                (bias, residual.sum(0), (m_b, v_b)),
            ):
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step_size = self.inner_lr * (1 - beta2**step) ** 0.5 / (1 - beta1**step)
                value.addcdiv_(m, v.sqrt().add_(eps * (1 - beta2**step) ** 0.5), value=-step_size)
        return x @ weight + bias
