"""The label-free K signal: it finds the true number of groups, is corrected for chance, stays
bounded, refuses bad input, and secu-cluster and the card use the head it recommends."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from factories import tiny_digit_model
from PIL import Image
from sklearn.cluster import KMeans

from secu_plugin.cli import main
from secu_plugin.data import load_mnist5k
from secu_plugin.model_selection import SIGNAL, head_selection, recorded_recommendation
from secu_plugin.models.card import model_card


def blobs(groups: int, per_group: int = 60, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(groups, dim)) * 4
    return np.repeat(centers, per_group, axis=0) + rng.normal(size=(groups * per_group, dim))


@pytest.mark.parametrize("groups", [3, 6, 12])
def test_kmeans_heads_on_blobs_recommend_the_true_number_of_groups(groups):
    points = blobs(groups)
    ks = [3, 6, 12, 24]
    heads = np.stack([KMeans(k, n_init=4, random_state=0).fit_predict(points) for k in ks])
    found = head_selection(torch.tensor(points), heads, ks)
    assert found["recommended_num_clusters"] == groups
    scores = [h[SIGNAL] for h in found["heads"]]
    assert scores[ks.index(groups)] == max(scores)


def test_one_cluster_and_random_clusters_score_about_zero():
    points = torch.tensor(blobs(4))
    rng = np.random.default_rng(1)
    heads = np.stack([np.zeros(len(points), dtype=np.int64), rng.integers(0, 4, len(points))])
    found = head_selection(points, heads, [1, 4])
    assert found["heads"][0]["modularity"] == 0.0  # every link inside, but so is chance
    assert found["heads"][0][SIGNAL] == -1.0  # a silhouette needs two clusters
    random = found["heads"][1]
    assert abs(random["modularity"]) < 0.05 and abs(random["kappa"]) < 0.07
    assert abs(random[SIGNAL]) < 0.1
    assert found["heads"][0]["size_balance"] == 1.0


def test_the_sample_is_bounded_and_seeded():
    points = torch.tensor(blobs(5, per_group=100))
    heads = np.repeat(np.arange(5), 100)[None]
    first = head_selection(points, heads, [5], max_images=200, seed=3, num_neighbors=7)
    assert first["images"] == 200 and first["num_neighbors"] == 7
    assert first == head_selection(points, heads, [5], max_images=200, seed=3, num_neighbors=7)


@pytest.mark.parametrize(
    ("embeddings", "predictions", "ks", "message"),
    [
        (torch.zeros(4, 2), np.zeros(4, dtype=np.int64), [2], "must be \\(heads, N\\)"),
        (torch.zeros(4, 2), np.zeros((2, 4), dtype=np.int64), [2], "names 1 heads"),
        (torch.zeros(5, 2), np.zeros((1, 4), dtype=np.int64), [2], "N = 4 images"),
        (torch.zeros(4, 2), np.full((1, 4), 2), [2], "cluster id >= its K = 2"),
        (torch.zeros(4, 2), -np.ones((1, 4), dtype=np.int64), [2], "integers >= 0"),
        (torch.zeros(4, 2), np.zeros((1, 4)), [2], "integers >= 0"),
        (torch.zeros(3, 2), np.zeros((1, 3), dtype=np.int64), [2], "at least 4 images"),
    ],
)
def test_bad_input_is_a_clear_error(embeddings, predictions, ks, message):
    with pytest.raises(ValueError, match=message):
        head_selection(embeddings, predictions, ks)


HEAD_SCORES = {
    "modularity": 0.3,
    "kappa": 0.4,
    "silhouette_pca8": 0.2,
    "silhouette_pca32": 0.1,
    "size_balance": 0.9,
}
SELECTION = {
    "recommended_head": 1,
    "recommended_num_clusters": 5,
    "also_plausible": None,
    "signal": SIGNAL,
    "close_margin": 0.01,
    "space": "projections",
    "num_neighbors": 10,
    "images": 40,
    "heads": [
        {"head": 0, "num_clusters": 10, **HEAD_SCORES},
        {"head": 1, "num_clusters": 5, **HEAD_SCORES, "silhouette_pca8": 0.5},
    ],
}


@pytest.mark.parametrize(
    ("selection", "message"),
    [
        ([1], "must be a dict"),
        ({"recommended_num_clusters": 7}, "not the K of a head"),
        ({"recommended_num_clusters": "5"}, "not the K of a head"),
        ({"recommended_num_clusters": 5, "recommended_head": 0}, "whose K is 10"),
        ({"recommended_num_clusters": 5, "recommended_head": 9}, "not a head"),
    ],
)
def test_a_malformed_record_from_a_model_file_is_refused(selection, message):
    with pytest.raises(ValueError, match=message):
        recorded_recommendation({"k_selection": selection}, [10, 5])


def test_the_card_shows_every_heads_signal_and_the_recommended_head():
    model = tiny_digit_model(num_clusters=[10, 5], training={"k_selection": SELECTION})
    text = model_card(None, model.config).text
    assert "## Which head (K)" in text and "**K=5**" in text
    assert "| 5 (recommended) | 0.3 | 0.4 | 0.5 | 0.1 | 0.9 |" in text
    assert "| 10 | 0.3 | 0.4 | 0.2 | 0.1 | 0.9 |" in text
    assert "## Which head (K)" not in model_card(None, tiny_digit_model().config).text
    broken = tiny_digit_model(num_clusters=[10, 5], training={"k_selection": {"x": 1}})
    with pytest.raises(ValueError, match="recommended_num_clusters"):
        model_card(None, broken.config)


@pytest.fixture
def digit_files(tmp_path):
    images, _ = load_mnist5k()
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in range(12):
        Image.fromarray(images[index]).save(folder / f"{index:02d}.png")
    return folder


def test_secu_cluster_uses_the_recommended_head_unless_told_otherwise(
    digit_files, tmp_path, capsys
):
    model = tiny_digit_model(num_clusters=[10, 5], training={"k_selection": SELECTION})
    model.save_pretrained(tmp_path / "model")
    base = ["--model", str(tmp_path / "model"), "--images", str(digit_files)]
    assert main([*base, "--out", str(tmp_path / "a.csv"), "--report", str(tmp_path / "r")]) == 0
    err = capsys.readouterr().err
    assert "using head K=5, the one the training run recommends" in err
    assert "(head 1)" in err
    page = (tmp_path / "r" / "index.html").read_text()
    assert page.count("data-recommended") == 1 and "recommended: K=5" in page
    assert main([*base, "--out", str(tmp_path / "b.csv"), "--num-clusters", "10"]) == 0
    err = capsys.readouterr().err
    assert "recommends" not in err and "(head 0)" in err
    # A model file whose record names no head of the model: a usage error, not a guess.
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    config["training"]["k_selection"]["recommended_num_clusters"] = 7
    shutil.copytree(tmp_path / "model", tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text(json.dumps(config))
    code = main(["--model", str(tmp_path / "bad"), "--images", str(digit_files),
                 "--out", str(tmp_path / "c.csv")])  # fmt: skip
    assert code == 2 and "--model: training['k_selection']" in capsys.readouterr().err


def test_the_benchmark_counts_right_heads_nearest_grid_points_and_steps_off(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:  # benchmarks/ is a folder of scripts, not an installed package
        sys.path.insert(0, root)
    from benchmarks.k_selection_summary import summarize, targets_of

    heads = [5, 10, 20, 40]
    assert targets_of(7, heads) == [5] and targets_of(15, heads) == [10, 20]
    scores = {
        "a_k5": [0.9, 0.8, 0.1, 0.0],
        "a_k10": [0.1, 0.2, 0.9, 0.0],
        "a_k13": [0.0, 0.9, 0.2, 0.3],
        "a_k20": [0.0, 0.1, 0.2, 0.3],
    }
    runs = [
        {"set": name, "seed": 0, "role": "held_out", "true_k": int(name[3:]), "heads": heads}
        | {"returncode": 0, "signals": {f"{SIGNAL}_projections": values}}
        for name, values in scores.items()
    ]
    found = summarize(runs, tmp_path)
    tally = found["signals"]["held_out"][f"{SIGNAL}_projections"]
    assert tally["right"] == 2 and tally["picks"] == [5, 20, 10, 40]  # K=5 and K=13 (10)
    assert tally["k_off_when_wrong"] == [10, 20] and tally["steps_off_when_wrong"] == [1, 1]
    assert found["per_set"]["a_k10"]["right"] == 0 and found["rule"]["held_out"]["runs"] == 4


@pytest.mark.slow
def test_the_frozen_recipe_recommends_the_true_k_of_a_small_tune_set(tmp_path):
    """MNIST-5k's digits 0-2 (1,500 images, a tune set of docs/k_selection.md) in one flat
    folder, the frozen recipe with its default heads (K = 2..50): the recommended head is K=3."""
    from safetensors.torch import save_file

    from secu_plugin.models.pretrained import efficientnet_lite0_state_dict

    weights = tmp_path / "lite0.safetensors"
    save_file(efficientnet_lite0_state_dict(), str(weights))
    images, labels = load_mnist5k()
    folder = tmp_path / "digits"
    folder.mkdir()
    for index in np.flatnonzero(labels < 3):  # no class folders: nothing tells the run K
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, str(root / "recipes" / "train_head.py"), "--data", str(folder)]
    command += ["--backbone", "tf_efficientnet_lite0", "--pretrained_file", str(weights)]
    command += ["--input_size", "112", "--cache_dir", str(tmp_path / "cache"), "--seed", "0"]
    command += ["--output_dir", str(tmp_path / "run"), "--no_progress", "--report_to", "none"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=900, check=False, env=environment
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["recommended_num_clusters"] == 3, final
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "The run recommends" in page or "The run names two values" in page
    assert (tmp_path / "run" / "report" / "plots" / "k-signal.png").is_file()


def test_the_report_plots_every_heads_score_and_says_both_close_values(tmp_path):
    from secu_plugin.cluster_report import write_cluster_report

    images, labels = load_mnist5k()
    ids = np.stack([labels[:60] % 2, labels[:60] % 5])
    selection = {**SELECTION, "also_plausible": 10}
    confidence = np.ones((2, 60))
    index = write_cluster_report(
        tmp_path / "r", images[:60], ids, confidence, num_clusters=[10, 5], k_selection=selection
    )
    page = index.read_text()
    two = 'The run names two values: <a href="#head-1">K=5</a> or <a href="#head-0">K=10</a>'
    assert two in page
    assert (tmp_path / "r" / "plots" / "k-signal.png").is_file()
    with pytest.raises(ValueError, match="does not score this report's heads"):
        wrong = {**SELECTION, "signal": "x"}
        write_cluster_report(tmp_path / "s", images[:60], ids, confidence, k_selection=wrong)
