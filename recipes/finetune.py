"""Fine-tune a trained frozen-head SeCu model's backbone by self-labeling, on a CPU.

    accelerate launch recipes/train_head.py --backbone tf_efficientnet_lite0 \
        --pretrained_file lite0.safetensors --input_size 112 --output_dir outputs/frozen
    accelerate launch recipes/finetune.py --model outputs/frozen --output_dir outputs/finetuned

The start is the model that ``recipes/train_head.py`` exported (backbone, projection, centers;
``--data`` defaults to the data it was trained on). The loop, top to bottom: the backbone cut
into a frozen trunk and a trainable tail (its last ``--trainable_stages`` stages); the trunk's
activations of a plain view and ``--augmented_views`` random views of every image, cached once;
the reference graph, the nearest neighbours of every image in the *starting* backbone's feature
space; then epochs of self-labeling: targets are the current model's most confident
assignments on the plain views (``--confident_fraction`` of each cluster, every head), the loss
is the cross-entropy of an augmented view against them over SeCu's fixed centers, and the
backbone's tail and the projection learn with a small lr, BatchNorm statistics frozen. After
each epoch the model is scored without labels (how often an image and its reference neighbours
share a cluster); the run keeps the best-scoring state, the start included, so that a run that
got worse by that criterion ends where it started. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import set_seed

from secu_plugin import SeCuModel
from secu_plugin.core.nearest import center_probabilities
from secu_plugin.core.neighbors import nearest_neighbors, whitened
from secu_plugin.data import FeatureCache, ImageDataset, MultiViewDataset
from secu_plugin.data.files import check_output_outside_data, file_sha256
from secu_plugin.data.transforms import augment_transform, eval_transform
from secu_plugin.frozen.features import cache_key, default_cache_root, extract_features
from secu_plugin.frozen.finetune import (
    FlatTrunk,
    StagedBackbone,
    neighbor_agreement,
    self_label_loss,
)
from secu_plugin.frozen.self_labeling import confident_targets
from secu_plugin.models import hub
from secu_plugin.train.evaluation import evaluate_predictions
from secu_plugin.train.report import dataset_names, result_metrics, summary_line
from secu_plugin.train.runtime import run_or_exit, use_cpu_cores


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Fine-tune a frozen-head model by self-labeling.")
    parser.add_argument("--model", required=True, help="recipes/train_head.py's output_dir")
    parser.add_argument("--data", help="default: the data the model was trained on")
    parser.add_argument("--output_dir", default="outputs/finetuned")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--trainable_stages", type=int, default=2, help="the backbone's last N")
    parser.add_argument("--augmented_views", type=int, default=4, help="cached per image")
    parser.add_argument("--confident_fraction", type=float, default=0.5, help="of each cluster")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW, tail and projection")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--num_neighbors", type=int, default=5, help="of the reference graph")
    parser.add_argument("--cache_dir", help="default: $SECU_CACHE or ~/.cache/secu-plugin/features")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="full tracebacks for user errors")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Refuses values that cannot run, naming the flag."""
    for name in ("epochs", "augmented_views", "batch_size", "num_neighbors"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
    if not 0 < args.confident_fraction <= 1:
        raise ValueError(f"--confident_fraction must be in (0, 1], got {args.confident_fraction}")
    if not args.lr > 0:
        raise ValueError(f"--lr must be positive, got {args.lr}")


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
    """Backbone features (N, F) and projections (N, dim) of the cached plain views."""
    features, projections = [], []
    for start in range(0, len(activations), batch):
        block = activations[start : start + batch, 0].float().view(-1, *shape)
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


def size_balance(predictions: torch.Tensor, num_clusters: list[int]) -> float:
    """The smallest normalized entropy of a head's cluster sizes (1: equal sizes)."""
    balances = []
    for head, k in enumerate(num_clusters):
        share = torch.bincount(predictions[head], minlength=k).double() / predictions.shape[1]
        entropy = -(share[share > 0] * share[share > 0].log()).sum()
        balances.append(float(entropy / torch.log(torch.tensor(float(k)))))
    return min(balances)


def main(args: argparse.Namespace) -> dict:
    started = time.time()
    check_args(args)
    folder = model_folder(args.model)
    model = SeCuModel.from_pretrained(folder)
    record = model.training_recipe or {}
    data = args.data or record.get("preset", {}).get("data")
    if data is None:
        raise ValueError("the model does not record its data: pass --data")
    output_dir = Path(args.output_dir)
    check_output_outside_data(output_dir, data)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    use_cpu_cores(accelerator)
    set_seed(args.seed)
    log = accelerator.print
    images = ImageDataset.from_source(data, split="train")
    if len(images) <= args.num_neighbors:
        raise ValueError(f"{len(images)} images: need more than --num_neighbors")
    model.to(accelerator.device).eval()  # eval throughout: BatchNorm statistics stay frozen
    staged = StagedBackbone(model.backbone, args.trainable_stages)

    # ---- The trunk's activations of every view, cached once (keyed by the model's weights).
    transforms = [eval_transform(model.data_config, model.in_chans)] + [
        augment_transform(model.data_config, model.in_chans, 0.5)
        for _ in range(args.augmented_views)
    ]
    size = model.data_config["input_size"]
    with torch.no_grad():
        shape = tuple(staged.trunk(torch.zeros(1, *size, device=accelerator.device)).shape[1:])
    trunk = FlatTrunk(staged, shape)
    weights = {"sha256": file_sha256(folder / hub.WEIGHTS_FILE), "trunk_stages": staged.split}
    key = cache_key(model.config["backbone"], weights, transforms, images, args.seed)
    root = Path(args.cache_dir) if args.cache_dir else default_cache_root()
    cache = FeatureCache.open(root, key, len(images), len(transforms), trunk.num_features)
    if not cache.complete:
        log(f"caching the trunk of {len(images)} images x {len(transforms)} views")
        views = MultiViewDataset(images, transforms, seed=args.seed)
        extract_features(accelerator, trunk, views, cache, 64, show_progress=not args.no_progress)
    activations = cache.features
    cached = time.time()

    # ---- The start: its clusters, and the reference graph from its backbone features.
    features, projections = plain_view_outputs(model, staged, activations, shape)
    space = whitened(features, min(256, features.shape[1], len(images) - 1))
    neighbors = nearest_neighbors(space, args.num_neighbors)
    _, predictions = head_outputs(model, projections)
    labels = images.labels
    data_name, hub_id = dataset_names(data)

    def scores(predictions: torch.Tensor) -> dict:
        found = {
            "neighbor_agreement": round(neighbor_agreement(predictions, neighbors), 4),
            "size_balance": round(size_balance(predictions, model.num_clusters), 4),
        }
        results = evaluate_predictions(
            predictions.cpu().numpy(), labels, model.num_clusters, data_name, "train"
        )
        if results:  # for the log and the JSON only: the choice never reads labels
            found["accuracy"] = round(results["evaluations"][0]["accuracy"], 4)
        return found

    history = [{"epoch": 0, **scores(predictions)}]
    log(f"start: {json.dumps(history[0])}")
    best = {"epoch": 0, "state": copy.deepcopy(model.state_dict()), **history[0]}

    # ---- Self-labeling epochs over the cached activations.
    trainable = [p for m in staged.tail_modules for p in m.parameters()]
    trainable += list(model.projection_head.parameters())
    for p in trainable:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=args.lr, weight_decay=1e-4)
    generator = torch.Generator().manual_seed(args.seed)
    num_views = len(transforms)
    for epoch in range(1, args.epochs + 1):
        epoch_started = time.time()
        probabilities, _ = head_outputs(
            model, plain_view_outputs(model, staged, activations, shape)[1]
        )
        # log p: the probabilities as logits (their softmax is p); -1 marks an image left out
        chosen = torch.stack(
            [confident_targets(p.log(), args.confident_fraction) for p in probabilities]
        )
        targets, keep = chosen.clamp(min=0), chosen >= 0
        order = torch.randperm(len(images), generator=generator)
        total, steps = 0.0, 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            batch = order[start : start + args.batch_size].sort().values  # memory-map order
            # one cached view each, the plain one included: the targets are the plain views'
            view = torch.randint(0, num_views, (len(batch),), generator=generator)
            x = activations[batch][torch.arange(len(batch)), view]
            x = x.float().view(-1, *shape).to(accelerator.device)
            z = model.projection_head(staged.tail(x))
            loss = self_label_loss(
                z, list(model.centers), targets[:, batch], keep[:, batch], model.temperature
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
        _, predictions = head_outputs(
            model, plain_view_outputs(model, staged, activations, shape)[1]
        )
        found = {"epoch": epoch, "loss": round(total / max(1, steps), 4), **scores(predictions)}
        history.append(found)
        log(f"epoch {epoch}: {json.dumps(found)} | {time.time() - epoch_started:.1f}s")
        # Keep the state the label-free criterion prefers; a collapsing head does not count.
        balanced = found["size_balance"] >= history[0]["size_balance"] - 0.02
        if balanced and found["neighbor_agreement"] > best["neighbor_agreement"]:
            best = {"state": copy.deepcopy(model.state_dict()), **found}
    trained = time.time()

    # ---- Export: the kept state as a SeCuModel, scored, with the start's figures beside.
    model.load_state_dict(best["state"])
    for p in model.parameters():
        p.requires_grad_(False)
    command = shlex.join(["accelerate", "launch", *sys.argv])
    training = {
        **record,
        "finetuned_from": {"model": str(folder), "sha256": weights["sha256"]},
        "finetune": {k: v for k, v in vars(args).items() if k not in ("debug", "no_progress")},
        "command": command,
    }
    finetuned = SeCuModel(**{**model.config, "training": training})
    finetuned.load_state_dict(model.state_dict())
    _, predictions = head_outputs(model, plain_view_outputs(model, staged, activations, shape)[1])
    results = evaluate_predictions(
        predictions.cpu().numpy(),
        labels,
        model.num_clusters,
        data_name,
        "train",
        dataset_id=hub_id,
    )
    summary = {**result_metrics(results)} if results else {}
    start = history[0]
    summary.update(
        {
            "start_accuracy": start.get("accuracy"),
            "kept_epoch": best["epoch"],
            "neighbor_agreement": best["neighbor_agreement"],
            "start_neighbor_agreement": start["neighbor_agreement"],
            "epochs": args.epochs,
            "seconds_cache": round(cached - started, 1),
            "seconds_training": round(trained - cached, 1),
        }
    )
    if accelerator.is_main_process:
        finetuned.set_results(results or None)
        finetuned.save_pretrained(output_dir / "model")
        report = {**results, "history": history, "kept_epoch": best["epoch"]}
        (output_dir / "results.json").write_text(json.dumps(report, indent=2))
    summary["seconds"] = round(time.time() - started, 1)
    summary["output_dir"] = str(output_dir)
    return summary


if __name__ == "__main__":
    summary = run_or_exit(main, get_args_parser().parse_args())
    if PartialState().is_main_process:
        print(summary_line(summary), flush=True)
