"""Train SeCu with Accelerate on any data set, one process or many.

    accelerate launch recipes/train.py                       # the CPU demo: MNIST-5k
    accelerate launch recipes/train.py --preset cifar10 --data uoft-cs/cifar10
    accelerate launch recipes/train.py --preset stl10 --data /data/stl10 --backbone secu_resnet34_stl
    accelerate launch --mixed_precision bf16 --multi_gpu --num_processes 8 recipes/train.py ...

This script is the training loop, top to bottom: data, network, center bank and loss,
optimizer, ``accelerator.prepare``, resume, the epochs (epoch 0 only fills the assignment
memory: its encoder lr is 0), then the export: evaluation, a Hub-format model directory, plots.
It ends with one JSON line: {"accuracy", "nmi", "ari", "epochs", "seconds", "output_dir", ...}.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from secu_plugin import SeCuCenterBank, SeCuLoss, SeCuModel
from secu_plugin.data import ImageDataset, TwoViewDataset, byol_views, digit_views
from secu_plugin.models import SeCuNetwork
from secu_plugin.models.pretrained import describe_weights, load_pretrained_backbone
from secu_plugin.train.auto import describe_settings
from secu_plugin.train.checkpoint import TrainProgress, resume_checkpoint, save_checkpoint
from secu_plugin.train.evaluation import evaluate_predictions, predict_dataset, project_dataset
from secu_plugin.train.optim import build_optimizer, center_lr, encoder_lr
from secu_plugin.train.presets import PRESET_CHOICES, get_preset, parse_overrides
from secu_plugin.train.report import (
    EpochReport,
    StepLogger,
    dataset_names,
    epoch_metrics,
    result_metrics,
    summary_line,
    tracker_config,
)
from secu_plugin.train.runtime import (
    check_launch,
    ranks_hold_identical_state,
    run_or_exit,
    use_cpu_cores,
)
from secu_plugin.viz import save_cluster_montage, save_cluster_size_plot


def get_args_parser(
    default_preset: str = "mnist5k", data_preset: str = "auto"
) -> argparse.ArgumentParser:
    """``default_preset`` without ``--data``; ``data_preset`` with ``--data`` and no ``--preset``."""
    parser = argparse.ArgumentParser(description="Train SeCu with Accelerate.")
    parser.set_defaults(default_preset=default_preset, data_preset=data_preset)
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        help=f"default: {data_preset} with --data (auto: settings from the data), "
        f"else {default_preset}",
    )
    parser.add_argument("--data", help="mnist5k, an image folder, parquet files or a Hub data set")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<preset>")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument(
        "--pretrained", action="store_true", help="fine-tune: start from timm's pretrained weights"
    )
    parser.add_argument("--pretrained_file", help="fine-tune: start from this local weights file")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also push the model to the Hub")
    parser.add_argument("--max_steps", type=int, help="stop after this many steps (checkpointed)")
    parser.add_argument("--checkpoint_every", type=int, default=0, help="also every N steps")
    parser.add_argument("--keep_checkpoints", type=int, default=2, help="complete ones kept")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    parser.add_argument(
        "--report_to",
        default="tensorboard",
        help="Accelerate trackers: tensorboard (default, in output_dir/logs), wandb, mlflow, "
        "..., all, or none",
    )
    parser.add_argument("--log_every", type=int, default=20, help="steps between tracker writes")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="override preset settings, e.g. --set lr=0.1 num_clusters=[10,20]",
    )
    return parser


class TwoViewNetwork(nn.Module):
    """Both views through the network in one ``forward``, so DDP sees one forward per step.

    Each view is its own batch for BatchNorm, as in the paper's code.
    """

    def __init__(self, network: SeCuNetwork) -> None:
        super().__init__()
        self.network = network

    def forward(self, view0: torch.Tensor, view1: torch.Tensor):
        z0, z1 = self.network(view0), self.network(view1)
        if self.network.predictor is None:
            return z0, z1, None, None
        return z0, z1, self.network.predictor(z0), self.network.predictor(z1)


def main(args: argparse.Namespace) -> dict:
    overrides = parse_overrides(args.set)
    for name in ("data", "epochs", "backbone"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    # With --data and no --preset, the settings are derived from the data (the auto preset).
    preset_name = args.preset or (args.data_preset if args.data else args.default_preset)
    preset = get_preset(preset_name, **overrides)
    output_dir = Path(args.output_dir or f"outputs/{preset.name}")
    checkpoint_dir = output_dir / "checkpoints"
    started = time.time()

    # Mixed precision, CPU/GPU and processes come from `accelerate launch` (or its config).
    # The seedable sampler makes each epoch's shuffling a function of (seed, epoch), so a
    # resumed run visits the same batches as an uninterrupted one.
    accelerator = Accelerator(
        # Whole global batches split over the processes, the last partial one dropped: 1 and
        # N processes then train on exactly the same batches (no padding rows trained twice).
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=output_dir / "logs",
    )
    check_launch(accelerator)
    use_cpu_cores(accelerator)
    set_seed(args.seed)
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log = accelerator.print
    if preset.resolved_from is not None:  # what the auto preset chose, and from what
        log(describe_settings(preset))

    # ---- Data: two views of each image and its index (labels only for evaluation).
    train_images = ImageDataset.from_source(
        preset.data, split="train", skip_corrupt=args.skip_corrupt
    )
    if train_images.skipped:
        log(f"skipped {len(train_images.skipped)} unreadable images")
    preset.check_data_size(len(train_images), accelerator.num_processes)
    network = SeCuNetwork(**preset.network_arguments())
    pretrained = None
    if args.pretrained or args.pretrained_file:  # fine-tuning: timm loads (and adapts) them
        load_pretrained_backbone(network.backbone, preset.backbone, args.pretrained_file)
        pretrained = describe_weights(preset.backbone, args.pretrained_file)
        log(f"backbone weights: {pretrained['source']}")
    data_config = network.data_config  # input size and normalization of the backbone
    make_views = digit_views if preset.views == "digits" else byol_views
    views = make_views(
        data_config["input_size"][-1],
        min_scale=preset.min_scale,
        mean=data_config["mean"],
        std=data_config["std"],
        **(preset.view_kwargs or {}),
    )
    # Seeded views: image i in epoch e gets the same augmentations in every run (exact resume).
    pairs = TwoViewDataset(train_images, views, seed=args.seed)
    loader = DataLoader(
        pairs,
        batch_size=preset.batch_size,  # the global batch: Accelerate splits it
        shuffle=True,
        drop_last=True,
        num_workers=preset.num_workers,
        persistent_workers=preset.num_workers > 0,
        # Its own generator: starting an epoch draws nothing from the global RNG, which
        # drives the augmentations, so a resumed epoch draws the same views.
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ---- Network, center bank (the only owner of the centers while training) and loss.
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    bank = SeCuCenterBank(num_instances=len(train_images), **preset.bank_arguments())
    bank = bank.to(accelerator.device)
    criterion = SeCuLoss(bank, **preset.loss_arguments())
    optimizer = build_optimizer(
        preset.optimizer,
        network,
        bank.centers,
        weight_decay=preset.weight_decay,
        momentum=preset.momentum,
        # Its own lr groups only when it learns at another rate (the golden runs' groups).
        backbone=network.backbone if preset.backbone_lr_factor != 1 else None,
    )
    two_views, optimizer, loader = accelerator.prepare(TwoViewNetwork(network), optimizer, loader)
    progress = TrainProgress()
    report = EpochReport(train_images.labels)
    accelerator.register_for_checkpointing(bank, progress, report)

    if args.resume:  # the newest checkpoint whose manifest verifies
        state = resume_checkpoint(checkpoint_dir, log)
        accelerator.load_state(str(state))
        log(f"resumed from {state} (epoch {progress.epoch}, step {progress.step_in_epoch})")

    # ---- Training.
    accelerator.init_trackers(preset.name, config=tracker_config(preset.to_dict()))
    step_logger = StepLogger(accelerator, every=args.log_every)
    steps_per_epoch = len(loader)
    stopped = False
    while progress.epoch < preset.epochs and not stopped:
        epoch = progress.epoch
        loader.set_epoch(epoch)
        pairs.set_epoch(epoch)
        if epoch == 0 and progress.step_in_epoch == 0 and preset.kmeans_warm_start:
            # Start from the clusters of the (pretrained) network's features.
            projections = project_dataset(accelerator, network, train_images, preset.batch_size)
            bank.warm_start(projections, seed=args.seed)
            log("centers and memory warm-started by k-means on the initial projections")
        if progress.step_in_epoch == 0:  # a mid-epoch resume keeps the restored targets
            bank.start_epoch()  # freezes the centers as the targets of this epoch
            report.start(bank)
        batches = accelerator.skip_first_batches(loader, progress.step_in_epoch)
        two_views.train()
        epoch_started = time.time()
        bar = tqdm(
            total=steps_per_epoch,
            initial=progress.step_in_epoch,
            desc=f"epoch {epoch}",
            file=sys.stderr,
            leave=False,
            dynamic_ncols=True,
            mininterval=1.0,
            disable=args.no_progress or not accelerator.is_main_process,
        )
        for view0, view1, indices in batches:
            step = progress.step_in_epoch
            lrs = {
                "encoder": encoder_lr(
                    preset.lr, epoch, step, steps_per_epoch, preset.epochs, preset.warmup_epochs
                ),
                "centers": center_lr(
                    preset.center_lr, epoch, step, steps_per_epoch, preset.epochs,
                    ramp=preset.center_lr_ramp,
                ),
            }  # fmt: skip
            if preset.backbone_lr_factor != 1:
                lrs["backbone"] = lrs["encoder"] * preset.backbone_lr_factor
            for group in optimizer.param_groups:
                group["lr"] = lrs[group["role"]]
            # With accumulation the optimizer steps every N batches; the bank still assigns
            # and records every batch, from the state the previous batch left.
            with accelerator.accumulate(two_views), accelerator.autocast():
                z0, z1, p0, p1 = two_views(view0, view1)
                loss = criterion(z0, z1, indices, p0, p1)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            progress.record(loss)  # no read-back: on a GPU it would stall every step
            step_logger.log(progress.global_step, loss, lrs)
            bar.update(1)

            at_limit = args.max_steps is not None and progress.global_step >= args.max_steps
            if at_limit or (
                args.checkpoint_every and progress.global_step % args.checkpoint_every == 0
            ):
                save_checkpoint(accelerator, checkpoint_dir, progress, args.keep_checkpoints)
            if at_limit:
                stopped = True
                break
        bar.close()
        step_logger.flush()
        if stopped:
            log(f"stopped after {progress.global_step} steps (--max_steps)")
            break
        stats = report.summarize(bank)
        log(
            EpochReport.line(epoch, progress.epoch_mean_loss(), stats, preset.num_clusters)
            + f" | {time.time() - epoch_started:.1f}s"
        )
        accelerator.log(
            epoch_metrics(stats, preset.num_clusters, progress.epoch_mean_loss()),
            step=progress.global_step,
        )
        bank.end_epoch()
        progress.next_epoch()
        save_checkpoint(accelerator, checkpoint_dir, progress, args.keep_checkpoints)

    summary = {
        "epochs": progress.epoch,
        "steps": progress.global_step,
        "num_processes": accelerator.num_processes,
        "ranks_in_sync": ranks_hold_identical_state(bank),
    }

    # ---- Export: the model gets the bank's centers once, then evaluation and pictures.
    if not stopped:
        data_name, hub_id = dataset_names(preset.data)
        training = {
            "preset": preset.to_dict(),
            "pretrained_backbone": pretrained,
            "seed": args.seed,
            "dataset": data_name,
            "dataset_id": hub_id,
            "command": shlex.join(["accelerate", "launch", *sys.argv]),
        }
        model = SeCuModel.from_network(
            accelerator.unwrap_model(two_views).network,
            bank.centers,
            temperature=preset.temperature_c,
            training=training,
        )
        eval_images = ImageDataset.from_source(
            preset.data, split="test", skip_corrupt=args.skip_corrupt
        )
        predictions, labels = predict_dataset(
            accelerator, model, eval_images, batch_size=max(64, preset.batch_size)
        )
        results = evaluate_predictions(
            predictions,
            labels,
            preset.num_clusters,
            data_name,
            split=getattr(eval_images, "split", "test"),
            memory=None if bank.memory_sharded else bank.memory.long().cpu().numpy(),
            memory_labels=train_images.labels,
            dataset_id=hub_id,
        )
        if not results:
            log("the data has no class labels: no ACC/NMI/ARI reported")
        summary.update(result_metrics(results))
        if accelerator.is_main_process:
            model.set_results(results or None)
            model.save_pretrained(output_dir / "model", repo_id=args.push_to_hub)
            save_cluster_size_plot(
                [s.cpu().numpy() for s in bank.cluster_sizes()],
                [f"K={k}" for k in preset.num_clusters],
                output_dir / "cluster_sizes.png",
            )
            head = results["evaluations"][0]["head"] if results else 0
            sample = np.random.default_rng(0).permutation(len(eval_images))[:2000]
            save_cluster_montage(
                [eval_images[i][0] for i in sample],
                predictions[head][sample],
                output_dir / "montage.png",
            )
            (output_dir / "results.json").write_text(json.dumps(results, indent=2))
            if args.push_to_hub:
                model.push_to_hub(args.push_to_hub)
            summary["model_dir"] = str(output_dir / "model")
    summary["seconds"] = round(time.time() - started, 1)
    summary["output_dir"] = str(output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def run(default_preset: str = "mnist5k", data_preset: str = "auto") -> None:
    """Parses the command line, trains, prints the final JSON line.

    A user mistake (a path, data, a setting) or a failed save ends in one ``error:`` line and
    exit code 2; ``--debug`` or ``SECU_DEBUG=1`` shows the traceback instead.
    """
    summary = run_or_exit(main, get_args_parser(default_preset, data_preset).parse_args())
    if PartialState().is_main_process:  # the process group is gone; Accelerate keeps the rank
        print(summary_line(summary), flush=True)


if __name__ == "__main__":
    run()
