"""Label-free scores of one clustering of embeddings: how well a head's clusters fit the images,
computed from the embeddings and the head's cluster ids alone (any head objective).

Each score is higher for a better fit, and is meant to compare heads of different K on the
same images (:mod:`secu_plugin.model_selection` picks the best head with one of them):

- :func:`knn_modularity`: the share of k-nearest-neighbour links inside a cluster minus the
  share expected by chance for clusters of those sizes (and its kappa, divided by 1 - chance);
- :func:`pca_silhouette`: the silhouette of the clusters in a low-dimensional PCA of the
  L2-normalised embeddings (Lowe et al. 2024 score K with a silhouette in a reduced space);
- :func:`linear_generalisation`: a logistic regression trained on the cluster ids of one half
  of the images predicts those of the other half, chance-corrected (TURTLE's generalisation
  score, ICML 2024): boundaries through dense regions do not carry over between halves;
- :func:`seed_agreement`: the adjusted Rand index between two clusterings of the same images
  (two seeds or two subsamples of one head): a K the data holds is found again.

Every score samples at most ``max_images`` images (seeded): never N x N on a large set.
"""

from __future__ import annotations

import numpy as np
import torch

from secu_plugin.core.neighbors import nearest_neighbors


def _check(embeddings: np.ndarray, labels: np.ndarray) -> None:
    if embeddings.ndim != 2 or labels.ndim != 1 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"embeddings must be (N, D) and labels (N,), got {embeddings.shape} and {labels.shape}"
        )
    if embeddings.shape[0] < 4:
        raise ValueError(f"a clustering score needs at least 4 images, got {embeddings.shape[0]}")
    if not np.issubdtype(labels.dtype, np.integer) or (labels < 0).any():
        raise ValueError("labels must be cluster ids: integers >= 0")


def sample_indices(rows: int, max_images: int, seed: int) -> np.ndarray:
    """At most ``max_images`` of ``rows`` indices, a seeded random sample in increasing order.

    Examples:
        >>> sample_indices(5, 10, 0).tolist(), len(sample_indices(100, 10, 0))
        ([0, 1, 2, 3, 4], 10)
    """
    if max_images < 4:
        raise ValueError(f"max_images must be at least 4, got {max_images}")
    if rows <= max_images:
        return np.arange(rows)
    return np.sort(np.random.default_rng(seed).permutation(rows)[:max_images])


def _normalised(embeddings: np.ndarray) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


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


