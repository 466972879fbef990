"""Small real models shared by the tests (built, never mocked)."""

from __future__ import annotations

import torch

from secu_plugin.models import SeCuModel


def tiny_digit_model(**overrides) -> SeCuModel:
    """A seeded SeCuModel for 28x28 grey digits, small enough for the CPU tests (eval mode)."""
    arguments = {
        "backbone": "secu_convnet_tiny",
        "in_chans": 1,
        "input_size": 28,
        "mean": [0.1307],
        "std": [0.3081],
        "dim": 16,
        "num_clusters": [10, 5],
    }
    arguments.update(overrides)
    torch.manual_seed(0)
    return SeCuModel(**arguments).eval()
