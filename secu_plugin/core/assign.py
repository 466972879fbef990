"""Constrained cluster assignment of a mini-batch: the two constraints of the SeCu paper.

An assigner turns a cost matrix (minus the similarity of each row to each current center) into
one cluster per row, under a constraint that keeps clusters from collapsing, and then updates
the statistics the constraint needs from the whole (global) batch. Assigners hold only
hyper-parameters; the statistics they update (per-cluster counts and dual variables) live in
the :class:`~secu_plugin.core.bank.SeCuCenterBank`, so they are saved and restored with it.

All heads are handled at once: costs, counts and duals are stacked along the clusters of every
head (see :class:`~secu_plugin.core.layout.HeadLayout`). A custom assigner subclasses
:class:`ConstrainedAssigner` and is passed to the bank as ``SeCuCenterBank(...,
assigner=MyAssigner())``.
"""

from __future__ import annotations

import torch

from secu_plugin.core.layout import HeadLayout


def _xlogx(p: torch.Tensor) -> torch.Tensor:
    """p * log(p), with 0 where p <= 0 (the limit at 0; p never falls below 0 beyond rounding)."""
    return torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), 0.0)


class ConstrainedAssigner:
    """Interface of a constrained assigner.

    Subclasses implement :meth:`assign` (per row, from the state before the step) and
    :meth:`update` (from the whole global batch, in place, identically on every rank); an
    assigner whose labels are each head's argmin of the cost plus an offset also gives that
    offset (:meth:`cost_offset`), so that the loss never builds the whole cost.

    Examples:
        >>> from secu_plugin import ConstrainedAssigner, SeCuCenterBank, SeCuLoss
        >>> class Nearest(ConstrainedAssigner):  # no constraint: the nearest center
        ...     def assign(self, cost, counts, duals, stored_labels, layout):
        ...         return layout.argmin(cost)
        ...     def update(self, counts, duals, batch_labels, new_labels, previous_labels,
        ...                layout):
        ...         counts += layout.histogram(new_labels, include=new_labels >= 0)
        >>> bank = SeCuCenterBank(dim=4, num_clusters=[3], num_instances=6, assigner=Nearest())
        >>> _ = SeCuLoss(bank)(torch.randn(6, 4), torch.randn(6, 4), torch.arange(6))
        >>> int(bank.stacked_counts.sum())
        6
    """

    #: Whether the bank zeroes the counts at the end of each epoch.
    resets_counts_each_epoch: bool = False
    #: Whether a row's label depends only on its own cost and stored label (and the state
    #: before the step): the loss may then assign a batch in row blocks, each as it is scored,
    #: instead of building the whole (B, sum K) cost first.
    assigns_rows_independently: bool = False

    def assign(
        self,
        cost: torch.Tensor,
        counts: torch.Tensor,
        duals: torch.Tensor,
        stored_labels: torch.Tensor,
        layout: HeadLayout,
    ) -> torch.Tensor:
        """Returns the cluster of each row in each head.

        Args:
            cost: (B, sum K) assignment cost (minus the mean similarity to the current centers);
                scratch space: the assigner may overwrite it (no copy of a (B, sum K) matrix).
            counts: (sum K,) int64 cluster counts of all heads.
            duals: (sum K,) dual variables of all heads.
            stored_labels: (H, B) int64 label of each row in the memory, -1 where it has none.
            layout: Where each head's clusters are in the stacked dimension.

        Returns:
            (H, B) int64 cluster ids within each head.
        """
        raise NotImplementedError

    def cost_offset(
        self,
        counts: torch.Tensor,
        duals: torch.Tensor,
        stored_labels: torch.Tensor,
        layout: HeadLayout,
    ) -> torch.Tensor | None:
        """What :meth:`assign` adds to the cost before each head's argmin, when that is all it
        does: (sum K,) or (B, sum K). The loss then assigns the rows chunk by chunk of columns
        as it scores them, without building the whole (B, sum K) cost. None (the default): the
        assigner needs the whole cost, and the loss calls :meth:`assign`.

        Args: as :meth:`assign`'s, without the cost.
        """
        return None

    def update(
        self,
        counts: torch.Tensor,
        duals: torch.Tensor,
        batch_labels: torch.Tensor,
        new_labels: torch.Tensor,
        previous_labels: torch.Tensor,
        layout: HeadLayout,
    ) -> None:
        """Updates ``counts`` and ``duals`` (stacked over heads) in place after a step.

        Args:
            counts: (sum K,) int64 cluster counts.
            duals: (sum K,) dual variables.
            batch_labels: (H, B_global) the labels of every row of the global batch.
            new_labels: (H, B_global) the label each distinct instance of the batch ends up
                with, at one position per instance, -1 at its other positions.
            previous_labels: (H, B_global) the label the instance had in the memory before the
                step, at the same positions (-1 there if it had none), -1 elsewhere.
            layout: Where each head's clusters are in the stacked dimension.
        """
        raise NotImplementedError


