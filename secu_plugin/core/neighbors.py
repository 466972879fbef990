"""Exact k nearest neighbours by cosine similarity, in blocks: never an N x N matrix."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def nearest_neighbors(
    features: torch.Tensor,
    k: int,
    block_size: int = 1024,
    device: torch.device | str | None = None,
    progress: Callable[[int], None] | None = None,
    key_block_size: int = 65536,
    queries: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``k`` nearest other rows of every row of ``features`` (cosine similarity), or of
    the rows ``queries`` only.

    Exact, in blocks: ``block_size`` queries against ``key_block_size`` keys at a time, the
    running top-k merged block by block, so memory stays ``O(block_size * key_block_size)``
    beyond the normalized features (never N x N). ``features`` may be a memory-mapped float16
    tensor on the CPU; blocks are moved to ``device`` (default: the features' device) and
    computed in float32.

    Args:
        features: (N, D) features, not necessarily normalized.
        k: Neighbours per row, ``1 <= k < N``. A row is never its own neighbour.
        block_size: Query rows per block.
        device: Where the products run (e.g. "cuda" for a cache on the CPU).
        progress: Called with the number of rows done after each query block.
        key_block_size: Key rows per product.
        queries: (Q,) indices of the rows whose neighbours are wanted (among all rows);
            None: every row.

    Returns:
        (N, k), or (Q, k), int64 indices on the CPU, nearest first.

    Examples:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> nearest_neighbors(points, k=1, block_size=3, key_block_size=3).flatten().tolist()
        [1, 0, 3, 2]
        >>> nearest_neighbors(points, k=1, queries=torch.tensor([2])).tolist()
        [[3]]
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    rows = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < rows:
        raise ValueError(f"k must be an int in [1, {rows - 1}] for {rows} rows, got {k!r}")
    if block_size < 1 or key_block_size < 1:
        raise ValueError(f"block sizes must be positive, got {block_size}, {key_block_size}")
    device = torch.device(device) if device is not None else features.device
    keys = _normalized_blocks(features, key_block_size, device)
    wanted = torch.arange(rows) if queries is None else torch.as_tensor(queries, dtype=torch.long)
    if wanted.ndim != 1 or (len(wanted) and not 0 <= int(wanted.min()) <= int(wanted.max()) < rows):
        raise ValueError(f"queries must be (Q,) row indices in [0, {rows}), got {queries!r}")
    result = torch.empty(len(wanted), k, dtype=torch.long)
    for start in range(0, len(wanted), block_size):
        stop = min(start + block_size, len(wanted))
        own = wanted[start:stop].to(device)
        block = keys[own]
        best_values = torch.full((stop - start, k), -float("inf"), device=device)
        best_indices = torch.zeros((stop - start, k), dtype=torch.long, device=device)
        for key_start in range(0, rows, key_block_size):
            key_stop = min(key_start + key_block_size, rows)
            similarity = block @ keys[key_start:key_stop].T
            # A row is not its own neighbour (duplicates of it still are).
            inside = (own >= key_start) & (own < key_stop)
            similarity[inside.nonzero().flatten(), own[inside] - key_start] = -float("inf")
            values, indices = similarity.topk(min(k, key_stop - key_start), dim=1)
            merged_values = torch.cat([best_values, values], dim=1)
            merged_indices = torch.cat([best_indices, indices + key_start], dim=1)
            best_values, order = merged_values.topk(k, dim=1)
            best_indices = merged_indices.gather(1, order)
        result[start:stop] = best_indices.cpu()
        if progress is not None:
            progress(stop)
    return result


def _normalized_blocks(features: torch.Tensor, block_size: int, device: torch.device):
    """All rows L2-normalized in float32 on ``device``, converted block by block (a float16
    memory map is never copied whole in float32 on the host)."""
    out = torch.empty(features.shape, dtype=torch.float32, device=device)
    for start in range(0, features.shape[0], block_size):
        block = features[start : start + block_size].to(device=device, dtype=torch.float32)
        out[start : start + block_size] = F.normalize(block, dim=1)
    return out


@torch.no_grad()
def whitened(
    features: torch.Tensor, dim: int, power: float = 0.5, block_size: int = 65536
) -> torch.Tensor:
    """The neighbour space of frozen features: signed power normalization (``power`` 0.5: the
    square root, which damps the few large activations), L2 normalization, then PCA whitening to
    ``dim`` components. Neighbours found there share their class more often than in the raw
    cosine space (measured on MNIST-5k through EfficientNet-Lite0: 5-NN agreement 0.86 → 0.90).

    Computed block by block (the covariance is D x D): ``features`` may be a float16 memory map.

    Examples:
        >>> whitened(torch.randn(100, 16), dim=4).shape
        torch.Size([100, 4])
    """
    if not 1 <= dim <= features.shape[1]:
        raise ValueError(f"dim must be in [1, {features.shape[1]}], got {dim}")

    def prepared(block: torch.Tensor) -> torch.Tensor:
        block = block.to(torch.float64)
        return F.normalize(block.sign() * block.abs().pow(power), dim=1)

    rows, width = features.shape
    total = torch.zeros(width, dtype=torch.float64)
    second = torch.zeros(width, width, dtype=torch.float64)
    for start in range(0, rows, block_size):
        block = prepared(features[start : start + block_size])
        total += block.sum(0)
        second += block.T @ block
    mean = total / rows
    covariance = second / rows - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    top = eigenvectors[:, -dim:].flip(1) / eigenvalues[-dim:].flip(0).clamp_min(1e-12).sqrt()
    out = torch.empty(rows, dim, dtype=torch.float32)
    for start in range(0, rows, block_size):
        block = prepared(features[start : start + block_size])
        out[start : start + block_size] = ((block - mean) @ top).float()
    return out
