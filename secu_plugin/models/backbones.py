"""Backbones: any timm model as a feature extractor, with the small-image stems of the paper.

timm has no option for the CIFAR/STL stems that the SeCu paper uses, so :func:`create_backbone`
replaces the stem of a timm ResNet after building it. It also registers a small, fast
convolutional network with timm (``secu_convnet_small``) for the CPU demo on 28x28 digits,
where a ResNet-18 costs seconds per batch.
"""

from __future__ import annotations

import timm
import torch
from timm.models import register_model
from torch import nn

STEMS = (None, "cifar", "stl")


def create_backbone(
    name: str,
    stem: str | None = None,
    in_chans: int = 3,
    pretrained: bool = False,
    **kwargs,
) -> nn.Module:
    """Builds a timm model without classifier (``num_classes=0``): it maps images to features.

    Args:
        name: Any timm model name (``resnet18``, ``resnet50``, ``secu_convnet_small``, ...).
        stem: ``None`` keeps timm's stem; ``"cifar"`` replaces a ResNet stem by a 3x3 stride-1
            convolution without max-pool (32x32 inputs); ``"stl"`` by a 3x3 stride-1 convolution
            followed by a 2x2 max-pool (96x96 inputs), as in the paper's networks.
        in_chans: Input channels.
        pretrained: Passed to timm (needs the network to download weights).
        **kwargs: Any other timm ``create_model`` argument.

    Returns:
        The network; ``backbone.num_features`` is the feature dimension.

    Examples:
        >>> backbone = create_backbone("resnet18", stem="cifar")
        >>> backbone(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
        >>> create_backbone("secu_convnet_small", in_chans=1)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 128])
    """
    if stem not in STEMS:
        raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, in_chans=in_chans, **kwargs)
    if stem is not None:
        _replace_resnet_stem(model, stem, in_chans)
    return model


def _replace_resnet_stem(model: nn.Module, stem: str, in_chans: int) -> None:
    conv1 = getattr(model, "conv1", None)
    if not isinstance(conv1, nn.Conv2d) or not hasattr(model, "maxpool"):
        raise ValueError(
            f"stem={stem!r} needs a ResNet-style timm model with a single conv1 and a maxpool "
            f"(e.g. resnet18, resnet50), got {type(model).__name__}"
        )
    model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    # The paper's STL network pools 2x2 (with padding 1) after the stem; CIFAR's does not pool.
    model.maxpool = nn.MaxPool2d(2, stride=2, padding=1) if stem == "stl" else nn.Identity()


class SmallConvNet(nn.Module):
    """A VGG-like network for small grayscale images: fast enough to train on a laptop CPU.

    Three stages of two 3x3 convolutions (BatchNorm, ReLU), 2x2 max-pool between stages, global
    average pooling. ``norm="none"`` drops the BatchNorm layers (convolutions get a bias). Follows timm's conventions (``num_features``, ``forward_features``,
    ``forward_head``, ``reset_classifier``) so that it is created through ``timm.create_model``.

    Examples:
        >>> net = SmallConvNet(in_chans=1, widths=(8, 16, 32), num_classes=0)
        >>> net(torch.randn(4, 1, 28, 28)).shape
        torch.Size([4, 32])
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: tuple[int, ...] = (32, 64, 128),
        num_classes: int = 0,
        norm: str = "batch",
        **_ignored,
    ) -> None:
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        layers: list[nn.Module] = []
        channels = in_chans
        for stage, width in enumerate(widths):
            if stage > 0:
                layers.append(nn.MaxPool2d(2))
            for _ in range(2):
                batchnorm = norm == "batch"
                layers += [
                    nn.Conv2d(channels, width, 3, padding=1, bias=not batchnorm),
                    nn.BatchNorm2d(width) if batchnorm else nn.Identity(),
                    nn.ReLU(inplace=True),
                ]
                channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.num_classes = num_classes
        self.head = nn.Linear(channels, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def secu_convnet_small(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """timm entry point of :class:`SmallConvNet` (widths 32, 64, 128; no pretrained weights)."""
    if pretrained:
        raise ValueError("secu_convnet_small has no pretrained weights")
    kwargs.setdefault("widths", (32, 64, 128))
    return SmallConvNet(**kwargs)


@register_model
def secu_convnet_tiny(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """timm entry point of :class:`SmallConvNet` (widths 16, 32, 64; no pretrained weights)."""
    if pretrained:
        raise ValueError("secu_convnet_tiny has no pretrained weights")
    kwargs.setdefault("widths", (16, 32, 64))
    return SmallConvNet(**kwargs)
