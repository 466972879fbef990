"""The few collective operations SeCu needs, usable with or without a process group.

Everything here is a no-op in a single process (no ``torch.distributed`` group initialized),
so the core runs the same way in a notebook, under ``accelerate launch`` and under ``torchrun``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes in the default group, 1 when none is initialized.

    Examples:
        >>> world_size()
        1
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def rank() -> int:
    """Rank of this process in the default group, 0 when none is initialized.

    Examples:
        >>> rank()
        0
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


@torch.no_grad()
def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenates ``tensor`` of every rank along its first dimension, in rank order.

    Ranks may hold different numbers of rows (the last batch of an epoch). No gradient flows.

    Examples:
        >>> gather_rows(torch.arange(3))
        tensor([0, 1, 2])
    """
    size = world_size()
    if size == 1:
        return tensor
    rows = torch.tensor([tensor.shape[0]], device=tensor.device)
    all_rows = [torch.empty_like(rows) for _ in range(size)]
    dist.all_gather(all_rows, rows)
    counts = [int(r.item()) for r in all_rows]
    longest = max(counts)
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(gathered, padded.contiguous())
    return torch.cat([g[:n] for g, n in zip(gathered, counts)], dim=0)


class _MeanGradientAcrossRanks(torch.autograd.Function):
    """Identity forward; backward averages the incoming gradient over all ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad / world_size()


def mean_gradient_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Returns ``tensor`` unchanged; the gradient reaching it is averaged over ranks.

    The centers live outside the DistributedDataParallel wrapper of the encoder, so their
    gradient is averaged here, the way DDP averages the encoder's. Averaging is idempotent once
    every rank holds the mean, so a user who also wraps the centers in DDP gets the same result.

    Examples:
        >>> centers = torch.randn(3, 2, requires_grad=True)
        >>> mean_gradient_across_ranks(centers) is centers  # one process: unchanged
        True
    """
    if world_size() == 1 or not tensor.requires_grad:
        return tensor
    return _MeanGradientAcrossRanks.apply(tensor)
