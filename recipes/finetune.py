"""Fine-tune a trained frozen-head SeCu model's backbone by self-labeling, one process or many.

    accelerate launch recipes/train_head.py --backbone tf_efficientnet_lite0 \
        --pretrained_file lite0.safetensors --input_size 112 --output_dir outputs/frozen
    accelerate launch recipes/finetune.py --model outputs/frozen --output_dir outputs/finetuned
    accelerate launch recipes/finetune.py --model outputs/frozen --set trainable_stages=1 lr=3e-4
    accelerate launch --multi_gpu --num_processes 2 recipes/finetune.py --model outputs/frozen

The start is the model that ``recipes/train_head.py`` exported (backbone, projection, centers;
``--data`` defaults to the data it was trained on). The settings are a preset
(:mod:`secu_plugin.frozen.finetune_presets`) with ``--set`` overrides. The loop, top to bottom:
the backbone cut into a frozen trunk and a trainable tail (its last ``trainable_stages``); the
trunk's activations of a plain view and ``augmented_views`` random views of every image, cached
once (split over the processes); the reference graph, the nearest neighbours of every image in
the *starting* backbone's feature space; then epochs of self-labeling: targets are the current
model's most confident assignments on the plain views (``confident_fraction`` of each cluster,
every head; every process computes them on all images, so they are the same everywhere), the
loss is the cross-entropy of an augmented view against them over SeCu's fixed centers, and the
backbone's tail and the projection learn with AdamW at a small lr, BatchNorm statistics frozen
(each process takes its share of every batch; DDP averages the gradients). After each epoch
the model is scored without labels (how often an image and its reference neighbours share a
cluster) and checkpointed (``--resume`` continues from the last one, bit-identical); the run
keeps the best-scoring state, the start included, so that a run that got worse by that
criterion ends where it started. The export (the model directory, results.json with the
epochs' history, the HTML report) is the other recipes'. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from pathlib import Path

import torch
from accelerate import PartialState

from secu_plugin import SeCuModel
from secu_plugin.core.nearest import center_probabilities
from secu_plugin.core.neighbors import nearest_neighbors, whitened
from secu_plugin.data.files import file_sha256
from secu_plugin.data.transforms import augment_transform, eval_transform
from secu_plugin.frozen.features import default_cache_root, open_feature_cache
from secu_plugin.frozen.finetune import (
    FlatTrunk,
    KeptState,
    StagedBackbone,
    TailProjection,
)
from secu_plugin.frozen.finetune_presets import FINETUNE_PRESETS
from secu_plugin.frozen.self_labeling import confident_targets, self_label_loss
from secu_plugin.k_signals import neighbor_agreement, size_balance
from secu_plugin.models import hub
from secu_plugin.train.checkpoint import TrainProgress
from secu_plugin.train.evaluation import evaluate_predictions
from secu_plugin.train.presets import get_preset
from secu_plugin.train.report import dataset_names, summary_line
from secu_plugin.train.runtime import run_or_exit
from secu_plugin.train.scaffold import RecipeRun, command_line_overrides, read_images


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune a frozen-head model by self-labeling.")
    parser.add_argument("--model", required=True, help="recipes/train_head.py's output_dir")
    parser.add_argument("--preset", default="finetune", choices=sorted(FINETUNE_PRESETS))
    parser.add_argument("--data", help="default: the data the model was trained on")
    parser.add_argument("--output_dir", default=None, help="default: outputs/<preset>")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--cache_dir", help="default: $SECU_CACHE or ~/.cache/secu-plugin/features")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--push_to_hub", metavar="ORG/NAME", help="also push the model to the Hub")
    parser.add_argument("--keep_checkpoints", type=int, default=2, help="complete ones kept")
    parser.add_argument("--skip_corrupt", action="store_true", help="skip unreadable images")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    parser.add_argument("--report_to", default="tensorboard", help="Accelerate trackers, or none")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="NAME=VALUE",
        help="override preset settings, e.g. --set trainable_stages=1 lr=3e-4",
    )
    return parser


def model_folder(path: str) -> Path:
    """The model folder of ``path``: a train_head output_dir (its ``model/``) or the folder."""
    folder = Path(path)
    if (folder / "model" / hub.WEIGHTS_FILE).is_file():
        folder = folder / "model"
    if not (folder / hub.WEIGHTS_FILE).is_file():
        raise ValueError(f"--model {path!r}: no {hub.WEIGHTS_FILE} there or in its model/")
    return folder


@torch.no_grad()
def plain_view_outputs(model: SeCuModel, staged: StagedBackbone, activations, shape, batch=256):
    """Backbone features (N, F) and projections (N, dim) of the cached plain views, on the
    model's device."""
    device = model.centers[0].device
    features, projections = [], []
    for start in range(0, len(activations), batch):
        block = activations[start : start + batch, 0].float().view(-1, *shape).to(device)
        feature = staged.tail(block)
        features.append(feature)
        projections.append(model.projection_head(feature))
    return torch.cat(features), torch.cat(projections)


