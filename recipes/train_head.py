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
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import set_seed
from torch.utils.data import DataLoader

from secu_plugin import SeCuCenterBank, SeCuLoss, SeCuModel
from secu_plugin.data import FeatureCache, ImageDataset, MultiViewDataset
from secu_plugin.data.feature_pairs import CachedPairs
from secu_plugin.data.transforms import augment_transform, eval_transform
from secu_plugin.models import SeCuNetwork
from secu_plugin.models.pretrained import (
    architecture_name,
    describe_weights,
    load_pretrained_backbone,
)
from secu_plugin.train.checkpoint import TrainProgress, resume_checkpoint, save_checkpoint
from secu_plugin.train.evaluation import (
    evaluate_predictions,
    kmeans_baseline,
    predict_features,
    project_features,
)
from secu_plugin.train.features import (
    cache_key,
    cached_neighbors,
    default_cache_root,
    extract_features,
)
from secu_plugin.train.head_presets import HEAD_PRESETS, batch_size_for
from secu_plugin.train.optim import build_optimizer, encoder_lr
from secu_plugin.train.presets import get_preset, parse_overrides
from secu_plugin.train.report import (
    EpochReport,
    dataset_names,
    epoch_metrics,
    result_metrics,
    summary_line,
    tracker_config,
)
from secu_plugin.train.runtime import check_launch, run_or_exit, use_cpu_cores
from secu_plugin.viz import save_cluster_size_plot


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
    overrides = parse_overrides(args.set)
    for name in ("data", "epochs", "backbone", "input_size"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    preset = get_preset(args.preset, HEAD_PRESETS, **overrides)
    output_dir = Path(args.output_dir or f"outputs/{preset.name}")
    checkpoint_dir = output_dir / "checkpoints"
    started = time.time()
    accelerator = Accelerator(
        dataloader_config=DataLoaderConfiguration(split_batches=True, use_seedable_sampler=True),
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=output_dir / "logs",
    )
    check_launch(accelerator)
    use_cpu_cores(accelerator)
    set_seed(args.seed)
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    log = accelerator.print

    # ---- Data, and the network: the pretrained backbone (frozen) and the projection head.
    images = ImageDataset.from_source(preset.data, split="train", skip_corrupt=args.skip_corrupt)
    if images.skipped:
        log(f"skipped {len(images.skipped)} unreadable images")
    if preset.batch_size is None:
        preset = preset.replace(batch_size=batch_size_for(len(images)))
    preset.check_data_size(len(images), accelerator.num_processes)
    network = SeCuNetwork(
        architecture_name(preset.backbone),
        in_chans=3,  # pretrained weights see RGB; grey images are converted
        dim=preset.dim,
        projection_layers=preset.projection_layers,
        projection_hidden_dim=preset.projection_hidden_dim,
        projection_batchnorm=preset.projection_batchnorm,
        input_size=preset.input_size,
    )
    load_pretrained_backbone(network.backbone, preset.backbone, args.pretrained_file)
    weights = describe_weights(preset.backbone, args.pretrained_file)
    network.backbone.requires_grad_(False)
    network.to(accelerator.device)

    # ---- The feature cache: view 0 plain (the model's eval transform), then augmented views.
    transforms = [eval_transform(network.data_config, 3)] + [
        augment_transform(network.data_config, 3, preset.min_scale)
        for _ in range(preset.augmented_views)
    ]
    cache_root = Path(args.cache_dir) if args.cache_dir else default_cache_root()

    def open_cache(data: ImageDataset, views: list) -> FeatureCache:
        key = cache_key(preset.backbone, weights, views, data, args.seed)
        shape = (
            len(data),
            len(views),
            network.feature_dim,
            preset.cache_dtype,
            preset.cache_chunk_size,
        )
        if accelerator.is_main_process:
            FeatureCache.open(cache_root, key, *shape)
        accelerator.wait_for_everyone()
        cache = FeatureCache.open(cache_root, key, *shape, create=False)
        if cache.complete:
            log(f"reusing the cached features in {cache.directory}")
        else:
            todo = len(cache.missing_chunks())
            log(
                f"embedding {len(data)} images x {len(views)} views ({todo} chunks) into {cache.directory}"
            )
            views_of_data = MultiViewDataset(data, views, seed=args.seed)
            extract_features(
                accelerator, network.backbone, views_of_data, cache, preset.extract_batch_size,
                preset.num_workers, show_progress=not args.no_progress,
            )  # fmt: skip
        return cache

    cache = open_cache(images, transforms)
    extracted = time.time()
    features = cache.features
    neighbors = None
    if preset.pairs == "neighbors":
        neighbors = cached_neighbors(
            accelerator, cache, preset.num_neighbors, preset.neighbor_whitening, log
        )
    pairs = CachedPairs(features, preset.pairs, neighbors, seed=args.seed)

    # ---- Heads: the projection MLP and the center bank, trained over the cache.
    head = network.projection_head
    bank = SeCuCenterBank(num_instances=len(images), **preset.bank_arguments())
    bank = bank.to(accelerator.device)
    criterion = SeCuLoss(bank, **preset.loss_arguments())
    optimizer = build_optimizer(
        "sgd", head, bank.centers, weight_decay=preset.weight_decay, momentum=preset.momentum
    )
    # The loader yields indices only: the pairs are read from the cache for each batch.
    loader = DataLoader(
        torch.arange(len(images)),
        batch_size=preset.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    head, optimizer, loader = accelerator.prepare(head, optimizer, loader)
    progress = TrainProgress()
    report = EpochReport(images.labels)
    accelerator.register_for_checkpointing(bank, progress, report)
    if args.resume:
        state = resume_checkpoint(checkpoint_dir, log)
        accelerator.load_state(str(state))
        log(f"resumed from {state} (epoch {progress.epoch})")

    accelerator.init_trackers(preset.name, config=tracker_config(preset.to_dict()))
    steps_per_epoch = len(loader)
    while progress.epoch < preset.epochs:
        epoch = progress.epoch
        loader.set_epoch(epoch)
        pairs.set_epoch(epoch)
        if epoch == preset.kmeans_epoch:  # clusters from what the head has learnt so far
            bank.warm_start(project_features(head, features[:, 0]), seed=args.seed)
            for center in bank.centers:  # the old centers' momentum does not apply
                optimizer.state.pop(center, None)
            log(f"epoch {epoch}: centers and memory reset by k-means on the projections")
        bank.start_epoch()
        report.start(bank)
        head.train()
        for step, indices in enumerate(loader):
            # Epoch 0 only fills the assignment memory (lr 0), as in end-to-end SeCu.
            lr = encoder_lr(
                preset.lr, epoch, step, steps_per_epoch, preset.epochs, preset.warmup_epochs
            )
            for group in optimizer.param_groups:
                group["lr"] = lr if group["role"] == "encoder" else preset.center_lr
            x0, x1 = pairs(indices)
            device = accelerator.device
            loss = criterion(head(x0.to(device)), head(x1.to(device)), indices)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.record(loss)
        stats = report.summarize(bank)
        log(EpochReport.line(epoch, progress.epoch_mean_loss(), stats, preset.num_clusters))
        accelerator.log(
            epoch_metrics(stats, preset.num_clusters, progress.epoch_mean_loss()),
            step=progress.global_step,
        )
        bank.end_epoch()
        progress.next_epoch()
        save_checkpoint(accelerator, checkpoint_dir, progress, args.keep_checkpoints)
    trained = time.time()

    # ---- Export: the frozen backbone, the trained head and centers, as one SeCuModel.
    data_name, hub_id = dataset_names(preset.data)
    model = SeCuModel.from_network(
        network,
        bank.centers,
        temperature=preset.temperature_c,
        training={
            "preset": preset.to_dict(),
            "frozen_backbone": weights,
            "seed": args.seed,
            "dataset": data_name,
            "dataset_id": hub_id,
            "command": shlex.join(["accelerate", "launch", *sys.argv]),
        },
    )
    eval_images = ImageDataset.from_source(
        preset.data, split="test", skip_corrupt=args.skip_corrupt
    )
    same_split = getattr(eval_images, "split", "test") == "train"
    eval_features = features if same_split else open_cache(eval_images, transforms[:1]).features
    predictions = predict_features(model.projection_head, model.centers, eval_features[:, 0])
    results = evaluate_predictions(
        predictions,
        eval_images.labels,
        preset.num_clusters,
        data_name,
        split=getattr(eval_images, "split", "test"),
        memory=bank.memory.long().cpu().numpy(),
        memory_labels=images.labels,
        dataset_id=hub_id,
    )
    summary = {
        "epochs": progress.epoch,
        "seconds_features": round(extracted - started, 1),
        "seconds_heads": round(trained - extracted, 1),
    }
    summary.update(result_metrics(results))
    if results:  # k-means on the same cached features, the baseline to beat
        evaluated = results["evaluations"][0]
        baseline = kmeans_baseline(
            eval_features[:, 0], eval_images.labels, evaluated["num_clusters"], args.seed
        )
        summary.update({"kmeans_" + m: round(v, 4) for m, v in baseline.items()})
    else:
        log("the data has no class labels: no ACC/NMI/ARI reported")
    if accelerator.is_main_process:
        model.set_results(results or None)
        model.save_pretrained(output_dir / "model", repo_id=args.push_to_hub)
        save_cluster_size_plot(
            [s.cpu().numpy() for s in bank.cluster_sizes()],
            [f"K={k}" for k in preset.num_clusters],
            output_dir / "cluster_sizes.png",
        )
        (output_dir / "results.json").write_text(json.dumps({**results, **summary}, indent=2))
        if args.push_to_hub:
            model.push_to_hub(args.push_to_hub)
    summary.update(seconds=round(time.time() - started, 1), output_dir=str(output_dir))
    summary["model_dir"] = str(output_dir / "model")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    summary = run_or_exit(main, get_args_parser().parse_args())
    if PartialState().is_main_process:
        print(summary_line(summary), flush=True)
