"""SeCu heads on a cache of ImageNet size: seconds per epoch, peak memory, and the exact k-NN
search over the cache (blocked: never an N x N matrix).

    python benchmarks/frozen_heads_scale.py                  # 1.28 M x 768 float16, K 1000..10000
    python benchmarks/frozen_heads_scale.py --images 100000 --steps 20 --device cuda

The features are synthetic (random, memory-mapped float16 on disk, as a real cache is); only
the time and memory matter. Heads: the frozen preset's projection (2 layers, hidden 2048,
dim 256) and ten heads K = 1000..10000. A full epoch and a full k-NN search take too long on
a CPU: ``--steps`` training steps and ``--knn_blocks`` query blocks are timed and the full
figures extrapolated (printed as such). Prints one JSON line, with every timed step
(``step_seconds``) and the provenance (``benchmarks/provenance.py``); ``--json`` also writes it.
"""

from __future__ import annotations

import argparse
import functools
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import REPO_ROOT, print_line, start_record, timed, write_json
from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.core.neighbors import nearest_neighbors


def load_module(relative: str):
    """A torch-only module of the package, without its package's other imports (lightly,
    PIL, ...: the GPU machine has not all of them)."""
    import importlib.util

    path = REPO_ROOT / "secu_plugin" / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1_281_167)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch_size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--knn_blocks", type=int, default=2)
    parser.add_argument("--knn_block_size", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = start_record()  # at the start: the load before the run
    device = torch.device(args.device)

    # The cache: (N, 1, D) float16 in a memory-mapped .npy, filled block by block.
    folder = Path(tempfile.mkdtemp())
    features = np.lib.format.open_memmap(
        folder / "features.npy", mode="w+", dtype=np.float16, shape=(args.images, 1, args.dim)
    )
    generator = np.random.default_rng(0)
    for start in range(0, args.images, 100_000):
        stop = min(start + 100_000, args.images)
        features[start:stop, 0] = generator.standard_normal((stop - start, args.dim))
    features.flush()
    cache = torch.from_numpy(np.load(folder / "features.npy", mmap_mode="r+"))
    cache_gib = cache.numel() * 2 / 2**30

    # k-NN: time a few blocks of queries against all N keys, extrapolate to N queries.
    queries = cache[: args.knn_blocks * args.knn_block_size, 0]
    # includes normalizing the query rows
    warm = timed(lambda: nearest_neighbors(queries, 20, args.knn_block_size))
    keys_only = time.perf_counter()
    blocks_timed = 0

    def count(_rows: int) -> None:
        nonlocal blocks_timed
        blocks_timed += 1
        if blocks_timed >= args.knn_blocks:
            raise StopIteration

    try:
        nearest_neighbors(cache[:, 0], 20, args.knn_block_size, device=device, progress=count)
    except StopIteration:
        pass
    knn_seconds = time.perf_counter() - keys_only
    per_block = knn_seconds / args.knn_blocks  # (the first includes normalizing all keys)
    knn_full = per_block * (args.images / args.knn_block_size)
    knn_peak = peak_rss_gib()

    # Heads over the cache: time --steps steps (pairs: random "neighbours").
    neighbors = torch.randint(args.images, (args.images, 20))
    pairs = load_module("data/feature_pairs.py").CachedPairs(cache, "neighbors", neighbors, seed=0)
    pairs.set_epoch(1)
    build_projection_head = load_module("models/heads.py").build_projection_head
    head = build_projection_head(args.dim, 2048, 256, 2).to(device)
    num_clusters = list(range(1000, 10001, 1000))
    bank = SeCuCenterBank(
        dim=256,
        num_clusters=num_clusters,
        num_instances=args.images,
        dual_lr=20.0,
        lower_bound_ratio=0.4,
    ).to(device)
    criterion = SeCuLoss(bank, temperature_x=0.1, temperature_c=0.2)
    optimizer = torch.optim.SGD([*head.parameters(), *bank.centers.parameters()], lr=0.1)
    bank.start_epoch()
    order = torch.randperm(args.images)
    times = []

    def train_step(indices: torch.Tensor) -> None:
        x0, x1 = pairs(indices)
        loss = criterion(head(x0.to(device)), head(x1.to(device)), indices.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for step in range(args.steps + 1):
        indices = order[step * args.batch_size : (step + 1) * args.batch_size]
        seconds = timed(functools.partial(train_step, indices), device)
        if step:  # the first step warms up
            times.append(seconds)
    step_seconds = float(np.median(times))
    steps_per_epoch = args.images // args.batch_size
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {args.threads} threads",
        "device": args.device,
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "dim": args.dim,
        "cache_gib": round(cache_gib, 2),
        "heads": "K=1000..10000 (10 heads)",
        "batch_size": args.batch_size,
        "step_seconds_median": round(step_seconds, 3),
        "step_seconds": [round(t, 4) for t in times],
        "epoch_seconds_extrapolated": round(step_seconds * steps_per_epoch, 1),
        "knn_k": 20,
        "knn_block_size": args.knn_block_size,
        "knn_seconds_per_block": round(per_block, 2),
        "knn_seconds_extrapolated": round(knn_full, 1),
        "knn_warmup_seconds": round(warm, 2),
        "knn_peak_rss_gib": round(knn_peak, 2),
        "peak_rss_gib": round(peak_rss_gib(), 2),
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    result["provenance"] = record["provenance"]
    print_line(result)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
