"""Checkpoints of a sharded assignment memory: every rank saves its own shard.

Accelerate's ``save_state`` writes the objects registered with ``register_for_checkpointing``
from the main process only, so a run whose memory is sharded (``memory="sharded"``, or
``"auto"`` above 1 GiB) would save rank 0's labels and lose every other rank's. The recipes
therefore register the bank and the epoch report through :class:`MemoryShards`: with a
replicated memory their state is saved exactly as before; with a sharded one the registered
state leaves the labels out (it records the world size instead) and every rank writes
``memory_shards/rank-<r>-of-<W>.safetensors`` into the same checkpoint directory, before the
manifest that covers all its files. A resume reads the shards one at a time and keeps the
instances this rank owns, so it works on any number of processes.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from secu_plugin.core import SeCuCenterBank, dist
from secu_plugin.core.memory import AssignmentMemory, shard_size

if TYPE_CHECKING:
    from secu_plugin.train.report import EpochReport

SHARDS_DIR = "memory_shards"  # in a checkpoint directory: one file per rank
_WORLD_KEY = "memory_shards"  # in the registered state: the world size of the shard files
_SHARD_NAME = re.compile(r"rank-(\d{5})-of-(\d{5})\.safetensors")


def shard_file(directory: Path, rank: int, world_size: int) -> Path:
    """Where rank ``rank`` of ``world_size`` keeps its shard in checkpoint ``directory``.

    Examples:
        >>> shard_file(Path("state-1"), 1, 4).as_posix()
        'state-1/memory_shards/rank-00001-of-00004.safetensors'
    """
    return directory / SHARDS_DIR / f"rank-{rank:05d}-of-{world_size:05d}.safetensors"


class _RegisteredBank:
    """The bank as ``register_for_checkpointing`` sees it (see :class:`MemoryShards`)."""

    def __init__(self, shards: MemoryShards) -> None:
        self.shards = shards

    def state_dict(self) -> dict:
        bank = self.shards.bank
        state = bank.state_dict()
        if bank.memory_sharded:
            world = int(state.pop("memory_shard")[1])
            del state["memory"]
            state[_WORLD_KEY] = torch.tensor(world)
        return state

    def load_state_dict(self, state: dict) -> None:
        bank = self.shards.bank
        if _WORLD_KEY not in state:  # a replicated memory: all of it is in the state
            bank.load_state_dict(state)
            self.shards.pending_world = None
            return
        rest = OrderedDict((k, v) for k, v in state.items() if k != _WORLD_KEY)
        if getattr(state, "_metadata", None) is not None:
            rest._metadata = state._metadata  # the version of the bank's state
        result = bank.load_state_dict(rest, strict=False)
        if list(result.missing_keys) != ["memory"] or result.unexpected_keys:
            raise ValueError(
                "cannot load the bank's state: missing "
                f"{[k for k in result.missing_keys if k != 'memory']}, unexpected "
                f"{list(result.unexpected_keys)}"
            )
        self.shards.pending_world = _world_size(state[_WORLD_KEY])


class _RegisteredReport:
    """The epoch report as ``register_for_checkpointing`` sees it: its memory of the epoch
    start is sharded like the bank's memory."""

    def __init__(self, shards: MemoryShards) -> None:
        self.shards = shards

    def state_dict(self) -> dict:
        state = dict(self.shards.report.state_dict())
        if self.shards.bank.memory_sharded and state.get("previous") is not None:
            state["previous"] = None
            state["previous_in_shards"] = True
        return state

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.shards.pending_previous = bool(state.pop("previous_in_shards", False))
        self.shards.report.load_state_dict(state)
        self.shards.unsettled_epochs = state.get("unsettled_epochs", 0)


