"""Which head's K fits the data, without labels: each head's clustering scored on the k-NN graph
of the images' embeddings, and the best-scoring head recommended.

A run trains several heads (K values) and the user usually does not know how many classes the
images hold. The signal here is the *modularity* of a head's clustering on the directed k-NN
graph of the embeddings (each image linked to its ``k`` nearest other images): the share of
links that stay inside a cluster, minus the share expected by chance for clusters of those
sizes. Chance matters: a single cluster keeps every link inside and scores 0, so the signal
does not favour small K; splitting a true class in two cuts many links (score drops), merging
two classes keeps few extra links while the chance share grows (score drops too). Also
reported per head, for reading: Cohen's kappa of the same agreement (modularity divided by
``1 - chance``), and the size balance (normalized entropy of the cluster sizes).

The cost is bounded: at most ``max_images`` images (a seeded random sample) and an exact
blocked k-NN search (:func:`secu_plugin.core.neighbors.nearest_neighbors`), never N x N.
Numpy and torch only, so training's export, the cluster report and ``secu-cluster`` all use it.
"""

from __future__ import annotations

import numpy as np
import torch

from secu_plugin.core.neighbors import nearest_neighbors

SIGNAL = "knn_modularity"


def neighbor_agreement(
    predictions: np.ndarray | torch.Tensor, neighbors: np.ndarray | torch.Tensor
) -> float:
    """The share of (image, neighbour) links whose two ends fall in the same cluster, over
    every head: ``predictions`` (N,) or (H, N) cluster ids, ``neighbors`` (N, k) indices. Needs
    no labels; a higher value means clusters that follow the neighbourhood graph more closely
    (fine-tuning keeps the state that raises it; the K signal corrects it for chance).

    Examples:
        >>> neighbors = np.array([[1], [0], [3], [2]])
        >>> neighbor_agreement(np.array([0, 0, 1, 1]), neighbors)
        1.0
        >>> neighbor_agreement(torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]]), neighbors)
        0.5
    """
    predictions, neighbors = np.asarray(predictions), np.asarray(neighbors)
    if predictions.ndim not in (1, 2) or neighbors.ndim != 2:
        raise ValueError(
            f"predictions must be (N,) or (H, N) and neighbors (N, k), got shapes "
            f"{predictions.shape} and {neighbors.shape}"
        )
    return float((predictions[..., neighbors] == predictions[..., None]).mean())


def size_balance(cluster_ids: np.ndarray | torch.Tensor, num_clusters: int) -> float:
    """The normalized entropy of one clustering's cluster sizes: 1 for equal sizes, 0 for a
    single cluster (and 1 where ``num_clusters`` is 1: there is nothing to balance).

    Examples:
        >>> size_balance(np.array([0, 1, 0, 1]), 2), size_balance(np.array([0, 0, 0, 0]), 2)
        (1.0, 0.0)
    """
    cluster_ids = np.asarray(cluster_ids)
    if num_clusters < 2:
        return 1.0
    share = np.bincount(cluster_ids, minlength=num_clusters) / len(cluster_ids)
    used = share[share > 0]
    entropy = abs(float((used * np.log(used)).sum()))  # abs: 0, not -0, for one cluster
    return entropy / float(np.log(num_clusters))


def _chance_corrected(
    cluster_ids: np.ndarray, neighbors: np.ndarray, num_clusters: int
) -> tuple[float, float]:
    """(observed share of same-cluster links, chance share) of one clustering."""
    rows, k = neighbors.shape
    # Directed links: out-degree k for every image, in-degree as the graph has it (hubs), so
    # chance is sum_c (share of link tails in c) x (share of link heads in c).
    tails = np.bincount(cluster_ids, minlength=num_clusters) / rows
    heads = np.bincount(cluster_ids[neighbors].ravel(), minlength=num_clusters) / (rows * k)
    return neighbor_agreement(cluster_ids, neighbors), float((tails * heads).sum())


