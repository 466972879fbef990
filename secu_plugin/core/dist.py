"""The few collective operations SeCu needs, usable with or without a process group.

Everything here is a no-op in a single process (no ``torch.distributed`` group initialized),
so the core runs the same way in a notebook, under ``accelerate launch``, ``torchrun`` and
PyTorch Lightning's DDP strategy. Integer tensors travel as int32 or int64: gloo and NCCL
cannot reduce or broadcast int16.
"""

from __future__ import annotations

from collections.abc import Sequence

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
def batch_sizes(rows: int, device: torch.device) -> list[int]:
    """The number of rows of every rank, in rank order (``[rows]`` in a single process).

    Ranks may hold different numbers of rows (the last batch of an epoch). With several
    processes this reads the sizes back to the host: the one synchronization of a SeCu step on
    an accelerator, and only in multi-process runs.

    Examples:
        >>> batch_sizes(5, torch.device("cpu"))
        [5]
    """
    size = world_size()
    if size == 1:
        return [rows]
    mine = torch.tensor([rows], device=device)
    everyone = [torch.empty_like(mine) for _ in range(size)]
    dist.all_gather(everyone, mine)
    return torch.cat(everyone).tolist()


@torch.no_grad()
def gather_rows(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenates ``tensor`` of every rank along its first dimension, in rank order.

    Args:
        tensor: This rank's rows.
        sizes: Every rank's number of rows (:func:`batch_sizes`), exchanged if None.

    No gradient flows.

    Examples:
        >>> gather_rows(torch.arange(3))
        tensor([0, 1, 2])
    """
    if world_size() == 1:
        return tensor
    sizes = sizes if sizes is not None else batch_sizes(tensor.shape[0], tensor.device)
    gathered = all_gather_padded(tensor, max(sizes))
    return torch.cat([g[:n] for g, n in zip(gathered, sizes)], dim=0)


@torch.no_grad()
def all_gather_padded(tensor: torch.Tensor, longest: int | None = None) -> list[torch.Tensor]:
    """Every rank's ``tensor``, padded with zeros to ``longest`` rows (exchanged if None).

    Examples:
        >>> all_gather_padded(torch.ones(2, 3))[0].shape
        torch.Size([2, 3])
    """
    if world_size() == 1:
        return [tensor]
    if longest is None:
        longest = max(batch_sizes(tensor.shape[0], tensor.device))
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(gathered, padded.contiguous())
    return gathered


@torch.no_grad()
def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise maximum over ranks (int32, int64 or floating point).

    Examples:
        >>> all_reduce_max(torch.tensor([1, 5]))
        tensor([1, 5])
    """
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


@torch.no_grad()
def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In place: the element-wise sum over ranks.

    Examples:
        >>> all_reduce_sum(torch.tensor([1, 5]))
        tensor([1, 5])
    """
    if world_size() > 1:
        dist.all_reduce(tensor)
    return tensor


class _MeanGradientAcrossRanks(torch.autograd.Function):
    """Identity forward; backward averages the incoming gradients over all ranks, in one
    all-reduce for all the tensors."""

    @staticmethod
    def forward(ctx, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(tensor.view_as(tensor) for tensor in tensors)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor) -> tuple[torch.Tensor, ...]:
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        dist.all_reduce(flat)
        flat /= world_size()
        return tuple(
            part.view_as(grad) for part, grad in zip(flat.split([g.numel() for g in grads]), grads)
        )


def mean_gradient_across_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Returns ``tensors`` unchanged; the gradients reaching them are averaged over ranks (one
    all-reduce for all of them).

    When the centers live outside the DistributedDataParallel wrapper of the encoder, nothing
    else averages their gradient. When they live inside it (a bank that is a submodule of a
    DDP-wrapped model, as in a LightningModule), DDP averages the already averaged gradient
    again: the mean of equal values, the same up to rounding (bit for bit on 2 ranks, where
    (g + g) / 2 = g), for one more all-reduce of the centers' gradient per step; there,
    ``SeCuLoss(..., sync_center_gradients=False)`` leaves the averaging to DDP alone.
    ``tests/test_distributed.py`` checks both against the single-process gradient.

    Examples:
        >>> centers = [torch.randn(3, 2, requires_grad=True), torch.randn(4, 2, requires_grad=True)]
        >>> mean_gradient_across_ranks(centers)[1] is centers[1]  # one process: unchanged
        True
    """
    tensors = list(tensors)
    if world_size() == 1 or not any(tensor.requires_grad for tensor in tensors):
        return tensors
    return list(_MeanGradientAcrossRanks.apply(*tensors))
