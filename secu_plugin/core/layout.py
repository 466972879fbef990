"""Several clustering heads side by side in one tensor, and per-head operations on it.

SeCu scores every row against the centers of all heads at once: a (rows, sum K) matrix whose
columns are head 0's K_0 clusters, then head 1's, and so on. The per-head reductions (argmin,
log-softmax, log-sum-exp) then run either head by head on column views ("loop": no extra memory,
best on a CPU with large heads) or on all heads at once, padded to the largest head ("padded":
a handful of kernels whatever the number of heads, best on GPUs and for small heads).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class HeadLayout:
    """Columns of heads with ``num_clusters`` clusters, stacked in that order.

    Args:
        num_clusters: K of each head.
        padded: Per-head reductions on a padded (..., H, max K) copy instead of a loop.
        device: Where the index tensors live.

    Examples:
        >>> layout = HeadLayout([2, 3])
        >>> scores = torch.tensor([[0.0, 1.0, 5.0, 4.0, 6.0]])
        >>> layout.argmin(scores)  # per head, (H, rows)
        tensor([[0],
                [1]])
        >>> HeadLayout([2, 3], padded=True).argmin(scores)
        tensor([[0],
                [1]])
        >>> layout.to_columns(torch.tensor([[1], [2]]))  # within-head ids -> stacked columns
        tensor([[1],
                [4]])
    """

    def __init__(
        self, num_clusters: Sequence[int], padded: bool = False, device: torch.device | None = None
    ) -> None:
        self.num_clusters = [int(k) for k in num_clusters]
        self.padded = padded
        self.num_heads = len(self.num_clusters)
        self.total = sum(self.num_clusters)
        self.max_clusters = max(self.num_clusters)
        sizes = torch.tensor(self.num_clusters, device=device)
        self.offsets = torch.cumsum(sizes, 0) - sizes  # (H,) first column of each head
        self.column_head = torch.repeat_interleave(
            torch.arange(self.num_heads, device=device), sizes
        )
        self.head_size = sizes  # (H,)
        # Padded view: (H, max K) column index of each slot, ``total`` (a sentinel) past a head.
        slot = torch.arange(self.max_clusters, device=device)
        self.slot_column = torch.where(
            slot < sizes[:, None], self.offsets[:, None] + slot, torch.full_like(slot, self.total)
        )
        # Position of each column in the flattened padded view.
        column = torch.arange(self.total, device=device)
        self.column_slot = self.column_head * self.max_clusters + (
            column - self.offsets[self.column_head]
        )

    def split(self, matrix: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Views of each head's columns (last dimension)."""
        return matrix.split(self.num_clusters, dim=-1)

    def to_columns(self, labels: torch.Tensor) -> torch.Tensor:
        """(H, ...) within-head cluster ids -> stacked column indices."""
        return labels + self.offsets.view(-1, *([1] * (labels.ndim - 1)))

    def _pad(self, matrix: torch.Tensor, fill: float) -> torch.Tensor:
        # index_select, not advanced indexing: several times faster on CPU.
        sentinel = matrix.new_full((*matrix.shape[:-1], 1), fill)
        extended = torch.cat([matrix, sentinel], dim=-1)
        picked = extended.index_select(-1, self.slot_column.flatten())
        return picked.view(*matrix.shape[:-1], self.num_heads, self.max_clusters)

    def _unpad(self, padded: torch.Tensor) -> torch.Tensor:
        return padded.flatten(-2).index_select(-1, self.column_slot)

    def argmin(self, matrix: torch.Tensor) -> torch.Tensor:
        """(rows, sum K) -> (H, rows) int64: each head's argmin (the first on ties), as
        within-head ids."""
        # min(dim).indices, not argmin: the same index, twice as fast on a CPU (torch 2.14).
        if self.padded:
            return self._pad(matrix, float("inf")).min(-1).indices.T
        return torch.stack([part.min(-1).indices for part in self.split(matrix)])

    def log_softmax_(self, matrix: torch.Tensor) -> torch.Tensor:
        """Log-softmax over each head's columns of the last dimension, in place; returns it."""
        if self.padded:
            return matrix.copy_(
                self._unpad(torch.log_softmax(self._pad(matrix, float("-inf")), dim=-1))
            )
        for part in self.split(matrix):
            part.copy_(torch.log_softmax(part, dim=-1))
        return matrix

    def logsumexp(self, matrix: torch.Tensor) -> torch.Tensor:
        """(..., sum K) -> (..., H): log-sum-exp over each head's columns."""
        if self.padded:
            return torch.logsumexp(self._pad(matrix, float("-inf")), dim=-1)
        return torch.stack([torch.logsumexp(part, dim=-1) for part in self.split(matrix)], -1)

    def head_sums(self, values: torch.Tensor) -> torch.Tensor:
        """(sum K,) -> (H,): the sum of each head's entries."""
        return torch.zeros(self.num_heads, dtype=values.dtype, device=values.device).index_add_(
            0, self.column_head, values
        )

    def histogram(self, labels: torch.Tensor, include: torch.Tensor | None = None) -> torch.Tensor:
        """(H, n) within-head ids -> (sum K,) int64 counts (of the entries where ``include``),
        without a device sync."""
        columns = self.to_columns(labels.clamp_min(0)).flatten()
        weights = torch.ones_like(columns) if include is None else include.flatten().long()
        return torch.zeros(self.total, dtype=torch.long, device=labels.device).index_add_(
            0, columns, weights
        )
