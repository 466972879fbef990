"""The head objectives of the frozen path: TURTLE and SCAN recover separated groups, their
linear heads export exactly as SeCu's projection and centers, and the recipe runs with them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from secu_plugin.core.nearest import nearest_center
from secu_plugin.core.neighbors import nearest_neighbors
from secu_plugin.frozen.head_presets import HEAD_PRESETS, ObjectiveSettings
from secu_plugin.frozen.linear_heads import WhitenedSpace, linear_heads_as_centers
from secu_plugin.frozen.objective_scan import ScanHeads, scan_criterion
from secu_plugin.frozen.objective_temi import TemiHeads
from secu_plugin.frozen.objective_turtle import TurtleHeads
from secu_plugin.frozen.objectives import train_objective_heads
from secu_plugin.metrics import cluster_accuracy
from secu_plugin.train.presets import get_preset


def blobs(groups: int = 4, per_group: int = 80, dim: int = 12) -> tuple[torch.Tensor, np.ndarray]:
    """Separated Gaussian groups of unequal spread, in a random order."""
    generator = torch.Generator().manual_seed(3)
    means = torch.randn(groups, dim, generator=generator) * 3
    truth = torch.arange(groups * per_group) % groups
    spread = 0.5 + truth[:, None].float() / groups
    points = means[truth] + spread * torch.randn(len(truth), dim, generator=generator)
    order = torch.randperm(len(truth), generator=generator)
    return points[order], truth[order].numpy()


def test_turtle_recovers_separated_groups_at_every_head():
    points, truth = blobs()
    heads = TurtleHeads([4, 8], iterations=150, lr=0.01).fit(points, seed=1)
    found = heads.predict(points)
    assert cluster_accuracy(truth, found[0].numpy()) > 0.95
    assert len(found[1].unique()) > 4  # the K=8 head uses more than the true groups


def test_turtle_warm_start_carries_the_inner_classifier_over():
    points, truth = blobs()
    heads = TurtleHeads([4], iterations=150, lr=0.01, inner_steps=2, warm_start=True)
    heads.fit(points, seed=1)
    assert cluster_accuracy(truth, heads.predict(points)[0].numpy()) > 0.95
    inner = heads.fresh_inner(points.shape[1], 4, torch.Generator().manual_seed(0))
    labels = torch.full((len(points), 4), 0.25)
    heads.inner_fit(points, labels, inner)
    heads.inner_fit(points, labels, inner)
    assert inner["step"] == 4  # Adam's step count runs on across outer steps


def test_scan_recovers_separated_groups_from_their_neighbours():
    points, truth = blobs()
    neighbors = nearest_neighbors(points, k=10)
    heads = ScanHeads([4], steps=200).fit(points, neighbors, seed=0)
    assert cluster_accuracy(truth, heads.predict(points)[0].numpy()) > 0.95
    with pytest.raises(ValueError, match="neighbors has"):
        heads.fit(points, neighbors[:10])


def test_scan_keeps_the_head_of_lowest_criterion_per_k():
    points, truth = blobs()
    neighbors = nearest_neighbors(points, k=10)
    heads = ScanHeads([4, 6], steps=100, heads_per_k=3, self_label_steps=0)
    heads.fit(points, neighbors, seed=0)
    assert [len(c) for c in heads.criteria] == [3, 3] and heads.weight.shape[0] == 10
    kept = heads.predict(points)[0]
    probs = (points @ heads.split()[0][0].T + heads.split()[1][0]).softmax(1)
    assert scan_criterion(probs, neighbors) == pytest.approx(min(heads.criteria[0]), abs=1e-3)
    assert cluster_accuracy(truth, kept.numpy()) > 0.95
    with pytest.raises(ValueError, match="heads_per_k"):
        ScanHeads([4], heads_per_k=0)


def test_temi_recovers_separated_groups_and_keeps_its_lowest_loss_head():
    points, truth = blobs()
    neighbors = nearest_neighbors(points, k=10)
    heads = TemiHeads([4, 6], heads_per_k=3, steps=150, batch_size=128).fit(points, neighbors)
    found = heads.predict(points)
    assert cluster_accuracy(truth, found[0].numpy()) > 0.95
    assert len(found[1].unique()) > 4  # the K=6 head uses more than the true groups
    assert [len(losses) for losses in heads.losses] == [3, 3]
    chosen = heads.teachers[0][0]  # the first matrix of the K=4 head kept
    assert chosen.shape == (1, points.shape[1], heads.hidden)
    with pytest.raises(ValueError, match="neighbors must be"):
        heads.fit(points, neighbors[:10])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"beta": 1.5}, "beta"),
        ({"momentum": 1.0}, "momentum"),
        ({"heads_per_k": 0}, "positive"),
        ({"num_clusters": [1]}, "2\\+ clusters"),
    ],
)
def test_temi_refuses_bad_settings(change, message):
    with pytest.raises(ValueError, match=message):
        TemiHeads(**{"num_clusters": [3], **change})


def test_temi_heads_predict_only_after_fit():
    with pytest.raises(ValueError, match="fit first"):
        TemiHeads([3]).predict(torch.zeros(2, 4))


def test_linear_heads_export_with_the_same_clusters():
    """The cosine rule of the exported model gives the linear heads' argmax on every image."""
    points, _ = blobs()
    space = WhitenedSpace.fit(points, dim=6)
    weights = [torch.randn(4, 6), torch.randn(7, 6) * 5]
    biases = [torch.randn(4), torch.randn(7)]
    projection, centers, temperature = linear_heads_as_centers(space, weights, biases)
    assert temperature > 0
    for weight, bias, center in zip(weights, biases, centers):
        ids, _ = nearest_center(projection(points), center)
        assert torch.equal(ids, (space(points) @ weight.T + bias).argmax(1))


