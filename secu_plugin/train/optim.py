"""Optimizers and learning-rate schedules of the SeCu recipes."""

from __future__ import annotations

import math

import torch
from torch import nn

from secu_plugin.train.settings import OptimizerSettings, ScheduleSettings


def encoder_lr(
    base_lr: float,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    epochs: int,
    warmup_epochs: int = 11,
) -> float:
    """The paper's encoder learning rate at ``step`` of ``epoch``.

    Epoch 0 trains nothing (lr 0: it only fills the assignment memory), a linear warm-up runs
    until ``warmup_epochs``, then a cosine decay to 0 at the end of training.

    Examples:
        >>> encoder_lr(0.2, epoch=0, step=5, steps_per_epoch=10, epochs=100)
        0.0
        >>> round(encoder_lr(0.2, epoch=11, step=0, steps_per_epoch=10, epochs=100), 6)
        0.2
    """
    warmup_steps = warmup_epochs * steps_per_epoch
    current = epoch * steps_per_epoch + step
    total = epochs * steps_per_epoch
    if epoch == 0:
        return 0.0
    if epoch < warmup_epochs:
        return base_lr * max(1, current - steps_per_epoch) / (warmup_steps - steps_per_epoch)
    return base_lr * (1 + math.cos(math.pi * (current - warmup_steps) / (total - warmup_steps))) / 2


def center_lr(
    base_lr: float, epoch: int, step: int, steps_per_epoch: int, epochs: int, ramp: bool = False
) -> float:
    """The centers' learning rate: constant, or ramped up by (1 - cos(pi t / T)) / 2 (ImageNet
    with the entropy constraint).

    Examples:
        >>> center_lr(1.2, epoch=3, step=0, steps_per_epoch=10, epochs=10)
        1.2
        >>> center_lr(4.2, epoch=0, step=0, steps_per_epoch=10, epochs=10, ramp=True)
        0.0
    """
    if not ramp:
        return base_lr
    progress = (epoch * steps_per_epoch + step) / (epochs * steps_per_epoch)
    return base_lr * (1 - math.cos(math.pi * progress)) / 2


def parameter_groups(
    encoder: nn.Module,
    centers: nn.ParameterList,
    weight_decay: float,
    split_by_dim: bool,
    backbone: nn.Module | None = None,
) -> list[dict]:
    """Parameter groups: the encoder's, then the centers' (last: their lr is set apart).

    With ``backbone`` (a part of ``encoder``), its parameters get groups of their own with
    role "backbone", so that fine-tuning can give pretrained weights a smaller lr.

    With ``split_by_dim`` (LARS, as in the paper's ImageNet code), parameters with one dimension
    (biases, norm weights) form a group without weight decay, which lightly's LARS also leaves
    without trust-ratio scaling; every parameter with more dimensions, the centers included,
    gets both.
    """
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    in_backbone = {id(p) for p in backbone.parameters()} if backbone is not None else set()
    center_group = {"params": list(centers), "weight_decay": weight_decay, "role": "centers"}
    groups = []
    for role, members in (
        ("backbone", [p for p in trainable if id(p) in in_backbone]),
        ("encoder", [p for p in trainable if id(p) not in in_backbone]),
    ):
        if not members:
            continue
        if not split_by_dim:
            groups.append({"params": members, "weight_decay": weight_decay, "role": role})
            continue
        groups.append(
            {
                "params": [p for p in members if p.ndim > 1],
                "weight_decay": weight_decay,
                "role": role,
            }
        )
        groups.append(
            {"params": [p for p in members if p.ndim <= 1], "weight_decay": 0.0, "role": role}
        )
    return [*groups, center_group]


def build_optimizer(
    name: str,
    encoder: nn.Module,
    centers: nn.ParameterList,
    weight_decay: float,
    momentum: float = 0.9,
    backbone: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """SGD (CIFAR/STL recipes) or lightly's LARS (ImageNet recipe) over encoder and centers.

    Learning rates are set every step from :func:`encoder_lr` and :func:`center_lr` by group
    ``role`` ("encoder", "centers", and "backbone" when ``backbone`` is given: see
    :func:`parameter_groups`).

    Examples:
        >>> encoder = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> centers = nn.ParameterList([nn.Parameter(torch.randn(3, 4))])
        >>> optimizer = build_optimizer("lars", encoder, centers, weight_decay=1e-6)
        >>> [(g["role"], len(g["params"]), g["weight_decay"]) for g in optimizer.param_groups]
        [('encoder', 1, 1e-06), ('encoder', 3, 0.0), ('centers', 1, 1e-06)]
    """
    if name == "sgd":
        groups = parameter_groups(encoder, centers, weight_decay, False, backbone)
        return torch.optim.SGD(groups, lr=0.0, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        from lightly.utils.lars import LARS

        groups = parameter_groups(encoder, centers, weight_decay, True, backbone)
        return LARS(groups, lr=0.0, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'lars', got {name!r}")


def optimizer_for(
    settings: OptimizerSettings,
    encoder: nn.Module,
    centers: nn.ParameterList,
    backbone: nn.Module | None = None,
) -> torch.optim.Optimizer:
    """:func:`build_optimizer` of ``settings``; ``backbone`` (a part of ``encoder``) gets
    groups of its own only when it learns at another rate (``backbone_lr_factor`` != 1).

    Examples:
        >>> encoder, centers = nn.Linear(4, 4), nn.ParameterList([nn.Parameter(torch.randn(3, 4))])
        >>> optimizer = optimizer_for(OptimizerSettings(), encoder, centers, backbone=encoder)
        >>> sorted({group["role"] for group in optimizer.param_groups})
        ['centers', 'encoder']
    """
    return build_optimizer(
        settings.optimizer,
        encoder,
        centers,
        weight_decay=settings.weight_decay,
        momentum=settings.momentum,
        backbone=backbone if settings.backbone_lr_factor != 1 else None,
    )


def learning_rates(
    settings: OptimizerSettings,
    schedule: ScheduleSettings,
    epoch: int,
    step: int,
    steps_per_epoch: int,
) -> dict[str, float]:
    """The learning rate of each optimizer group ``role`` at ``step`` of ``epoch``:
    :func:`encoder_lr`, :func:`center_lr`, and the backbone's (``backbone_lr_factor`` times
    the encoder's) when it has groups of its own.

    Examples:
        >>> rates = learning_rates(OptimizerSettings(), ScheduleSettings(), 50, 0, 10)
        >>> sorted(rates), rates["centers"]
        (['centers', 'encoder'], 1.2)
    """
    lrs = {
        "encoder": encoder_lr(
            settings.lr, epoch, step, steps_per_epoch, schedule.epochs, schedule.warmup_epochs
        ),
        "centers": center_lr(
            settings.center_lr,
            epoch,
            step,
            steps_per_epoch,
            schedule.epochs,
            ramp=settings.center_lr_ramp,
        ),
    }
    if settings.backbone_lr_factor != 1:
        lrs["backbone"] = lrs["encoder"] * settings.backbone_lr_factor
    return lrs
