"""SeCu heads on the features of a frozen pretrained timm backbone, with Accelerate.

    accelerate launch recipes/train_head.py --data ROOT --backbone vit_small_patch14_dinov2.lvd142m
    accelerate launch recipes/train_head.py --backbone tf_efficientnet_lite0 \
        --pretrained_file lite0.safetensors --input_size 112          # offline, MNIST-5k
    accelerate launch --multi_gpu --num_processes 8 recipes/train_head.py \
        --preset frozen-imagenet --data /data/imagenet

The loop, top to bottom: the data; the backbone with its pretrained weights (from the Hub, or
a local file) and its own preprocessing (timm's pretrained_cfg); the feature cache (every
image embedded once, split over the processes, reused by a rerun, resumed after a kill);
the pairs (an image and one of its nearest neighbours, or two augmented views); the heads
(projection MLP + SeCu center bank) trained over the cache; the export: a SeCuModel whose
backbone is the frozen pretrained network, so that ``predict``, ``evaluate.py``,
``secu-cluster`` and ``push_to_hub`` work as for any SeCu model. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from accelerate import PartialState
from torch.utils.data import DataLoader

from secu_plugin import SeCuCenterBank, SeCuLoss, SeCuModel
from secu_plugin.baselines import feature_ceiling
from secu_plugin.data.feature_pairs import CachedPairs
from secu_plugin.data.transforms import augment_transform, eval_transform
from secu_plugin.frozen.features import cached_neighbors, default_cache_root, open_feature_cache
from secu_plugin.frozen.head_presets import HEAD_PRESETS
from secu_plugin.frozen.objectives import train_objective_heads
from secu_plugin.frozen.self_labeling import self_label
from secu_plugin.models import SeCuNetwork
from secu_plugin.models.pretrained import (
    architecture_name,
    describe_weights,
    load_pretrained_backbone,
)
from secu_plugin.train.checkpoint import TrainProgress
from secu_plugin.train.evaluation import predict_projections, project_features
from secu_plugin.train.optim import learning_rates, optimizer_for
from secu_plugin.train.presets import get_preset
from secu_plugin.train.report import EpochReport, summary_line
from secu_plugin.train.runtime import run_or_exit
from secu_plugin.train.scaffold import (
    RecipeRun,
    command_line_overrides,
    read_images,
)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train SeCu heads on a frozen backbone.")
    parser.add_argument("--preset", default="frozen", choices=sorted(HEAD_PRESETS))
    parser.add_argument("--data", help="mnist5k, an image folder, parquet files or a Hub data set")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<preset>")
    parser.add_argument("--backbone", help="a timm model with pretrained weights")
    parser.add_argument("--pretrained_file", help="the backbone's weights from this local file")
    parser.add_argument("--input_size", type=int, help="default: the backbone's")
    parser.add_argument("--cache_dir", help="default: $SECU_CACHE or ~/.cache/secu-plugin/features")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also push the model to the Hub")
    parser.add_argument("--keep_checkpoints", type=int, default=2, help="complete ones kept")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    parser.add_argument("--report_to", default="tensorboard", help="Accelerate trackers, or none")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE")
    return parser


def main(args: argparse.Namespace) -> dict:
    # ---- Data, and the network: the pretrained backbone (frozen) and the projection head.
    overrides = command_line_overrides(args, ("data", "epochs", "backbone", "input_size"))
    settings = get_preset(args.preset, HEAD_PRESETS, **overrides)
    images = read_images(settings.data, "train", args)
    settings = settings.with_batch_size_for(len(images))
    run = RecipeRun.start(args, settings)
    accelerator, log = run.accelerator, run.log
    if images.skipped:
        log(f"skipped {len(images.skipped)} unreadable images")
    settings.check_data_size(len(images), accelerator.num_processes)
    pretrained_name = settings.network.backbone  # with its pretrained tag, as timm names it
    network_settings = {**asdict(settings.network), "backbone": architecture_name(pretrained_name)}
    network = SeCuNetwork(**network_settings)
    load_pretrained_backbone(network.backbone, pretrained_name, args.pretrained_file)
    weights = describe_weights(pretrained_name, args.pretrained_file)
    network.backbone.requires_grad_(False)
    network.to(accelerator.device)

    # ---- The feature cache: view 0 plain (the model's eval transform), then augmented views.
    in_chans, min_scale = network.in_chans, settings.augmentation.min_scale
    transforms = [eval_transform(network.data_config, in_chans)] + [
        augment_transform(network.data_config, in_chans, min_scale)
        for _ in range(settings.cache.augmented_views)
    ]
    cache_root = Path(args.cache_dir) if args.cache_dir else default_cache_root()
    cache = open_feature_cache(run, network.backbone, weights, images, transforms, cache_root)
    extracted = time.time()
    if settings.head_objective.objective == "secu":
        bank, temperature, epochs = train_secu_heads(run, settings, network, images, cache, args)
        projection_head = network.projection_head
    else:  # TURTLE, TEMI or SCAN: their heads as a projection and centers (secu_plugin.frozen.objectives)
        bank, temperature, projection_head = train_other_heads(run, settings, images, cache, args)
        epochs = 0
    trained = time.time()

    # ---- Export: the frozen backbone, the trained head and centers, as one SeCuModel.
    record = run.training_record(frozen_backbone=weights)
    if projection_head is network.projection_head:
        model = SeCuModel.from_network(
            network, bank.centers, temperature=temperature, training=record
        )
    else:  # a linear projection of its own width (secu_plugin.frozen.linear_heads)
        model = SeCuModel.from_modules(
            network.backbone,
            projection_head,
            list(bank.centers),
            network.in_chans,
            **{k: network.config[k] for k in ("input_size", "mean", "std")},
            temperature=temperature,
            training=record,
        )
    eval_images = run.evaluation_images(images)
    eval_features = cache.features
    if eval_images is not images:  # an evaluation split: its own plain view, cached too
        eval_cache = open_feature_cache(
            run, network.backbone, weights, eval_images, transforms[:1], cache_root
        )
        eval_features = eval_cache.features
    projections = project_features(model.projection_head, eval_features[:, 0])
    predictions = predict_projections(projections, model.centers)
    summary = {
        "epochs": epochs,
        "seconds_features": round(extracted - run.started, 1),
        "seconds_heads": round(trained - extracted, 1),
    }
    # k-means on the same cached features: the baseline to beat.
    summary.update(
        run.export(
            model,
            bank,
            images,
            eval_images,
            predictions,
            eval_images.labels,
            projections=projections,
            baseline_features=eval_features[:, 0],
            next_step=(
                "the features of another backbone, e.g. accelerate launch recipes/train_head.py "
                f"--data {shlex.quote(settings.data)} --backbone vit_small_patch14_dinov2.lvd142m"
            ),
            pooled_features=lambda rows: eval_features[torch.as_tensor(rows), 0],
            ceiling=ceiling_of(eval_features[:, 0], eval_images.labels, args, run.log)
            if settings.feature_ceiling and eval_images.labels is not None
            else None,
        )
    )
    return run.finish(summary)


def train_secu_heads(
    run: RecipeRun,
    settings,
    network: SeCuNetwork,
    images,
    cache,
    args: argparse.Namespace,
) -> tuple[SeCuCenterBank, float, int]:
    """SeCu heads: the projection MLP (``network.projection_head``, trained in place) and the
    center bank, over the pairs of the cache; then self-labeling. Returns the bank, the
    temperature of the centers and the epochs done."""
    accelerator, log = run.accelerator, run.log
    features = cache.features
    pairing = settings.pairing
    neighbors = None
    if pairing.pairs == "neighbors":
        neighbors = cached_neighbors(
            accelerator, cache, pairing.num_neighbors, pairing.neighbor_whitening, log
        )
    pairs = CachedPairs(features, pairing.pairs, neighbors, seed=args.seed)

    # ---- Heads: the projection MLP and the center bank, trained over the cache.
    head = network.projection_head
    bank = SeCuCenterBank(num_instances=len(images), dim=network.dim, **asdict(settings.bank))
    bank = bank.to(accelerator.device)
    criterion = SeCuLoss(bank, **asdict(settings.loss))
    optimizer = optimizer_for(settings.optimization, head, bank.centers)  # the head alone
    # The loader yields indices only: the pairs are read from the cache for each batch.
    loader = DataLoader(
        torch.arange(len(images)),
        batch_size=settings.loader.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    # prepare: wraps the head for the processes (DDP), the optimizer, and the loader's batches.
    head, optimizer, loader = accelerator.prepare(head, optimizer, loader)
    progress = TrainProgress()
    report = EpochReport(images.labels)
    # register_for_checkpointing: save_state/load_state also cover the bank and the counters
    # (run.checkpointed: every rank saves its shard of a sharded memory).
    bank_state, report_state = run.checkpointed(bank, report)
    accelerator.register_for_checkpointing(bank_state, progress, report_state)
    run.resume(progress)  # with --resume: the newest checkpoint that verifies
    run.init_trackers()

    steps_per_epoch, schedule = len(loader), settings.schedule
    while progress.epoch < schedule.epochs:
        epoch = progress.epoch
        loader.set_epoch(epoch)
        pairs.set_epoch(epoch)
        if epoch == settings.kmeans_epoch:  # clusters from what the head has learnt so far
            bank.warm_start(project_features(head, features[:, 0]), seed=args.seed)
            for center in bank.centers:  # the old centers' momentum does not apply
                optimizer.state.pop(center, None)
            log(f"epoch {epoch}: centers and memory reset by k-means on the projections")
        bank.start_epoch()
        report.start(bank)
        head.train()
        epoch_started = time.time()
        for step, indices in enumerate(loader):
            # Epoch 0 only fills the assignment memory (lr 0), as in end-to-end SeCu.
            lrs = learning_rates(settings.optimization, schedule, epoch, step, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lrs[group["role"]]
            x0, x1 = pairs(indices)
            device = accelerator.device
            loss = criterion(head(x0.to(device)), head(x1.to(device)), indices)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.record(loss)
        run.end_epoch(bank, report, progress, epoch_started)
    # ---- Self-labeling: the confident images of each cluster teach the others (seconds; every
    # process runs it whole on all images, so it is not checkpointed: a resume redoes it).
    if settings.self_labeling.self_label_epochs:
        self_label(
            accelerator.unwrap_model(head),
            bank.centers,
            features[:, 0],
            settings.self_labeling,
            settings.loader.batch_size,
            seed=args.seed,
            log=log,
        )
    return bank, criterion.temperature_c, progress.epoch


def train_other_heads(
    run: RecipeRun, settings, images, cache, args: argparse.Namespace
) -> tuple[SeCuCenterBank, float, torch.nn.Module]:
    """TURTLE, TEMI or SCAN heads on the plain cached features, every process the same (seeded);
    returns a bank holding their centers and training clusters (what the export scores), the
    temperature and the projection head."""
    objective = settings.head_objective
    features = cache.features[:, 0]
    neighbors = None
    if objective.objective in ("scan", "temi"):
        neighbors = cached_neighbors(
            run.accelerator,
            cache,
            getattr(objective, f"{objective.objective}_neighbors"),
            settings.pairing.neighbor_whitening,
            run.log,
        )
    num_clusters = settings.bank.num_clusters
    heads = train_objective_heads(objective, features, num_clusters, args.seed, neighbors)
    run.log(f"{objective.objective} heads; exported agreement per head: {heads.agreement}")
    bank = SeCuCenterBank(
        dim=heads.projection.out_features,
        num_clusters=num_clusters,
        num_instances=len(images),
        memory="replicated",
    )
    with torch.no_grad():
        for center, trained in zip(bank.centers, heads.centers):
            center.copy_(trained)
        bank.memory.copy_(heads.labels.to(bank.memory.dtype))
    return bank, heads.temperature, torch.nn.Sequential(heads.projection)


def ceiling_of(features, labels, args: argparse.Namespace, log) -> Callable[[int], dict]:
    """The features' ceiling (:func:`feature_ceiling`, on at most 20,000 images) at the
    evaluated head's K, for the export: results.json, the final line and the report."""

    def ceiling(k: int) -> dict:
        labelled = labels[labels >= 0]
        if len(set(labelled.tolist())) < 2 or len(labelled) <= k + 6:
            log("no features' ceiling: too few labelled images or classes")
            return {}
        started = time.time()
        record = feature_ceiling(features, labels, k, args.seed, max_images=20_000)
        return {**record, "seconds_total": round(time.time() - started, 1)}

    return ceiling


if __name__ == "__main__":
    summary = run_or_exit(main, get_args_parser().parse_args())
    if PartialState().is_main_process:
        print(summary_line(summary), flush=True)
