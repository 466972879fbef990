"""Tests for secu_plugin.metrics on small hand-checked labelings."""

from __future__ import annotations

import numpy as np
import pytest

from secu_plugin.metrics import cluster_accuracy, clustering_metrics


def test_permuted_labels_are_perfect() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2, 3])
    y_pred = np.array([3, 3, 0, 0, 1, 1, 2])
    assert cluster_accuracy(y_true, y_pred) == 1.0
    assert clustering_metrics(y_true, y_pred) == pytest.approx(
        {"accuracy": 1.0, "nmi": 1.0, "ari": 1.0}
    )


def test_partial_match() -> None:
    # Clusters: 0 -> {a, a, b}, 1 -> {b, b, c}, 2 -> {c, c, c, a}.
    # Best mapping 0->a (2), 1->b (2), 2->c (3): 7 of 10 right.
    y_true = np.array([0, 0, 1, 1, 1, 2, 2, 2, 2, 0])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(0.7)


def test_more_clusters_than_classes() -> None:
    # Class 0 split over clusters 0 and 1: only one of them can map to it.
    y_true = [0, 0, 0, 0, 1, 1]
    y_pred = [0, 0, 1, 1, 2, 2]
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_fewer_clusters_than_classes() -> None:
    # Everything in one cluster: it maps to the largest class.
    assert cluster_accuracy([0, 0, 0, 1, 2], [7, 7, 7, 7, 7]) == pytest.approx(3 / 5)


def test_sparse_cluster_ids() -> None:
    assert cluster_accuracy([0, 1, 1], [10_000, 3, 3]) == 1.0


def test_unlabeled_entries_are_ignored() -> None:
    y_true = [0, 0, 1, 1, -1, -1]
    y_pred = [1, 1, 0, 0, 0, 1]
    assert clustering_metrics(y_true, y_pred) == pytest.approx(
        {"accuracy": 1.0, "nmi": 1.0, "ari": 1.0}
    )


def test_independent_labeling() -> None:
    metrics = clustering_metrics([0, 0, 1, 1], [0, 1, 0, 1])
    assert metrics["accuracy"] == 0.5
    assert metrics["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert metrics["ari"] == pytest.approx(-0.5)
    assert all(isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize(
    ("y_true", "y_pred", "message"),
    [
        ([0, 1], [0], "same length"),
        ([], [], "empty"),
        ([-1, -1], [0, 1], "no labeled"),
        ([0.5, 1.0], [0, 1], "integers"),
        ([0, 1], [0, -2], "y_pred must be >= 0"),
        ([[0, 1]], [[0, 1]], "1-D"),
    ],
)
def test_bad_input(y_true, y_pred, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        clustering_metrics(y_true, y_pred)
    with pytest.raises(ValueError, match=message):
        cluster_accuracy(y_true, y_pred)
