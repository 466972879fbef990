"""Which head's K fits the data, without labels: every head's clustering scored by the signals
of :mod:`secu_plugin.k_signals`, the best head recommended, and a second one named when the two
are too close to call.

A run trains several heads (K values, :data:`HEAD_GRID` when K is not given) and the user
usually does not know how many classes the images hold. Each head is scored on the embeddings
the heads cluster (the projections) and on its cluster ids alone, so any head objective can be
scored: the rule (:func:`choose_head`) uses :data:`SIGNAL`; the other scores are recorded for
reading. The signal and the "close" margin were chosen on the tune sets
(``benchmarks/k_selection.py``, docs/k_selection.md); held-out sets only checked them.

The cost is bounded: at most ``max_images`` images (a seeded random sample), an exact blocked
k-NN search (:func:`secu_plugin.core.neighbors.nearest_neighbors`) and a PCA of the sample.
"""

from __future__ import annotations

import numpy as np
import torch

from secu_plugin.k_signals import (
    knn_graph,
    knn_modularity,
    pca_basis,
    pca_silhouettes,
    sample_indices,
    size_balance,
)

# The heads a run trains when K is not given, on both paths (frozen and from scratch): from 2
# up to 50, each step at most a third larger than the one before, so that a true K between two
# grid points is within one step of both (docs/k_selection.md: cost and choice).
HEAD_GRID = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
# The score that picks the head (higher is better): the silhouette of the clusters in an
# 8-dimensional PCA of the projections, chosen on the tune sets (29 runs: 10 sets, 3 seeds)
# before any held-out run of it: right on 21, never more than two grid steps off, where the
# 32-dimensional one (the rule before) was right on 21 but 8 steps off once, and every rank
# combination with kappa or TURTLE's generalisation fell to K = 2 on sets of two families
# (docs/k_selection.md). The runner-up is named too (``also_plausible``) when it scores within
# CLOSE_MARGIN of it: the largest margin that fires on at most 20 % of the tune runs (5 of 29).
SIGNAL = "silhouette_pca8"
CLOSE_MARGIN = 0.011
# Recorded per head; the linear generalisation and the seed agreement of secu_plugin.k_signals
# are benchmark columns only (they picked K less well on the tune sets, and cost more).
SCORES = ("modularity", "kappa", "silhouette_pca8", "silhouette_pca32", "size_balance")


def choose_head(scores: dict[str, list[float]], num_clusters: list[int]) -> dict:
    """The head with the highest :data:`SIGNAL` (the smaller K on a tie) and, when the runner-up
    scores within :data:`CLOSE_MARGIN` of it, the runner-up's K as ``also_plausible``.

    Examples:
        >>> choose_head({SIGNAL: [0.2, 0.5, 0.3]}, [5, 10, 20])
        {'recommended_head': 1, 'recommended_num_clusters': 10, 'also_plausible': None}
        >>> choose_head({SIGNAL: [0.2, 0.5, 0.5 - CLOSE_MARGIN / 2]}, [5, 10, 20])["also_plausible"]
        20
    """
    values = scores[SIGNAL]
    if len(values) != len(num_clusters) or not values:
        raise ValueError(f"{len(values)} scores for {len(num_clusters)} heads")
    order = sorted(range(len(values)), key=lambda h: (-values[h], num_clusters[h]))
    best = order[0]
    close = len(order) > 1 and values[best] - values[order[1]] < CLOSE_MARGIN
    return {
        "recommended_head": best,
        "recommended_num_clusters": int(num_clusters[best]),
        "also_plausible": int(num_clusters[order[1]]) if close else None,
    }


def head_selection(
    embeddings: torch.Tensor | np.ndarray,
    predictions: np.ndarray,
    num_clusters: list[int],
    num_neighbors: int = 10,
    max_images: int = 2000,
    seed: int = 0,
    space: str = "projections",
) -> dict:
    """Each head's label-free scores, the recommended head, and a second K when it is close.

    Args:
        embeddings: (N, D) embeddings of the images the heads clustered.
        predictions: (H, N) cluster id of every image for every head.
        num_clusters: The K of each head (length H).
        num_neighbors: Links per image of the k-NN graph (cosine).
        max_images: At most this many images (a random sample, ``seed``) are scored.
        seed: Seed of that sample.
        space: What ``embeddings`` are, recorded with the result.

    Returns:
        ``{"signal", "close_margin", "space", "num_neighbors", "images", "heads": [{"head",
        "num_clusters", <every score of SCORES>}, ...], "recommended_head",
        "recommended_num_clusters", "also_plausible"}`` (``also_plausible``: a K or None).

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
    embeddings = np.asarray(torch.as_tensor(embeddings).detach().float().cpu())
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
    if predictions.shape[1] < 4:
        raise ValueError(f"scoring heads needs at least 4 images, got {predictions.shape[1]}")
    sample = sample_indices(predictions.shape[1], max_images, seed)
    neighbors = knn_graph(embeddings[sample], num_neighbors)
    # empty clusters change no score: each head's clusters renumbered to the ones it uses
    labellings = [np.unique(ids, return_inverse=True)[1] for ids in predictions[:, sample]]
    # one distance matrix per space for every head (docs/k_grid_cost.json: the grid's cost)
    silhouettes = {
        dims: pca_silhouettes(pca_basis(embeddings[sample], dims), labellings) for dims in (8, 32)
    }
    heads = []
    for head, num in enumerate(num_clusters):
        modularity, kappa = knn_modularity(neighbors, labellings[head])
        scores = {
            "modularity": modularity,
            "kappa": kappa,
            "silhouette_pca8": silhouettes[8][head],
            "silhouette_pca32": silhouettes[32][head],
            "size_balance": round(size_balance(predictions[head, sample], num), 6),
        }
        heads.append({"head": head, "num_clusters": int(num), **scores})
    choice = choose_head({s: [h[s] for h in heads] for s in SCORES}, list(num_clusters))
    return {
        "signal": SIGNAL,
        "close_margin": CLOSE_MARGIN,
        "space": space,
        "num_neighbors": int(neighbors.shape[1]),
        "images": len(sample),
        "heads": heads,
        **choice,
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
