"""SeCu's two losses for all heads at once, with their gradients derived by hand.

Why by hand: autograd through the logits keeps (views x B, sum K) tensors for the backward
pass and builds more of them in it (the log-softmax's and the log-sum-exp's gradients, then
a dense (B, sum K) x (sum K, dim) product for the centers). Here both losses are computed
without autograd, every head at once, in buffers reused across steps; their exact gradients
are closed forms of what the forward pass already holds:

- representation loss, d/d(logits) = (softmax - soft target) / B, so d/d(features) is one
  product with the frozen targets;
- center loss (only each row's assigned center varies), d/d(assigned center) =
  (p_assigned - 1) / (B * temperature) x feature: an O(B x heads x dim) scatter instead of a
  dense (B, sum K) product per head.

:func:`with_gradient` hands these to autograd. Measured on a CPU (1 thread, dim 128, one loss
step with its backward, median of 30, the same inputs and bank, 2026-12-03), against the same
maths written for autograd (all heads at once, per-head log-softmax and log-sum-exp through
autograd; it gives the same loss and gradients to 6e-16 in float64):

===========================  ==========  ===========
heads, batch, views          by hand     autograd
===========================  ==========  ===========
CIFAR (sum K 550), 256, 2    11.1 ms     16.1 ms
CIFAR (sum K 550), 256, 4    16.1 ms     27.7 ms
CIFAR (sum K 550), 64, 2     4.6 ms      5.6 ms
sum K 5,500, 256, 2          62.3 ms     122.4 ms
===========================  ==========  ===========

On CUDA the per-head autograd form took 20-29 ms per step at the ImageNet heads against 11 ms
for this one (``docs/benchmarks.md``). The golden replays (``tests/test_golden.py``) and
``tests/test_benchmarks.py`` (against the autograd baseline,
:class:`~secu_plugin.core.per_head.PerHeadSeCuLoss`) check the gradients.
"""

from __future__ import annotations

import torch

from secu_plugin.core.layout import HeadLayout


class Workspace:
    """(rows, columns) buffers kept across steps, by name (contents undefined when handed out).

    On a CPU, fresh allocations of the (views x B, sum K) matrices cost more in page faults
    than the arithmetic on them.

    Examples:
        >>> workspace = Workspace()
        >>> like = torch.zeros(1)
        >>> workspace.get("logits", 2, 3, like) is workspace.get("logits", 2, 3, like)
        True
    """

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def get(self, name: str, rows: int, columns: int, like: torch.Tensor) -> torch.Tensor:
        """The buffer ``name``, (re)allocated with ``like``'s dtype and device if needed."""
        buffer = self._buffers.get(name)
        if (
            buffer is None
            or buffer.shape != (rows, columns)
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty(rows, columns, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer


@torch.no_grad()
def similarities(
    flat: torch.Tensor, centers: torch.Tensor, num_views: int, workspace: Workspace
) -> torch.Tensor:
    """(views, B, sum K) cosine similarities of the normalized features ``flat`` (views x B,
    dim) to the normalized ``centers`` (sum K, dim), in a workspace buffer."""
    similarity = workspace.get("similarity", flat.shape[0], centers.shape[0], flat)
    torch.mm(flat, centers.T, out=similarity)
    return similarity.view(num_views, flat.shape[0] // num_views, -1)


@torch.no_grad()
def representation_loss(
    flat: torch.Tensor,
    targets: torch.Tensor,
    target_columns: torch.Tensor,
    layout: HeadLayout,
    temperature: float,
    label_weight: float,
    workspace: Workspace,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The representation loss summed over heads and averaged over rows, and its gradient.

    Args:
        flat: (views x B, dim) normalized features, views stacked (an even number of them).
        targets: (sum K, dim) the frozen targets.
        target_columns: (H, B) the stacked column of each row's label (stored, or new).
        layout, temperature, label_weight: As in :class:`~secu_plugin.core.loss.SeCuLoss`.

    Returns:
        The value (0-d) and its gradient with respect to ``flat`` (views x B, dim).
    """
    rows, columns = flat.shape[0], layout.total
    batch = target_columns.shape[1]
    num_views, num_heads = rows // batch, layout.num_heads
    # Scaling the (V*B, dim) side is cheaper than the product.
    log_prob = workspace.get("logits", rows, columns, flat)
    torch.mm(flat / temperature, targets.T, out=log_prob)
    log_prob = layout.log_softmax_(log_prob.view(num_views, batch, -1))
    # View 0's target comes from view 1's projection and vice versa; predictions share their
    # view's target.
    soft_target = workspace.get("soft_target", 2 * batch, columns, flat).view(2, batch, -1)
    torch.exp(log_prob[:2].flip(0), out=soft_target).mul_(1.0 - label_weight)
    soft_target.scatter_add_(
        2,
        target_columns.T.expand(2, batch, num_heads),
        soft_target.new_full((2, batch, num_heads), label_weight),
    )
    pairs = log_prob.view(num_views // 2, 2 * batch * columns)
    value = -(pairs @ soft_target.flatten()).sum() / batch
    # d/d(logits) = (softmax - target) / B, then one product with the targets for d/d(features).
    logit_grad = log_prob.exp_().view(num_views // 2, 2, batch, -1).sub_(soft_target)
    logit_grad = logit_grad.div_(batch).view(rows, -1)
    return value, (logit_grad @ targets) / temperature


@torch.no_grad()
def center_loss(
    similarity: torch.Tensor,
    flat: torch.Tensor,
    label_columns: torch.Tensor,
    layout: HeadLayout,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The center loss summed over heads and views, averaged over rows, and its gradient.

    Cross-entropy of the similarities to the current centers where only the assigned center's
    logit varies (the features get no gradient).

    Args:
        similarity: (views, B, sum K) from :func:`similarities`; overwritten.
        flat: (views x B, dim) the normalized features.
        label_columns: (H, B) the stacked column of each row's new label.

    Returns:
        The value (0-d) and its gradient with respect to each row's assigned centers,
        (B, H, dim).
    """
    num_views, batch, _ = similarity.shape
    num_heads = layout.num_heads
    scaled = similarity.div_(temperature)
    log_norm = layout.logsumexp(scaled)  # (V, B, H)
    positive = scaled.gather(2, label_columns.T.expand(num_views, batch, num_heads))
    value = (log_norm - positive).mean(1).sum()
    coefficient = (torch.exp(positive - log_norm) - 1.0) / (batch * temperature)
    pull = torch.einsum("vbh,vbd->bhd", coefficient, flat.view(num_views, batch, -1))
    return value, pull


def with_gradient(
    value: torch.Tensor, tensor: torch.Tensor, gradient: torch.Tensor
) -> torch.Tensor:
    """``value``, whose gradient with respect to ``tensor`` is ``gradient`` (a surrogate: it adds
    ``sum(tensor * gradient)`` and subtracts it again, detached: zero in value, exact in gradient).

    Examples:
        >>> x = torch.ones(3, requires_grad=True)
        >>> y = with_gradient(torch.tensor(5.0), x, torch.tensor([1.0, 2.0, 3.0]))
        >>> y.backward()
        >>> y.item(), x.grad.tolist()
        (5.0, [1.0, 2.0, 3.0])
    """
    surrogate = (tensor * gradient).sum()
    return value + surrogate - surrogate.detach()