class SizeConstrainedAssigner(ConstrainedAssigner):
    """Cluster-size lower bound with online dual variables (the paper's default).

    Every cluster should receive at least ``lower_bound_ratio / K`` of each batch. Row i goes
    to ``argmin_k cost[i, k] - dual[k]``; after the step each dual moves by ``dual_lr`` times
    (lower bound - observed fraction), and is kept non-negative when the ratio is below 1.
    The counts are the cluster sizes of the current epoch.

    Args:
        dual_lr: Step size of the dual variables.
        lower_bound_ratio: The lower bound is this fraction of a uniform split.

    Examples:
        >>> assigner = SizeConstrainedAssigner(dual_lr=0.1, lower_bound_ratio=0.9)
        >>> cost = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
        >>> counts, duals = torch.zeros(2, dtype=torch.long), torch.tensor([0.0, 1.5])
        >>> assigner.assign(cost, counts, duals, torch.full((1, 3), -1), HeadLayout([2]))
        tensor([[1, 1, 1]])
        >>> assigner.cost_offset(counts, duals, torch.full((1, 3), -1), HeadLayout([2]))
        tensor([-0.0000, -1.5000])
    """

    resets_counts_each_epoch = True
    assigns_rows_independently = True

    def __init__(self, dual_lr: float = 0.1, lower_bound_ratio: float = 0.9) -> None:
        if not dual_lr > 0:
            raise ValueError(f"dual_lr must be positive, got {dual_lr}")
        if not lower_bound_ratio > 0:
            raise ValueError(f"lower_bound_ratio must be positive, got {lower_bound_ratio}")
        self.dual_lr = float(dual_lr)
        self.lower_bound_ratio = float(lower_bound_ratio)

    def assign(self, cost, counts, duals, stored_labels, layout):
        offset = self.cost_offset(counts, duals, stored_labels, layout)
        return layout.argmin(cost.add_(offset.to(cost.dtype)))

    def cost_offset(self, counts, duals, stored_labels, layout):
        return -duals

    def update(self, counts, duals, batch_labels, new_labels, previous_labels, layout):
        histogram = layout.histogram(batch_labels)
        duals -= (self.dual_lr / batch_labels.shape[1]) * histogram.to(duals.dtype)
        # dual_lr * (ratio / K) per column, in float64 as the paper's code computes it.
        lower_bound = self.lower_bound_ratio / layout.head_size.to(torch.float64)
        duals += (self.dual_lr * lower_bound)[layout.column_head].to(duals.dtype)
        if self.lower_bound_ratio < 1:
            duals.clamp_(min=0)
        counts += histogram

    def __repr__(self) -> str:
        return (
            f"SizeConstrainedAssigner(dual_lr={self.dual_lr}, "
            f"lower_bound_ratio={self.lower_bound_ratio})"
        )


class EntropyConstrainedAssigner(ConstrainedAssigner):
    """Global entropy constraint, solved greedily row by row.

    Row i goes to ``argmin_k cost[i, k] + alpha * dH_k``, where ``dH_k`` is the change of
    ``sum_k p_k log p_k`` over the cluster sizes of the whole data set (the memory's histogram)
    if the instance joins cluster k: it enters as a new member when it has no label yet, and
    moves from its stored cluster otherwise (staying costs nothing). The counts are the
    histogram of the memory at all times.

    Args:
        alpha: Weight of the entropy term.

    Examples:
        >>> assigner = EntropyConstrainedAssigner(alpha=10.0)
        >>> cost = torch.tensor([[0.0, 0.1]])
        >>> counts = torch.tensor([90, 10])
        >>> assigner.assign(cost, counts, torch.zeros(2), torch.tensor([[-1]]), HeadLayout([2]))
        tensor([[1]])
    """

    resets_counts_each_epoch = False
    assigns_rows_independently = True

    def __init__(self, alpha: float = 6000.0) -> None:
        if not alpha >= 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)

    def assign(self, cost, counts, duals, stored_labels, layout):
        offset = self.cost_offset(counts, duals, stored_labels, layout)
        return layout.argmin(cost.add_(offset.to(cost.dtype)))

    def cost_offset(self, counts, duals, stored_labels, layout):
        # float64 whatever the features' dtype: alpha (up to 1e5) multiplies small differences.
        sizes = counts.to(torch.float64)
        total = layout.head_sums(sizes)[layout.column_head]  # (sum K,) each column's head size

        # A new member: the data set grows by one.
        grown = total + 1.0
        prob = sizes / grown
        join_new = _xlogx(prob + 1.0 / grown) - _xlogx(prob)  # (sum K,)

        # A move from the stored cluster: it loses one member, the target gains one.
        prob = sizes / total
        stored = layout.to_columns(stored_labels.clamp_min(0)).T  # (B, H) stored columns
        stored_prob = prob[stored]
        leave = _xlogx(stored_prob - 1.0 / total[stored]) - _xlogx(stored_prob)  # (B, H)
        join_moved = leave[:, layout.column_head] - _xlogx(prob) + _xlogx(prob + 1.0 / total)
        join_moved.scatter_(1, stored, 0.0)

        has_label = (stored_labels >= 0).T[:, layout.column_head]  # (B, sum K)
        entropy_change = torch.where(has_label, join_moved, join_new)
        return self.alpha * entropy_change

    def update(self, counts, duals, batch_labels, new_labels, previous_labels, layout):
        counts += layout.histogram(new_labels, include=new_labels >= 0)
        counts -= layout.histogram(previous_labels, include=previous_labels >= 0)

    def __repr__(self) -> str:
        return f"EntropyConstrainedAssigner(alpha={self.alpha})"
