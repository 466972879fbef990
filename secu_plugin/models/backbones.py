"""Backbones: any timm model as a feature extractor, and the paper's networks as timm names.

The SeCu paper trains ResNets with small-image stems (CIFAR: a 3x3 stride-1 first convolution
and no max-pool; STL-10: the same followed by a 2x2 max-pool), which timm has no option for.
They are registered here as timm models, each with its ``pretrained_cfg`` (input size,
normalization, crop), so that ``timm.create_model("secu_resnet18_cifar")`` and timm's data
config work on them like on any timm model:

- ``secu_resnet{18,34,50}_cifar``: 3 x 32 x 32 inputs, CIFAR-10's mean and std;
- ``secu_resnet{18,34,50}_stl``: 3 x 96 x 96 inputs, ImageNet's mean and std;
- ``secu_convnet_small``, ``secu_convnet_tiny``: 1 x 28 x 28 inputs, MNIST's mean and std.

``secu_convnet_small`` is a small VGG-like network for the CPU demo on 28x28 digits, where a
ResNet-18 costs seconds per batch. None of them has pretrained weights.
"""

from __future__ import annotations

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet
from torch import nn

from secu_plugin.data.transforms import MNIST_MEAN, MNIST_STD

CIFAR10_MEAN: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, ...] = (0.2023, 0.1994, 0.2010)

_RESNET_LAYOUTS = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}
_STEM_DATA = {
    "cifar": {"input_size": (3, 32, 32), "mean": CIFAR10_MEAN, "std": CIFAR10_STD},
    "stl": {"input_size": (3, 96, 96), "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD},
}
_CONVNET_WIDTHS = {"secu_convnet_small": (32, 64, 128), "secu_convnet_tiny": (16, 32, 64)}


def _cfg(**data) -> dict:
    # No weights to download: an empty url and no Hub id. crop_pct 1: the whole image.
    return {
        "url": "",
        "num_classes": 0,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": "conv1",
        "classifier": "fc",
        **data,
    }


default_cfgs = generate_default_cfgs(
    {
        **{
            f"secu_{arch}_{stem}": _cfg(**data)
            for arch in _RESNET_LAYOUTS
            for stem, data in _STEM_DATA.items()
        },
        **{
            name: _cfg(
                input_size=(1, 28, 28),
                mean=MNIST_MEAN,
                std=MNIST_STD,
                first_conv="features.0",
                classifier="head",
            )
            for name in _CONVNET_WIDTHS
        },
    }
)


def create_backbone(name: str, in_chans: int = 3, **timm_kwargs) -> nn.Module:
    """Builds a timm model without classifier (``num_classes=0``): it maps images to features.

    Args:
        name: Any timm model name (``resnet18``, ``vit_small_patch16_224``,
            ``secu_resnet18_cifar``, ``secu_convnet_small``, ...).
        in_chans: Input channels.
        **timm_kwargs: Other ``timm.create_model`` arguments.

    Returns:
        The network; ``backbone.num_features`` is the feature dimension and
        ``timm.data.resolve_model_data_config(backbone)`` its input size and normalization.

    Examples:
        >>> backbone = create_backbone("secu_resnet18_cifar")
        >>> backbone(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 512])
        >>> timm.data.resolve_model_data_config(backbone)["input_size"]
        (3, 32, 32)
        >>> create_backbone("secu_convnet_small", in_chans=1)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 128])
    """
    check_backbone_name(name)
    return timm.create_model(name, num_classes=0, in_chans=in_chans, **timm_kwargs)


def check_backbone_name(name: str, allow_hub: bool = False) -> None:
    """Refuses a name that is not a timm model: a registered architecture (this module's
    included), with or without a pretrained tag (``.in1k``), or, with ``allow_hub``, an
    ``hf-hub:`` repository (its architecture is in the repository's config, downloaded when
    the model is created: never for a config read from a model file).

    Examples:
        >>> check_backbone_name("resnet18.a1_in1k"), check_backbone_name("secu_convnet_small")
        (None, None)
        >>> check_backbone_name("resnet5O")
        Traceback (most recent call last):
        ...
        ValueError: unknown timm model 'resnet5O' (see timm.list_models())
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone must be a timm model name, got {name!r}")
    if not ((allow_hub and name.startswith("hf-hub:")) or timm.is_model(name)):
        raise ValueError(f"unknown timm model {name!r} (see timm.list_models())")


def _replace_resnet_stem(model: ResNet, stem: str, in_chans: int) -> None:
    conv1 = model.conv1
    model.conv1 = nn.Conv2d(in_chans, conv1.out_channels, 3, stride=1, padding=1, bias=False)
    # The paper's STL network pools 2x2 (with padding 1) after the stem; CIFAR's does not pool.
    model.maxpool = nn.MaxPool2d(2, stride=2, padding=1) if stem == "stl" else nn.Identity()


def _register_small_image_resnet(arch: str, stem: str) -> None:
    name = f"secu_{arch}_{stem}"
    block, layers = _RESNET_LAYOUTS[arch]

    def entrypoint(pretrained: bool = False, **kwargs) -> ResNet:
        if pretrained:
            raise ValueError(f"{name} has no pretrained weights")
        kwargs.setdefault("layers", layers)
        model = build_model_with_cfg(ResNet, name, pretrained, block=block, **kwargs)
        _replace_resnet_stem(model, stem, kwargs.get("in_chans", 3))
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = f"timm's {arch} with the SeCu paper's {stem.upper()} stem."
    globals()[name] = register_model(entrypoint)


for _arch in _RESNET_LAYOUTS:
    for _stem in _STEM_DATA:
        _register_small_image_resnet(_arch, _stem)


class SmallConvNet(nn.Module):
    """A VGG-like network for small images: fast enough to train on a laptop CPU.

    Three stages of two 3x3 convolutions (BatchNorm, ReLU), 2x2 max-pool between stages, global
    average pooling. ``norm="none"`` drops the BatchNorm layers (convolutions get a bias).
    Follows timm's conventions (``num_features``, ``forward_features``, ``forward_head``,
    ``reset_classifier``) so that it is created through ``timm.create_model``.

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


def _create_convnet(name: str, pretrained: bool, **kwargs) -> SmallConvNet:
    if pretrained:
        raise ValueError(f"{name} has no pretrained weights")
    kwargs.setdefault("widths", _CONVNET_WIDTHS[name])
    return build_model_with_cfg(SmallConvNet, name, pretrained, **kwargs)


@register_model
def secu_convnet_small(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """timm entry point of :class:`SmallConvNet` (widths 32, 64, 128)."""
    return _create_convnet("secu_convnet_small", pretrained, **kwargs)


@register_model
def secu_convnet_tiny(pretrained: bool = False, **kwargs) -> SmallConvNet:
    """timm entry point of :class:`SmallConvNet` (widths 16, 32, 64)."""
    return _create_convnet("secu_convnet_tiny", pretrained, **kwargs)
