"""The assignment memory: one label per training instance and head, replicated or sharded.

SeCu keeps the label of every training instance in every head: the representation loss mixes
the label of the previous epoch into its target, and the entropy constraint counts the labels
of the whole data set. At 2 bytes per instance and head this is 25.6 MB for ImageNet with 10
heads, but 20 GB per rank for 10^9 instances: then each rank keeps only the instances it owns.

- ``"replicated"``: every rank holds all labels, (H, N).
- ``"sharded"``: rank r of W holds the instances ``i`` with ``i % W == r`` at column ``i // W``.
  Per step the stored labels of the global batch are fetched from their owners (one all-reduce
  of (H, global batch) int32) and each owner writes the new labels of its instances (every rank
  already receives all of them for the counts, so nothing is sent back).

The memory is not a registered buffer: DistributedDataParallel broadcasts buffers from rank 0
(at construction and, by default, before every forward pass), which would cost 2 bytes x H x N
per step, fails for int16 under gloo and NCCL, and would overwrite the other ranks' shards. Every
rank keeps it identical (replicated) or consistent (sharded) itself, from the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from secu_plugin.core import dist

#: ``memory="auto"`` shards the memory above this many bytes (1 GiB: N x H > 536,870,912 labels).
SHARD_ABOVE_BYTES = 1 << 30


def memory_dtype(num_clusters: Sequence[int]) -> torch.dtype:
    """int16 when every head has at most 32,767 clusters (-1 marks "no label yet"), else int32.

    Examples:
        >>> memory_dtype([10, 10000]), memory_dtype([40000])
        (torch.int16, torch.int32)
    """
    return torch.int16 if max(num_clusters) <= torch.iinfo(torch.int16).max else torch.int32


def shard_size(num_instances: int, rank: int, world_size: int) -> int:
    """How many of ``num_instances`` instances rank ``rank`` of ``world_size`` owns.

    Examples:
        >>> [shard_size(10, r, 4) for r in range(4)]
        [3, 3, 2, 2]
    """
    return (num_instances - rank + world_size - 1) // world_size


class AssignmentMemory:
    """Labels of every instance in every head, -1 until assigned; owned by the center bank.

    Args:
        num_heads: H.
        num_instances: N, the size of the training set.
        dtype: Integer dtype of the labels (:func:`memory_dtype`).
        mode: ``"replicated"``, ``"sharded"`` or ``"auto"`` (sharded above
            :data:`SHARD_ABOVE_BYTES`).
        device: Where the labels live.

    A sharded memory takes the world size and rank of the default process group when it is
    first used, so that it can be built before ``torch.distributed`` is initialized (a
    LightningModule is); a single process owns every instance.

    Examples:
        >>> memory = AssignmentMemory(2, 5, torch.int16, mode="sharded")
        >>> memory.write(torch.tensor([4, 1]), torch.tensor([[0, 1], [2, 3]]))
        >>> memory.fetch(torch.tensor([1, 2, 4]))
        tensor([[ 1, -1,  0],
                [ 3, -1,  2]])
    """

    def __init__(
        self,
        num_heads: int,
        num_instances: int,
        dtype: torch.dtype,
        mode: str = "auto",
        device: torch.device | str | None = None,
    ) -> None:
        if mode not in ("auto", "replicated", "sharded"):
            raise ValueError(f"memory must be 'auto', 'replicated' or 'sharded', got {mode!r}")
        if mode == "auto":
            size = num_heads * num_instances * torch.empty((), dtype=dtype).element_size()
            mode = "sharded" if size > SHARD_ABOVE_BYTES else "replicated"
        self.mode = mode
        self.num_heads = int(num_heads)
        self.num_instances = int(num_instances)
        self.dtype = dtype
        self.device = torch.device(device if device is not None else "cpu")
        self.rank, self.world_size = 0, 1
        self._storage: torch.Tensor | None = None
        self._written = False
        if not self.sharded or dist.world_size() > 1:
            self._materialize()

    @property
    def sharded(self) -> bool:
        return self.mode == "sharded"

    @property
    def tensor(self) -> torch.Tensor:
        """(H, n) the labels this rank holds: all N, or its shard (column j: ``rank + j * W``)."""
        self._materialize()
        # A sharded storage has one extra column that absorbs the writes of other ranks'
        # instances, so that writing needs no mask (a boolean mask would sync the device).
        return self._storage[:, :-1] if self.sharded else self._storage

    def _materialize(self) -> None:
        world, rank = (dist.world_size(), dist.rank()) if self.sharded else (1, 0)
        if self._storage is not None and (world, rank) == (self.world_size, self.rank):
            return
        if self._written:
            raise ValueError(
                f"the memory is sharded over {self.world_size} ranks (this is rank {self.rank}) "
                f"but the process group has {world}: load the shards of all ranks with "
                "SeCuCenterBank.load_sharded to re-shard"
            )
        self.world_size, self.rank = world, rank
        columns = shard_size(self.num_instances, rank, world) + (1 if self.sharded else 0)
        self._storage = torch.full(
            (self.num_heads, columns), -1, dtype=self.dtype, device=self.device
        )

    def _local_columns(self, indices: torch.Tensor) -> torch.Tensor:
        """Column of each index in this rank's storage; the spare column for others' indices."""
        if self.world_size == 1:
            return indices
        owned = torch.remainder(indices, self.world_size) == self.rank
        spare = torch.full_like(indices, self._storage.shape[1] - 1)
        return torch.where(owned, torch.div(indices, self.world_size, rounding_mode="floor"), spare)

    @torch.no_grad()
    def fetch(self, indices: torch.Tensor) -> torch.Tensor:
        """(H, B) int64 stored labels of ``indices`` (-1 where none).

        Sharded: a collective, every rank passes the same (global) ``indices``.
        """
        self._materialize()
        if not self.sharded:
            return self._storage.index_select(1, indices).long()
        # Non-owners contribute -1 (the spare column holds -1 except after writes of other
        # ranks' instances, masked here); the owner's label wins the maximum.
        local = self._storage.index_select(1, self._local_columns(indices)).to(torch.int32)
        if self.world_size > 1:
            owned = torch.remainder(indices, self.world_size) == self.rank
            local = torch.where(owned, local, -1)
            dist.all_reduce_max(local)
        return local.long()

    @torch.no_grad()
    def write(self, indices: torch.Tensor, labels: torch.Tensor) -> None:
        """Stores ``labels`` (H, B) of ``indices`` (B,); repeats of an index must carry equal
        labels. Sharded: every rank passes the same (global) batch and keeps its instances."""
        self._materialize()
        columns = self._local_columns(indices) if self.sharded else indices
        self._storage.index_copy_(1, columns, labels.to(self.dtype))
        self._written = True

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Applies a module conversion (``.to``, ``.cuda``, ``.double``, ...) to the labels."""
        self.device = fn(torch.empty(0, dtype=self.dtype, device=self.device)).device
        if self._storage is not None:
            self._storage = fn(self._storage)

    # ---- checkpoints
    def state(self) -> dict[str, torch.Tensor]:
        """``memory``: the labels this rank holds; sharded, also ``memory_shard``: (rank, W)."""
        state = {"memory": self.tensor}
        if self.sharded:
            state["memory_shard"] = torch.tensor([self.rank, self.world_size])
        return state

    def check_state(self, memory: object, shard: object) -> str | None:
        """Why ``memory`` (with its ``memory_shard`` entry, or None) cannot be loaded, or None."""
        if not isinstance(memory, torch.Tensor) or memory.is_floating_point():
            return f"memory must be an integer tensor, got {type(memory).__name__}"
        rank, world = self._shard_of(shard)
        if world is None:
            return f"memory_shard must hold (rank, world size), got {shard!r}"
        if world != 1 and (not self.sharded or (rank, world) != self._current_shard()):
            return (
                f"this memory is the shard of rank {rank} of {world}: load the shards of all "
                "ranks with SeCuCenterBank.load_sharded (it re-shards for this world size)"
            )
        expected = (self.num_heads, shard_size(self.num_instances, rank, world))
        if tuple(memory.shape) != expected:
            return f"memory must have shape {expected}, got {tuple(memory.shape)}"
        return None

    def load(self, memory: torch.Tensor, shard: torch.Tensor | None) -> None:
        """Loads a state entry already validated by :meth:`check_state`."""
        world = self._shard_of(shard)[1]
        self._materialize()
        if world == 1 and self.world_size > 1:  # a whole memory, on a sharded world
            memory = memory[:, self.rank :: self.world_size]
        self.tensor.copy_(memory)
        self._written = True

    def load_shards(self, shards: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Assembles this rank's labels from the ``(memory, memory_shard)`` entries of every
        rank of a sharded run, whatever its world size (ValueError, nothing changed, if they do
        not make a whole memory).

        ``shards`` may be a generator that reads one shard at a time: each is used and dropped
        before the next, so a resume holds this rank's labels twice and one saved shard, never
        the whole memory.
        """
        self._materialize()
        assembled = torch.full_like(self.tensor, -1)
        found: set[tuple[int, int]] = set()
        for memory, shard in shards:
            rank, world = self._shard_of(shard)
            if world is None or not isinstance(memory, torch.Tensor):
                raise ValueError(f"not a memory shard: memory_shard={shard!r}")
            if memory.is_floating_point():
                raise ValueError(f"shard {rank} of {world}: the labels must be integers")
            expected = (self.num_heads, shard_size(self.num_instances, rank, world))
            if tuple(memory.shape) != expected:
                raise ValueError(f"shard {rank} of {world} must have shape {expected}")
            if (rank, world) in found or any(w != world for _, w in found):
                raise ValueError(f"need one shard of every rank of one run, got {rank} of {world}")
            found.add((rank, world))
            instances = rank + world * torch.arange(memory.shape[1])
            mine = torch.remainder(instances, self.world_size) == self.rank
            columns = torch.div(instances[mine], self.world_size, rounding_mode="floor")
            assembled[:, columns.to(assembled.device)] = memory[:, mine].to(assembled)
        worlds = {world for _, world in found}
        if len(worlds) != 1 or len(found) != next(iter(worlds)):
            raise ValueError(f"need one shard of every rank of one run, got {sorted(found)}")
        self.tensor.copy_(assembled)
        self._written = True

    @torch.no_grad()
    def head_labels(self, head: int, chunk_size: int = 1 << 22) -> torch.Tensor:
        """(N,) the labels of every instance in head ``head``, on every rank.

        Sharded: a collective (every rank calls it) that moves ``chunk_size`` labels at a time
        (one int32 all-reduce per chunk), so no rank holds more than its shard, one chunk and
        the one head's N labels: what the memory's ACC / NMI / ARI need.

        Examples:
            >>> memory = AssignmentMemory(2, 5, torch.int16, mode="sharded")
            >>> memory.write(torch.tensor([4, 1]), torch.tensor([[0, 1], [2, 3]]))
            >>> memory.head_labels(1, chunk_size=2)
            tensor([-1,  3, -1, -1,  2], dtype=torch.int16)
        """
        if not 0 <= head < self.num_heads:
            raise ValueError(f"head must be in [0, {self.num_heads}), got {head}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._materialize()
        if not self.sharded or self.world_size == 1:
            return self.tensor[head].clone()
        labels = torch.empty(self.num_instances, dtype=self.dtype, device=self.device)
        row = self._storage[head]
        for start in range(0, self.num_instances, chunk_size):
            indices = torch.arange(
                start, min(start + chunk_size, self.num_instances), device=self.device
            )
            owned = torch.remainder(indices, self.world_size) == self.rank
            local = row.index_select(0, self._local_columns(indices)).to(torch.int32)
            local = dist.all_reduce_max(torch.where(owned, local, -1))
            labels[start : start + len(indices)] = local.to(self.dtype)
        return labels

    @torch.no_grad()
    def gather(self) -> torch.Tensor:
        """(H, N) all labels on every rank (sharded: a collective that moves the whole memory)."""
        if not self.sharded or self.world_size == 1:
            return self.tensor.clone()
        longest = shard_size(self.num_instances, 0, self.world_size)
        shards = dist.all_gather_padded(self.tensor.T.to(torch.int32), longest)
        full = torch.empty((self.num_heads, self.num_instances), dtype=self.dtype)
        full = full.to(self.device)
        for rank, shard in enumerate(shards):
            size = shard_size(self.num_instances, rank, self.world_size)
            full[:, rank :: self.world_size] = shard[:size].T.to(self.dtype)
        return full

    def _current_shard(self) -> tuple[int, int]:
        self._materialize()
        return self.rank, self.world_size

    @staticmethod
    def _shard_of(shard: object) -> tuple[int | None, int | None]:
        if shard is None:
            return 0, 1
        if not isinstance(shard, torch.Tensor) or shard.shape != (2,):
            return None, None
        rank, world = (int(v) for v in shard.tolist())
        return (rank, world) if 0 <= rank < world else (None, None)
