"""The SeCu center bank: learnable centers, frozen targets, assignment memory and statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core.assign import (
    ConstrainedAssigner,
    EntropyConstrainedAssigner,
    SizeConstrainedAssigner,
)
from secu_plugin.core.layout import HeadLayout
from secu_plugin.core.nearest import nearest_center

DEFAULT_NUM_CLUSTERS = tuple(range(10, 101, 10))


def _memory_dtype(num_clusters: Sequence[int]) -> torch.dtype:
    # -1 marks "no label yet", so int16 holds up to 32767 clusters: 2 bytes per instance and head.
    return torch.int16 if max(num_clusters) <= torch.iinfo(torch.int16).max else torch.int32


class SeCuCenterBank(nn.Module):
    """Centers of several clustering heads, with the state SeCu keeps across steps.

    Per head i: ``K_i`` learnable centers (``centers[i]``, shape (K_i, dim), raw: the loss
    normalizes them), their L2-normalized copy frozen at the start of each epoch (the targets
    of the representation loss), the cluster counts and dual variables of the constrained
    assigner, and one row of the assignment memory: the label of every training instance
    (-1 until the instance is first assigned).

    Args:
        dim: Dimension of the projections and centers.
        num_clusters: Number of clusters of each head.
        num_instances: Size of the training set (the indices the loss receives).
        assigner: ``"size"`` (:class:`SizeConstrainedAssigner`), ``"entropy"``
            (:class:`EntropyConstrainedAssigner`) or an assigner object.
        dual_lr: Dual step of the size constraint.
        lower_bound_ratio: The size constraint's lower bound is ``lower_bound_ratio / K`` of
            each batch.
        alpha: Weight of the entropy constraint.
        head_reductions: How per-head reductions run: ``"padded"`` (all heads at once, padded to
            the largest: a few kernels, best for small heads on GPUs), ``"loop"`` (head by head on column
            views: best on CPUs and for large heads), or ``"auto"`` (padded on accelerators when
            all heads have fewer than 4096 clusters in all, else loop). The results are the same.

    Examples:
        >>> bank = SeCuCenterBank(dim=8, num_clusters=[3, 5], num_instances=100)
        >>> [tuple(c.shape) for c in bank.centers]
        [(3, 8), (5, 8)]
        >>> bank.memory.shape, bank.memory.dtype
        (torch.Size([2, 100]), torch.int16)
        >>> bank.start_epoch()  # freeze the current centers as targets
        >>> bank.predict(torch.randn(4, 8), head=1).shape
        torch.Size([4])
    """

    def __init__(
        self,
        dim: int = 128,
        num_clusters: Sequence[int] = DEFAULT_NUM_CLUSTERS,
        num_instances: int = 50000,
        assigner: str | ConstrainedAssigner = "size",
        dual_lr: float = 0.1,
        lower_bound_ratio: float = 0.9,
        alpha: float = 6000.0,
        head_reductions: str = "auto",
    ) -> None:
        super().__init__()
        if head_reductions not in ("auto", "loop", "padded"):
            raise ValueError(
                f"head_reductions must be 'auto', 'loop' or 'padded', got {head_reductions!r}"
            )
        num_clusters = [int(k) for k in num_clusters]
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        if not num_clusters or min(num_clusters) < 2:
            raise ValueError(f"num_clusters needs at least one head of 2+ clusters: {num_clusters}")
        if num_instances < 1:
            raise ValueError(f"num_instances must be positive, got {num_instances}")
        if assigner == "size":
            assigner = SizeConstrainedAssigner(dual_lr=dual_lr, lower_bound_ratio=lower_bound_ratio)
        elif assigner == "entropy":
            assigner = EntropyConstrainedAssigner(alpha=alpha)
        elif not isinstance(assigner, ConstrainedAssigner):
            raise ValueError(
                f"assigner must be 'size', 'entropy' or a ConstrainedAssigner, got {assigner!r}"
            )
        self.assigner = assigner
        self.dim = int(dim)
        self.num_clusters = num_clusters
        self.num_instances = int(num_instances)
        self.head_reductions = head_reductions
        self._layouts: dict = {}

        self.centers = nn.ParameterList(
            nn.Parameter(F.normalize(torch.randn(k, dim), dim=1)) for k in num_clusters
        )
        self.register_buffer(
            "memory",
            torch.full((len(num_clusters), num_instances), -1, dtype=_memory_dtype(num_clusters)),
        )
        # The frozen targets of all heads, stacked: the loss scores against all of them at once.
        self.register_buffer(
            "targets", torch.cat([F.normalize(c.detach(), dim=1) for c in self.centers])
        )
        # Counts and duals of all heads, stacked like the centers; ``counts``/``duals`` give
        # per-head views.
        total = sum(num_clusters)
        self.register_buffer("stacked_counts", torch.zeros(total, dtype=torch.long))
        self.register_buffer("stacked_duals", torch.zeros(total))
        offsets = torch.tensor([0, *num_clusters]).cumsum(0)
        self.offsets = offsets.tolist()

    @property
    def num_heads(self) -> int:
        return len(self.num_clusters)

    @property
    def counts(self) -> list[torch.Tensor]:
        """Cluster counts per head, (K_i,) int64: epoch sizes (size) or memory histogram (entropy)."""
        return list(self.stacked_counts.split(self.num_clusters))

    @property
    def duals(self) -> list[torch.Tensor]:
        """Dual variables per head, (K_i,) (zeros for the entropy constraint)."""
        return list(self.stacked_duals.split(self.num_clusters))

    def layout(self, device: torch.device | None = None) -> HeadLayout:
        """The stacked layout of the heads' clusters, with index tensors on ``device``."""
        device = torch.device(device if device is not None else self.memory.device)
        if device not in self._layouts:
            # Measured (docs/benchmarks.md): on a CPU the loop wins even for small heads (the
            # gathers that pad cost more than the loop's calls); on a GPU the loop also won in a
            # ResNet-50 step at the ImageNet heads (less memory traffic), so pad only small heads,
            # where kernel launches dominate.
            padded = self.head_reductions == "padded" or (
                self.head_reductions == "auto"
                and device.type != "cpu"
                and sum(self.num_clusters) < 4096
            )
            self._layouts[device] = HeadLayout(self.num_clusters, padded=padded, device=device)
        return self._layouts[device]

    def head_slice(self, head: int) -> slice:
        """Columns of head ``head`` in the stacked (sum K, ...) layout."""
        return slice(self.offsets[head], self.offsets[head + 1])

    def frozen_targets(self, head: int) -> torch.Tensor:
        """The L2-normalized centers of ``head`` frozen by the last :meth:`start_epoch`."""
        return self.targets[self.head_slice(head)]

    def normalized_centers(self) -> torch.Tensor:
        """All heads' current centers, L2-normalized and stacked: (sum K, dim), with gradient."""
        return F.normalize(torch.cat(list(self.centers)), dim=1)

    @torch.no_grad()
    def cluster_sizes(self) -> list[torch.Tensor]:
        """Per head, (K_i,) int64: how many instances the memory assigns to each cluster.

        Examples:
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2, 3], num_instances=4)
            >>> bank.memory[:, :3] = torch.tensor([[0, 1, 1], [2, 2, 0]], dtype=bank.memory.dtype)
            >>> [s.tolist() for s in bank.cluster_sizes()]
            [[1, 2], [1, 0, 2]]
        """
        memory = self.memory.long()
        histogram = self.layout(memory.device).histogram(memory, include=memory >= 0)
        return list(histogram.split(self.num_clusters))

    @torch.no_grad()
    def start_epoch(self) -> None:
        """Freezes the current (normalized) centers as the targets of the representation loss."""
        self.targets.copy_(self.normalized_centers())

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Ends an epoch: the size constraint's counts restart from zero."""
        if self.assigner.resets_counts_each_epoch:
            self.stacked_counts.zero_()

    @torch.no_grad()
    def predict(self, z: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Cluster ids (B,) int64 of projections ``z`` (B, dim): the most similar center."""
        self._check_features(z, "z")
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        return nearest_center(z, self.centers[head])[0]

    @torch.no_grad()
    def assign(self, cost: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """Assigns each row under the constraint, from the state before the step.

        Args:
            cost: (B, sum K) stacked assignment costs of all heads.
            indices: (B,) dataset indices of the rows.

        Returns:
            (num_heads, B) int64 labels. The bank is not changed: see :meth:`update`.
        """
        stored = self.memory.index_select(1, indices).long()
        return self.assigner.assign(
            cost, self.stacked_counts, self.stacked_duals, stored, self.layout(cost.device)
        )

    @torch.no_grad()
    def update(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Records the labels of a global batch: memory, counts and duals of every head.

        Args:
            indices: (B_global,) dataset indices of the whole global batch (all ranks).
            labels: (num_heads, B_global) their labels.

        An index that occurs several times (a padded distributed sampler repeats indices) keeps
        its last label, and the counts change once for it, so that the entropy constraint's
        counts stay equal to the histogram of the memory. No device synchronization.
        """
        # A stable sort groups the repeats of an index, in batch order; every position then
        # takes the label of the last repeat, so that all writes to one index agree.
        order = torch.sort(indices, stable=True).indices
        ordered = indices[order]
        last_of_run = torch.searchsorted(ordered, ordered, right=True) - 1
        new = labels.index_select(1, order.index_select(0, last_of_run))  # (H, B)
        is_last = last_of_run == torch.arange(len(ordered), device=ordered.device)
        previous = self.memory.index_select(1, ordered).long()
        self.assigner.update(
            self.stacked_counts,
            self.stacked_duals,
            labels,
            torch.where(is_last, new, -1),
            torch.where(is_last, previous, -1),
            self.layout(labels.device),
        )
        # Repeated indices write the same label, so the order of the writes does not matter.
        self.memory.index_copy_(1, ordered, new.to(self.memory.dtype))

    def stored_or_new_labels(self, indices: torch.Tensor, new_labels: torch.Tensor) -> torch.Tensor:
        """The memory's labels of ``indices`` (num_heads, B), or ``new_labels`` where none is stored."""
        stored = self.memory.index_select(1, indices).long()
        return torch.where(stored >= 0, stored, new_labels)

    def _check_features(self, z: torch.Tensor, name: str) -> None:
        if not isinstance(z, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.ndim != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, {self.dim}), got {tuple(z.shape)}")
        if not z.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got {z.dtype}")

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_clusters={self.num_clusters}, "
            f"num_instances={self.num_instances}, assigner={self.assigner!r}"
        )
