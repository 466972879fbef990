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
import shlex
import sys
import time
from dataclasses import asdict

import torch
from accelerate import PartialState
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from secu_plugin import SeCuCenterBank, SeCuLoss, SeCuModel
from secu_plugin.data import (
    TwoViewDataset,
    byol_views,
    describe_data,
    digit_views,
    shape_views,
)
from secu_plugin.models import SeCuNetwork
from secu_plugin.train.auto import describe_settings, preset_data, resolve_preset
from secu_plugin.train.checkpoint import TrainProgress
from secu_plugin.train.evaluation import predict_dataset, project_dataset
from secu_plugin.train.optim import learning_rates, optimizer_for
from secu_plugin.train.presets import AUTO, PRESET_CHOICES, Preset
from secu_plugin.train.report import EpochReport, StepLogger, summary_line
from secu_plugin.train.runtime import ranks_hold_identical_state, run_or_exit
from secu_plugin.train.scaffold import RecipeRun, command_line_overrides, read_images

FINETUNE_INSTEAD = (
    "to start from pretrained weights, train heads on them with recipes/train_head.py "
    "(--pretrained_file), then fine-tune its model with recipes/finetune.py --model"
)


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
    # Refused with a pointer: fine-tuning has one way (recipes/finetune.py, after train_head.py).
    parser.add_argument("--pretrained", action="store_true", help="refused: see --pretrained_file")
    parser.add_argument("--pretrained_file", help=f"refused: {FINETUNE_INSTEAD}")
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
    if args.pretrained or args.pretrained_file:
        flag = "--pretrained_file" if args.pretrained_file else "--pretrained"
        raise ValueError(f"{flag}: recipes/train.py trains from scratch; {FINETUNE_INSTEAD}")
    # ---- Data, read once: two views of each image and its index (labels for evaluation).
    # checked before the data is read: a misspelt name or value is one error, at once
    overrides = Preset.checked_overrides(
        command_line_overrides(args, ("data", "epochs", "backbone"))
    )
    # With --data and no --preset, the settings are derived from the data (the auto preset).
    preset_name = args.preset or (args.data_preset if args.data else args.default_preset)
    train_images = read_images(preset_data(preset_name, overrides), "train", args)
    description = describe_data(train_images) if preset_name == AUTO else None
    settings = resolve_preset(preset_name, description, **overrides)
    settings = settings.with_batch_size_for(len(train_images))
    run = RecipeRun.start(args, settings, args.gradient_accumulation_steps)
    accelerator, log = run.accelerator, run.log
    if settings.resolved_from is not None:  # what the auto preset chose, and from what
        log(describe_settings(settings))
    if train_images.skipped:
        log(f"skipped {len(train_images.skipped)} unreadable images")
    settings.check_data_size(len(train_images), accelerator.num_processes)
    network = SeCuNetwork(**asdict(settings.network))
    data_config = network.data_config  # input size and normalization of the backbone
    augmentation = settings.augmentation
    make_views = {"digits": digit_views, "shapes": shape_views}.get(augmentation.views, byol_views)
    views = make_views(
        data_config["input_size"][-1],
        min_scale=augmentation.min_scale,
        mean=data_config["mean"],
        std=data_config["std"],
        **(augmentation.view_kwargs or {}),
    )
    # Seeded views: image i in epoch e gets the same augmentations in every run (exact resume).
    pairs = TwoViewDataset(train_images, views, seed=args.seed)
    num_workers = settings.loader.num_workers
    loader = DataLoader(
        pairs,
        batch_size=settings.loader.batch_size,  # the global batch: Accelerate splits it
        shuffle=True,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        # Its own generator: starting an epoch draws nothing from the global RNG, which
        # drives the augmentations, so a resumed epoch draws the same views.
        generator=torch.Generator().manual_seed(args.seed),
    )

    # ---- Network, center bank (the only owner of the centers while training) and loss.
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
    bank = SeCuCenterBank(num_instances=len(train_images), dim=network.dim, **asdict(settings.bank))
    bank = bank.to(accelerator.device)
    criterion = SeCuLoss(bank, **asdict(settings.loss))
    optimizer = optimizer_for(settings.optimization, network, bank.centers, network.backbone)
    # prepare: wraps the model for the processes (DDP), the optimizer, and the loader's batches.
    two_views, optimizer, loader = accelerator.prepare(TwoViewNetwork(network), optimizer, loader)
    progress = TrainProgress()
    report = EpochReport(train_images.labels)
    # register_for_checkpointing: save_state/load_state also cover the bank and the counters
    # (run.checkpointed: every rank saves its shard of a sharded memory).
    bank_state, report_state = run.checkpointed(bank, report)
    accelerator.register_for_checkpointing(bank_state, progress, report_state)
    run.resume(progress)  # with --resume: the newest checkpoint that verifies

    # ---- Training.
    run.init_trackers()
    step_logger = StepLogger(accelerator, every=args.log_every)
    steps_per_epoch = len(loader)
    stopped = False
    schedule = settings.schedule
    while progress.epoch < schedule.epochs and not stopped:
        epoch = progress.epoch
        loader.set_epoch(epoch)
        pairs.set_epoch(epoch)
        if epoch == 0 and progress.step_in_epoch == 0 and settings.kmeans_warm_start:
            # Start from the clusters of the (pretrained) network's features.
            batch_size = settings.loader.batch_size
            projections = project_dataset(accelerator, network, train_images, batch_size)
            bank.warm_start(projections, seed=args.seed)
            log("centers and memory warm-started by k-means on the initial projections")
        if progress.step_in_epoch == 0:  # a mid-epoch resume keeps the restored targets
            bank.start_epoch()  # freezes the centers as the targets of this epoch
            report.start(bank)
        # skip_first_batches: a resumed epoch continues after the batches it already trained.
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
            lrs = learning_rates(settings.optimization, schedule, epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lrs[group["role"]]
            # accumulate: the optimizer steps every N batches (--gradient_accumulation_steps);
            # the bank still assigns and records every batch, from the state the previous
            # batch left.
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
                run.save_checkpoint(progress)
            if at_limit:
                stopped = True
                break
        bar.close()
        step_logger.flush()
        if stopped:
            log(f"stopped after {progress.global_step} steps (--max_steps)")
            break
        run.end_epoch(bank, report, progress, epoch_started)

    summary = {
        "epochs": progress.epoch,
        "steps": progress.global_step,
        "num_processes": accelerator.num_processes,
        # what every rank must hold alike: a sharded memory's shards differ by design
        "ranks_in_sync": ranks_hold_identical_state(bank.shared_state()),
    }

    # ---- Export: the model gets the bank's centers once, then evaluation and pictures.
    if not stopped:
        # unwrap_model: the trained network without Accelerate's wrappers (DDP, compile).
        network = accelerator.unwrap_model(two_views).network
        record = run.training_record()
        model = SeCuModel.from_network(
            network, bank.centers, temperature=criterion.temperature_c, training=record
        )
        eval_images = run.evaluation_images(train_images)
        batch_size = max(64, settings.loader.batch_size)
        predictions, labels = predict_dataset(accelerator, model, eval_images, batch_size)
        projections = project_dataset(accelerator, model, eval_images, batch_size)  # the report
        # what to run when the clusters are no better than k-means on the pixels
        frozen_path = f"accelerate launch recipes/train_head.py --data {shlex.quote(settings.data)}"
        next_step = f"SeCu heads on a pretrained backbone's features: {frozen_path}"
        found = run.export(
            model,
            bank,
            train_images,
            eval_images,
            predictions,
            labels,
            projections,
            next_step=next_step,
        )
        summary.update(found)
        # and a run that has not settled: what to try instead (one advice: both, or either)
        advice = [a for a in (report.advice(), found.get("advice")) if a]
        if advice:
            summary["advice"] = "; ".join(advice)
    return run.finish(summary)


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
