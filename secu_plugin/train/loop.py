"""The SeCu training loop behind ``recipes/train.py`` and ``recipes/train_imagenet.py``.

Reads top to bottom like Accelerate's examples: data, model, bank and loss, optimizer,
``accelerator.prepare``, optional resume, the epoch loop (assignment memory filled in epoch 0,
checkpoint at the end of every epoch), evaluation, and a Hub-format model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from secu_plugin.core import dist
from secu_plugin.core.bank import SeCuCenterBank
from secu_plugin.core.loss import SeCuLoss
from secu_plugin.train.optim import build_optimizer, center_lr, encoder_lr
from secu_plugin.train.presets import Preset

LATEST = "latest"  # file in checkpoints/ naming the last complete state directory


@dataclass
class RunOptions:
    """What a run does besides the preset's hyper-parameters.

    Examples:
        >>> RunOptions(output_dir="outputs/demo", max_steps=100).resume
        False
    """

    output_dir: str = "outputs/secu"
    resume: bool = False
    seed: int = 0
    push_to_hub: str | None = None
    max_steps: int | None = None  # stop (after checkpointing) once this many steps ran in total
    checkpoint_every: int = 0  # also checkpoint every N steps inside an epoch (0: epoch ends only)
    skip_corrupt: bool = False
    command: str = ""
    progress: bool = True


class TrainProgress:
    """Where training stands; saved with the Accelerate state so a resume continues there.

    Examples:
        >>> progress = TrainProgress()
        >>> progress.epoch, progress.global_step = 2, 40
        >>> restored = TrainProgress()
        >>> restored.load_state_dict(progress.state_dict())
        >>> restored.epoch, restored.global_step
        (2, 40)
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.losses: list[float] = []  # rank 0's loss of every step
        self.batches: list[int] = []  # the sum of each batch's indices: which data each step saw
        self._pending: list[torch.Tensor] = []  # (loss, index sum) pairs still on the device

    def record(self, loss: torch.Tensor, indices: torch.Tensor) -> None:
        """Notes a step without waiting for the device (read back in :meth:`flush`)."""
        self._pending.append(torch.stack([loss.detach().double(), indices.sum().double()]))

    def flush(self) -> None:
        """Moves the recorded steps to ``losses`` and ``batches``: one device sync for all."""
        if self._pending:
            for loss, index_sum in torch.stack(self._pending).tolist():
                self.losses.append(loss)
                self.batches.append(int(index_sum))
            self._pending = []

    def state_dict(self) -> dict:
        self.flush()
        return {"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                "global_step": self.global_step, "losses": list(self.losses),
                "batches": list(self.batches)}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = state["epoch"]
        self.step_in_epoch = state["step_in_epoch"]
        self.global_step = state["global_step"]
        self.losses = list(state["losses"])
        self.batches = list(state["batches"])
        self._pending = []


