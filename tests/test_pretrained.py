"""Pretrained backbones: the feature cache, the pairs, the frozen-backbone recipe and its model,
train.py's refusal of pretrained weights (fine-tuning is recipes/finetune.py), and the real
EfficientNet-Lite0 weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from secu_plugin import SeCuModel
from secu_plugin.core.neighbors import nearest_neighbors
from secu_plugin.data import ImageDataset
from secu_plugin.data.feature_pairs import CachedPairs
from tests.in_process import run_here
from tests.launch import (
    TRAIN,
    TRAIN_HEAD,
    head_args,
    run_recipe,
    write_digit_folder,
    write_weights_file,
)
from tests.test_readme import check_final_line_examples


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    return write_weights_file(tmp_path_factory.mktemp("weights") / "test_efficientnet.safetensors")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), count=120)


def test_nearest_neighbors_are_exact_in_any_block_size():
    features = torch.randn(50, 8)
    normalized = torch.nn.functional.normalize(features, dim=1)
    similarity = normalized @ normalized.T
    similarity.fill_diagonal_(-float("inf"))
    expected = similarity.topk(4, dim=1).indices
    for block_size in (1, 7, 50, 64):
        assert torch.equal(nearest_neighbors(features.half().float(), 4, block_size), expected)
    with pytest.raises(ValueError, match="k must be"):
        nearest_neighbors(features, 50)


def test_whitened_space_and_the_kmeans_warm_start():
    """The neighbour space has unit covariance; the warm start puts each of two separated
    clusters under one center and writes them to the memory."""
    from secu_plugin import SeCuCenterBank
    from secu_plugin.core.neighbors import whitened

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 6, generator=generator).abs() * torch.tensor([5.0, 1, 1, 1, 1, 0.1])
    space = whitened(features, dim=4)
    assert torch.allclose(space.T @ space / 400, torch.eye(4), atol=1e-3)
    labels = torch.arange(400) % 2
    points = torch.randn(400, 3, generator=generator) * 0.1
    points[:, 0] += labels * 2.0 - 1.0
    bank = SeCuCenterBank(dim=3, num_clusters=[2], num_instances=400)
    bank.warm_start(points)
    memory = bank.gather_memory()[0].long()
    agreement = (memory == labels).float().mean()
    assert max(agreement, 1 - agreement) == 1.0
    with pytest.raises(ValueError, match="warm_start needs"):
        bank.warm_start(points[:, :2])


def test_pairs_draw_neighbors_or_two_different_views_reproducibly():
    features = torch.randn(30, 4, 6)
    neighbors = nearest_neighbors(features[:, 0], 3)
    pairs = CachedPairs(features, "neighbors", neighbors, seed=1)
    pairs.set_epoch(2)
    x0, x1 = pairs(torch.arange(30))
    assert torch.equal(x0, features[:, 0])
    # each second input is the plain view of one of the image's neighbours
    matches = (x1[:, None, :] == features[neighbors, 0]).all(-1).any(-1)
    assert matches.all()
    views = CachedPairs(features, "views", seed=1)
    views.set_epoch(0)
    a, b = views(torch.arange(30))
    first = (a[:, None, :] == features[:, 1:]).all(-1).float().argmax(1)
    second = (b[:, None, :] == features[:, 1:]).all(-1).float().argmax(1)
    assert (first != second).all()  # two different augmented views, never the plain one
    again = CachedPairs(features, "views", seed=1)
    again.set_epoch(0)
    assert torch.equal(again(torch.arange(30))[1], b)
    with pytest.raises(ValueError, match="at least 2 augmented views"):
        CachedPairs(features[:, :2], "views")


def test_frozen_backbone_recipe_exports_a_working_model(tmp_path, frozen_head_run):
    """The shared run of recipes/train_head.py (the fixture): its log, outputs and model."""
    result, summary = frozen_head_run.result, frozen_head_run.summary
    digits, weights_file = frozen_head_run.digits, frozen_head_run.weights
    assert 0 <= summary["accuracy"] <= 1 and "kmeans_accuracy" in summary
    check_final_line_examples("recipes/train_head.py", summary)  # the docs' example line
    assert "embedding 120 images x 1 views" in result.stdout
    # results.json has the run's times: the total, each epoch's, the embedding and the heads.
    seconds = json.loads((Path(summary["output_dir"]) / "results.json").read_text())["seconds"]
    assert seconds["total"] == summary["seconds"] and len(seconds["epochs"]) == summary["epochs"]
    assert (seconds["features"], seconds["heads"]) == (
        summary["seconds_features"],
        summary["seconds_heads"],
    )
    # The run's HTML cluster report: every head, every shown thumbnail written.
    report = Path(summary["report"])
    page = report.read_text()
    assert report.name == "index.html" and "K=10" in page and "K=20" in page
    shown = set(re.findall(r'src="(thumbs/[^"]+)"', page))
    assert shown and all((report.parent / src).is_file() for src in shown)

    # The model: the file's backbone weights untouched, config and card say where they came from.
    os.environ["HF_HUB_OFFLINE"] = "1"
    model = SeCuModel.from_pretrained(summary["model_dir"])
    pretrained = load_file(str(weights_file))
    for name, tensor in model.backbone.state_dict().items():
        assert torch.equal(tensor, pretrained[name]), name
    frozen = model.training_recipe["frozen_backbone"]
    assert frozen["source"] == "file:test_efficientnet.safetensors" and len(frozen["sha256"]) == 64
    card = (Path(summary["model_dir"]) / "README.md").read_text()
    assert "frozen `test_efficientnet`" in card
    assert model.config["input_size"] == 32 and model.num_clusters == [10, 20]
    # The recommended head (no labels): the same in the final line, results.json, the
    # training record, the card and the report.
    selection = json.loads((Path(summary["output_dir"]) / "results.json").read_text())[
        "k_selection"
    ]
    recommended = summary["recommended_num_clusters"]
    assert recommended == selection["recommended_num_clusters"] in (10, 20)
    assert model.training_recipe["k_selection"] == selection
    assert f"| {recommended} (recommended) |" in card and "## Which head (K)" in card
    assert page.count("data-recommended") == 1

    # secu-cluster on the folder gives the clusters the run evaluated.
    out = tmp_path / "clusters.csv"
    cli = Path(sys.executable).parent / "secu-cluster"
    subprocess.run(
        [str(cli), "--model", summary["model_dir"], "--images", str(digits),
         "--num-clusters", "10", "--out", str(out)],
        check=True, capture_output=True, env={**os.environ, "SECU_NUM_THREADS": "1"},
    )  # fmt: skip
    rows = out.read_text().splitlines()[1:]
    assert len(rows) == 120

    # A second run (its own output directory) reuses the cache and trains the same heads.
    args = head_args(frozen_head_run.root, digits, weights_file)
    again = run_recipe(TRAIN_HEAD, *args, "--output_dir", str(tmp_path / "again"))
    assert "reusing the cached features" in again.stdout
    assert json.loads(again.stdout.strip().splitlines()[-1])["accuracy"] == summary["accuracy"]


@pytest.mark.slow
def test_killed_extraction_resumes_with_identical_features(tmp_path, digits, weights_file):
    chunks = ["cache_chunk_size=25"]
    killed = run_recipe(
        TRAIN_HEAD, *head_args(tmp_path, digits, weights_file, *chunks),
        env={"SECU_KILL_AT": "feature_chunk:2"}, check=False,
    )  # fmt: skip
    assert killed.returncode != 0
    (cache_dir,) = (tmp_path / "cache").iterdir()
    assert len(list((cache_dir / "chunks").iterdir())) == 2
    resumed = run_recipe(TRAIN_HEAD, *head_args(tmp_path, digits, weights_file, *chunks))
    assert "(3 chunks)" in resumed.stdout  # 5 chunks of 25 images, 2 already written
    fresh = tmp_path / "fresh"
    run_recipe(TRAIN_HEAD, *head_args(fresh, digits, weights_file, *chunks))
    (fresh_dir,) = (fresh / "cache").iterdir()
    assert np.array_equal(np.load(cache_dir / "features.npy"), np.load(fresh_dir / "features.npy"))


@pytest.mark.slow
def test_view_pairs_and_a_corrupt_image(tmp_path, digits, weights_file):
    broken = tmp_path / "digits"
    subprocess.run(["cp", "-r", str(digits), str(broken)], check=True)
    (broken / "3" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    # in this process: the recipe's own code, without a new process's seconds of imports
    refused = run_here(
        TRAIN_HEAD,
        "--no_progress",
        "--report_to",
        "none",
        *head_args(tmp_path, broken, weights_file),
        env={"HF_HUB_OFFLINE": "1", "SECU_DEBUG": None},
    )
    assert refused.returncode == 2 and "broken.png" in refused.stderr
    views = ["pairs=views", "augmented_views=2"]
    result = run_recipe(
        TRAIN_HEAD, *head_args(tmp_path, broken, weights_file, *views), "--skip_corrupt"
    )
    assert "skipped 1 unreadable images" in result.stdout
    assert "120 images x 3 views" in result.stdout


@pytest.mark.parametrize("flag", [["--pretrained_file", "weights.safetensors"], ["--pretrained"]])
def test_train_py_refuses_pretrained_weights_naming_the_fine_tuning_recipe(flag, tmp_path):
    """One way to fine-tune: recipes/finetune.py. train.py says so in one line, before any
    data is read or any output written."""
    # in this process: the recipe's own code, without a new process's seconds of imports
    result = run_here(TRAIN, "--no_progress", *flag, "--output_dir", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag[0]}:"), lines
    assert "recipes/finetune.py" in lines[0]
    assert not (tmp_path / "out").exists()


def test_efficientnet_lite0_weights_give_real_features(tmp_path):
    """The packaged ImageNet weights, converted for timm: strict load, and digits whose
    nearest neighbour in feature space mostly shares their class."""
    from secu_plugin.models.pretrained import (
        efficientnet_lite0_state_dict,
        load_pretrained_backbone,
    )

    path = tmp_path / "lite0.safetensors"
    save_file(efficientnet_lite0_state_dict(), str(path))
    backbone = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_pretrained_backbone(backbone, "tf_efficientnet_lite0", path)
    config = timm.data.resolve_model_data_config(backbone)
    transform = timm.data.create_transform(**{**config, "input_size": (3, 64, 64)})
    data = ImageDataset.mnist5k()
    rows = np.random.default_rng(0).choice(len(data), 300, replace=False)
    with torch.no_grad():
        images = torch.stack([transform(data[i][0].convert("RGB")) for i in rows])
        features = backbone.eval()(images)
    neighbor = nearest_neighbors(features, 1)[:, 0]
    labels = data.labels[rows]
    assert (labels[neighbor.numpy()] == labels).mean() > 0.7


def test_an_output_directory_inside_the_data_folder_is_refused(tmp_path, digits, weights_file):
    inside = digits / "run"
    args = [*head_args(tmp_path, digits, weights_file), "--output_dir", str(inside)]
    result = run_here(
        TRAIN_HEAD, "--no_progress", "--report_to", "none", *args, env={"SECU_DEBUG": None}
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: --output_dir") and "Traceback" not in result.stderr
    assert str(inside) in last_line and f"--data folder {digits}" in last_line
    assert not inside.exists() and not (tmp_path / "cache").exists()