def test_objective_heads_are_exported_and_agree():
    points, _ = blobs()
    settings = ObjectiveSettings(objective="scan", objective_dim=8, objective_steps=200)
    heads = train_objective_heads(settings, points.abs(), [4, 6], seed=0)
    assert heads.labels.shape == (2, len(points)) and min(heads.agreement) > 0.9
    temi = ObjectiveSettings(objective="temi", objective_dim=8, objective_steps=100, temi_heads=2)
    heads = train_objective_heads(temi, points, [4], seed=0)
    assert min(heads.agreement) > 0.9  # TEMI's MLP heads refitted as linear ones
    with pytest.raises(ValueError, match="turtle, temi or scan"):
        train_objective_heads(ObjectiveSettings(), points, [4])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"objective": "temi2"}, "objective='temi2' is not one of the allowed values: 'secu'"),
        ({"objective_dim": -1}, "objective_dim"),
        ({"temi_beta": 0.0}, "temi_beta"),
        ({"temi_neighbors": 0}, "temi_neighbors"),
    ],
)
def test_bad_objective_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        get_preset("frozen", HEAD_PRESETS, **change)


def test_the_recipe_trains_turtle_heads(tmp_path):
    """recipes/train_head.py --set objective=turtle: every head of the grid, the K signal, the
    exported model (a linear projection) and the features' ceiling, as for SeCu heads."""
    from secu_plugin import SeCuModel
    from tests.launch import (
        TRAIN_HEAD,
        head_args,
        run_recipe,
        write_digit_folder,
        write_weights_file,
    )

    weights = write_weights_file(tmp_path / "test_efficientnet.safetensors")
    digits = write_digit_folder(tmp_path / "digits", count=120)
    extra = ["objective=turtle", "objective_steps=20", "objective_dim=16"]
    result = run_recipe(TRAIN_HEAD, *head_args(tmp_path, digits, weights), *extra)
    assert "turtle heads; exported agreement per head" in result.stdout
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["epochs"] == 0 and summary["recommended_num_clusters"] in (10, 20)
    results = json.loads((Path(summary["output_dir"]) / "results.json").read_text())
    assert [h["num_clusters"] for h in results["k_selection"]["heads"]] == [10, 20]
    assert results["feature_ceiling"]["linear_probe"]["supervised"] is True
    probe = summary["linear_probe_accuracy_supervised"]
    page = (Path(summary["output_dir"]) / "report" / "index.html").read_text()
    assert f"ceiling of the same features: linear probe (supervised) ACC {probe:.3f}" in page
    model = SeCuModel.from_pretrained(summary["model_dir"])
    assert model.config["projection_layers"] == 1 and model.num_clusters == [10, 20]