class TwoViewNetwork(torch.nn.Module):
    """Both views through the model in one ``forward``, so DDP sees one forward per step.

    Returns ``(z0, z1, p0, p1)``; ``p0``/``p1`` are None without predictor. Each view is a
    separate batch for BatchNorm, as in the paper's code.

    Examples:
        >>> from secu_plugin.models import SeCuModel
        >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, input_size=28, dim=8,
        ...                   num_clusters=[4], predictor_hidden_dim=16)
        >>> z0, z1, p0, p1 = TwoViewNetwork(model)(torch.randn(2, 1, 28, 28),
        ...                                        torch.randn(2, 1, 28, 28))
        >>> z0.shape, p1.shape
        (torch.Size([2, 8]), torch.Size([2, 8]))
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, view_a: torch.Tensor, view_b: torch.Tensor):
        z0, z1 = self.model(view_a), self.model(view_b)
        if self.model.predictor is None:
            return z0, z1, None, None
        return z0, z1, self.model.predictor(z0), self.model.predictor(z1)


def build_view_transforms(preset: Preset):
    """The two view transforms of a preset: lightly's BYOL pair, or the digits' augmentation.

    Examples:
        >>> from PIL import Image
        >>> from secu_plugin.train.presets import get_preset
        >>> view1, view2 = build_view_transforms(get_preset("mnist5k"))
        >>> view1(Image.new("L", (28, 28))).shape
        torch.Size([1, 28, 28])
    """
    from secu_plugin.data.images import byol_view_transforms, digit_view_transforms

    if preset.views == "digits":
        return digit_view_transforms(preset.input_size, min_scale=preset.min_scale,
                                     mean=preset.mean, std=preset.std)
    if preset.views == "byol":
        return byol_view_transforms(preset.input_size, min_scale=preset.min_scale,
                                    mean=preset.mean, std=preset.std)
    raise ValueError(f"views must be 'byol' or 'digits', got {preset.views!r}")


def build_model(preset: Preset, training: dict | None = None):
    """The SeCuModel a preset trains (centers included; the bank trains its own copy).

    Examples:
        >>> from secu_plugin.train.presets import get_preset
        >>> build_model(get_preset("mnist5k")).num_clusters
        [10, 20, 30, 40, 50]
    """
    from secu_plugin.models import SeCuModel

    return SeCuModel(
        backbone=preset.backbone, backbone_kwargs=preset.backbone_kwargs, stem=preset.stem, in_chans=preset.in_chans, dim=preset.dim,
        projection_layers=preset.projection_layers,
        projection_batchnorm=preset.projection_batchnorm,
        predictor_hidden_dim=preset.predictor_hidden_dim, num_clusters=list(preset.num_clusters),
        temperature=preset.temperature_c, input_size=preset.input_size, mean=list(preset.mean),
        std=list(preset.std), training=training,
    )


def build_accelerator(preset: Preset):
    from accelerate import Accelerator, DataLoaderConfiguration

    # AMP only on CUDA; on CPU the run is float32 (bf16 on CPU is slower there).
    use_cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "") != "1"
    mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if mixed_precision in (None, "no"):
        mixed_precision = preset.mixed_precision if use_cuda else "no"
    return Accelerator(
        cpu=not use_cuda,
        mixed_precision=mixed_precision,
        # Seedable sampler: the shuffling of each epoch is a function of (seed, epoch), so a
        # resumed run visits the same batches as an uninterrupted one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )


def use_cpu_cores(accelerator) -> None:
    """On CPU, gives each local process its share of the cores.

    A bare ``accelerate launch`` on a machine without GPU sets OMP_NUM_THREADS=1, which runs
    the demo at about 60% of the speed of two threads on two cores. ``SECU_NUM_THREADS``
    overrides the choice.
    """
    if accelerator.device.type != "cpu":
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    threads = int(os.environ.get("SECU_NUM_THREADS", "0")) or max(1, (cores or 1) // local_processes)
    torch.set_num_threads(threads)


def save_checkpoint(accelerator, checkpoint_dir: Path, progress: TrainProgress) -> None:
    """Saves the Accelerate state atomically: a crash while saving leaves the previous one.

    The state goes to a new directory; only when it is complete does the ``latest`` file
    (replaced atomically with ``os.replace``) point to it.
    """
    name = f"state-{progress.global_step:08d}"
    target = checkpoint_dir / name
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pointer = checkpoint_dir / f".{LATEST}.tmp"
        pointer.write_text(name)
        previous = latest_checkpoint(checkpoint_dir)
        os.replace(pointer, checkpoint_dir / LATEST)
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The state directory the ``latest`` file names, if complete; None otherwise.

    Examples:
        >>> latest_checkpoint(Path("no/such/run/checkpoints")) is None
        True
    """
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return None
    target = checkpoint_dir / pointer.read_text().strip()
    return target if target.is_dir() else None