class MemoryShards:
    """A center bank and an epoch report, registered for checkpointing so that a sharded
    memory is saved by every rank and restored on any number of processes.

    Register :attr:`registered` (bank, report) with ``accelerator.register_for_checkpointing``;
    call :meth:`save` on every rank after ``accelerator.save_state(directory)`` and
    :meth:`load` on every rank after ``accelerator.load_state(directory)``
    (:func:`~secu_plugin.train.checkpoint.save_checkpoint` and ``RecipeRun.resume`` do).

    Examples:
        >>> import tempfile
        >>> from secu_plugin.train.report import EpochReport
        >>> bank = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3, memory="sharded")
        >>> bank.memory[0] = torch.tensor([1, 0, 1], dtype=bank.memory.dtype)
        >>> saved = MemoryShards(bank, EpochReport())
        >>> folder = Path(tempfile.mkdtemp())
        >>> state = saved.registered[0].state_dict(); _ = saved.save(folder)
        >>> "memory" in state, sorted(p.name for p in (folder / SHARDS_DIR).iterdir())
        (False, ['rank-00000-of-00001.safetensors'])
        >>> other = SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3, memory="sharded")
        >>> restored = MemoryShards(other, EpochReport())
        >>> restored.registered[0].load_state_dict(state); restored.load(folder)
        >>> other.memory
        tensor([[1, 0, 1]], dtype=torch.int16)
    """

    def __init__(self, bank: SeCuCenterBank, report: EpochReport | None) -> None:
        self.bank = bank
        self.report = report
        self.pending_world: int | None = None  # shards to read after a load_state
        self.pending_previous = False
        self.unsettled_epochs = 0
        self.registered = (_RegisteredBank(self), _RegisteredReport(self))

    def save(self, directory: Path) -> Path | None:
        """Writes this rank's shard (its labels and the report's labels of the epoch start)
        into checkpoint ``directory``; nothing for a replicated memory. Every rank calls it."""
        if not self.bank.memory_sharded:
            return None
        rank, world = dist.rank(), dist.world_size()
        tensors = {
            "memory": self.bank.memory.detach().cpu().contiguous(),
            "memory_shard": torch.tensor([rank, world]),
        }
        previous = None if self.report is None else self.report.state_dict().get("previous")
        if previous is not None:
            tensors["report_previous"] = previous.detach().cpu().contiguous()
        path = shard_file(Path(directory), rank, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        return path

    def load(self, directory: Path) -> None:
        """Restores the labels a loaded state left out from the shard files of checkpoint
        ``directory``, re-sharded for this world size (nothing to do for a replicated memory).
        A missing, foreign or malformed shard file is a ValueError naming it."""
        if self.pending_world is None:
            return
        paths = self._shard_paths(Path(directory), self.pending_world)
        self.bank.load_memory_shards(self._read(paths, "memory"))
        if self.pending_previous:
            memory = self.bank.memory
            previous = AssignmentMemory(
                self.bank.num_heads,
                self.bank.num_instances,
                memory.dtype,
                mode="sharded" if self.bank.memory_sharded else "replicated",
                device=memory.device,
            )
            previous.load_shards(self._read(paths, "report_previous"))
            self.report.load_state_dict(
                {"previous": previous.tensor, "unsettled_epochs": self.unsettled_epochs}
            )
        self.pending_world, self.pending_previous = None, False

    @staticmethod
    def _shard_paths(directory: Path, world: int) -> list[Path]:
        folder = directory / SHARDS_DIR
        found = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        expected = [shard_file(directory, r, world).name for r in range(world)]
        if found != expected:
            missing = sorted(set(expected) - set(found))
            foreign = sorted(set(found) - set(expected))
            raise ValueError(
                f"{folder}: the checkpoint's memory is sharded over {world} ranks but "
                f"{'missing ' + str(missing) if missing else ''}"
                f"{' ' if missing and foreign else ''}"
                f"{'unexpected ' + str(foreign) if foreign else ''}"
            )
        return [folder / name for name in expected]

    @staticmethod
    def _read(paths: list[Path], key: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(labels, memory_shard)`` of each file in turn: one shard in memory at a time."""
        for path in paths:
            rank, world = (int(v) for v in _SHARD_NAME.fullmatch(path.name).groups())
            try:
                with safe_open(str(path), framework="pt") as file:
                    shard = file.get_tensor("memory_shard")
                    labels = file.get_tensor(key)
            except Exception as error:  # a truncated or foreign file: safetensors' own errors
                raise ValueError(f"{path}: not a memory shard ({error})") from error
            if shard.tolist() != [rank, world]:
                raise ValueError(f"{path}: holds the shard {shard.tolist()}, not ({rank}, {world})")
            yield labels, shard


def _world_size(value: object) -> int:
    if not isinstance(value, torch.Tensor) or value.numel() != 1 or value.is_floating_point():
        raise ValueError(f"{_WORLD_KEY} must be a 0-d integer tensor, got {value!r}")
    world = int(value)
    if world < 1:
        raise ValueError(f"{_WORLD_KEY} must be at least 1, got {world}")
    return world


def checkpoint_bank_state(directory: Path) -> dict:
    """The bank's registered state in checkpoint ``directory`` (``custom_checkpoint_0.pkl``),
    read without running pickled code (``weights_only``); ValueError if it is not one."""
    path = Path(directory) / "custom_checkpoint_0.pkl"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # missing, truncated, or pickled objects beyond tensors
        raise ValueError(f"{path}: not a center bank's state ({error})") from error
    if not isinstance(state, dict) or not ("memory" in state or _WORLD_KEY in state):
        raise ValueError(f"{path}: not a center bank's state")
    return state


def checkpoint_memory_head(directory: Path, head: int) -> torch.Tensor:
    """(N,) the training memory's labels of head ``head`` in checkpoint ``directory`` (a
    recipe's ``state-*`` folder, already verified): from the bank's state when the memory is
    replicated, else from every rank's shard file, one file at a time.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> bank = SeCuCenterBank(dim=2, num_clusters=[2, 3], num_instances=3, memory="sharded")
        >>> bank.memory[1] = torch.tensor([2, 0, 1], dtype=bank.memory.dtype)
        >>> shards = MemoryShards(bank, None)
        >>> torch.save(shards.registered[0].state_dict(), folder / "custom_checkpoint_0.pkl")
        >>> _ = shards.save(folder)
        >>> checkpoint_memory_head(folder, 1).tolist()
        [2, 0, 1]
    """
    state = checkpoint_bank_state(directory)
    if _WORLD_KEY not in state:
        memory = state["memory"]
        if not 0 <= head < memory.shape[0]:
            raise ValueError(f"head must be in [0, {memory.shape[0]}), got {head}")
        return memory[head].clone()
    world = _world_size(state[_WORLD_KEY])
    paths = MemoryShards._shard_paths(directory, world)
    sizes = _columns(paths)
    num_instances = sum(sizes)
    if sizes != [shard_size(num_instances, r, world) for r in range(world)]:
        raise ValueError(f"{directory / SHARDS_DIR}: shards of {sizes} labels are not one memory")
    labels = torch.full((num_instances,), -1, dtype=torch.int32)
    for memory, shard in MemoryShards._read(paths, "memory"):
        rank = int(shard[0])
        if memory.ndim != 2 or not 0 <= head < memory.shape[0]:
            raise ValueError(f"{paths[rank]}: no head {head} in labels of shape {memory.shape}")
        labels[rank::world] = memory[head].to(labels.dtype)
    return labels


def _columns(paths: list[Path]) -> list[int]:
    """Every shard's number of columns, read from the safetensors headers alone."""
    sizes = []
    for path in paths:
        try:
            with safe_open(str(path), framework="pt") as file:
                shape = file.get_slice("memory").get_shape()
        except Exception as error:  # a truncated or foreign file: safetensors' own errors
            raise ValueError(f"{path}: not a memory shard ({error})") from error
        if len(shape) != 2:
            raise ValueError(f"{path}: the labels must be (heads, instances), got {shape}")
        sizes.append(shape[1])
    return sizes
