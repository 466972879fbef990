"""What frozen features allow: simple clusterings of the same cached features that SeCu heads
are trained on, and a supervised linear probe as their ceiling.

A SeCu head on frozen features is worth its training only where it beats k-means on those
features; how far it is from the linear probe says how much of what the features separate it
recovers without labels. :func:`feature_ceiling` measures, on one set of features:

- k-means (10 restarts) on the L2-normalized raw features, and on the square-rooted,
  PCA-whitened features in which the heads find their neighbours
  (:func:`secu_plugin.core.neighbors.whitened`, L2-normalized: the heads' neighbours are by
  cosine similarity there);
- spectral clustering of the k-NN graph (exact neighbours in the whitened space);
- the 5-NN label agreement in both spaces: how often a neighbour shares its image's class,
  the quality of the pairs the heads train on;
- a logistic-regression probe trained on half the images with their labels, scored on the
  other half: supervised, a ceiling and not a rival.

Bounded for ~50k x 1280 features on a few CPU cores: every method sees at most ``max_images``
images (a seeded random subset); the k-NN queries at most ``sample_cap`` of them (their
neighbours searched among all), spectral clustering at most ``spectral_cap``, the probe at most
``probe_cap``. The result says how many each used.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from secu_plugin.core.neighbors import nearest_neighbors, whitened
from secu_plugin.metrics import clustering_metrics

MAX_IMAGES = 50_000
SAMPLE_CAP = 20_000  # the k-NN queries
# Spectral clustering's graph: scikit-learn's ARPACK solver factorizes the graph's Laplacian,
# whose fill-in grows about cubically (10,000 images of noisy 1280-d features: 178 s on 2 cores).
SPECTRAL_CAP = 5_000
PROBE_CAP = 20_000
GRAPH_NEIGHBORS = 10  # scikit-learn's default for a k-NN affinity


def kmeans_baseline(
    features: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    k: int,
    seed: int = 0,
    *,
    normalize: bool = True,
    eval_features: torch.Tensor | np.ndarray | None = None,
) -> dict:
    """ACC / NMI / ARI of k-means (scikit-learn, 10 restarts, ``seed``) fitted on ``features``
    (N, D), L2-normalized first unless ``normalize`` is False: what SeCu heads on the same
    features, or a run from scratch on the same pixels, are compared with.

    ``labels`` are those of the scored images: ``features`` themselves, or ``eval_features``
    (M, D) where given, each assigned to the nearest fitted center.

    Examples:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> kmeans_baseline(points, np.array([0, 0, 1, 1]), k=2)["accuracy"]
        1.0
        >>> kmeans_baseline(points, np.array([1, 0]), k=2, normalize=False,
        ...                 eval_features=points[[3, 0]])["accuracy"]
        1.0
    """
    found = kmeans_clusters(features, k, seed, normalize=normalize, eval_features=eval_features)
    return clustering_metrics(labels, found)


def kmeans_clusters(
    features: torch.Tensor | np.ndarray,
    k: int,
    seed: int = 0,
    *,
    normalize: bool = True,
    eval_features: torch.Tensor | np.ndarray | None = None,
) -> np.ndarray:
    """The clusters of :func:`kmeans_baseline`'s k-means: of ``features`` (N,), or of
    ``eval_features`` (M,) where given (each the nearest fitted center); for a score that
    reads no labels.

    Examples:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> found = kmeans_clusters(points, k=2)
        >>> bool(found[0] == found[1] != found[2] == found[3])
        True
    """
    from sklearn.cluster import KMeans

    def prepared(rows: torch.Tensor | np.ndarray) -> np.ndarray:
        rows = torch.as_tensor(rows).float()
        return (F.normalize(rows, dim=1) if normalize else rows).numpy()

    kmeans = KMeans(k, n_init=10, random_state=seed).fit(prepared(features))
    return kmeans.labels_ if eval_features is None else kmeans.predict(prepared(eval_features))


def knn_agreement(space: torch.Tensor, labels: np.ndarray, queries: np.ndarray, k: int) -> float:
    """The share of the ``k`` nearest neighbours (cosine similarity, among all rows of
    ``space``, never the row itself) of the rows ``queries`` that have the query's label.

    Examples:
        >>> points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]])
        >>> knn_agreement(points, np.array([0, 0, 1, 1, 0]), np.arange(5), k=1)
        0.6
    """
    neighbors = nearest_neighbors(space, k, block_size=512, queries=torch.as_tensor(queries))
    labels = np.asarray(labels)
    return float((labels[neighbors.numpy()] == labels[np.asarray(queries), None]).mean())


def spectral_clustering(space: torch.Tensor, k: int, seed: int) -> np.ndarray:
    """Spectral clustering (scikit-learn) of the symmetrized graph of every row's
    ``GRAPH_NEIGHBORS`` exact nearest neighbours in ``space`` (cosine similarity)."""
    from scipy.sparse import csr_matrix
    from sklearn.cluster import SpectralClustering

    rows = len(space)
    neighbors = nearest_neighbors(space, min(GRAPH_NEIGHBORS, rows - 1)).numpy()
    graph = csr_matrix(
        (
            np.ones(neighbors.size),
            (np.repeat(np.arange(rows), neighbors.shape[1]), neighbors.ravel()),
        ),
        shape=(rows, rows),
    )
    affinity = 0.5 * (graph + graph.T)
    with warnings.catch_warnings():  # a graph in several pieces is expected on hard data
        warnings.filterwarnings("ignore", message="Graph is not fully connected")
        model = SpectralClustering(k, affinity="precomputed", random_state=seed, n_init=10)
        return model.fit_predict(affinity)


def linear_probe(features: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Accuracy of a logistic regression (standardized features) trained on a stratified half
    of the rows and scored on the other half."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=0.5, random_state=seed, stratify=stratify
    )
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(x_train, y_train)
    return {
        "accuracy": round(float(probe.score(x_test, y_test)), 4),
        "train_images": len(y_train),
        "test_images": len(y_test),
    }


def _rounded(metrics: dict) -> dict:
    return {name: round(float(value), 4) for name, value in metrics.items()}


def feature_ceiling(
    features: torch.Tensor | np.ndarray,
    labels: np.ndarray,
    num_clusters: int,
    seed: int = 0,
    whitening: int = 256,
    num_neighbors: int = 5,
    max_images: int = MAX_IMAGES,
    sample_cap: int = SAMPLE_CAP,
    probe_cap: int = PROBE_CAP,
    spectral_cap: int = SPECTRAL_CAP,
) -> dict:
    """k-means (raw and whitened), spectral clustering, k-NN agreement and a linear probe on
    ``features`` (N, D) with class ``labels`` (N,; -1: unlabelled, left out).

    ``whitening``: the whitened space's dimensions (capped by D and N - 1), as the heads'
    ``neighbor_whitening``; ``num_neighbors``: the k of the agreement, as the heads'. Clusterings
    are scored with ACC / NMI / ARI against ``labels`` (:mod:`secu_plugin.metrics`).

    Examples:
        >>> generator = torch.Generator().manual_seed(0)
        >>> centers = 5 * torch.eye(3, 8)
        >>> points = torch.cat([c + torch.randn(40, 8, generator=generator) for c in centers])
        >>> ceiling = feature_ceiling(points, np.repeat([0, 1, 2], 40), num_clusters=3)
        >>> ceiling["kmeans_raw"]["accuracy"] > 0.9, ceiling["linear_probe"]["accuracy"] > 0.9
        (True, True)
        >>> sorted(ceiling["knn_agreement"])
        ['k', 'queries', 'raw', 'whitened']
    """
    features = torch.as_tensor(features)
    labels = np.asarray(labels)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {tuple(features.shape)}")
    if labels.shape != (len(features),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be ({len(features)},) integers, got shape {labels.shape} {labels.dtype}"
        )
    labelled = np.flatnonzero(labels >= 0)
    if len(np.unique(labels[labelled])) < 2:
        raise ValueError("labels must have at least two classes (-1: unlabelled)")
    if isinstance(num_clusters, bool) or not isinstance(num_clusters, int) or num_clusters < 2:
        raise ValueError(f"num_clusters must be an int >= 2, got {num_clusters!r}")
    for name, cap in (
        ("max_images", max_images),
        ("sample_cap", sample_cap),
        ("probe_cap", probe_cap),
        ("spectral_cap", spectral_cap),
    ):
        if cap < 2 * num_clusters:
            raise ValueError(f"{name} must be at least 2 * num_clusters, got {cap}")
    if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, int) or num_neighbors < 1:
        raise ValueError(f"num_neighbors must be a positive int, got {num_neighbors!r}")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.permutation(labelled)[:max_images])
    if len(chosen) <= max(num_clusters, num_neighbors) + 1:
        raise ValueError(
            f"{len(chosen)} labelled images are too few for {num_clusters} clusters "
            f"and {num_neighbors} neighbours"
        )
    labels = labels[chosen]
    timings = {}
    started = time.time()

    raw = F.normalize(features[torch.as_tensor(chosen)].float(), dim=1)
    dim = min(whitening, raw.shape[1], len(raw) - 1)
    white = F.normalize(whitened(features[torch.as_tensor(chosen)], dim), dim=1)
    timings["whitening"] = time.time() - started

    result: dict = {
        "images": len(chosen),
        "num_clusters": num_clusters,
        "seed": seed,
        "whitening_dim": dim,
    }
    for name, space in (("kmeans_raw", raw), ("kmeans_whitened", white)):
        started = time.time()
        result[name] = _rounded(kmeans_baseline(space, labels, num_clusters, seed))
        timings[name] = time.time() - started

    started = time.time()
    graphed = np.sort(rng.permutation(len(chosen))[:spectral_cap])
    assigned = spectral_clustering(white[torch.as_tensor(graphed)], num_clusters, seed)
    result["spectral_knn_graph"] = {
        **_rounded(clustering_metrics(labels[graphed], assigned)),
        "images": len(graphed),
        "graph_neighbors": min(GRAPH_NEIGHBORS, len(graphed) - 1),
        "space": "whitened",
    }
    timings["spectral_knn_graph"] = time.time() - started

    started = time.time()
    sample = np.sort(rng.permutation(len(chosen))[:sample_cap])
    result["knn_agreement"] = {
        "k": num_neighbors,
        "queries": len(sample),
        **{
            name: round(knn_agreement(space, labels, sample, num_neighbors), 4)
            for name, space in (("raw", raw), ("whitened", white))
        },
    }
    timings["knn_agreement"] = time.time() - started

    started = time.time()
    probed = np.sort(rng.permutation(len(chosen))[:probe_cap])
    result["linear_probe"] = {
        **linear_probe(raw[torch.as_tensor(probed)].numpy(), labels[probed], seed),
        "supervised": True,  # a ceiling, not a rival: it sees the labels
    }
    timings["linear_probe"] = time.time() - started
    result["seconds"] = {name: round(value, 2) for name, value in timings.items()}
    return result


PLAIN_CLUSTERINGS = ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph")


def ceiling_headline(ceiling: dict) -> dict:
    """The final line's figures of a :func:`feature_ceiling` record.

    Examples:
        >>> record = {"kmeans_raw": {"accuracy": 0.5}, "kmeans_whitened": {"accuracy": 0.6},
        ...           "spectral_knn_graph": {"accuracy": 0.7}, "knn_agreement": {"whitened": 0.9},
        ...           "linear_probe": {"accuracy": 0.95}, "seconds_total": 2.0}
        >>> ceiling_headline(record)["best_plain_clustering_accuracy"]
        0.7
    """
    return {
        "best_plain_clustering_accuracy": max(ceiling[m]["accuracy"] for m in PLAIN_CLUSTERINGS),
        "knn_agreement": ceiling["knn_agreement"]["whitened"],
        "linear_probe_accuracy_supervised": ceiling["linear_probe"]["accuracy"],
        "seconds_ceiling": ceiling.get("seconds_total"),
    }


def report_ceiling(ceiling: dict) -> dict[str, float]:
    """What the cluster report shows beside each head's ACC, by name ({} without a ceiling).

    Examples:
        >>> record = {"kmeans_raw": {"accuracy": 0.5}, "kmeans_whitened": {"accuracy": 0.6},
        ...           "spectral_knn_graph": {"accuracy": 0.7}, "knn_agreement": {"whitened": 0.9},
        ...           "linear_probe": {"accuracy": 0.95}}
        >>> report_ceiling(record)
        {'linear probe (supervised)': 0.95, 'best plain clustering': 0.7}
        >>> report_ceiling({})
        {}
    """
    if not ceiling:
        return {}
    headline = ceiling_headline(ceiling)
    return {
        "linear probe (supervised)": headline["linear_probe_accuracy_supervised"],
        "best plain clustering": headline["best_plain_clustering_accuracy"],
    }
