"""Value checks of a SeCu step that never stop the device's queue.

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
