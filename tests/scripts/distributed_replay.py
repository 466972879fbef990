"""Runs under 2 processes (torchrun, or `accelerate launch --multi_gpu` on CPU).

1. Replays every golden trajectory with each rank holding its half of every batch.
2. Trains the entropy constraint for several epochs on a padded DistributedSampler (duplicate
   indices in global batches) and checks that the counts stay the memory's histogram and that
   both ranks hold identical state.
Writes one JSON report per rank into the directory given as first argument.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden_replay import GOLDEN_FILES, replay

from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.core import dist


def main() -> None:
    out_dir = Path(sys.argv[1])
    launcher = sys.argv[2]
    if launcher == "accelerate":
        from accelerate import Accelerator

        Accelerator(cpu=True)  # sets up the gloo process group
    else:
        torch_dist.init_process_group("gloo")
    world, rank = dist.world_size(), dist.rank()
    report = {"world_size": world, "rank": rank, "golden": {}}
    for path in GOLDEN_FILES:
        report["golden"][path.stem] = replay(path, rank=rank, world_size=world)
    report["padded"] = padded_entropy_training(world, rank)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def padded_entropy_training(world: int, rank: int) -> dict:
    num_instances, dim = 37, 8  # 37 is odd: the sampler pads one duplicate index per epoch
    torch.manual_seed(0)  # same features and centers on every rank
    features = torch.randn(num_instances, dim)
    bank = SeCuCenterBank(
        dim=dim, num_clusters=[3, 5], num_instances=num_instances, assigner="entropy", alpha=2.0
    )
    criterion = SeCuLoss(bank)
    optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
    dataset = torch.utils.data.TensorDataset(torch.arange(num_instances))
    sampler = torch.utils.data.distributed.DistributedSampler(
        dataset, num_replicas=world, rank=rank, shuffle=True, seed=3
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, sampler=sampler)
    steps = 0
    for epoch in range(4):
        sampler.set_epoch(epoch)
        bank.start_epoch()
        for (indices,) in loader:
            noise = 0.1 * torch.randn(
                len(indices), dim, generator=torch.Generator().manual_seed(steps)
            )
            z0 = features[indices] + noise
            z1 = features[indices] - noise
            optimizer.zero_grad()
            criterion(z0, z1, indices).backward()
            optimizer.step()
            steps += 1
            for head, counts in enumerate(bank.counts):
                labelled = bank.memory[head][bank.memory[head] >= 0].long()
                histogram = torch.bincount(labelled, minlength=counts.numel())
                assert torch.equal(counts, histogram), f"counts drift at step {steps}"
        bank.end_epoch()
    state = torch.cat(
        [bank.memory.flatten().long(), *bank.counts, *[c.detach().flatten() for c in bank.centers]]
    ).double()
    gathered = [torch.empty_like(state) for _ in range(world)]
    torch_dist.all_gather(gathered, state)
    return {
        "steps": steps,
        "identical": all(torch.equal(g, gathered[0]) for g in gathered),
        "labelled": int((bank.memory >= 0).sum()),
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
