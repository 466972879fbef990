"""SeCu's two losses for all heads at once, in row blocks, with their gradients derived by hand.

Why by hand: autograd through the logits keeps (views x B, sum K) tensors for the backward
pass and builds more of them in it. Here the step makes three dense products (similarities to
the centers, logits against the frozen targets, and the softmax against the targets for the
gradient) and, between them, as few passes over the (views x B, sum K) matrices as the maths
allows; everything else is O(B x heads x dim):

- center loss: only each row's assigned logit varies, so it needs the per-head log-sum-exp of
  the similarities and the assigned similarity (a dot product with the gathered center);
  d/d(assigned center) = (p_assigned - 1) / (B * temperature) x feature;
- representation loss: with P the per-head softmax of the logits L = x T^T (x = feature /
  temperature) and the soft target q = (1 - w) P_other + w one_hot, the value
  -sum q log P = -(1 - w) x . (P_other T) - w x . T[label] + sum_heads logsumexp(L)
  and the gradient (P - q) T / B need only P T, per head: one product of exp(L) with the targets
  extended by a column of ones (whose last column is the per-head sum of exp(L)).

The rows go through in blocks (both views of the same rows together, :data:`CPU_BLOCK_ROWS`),
which bounds the scratch memory of large batches; the per-head sums of the
exponentials are taken without a max shift when the cosine similarities (at most 1 in size)
divided by the temperature cannot overflow or underflow. Measured in docs/benchmarks.md
(``benchmarks/loss_step.py``) against the products alone and lightly's SwaV; the golden replays
(``tests/test_golden.py``) and ``tests/test_benchmarks.py`` (against the autograd form,
:class:`~secu_plugin.core.per_head.PerHeadSeCuLoss`) check the values and the gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from secu_plugin.core.layout import HeadLayout

#: Rows of one view per block on a CPU: it bounds the scratch memory for large batches. Blocks
#: of 16 to 128 rows, meant to keep the (rows, sum K) matrices in the cache between their
#: passes, were slower than one block of 256 (timed by hand, ImageNet heads, 2 threads).
CPU_BLOCK_ROWS = 256

Assign = Callable[[torch.Tensor, slice], torch.Tensor]


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


class StepTerms(NamedTuple):
    """Values and gradients of one step, from :func:`loss_step` (no autograd)."""

    labels: torch.Tensor
    """(H, B) the new labels, within each head."""
    representation_value: torch.Tensor
    """0-d: the representation loss summed over heads and views, averaged over rows."""
    feature_gradient: torch.Tensor
    """(views x B, dim): its gradient with respect to the normalized features."""
    center_value: torch.Tensor
    """0-d: the center loss summed over heads and views, averaged over rows."""
    center_gradient: torch.Tensor
    """(B, H, dim): its gradient with respect to each row's assigned (normalized) centers."""


def exp_is_safe(bound: float, dtype: torch.dtype, max_clusters: int) -> bool:
    """Whether exp of values in [-bound, bound] summed over ``max_clusters`` terms neither
    overflows nor leaves the normal range of ``dtype`` (then no max shift is needed).

    Examples:
        >>> exp_is_safe(20.0, torch.float32, 10_000), exp_is_safe(100.0, torch.float32, 10)
        (True, False)
    """
    info = torch.finfo(dtype)
    headroom = 0.9 * min(math.log(info.max), -math.log(info.tiny))
    return bound + math.log(max_clusters) < headroom


def _exp_per_head_(matrix: torch.Tensor, layout: HeadLayout, shift: bool) -> torch.Tensor | None:
    """exp of ``matrix`` in place, less each row's per-head max where ``shift``; the (rows, H)
    maxima subtracted, or None."""
    if not shift:
        matrix.exp_()
        return None
    parts = layout.split(matrix)
    maxima = torch.stack([part.amax(-1) for part in parts], -1)
    for head, part in enumerate(parts):
        part.sub_(maxima[:, head : head + 1])
    matrix.exp_()
    return maxima


def _sum_views(stacked: torch.Tensor, out: torch.Tensor) -> None:
    """(views, rows, columns) -> ``out`` (rows, columns): the sum over views. Pairwise adds: a
    sum over the leading dimension runs at half their speed on a CPU."""
    torch.add(stacked[0], stacked[1], out=out)
    for view in stacked[2:]:
        out.add_(view)


