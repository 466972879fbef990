"""Evaluation of SeCu clusterings: the predictions of a model on a data set, scored with
ACC / NMI / ARI under SCAN's protocol (which the SeCu paper follows)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from torch.utils.data import DataLoader


@torch.no_grad()
def predict_dataset(accelerator, model, dataset, batch_size: int) -> tuple[np.ndarray, ...]:
    """Cluster ids of every head (H, N) and the labels (N,) of ``dataset``.

    ``model`` may be wrapped by ``accelerator`` (DDP): each process scores its share and the
    predictions are gathered in dataset order.
    """
    from secu_plugin.data.images import TransformedDataset, eval_transform

    unwrapped = accelerator.unwrap_model(model)
    transform = eval_transform(unwrapped.input_size, unwrapped.mean, unwrapped.std,
                               unwrapped.in_chans)
    loader = DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size)
    loader = accelerator.prepare_data_loader(loader)
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for images, targets, _ in loader:
        z = model(images)
        ids = torch.stack([unwrapped.cluster_probabilities(z, head).argmax(1)
                           for head in range(unwrapped.num_heads)], dim=1)
        ids, targets = accelerator.gather_for_metrics((ids, targets))
        predictions.append(ids.cpu())
        labels.append(targets.cpu())
    model.train(was_training)
    return torch.cat(predictions).T.numpy(), torch.cat(labels).numpy()


def evaluation_head(num_clusters: list[int], num_classes: int) -> int:
    """The head whose K equals the number of classes (SCAN's protocol), else head 0.

    Examples:
        >>> evaluation_head([10, 20, 30], 20), evaluation_head([10, 20], 7)
        (1, 0)
    """
    return num_clusters.index(num_classes) if num_classes in num_clusters else 0


def evaluate_predictions(predictions: np.ndarray, labels: np.ndarray, num_clusters: list[int],
                         dataset: str, split: str, memory: np.ndarray | None = None) -> dict:
    """ACC / NMI / ARI of the head whose K equals the number of classes (SCAN's protocol):
    its predictions on the evaluation split, and the training memory's assignment of that head.

    Returns ``{}`` for unlabeled data, else the model card's ``{"evaluations": [...]}``.

    Examples:
        >>> labels = np.array([0, 0, 1, 1])
        >>> predictions = np.array([[1, 1, 0, 0], [0, 1, 2, 3]])  # heads with K = 2 and K = 4
        >>> result = evaluate_predictions(predictions, labels, [2, 4], "toy", "test")
        >>> result["evaluations"][0]["num_clusters"], result["evaluations"][0]["accuracy"]
        (2, 1.0)
    """
    from secu_plugin.train.metrics import clustering_metrics

    labelled = labels >= 0
    if not labelled.any():
        return {}
    num_classes = int(labels.max()) + 1
    head = evaluation_head(num_clusters, num_classes)
    common = {"dataset": dataset, "num_clusters": num_clusters[head], "head": head}
    evaluations = []
    scored = {"predict": predictions[head]}
    if memory is not None and memory.shape[1] == len(labels):
        scored["memory"] = memory[head]
    for assignment, assigned in scored.items():
        metrics = clustering_metrics(labels, assigned)
        evaluations.append({
            **common, "split": split if assignment == "predict" else "train",
            "assignment": assignment, "num_images": int(labelled.sum()),
            "accuracy": metrics["acc"], "nmi": metrics["nmi"], "ari": metrics["ari"],
        })
    return {"evaluations": evaluations}




def evaluate_main(argv: list[str] | None = None) -> int:
    """``recipes/evaluate.py``: scores a saved or Hub model on ``--data``; prints one JSON line."""
    from accelerate import Accelerator

    from secu_plugin.data import ImageDataset
    from secu_plugin.models import SeCuModel

    parser = argparse.ArgumentParser(description="ACC / NMI / ARI of a trained SeCu model.")
    parser.add_argument("--model", required=True, help="a model directory or a Hub id")
    parser.add_argument("--data", default="mnist5k", help="mnist5k, a folder, parquet or Hub id")
    parser.add_argument("--split", default="test", help="evaluation split (MNIST-5k has one)")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--skip_corrupt", action="store_true")
    args = parser.parse_args(argv)

    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    model = SeCuModel.from_pretrained(args.model)
    dataset = ImageDataset.from_source(args.data, split=args.split, skip_corrupt=args.skip_corrupt)
    if dataset.labels is None or not (np.asarray(dataset.labels) >= 0).any():
        raise ValueError(f"--data {args.data!r} has no labels to evaluate against")
    model = accelerator.prepare(model)
    predictions, labels = predict_dataset(accelerator, model, dataset, args.batch_size)
    results = evaluate_predictions(predictions, labels, list(model.num_clusters), args.data,
                                   args.split)
    scores = results["evaluations"][0]
    if accelerator.is_main_process:
        print(json.dumps({"acc": round(scores["accuracy"], 4), "nmi": round(scores["nmi"], 4),
                          "ari": round(scores["ari"], 4), "num_clusters": scores["num_clusters"],
                          "head": scores["head"], "num_images": scores["num_images"],
                          "model": args.model, "data": args.data, "split": args.split}))
    return 0
