"""Named training recipes from scratch: the paper's settings and the CPU demo on MNIST-5k.

A registry of values, like timm's model cfgs: each :class:`Preset` composes the settings
groups of :mod:`secu_plugin.train.settings`. The input size and normalization come from the
backbone's timm ``pretrained_cfg`` (the registered ``secu_resnet18_cifar`` carries CIFAR-10's);
a preset sets ``input_size``/``mean``/``std`` only where it differs from its backbone's. The
``auto`` preset is not in the registry: it is derived from a description of the data
(:func:`secu_plugin.train.auto.auto_preset`), starting from ``PRESETS["mnist5k"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from secu_plugin.model_selection import HEAD_GRID
from secu_plugin.train.settings import (
    BankSettings,
    LoaderSettings,
    LossSettings,
    NetworkSettings,
    OptimizerSettings,
    RunSettings,
    ScheduleSettings,
    ViewSettings,
)

CIFAR100_MEAN, CIFAR100_STD = [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]


@dataclass(frozen=True, kw_only=True)
class Preset(RunSettings):
    """Every setting of a SeCu training run from scratch (``recipes/train.py``). The defaults
    are the paper's CIFAR-10 recipe; ``--set name=value`` overrides any setting.

    Examples:
        >>> preset = get_preset("cifar10")
        >>> preset.schedule.epochs, preset.optimization.center_lr, preset.augmentation.min_scale
        (401, 1.2, 0.3)
        >>> get_preset("cifar10", epochs=5).schedule.epochs
        5
    """

    # timm's training views are the frozen heads' (recipes/train_head.py)
    recipe_choices: ClassVar[dict[str, tuple[str, ...]]] = {"views": ("byol", "digits", "shapes")}

    loader: LoaderSettings = field(default_factory=lambda: LoaderSettings(128, num_workers=4))
    # centers and memory from k-means on the initial projections (a pretrained backbone)
    kmeans_warm_start: bool = False
    # what the settings were derived from (the auto preset: the data's description and the
    # step budget); None for the named presets
    resolved_from: dict | None = None

    def check(self) -> None:
        """Also refuses views whose channels are not the network's.

        Examples:
            >>> get_preset("mnist5k", views="shapes")
            Traceback (most recent call last):
            ...
            ValueError: views='shapes' gives 3-channel images, the network takes in_chans=1: pass --set in_chans=3, or views digits
        """
        super().check()
        view_channels = VIEW_CHANNELS[self.augmentation.views]
        if view_channels != self.network.in_chans:
            others = [v for v, c in VIEW_CHANNELS.items() if c == self.network.in_chans]
            raise ValueError(
                f"views={self.augmentation.views!r} gives {view_channels}-channel images, the "
                f"network takes in_chans={self.network.in_chans}: pass --set "
                f"in_chans={view_channels}, or views {' or '.join(others) or '(none)'}"
            )


# Channels of the images each kind of training views gives.
VIEW_CHANNELS: dict[str, int] = {"byol": 3, "digits": 1, "shapes": 3}


PRESETS: dict[str, Preset] = {
    # The CPU demo, found by measuring on 2 cores (docs/results.md): a small CNN, augmentations
    # for digits (no flips, no color), small batches (more steps in a few minutes), a stronger
    # dual step for the few steps per epoch, and softer temperatures.
    "mnist5k": Preset(
        name="mnist5k",
        data="mnist5k",
        network=NetworkSettings(backbone="secu_convnet_small", in_chans=1),
        augmentation=ViewSettings(views="digits", min_scale=0.7),
        loader=LoaderSettings(batch_size=64, num_workers=0),
        optimization=OptimizerSettings(lr=0.2, center_lr=0.5),
        schedule=ScheduleSettings(epochs=40, warmup_epochs=2),
        bank=BankSettings(num_clusters=list(HEAD_GRID), dual_lr=1.0),
        loss=LossSettings(temperature_x=0.2, temperature_c=0.2),
    ),
    "cifar10": Preset(name="cifar10", data="uoft-cs/cifar10"),
}
PRESETS["cifar10-entropy"] = PRESETS["cifar10"].replace(name="cifar10-entropy", assigner="entropy")
PRESETS["cifar100-20"] = PRESETS["cifar10"].replace(
    name="cifar100-20",
    data="uoft-cs/cifar100",
    mean=list(CIFAR100_MEAN),
    std=list(CIFAR100_STD),
    epochs=801,
    center_lr=0.8,
    min_scale=0.2,
    num_clusters=list(range(20, 201, 20)),
)
PRESETS["stl10"] = PRESETS["cifar10"].replace(
    name="stl10",
    data="tanganke/stl10",
    backbone="secu_resnet18_stl",
    epochs=801,
    center_lr=0.8,
    min_scale=0.2,
    temperature_c=1.0,
)
PRESETS["imagenet"] = PRESETS["cifar10"].replace(
    name="imagenet",
    data="imagenet-1k",
    backbone="resnet50",
    projection_layers=3,
    predictor_hidden_dim=2048,
    min_scale=0.08,
    epochs=1001,
    batch_size=1024,
    optimizer="lars",
    lr=1.6,
    weight_decay=1e-6,
    center_lr=4.2,
    num_clusters=list(range(1000, 10001, 1000)),
    dual_lr=20.0,
    lower_bound_ratio=0.4,
    alpha=1e5,
    num_workers=8,
)
PRESETS["imagenet-entropy"] = PRESETS["imagenet"].replace(
    name="imagenet-entropy", assigner="entropy", center_lr_ramp=True
)


# The preset derived from the data (secu_plugin/train/auto.py): what the recipe trains with
# when --data is given and no --preset is named.
AUTO = "auto"
PRESET_CHOICES: list[str] = sorted([*PRESETS, AUTO])


def get_preset(name: str, presets: dict | None = None, /, **overrides) -> RunSettings:
    """The preset ``name`` of ``presets`` (default: :data:`PRESETS`) with ``overrides`` (flat
    names or ``group.name``) applied and checked.

    The ``auto`` preset needs a description of the data: :func:`secu_plugin.train.auto.resolve_preset`.

    Examples:
        >>> get_preset("mnist5k", epochs=2).schedule.epochs
        2
        >>> get_preset("mnist5k", **{"bank.num_clusters": [3]}).bank.num_clusters
        [3]
    """
    presets = PRESETS if presets is None else presets
    if presets is PRESETS and name == AUTO:
        raise ValueError(
            "the auto preset is derived from the data: secu_plugin.train.auto.resolve_preset"
            "('auto', describe_data(images), ...)"
        )
    if name not in presets:
        choices = PRESET_CHOICES if presets is PRESETS else sorted(presets)
        raise ValueError(f"unknown preset {name!r}; choose from {choices}")
    preset = presets[name].replace(**overrides)
    preset.check()
    return preset
