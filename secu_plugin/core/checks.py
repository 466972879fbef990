"""Input checks of a SeCu step, and value checks that never stop the device's queue.

Checking that features are finite and indices in range needs their values. On a CPU they are at
hand: the loss checks them at once and raises before touching anything. On an accelerator,
reading a value back waits for every kernel queued before it (the whole forward pass), so the
loss instead computes the checks on the device, masks the state update of a bad step with them
(``torch.where``: the memory, counts and duals keep their values) and copies the flags to the
host without waiting. The next call reads them, after waiting for the point of the stream where
they were computed (an event of the previous step, long passed: the device keeps the rest of
that step and the next forward pass queued) and raises the ValueError there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # the bank imports this module
    from secu_plugin.core.bank import SeCuCenterBank


class DeferredErrors:
    """Flags of bad steps on their way from the device to the host.

    :meth:`push` queues a step's flags (one per named input, non-zero where it was bad) without
    waiting; :meth:`raise_pending` reads every queued step in order and raises a ValueError for
    the first bad one (then forgets the rest: those steps were masked as well).

    Examples:
        >>> errors = DeferredErrors()
        >>> errors.push(torch.tensor([False, True]), ["z0", "z1"])
        >>> errors.raise_pending()
        Traceback (most recent call last):
        ...
        ValueError: an earlier SeCu step had bad inputs: z1 contains NaN or infinite values; ...
    """

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, torch.Event | None, tuple[str, ...]]] = []

    def __deepcopy__(self, memo: dict) -> DeferredErrors:
        return DeferredErrors()  # events cannot be copied; a copy starts with nothing pending

    def __getstate__(self) -> dict:
        return {"_pending": []}

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, flags: torch.Tensor, names: Sequence[str]) -> None:
        """Queues ``flags`` (one per name) computed on the device; no waiting."""
        if flags.device.type == "cpu":
            self._pending.append((flags, None, tuple(names)))
            return
        # A non-blocking copy into pinned host memory, and an event marking its completion.
        host = flags.to("cpu", non_blocking=True)
        event = torch.Event(device=flags.device)
        event.record()
        self._pending.append((host, event, tuple(names)))

    def raise_pending(self) -> None:
        """Raises the ValueError of the first bad queued step, if any; empties the queue."""
        pending, self._pending = self._pending, []
        for host, event, names in pending:
            if event is not None:
                event.synchronize()  # waits for that step's flags only, not for the queue
            bad = [name for name, flag in zip(names, host.tolist()) if flag]
            if bad:
                raise ValueError(
                    "an earlier SeCu step had bad inputs: "
                    + "; ".join(describe(name) for name in bad)
                    + "; that step left the memory, counts and duals unchanged"
                )


def describe(name: str) -> str:
    """The error message for a bad input called ``name``.

    Examples:
        >>> describe("indices")
        'indices out of range [0, num_instances)'
    """
    if name == "indices":
        return "indices out of range [0, num_instances)"
    if name == "other ranks":
        return "another rank had NaN or infinite features or indices out of range"
    return f"{name} contains NaN or infinite values"


def check_inputs(
    bank: SeCuCenterBank,
    check_values: bool | str,
    record: bool,
    z0: torch.Tensor,
    z1: torch.Tensor,
    indices: torch.Tensor,
    p0: torch.Tensor | None = None,
    p1: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Checks the inputs of a SeCu step (see :class:`~secu_plugin.core.loss.SeCuLoss`).

    Returns the views, the indices (int64, on the views' device) and, where values are checked
    on the device, the flags (z0, z1[, p0, p1], indices), else None. ValueError, before
    anything is changed, for what is checked on the host.

    Examples:
        >>> from secu_plugin import SeCuCenterBank
        >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3)
        >>> z = torch.zeros(1, 2)
        >>> check_inputs(bank, True, True, z, z, torch.tensor([3]))
        Traceback (most recent call last):
        ...
        ValueError: indices must be in [0, 3) (num_instances), got range [3, 3]
        >>> check_inputs(bank, "deferred", True, z, z, torch.tensor([3]))[2]
        tensor([False, False,  True])
    """
    if (p0 is None) != (p1 is None):
        raise ValueError("p0 and p1 must be given together (predictor outputs of both views)")
    named = {"z0": z0, "z1": z1}
    if p0 is not None:
        named.update(p0=p0, p1=p1)
    for name, value in named.items():
        bank._check_features(value, name)
    batch = z0.shape[0]
    if batch == 0:
        raise ValueError("the batch is empty")
    device = z0.device
    for name, value in named.items():
        if value.shape[0] != batch:
            raise ValueError(
                f"{name} has {value.shape[0]} rows but z0 has {batch}: views must match"
            )
        if value.device != device:
            raise ValueError(f"{name} is on {value.device} but z0 on {device}")
    if not isinstance(indices, torch.Tensor):
        raise ValueError(f"indices must be a torch.Tensor, got {type(indices).__name__}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.ndim != 1 or indices.shape[0] != batch:
        raise ValueError(
            f"indices must have shape ({batch},) to match the views, got {tuple(indices.shape)}"
        )
    if indices.device != device and indices.device.type != "cpu":
        raise ValueError(f"indices are on {indices.device} but the views on {device}")
    views = list(named.values())
    if not check_values:
        return views, indices.to(device, torch.long, non_blocking=True), None
    # Values on the device are flagged there (recording calls only: the flags mask the
    # update); host values are checked at once, which costs no device synchronization.
    deferred = record and (check_values == "deferred" or device.type != "cpu")
    if indices.device.type == "cpu" and not (deferred and device.type == "cpu"):
        # A DataLoader's indices: checked on the host, before the copy to the device.
        low, high = torch.stack([indices.min().long(), indices.max().long()]).tolist()
        if low < 0 or high >= bank.num_instances:
            raise ValueError(
                f"indices must be in [0, {bank.num_instances}) (num_instances), got "
                f"range [{low}, {high}]"
            )
        device_indices = False
    else:
        device_indices = True
    if device.type == "cpu" and not deferred:
        finite = torch.stack([torch.isfinite(v.detach()).all() for v in views]).tolist()
        for name, is_finite in zip(named, finite):
            if not is_finite:
                raise ValueError(f"{name} contains NaN or infinite values")
    indices = indices.to(device, torch.long, non_blocking=True)
    if not deferred:
        return views, indices, None
    flags = [~torch.isfinite(value.detach()).all() for value in views]
    if device_indices:
        flags.append(((indices < 0) | (indices >= bank.num_instances)).any())
        indices = indices.clamp(0, bank.num_instances - 1)  # no out-of-bounds reads
    else:
        flags.append(torch.zeros((), dtype=torch.bool, device=device))
    return views, indices, torch.stack(flags)
