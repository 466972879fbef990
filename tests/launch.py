"""Real training runs for the tests: the recipe, a small digit folder, Accelerate's launcher."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from secu_plugin.data import load_mnist5k

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "train.py"
TRAIN_HEAD = ROOT / "recipes" / "train_head.py"
# A tiny network and heads: a run of a few epochs on 50 digits takes seconds. The named
# preset: these tests fix its settings (with --data alone the recipe derives them: auto).
TINY = ["--preset", "mnist5k", "--set", "backbone=secu_convnet_tiny", "num_clusters=[10,20]", "batch_size=16",
        "warmup_epochs=1", "num_workers=0"]  # fmt: skip


def write_digit_folder(root: Path, count: int = 50, seed: int = 0) -> Path:
    """``count`` real MNIST-5k digits as PNG files in class subfolders."""
    images, labels = load_mnist5k()
    for i in np.random.default_rng(seed).choice(len(images), size=count, replace=False):
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / str(labels[i]) / f"{i}.png")
    return root


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate_launch(num_processes: int) -> list[str]:
    """``accelerate launch`` of ``num_processes`` local processes (set ACCELERATE_USE_CPU=1
    in the environment where there is no GPU)."""
    return [str(Path(sys.executable).parent / "accelerate"), "launch", "--multi_gpu",
            "--num_processes", str(num_processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(free_port())]  # fmt: skip


def run_recipe(script: Path, *args: str, env: dict | None = None, check: bool = True):
    """A recipe in a new process, offline, one thread, no progress bar and no tracker."""
    command = [sys.executable, str(script), "--no_progress", "--report_to", "none", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "SECU_NUM_THREADS": "1", **(env or {})}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=environment, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


# Tiny heads on timm's tiny test_efficientnet: 3 epochs of SeCu heads K=10 and K=20.
TINY_HEADS = ["--set", "num_clusters=[10,20]", "batch_size=32", "epochs=3", "warmup_epochs=1",
              "kmeans_epoch=2"]  # fmt: skip


def head_args(root: Path, digits: Path, weights: Path, *extra: str) -> list[str]:
    """recipes/train_head.py's arguments for the tiny heads on ``digits``: the cache in
    ``root/cache``, the output in ``root/out``."""
    return [
        "--data", str(digits), "--backbone", "test_efficientnet", "--pretrained_file",
        str(weights), "--input_size", "32", "--cache_dir", str(root / "cache"),
        "--output_dir", str(root / "out"), *TINY_HEADS, *extra,
    ]  # fmt: skip


def write_weights_file(path: Path) -> Path:
    """'Pretrained' weights of timm's tiny test_efficientnet in a local file (random, seed 0)."""
    torch.manual_seed(0)
    save_file(timm.create_model("test_efficientnet", num_classes=0).state_dict(), str(path))
    return path


@dataclass(frozen=True)
class FrozenHeadRun:
    """A finished run of recipes/train_head.py (``head_args``) on 120 digits: its digit
    folder, weights file and ``root`` (cache and output below it), final line and process."""

    root: Path
    digits: Path
    weights: Path
    summary: dict
    result: subprocess.CompletedProcess


def start_frozen_head_run(root: Path) -> FrozenHeadRun:
    """Runs recipes/train_head.py with ``head_args`` below ``root``."""
    digits = write_digit_folder(root / "digits", count=120)
    weights = write_weights_file(root / "test_efficientnet.safetensors")
    result = run_recipe(TRAIN_HEAD, *head_args(root, digits, weights))
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    return FrozenHeadRun(root, digits, weights, summary, result)
