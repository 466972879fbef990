"""Bytes of SeCu state per rank, replicated vs sharded memory, and communication per step.

For N instances, H heads and W ranks:

- the assignment memory holds 2 bytes per instance and head: ``2 H N`` bytes on every rank
  when replicated, ``2 H (ceil(N / W) + 1)`` on rank 0 when sharded (one spare column per head
  absorbs the writes of other ranks' instances);
- centers and frozen targets (float32), counts (int64) and duals (float32), ``sum K x (8 dim +
  12)`` bytes, are the same on every rank either way;
- per step and rank (B rows per rank, ``B_g = W B``): the batch sizes (``8 W``), the global
  batch's indices (``8 B_g``) and labels plus the bad-step flag (``4 (H + 1) B_g``) are
  all-gathered; a sharded memory also all-reduces the stored labels of the global batch
  (int32, ring: ``2 (W - 1) / W x 4 H B_g`` sent and as much received); the centers' gradient
  is all-reduced (``2 (W - 1) / W x 4 sum K dim``) when the loss averages it (DDP does it
  otherwise). Bytes received per rank are given; a ring all-reduce sends as much.

``--measure`` builds real banks where they fit in this machine's memory: one process for the
replicated memory, and W real gloo processes (``torch.multiprocessing``) that each report the
bytes of their shard; everything else is computed with the formulas above (the table says which).
The bytes of a built bank are counted from its storage tensor (elements x element size); what
is measured is how much the process's resident memory grew while it was built. The JSON holds
the provenance (``benchmarks/provenance.py``) with the rows.

Usage::

    python benchmarks/memory_table.py --measure --json docs/memory_table.json
    python benchmarks/memory_table.py --smoke        # small sizes, 2 processes: a few seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import start_record, write_json
from secu_plugin import SeCuCenterBank

IMAGENET_HEADS = list(range(1000, 10001, 1000))  # 10 heads, sum K = 55,000
SIZES = [1_281_167, 100_000_000, 1_000_000_000]
WORLDS = [8, 64, 512]
BATCH_PER_RANK = 256
DIM = 128


def memory_bytes(num_instances: int, heads: int, world: int, sharded: bool) -> int:
    """Bytes of rank 0's assignment memory (int16)."""
    if not sharded:
        return 2 * heads * num_instances
    return 2 * heads * (math.ceil(num_instances / world) + 1)


def other_state_bytes(num_clusters: list[int], dim: int) -> int:
    """Centers and targets (float32), counts (int64) and duals (float32)."""
    total = sum(num_clusters)
    return total * dim * 4 * 2 + total * 8 + total * 4


def communication_bytes(heads: int, total_k: int, dim: int, batch: int, world: int) -> dict:
    """Bytes received per rank and step, by collective (see the module docstring)."""
    global_batch = batch * world
    ring = 2 * (world - 1) / world
    return {
        "sizes": 8 * world,
        "indices": 8 * global_batch,
        "labels": 4 * (heads + 1) * global_batch,
        "sharded_fetch": ring * 4 * heads * global_batch,
        "center_gradient": ring * 4 * total_k * dim,
    }


def resident_bytes() -> int:
    """This process's resident memory (Linux), 0 where unknown."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def built_bank_bytes(num_instances: int, heads: int, memory: str) -> tuple[int, int]:
    """Bytes of a real bank's memory storage (the shard and its spare column), and how much
    the process's resident memory grew while building it (the labels are written: -1)."""
    before = resident_bytes()
    bank = SeCuCenterBank(
        dim=4, num_clusters=[2] * heads, num_instances=num_instances, memory=memory
    )
    storage = bank._memory._storage
    grown = resident_bytes() - before
    return storage.numel() * storage.element_size(), grown