def scaled_unit_rows(
    matrices: Sequence[torch.Tensor], scale: float, workspace: Workspace
) -> torch.Tensor:
    """``F.normalize(torch.cat(matrices), dim=1) * scale``, written once into a workspace buffer
    (a fresh (sum K, dim) tensor per step costs more in page faults than the division).

    Examples:
        >>> scaled_unit_rows([torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])], 10.0,
        ...                  Workspace())
        tensor([[ 6.,  8.],
                [ 0., 10.]])
    """
    rows = [matrix.shape[0] for matrix in matrices]
    out = workspace.get("scaled_unit_rows", sum(rows), matrices[0].shape[1], matrices[0])
    for matrix, part in zip(matrices, out.split(rows)):
        norms = torch.linalg.vector_norm(matrix, dim=1, keepdim=True).clamp_min_(1e-12)
        torch.div(matrix, norms.div_(scale), out=part)  # 1e-12: F.normalize's eps
    return out


def _head_sums(matrix: torch.Tensor, layout: HeadLayout) -> torch.Tensor:
    """(rows, sum K) -> (rows, H): each head's row sums."""
    return torch.stack([part.sum(-1) for part in layout.split(matrix)], -1)


@torch.no_grad()
def loss_step(
    flat: torch.Tensor,
    scaled_centers: torch.Tensor,
    targets: torch.Tensor,
    stored: torch.Tensor,
    assign: Assign,
    assigns_rows_independently: bool,
    layout: HeadLayout,
    temperature_x: float,
    temperature_c: float,
    label_weight: float,
    workspace: Workspace,
    block_rows: int | None = None,
) -> StepTerms:
    """Labels, both losses and their gradients for one step, every head at once.

    Args:
        flat: (views x B, dim) normalized features, views stacked (an even number of them).
        scaled_centers: (sum K, dim) the normalized current centers divided by
            ``temperature_c`` (:func:`scaled_unit_rows`).
        targets: (sum K, dim) the frozen targets.
        stored: (H, B) each row's label in the memory before the step (-1: none).
        assign: ``assign(cost, rows)``: the (H, len(rows)) labels of the batch rows ``rows``
            from their (len(rows), sum K) cost (minus the mean similarity over views), which it
            may overwrite.
        assigns_rows_independently: Whether a row's label depends on its own cost alone (the
            blocks are then assigned one by one; else the whole cost is built first).
        layout, temperature_x, temperature_c, label_weight: As in
            :class:`~secu_plugin.core.loss.SeCuLoss`.
        block_rows: Rows of one view per block (default: :data:`CPU_BLOCK_ROWS` on a CPU, the
            whole batch elsewhere).

    Returns:
        :class:`StepTerms`.
    """
    batch = stored.shape[1]
    num_views, dim = flat.shape[0] // batch, flat.shape[1]
    num_heads, columns = layout.num_heads, layout.total
    if block_rows is None:
        block_rows = CPU_BLOCK_ROWS if flat.device.type == "cpu" else batch
    block_rows = max(1, min(block_rows, batch))
    views = flat.view(num_views, batch, dim)
    scaled = views / temperature_x  # x: the logits are x T^T
    # Cosines are at most 1 in size (targets normalized, up to rounding, checked on a CPU where
    # reading the norm back costs nothing); elsewhere the max shift is kept.
    cpu = flat.device.type == "cpu"
    target_norm = float(targets.norm(dim=1).amax()) if cpu and columns else math.inf
    exp_args = (flat.dtype, layout.max_clusters)
    shift_c = not (cpu and exp_is_safe(1.0 / temperature_c, *exp_args))
    shift_x = not (cpu and exp_is_safe(target_norm / temperature_x, *exp_args))
    # Targets with a column of ones: exp(L) times it gives (exp(L) T, sum exp(L)) per head.
    extended = workspace.get("extended_targets", columns, dim + 1, targets)
    extended[:, :dim].copy_(targets)
    extended[:, dim].fill_(1.0)
    extended_parts = extended.split(layout.num_clusters)

    log_norm_c = flat.new_empty(num_views, batch, num_heads)  # per-head logsumexp(S / t_c)
    log_norm_x = flat.new_empty(num_views, batch, num_heads)  # per-head logsumexp(L)
    softmax_targets = flat.new_empty(num_views, batch, num_heads, dim)  # per-head P T
    block_labels = []
    if not assigns_rows_independently:
        full_cost = workspace.get("cost", batch, columns, flat)
    for start in range(0, batch, block_rows):
        rows = slice(start, min(start + block_rows, batch))
        size = rows.stop - rows.start
        block = views[:, rows].reshape(num_views * size, dim)
        # Similarities to the current centers, over temperature_c (the centers come scaled, so
        # no pass scales the matrix) -> the assignment cost and the center loss.
        similarity = workspace.get("similarity", num_views * size, columns, flat)
        torch.mm(block, scaled_centers.T, out=similarity)
        if assigns_rows_independently:
            cost = workspace.get("block_cost", size, columns, flat)
        else:
            cost = full_cost[rows]
        _sum_views(similarity.view(num_views, size, columns), out=cost)
        cost.mul_(-temperature_c / num_views)  # minus the mean similarity
        if assigns_rows_independently:
            block_labels.append(assign(cost, rows))
        maxima = _exp_per_head_(similarity, layout, shift_c)
        log_norm = _head_sums(similarity, layout).log_()
        log_norm_c[:, rows] = (log_norm if maxima is None else log_norm + maxima).view(
            num_views, size, num_heads
        )
        # Logits against the frozen targets -> exp(L) -> (exp(L) T, sum exp(L)) per head.
        logits = workspace.get("logits", num_views * size, columns, flat)
        torch.mm(scaled[:, rows].reshape(num_views * size, dim), targets.T, out=logits)
        maxima = _exp_per_head_(logits, layout, shift_x)
        block_targets = flat.new_empty(num_views * size, num_heads, dim)
        for head, (part, extended_part) in enumerate(zip(layout.split(logits), extended_parts)):
            product = part @ extended_part  # (rows, dim + 1)
            sums = product[:, dim:]
            block_targets[:, head] = product[:, :dim] / sums
            log_norm = sums.log().squeeze(1)
            if maxima is not None:
                log_norm = log_norm + maxima[:, head]
            log_norm_x[:, rows, head] = log_norm.view(num_views, size)
        softmax_targets[:, rows] = block_targets.view(num_views, size, num_heads, dim)
    if assigns_rows_independently:
        labels = torch.cat(block_labels, dim=1)
    else:
        labels = assign(full_cost, slice(0, batch))

    label_columns = layout.to_columns(labels).T  # (B, H)
    target_columns = layout.to_columns(torch.where(stored >= 0, stored, labels)).T

    # Center loss: the assigned similarity, against the per-head log-sum-exp.
    assigned = scaled_centers.index_select(0, label_columns.flatten()).view(batch, num_heads, dim)
    positive = torch.einsum("vbd,bhd->vbh", views, assigned)  # over temperature_c
    center_value = (log_norm_c - positive).mean(1).sum()
    coefficient = (torch.exp(positive - log_norm_c) - 1.0) / (batch * temperature_c)
    center_gradient = torch.einsum("vbh,vbd->bhd", coefficient, views)

    # Representation loss: view v's soft target comes from view 1 - v % 2's projection.
    other = torch.tensor([1 - v % 2 for v in range(num_views)], device=flat.device)
    softmax_sum = softmax_targets.sum(2)  # (V, B, dim): P T over all heads
    label_targets = targets.index_select(0, target_columns.flatten())
    label_sum = label_targets.view(batch, num_heads, dim).sum(1)  # (B, dim)
    soft_target = (1.0 - label_weight) * softmax_sum.index_select(0, other) + (
        label_weight * label_sum
    )  # q T, (V, B, dim)
    representation_value = (log_norm_x.sum() - (scaled * soft_target).sum()) / batch
    feature_gradient = (softmax_sum - soft_target) / (batch * temperature_x)
    return StepTerms(
        labels,
        representation_value,
        feature_gradient.view(num_views * batch, dim),
        center_value,
        center_gradient,
    )


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
