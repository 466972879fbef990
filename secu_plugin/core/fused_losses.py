"""SeCu's two losses for all heads at once, in row blocks, with their gradients derived by hand.

Why by hand: autograd through the logits keeps (views x B, sum K) tensors for the backward
pass and builds more of them in it. Here the step makes three dense products (similarities to
the centers, logits against the frozen targets, and the softmax against the targets for the
gradient), never holds a (views x B, sum K) matrix, and does the elementwise work on each
chunk of columns while the product that made it is still in the cache; everything else is
O(B x heads x dim):

- center loss: only each row's assigned logit varies, so it needs the per-head log-sum-exp of
  the similarities and the assigned similarity (a dot product with the gathered center);
  d/d(assigned center) = (p_assigned - 1) / (B * temperature) x feature;
- representation loss: with P the per-head softmax of the logits L = x T^T (x = feature /
  temperature) and the soft target q = (1 - w) P_other + w one_hot, the value
  -sum q log P = -(1 - w) x . (P_other T) - w x . T[label] + sum_heads logsumexp(L)
  and the gradient (P - q) T / B need only P T and the per-head sums of exp(L): products of
  exp(L) with the targets, accumulated over a head's chunks.

The rows go through in blocks (both views of the same rows together, :data:`CPU_BLOCK_ROWS`),
and each head's columns in chunks (:data:`CPU_CHUNK_COLUMNS`; whole heads off a CPU), with
the log-sum-exps kept running over the chunks (:class:`RunningLogSumExp`). No (B, sum K)
matrix is written, except the assignment cost for an assigner without ``cost_offset``. The
exponentials are taken without a max shift when the cosine similarities (at most 1 in size)
divided by the temperature cannot overflow or underflow. Measured in docs/benchmarks.md
(``benchmarks/loss_step.py``) against the products alone and lightly's SwaV; the golden replays
(``tests/test_golden.py``) and ``tests/test_benchmarks.py`` (against the autograd form,
:class:`~secu_plugin.core.per_head.PerHeadSeCuLoss`) check the values and the gradients.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from secu_plugin.core.layout import HeadLayout

#: Rows of one view per block on a CPU: it bounds the scratch memory for large batches. Blocks
#: of 16 to 128 rows, meant to keep the (rows, sum K) matrices in the cache between their
#: passes, were slower than one block of 256 (timed by hand, ImageNet heads, 2 threads).
CPU_BLOCK_ROWS = 256

#: Columns per chunk on a CPU (within a head): each chunk's similarities and logits are made
#: by a product, then exponentiated, summed and multiplied while they are still in the cache.
#: 1,024 to 4,096 were within a few percent, 2,048 and up the fastest, 256 far slower (timed by
#: hand, interleaved, ImageNet heads, 2 threads).
CPU_CHUNK_COLUMNS = 2048

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


class RunningLogSumExp:
    """Per-row log-sum-exp over column chunks that arrive one by one; each chunk is
    exponentiated in place (less the running max where ``shift``), ready for a product.

    Examples:
        >>> values = torch.tensor([[0.0, 1.0, 2.0]])
        >>> running = RunningLogSumExp(shift=True)
        >>> running.add_(values[:, :2].clone()), running.add_(values[:, 2:].clone()) is not None
        (None, True)
        >>> torch.allclose(running.log(), values.logsumexp(1))
        True
    """

    def __init__(self, shift: bool) -> None:
        self.shift = shift
        self.maxima: torch.Tensor | None = None
        self.sums: torch.Tensor | None = None

    def add_(self, chunk: torch.Tensor) -> torch.Tensor | None:
        """Adds the (rows, columns) ``chunk``, which becomes exp(chunk - running max); returns
        the factor (rows,) by which the sums so far were rescaled (None: unchanged), which a
        product accumulated over earlier chunks needs as well."""
        rescale = None
        if self.shift:
            maxima = chunk.amax(1)
            if self.maxima is not None:
                maxima = torch.maximum(self.maxima, maxima)
                rescale = torch.exp(self.maxima - maxima)
            chunk.sub_(maxima[:, None])
            self.maxima = maxima
        chunk.exp_()
        sums = chunk.sum(1)
        if self.sums is None:
            self.sums = sums
        else:
            if rescale is not None:
                self.sums.mul_(rescale)
            self.sums.add_(sums)
        return rescale

    def log(self) -> torch.Tensor:
        """(rows,) the log-sum-exp of every chunk added."""
        log_sums = self.sums.log()
        return log_sums if self.maxima is None else log_sums + self.maxima


def _running_argmin(
    chunk_cost: torch.Tensor,
    first_column: int,
    nearest: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(min, argmin) per row over a head's chunks so far, given the next chunk of its costs
    (whose first column is ``first_column`` within the head); the first column on ties, as
    :meth:`HeadLayout.argmin`."""
    values, indices = chunk_cost.min(-1)
    indices += first_column
    if nearest is None:
        return values, indices
    better = values < nearest[0]  # strict: an earlier chunk keeps its ties
    return torch.where(better, values, nearest[0]), torch.where(better, indices, nearest[1])


