"""How the center bank's state is saved, restored and re-sharded (the ``state_dict`` protocol).

The centers are parameters and the targets, counts and duals buffers, as usual. The assignment
memory and the epoch are neither (DistributedDataParallel would broadcast them, see
:mod:`secu_plugin.core.memory`), so they get their own ``state_dict`` entries here:
``memory`` (int16, (H, N), or this rank's shard), ``memory_shard`` ((rank, world size), sharded
memories only) and ``epoch``. Checkpoints of version 1 (no ``epoch`` entry, the memory then a
buffer under the same key) still load.
"""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from secu_plugin.core.memory import AssignmentMemory

_OWN_KEYS = ("memory", "memory_shard", "epoch")  # state_dict entries that are not buffers
_RANK_OWN_KEYS = ("memory", "memory_shard")  # a sharded memory's: each rank's own


class BankState(nn.Module):
    """The checkpoint protocol of a module holding an assignment memory and an epoch, beside its
    parameters and buffers: the base of :class:`~secu_plugin.core.bank.SeCuCenterBank`.

    Args:
        memory: The assignment memory, saved as ``memory`` (and ``memory_shard``), moved with
            the module, restored by :meth:`load_state_dict` and :meth:`load_sharded`.

    The epoch (``_epoch``, read through :attr:`epoch`) starts at -1, before any epoch;
    subclasses set it when an epoch starts.

    Examples:
        >>> from secu_plugin import SeCuCenterBank
        >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3)
        >>> bank.start_epoch()
        >>> list(bank.state_dict())
        ['memory', 'targets', 'stacked_counts', 'stacked_duals', 'epoch', 'centers.0']
        >>> restored = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3)
        >>> _ = restored.load_state_dict(bank.state_dict())
        >>> restored.epoch
        0
    """

    _version = 2  # 2: "epoch" entry; version 1 checkpoints load with epoch -1

    def __init__(self, memory: AssignmentMemory) -> None:
        super().__init__()
        if not isinstance(memory, AssignmentMemory):
            raise ValueError(f"memory must be an AssignmentMemory, got {type(memory).__name__}")
        self._memory = memory
        self._epoch = -1  # a host int: reading a device tensor every step would sync

    @property
    def epoch(self) -> int:
        """The current epoch: -1 before the first, then set by start_epoch / set_epoch."""
        return self._epoch

    def shared_state(self) -> dict[str, torch.Tensor]:
        """The ``state_dict`` entries every rank of a run holds alike: all of them but a
        sharded memory's (each rank's own instances' labels, and its ``memory_shard`` index).

        Examples:
            >>> from secu_plugin import SeCuCenterBank
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3, memory="sharded")
            >>> sorted(set(bank.state_dict()) - set(bank.shared_state()))
            ['memory', 'memory_shard']
            >>> "memory" in SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3).shared_state()
            True
        """
        own = _RANK_OWN_KEYS if self._memory.sharded else ()
        return {k: v for k, v in self.state_dict().items() if k not in own}

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._memory.apply(fn)
        return self

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:
        for name, tensor in self._memory.state().items():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "epoch"] = torch.tensor(self._epoch)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        own = {name: state_dict.get(prefix + name) for name in _OWN_KEYS}
        rest = {k: v for k, v in state_dict.items() if k[len(prefix) :] not in _OWN_KEYS}
        version = local_metadata.get("version")
        problems = self._own_state_problems(own, version, prefix)
        missing_keys.extend(prefix + name for name in problems.pop("missing", []))
        if problems:  # nothing loaded: torch raises with these messages
            errors.extend(problems.values())
            return
        before = len(errors)
        super()._load_from_state_dict(
            rest, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )
        if len(errors) > before:
            return
        if own["memory"] is not None:
            self._memory.load(own["memory"], own["memory_shard"])
        if own["epoch"] is not None:
            self._epoch = int(own["epoch"])
        elif version is None or version < 2:
            self._epoch = -1  # a version 1 checkpoint: no epoch recorded

    def _own_state_problems(self, own: dict, version: int | None, prefix: str) -> dict:
        problems: dict = {}
        if own["memory"] is None:
            problems["missing"] = ["memory"]
        else:
            reason = self._memory.check_state(own["memory"], own["memory_shard"])
            if reason:
                problems["memory"] = f"{prefix}memory: {reason}"
        epoch = own["epoch"]
        if epoch is None:
            if version is not None and version >= 2:
                problems.setdefault("missing", []).append("epoch")
        elif not isinstance(epoch, torch.Tensor) or epoch.numel() != 1 or epoch.is_floating_point():
            problems["epoch"] = f"{prefix}epoch must be a 0-d integer tensor, got {epoch!r}"
        return problems

    def load_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False
    ):
        """``nn.Module.load_state_dict``, checked first: ValueError naming the problem and
        nothing loaded if an entry is missing (strict), unknown (strict) or of the wrong shape.

        A shard saved by another rank, or with another world size, needs :meth:`load_sharded`.
        """
        version = (getattr(state_dict, "_metadata", None) or {}).get("", {}).get("version")
        own = {name: state_dict.get(name) for name in _OWN_KEYS}
        problems = self._own_state_problems(own, version, "")
        missing = problems.pop("missing", [])
        reasons = list(problems.values())
        expected = {**dict(self.named_parameters()), **dict(self.named_buffers())}
        for key, tensor in expected.items():
            value = state_dict.get(key)
            if value is None:
                missing.append(key)
            elif not isinstance(value, torch.Tensor) or value.shape != tensor.shape:
                shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value)
                reasons.append(f"{key} must have shape {tuple(tensor.shape)}, got {shape}")
        unexpected = [k for k in state_dict if k not in expected and k not in _OWN_KEYS]
        if strict and (missing or unexpected):
            reasons += [f"missing {missing}"] if missing else []
            reasons += [f"unexpected {unexpected}"] if unexpected else []
        if reasons:
            raise ValueError("cannot load the bank's state_dict: " + "; ".join(reasons))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def load_sharded(self, states: Sequence[Mapping[str, torch.Tensor]]) -> None:
        """Restores the bank from the ``state_dict`` of every rank of a run with a sharded
        memory, saved with any world size: this rank keeps its own instances' labels.

        Examples:
            >>> from secu_plugin import SeCuCenterBank
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=5, memory="sharded")
            >>> state = bank.state_dict()
            >>> state["memory_shard"].tolist()  # (rank, world size)
            [0, 1]
            >>> bank.load_sharded([state])
        """
        if not states:
            raise ValueError("load_sharded needs the state_dict of every rank, got none")
        first = OrderedDict(states[0])
        if getattr(states[0], "_metadata", None) is not None:
            first._metadata = states[0]._metadata
        for state in states[1:]:  # the global state is identical on every rank
            for key, value in first.items():
                if key not in _RANK_OWN_KEYS and not torch.equal(state[key], value):
                    raise ValueError(f"the ranks' states differ in {key!r}: not one run")
        # This rank's part only (a sharded bank never holds the whole memory).
        memory = self._memory
        mine = AssignmentMemory(
            memory.num_heads, memory.num_instances, memory.dtype, mode=memory.mode
        )
        mine.load_shards([(s.get("memory"), s.get("memory_shard")) for s in states])
        first.update(mine.state())
        if not mine.sharded:
            first.pop("memory_shard", None)
        self.load_state_dict(first)

    def load_memory_shards(self, shards: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Restores the memory alone from the ``(memory, memory_shard)`` entries of every rank
        of a sharded run, saved with any world size; ``shards`` may yield them one at a time
        (a checkpoint that keeps each rank's shard in its own file). ValueError, nothing
        changed, if they do not make a whole memory.

        Examples:
            >>> from secu_plugin import SeCuCenterBank
            >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3, memory="sharded")
            >>> halves = [(torch.tensor([[0, 1]]), torch.tensor([0, 2])),
            ...           (torch.tensor([[1]]), torch.tensor([1, 2]))]
            >>> bank.load_memory_shards(iter(halves)); bank.memory
            tensor([[0, 1, 1]], dtype=torch.int16)
        """
        self._memory.load_shards(shards)


def epoch_number(epoch: object) -> int:
    """``epoch`` as a non-negative int (Python or 0-d tensor integers), else ValueError.

    Examples:
        >>> epoch_number(torch.tensor(3))
        3
    """
    try:
        value = operator.index(epoch)
    except TypeError:
        raise ValueError(f"epoch must be an integer, got {epoch!r}") from None
    if value < 0:
        raise ValueError(f"epoch must be non-negative, got {value}")
    return value
