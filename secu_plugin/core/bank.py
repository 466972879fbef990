"""The SeCu center bank: learnable centers, frozen targets, assignment memory and statistics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from secu_plugin.core import dist
from secu_plugin.core.assign import (
    ConstrainedAssigner,
    EntropyConstrainedAssigner,
    SizeConstrainedAssigner,
)
from secu_plugin.core.checks import DeferredErrors, check_features
from secu_plugin.core.layout import HeadLayout
from secu_plugin.core.memory import AssignmentMemory, memory_dtype
from secu_plugin.core.nearest import nearest_center
from secu_plugin.core.state import BankState, epoch_number

DEFAULT_NUM_CLUSTERS: tuple[int, ...] = tuple(range(10, 101, 10))  # the paper's CIFAR heads


class SeCuCenterBank(BankState):
    """Centers of several clustering heads, with the state SeCu keeps across steps.

    Per head i: ``K_i`` learnable centers (``centers[i]``, shape (K_i, dim), raw: the loss
    normalizes them), their L2-normalized copy frozen at the start of each epoch (the targets
    of the representation loss), the cluster counts and dual variables of the constrained
    assigner, and one row of the assignment memory: the label of every training instance
    (-1 until the instance is first assigned), 2 bytes per instance and head.

    Epochs: :meth:`start_epoch` / :meth:`end_epoch` around each epoch, or an epoch number per
    step (:meth:`set_epoch`, which ``SeCuLoss(..., epoch=e)`` calls): a new number ends the
    previous epoch and starts the new one, the same number again does nothing. The current
    epoch is saved in the ``state_dict``, so a restored bank resumes mid-epoch without
    re-freezing its targets.

    Under DistributedDataParallel: the centers are parameters; targets, counts and duals are
    buffers (identical on every rank, so DDP's broadcasts change nothing); the memory and the
    epoch are not buffers but have their own ``state_dict`` entries (``memory``, and
    ``memory_shard`` when sharded; ``epoch``): DDP would broadcast 2 bytes x H x N per step,
    cannot broadcast int16, and would overwrite the shards.

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
        memory: ``"replicated"`` (every rank holds all labels), ``"sharded"`` (rank r of W holds
            the instances ``i % W == r``; see :mod:`secu_plugin.core.memory`) or ``"auto"``
            (sharded above 1 GiB of labels, i.e. N x H > 536,870,912). Same results.

    Examples:
        >>> bank = SeCuCenterBank(dim=8, num_clusters=[3, 5], num_instances=100)
        >>> [tuple(c.shape) for c in bank.centers]
        [(3, 8), (5, 8)]
        >>> bank.memory.shape, bank.memory.dtype
        (torch.Size([2, 100]), torch.int16)
        >>> bank.start_epoch()  # freeze the current centers as targets
        >>> bank.epoch, bank.predict(torch.randn(4, 8), head=1).shape
        (0, torch.Size([4]))
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
        memory: str = "auto",
    ) -> None:
        if head_reductions not in ("auto", "loop", "padded"):
            raise ValueError(
                f"head_reductions must be 'auto', 'loop' or 'padded', got {head_reductions!r}"
            )
        if memory not in ("auto", "replicated", "sharded"):
            raise ValueError(f"memory must be 'auto', 'replicated' or 'sharded', got {memory!r}")
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
        super().__init__(
            AssignmentMemory(
                len(num_clusters), num_instances, memory_dtype(num_clusters), mode=memory
            )
        )
        self.assigner = assigner
        self.dim = int(dim)
        self.num_clusters = num_clusters
        self.num_instances = int(num_instances)
        self.head_reductions = head_reductions
        self._layouts: dict = {}
        self.deferred_errors = DeferredErrors()  # bad steps detected on an accelerator

        self.centers = nn.ParameterList(
            nn.Parameter(F.normalize(torch.randn(k, dim), dim=1)) for k in num_clusters
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

    # ---- state
    @property
    def memory(self) -> torch.Tensor:
        """(H, N) int16 labels (-1: none yet); sharded: (H, n_r) this rank's instances
        ``rank + j * world_size``. Not a buffer (see the class docstring)."""
        return self._memory.tensor

    @property
    def memory_sharded(self) -> bool:
        """Whether each rank holds only its own instances' labels."""
        return self._memory.sharded

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
        device = torch.device(device if device is not None else self.targets.device)
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

        Sharded memory: a collective (every rank must call it); the sizes are global.

        Examples:
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2, 3], num_instances=4)
            >>> bank.memory[:, :3] = torch.tensor([[0, 1, 1], [2, 2, 0]], dtype=bank.memory.dtype)
            >>> [s.tolist() for s in bank.cluster_sizes()]
            [[1, 2], [1, 0, 2]]
        """
        memory = self.memory.long()
        histogram = self.layout(memory.device).histogram(memory, include=memory >= 0)
        if self.memory_sharded:
            dist.all_reduce_sum(histogram)
        return list(histogram.split(self.num_clusters))

    @torch.no_grad()
    def gather_memory(self) -> torch.Tensor:
        """(H, N) the labels of every instance (sharded: a collective that moves the memory).

        Examples:
            >>> SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3).gather_memory()
            tensor([[-1, -1, -1]], dtype=torch.int16)
        """
        return self._memory.gather()

    @torch.no_grad()
    def memory_head_labels(self, head: int, chunk_size: int = 1 << 22) -> torch.Tensor:
        """(N,) the memory's labels of every instance in head ``head`` (-1: none yet).

        Sharded: a collective that moves ``chunk_size`` labels at a time, so that scoring the
        memory (its ACC / NMI / ARI) never holds the whole memory on one rank.

        Examples:
            >>> SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3).memory_head_labels(0)
            tensor([-1, -1, -1], dtype=torch.int16)
        """
        return self._memory.head_labels(head, chunk_size)

    # ---- epochs
    @torch.no_grad()
    def start_epoch(self, epoch: int | None = None) -> None:
        """Starts epoch ``epoch`` (default: the next one): freezes the current normalized centers
        as the targets of the representation loss.

        Raises the ValueError of an earlier bad step detected on an accelerator, if any.
        """
        epoch = self.epoch + 1 if epoch is None else epoch_number(epoch)
        self.deferred_errors.raise_pending()
        self.targets.copy_(self.normalized_centers())
        self._epoch = epoch

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Ends an epoch: the size constraint's counts restart from zero.

        Raises the ValueError of an earlier bad step detected on an accelerator, if any.
        """
        self.deferred_errors.raise_pending()
        if self.assigner.resets_counts_each_epoch:
            self.stacked_counts.zero_()

    def set_epoch(self, epoch: int) -> None:
        """Switches to epoch ``epoch``, idempotently: the same epoch does nothing; another one
        ends the current epoch (if one started) and starts ``epoch``.

        Examples:
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3)
            >>> bank.set_epoch(0); bank.set_epoch(0); bank.epoch
            0
        """
        epoch = epoch_number(epoch)
        if epoch == self.epoch:
            return
        if self.epoch >= 0:
            self.end_epoch()
        self.start_epoch(epoch)

    @torch.no_grad()
    def warm_start(self, features: torch.Tensor, seed: int = 0) -> None:
        """Sets every head's centers and memory from spherical k-means on ``features`` (the
        (N, dim) projections of all instances, in index order): a start from clusters that
        already exist in the features (e.g. those of a pretrained backbone), instead of random
        centers. Call it between epochs (after :meth:`end_epoch`, before :meth:`start_epoch`);
        counts and duals are kept. Every process must pass the same features.

        Examples:
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=4)
            >>> bank.warm_start(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]))
            >>> labels = bank.gather_memory()[0].tolist()
            >>> labels[0] == labels[1] != labels[2] == labels[3]
            True
        """
        from secu_plugin.core.kmeans import spherical_kmeans

        if features.shape != (self.num_instances, self.dim):
            raise ValueError(
                f"warm_start needs ({self.num_instances}, {self.dim}) features, got "
                f"{tuple(features.shape)}"
            )
        generator = torch.Generator().manual_seed(seed)
        labels = []
        for head, k in enumerate(self.num_clusters):
            centers, assigned = spherical_kmeans(features, k, generator=generator)
            self.centers[head].copy_(centers.to(self.centers[head]))
            labels.append(assigned)
        indices = torch.arange(self.num_instances, device=self.stacked_counts.device)
        self._memory.write(indices, torch.stack(labels).to(indices.device))

    # ---- assignment and update
    @torch.no_grad()
    def stored_labels(self, indices: torch.Tensor) -> torch.Tensor:
        """(H, B) int64 labels of ``indices`` in the memory (-1: none).

        Sharded: a collective; every rank passes the same (global batch) indices.
        """
        return self._memory.fetch(indices)

    @torch.no_grad()
    def assign(
        self, cost: torch.Tensor, indices: torch.Tensor, stored: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Assigns each row under the constraint, from the state before the step.

        Args:
            cost: (B, sum K) stacked assignment costs of all heads (the assigner may overwrite
                them: pass a copy to keep them).
            indices: (B,) dataset indices of the rows.
            stored: (H, B) their :meth:`stored_labels`, if already fetched.

        Returns:
            (num_heads, B) int64 labels. The bank is not changed: see :meth:`update`.
        """
        stored = self.stored_labels(indices) if stored is None else stored
        return self.assigner.assign(
            cost, self.stacked_counts, self.stacked_duals, stored, self.layout(cost.device)
        )

    @torch.no_grad()
    def cost_offset(self, stored: torch.Tensor, device: torch.device) -> torch.Tensor | None:
        """The assigner's ``cost_offset`` (None: it needs the whole cost) from this state."""
        return self.assigner.cost_offset(
            self.stacked_counts, self.stacked_duals, stored, self.layout(device)
        )

    @torch.no_grad()
    def update(
        self,
        indices: torch.Tensor,
        labels: torch.Tensor,
        previous: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
    ) -> None:
        """Records the labels of a global batch: memory, counts and duals of every head.

        Args:
            indices: (B_global,) dataset indices of the whole global batch (all ranks).
            labels: (num_heads, B_global) their labels.
            previous: (num_heads, B_global) their labels before the step, if already fetched.
            skip: Optional 0-d bool tensor: where True, nothing changes (a bad step detected on
                the device, masked without reading the flag back).

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
        if previous is None:
            previous = self.stored_labels(ordered)
        else:
            previous = previous.index_select(1, order)
        if skip is not None:
            saved = self.stacked_counts.clone(), self.stacked_duals.clone()
        self.assigner.update(
            self.stacked_counts,
            self.stacked_duals,
            labels,
            torch.where(is_last, new, -1),
            torch.where(is_last, previous, -1),
            self.layout(labels.device),
        )
        if skip is not None:
            self.stacked_counts.copy_(torch.where(skip, saved[0], self.stacked_counts))
            self.stacked_duals.copy_(torch.where(skip, saved[1], self.stacked_duals))
            new = torch.where(skip, previous, new)
        # Repeated indices write the same label, so the order of the writes does not matter.
        self._memory.write(ordered, new)

    @torch.no_grad()
    def predict(self, z: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Cluster ids (B,) int64 of projections ``z`` (B, dim): the most similar center."""
        check_features(z, self.dim, "z")
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        return nearest_center(z, self.centers[head])[0]

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_clusters={self.num_clusters}, "
            f"num_instances={self.num_instances}, assigner={self.assigner!r}, "
            f"memory={self._memory.mode!r}"
        )
