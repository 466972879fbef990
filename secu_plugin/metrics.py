"""Clustering quality against ground-truth labels: accuracy (Hungarian matching), NMI, ARI.

These are the three metrics reported by SeCu, SCAN and most deep-clustering papers. Entries
whose true label is negative (unlabeled) are left out of every metric. A module of its own
(numpy, scipy, scikit-learn): training's evaluation and the cluster report both score with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


def _labeled_pairs(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Validated int64 label arrays with the unlabeled entries (y_true < 0) removed."""
    true = np.asarray(y_true)
    pred = np.asarray(y_pred)
    if true.ndim != 1 or pred.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D, got shapes {true.shape} and {pred.shape}")
    if len(true) != len(pred):
        raise ValueError(
            f"y_true and y_pred must have the same length, got {len(true)} and {len(pred)}"
        )
    if len(true) == 0:
        raise ValueError("y_true and y_pred are empty")
    for name, values in (("y_true", true), ("y_pred", pred)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    labeled = true >= 0
    if not labeled.any():
        raise ValueError("y_true has no labeled entries (all are < 0)")
    true, pred = true[labeled].astype(np.int64), pred[labeled].astype(np.int64)
    if (pred < 0).any():
        raise ValueError("y_pred must be >= 0 for every labeled entry")
    return true, pred


def cluster_accuracy(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int]
) -> float:
    """Clustering accuracy: the best one-to-one mapping of clusters to classes.

    The mapping maximizes the number of matched samples (Hungarian algorithm on the
    clusters x classes contingency table). With more clusters than classes, the
    clusters left unmatched count as wrong; with fewer, the unmatched classes do.

    Args:
        y_true: True class of each sample; entries < 0 are unlabeled and ignored.
        y_pred: Cluster id (>= 0) of each sample.

    Returns:
        The fraction of labeled samples whose cluster maps to their class, in [0, 1].

    Examples:
        >>> cluster_accuracy([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1])
        1.0
        >>> cluster_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1])
        0.8333333333333334
        >>> cluster_accuracy([0, 1, -1], [5, 3, 0])
        1.0
    """
    true, pred = _labeled_pairs(y_true, y_pred)
    # Compact ids first, so that sparse ids (e.g. cluster 5000 of 10) keep the table small.
    _, true_ids = np.unique(true, return_inverse=True)
    _, pred_ids = np.unique(pred, return_inverse=True)
    contingency = np.zeros((pred_ids.max() + 1, true_ids.max() + 1), dtype=np.int64)
    np.add.at(contingency, (pred_ids, true_ids), 1)
    rows, cols = linear_sum_assignment(contingency, maximize=True)
    return float(contingency[rows, cols].sum() / len(true))


def clustering_metrics(
    y_true: np.ndarray | Sequence[int], y_pred: np.ndarray | Sequence[int]
) -> dict[str, float]:
    """Accuracy, normalized mutual information and adjusted Rand index of a clustering.

    NMI and ARI are scikit-learn's ``normalized_mutual_info_score`` (arithmetic mean
    normalization) and ``adjusted_rand_score``. Entries with ``y_true < 0`` are ignored.

    Args:
        y_true: True class of each sample; entries < 0 are unlabeled and ignored.
        y_pred: Cluster id (>= 0) of each sample.

    Returns:
        ``{"accuracy": ..., "nmi": ..., "ari": ...}``.

    Examples:
        >>> clustering_metrics([0, 0, 1, 1], [1, 1, 0, 0])
        {'accuracy': 1.0, 'nmi': 1.0, 'ari': 1.0}
        >>> {k: round(v, 3) for k, v in clustering_metrics([0, 0, 1, 1], [0, 1, 0, 1]).items()}
        {'accuracy': 0.5, 'nmi': 0.0, 'ari': -0.5}
    """
    true, pred = _labeled_pairs(y_true, y_pred)
    return {
        "accuracy": cluster_accuracy(true, pred),
        "nmi": float(normalized_mutual_info_score(true, pred)),
        "ari": float(adjusted_rand_score(true, pred)),
    }
