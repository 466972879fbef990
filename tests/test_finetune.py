"""Fine-tuning a frozen-head model by self-labeling (recipes/finetune.py and its pieces)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from secu_plugin import SeCuModel
from secu_plugin.frozen.finetune import (
    StagedBackbone,
    neighbor_agreement,
    self_label_loss,
)
from tests.launch import ROOT, write_digit_folder
from tests.test_pretrained import run_recipe as run_train_head

TRAIN_HEAD = ROOT / "recipes" / "train_head.py"
FINETUNE = ROOT / "recipes" / "finetune.py"


def run_finetune(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(FINETUNE), "--no_progress", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "SECU_NUM_THREADS": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=environment, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_the_tail_trains_the_backbone_in_place_and_the_trunk_stays_frozen():
    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", num_classes=0).eval()
    staged = StagedBackbone(backbone, trainable_stages=2)
    trunk_before = [p.clone() for p in staged.trunk_modules.parameters()]
    x = torch.randn(4, 3, 32, 32)
    activations = staged.trunk(x)
    before = backbone(x).detach()
    assert torch.allclose(staged.tail(activations), before, atol=1e-5)
    optimizer = torch.optim.SGD([p for m in staged.tail_modules for p in m.parameters()], lr=0.1)
    staged.tail(activations).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(trunk_before, staged.trunk_modules.parameters()))
    # the backbone itself changed: the tail's modules are its own
    after = backbone(x).detach()
    assert not torch.allclose(after, before)
    assert torch.allclose(staged.tail(staged.trunk(x)), after, atol=1e-5)
    with pytest.raises(ValueError, match="trainable_stages"):
        StagedBackbone(backbone, trainable_stages=len(backbone.blocks) + 1)
    with pytest.raises(ValueError, match="EfficientNet-family"):
        StagedBackbone(timm.create_model("resnet10t", num_classes=0))


def test_neighbor_agreement_and_the_loss_prefer_clusters_that_follow_the_graph():
    neighbors = torch.tensor([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    follows = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mixed = torch.tensor([[0, 1, 0, 1, 0, 1]])
    assert neighbor_agreement(follows, neighbors) == 1.0
    assert neighbor_agreement(mixed, neighbors) < 0.5
    centers = [torch.eye(2)]
    z = torch.tensor([[1.0, 0.1], [0.1, 1.0]], requires_grad=True)
    keep = torch.tensor([[True, True]])
    right = self_label_loss(z, centers, torch.tensor([[0, 1]]), keep, 0.2)
    wrong = self_label_loss(z, centers, torch.tensor([[1, 0]]), keep, 0.2)
    assert right < wrong
    none = self_label_loss(z, centers, torch.tensor([[0, 1]]), ~keep, 0.2)
    assert float(none) == 0.0


@pytest.fixture(scope="module")
def frozen_model(tmp_path_factory) -> tuple[Path, Path]:
    """A frozen-head model of timm's tiny test_efficientnet on 120 digit images."""
    root = tmp_path_factory.mktemp("finetune")
    digits = write_digit_folder(root / "digits", count=120)
    torch.manual_seed(0)
    weights = root / "test_efficientnet.safetensors"
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(weights))
    run_train_head(
        TRAIN_HEAD, "--data", str(digits), "--backbone", "test_efficientnet",
        "--pretrained_file", str(weights), "--input_size", "32",
        "--cache_dir", str(root / "cache"), "--output_dir", str(root / "frozen"),
        "--set", "num_clusters=[10,20]", "batch_size=32", "epochs=3", "warmup_epochs=1",
        "kmeans_epoch=2",
    )  # fmt: skip
    return root, digits


def test_finetune_starts_from_the_frozen_model_and_never_ends_below_its_criterion(frozen_model):
    root, _ = frozen_model
    start = SeCuModel.from_pretrained(root / "frozen" / "model")
    out = root / "finetuned"
    result = run_finetune(
        "--model", str(root / "frozen"), "--output_dir", str(out),
        "--cache_dir", str(root / "cache"), "--epochs", "2", "--augmented_views", "2",
        "--batch_size", "32", "--lr", "1e-3",
    )  # fmt: skip
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    report = json.loads((out / "results.json").read_text())
    history = report["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    # the kept state is the best by the label-free criterion, the start included
    kept = next(h for h in history if h["epoch"] == summary["kept_epoch"])
    assert kept["neighbor_agreement"] == max(
        h["neighbor_agreement"] for h in history
        if h["size_balance"] >= history[0]["size_balance"] - 0.02
    )  # fmt: skip
    assert summary["accuracy"] == kept["accuracy"]
    assert summary["start_accuracy"] == history[0]["accuracy"]
    finetuned = SeCuModel.from_pretrained(out / "model")
    assert finetuned.num_clusters == start.num_clusters
    assert finetuned.training_recipe["finetuned_from"]["sha256"]
    # the first stages are the start's; the centers are the start's (fixed classifier)
    assert torch.equal(finetuned.backbone.conv_stem.weight, start.backbone.conv_stem.weight)
    for before, after in zip(start.centers, finetuned.centers):
        assert torch.equal(before, after)
    changed = not torch.equal(finetuned.backbone.conv_head.weight, start.backbone.conv_head.weight)
    assert changed == (summary["kept_epoch"] > 0)


def test_finetune_refuses_bad_input_with_a_clear_message(frozen_model, tmp_path):
    root, _ = frozen_model
    missing = run_finetune("--model", str(tmp_path), check=False)
    assert missing.returncode == 2 and "model.safetensors" in missing.stderr
    bad = run_finetune(
        "--model", str(root / "frozen"), "--confident_fraction", "1.5",
        "--output_dir", str(tmp_path / "out"), check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--confident_fraction" in bad.stderr