def knn_modularity(neighbors: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(modularity, kappa) of ``labels`` on the directed k-NN graph ``neighbors`` ((N, k)
    indices of each image's nearest other images).

    Chance is the sum over clusters of the share of link tails times the share of link heads
    in it (directed links: out-degree k, in-degree as the graph has it). One cluster scores 0.

    Examples:
        >>> neighbors = np.array([[1], [0], [3], [2]])  # two pairs of mutual neighbours
        >>> knn_modularity(neighbors, np.array([0, 0, 1, 1]))
        (0.5, 1.0)
        >>> knn_modularity(neighbors, np.array([0, 0, 0, 0]))
        (0.0, 0.0)
    """
    neighbors, labels = np.asarray(neighbors), np.asarray(labels)
    if neighbors.ndim != 2 or neighbors.shape[0] != labels.shape[0]:
        raise ValueError(f"neighbors must be (N, k) with N = {labels.shape[0]}")
    rows, k = neighbors.shape
    num = int(labels.max()) + 1
    same = neighbor_agreement(labels, neighbors)
    tails = np.bincount(labels, minlength=num) / rows
    heads = np.bincount(labels[neighbors].ravel(), minlength=num) / (rows * k)
    chance = float((tails * heads).sum())
    kappa = (same - chance) / (1.0 - chance) if chance < 1.0 else 0.0
    return round(same - chance, 6), round(kappa, 6)


def knn_graph(embeddings: np.ndarray | torch.Tensor, num_neighbors: int = 10) -> np.ndarray:
    """The (N, k) indices of each image's ``num_neighbors`` nearest other images (cosine).

    Examples:
        >>> knn_graph(np.array([[1.0, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]]), 1).ravel().tolist()
        [1, 0, 3, 2]
    """
    embeddings = torch.as_tensor(np.asarray(embeddings), dtype=torch.float32)
    k = min(num_neighbors, embeddings.shape[0] - 1)
    return nearest_neighbors(embeddings, k).numpy()


def pca_basis(embeddings: np.ndarray, dims: int) -> np.ndarray:
    """The L2-normalised, centred embeddings projected on their first ``dims`` principal axes.

    Examples:
        >>> pca_basis(np.random.default_rng(0).normal(size=(20, 5)), 2).shape
        (20, 2)
    """
    if dims < 1:
        raise ValueError(f"dims must be positive, got {dims}")
    centred = _normalised(embeddings)
    centred = centred - centred.mean(axis=0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[: min(dims, axes.shape[0])].T


def pca_silhouette(reduced: np.ndarray, labels: np.ndarray) -> float:
    """The mean silhouette (euclidean) of ``labels`` in ``reduced`` (e.g. :func:`pca_basis`);
    -1 for a single cluster, where it is undefined. One labelling of :func:`pca_silhouettes`.

    Examples:
        >>> points = np.array([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]])
        >>> round(pca_silhouette(points, np.array([0, 0, 1, 1])), 3)
        0.986
    """
    return pca_silhouettes(reduced, [labels])[0]


def pca_silhouettes(reduced: np.ndarray, labellings: list[np.ndarray]) -> list[float]:
    """The mean silhouette (euclidean, as scikit-learn's ``silhouette_score``) of each labelling
    of the same points, -1 for a labelling of one cluster. The distances between the points are
    computed once for every labelling (a run scores 14 heads on the same sample), and each
    labelling costs one (N, N) x (N, K) product.

    Examples:
        >>> points = np.array([[0.0, 0], [0, 0.1], [5, 5], [5, 5.1]])
        >>> pca_silhouettes(points, [np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])])[0] > 0.9
        True
    """
    reduced = np.asarray(reduced, dtype=np.float64)
    for labels in labellings:
        _check(reduced, np.asarray(labels))
    squared = (reduced**2).sum(axis=1)
    gram = squared[:, None] + squared[None, :] - 2.0 * reduced @ reduced.T
    distances = np.sqrt(np.maximum(gram, 0.0))
    np.fill_diagonal(distances, 0.0)
    return [_silhouette(distances, np.asarray(labels)) for labels in labellings]


def _silhouette(distances: np.ndarray, labels: np.ndarray) -> float:
    labels = np.unique(labels, return_inverse=True)[1]
    sizes = np.bincount(labels)
    if len(sizes) < 2:
        return -1.0
    rows = np.arange(len(labels))
    totals = distances @ np.eye(len(sizes))[labels]  # (N, K): summed distance to each cluster
    own = totals[rows, labels] / np.maximum(sizes[labels] - 1, 1)
    means = totals / sizes
    means[rows, labels] = np.inf
    nearest = means.min(axis=1)
    spread = np.maximum(own, nearest)
    values = np.where(spread > 0, (nearest - own) / np.where(spread > 0, spread, 1.0), 0.0)
    values[sizes[labels] == 1] = 0.0  # a point alone in its cluster scores 0 (Rousseeuw)
    return round(float(values.mean()), 6)


def linear_generalisation(
    reduced: np.ndarray, labels: np.ndarray, seed: int = 0, chance: str = "kappa"
) -> float:
    """How well a logistic regression trained on the cluster ids of one half of the images
    predicts those of the other half (both halves, averaged), corrected for chance: Cohen's
    kappa (``chance="kappa"``: chance from the sizes of the clusters) or TURTLE's
    (``chance="uniform"``: (accuracy - 1/K) / (1 - 1/K), K the clusters of ``labels``).

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> points = np.repeat(4 * np.eye(3), 30, axis=0) + rng.normal(size=(90, 3))
        >>> truth = np.repeat(np.arange(3), 30)
        >>> linear_generalisation(points, truth) > linear_generalisation(points, rng.permutation(truth))
        True
        >>> linear_generalisation(points, truth, chance="uniform") > 0.9
        True
    """
    from sklearn.linear_model import LogisticRegression

    if chance not in ("kappa", "uniform"):
        raise ValueError(f"chance must be 'kappa' or 'uniform', got {chance!r}")
    reduced, labels = np.asarray(reduced), np.asarray(labels)
    _check(reduced, labels)
    num = int(labels.max()) + 1
    if len(np.unique(labels)) < 2:
        return 0.0
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    scores = []
    for train, test in (halves, halves[::-1]):
        if len(np.unique(labels[train])) < 2:
            scores.append(0.0)
            continue
        classifier = LogisticRegression(max_iter=300).fit(reduced[train], labels[train])
        predicted, truth = classifier.predict(reduced[test]), labels[test]
        observed = float((predicted == truth).mean())
        if chance == "uniform":
            expected = 1.0 / len(np.unique(labels))
        else:
            expected = float(
                (np.bincount(predicted, minlength=num) * np.bincount(truth, minlength=num)).sum()
                / len(truth) ** 2
            )
        scores.append((observed - expected) / (1.0 - expected) if expected < 1.0 else 0.0)
    return round(float(np.mean(scores)), 6)


def seed_agreement(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """The adjusted Rand index between two clusterings of the same images.

    Examples:
        >>> seed_agreement(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    from sklearn.metrics import adjusted_rand_score

    labels_a, labels_b = np.asarray(labels_a), np.asarray(labels_b)
    if labels_a.shape != labels_b.shape or labels_a.ndim != 1:
        raise ValueError(f"two clusterings of the same images: {labels_a.shape}, {labels_b.shape}")
    return round(float(adjusted_rand_score(labels_a, labels_b)), 6)
