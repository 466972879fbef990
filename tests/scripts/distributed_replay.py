"""Runs under 2 or 4 processes (torchrun, or `accelerate launch --multi_gpu` on CPU).

Usage: ``distributed_replay.py OUT_DIR LAUNCHER [MODE]``. Modes:

- ``all`` (default, 2 processes):
  1. replays every golden trajectory with each rank holding its share of every batch, with a
     replicated and with a sharded memory, and inside a DistributedDataParallel module that
     holds the bank (buffers broadcast as by default), with and without the loss's own
     averaging of the center gradients;
  2. trains the entropy constraint for several epochs on a padded DistributedSampler
     (duplicate indices in global batches) with both memories and checks that the counts stay
     the memory's histogram and that the ranks hold identical state;
  3. replays the first steps of the re-sharding trajectories (sharded memory) and saves each
     rank's bank state_dict into OUT_DIR/reshard_<file>_2/.
- ``reshard`` (2 processes): step 3 alone.
- ``four`` (4 processes): the sharded golden replays of FOUR_PROCESS_FILES, and the next steps
  of the re-sharding trajectories, from the 2-process shards (re-sharded on load), saving
  OUT_DIR/reshard_<file>_4/.

Writes one JSON report per rank into OUT_DIR.
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from golden_replay import GOLDEN_DIR, GOLDEN_FILES, replay

from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.core import dist

FOUR_PROCESS_FILES = [GOLDEN_DIR / "size_paper_defaults.npz", GOLDEN_DIR / "entropy_alpha2.npz"]
# (file, steps on 2 processes, steps on 4 processes); the rest runs on 1 (test_distributed.py).
RESHARD = [
    (GOLDEN_DIR / "entropy_alpha2.npz", 7, 13),
    (GOLDEN_DIR / "size_paper_defaults.npz", 5, 9),
]


class TermsModule(nn.Module):
    """A model that holds the bank as a submodule and computes SeCu's terms in its forward, as
    a LightningModule's training_step does under DDP."""

    def __init__(self, criterion: SeCuLoss) -> None:
        super().__init__()
        self.bank = criterion.bank
        self.criterion = criterion

    def forward(self, **inputs):
        return self.criterion.terms(**inputs)


def ddp_wrap(criterion: SeCuLoss):
    # Default buffer broadcasting (at construction and before every forward): fails with
    # "Invalid scalar type" if the int16 memory were a buffer.
    return nn.parallel.DistributedDataParallel(TermsModule(criterion))


def main() -> None:
    out_dir = Path(sys.argv[1])
    launcher = sys.argv[2]
    mode = sys.argv[3] if len(sys.argv) > 3 else "all"
    if launcher == "accelerate":
        from accelerate import Accelerator

        Accelerator(cpu=True)  # sets up the gloo process group
    else:
        torch_dist.init_process_group("gloo")
    world, rank = dist.world_size(), dist.rank()
    report = {"world_size": world, "rank": rank, "golden": {}}
    if mode == "all":
        for path in GOLDEN_FILES:
            checks = {
                "replicated": replay(path, rank=rank, world_size=world, memory="replicated"),
                "sharded": replay(path, rank=rank, world_size=world, memory="sharded"),
                "ddp": replay(path, rank=rank, world_size=world, wrap=ddp_wrap),
                "ddp_alone": replay(
                    path,
                    rank=rank,
                    world_size=world,
                    wrap=ddp_wrap,
                    loss_options={"sync_center_gradients": False},
                    epochs_by_argument=True,
                    memory="sharded",
                ),
            }
            report["golden"][path.stem] = checks
        report["padded"] = {
            memory: padded_entropy_training(world, rank, memory)
            for memory in ("replicated", "sharded")
        }
        report["reshard"] = reshard_phase(out_dir, world, rank, previous=None)
        report["deferred"] = {
            memory: deferred_bad_step(rank, memory) for memory in ("replicated", "sharded")
        }
    elif mode == "reshard":
        report["reshard"] = reshard_phase(out_dir, world, rank, previous=None)
    else:
        for path in FOUR_PROCESS_FILES:
            report["golden"][path.stem] = {
                "sharded": replay(path, rank=rank, world_size=world, memory="sharded")
            }
        report["reshard"] = reshard_phase(out_dir, world, rank, previous=2)
    (out_dir / f"rank{rank}.json").write_text(json.dumps(report))
    torch_dist.barrier()
    torch_dist.destroy_process_group()


