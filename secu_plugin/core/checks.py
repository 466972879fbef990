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

import torch


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


def check_features(z: torch.Tensor, dim: int, name: str) -> None:
    """ValueError unless ``z`` is a floating point (batch, ``dim``) tensor.

    Examples:
        >>> check_features(torch.zeros(3, 2), dim=4, name="z0")
        Traceback (most recent call last):
        ...
        ValueError: z0 must have shape (batch, 4), got (3, 2)
    """
    if not isinstance(z, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
    if z.ndim != 2 or z.shape[1] != dim:
        raise ValueError(f"{name} must have shape (batch, {dim}), got {tuple(z.shape)}")
    if not z.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {z.dtype}")


def check_step_inputs(
    dim: int,
    z0: torch.Tensor,
    z1: torch.Tensor,
    indices: torch.Tensor,
    p0: torch.Tensor | None = None,
    p1: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Checks what a SeCu step's inputs are (types, shapes, dtypes, devices), not their values.

    Returns the views by name (``z0``, ``z1`` and, when given, ``p0``, ``p1``); ValueError
    naming the first problem.

    Examples:
        >>> z = torch.zeros(2, 4)
        >>> list(check_step_inputs(4, z, z, torch.arange(2)))
        ['z0', 'z1']
        >>> check_step_inputs(4, z, z, torch.arange(3))
        Traceback (most recent call last):
        ...
        ValueError: indices must have shape (2,) to match the views, got (3,)
    """
    if (p0 is None) != (p1 is None):
        raise ValueError("p0 and p1 must be given together (predictor outputs of both views)")
    named = {"z0": z0, "z1": z1}
    if p0 is not None:
        named.update(p0=p0, p1=p1)
    for name, value in named.items():
        check_features(value, dim, name)
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
    return named


def check_index_range(indices: torch.Tensor, num_instances: int) -> None:
    """ValueError unless every index is in [0, ``num_instances``); reads the values (on the
    host: a DataLoader's indices, checked before their copy to the device).

    Examples:
        >>> check_index_range(torch.tensor([0, 3]), num_instances=3)
        Traceback (most recent call last):
        ...
        ValueError: indices must be in [0, 3) (num_instances), got range [0, 3]
    """
    low, high = torch.stack([indices.min().long(), indices.max().long()]).tolist()
    if low < 0 or high >= num_instances:
        raise ValueError(
            f"indices must be in [0, {num_instances}) (num_instances), got range [{low}, {high}]"
        )


def check_finite(named: dict[str, torch.Tensor]) -> None:
    """ValueError naming the first tensor with NaN or infinite values; reads the values.

    Examples:
        >>> check_finite({"z0": torch.zeros(1, 2), "z1": torch.tensor([[0.0, float("nan")]])})
        Traceback (most recent call last):
        ...
        ValueError: z1 contains NaN or infinite values
    """
    finite = torch.stack([torch.isfinite(v.detach()).all() for v in named.values()]).tolist()
    for name, is_finite in zip(named, finite):
        if not is_finite:
            raise ValueError(describe(name))


def flag_bad_values(
    views: Sequence[torch.Tensor], indices: torch.Tensor | None, num_instances: int
) -> torch.Tensor:
    """Flags, on the views' device and without reading them back: one per view (non-finite
    values), then one for ``indices`` (out of range; ``None``: already checked on the host).

    Examples:
        >>> z = torch.zeros(1, 2)
        >>> flag_bad_values([z, z / 0], torch.tensor([3]), num_instances=3)
        tensor([False,  True,  True])
    """
    flags = [~torch.isfinite(value.detach()).all() for value in views]
    if indices is None:
        flags.append(torch.zeros((), dtype=torch.bool, device=views[0].device))
    else:
        flags.append(((indices < 0) | (indices >= num_instances)).any())
    return torch.stack(flags)