def head_selection(
    embeddings: torch.Tensor | np.ndarray,
    predictions: np.ndarray,
    num_clusters: list[int],
    num_neighbors: int = 10,
    max_images: int = 10000,
    seed: int = 0,
    space: str = "projections",
) -> dict:
    """Each head's label-free score and the recommended head (the highest modularity).

    Args:
        embeddings: (N, D) embeddings of the images the heads clustered (cosine k-NN).
        predictions: (H, N) cluster id of every image for every head.
        num_clusters: The K of each head (length H).
        num_neighbors: Links per image of the k-NN graph.
        max_images: At most this many images (a random sample, ``seed``) are scored.
        seed: Seed of that sample.
        space: What ``embeddings`` are, recorded with the result.

    Returns:
        ``{"signal", "space", "num_neighbors", "images", "heads": [{"head", "num_clusters",
        "knn_modularity", "knn_kappa", "size_balance"}, ...], "recommended_head",
        "recommended_num_clusters"}``.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> centers = 5 * np.eye(3)  # three well separated blobs of 40 points
        >>> points = np.repeat(centers, 40, axis=0) + rng.normal(size=(120, 3))
        >>> truth = np.repeat(np.arange(3), 40)
        >>> heads = np.stack([truth % 2, truth, truth * 2 + rng.integers(0, 2, 120)])
        >>> found = head_selection(torch.tensor(points), heads, [2, 3, 6])
        >>> found["recommended_num_clusters"], [h["num_clusters"] for h in found["heads"]]
        (3, [2, 3, 6])
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2:
        raise ValueError(f"predictions must be (heads, N), got shape {predictions.shape}")
    if len(num_clusters) != predictions.shape[0]:
        raise ValueError(
            f"num_clusters names {len(num_clusters)} heads, predictions hold {predictions.shape[0]}"
        )
    embeddings = torch.as_tensor(embeddings)
    if embeddings.ndim != 2 or embeddings.shape[0] != predictions.shape[1]:
        raise ValueError(
            f"embeddings must be (N, D) with N = {predictions.shape[1]} images, "
            f"got shape {tuple(embeddings.shape)}"
        )
    if not np.issubdtype(predictions.dtype, np.integer) or (predictions < 0).any():
        raise ValueError("predictions must be cluster ids: integers >= 0")
    for head, k in enumerate(num_clusters):
        if predictions.shape[1] and predictions[head].max() >= k:
            raise ValueError(f"head {head} has a cluster id >= its K = {k}")
    rows = predictions.shape[1]
    if max_images < 2:
        raise ValueError(f"max_images must be at least 2, got {max_images}")
    if rows < 2:
        raise ValueError(f"a k-NN graph needs at least 2 images, got {rows}")
    sample = np.arange(rows)
    if rows > max_images:
        sample = np.sort(np.random.default_rng(seed).permutation(rows)[:max_images])
    k = min(num_neighbors, len(sample) - 1)
    neighbors = nearest_neighbors(embeddings[torch.from_numpy(sample)].float(), k).numpy()
    heads = []
    for head, num in enumerate(num_clusters):
        same, chance = _chance_corrected(predictions[head, sample], neighbors, num)
        balance = size_balance(predictions[head, sample], num)
        kappa = (same - chance) / (1.0 - chance) if chance < 1.0 else 0.0
        heads.append(
            {
                "head": head,
                "num_clusters": int(num),
                SIGNAL: round(same - chance, 4),
                "knn_kappa": round(kappa, 4),
                "size_balance": round(balance, 4),
            }
        )
    best = max(heads, key=lambda h: (h[SIGNAL], -h["num_clusters"]))
    return {
        "signal": SIGNAL,
        "space": space,
        "num_neighbors": k,
        "images": len(sample),
        "heads": heads,
        "recommended_head": best["head"],
        "recommended_num_clusters": best["num_clusters"],
    }


def recorded_recommendation(training: dict | None, num_clusters: list[int]) -> int | None:
    """The head a model's training record recommends (its ``k_selection``), or None when the
    record has none (a model saved before the signal existed, or built by hand).

    The record comes from a model file, which may come from anyone: a malformed one raises a
    ValueError naming the problem rather than silently choosing a head.

    Examples:
        >>> recorded_recommendation({"k_selection": {"recommended_num_clusters": 20}}, [10, 20])
        1
        >>> recorded_recommendation({"seed": 0}, [10, 20]) is None
        True
    """
    selection = (training or {}).get("k_selection")
    if selection is None:
        return None
    if not isinstance(selection, dict):
        raise ValueError(f"training['k_selection'] must be a dict, got {type(selection).__name__}")
    k = selection.get("recommended_num_clusters")
    if isinstance(k, bool) or not isinstance(k, int) or k not in num_clusters:
        raise ValueError(
            f"training['k_selection']['recommended_num_clusters'] is {k!r}, not the K of a head "
            f"of this model ({num_clusters})"
        )
    head = selection.get("recommended_head", num_clusters.index(k))
    if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < len(num_clusters):
        raise ValueError(f"training['k_selection']['recommended_head'] is {head!r}, not a head")
    if num_clusters[head] != k:
        raise ValueError(
            f"training['k_selection'] recommends head {head}, whose K is {num_clusters[head]}, "
            f"not {k}"
        )
    return head


def head_to_use(
    training: dict | None, num_clusters: list[int], requested: int | None
) -> tuple[int, bool]:
    """The head of K = ``requested``; without it, the head the training record recommends,
    else head 0. Returns (head, whether it came from the record).

    Examples:
        >>> head_to_use({"k_selection": {"recommended_num_clusters": 20}}, [10, 20], None)
        (1, True)
        >>> head_to_use(None, [10, 20], 20), head_to_use(None, [10, 20], None)
        ((1, False), (0, False))
    """
    if requested is not None:
        if requested not in num_clusters:
            raise ValueError(
                f"--num-clusters {requested}: no head has {requested} clusters; this model's "
                f"heads have {list(num_clusters)}"
            )
        return list(num_clusters).index(requested), False
    try:
        recommended = recorded_recommendation(training, list(num_clusters))
    except ValueError as error:
        raise ValueError(f"--model: {error}") from error
    return (0, False) if recommended is None else (recommended, True)
