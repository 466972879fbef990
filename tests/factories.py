"""Small real models shared by the tests (built, never mocked)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from secu_plugin.models import SeCuModel

# A ResNet small enough for the CPU tests (timm's channels and layers).
SMALL_RESNET = {"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1]}


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


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine weights, so that eval-mode outputs test them."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            with torch.no_grad():
                layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
                layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.weight.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
                layer.bias.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)


def snapshot(bank: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of a bank's state_dict, unchanged by what the bank does next."""
    return copy.deepcopy(bank.state_dict())


def assert_same_state(bank: nn.Module, expected: dict[str, torch.Tensor]) -> None:
    """The bank's state equals ``expected`` bit for bit, entry by entry (on the CPU)."""
    now = bank.state_dict()
    assert now.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(now[key].cpu(), value.cpu()), key
