"""Evaluation of SeCu clusterings: the predictions of a model on a data set, scored with
ACC / NMI / ARI under SCAN's protocol (which the SeCu paper follows)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from secu_plugin.core.nearest import nearest_center
from secu_plugin.data.describe import has_informative_labels  # also this module's, as before
from secu_plugin.metrics import clustering_metrics


def eval_loader(accelerator, network, dataset, batch_size: int) -> DataLoader:
    """``(image, label, index)`` batches of ``dataset`` through ``network``'s evaluation
    transform, each process taking its share (gathered back in order by the callers)."""
    from secu_plugin.data import TransformedDataset
    from secu_plugin.data.transforms import eval_transform

    transform = eval_transform(network.data_config, network.in_chans)
    loader = DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size)
    return accelerator.prepare_data_loader(loader)


@torch.no_grad()
def predict_dataset(accelerator, model, dataset, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster ids of every head (H, N) and the labels (N,) of ``dataset``.

    ``model`` is a :class:`secu_plugin.SeCuModel`; each process scores its share of the data
    and the predictions are gathered in dataset order.

    Examples:
        >>> from accelerate import Accelerator
        >>> from secu_plugin import SeCuModel
        >>> from secu_plugin.data import ImageDataset
        >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, num_clusters=[10, 3])
        >>> data = ImageDataset.from_arrays(np.zeros((5, 28, 28), np.uint8), labels=[0, 1, 0, 1, 1])
        >>> ids, labels = predict_dataset(Accelerator(cpu=True), model, data, batch_size=2)
        >>> ids.shape, labels.tolist()
        ((2, 5), [0, 1, 0, 1, 1])
    """
    loader = eval_loader(accelerator, model, dataset, batch_size)
    was_training = model.training
    model.eval()
    predictions, labels = [], []
    for images, targets, _ in loader:
        z = model(images.to(accelerator.device))
        ids = torch.stack([nearest_center(z, centers)[0] for centers in model.centers], dim=1)
        ids, targets = accelerator.gather_for_metrics((ids, targets))
        predictions.append(ids.cpu())
        labels.append(targets.cpu())
    model.train(was_training)
    return torch.cat(predictions).T.numpy(), torch.cat(labels).numpy()


@torch.no_grad()
def project_dataset(accelerator, network, dataset, batch_size: int) -> torch.Tensor:
    """(N, dim) projections of every image of ``dataset`` (``network``'s eval transform, eval
    mode), in dataset order, on every process.

    Examples:
        >>> from accelerate import Accelerator
        >>> from secu_plugin.models import SeCuNetwork
        >>> from secu_plugin.data import ImageDataset
        >>> network = SeCuNetwork("secu_convnet_tiny", in_chans=1, dim=8)
        >>> data = ImageDataset.from_arrays(np.zeros((5, 28, 28), np.uint8))
        >>> project_dataset(Accelerator(cpu=True), network, data, batch_size=2).shape
        torch.Size([5, 8])
    """
    loader = eval_loader(accelerator, network, dataset, batch_size)
    was_training = network.training
    network.eval()
    projections = [
        accelerator.gather_for_metrics(network(images.to(accelerator.device)))
        for images, _, _ in loader
    ]
    network.train(was_training)
    return torch.cat(projections)


def evaluation_head(num_clusters: list[int], num_classes: int) -> int:
    """The head whose K equals the number of classes (SCAN's protocol), else head 0.

    Examples:
        >>> evaluation_head([10, 20, 30], 20), evaluation_head([10, 20], 7)
        (1, 0)
    """
    return num_clusters.index(num_classes) if num_classes in num_clusters else 0


def evaluate_predictions(
    predictions: np.ndarray,
    labels: np.ndarray,
    num_clusters: list[int],
    dataset: str,
    split: str,
    memory: np.ndarray | Callable[[int], np.ndarray] | None = None,
    memory_labels: np.ndarray | None = None,
    dataset_id: str | None = None,
) -> dict:
    """ACC / NMI / ARI of the head whose K equals the number of classes (SCAN's protocol):
    its predictions on the evaluation split, and the training memory's assignment of that head
    (``memory``: (H, N_train), or a function of the head giving its (N_train,) labels, such as
    a sharded bank's ``memory_head_labels``; scored against ``memory_labels``, the training
    labels).
    ``dataset_id``: the Hugging Face Hub id of the data set, if it is one (for the card).

    Returns ``{}`` when the labels cannot score a clustering (none, or a single class: a
    figure against a constant labeling says nothing), else the model card's
    ``{"evaluations": [...]}``.

    Examples:
        >>> labels = np.array([0, 0, 1, 1])
        >>> predictions = np.array([[1, 1, 0, 0], [0, 1, 2, 3]])  # heads with K = 2 and K = 4
        >>> result = evaluate_predictions(predictions, labels, [2, 4], "toy", "test")
        >>> result["evaluations"][0]["num_clusters"], result["evaluations"][0]["accuracy"]
        (2, 1.0)
        >>> evaluate_predictions(predictions, np.zeros(4, dtype=int), [2, 4], "toy", "test")
        {}
    """
    if not has_informative_labels(labels):
        if labels is not None and (np.asarray(labels) >= 0).any():
            warnings.warn(
                f"{dataset}: every labelled image has the same class; no ACC/NMI/ARI reported",
                stacklevel=2,
            )
        return {}
    num_classes = int(labels.max()) + 1
    head = evaluation_head(num_clusters, num_classes)
    scored = {"predict": (predictions[head], labels, split)}
    if memory is not None and has_informative_labels(memory_labels):
        # Images not assigned yet (a dropped last batch in the only epoch) are left out.
        memory_head = np.asarray(memory(head) if callable(memory) else memory[head])
        assigned = memory_head >= 0
        truth = np.where(assigned, np.asarray(memory_labels), -1)
        scored["memory"] = (np.where(assigned, memory_head, 0), truth, "train")
    evaluations = []
    for assignment, (assigned, truth, scored_split) in scored.items():
        evaluations.append(
            {
                "dataset": dataset,
                "split": scored_split,
                "num_clusters": num_clusters[head],
                "head": head,
                "assignment": assignment,
                "num_images": int((truth >= 0).sum()),
                **clustering_metrics(truth, assigned),
            }
        )
    return {"evaluations": evaluations}


@torch.no_grad()
def project_features(
    head: torch.nn.Module, features: torch.Tensor, batch_size: int = 4096
) -> torch.Tensor:
    """(N, dim) projections of precomputed backbone ``features`` (N, D) by ``head`` in eval
    mode, on ``head``'s device.

    Examples:
        >>> project_features(torch.nn.Linear(4, 2), torch.randn(5, 4)).shape
        torch.Size([5, 2])
    """
    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    projections = [
        head(features[start : start + batch_size].to(device=device, dtype=torch.float32))
        for start in range(0, len(features), batch_size)
    ]
    head.train(was_training)
    return torch.cat(projections)


def predict_projections(projections: torch.Tensor, centers) -> np.ndarray:
    """Cluster ids (H, N) of ``projections`` (N, dim): the nearest center of every head.

    Examples:
        >>> predict_projections(torch.tensor([[1.0, 0.1], [0.0, 2.0]]), [torch.eye(2)])
        array([[0, 1]])
    """
    return torch.stack([nearest_center(projections, c.detach())[0] for c in centers]).cpu().numpy()