def reshard_phase(out_dir: Path, world: int, rank: int, previous: int | None) -> dict:
    """Replays the next segment of each re-sharding trajectory on this world size."""
    steps = {}
    for path, on_two, on_four in RESHARD:
        first, stop = (0, on_two) if previous is None else (on_two, on_four)
        target = out_dir / f"reshard_{path.stem}_{world}"
        target.mkdir(exist_ok=True)

        def load(bank, path=path):
            source = out_dir / f"reshard_{path.stem}_{previous}"
            bank.load_sharded([torch.load(f) for f in sorted(source.glob("rank*.pt"))])

        def save(bank, target=target):
            torch.save(bank.state_dict(), target / f"rank{rank}.pt")

        steps[path.stem] = replay(
            path,
            rank=rank,
            world_size=world,
            memory="sharded",
            steps=(first, stop),
            load=load if previous is not None else None,
            save=save,
            epochs_by_argument=True,
        )
    return steps


def deferred_bad_step(rank: int, memory: str) -> dict:
    """Rank 1 feeds NaN features in step 1, flagged on the device ("deferred" checks): both
    ranks mask the update and both raise at the next call, naming what happened."""
    torch.manual_seed(0)
    bank = SeCuCenterBank(dim=4, num_clusters=[3], num_instances=16, memory=memory)
    criterion = SeCuLoss(bank, check_values="deferred")
    generator = torch.Generator().manual_seed(rank)
    indices = torch.arange(rank, 16, 2)[:4]

    def step(bad: bool = False):
        z0 = torch.randn(4, 4, generator=generator)
        z1 = torch.full((4, 4), float("nan")) if bad else torch.randn(4, 4, generator=generator)
        criterion(z0, z1, indices, epoch=0)

    step()
    before = bank.gather_memory(), bank.stacked_counts.clone(), bank.stacked_duals.clone()
    step(bad=rank == 1)
    after = bank.gather_memory(), bank.stacked_counts.clone(), bank.stacked_duals.clone()
    try:
        step()
        message = None
    except ValueError as error:
        message = str(error)
    return {
        "unchanged": all(torch.equal(a, b) for a, b in zip(before, after)),
        "labelled": int((before[0] >= 0).sum()),
        "message": message,
    }


def padded_entropy_training(world: int, rank: int, memory: str) -> dict:
    num_instances, dim = 37, 8  # 37 is odd: the sampler pads one duplicate index per epoch
    torch.manual_seed(0)  # same features and centers on every rank
    features = torch.randn(num_instances, dim)
    bank = SeCuCenterBank(
        dim=dim,
        num_clusters=[3, 5],
        num_instances=num_instances,
        assigner="entropy",
        alpha=2.0,
        memory=memory,
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
            full = bank.gather_memory()
            for head, counts in enumerate(bank.counts):
                labelled = full[head][full[head] >= 0].long()
                histogram = torch.bincount(labelled, minlength=counts.numel())
                assert torch.equal(counts, histogram), f"counts drift at step {steps}"
        bank.end_epoch()
    full = bank.gather_memory()
    state = torch.cat(
        [full.flatten().long(), *bank.counts, *[c.detach().flatten() for c in bank.centers]]
    ).double()
    gathered = [torch.empty_like(state) for _ in range(world)]
    torch_dist.all_gather(gathered, state)
    return {
        "steps": steps,
        "identical": all(torch.equal(g, gathered[0]) for g in gathered),
        "labelled": int((full >= 0).sum()),
        "state": state.tolist()[: full.numel()],
    }


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
