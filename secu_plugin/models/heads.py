"""The SeCu heads on top of a backbone: the projection MLP and the (ImageNet) predictor."""

from __future__ import annotations

from torch import nn


def build_projection_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batchnorm: bool = True
) -> nn.Sequential:
    """The SeCu projection MLP, with the layer indices of the paper's code.

    - 1 layer: Linear(in, out) (SeCu heads on frozen features can be linear).
    - 2 layers (CIFAR/STL): Linear(in, hidden)-BN-ReLU-Linear(hidden, out).
    - 3 layers (ImageNet): Linear(in, hidden)-BN-ReLU-Linear(hidden, hidden)-BN-ReLU-
      Linear(hidden, out)-BN(out).

    ``batchnorm=False`` leaves the BatchNorm layers out (identity in their place, so the layer
    indices stay those of the paper's code): a network whose output does not depend on how a
    batch is split over processes.

    Examples:
        >>> import torch
        >>> head = build_projection_head(512, 512, 128)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 128])
        >>> len(build_projection_head(64, 32, 16, num_layers=3))
        8
        >>> build_projection_head(64, 32, 16, num_layers=1)
        Sequential(
          (0): Linear(in_features=64, out_features=16, bias=True)
        )
    """
    if num_layers not in (1, 2, 3):
        raise ValueError(f"projection_layers must be 1, 2 or 3, got {num_layers}")
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if value < 1:
            raise ValueError(f"projection head {name} must be positive, got {value}")

    if num_layers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim))

    def norm(width: int) -> nn.Module:
        return nn.BatchNorm1d(width) if batchnorm else nn.Identity()

    layers: list[nn.Module] = [
        nn.Linear(in_dim, hidden_dim),
        norm(hidden_dim),
        nn.ReLU(inplace=True),
    ]
    if num_layers == 3:
        layers += [nn.Linear(hidden_dim, hidden_dim), norm(hidden_dim), nn.ReLU(inplace=True)]
        layers += [nn.Linear(hidden_dim, out_dim), norm(out_dim)]
    else:
        layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def build_predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """The SeCu ImageNet predictor: Linear(dim, hidden)-BN-ReLU-Linear(hidden, dim).

    Examples:
        >>> import torch
        >>> build_predictor(128, 2048)(torch.randn(2, 128)).shape
        torch.Size([2, 128])
    """
    if dim < 1 or hidden_dim < 1:
        raise ValueError(f"predictor dims must be positive, got dim={dim}, hidden_dim={hidden_dim}")
    return nn.Sequential(
        nn.Linear(dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, dim),
    )