def head_outputs(model: SeCuModel, projections: torch.Tensor):
    """Every head's probabilities (list of (N, K)) and predictions (H, N)."""
    probabilities = [
        center_probabilities(projections, centers.detach(), model.temperature)
        for centers in model.centers
    ]
    return probabilities, torch.stack([p.argmax(1) for p in probabilities])


def main(args: argparse.Namespace) -> dict:
    # ---- The start, the settings (the start's data unless --data) and the run.
    folder = model_folder(args.model)
    model = SeCuModel.from_pretrained(folder)
    record = model.training_recipe or {}
    overrides = command_line_overrides(args, ("data", "epochs"))
    overrides.setdefault("data", record.get("preset", {}).get("data"))
    if overrides["data"] is None:
        raise ValueError("the model does not record its data: pass --data")
    settings = get_preset(args.preset, FINETUNE_PRESETS, **overrides)
    images = read_images(settings.data, "train", args)
    batch_size, num_neighbors = settings.loader.batch_size, settings.pairing.num_neighbors
    if len(images) <= num_neighbors or len(images) < batch_size:  # before the run writes
        raise ValueError(
            f"{len(images)} images: need more than num_neighbors ({num_neighbors}) and at "
            f"least one batch ({batch_size}); pass e.g. --set batch_size={max(2, len(images) // 4)}"
        )
    run = RecipeRun.start(args, settings)
    accelerator, log = run.accelerator, run.log
    if batch_size % accelerator.num_processes:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the {accelerator.num_processes} "
            "processes: every process takes an equal share of each batch"
        )
    model.to(accelerator.device).eval()  # eval throughout: BatchNorm statistics stay frozen
    staged = StagedBackbone(model.backbone, settings.trainable_stages)

    # ---- The trunk's activations of every view, cached once (keyed by the model's weights).
    transforms = [eval_transform(model.data_config, model.in_chans)] + [
        augment_transform(
            model.data_config,
            model.in_chans,
            settings.augmentation.min_scale,
            **(settings.augmentation.view_kwargs or {}),  # timm's, e.g. hflip=0.0
        )
        for _ in range(settings.cache.augmented_views)
    ]
    size = model.data_config["input_size"]
    with torch.no_grad():
        shape = tuple(staged.trunk(torch.zeros(1, *size, device=accelerator.device)).shape[1:])
    trunk = FlatTrunk(staged, shape)
    weights = {"sha256": file_sha256(folder / hub.WEIGHTS_FILE), "trunk_stages": staged.split}
    cache_root = Path(args.cache_dir) if args.cache_dir else default_cache_root()
    backbone_name = model.config["backbone"]
    cache = open_feature_cache(run, trunk, weights, images, transforms, cache_root, backbone_name)
    activations = cache.features
    cached = time.time()

    # ---- The start: its clusters, and the reference graph from its backbone features.
    features, projections = plain_view_outputs(model, staged, activations, shape)
    whitening = min(settings.pairing.neighbor_whitening, features.shape[1], len(images) - 1)
    space = whitened(features, whitening) if whitening > 0 else features
    neighbors = nearest_neighbors(space, num_neighbors)
    labels = images.labels
    data_name, _ = dataset_names(settings.data)

    # the heads that self-label, and whose agreement and balance choose the kept state: every
    # head, or the start's recommended one alone (SCAN self-labels the one head it keeps)
    trained = list(range(len(model.centers)))
    if settings.recommended_head_only:
        trained = [int(record["k_selection"]["recommended_head"])]

    def scores(predictions: torch.Tensor, features: torch.Tensor) -> dict:
        ks = [model.num_clusters[h] for h in trained]
        # a diagnostic beside the criterion: the agreement on the graph of the state's own
        # features (the start's graph favours the start, whose heads learnt its pairs)
        own = nearest_neighbors(
            whitened(features, whitening) if whitening else features, num_neighbors
        )
        found = {
            "neighbor_agreement": round(neighbor_agreement(predictions[trained], neighbors), 4),
            "own_graph_agreement": round(neighbor_agreement(predictions[trained], own), 4),
            "size_balance": round(
                min(size_balance(ids, k) for ids, k in zip(predictions[trained], ks)), 4
            ),
        }
        results = evaluate_predictions(
            predictions.cpu().numpy(), labels, model.num_clusters, data_name, "train"
        )
        if results:  # for the log and the JSON only: the choice never reads labels
            found["accuracy"] = round(results["evaluations"][0]["accuracy"], 4)
        return found

    # ---- What trains (the tail and the projection), and what a checkpoint holds besides.
    network = TailProjection(staged, model.projection_head)
    optimizer = torch.optim.AdamW(
        network.trainable_parameters(),
        lr=settings.optimization.lr,
        weight_decay=settings.optimization.weight_decay,
    )
    network, optimizer = accelerator.prepare(network, optimizer)
    progress, kept = TrainProgress(), KeptState(args.seed)
    accelerator.register_for_checkpointing(progress, kept)
    run.resume(progress)  # with --resume: the newest checkpoint that verifies
    run.init_trackers()
    if not kept.history:  # a fresh run: the start is epoch 0 of the history, and kept
        kept.consider(
            {"epoch": 0, **scores(head_outputs(model, projections)[1], features)},
            model.state_dict(),
        )
        log(f"start: {json.dumps(kept.history[0])}")

    # ---- Self-labeling epochs over the cached activations.
    num_views, rank = len(transforms), accelerator.process_index
    share = batch_size // accelerator.num_processes  # this process's part of every batch
    mine = slice(rank * share, (rank + 1) * share)
    while progress.epoch < settings.schedule.epochs:
        epoch_started = time.time()
        probabilities, _ = head_outputs(
            model, plain_view_outputs(model, staged, activations, shape)[1]
        )
        # log p: the probabilities as logits (their softmax is p); -1 marks an image left out
        fraction = settings.self_labeling.confident_fraction
        chosen = torch.stack([confident_targets(probabilities[h].log(), fraction) for h in trained])
        targets, keep = chosen.clamp(min=0), chosen >= 0
        order = torch.randperm(len(images), generator=kept.generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            batch = order[start : start + batch_size].sort().values  # memory-map order
            # one cached view each, the plain one included: the targets are the plain views'
            view = torch.randint(0, num_views, (len(batch),), generator=kept.generator)
            batch, view = batch[mine], view[mine]
            x = activations[batch][torch.arange(len(batch)), view]
            z = network(x.float().view(-1, *shape).to(accelerator.device))
            centers = [model.centers[h] for h in trained]
            loss = self_label_loss(z, centers, targets[:, batch], keep[:, batch], model.temperature)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            progress.record(loss)
        features, projections = plain_view_outputs(model, staged, activations, shape)
        _, predictions = head_outputs(model, projections)
        mean_loss = torch.tensor(progress.epoch_mean_loss(), dtype=torch.float64)
        mean_loss = float(accelerator.reduce(mean_loss.to(accelerator.device), "mean"))
        found = {
            "epoch": progress.epoch + 1,
            "loss": round(mean_loss, 4),
            **scores(predictions, features),
        }
        kept.consider(found, model.state_dict())
        run.epoch_seconds.append(round(time.time() - epoch_started, 1))
        log(f"epoch {found['epoch']}: {json.dumps(found)} | {run.epoch_seconds[-1]:.1f}s")
        accelerator.log({k: v for k, v in found.items() if k != "epoch"}, step=found["epoch"])
        progress.next_epoch()
        run.save_checkpoint(progress)
    trained = time.time()

    # ---- Export: the kept state as a SeCuModel, scored, with the start's figures beside.
    model.load_state_dict(kept.best["state"])
    for p in model.parameters():
        p.requires_grad_(False)
    finetuned_from = {"model": str(folder), "sha256": weights["sha256"]}
    training = {**record, **run.training_record(finetuned_from=finetuned_from)}
    finetuned = SeCuModel(**{**model.config, "training": training})
    finetuned.load_state_dict(model.state_dict())
    eval_images, eval_activations = run.evaluation_images(images), activations
    if eval_images is not images:  # an evaluation split: its trunk's plain view, cached too
        eval_activations = open_feature_cache(
            run, trunk, weights, eval_images, transforms[:1], cache_root, backbone_name
        ).features
    features, projections = plain_view_outputs(model, staged, eval_activations, shape)
    _, predictions = head_outputs(model, projections)
    start, best = kept.history[0], kept.best
    summary = {
        "start_accuracy": start.get("accuracy"),
        "kept_epoch": best["epoch"],
        "neighbor_agreement": best["neighbor_agreement"],
        "start_neighbor_agreement": start["neighbor_agreement"],
        "epochs": progress.epoch,
        "seconds_cache": round(cached - run.started, 1),
        "seconds_training": round(trained - cached, 1),
    }
    exported = run.export(
        finetuned,
        None,
        images,
        eval_images,
        predictions.cpu().numpy(),
        eval_images.labels,
        projections=projections.cpu(),
        baseline_features=features.cpu(),  # k-means on the fine-tuned backbone's features
        next_step=(
            "the features of another backbone, e.g. accelerate launch recipes/train_head.py "
            f"--data {shlex.quote(settings.data)} --backbone vit_small_patch14_dinov2.lvd142m"
        ),
        pooled_features=lambda rows: features[torch.as_tensor(rows)].cpu(),
    )
    run.update_results(history=kept.history, kept_epoch=best["epoch"])
    return run.finish({**exported, **summary})


if __name__ == "__main__":
    summary = run_or_exit(main, get_args_parser().parse_args())
    if PartialState().is_main_process:
        print(summary_line(summary), flush=True)
