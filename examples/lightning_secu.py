"""SeCu with PyTorch Lightning, in the layout of lightly's ImageNet benchmarks.

A LightningModule with a backbone, a projection head and the SeCu criterion, as lightly's
``benchmarks/imagenet/resnet50/swav.py`` has for SwaV, here on the 5000 MNIST digits bundled with
secu_plugin so that it runs anywhere. What SeCu needs beyond a lightly loss:

- the dataset yields each image's index: SeCu keeps a label per training instance. lightly's
  ``LightlyDataset`` with a ``MultiViewTransform``, wrapped by ``with_indices``, yields
  ``(views, target, fname, index)`` (the target stays for lightly's kNN/online classifiers);
- the center bank (``SeCuCenterBank``) is a submodule: its centers are trained, and checkpoints
  carry its state (assignment memory, counts, duals, epoch);
- the criterion receives ``epoch=self.current_epoch`` and switches epochs itself (no hooks);
  in ``validation_step`` (eval mode, inference mode) it computes a loss and writes nothing;
- the centers have their own parameter group at a constant learning rate: lightly's cosine
  warm-up schedule applies to the encoder's group only (one lr lambda per group);
- a sharded memory (``--memory sharded``, or ``auto`` above 1 GiB) is checkpointed per rank:
  Lightning writes the checkpoint from rank 0 only, so ``on_save_checkpoint`` (which runs on
  every rank) writes each rank's shard to its own file and leaves the labels out of the
  checkpoint; ``on_load_checkpoint`` reads every shard back, re-sharded for any number of
  processes (``--checkpoint_dir DIR``, then ``--resume DIR/last.ckpt``).

Two processes on a CPU (DDP over gloo)::

    python examples/lightning_secu.py --devices 2 --max_steps 20

One GPU: ``--accelerator gpu --devices 1``; more: ``--devices N`` (DDP).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from lightly.data import LightlyDataset
from lightly.models.modules import BYOLProjectionHead
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.utils.scheduler import cosine_warmup_schedule
from pytorch_lightning import LightningModule, Trainer, seed_everything
from pytorch_lightning.callbacks import ModelCheckpoint
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T

from secu_plugin import SeCuCenterBank, SeCuLoss
from secu_plugin.data import ImageDataset, with_indices
from secu_plugin.train.memory_shards import shard_file

NUM_TRAIN = 4000  # images 0..3999 train; 4000..4255 validate (their memory stays empty)
NUM_VAL = 256


def small_backbone() -> nn.Module:
    """A three-layer CNN for 28x28 digits (the benchmarks use a ResNet-50)."""

    def block(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32, 1), *block(32, 64, 2), *block(64, 128, 2), nn.AdaptiveAvgPool2d(1)
    )


class SeCu(LightningModule):
    def __init__(
        self,
        batch_size_per_device: int,
        num_instances: int,
        num_clusters: tuple[int, ...] = (10, 20, 30),
        lr: float = 0.05,
        center_lr: float = 1.0,
        memory: str = "auto",
        shard_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.batch_size_per_device = batch_size_per_device
        self.backbone = small_backbone()
        self.projection_head = BYOLProjectionHead(input_dim=128, hidden_dim=256, output_dim=32)
        self.bank = SeCuCenterBank(
            dim=32, num_clusters=num_clusters, num_instances=num_instances, memory=memory
        )
        # The bank is a submodule, so DDP already averages the centers' gradient.
        self.criterion = SeCuLoss(
            self.bank, temperature_x=0.2, temperature_c=0.2, sync_center_gradients=False
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(x).flatten(start_dim=1)

    def project(self, x: Tensor) -> Tensor:
        return self.projection_head(self.forward(x))

    def training_step(self, batch: tuple, batch_idx: int) -> Tensor:
        views, _targets, _fnames, indices = batch
        z0, z1 = (self.project(view) for view in views)
        loss = self.criterion(z0, z1, indices, epoch=self.current_epoch)
        self.log("train_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(indices))
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> Tensor:
        views, _targets, _fnames, indices = batch
        z0, z1 = (self.project(view) for view in views)
        # Eval mode and inference mode: the loss reads the bank and records nothing.
        loss = self.criterion(z0, z1, indices)
        self.log("val_loss", loss, prog_bar=True, sync_dist=True, batch_size=len(indices))
        return loss

    def configure_optimizers(self):
        encoder = [*self.backbone.parameters(), *self.projection_head.parameters()]
        optimizer = torch.optim.SGD(
            [
                {"name": "encoder", "params": encoder},
                # SeCu trains the centers at a constant lr, without weight decay.
                {
                    "name": "centers",
                    "params": self.bank.parameters(),
                    "lr": self.hparams.center_lr,
                    "weight_decay": 0.0,
                },
            ],
            lr=self.hparams.lr * self.batch_size_per_device * self.trainer.world_size / 256,
            momentum=0.9,
            weight_decay=1e-4,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = min(total // 10, 500)

        def encoder_scale(step: int) -> float:  # lightly's CosineWarmupScheduler, one group
            return cosine_warmup_schedule(
                step=min(step, total),
                max_steps=total,
                start_value=1.0,
                end_value=0.001,
                warmup_steps=warmup,
                warmup_start_value=0.0,
            )

        scheduler = LambdaLR(optimizer, lr_lambda=[encoder_scale, lambda step: 1.0])
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Every rank writes its shard of a sharded memory; the checkpoint names the files."""
        if not self.bank.memory_sharded:
            return  # replicated: rank 0's state_dict holds every label
        folder = Path(self.hparams.shard_dir) / f"step-{checkpoint['global_step']:08d}"
        rank, world = self.global_rank, self.trainer.world_size
        path = shard_file(folder, rank, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        labels = self.bank.memory.detach().cpu().contiguous()
        save_file({"memory": labels, "memory_shard": torch.tensor([rank, world])}, str(path))
        for key in ("bank.memory", "bank.memory_shard"):
            del checkpoint["state_dict"][key]
        checkpoint["memory_shards"] = {"folder": str(folder), "world_size": world}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Every rank keeps its instances' labels from all the shard files (any old world
        size), one file at a time, and puts its own shard back into the state to load."""
        shards = checkpoint.pop("memory_shards", None)
        if shards is None:
            return
        folder, world = Path(shards["folder"]), int(shards["world_size"])
        files = (load_file(str(shard_file(folder, r, world))) for r in range(world))
        self.bank.load_memory_shards((f["memory"], f["memory_shard"]) for f in files)
        for key, value in self.bank.state_dict().items():
            if key in ("memory", "memory_shard"):
                checkpoint["state_dict"][f"bank.{key}"] = value

    def on_train_end(self) -> None:
        if self.hparams.get("bank_out"):
            out = Path(self.hparams.bank_out)
            out.mkdir(parents=True, exist_ok=True)
            torch.save(self.bank.state_dict(), out / f"rank{self.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=20)
    parser.add_argument("--batch_size_per_device", type=int, default=32)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--val_check_interval", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank_out", default=None, help="each rank saves its bank here")
    parser.add_argument("--memory", default="auto", choices=["auto", "replicated", "sharded"])
    parser.add_argument("--checkpoint_dir", default=None, help="save last.ckpt (and shards) here")
    parser.add_argument("--resume", default=None, help="a checkpoint to continue from")
    args = parser.parse_args()
    if args.accelerator == "cpu":
        torch.set_num_threads(1)  # one core per process
    seed_everything(args.seed, workers=True)

    images = ImageDataset.mnist5k()
    transform = T.Compose(
        [T.RandomResizedCrop(28, scale=(0.6, 1.0)), T.ToTensor(), T.Normalize((0.1307,), (0.3081,))]
    )
    # Index the whole set once, then take subsets: every image keeps its one memory index.
    dataset = with_indices(
        LightlyDataset.from_torch_dataset(images, MultiViewTransform([transform, transform]))
    )
    train = Subset(dataset, range(NUM_TRAIN))
    val = Subset(dataset, range(NUM_TRAIN, NUM_TRAIN + NUM_VAL))
    loader = {"batch_size": args.batch_size_per_device, "num_workers": args.num_workers}
    shard_dir = str(Path(args.checkpoint_dir) / "memory_shards") if args.checkpoint_dir else None
    model = SeCu(
        batch_size_per_device=args.batch_size_per_device,
        num_instances=len(images),
        memory=args.memory,
        shard_dir=shard_dir,
    )
    model.hparams.bank_out = args.bank_out
    trainer = Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.max_steps,
        val_check_interval=min(args.val_check_interval, args.max_steps),
        check_val_every_n_epoch=None,
        limit_val_batches=2,
        logger=False,
        enable_checkpointing=args.checkpoint_dir is not None,
        callbacks=[
            ModelCheckpoint(
                args.checkpoint_dir,
                save_last=True,
                save_top_k=0,
                every_n_train_steps=args.val_check_interval,
            )
        ]
        if args.checkpoint_dir
        else None,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        train_dataloaders=DataLoader(train, shuffle=True, drop_last=True, **loader),
        val_dataloaders=DataLoader(val, **loader),
        ckpt_path=args.resume,
    )


if __name__ == "__main__":
    main()
