"""The two inputs of the SeCu loss made from cached features: an image and one of its nearest
neighbours (SCAN/TEMI style), or two augmented views of the image."""

from __future__ import annotations

import torch


class CachedPairs:
    """Pairs of cached features for a batch of image indices, drawn per epoch.

    ``mode="neighbors"``: the plain view of image ``i`` and the plain view of one of its
    ``k`` nearest neighbours (``neighbors``, (N, k) indices, e.g. from
    :func:`secu_plugin.core.neighbors.nearest_neighbors`). ``mode="views"``: two different
    augmented views of image ``i`` (cache views 1..V-1; view 0 is the plain one).

    The choice is a function of ``(seed, epoch)`` alone, drawn for every image when the epoch
    is set: a resumed epoch, one process or several, get the same pairs.

    Args:
        features: (N, V, D) cached features (a memory map is fine: only the batch's rows are
            read).
        mode: "neighbors" or "views".
        neighbors: (N, k) neighbour indices, for ``mode="neighbors"``.
        seed: Seed of the draws.

    Examples:
        >>> features = torch.arange(12.0).reshape(4, 1, 3)
        >>> pairs = CachedPairs(features, "neighbors", neighbors=torch.tensor([[1], [0], [3], [2]]))
        >>> pairs.set_epoch(0)
        >>> x0, x1 = pairs(torch.tensor([0, 2]))
        >>> x0.tolist(), x1.tolist()
        ([[0.0, 1.0, 2.0], [6.0, 7.0, 8.0]], [[3.0, 4.0, 5.0], [9.0, 10.0, 11.0]])
    """

    def __init__(
        self,
        features: torch.Tensor,
        mode: str = "neighbors",
        neighbors: torch.Tensor | None = None,
        seed: int = 0,
    ) -> None:
        if features.ndim != 3:
            raise ValueError(f"features must be (N, views, D), got {tuple(features.shape)}")
        if mode == "neighbors":
            if neighbors is None or neighbors.ndim != 2 or len(neighbors) != len(features):
                raise ValueError("mode='neighbors' needs (N, k) neighbour indices")
        elif mode == "views":
            if features.shape[1] < 3:
                raise ValueError(
                    f"mode='views' needs at least 2 augmented views, the cache has "
                    f"{features.shape[1] - 1}"
                )
        else:
            raise ValueError(f"mode must be 'neighbors' or 'views', got {mode!r}")
        self.features, self.mode, self.neighbors, self.seed = features, mode, neighbors, seed
        self._first = self._second = None

    def set_epoch(self, epoch: int) -> None:
        """Draws every image's pair for ``epoch``."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        rows = len(self.features)
        if self.mode == "neighbors":
            choice = torch.randint(self.neighbors.shape[1], (rows,), generator=generator)
            self._second = self.neighbors[torch.arange(rows), choice]
        else:  # two different augmented views out of 1..V-1
            augmented = self.features.shape[1] - 1
            first = torch.randint(augmented, (rows,), generator=generator)
            offset = torch.randint(1, augmented, (rows,), generator=generator)
            self._first, self._second = first + 1, (first + offset) % augmented + 1

    def __call__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two (B, D) float32 inputs of the images ``indices`` (on the CPU)."""
        if self._second is None:
            raise ValueError("call set_epoch(epoch) before drawing pairs")
        indices = indices.cpu()
        if self.mode == "neighbors":
            x0 = self.features[indices, 0]
            x1 = self.features[self._second[indices], 0]
        else:
            x0 = self.features[indices, self._first[indices]]
            x1 = self.features[indices, self._second[indices]]
        return x0.float(), x1.float()