def train(preset: Preset, options: RunOptions) -> dict:
    """Trains SeCu with ``preset``, evaluates, saves a Hub-format model; returns the summary."""
    from accelerate.utils import set_seed

    from secu_plugin.data import ImageDataset, TwoViewDataset

    started = time.time()
    accelerator = build_accelerator(preset)
    use_cpu_cores(accelerator)
    set_seed(options.seed)
    output_dir = Path(options.output_dir)
    checkpoint_dir = output_dir / "checkpoints"
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log = accelerator.print

    # Data: two views and the dataset index of each image (labels only for evaluation).
    train_images = ImageDataset.from_source(preset.data, split="train",
                                            skip_corrupt=options.skip_corrupt)
    if getattr(train_images, "skipped", None):
        log(f"skipped {len(train_images.skipped)} unreadable images")
    view1, view2 = build_view_transforms(preset)
    per_process_batch = max(1, preset.batch_size // accelerator.num_processes)
    # Seeded views: image i in epoch e gets the same augmentations in every run (exact resume).
    pairs = TwoViewDataset(train_images, view1, view2, seed=options.seed)
    loader = DataLoader(
        pairs, batch_size=per_process_batch, shuffle=True,
        num_workers=preset.num_workers, persistent_workers=preset.num_workers > 0,
        drop_last=False,
        # Its own generator: starting an epoch's iterator then draws nothing from the global
        # RNG, which drives the augmentations, so a resumed epoch draws the same views.
        generator=torch.Generator().manual_seed(options.seed),
    )

    # Model, center bank and loss.
    training_info = {"preset": preset.to_dict(), "command": options.command, "seed": options.seed}
    model = build_model(preset, training=training_info)
    model.centers.requires_grad_(False)  # the bank trains the centers; the model gets a copy
    if accelerator.num_processes > 1 and accelerator.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    bank = SeCuCenterBank(
        dim=preset.dim, num_clusters=preset.num_clusters, num_instances=len(train_images),
        assigner=preset.assigner, dual_lr=preset.dual_lr,
        lower_bound_ratio=preset.lower_bound_ratio, alpha=preset.alpha,
    ).to(accelerator.device)
    criterion = SeCuLoss(bank, temperature_x=preset.temperature_x,
                         temperature_c=preset.temperature_c, label_weight=preset.label_weight)
    optimizer = build_optimizer(preset.optimizer, model, bank.centers,
                                weight_decay=preset.weight_decay, momentum=preset.momentum)
    network, optimizer, loader = accelerator.prepare(TwoViewNetwork(model), optimizer, loader)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(bank, progress)

    if options.resume:
        state = latest_checkpoint(checkpoint_dir)
        if state is None:
            raise ValueError(f"--resume: no complete checkpoint in {checkpoint_dir}")
        accelerator.load_state(str(state))
        log(f"resumed from {state} (epoch {progress.epoch}, step {progress.step_in_epoch})")

    steps_per_epoch = len(loader)
    stop = False
    for epoch in range(progress.epoch, preset.epochs):
        loader.set_epoch(epoch)
        pairs.set_epoch(epoch)
        if progress.step_in_epoch == 0:
            bank.start_epoch()  # mid-epoch resumes keep the restored frozen targets
        batches = loader
        if progress.step_in_epoch > 0:
            batches = accelerator.skip_first_batches(loader, progress.step_in_epoch)
        network.train()
        progress.flush()
        epoch_started, steps_before = time.time(), len(progress.losses)
        bar = _progress_bar(accelerator, options, steps_per_epoch, progress.step_in_epoch, epoch)
        for view_a, view_b, indices in batches:
            step = progress.step_in_epoch
            for group in optimizer.param_groups:
                if group.get("role") == "centers":
                    group["lr"] = center_lr(preset.center_lr, epoch, step, steps_per_epoch,
                                            preset.epochs, ramp=preset.center_lr_ramp)
                else:
                    group["lr"] = encoder_lr(preset.lr, epoch, step, steps_per_epoch,
                                             preset.epochs, preset.warmup_epochs)
            with accelerator.autocast():
                z0, z1, p0, p1 = network(view_a, view_b)
                loss = criterion(z0, z1, indices, p0, p1)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()

            # No per-step read-back: on a GPU it would stall the queue every step.
            progress.record(loss, indices)
            progress.step_in_epoch += 1
            progress.global_step += 1
            if bar is not None:
                bar.update(1)
                if progress.step_in_epoch % 20 == 0:  # an occasional read-back for the bar
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            at_limit = options.max_steps is not None and progress.global_step >= options.max_steps
            if at_limit or (options.checkpoint_every
                            and progress.global_step % options.checkpoint_every == 0):
                save_checkpoint(accelerator, checkpoint_dir, progress)
            if at_limit:
                stop = True
                break
        if bar is not None:
            bar.close()
        if stop:
            log(f"stopped after {progress.global_step} steps (--max_steps)")
            break
        progress.flush()
        epoch_losses = progress.losses[steps_before:]
        log(_epoch_line(epoch, sum(epoch_losses) / max(len(epoch_losses), 1), bank,
                        train_images.labels)
            + f" | {time.time() - epoch_started:.1f}s")
        bank.end_epoch()
        progress.epoch, progress.step_in_epoch = epoch + 1, 0
        save_checkpoint(accelerator, checkpoint_dir, progress)

    summary = {"epochs": progress.epoch, "steps": progress.global_step,
               "num_processes": accelerator.num_processes,
               "ranks_in_sync": ranks_hold_identical_state(bank)}
    if not stop:
        summary.update(finish(accelerator, model, bank, preset, options, train_images))
    summary["seconds"] = round(time.time() - started, 1)
    summary["output_dir"] = str(output_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def ranks_hold_identical_state(bank: SeCuCenterBank) -> bool:
    """Whether every process holds exactly the same bank (memory, counts, duals, centers)."""
    state = torch.cat([t.detach().double().flatten().cpu() for t in bank.state_dict().values()])
    digest = torch.tensor([float(state.sum()), float((state * torch.arange(len(state))).sum())],
                          dtype=torch.float64, device=bank.memory.device)
    gathered = dist.gather_rows(digest.unsqueeze(0))
    return bool((gathered == gathered[0]).all())


def finish(accelerator, model, bank, preset: Preset, options: RunOptions, train_images) -> dict:
    """Evaluation, plots and the Hub-format model directory at the end of training."""
    from secu_plugin.data import ImageDataset
    from secu_plugin.train.evaluation import evaluate_predictions, predict_dataset
    from secu_plugin.viz import save_cluster_montage, save_cluster_size_plot

    output_dir = Path(options.output_dir)
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.set_centers([c.detach() for c in bank.centers])  # the model predicts with them
    eval_images = ImageDataset.from_source(preset.data, split="test",
                                           skip_corrupt=options.skip_corrupt)
    predictions, labels = predict_dataset(accelerator, model, eval_images,
                                          batch_size=max(64, preset.batch_size))
    memory = bank.memory.long().cpu().numpy()
    split = "train" if preset.data == "mnist5k" else "test"  # MNIST-5k has one split
    results = evaluate_predictions(predictions, labels, list(preset.num_clusters), preset.data,
                                   split, memory)
    scores = results["evaluations"][0] if results else {}
    summary = {"acc": scores.get("accuracy"), "nmi": scores.get("nmi"), "ari": scores.get("ari")}
    if len(results.get("evaluations", [])) > 1:
        summary["memory_acc"] = results["evaluations"][1]["accuracy"]

    if accelerator.is_main_process:
        unwrapped.set_results(results or None)
        model_dir = output_dir / "model"
        unwrapped.save_pretrained(model_dir, repo_id=options.push_to_hub)
        sizes = [s.cpu().numpy() for s in bank.cluster_sizes()]
        save_cluster_size_plot(sizes, [f"K={k}" for k in preset.num_clusters],
                               output_dir / "cluster_sizes.png")
        head = scores.get("head", 0)
        sample = np.random.default_rng(0).permutation(len(eval_images))[:2000]
        save_cluster_montage([eval_images[i][0] for i in sample], predictions[head][sample],
                             output_dir / "montage.png")
        (output_dir / "results.json").write_text(json.dumps(results, indent=2))
        if options.push_to_hub:
            unwrapped.push_to_hub(options.push_to_hub)
        summary["model_dir"] = str(model_dir)
    return summary


def _epoch_line(epoch: int, mean_loss: float, bank: SeCuCenterBank, labels=None) -> str:
    """Loss, min/max cluster size per head, and (labelled data) the memory's ACC."""
    sizes = [f"K={k}:{int(s.min())}/{int(s.max())}"
             for k, s in zip(bank.num_clusters, bank.cluster_sizes())]
    line = f"epoch {epoch}: loss {mean_loss:.4f} | cluster size min/max " + " ".join(sizes)
    if labels is not None and (np.asarray(labels) >= 0).any():
        from secu_plugin.train.evaluation import evaluation_head
        from secu_plugin.train.metrics import cluster_accuracy

        head = evaluation_head(bank.num_clusters, int(np.max(labels)) + 1)
        line += f" | memory ACC (K={bank.num_clusters[head]}) "
        line += f"{cluster_accuracy(labels, bank.memory[head].long().cpu().numpy()):.4f}"
    return line


def _progress_bar(accelerator, options: RunOptions, total: int, initial: int, epoch: int):
    if not (options.progress and accelerator.is_main_process):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", file=sys.stderr,
                leave=False, dynamic_ncols=True, mininterval=1.0)


def print_summary(summary: dict) -> None:
    """The one JSON line a run ends with on stdout (main process only)."""
    from accelerate import PartialState

    # The process group is gone after training: ask Accelerate's state, which keeps the rank.
    if PartialState().is_main_process:
        print(json.dumps({key: (round(v, 4) if isinstance(v, float) else v)
                          for key, v in summary.items()}), flush=True)


def parse_recipe_args(argv: list[str] | None = None, default_preset: str = "mnist5k"):
    """The command line shared by ``recipes/train.py`` and ``recipes/train_imagenet.py``."""
    import argparse
    import shlex

    from secu_plugin.train.presets import PRESETS, get_preset, parse_overrides

    parser = argparse.ArgumentParser(description="Train SeCu with Accelerate.")
    parser.add_argument("--preset", default=default_preset, choices=sorted(PRESETS))
    parser.add_argument("--data", help="mnist5k, an image folder, parquet files or a Hub data set")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<preset>")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--backbone", help="any timm model name")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also push the model to the Hub")
    parser.add_argument("--max_steps", type=int, help="stop after this many steps (checkpointed)")
    parser.add_argument("--checkpoint_every", type=int, default=0,
                        help="also checkpoint every N steps")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE",
                        help="override preset settings, e.g. --set lr=0.1 num_clusters=[10,20]")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set)
    for name in ("data", "epochs", "backbone"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    preset = get_preset(args.preset, **overrides)
    command = ["accelerate", "launch", *sys.argv] if argv is None else ["recipe", *argv]
    options = RunOptions(
        output_dir=args.output_dir or f"outputs/{preset.name}", resume=args.resume,
        seed=args.seed, push_to_hub=args.push_to_hub, max_steps=args.max_steps,
        checkpoint_every=args.checkpoint_every, skip_corrupt=args.skip_corrupt,
        command=shlex.join(command), progress=not args.no_progress,
    )
    return preset, options


def recipe_main(argv: list[str] | None = None, default_preset: str = "mnist5k") -> dict:
    """Parses the command line, trains, prints the final JSON line; returns the summary."""
    preset, options = parse_recipe_args(argv, default_preset)
    summary = train(preset, options)
    print_summary(summary)
    return summary
