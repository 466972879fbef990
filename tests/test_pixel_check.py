"""A run says whether its clusters beat k-means on the pixels of the same images, and what to
try when they do not (secu_plugin.train.pixel_check): here the run that learns; the one that
cannot (three epochs from scratch on 50 digits) is tests/test_training.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from launch import ROOT, write_digit_folder
from safetensors.torch import save_file

from secu_plugin.data import ImageDataset
from secu_plugin.train.pixel_check import compare_with_pixel_kmeans, sample_pixels


def test_bad_input_is_refused_naming_the_problem():
    images = ImageDataset.from_arrays(np.zeros((8, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"predictions must be \(heads, images\) = \(1, 8\)"):
        compare_with_pixel_kmeans(images, np.zeros((1, 7), int), [2], 0, None, None, "cmd")
    with pytest.raises(ValueError, match="max_side must be at least 1 pixel"):
        sample_pixels(images, max_side=0)
    # a big folder is sampled, and wide images shrunk: the cost does not grow with them
    rows, pixels = sample_pixels(
        ImageDataset.from_arrays(np.zeros((50, 64, 64, 3), np.uint8)), max_images=10
    )
    assert len(rows) == 10 and pixels.shape == (10, 32 * 32 * 3)


@pytest.mark.slow  # 1,000 images through Lite0 at 112 px: about 30 s on 2 cores
def test_frozen_heads_on_real_features_beat_kmeans_on_the_pixels_and_say_no_advice(tmp_path):
    from secu_plugin.models.pretrained import efficientnet_lite0_state_dict

    weights = tmp_path / "lite0.safetensors"
    save_file(efficientnet_lite0_state_dict(), str(weights))
    digits = write_digit_folder(tmp_path / "digits", count=1000)
    command = [sys.executable, str(ROOT / "recipes" / "train_head.py"), "--data", str(digits)]
    command += ["--backbone", "tf_efficientnet_lite0", "--pretrained_file", str(weights)]
    command += ["--input_size", "112", "--cache_dir", str(tmp_path / "cache")]
    command += ["--output_dir", str(tmp_path / "run"), "--no_progress", "--report_to", "none"]
    command += ["--set", "num_clusters=[10]", "batch_size=50"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "SECU_NUM_THREADS": "2"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, check=False, env=environment
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    # labelled digits: ACC against the best k-means on the raw or whitened pixels, same K
    assert summary["beats_kmeans_pixels"] is True, summary
    assert 0.1 < summary["kmeans_pixels_accuracy"] < summary["accuracy"] - 0.02
    assert "advice" not in summary and "advice:" not in result.stdout
    check = json.loads((tmp_path / "run" / "results.json").read_text())["pixel_check"]
    assert check["score"] == "accuracy" and check["images"] == check["of_images"] == 1000
    assert check["pixels"] == [28 * 28] and check["kmeans_pixels"] == max(
        check["every_space"].values()
    )
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "the run learnt more than the pixels show" in page