def _assignment_cost(
    stacked: torch.Tensor, temperature_c: float, out: torch.Tensor, offset: torch.Tensor | None
) -> torch.Tensor:
    """(views, rows, columns) similarities over temperature_c -> ``out`` (rows, columns): minus
    their mean over views times temperature_c (minus the mean cosine), plus ``offset``. Pairwise
    adds: a sum over the leading dimension runs at half their speed on a CPU."""
    torch.add(stacked[0], stacked[1], out=out)
    for view in stacked[2:]:
        out.add_(view)
    scale = -temperature_c / stacked.shape[0]
    if offset is None:
        return out.mul_(scale)
    return torch.add(offset, out, alpha=scale, out=out)


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
    chunk_columns: int | None = None,
    cost_offset: torch.Tensor | None = None,
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
        chunk_columns: Columns per chunk, within a head (default: :data:`CPU_CHUNK_COLUMNS` on
            a CPU, whole heads elsewhere).
        cost_offset: (sum K,) or (B, sum K): when the assigner's labels are each head's argmin
            of the cost plus this offset (:meth:`~secu_plugin.core.assign.ConstrainedAssigner.
            cost_offset`), the step takes them chunk by chunk and never builds the whole cost;
            ``assign`` is then not called.

    Returns:
        :class:`StepTerms`.
    """
    batch = stored.shape[1]
    num_views, dim = flat.shape[0] // batch, flat.shape[1]
    num_heads, columns = layout.num_heads, layout.total
    cpu = flat.device.type == "cpu"
    if block_rows is None:
        block_rows = CPU_BLOCK_ROWS if cpu else batch
    block_rows = max(1, min(block_rows, batch))
    if chunk_columns is None:
        chunk_columns = CPU_CHUNK_COLUMNS if cpu else layout.max_clusters
    chunk_columns = max(1, min(chunk_columns, layout.max_clusters))
    views = flat.view(num_views, batch, dim)
    scaled = views / temperature_x  # x: the logits are x T^T
    # Cosines are at most 1 in size (targets normalized, up to rounding, checked on a CPU where
    # reading the norm back costs nothing); elsewhere the max shift is kept.
    target_norm = float(targets.norm(dim=1).amax()) if cpu and columns else math.inf
    exp_args = (flat.dtype, layout.max_clusters)
    shift_c = not (cpu and exp_is_safe(1.0 / temperature_c, *exp_args))
    shift_x = not (cpu and exp_is_safe(target_norm / temperature_x, *exp_args))

    log_norm_c = flat.new_empty(num_views, batch, num_heads)  # per-head logsumexp(S / t_c)
    log_norm_x = flat.new_empty(num_views, batch, num_heads)  # per-head logsumexp(L)
    softmax_sum = flat.new_empty(num_views, batch, dim)  # P T, summed over heads
    heads_stop = list(itertools.accumulate(layout.num_clusters))
    heads_start = [stop - size for stop, size in zip(heads_stop, layout.num_clusters)]
    chunked_assignment = cost_offset is not None
    if chunked_assignment:
        cost_offset = cost_offset.to(flat.dtype)
    block_labels = []
    if not (chunked_assignment or assigns_rows_independently):
        full_cost = workspace.get("cost", batch, columns, flat)
    for start in range(0, batch, block_rows):
        rows = slice(start, min(start + block_rows, batch))
        size = rows.stop - rows.start
        block = views[:, rows].reshape(num_views * size, dim)
        block_scaled = scaled[:, rows].reshape(num_views * size, dim)
        if chunked_assignment:
            cost = workspace.get("chunk_cost", 1, size * chunk_columns, flat)
            offset = cost_offset[rows] if cost_offset.ndim == 2 else cost_offset
        elif assigns_rows_independently:
            cost = workspace.get("block_cost", size, columns, flat)
        else:
            cost = full_cost[rows]
        scratch = workspace.get("chunk", 1, num_views * size * chunk_columns, flat)
        block_softmax_sum = block.new_zeros(num_views * size, dim)  # P T over all heads
        head_labels = []
        for head, (first, stop) in enumerate(zip(heads_start, heads_stop)):
            norm_c = RunningLogSumExp(shift_c)
            norm_x = RunningLogSumExp(shift_x)
            head_targets = block.new_zeros(num_views * size, dim)  # exp(L) T of this head
            nearest = None
            # Chunks of equal width (at most chunk_columns): no thin remainder costs a call.
            num_chunks = math.ceil((stop - first) / chunk_columns)
            stride = math.ceil((stop - first) / num_chunks)
            for chunk_start in range(first, stop, stride):
                chunk = slice(chunk_start, min(chunk_start + stride, stop))
                width = chunk.stop - chunk.start
                values = scratch[0, : num_views * size * width].view(num_views * size, width)
                # Similarities to the current centers, over temperature_c (the centers come
                # scaled) -> the assignment cost and the center loss's normalizer.
                torch.mm(block, scaled_centers[chunk].T, out=values)
                by_view = values.view(num_views, size, width)
                if chunked_assignment:
                    chunk_cost = cost[0, : size * width].view(size, width)
                    _assignment_cost(by_view, temperature_c, chunk_cost, offset[..., chunk])
                    nearest = _running_argmin(chunk_cost, chunk.start - first, nearest)
                else:
                    _assignment_cost(by_view, temperature_c, cost[:, chunk], None)
                norm_c.add_(values)
                # Logits against the frozen targets -> exp(L) T and its normalizer.
                torch.mm(block_scaled, targets[chunk].T, out=values)
                rescale = norm_x.add_(values)
                if rescale is not None:
                    head_targets.mul_(rescale[:, None])
                head_targets.addmm_(values, targets[chunk])
            log_norm_c[:, rows, head] = norm_c.log().view(num_views, size)
            log_norm_x[:, rows, head] = norm_x.log().view(num_views, size)
            block_softmax_sum.addcdiv_(head_targets, norm_x.sums[:, None])
            if chunked_assignment:
                head_labels.append(nearest[1])
        softmax_sum[:, rows] = block_softmax_sum.view(num_views, size, dim)
        if chunked_assignment:
            block_labels.append(torch.stack(head_labels))
        elif assigns_rows_independently:
            block_labels.append(assign(cost, rows))
    if chunked_assignment or assigns_rows_independently:
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
