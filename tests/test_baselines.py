"""The features' ceiling (secu_plugin.baselines) on real features: scikit-learn's digits
(pixels as features), and separable points where every method must be exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from secu_plugin.baselines import feature_ceiling, kmeans_baseline, knn_agreement

CLUSTERINGS = ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, np.ndarray]:
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32), data.target


@pytest.fixture(scope="module")
def ceiling(digits) -> dict:
    return feature_ceiling(*digits, num_clusters=10, seed=0)


def test_the_probe_is_the_ceiling_of_the_clusterings_on_digits(ceiling):
    probe = ceiling["linear_probe"]
    assert probe["supervised"] and probe["accuracy"] > 0.9
    assert probe["train_images"] + probe["test_images"] == 1797
    for name in CLUSTERINGS:
        metrics = ceiling[name]
        assert 0.5 < metrics["accuracy"] <= probe["accuracy"], name
        assert 0 < metrics["nmi"] <= 1 and -0.5 <= metrics["ari"] <= 1
    assert ceiling["images"] == 1797 and ceiling["whitening_dim"] == 64  # capped by D
    assert ceiling["spectral_knn_graph"]["images"] == 1797
    # Raw and whitened spaces are different spaces: their k-means and neighbours differ.
    assert ceiling["kmeans_raw"] != ceiling["kmeans_whitened"]
    agreement = ceiling["knn_agreement"]
    assert agreement["k"] == 5 and agreement["queries"] == 1797
    assert 0.9 < agreement["raw"] <= 1 and 0 <= agreement["whitened"] <= 1
    assert agreement["raw"] != agreement["whitened"]
    assert set(ceiling["seconds"]) >= {"kmeans_raw", "spectral_knn_graph", "linear_probe"}


def test_knn_agreement_matches_scikit_learn(digits):
    features, labels = digits
    queries = np.arange(0, 1797, 7)
    neighbors = NearestNeighbors(n_neighbors=6, metric="cosine").fit(features.numpy())
    found = neighbors.kneighbors(features[queries].numpy(), return_distance=False)[:, 1:]
    expected = (labels[found] == labels[queries, None]).mean()
    assert knn_agreement(features, labels, queries, k=5) == pytest.approx(expected, abs=0.01)


def test_separable_clusters_are_found_by_every_method():
    generator = torch.Generator().manual_seed(1)
    centers = 10 * torch.eye(4, 16)
    points = torch.cat([c + torch.randn(60, 16, generator=generator) for c in centers])
    # Whitening keeps the 3 directions that separate the 4 clusters (all 16 would give the
    # 13 noise directions the same weight as those 3).
    labels = np.repeat(np.arange(4), 60)
    ceiling = feature_ceiling(points, labels, num_clusters=4, seed=3, whitening=3)
    assert ceiling["whitening_dim"] == 3
    for name in CLUSTERINGS:
        scores = [ceiling[name][metric] for metric in ("accuracy", "nmi", "ari")]
        assert scores == pytest.approx([1.0, 1.0, 1.0]), name
    assert ceiling["knn_agreement"]["raw"] == ceiling["knn_agreement"]["whitened"] == 1.0
    assert ceiling["linear_probe"]["accuracy"] == 1.0


def test_caps_unlabelled_rows_and_the_seed(digits):
    features, labels = digits
    labels = labels.copy()
    labels[::3] = -1  # unlabelled: left out
    capped = {"max_images": 800, "sample_cap": 300, "probe_cap": 200, "spectral_cap": 250}
    first = feature_ceiling(features, labels, num_clusters=10, seed=0, **capped)
    assert first["images"] == 800
    assert first["spectral_knn_graph"]["images"] == 250 and first["knn_agreement"]["queries"] == 300
    assert first["linear_probe"]["train_images"] + first["linear_probe"]["test_images"] == 200
    again = feature_ceiling(features, labels, num_clusters=10, seed=0, **capped)
    other = feature_ceiling(features, labels, num_clusters=10, seed=1, **capped)
    for result in (first, again, other):
        result.pop("seconds")
    assert first == again and first != other


def test_bad_input_is_named(digits):
    features, labels = digits
    with pytest.raises(ValueError, match="labels must be"):
        feature_ceiling(features, labels[:-1], num_clusters=10)
    with pytest.raises(ValueError, match="two classes"):
        feature_ceiling(features, np.zeros(len(labels), dtype=int), num_clusters=10)
    with pytest.raises(ValueError, match="num_clusters"):
        feature_ceiling(features, labels, num_clusters=1)
    with pytest.raises(ValueError, match="features must be"):
        feature_ceiling(features[:, 0], labels, num_clusters=10)
    with pytest.raises(ValueError, match="sample_cap"):
        feature_ceiling(features, labels, num_clusters=10, sample_cap=5)


def test_kmeans_baseline_scores_digits(digits):
    features, labels = digits
    assert kmeans_baseline(features, labels, 10)["accuracy"] > 0.5


@pytest.mark.parametrize("normalize", [True, False])
def test_kmeans_baseline_is_scikit_learns_kmeans_with_the_same_settings(digits, normalize):
    """The one k-means baseline (the frozen heads' and the pixel benchmark's) against an
    independent computation: scikit-learn's KMeans with the same restarts and seed, fitted on
    half of the digits and scoring the other half."""
    from sklearn.cluster import KMeans

    from secu_plugin.metrics import clustering_metrics

    features, labels = digits
    fit, scored = features[::2], features[1::2]
    space = torch.nn.functional.normalize if normalize else lambda rows, dim: rows
    kmeans = KMeans(10, n_init=10, random_state=3).fit(space(fit, dim=1).numpy())
    expected = clustering_metrics(labels[1::2], kmeans.predict(space(scored, dim=1).numpy()))
    found = kmeans_baseline(
        fit, labels[1::2], 10, seed=3, normalize=normalize, eval_features=scored
    )
    assert found == expected
    on_fit = kmeans_baseline(fit, labels[::2], 10, seed=3, normalize=normalize)
    assert on_fit == clustering_metrics(labels[::2], kmeans.labels_)


@pytest.mark.slow
def test_merged_kmeans_reproduces_the_published_pixel_figures():
    """Merging the pixel benchmark's k-means into secu_plugin.baselines changed no figure:
    MNIST-5k (tuned on), seed 0, raw and 20-dimension whitened pixels, as published in
    docs/kmeans_pixels.json by the code before the merge (~10 s)."""
    import json
    from pathlib import Path

    from benchmarks.kmeans_baseline import pixel_baselines, pixels
    from secu_plugin.data import ImageDataset

    published = json.loads((Path(__file__).parents[1] / "docs" / "kmeans_pixels.json").read_text())
    (mnist5k,) = [found for found in published["sets"] if found["set"] == "mnist5k"]
    (run,) = [run for run in mnist5k["runs"] if run["seed"] == 0]
    images = ImageDataset.from_source("mnist5k", split="train")
    found = pixel_baselines(pixels(images), None, images.labels, 10, 0, (20,), False)
    assert found["kmeans_pixels"] == run["kmeans_pixels"]
    assert found["kmeans_whitened_pixels"]["20"] == run["kmeans_whitened_pixels"]["20"]