def _measure_rank(rank: int, world: int, port: int, sizes: list[int], heads: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    found = {n: built_bank_bytes(n, heads, "sharded") for n in sizes}
    Path(out, f"rank{rank}.json").write_text(json.dumps(found))
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def measure_sharded(world: int, sizes: list[int], heads: int) -> dict[int, list[list[int]]]:
    """Each of ``world`` real gloo processes builds the bank and reports its shard's bytes
    (and resident memory growth)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_measure_rank, args=(world, port, sizes, heads, out), nprocs=world)
        reports = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    return {n: [report[str(n)] for report in reports] for n in sizes}


def table(args: argparse.Namespace) -> dict:
    heads = len(args.heads)
    total_k = sum(args.heads)
    rows = []
    measured_replicated = {
        n: built_bank_bytes(n, heads, "replicated")
        for n in args.sizes
        if args.measure and n <= args.fits
    }
    measured_sharded: dict[int, dict[int, list[int]]] = {}
    if args.measure:
        for world in args.measure_worlds:
            sizes = [n for n in args.sizes if math.ceil(n / world) * world <= args.fits]
            measured_sharded[world] = measure_sharded(world, sizes, heads) if sizes else {}
    for num_instances in args.sizes:
        for world in args.worlds:
            replicated = memory_bytes(num_instances, heads, world, sharded=False)
            sharded = memory_bytes(num_instances, heads, world, sharded=True)
            shard_sizes = measured_sharded.get(world, {}).get(num_instances)
            if shard_sizes is not None:
                assert shard_sizes[0][0] == sharded, (shard_sizes[0], sharded)
                assert sum(s[0] for s in shard_sizes) == 2 * heads * (num_instances + world)
            if num_instances in measured_replicated:
                assert measured_replicated[num_instances][0] == replicated
            comm = communication_bytes(heads, total_k, args.dim, args.batch, world)
            rows.append(
                {
                    "num_instances": num_instances,
                    "world_size": world,
                    "replicated_bytes": replicated,
                    "sharded_bytes": sharded,
                    "replicated_measured": num_instances in measured_replicated,
                    "sharded_measured": shard_sizes is not None,
                    "replicated_resident_growth": measured_replicated.get(num_instances, [0, None])[
                        1
                    ],
                    "sharded_resident_growth_rank0": shard_sizes[0][1] if shard_sizes else None,
                    "other_state_bytes": other_state_bytes(args.heads, args.dim),
                    "communication": comm,
                    "replicated_step_bytes": sum(
                        v for k, v in comm.items() if k != "sharded_fetch"
                    ),
                    "sharded_step_bytes": sum(comm.values()),
                }
            )
    return {"heads": args.heads, "dim": args.dim, "batch_per_rank": args.batch, "rows": rows}


def human(value: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


def print_table(results: dict) -> None:
    print(
        f"\n## Assignment memory per rank ({len(results['heads'])} heads, int16), and "
        f"communication per step and rank (batch {results['batch_per_rank']} per rank)\n"
    )
    print(
        "| N | ranks | replicated / rank | sharded / rank | step comm, replicated | "
        "step comm, sharded | of which center gradient |"
    )
    print("|---|---|---|---|---|---|---|")
    for row in results["rows"]:
        mark = lambda built: " (built)" if built else ""
        print(
            f"| {row['num_instances']:,} | {row['world_size']} | "
            f"{human(row['replicated_bytes'])}{mark(row['replicated_measured'])} | "
            f"{human(row['sharded_bytes'])}{mark(row['sharded_measured'])} | "
            f"{human(row['replicated_step_bytes'])} | {human(row['sharded_step_bytes'])} | "
            f"{human(row['communication']['center_gradient'])} |"
        )
    other = results["rows"][0]["other_state_bytes"]
    print(f"\nCenters, targets, counts and duals: {human(other)} on every rank either way.")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--measure", action="store_true", help="build real banks where they fit")
    parser.add_argument(
        "--fits",
        type=float,
        default=2.5e8,
        help="largest N x ranks measured (2 bytes x 10 heads each)",
    )
    parser.add_argument("--smoke", action="store_true", help="small sizes, 2 processes")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    args.heads, args.dim, args.batch = IMAGENET_HEADS, DIM, BATCH_PER_RANK
    args.sizes, args.worlds, args.measure_worlds = SIZES, WORLDS, [8]
    if args.smoke:
        args.sizes, args.worlds, args.measure_worlds = [1001, 50_000], [2, 8], [2]
        args.measure, args.fits = True, 1e6
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = start_record()  # at the start: the load before the run
    results.update(table(args))
    print_table(results)
    if args.json:
        write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
