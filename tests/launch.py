"""Real training runs for the tests: the recipe, a small digit folder, Accelerate's launcher."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from secu_plugin.data import load_mnist5k

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "train.py"
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
