"""The self-labeling phase of frozen heads (secu_plugin.frozen.self_labeling) and its settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from secu_plugin.frozen.head_presets import HEAD_PRESETS, SelfLabelSettings
from secu_plugin.frozen.self_labeling import confident_targets, self_label
from secu_plugin.train.presets import get_preset


def test_confident_targets_keep_the_share_of_every_cluster():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(300, 3, generator=generator)
    logits[:, 0] += 2.0  # cluster 0 is by far the largest
    targets = confident_targets(logits, 0.25)
    assigned = logits.argmax(1)
    for cluster in range(3):
        members = assigned == cluster
        kept = targets == cluster
        assert int(kept.sum()) == max(1, round(0.25 * int(members.sum())))
        assert bool((assigned[kept] == cluster).all())
        # the kept ones are the most confident of their cluster
        confidence = logits.softmax(1).max(1).values
        assert confidence[kept].min() >= confidence[members & ~kept].max()
    assert bool((targets[targets < 0] == -1).all())
    with pytest.raises(ValueError, match="fraction"):
        confident_targets(logits, 0)


def sklearn_digits() -> tuple[torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32) / 16, data.target


def test_self_labeling_keeps_the_head_and_centers_and_changes_them():
    features, _ = sklearn_digits()
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 16))
    centers = [nn.Parameter(torch.randn(10, 16)), nn.Parameter(torch.randn(20, 16))]
    before = [c.detach().clone() for c in centers]
    running_mean = head[1].running_mean.clone()
    settings = SelfLabelSettings(self_label_epochs=3)
    changes = self_label(head, centers, features, settings, batch_size=128, log=lambda _: None)
    assert len(changes) == 3 and changes[0] == 0.0 and all(0 <= c <= 1 for c in changes)
    assert all(not torch.equal(b, c.detach()) for b, c in zip(before, centers))
    # BatchNorm's statistics are those of the phase before (noisy inputs do not shift them)
    assert torch.equal(head[1].running_mean, running_mean)
    assert not head.training


def test_self_labeling_is_reproducible_from_its_seed():
    features, _ = sklearn_digits()

    def trained(seed: int) -> torch.Tensor:
        torch.manual_seed(0)
        head = nn.Linear(64, 8)
        centers = [nn.Parameter(torch.randn(10, 8))]
        settings = SelfLabelSettings(self_label_epochs=2)
        self_label(head, centers, features, settings, batch_size=128, seed=seed, log=str)
        return centers[0].detach()

    assert torch.equal(trained(0), trained(0))
    assert not torch.equal(trained(0), trained(1))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"self_label_epochs": -1}, "self_label_epochs"),
        ({"confident_fraction": 0.0}, "confident_fraction"),
        ({"confident_fraction": 1.5}, "confident_fraction"),
        ({"feature_dropout": 1.0}, "feature_dropout"),
        ({"feature_noise": -0.1}, "feature_noise"),
        ({"self_label_lr": 0.0}, "self_label_lr"),
    ],
)
def test_bad_settings_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        get_preset("frozen", HEAD_PRESETS, **change)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """'Pretrained' weights of timm's tiny test_efficientnet in a local file (random but fixed)."""
    from tests.launch import write_weights_file

    return write_weights_file(tmp_path_factory.mktemp("weights") / "test_efficientnet.safetensors")


def test_the_recipe_self_labels_and_writes_the_features_ceiling(tmp_path, weights_file):
    """recipes/train_head.py with a self-labeling phase: it runs after the SeCu epochs, and the
    run's results.json holds the ceiling of the features it clustered."""
    import json
    from pathlib import Path

    from tests.launch import TRAIN_HEAD, head_args, run_recipe, write_digit_folder

    digits = write_digit_folder(tmp_path / "digits", count=120)
    extra = ["self_label_epochs=2"]  # after head_args' --set items
    result = run_recipe(TRAIN_HEAD, *head_args(tmp_path, digits, weights_file), *extra)
    lines = result.stdout.splitlines()
    phase = [i for i, line in enumerate(lines) if line.startswith("self-labeling epoch")]
    last_secu = max(i for i, line in enumerate(lines) if line.startswith("epoch 2:"))
    assert len(phase) == 2 and phase[0] > last_secu
    summary = json.loads(lines[-1])
    results = json.loads((Path(summary["output_dir"]) / "results.json").read_text())
    ceiling = results["feature_ceiling"]
    assert ceiling["images"] == 120 and ceiling["num_clusters"] == 10
    assert ceiling["linear_probe"]["supervised"] is True
    assert summary["knn_agreement"] == ceiling["knn_agreement"]["whitened"]
    assert summary["best_plain_clustering_accuracy"] == max(
        ceiling[m]["accuracy"] for m in ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph")
    )
