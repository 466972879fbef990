"""Settings of SeCu heads trained on the cached features of a frozen pretrained backbone
(``recipes/train_head.py``): the shared groups of :mod:`secu_plugin.train.settings` plus the
feature cache and the pairs. A registry of values, like :mod:`secu_plugin.train.presets`."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from secu_plugin.model_selection import HEAD_GRID
from secu_plugin.train.settings import (
    BankSettings,
    LossSettings,
    NetworkSettings,
    OptimizerSettings,
    RunSettings,
    ScheduleSettings,
    ViewSettings,
)


@dataclass(frozen=True)
class FeatureCacheSettings:
    """The feature cache: what is stored, how many augmented views per image besides the
    plain one, and the extraction's batch and chunk (what an interrupted extraction redoes).

    Examples:
        >>> FeatureCacheSettings(augmented_views=2).cache_dtype
        'float16'
    """

    cache_dtype: Literal["float16", "float32"] = "float16"
    augmented_views: int = 0
    extract_batch_size: int = 64
    cache_chunk_size: int = 1024


@dataclass(frozen=True)
class PairSettings:
    """The pairs of the two-view loss: ``"neighbors"`` (an image and one of its k nearest
    neighbours in the backbone's feature space, measured in the square-rooted, PCA-whitened
    space of ``neighbor_whitening`` dimensions; 0: plain cosine) or ``"views"`` (two augmented
    views of the image). The heads still see the plain features.

    Examples:
        >>> PairSettings(pairs="views").num_neighbors
        5
    """

    pairs: Literal["neighbors", "views"] = "neighbors"
    num_neighbors: int = 5
    neighbor_whitening: int = 256


@dataclass(frozen=True)
class SelfLabelSettings:
    """The self-labeling phase after the SeCu epochs (0 epochs: none).

    ``confident_fraction``: the share of each cluster's images, most confident first, that are
    targets; ``feature_dropout`` and ``feature_noise`` perturb the features the head sees
    (dropout probability, and Gaussian noise in units of each feature's standard deviation);
    ``self_label_temperature``: of the cosine similarities to the centers; ``self_label_lr``:
    SGD's learning rate for the head and the centers (cosine decay over the phase).

    Examples:
        >>> SelfLabelSettings().confident_fraction
        0.5
    """

    self_label_epochs: int = 0
    confident_fraction: float = 0.5
    feature_dropout: float = 0.2
    feature_noise: float = 0.5
    self_label_temperature: float = 0.1
    self_label_lr: float = 0.02

    def check(self) -> None:
        """Refuses values that cannot run, naming the setting."""
        if self.self_label_epochs < 0:
            raise ValueError(f"self_label_epochs must be >= 0, got {self.self_label_epochs}")
        if not 0 < self.confident_fraction <= 1:
            raise ValueError(f"confident_fraction must be in (0, 1], got {self.confident_fraction}")
        if not 0 <= self.feature_dropout < 1:
            raise ValueError(f"feature_dropout must be in [0, 1), got {self.feature_dropout}")
        if self.feature_noise < 0:
            raise ValueError(f"feature_noise must be >= 0, got {self.feature_noise}")
        if self.self_label_temperature <= 0 or self.self_label_lr <= 0:
            raise ValueError("self_label_temperature and self_label_lr must be positive")


# The head objectives of the frozen path (secu_plugin.frozen.objectives).
Objective = Literal["secu", "turtle", "temi", "scan"]
OBJECTIVES: tuple[str, ...] = typing.get_args(Objective)


@dataclass(frozen=True)
class ObjectiveSettings:
    """What the heads learn: ``"secu"`` (SeCu's center bank over pairs: the settings above),
    ``"turtle"`` (the labelling a linear classifier fits fastest,
    :mod:`secu_plugin.frozen.objective_turtle`), ``"temi"`` (k-NN pairs weighted by a teacher
    ensemble's agreement, :mod:`secu_plugin.frozen.objective_temi`) or ``"scan"`` (neighbour
    consistency, then self-labeling, :mod:`secu_plugin.frozen.objective_scan`).

    TURTLE, TEMI and SCAN train their heads in the neighbour space (square root, L2, PCA
    whitening) of ``objective_dim`` dimensions (0: the raw features); ``objective_steps`` and
    ``objective_lr`` (None: the objective's own defaults) are TURTLE's outer iterations, TEMI's
    or SCAN's steps, and their Adam rate. ``turtle_*``: TURTLE's entropy weight gamma, inner
    Adam steps and rate, warm start (the inner classifier carried over); ``temi_*``: TEMI's
    neighbours, MLP heads per K, beta and teacher EMA momentum; ``scan_*``: SCAN's neighbours, heads per K (the one kept: SCAN's label-free
    criterion), entropy weight, and its self-labeling (steps, confidence threshold, feature
    noise in units of the space's scale).

    Examples:
        >>> ObjectiveSettings().objective in OBJECTIVES
        True
    """

    objective: Objective = "secu"
    objective_dim: int = 128
    objective_steps: int | None = None
    objective_lr: float | None = None
    turtle_gamma: float = 10.0
    turtle_inner_steps: int = 10
    turtle_inner_lr: float = 1e-3
    turtle_warm_start: bool = False
    temi_neighbors: int = 50
    temi_heads: int = 4
    temi_beta: float = 0.6
    temi_momentum: float = 0.95
    scan_neighbors: int = 20
    scan_heads: int = 1
    scan_entropy_weight: float = 5.0
    scan_self_label_steps: int = 300
    scan_confidence: float = 0.9
    scan_noise: float = 0.5

    def check(self) -> None:
        """Refuses values that cannot run, naming the setting."""
        if self.objective_dim < 0:
            raise ValueError(f"objective_dim must be >= 0, got {self.objective_dim}")
        if self.objective_steps is not None and self.objective_steps < 1:
            raise ValueError(f"objective_steps must be positive, got {self.objective_steps}")
        if self.objective_lr is not None and self.objective_lr <= 0:
            raise ValueError(f"objective_lr must be positive, got {self.objective_lr}")
        if self.scan_neighbors < 1 or self.temi_neighbors < 1:
            raise ValueError(
                f"scan_neighbors and temi_neighbors must be positive, got "
                f"{self.scan_neighbors}, {self.temi_neighbors}"
            )
        if self.temi_heads < 1 or self.scan_heads < 1:
            raise ValueError(
                f"temi_heads and scan_heads must be positive, got {self.temi_heads}, "
                f"{self.scan_heads}"
            )
        if not 0 < self.temi_beta <= 1:
            raise ValueError(f"temi_beta must be in (0, 1], got {self.temi_beta}")
        if not 0 <= self.temi_momentum < 1:
            raise ValueError(f"temi_momentum must be in [0, 1), got {self.temi_momentum}")


@dataclass(frozen=True, kw_only=True)
class HeadPreset(RunSettings):
    """Every setting of a frozen-backbone run. ``--set name=value`` overrides any setting.

    ``network.backbone`` is any timm model with pretrained weights; the augmented views are
    timm's training transform of it (``views="timm"``, crops of at least ``min_scale``).

    Examples:
        >>> from secu_plugin.train.presets import get_preset
        >>> preset = get_preset("frozen", HEAD_PRESETS)
        >>> preset.pairing.pairs, preset.bank.num_clusters[:3]
        ('neighbors', [2, 3, 4])
        >>> get_preset("frozen", HEAD_PRESETS, epochs=3).schedule.epochs
        3
    """

    # frozen heads cache timm's training views of the backbone (min_scale sets their crop)
    recipe_choices: ClassVar[dict[str, tuple[str, ...]]] = {"views": ("timm",)}

    # timm's training transform of the backbone, for the cached augmented views
    augmentation: ViewSettings = field(default_factory=lambda: ViewSettings("timm", 0.5))
    cache: FeatureCacheSettings = field(default_factory=FeatureCacheSettings)
    pairing: PairSettings = field(default_factory=PairSettings)
    # at the start of this epoch, every head's centers and memory are reset by spherical
    # k-means on the projections (the head has learnt for a few epochs); -1: never
    kmeans_epoch: int = 3
    # after the SeCu epochs: self-labeling on the confident images (secu_plugin.frozen.self_labeling)
    self_labeling: SelfLabelSettings = field(default_factory=SelfLabelSettings)
    # what the heads learn: SeCu (the groups above) or another objective on the same features
    head_objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    # the features' ceiling (k-means, spectral, k-NN agreement, linear probe) in results.json
    # when the evaluation images have labels (secu_plugin.baselines.feature_ceiling)
    feature_ceiling: bool = True

    def check(self) -> None:
        """Refuses settings that cannot run, naming the setting."""
        super().check()
        if self.pairing.pairs == "views" and self.cache.augmented_views < 2:
            raise ValueError(
                "pairs=views needs at least 2 augmented views per image: "
                "--set augmented_views=2 (or more)"
            )
        self.self_labeling.check()
        self.head_objective.check()
        if self.pairing.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be positive, got {self.pairing.num_neighbors}")
        # What the frozen loop has no use for: said, never silently ignored.
        if self.augmentation.view_kwargs is not None:
            raise ValueError(
                "frozen heads cache timm's training views of the backbone: view_kwargs must "
                "be null (min_scale sets their crop)"
            )
        if self.network.predictor_hidden_dim is not None:
            raise ValueError("frozen heads train no predictor: predictor_hidden_dim must be null")
        if self.optimization.backbone_lr_factor != 1:
            raise ValueError("the backbone is frozen: backbone_lr_factor must be 1")


# The heads of every frozen preset: a projection MLP (hidden 512) of the pretrained features.
FROZEN = HeadPreset(
    name="frozen",
    network=NetworkSettings(backbone="vit_small_patch14_dinov2.lvd142m", projection_hidden_dim=512),
    optimization=OptimizerSettings(lr=0.05, center_lr=0.5),
    schedule=ScheduleSettings(epochs=30, warmup_epochs=3),
    bank=BankSettings(num_clusters=list(HEAD_GRID), dual_lr=1.0),
    loss=LossSettings(temperature_x=0.1, temperature_c=0.2),
)

HEAD_PRESETS: dict[str, HeadPreset] = {
    # Any data set of a few thousand to a few hundred thousand images (measured on MNIST-5k
    # through EfficientNet-Lite0 and on sklearn's digits: docs/results.md). The batch comes
    # from the number of images (batch_size_for).
    "frozen": FROZEN,
    # ImageNet-1k on a DINOv2 ViT-B/14 (not run here: no GPU, no download; docs/frozen.md):
    # the heads, batch and schedule of TEMI/TURTLE-style heads on frozen features.
    "frozen-imagenet": FROZEN.replace(
        name="frozen-imagenet",
        data="imagenet-1k",
        backbone="vit_base_patch14_dinov2.lvd142m",  # its own 518 px input (fixed in timm)
        num_neighbors=20,
        dim=256,
        projection_hidden_dim=2048,
        num_clusters=list(range(1000, 10001, 1000)),
        epochs=100,
        batch_size=4096,
        lr=0.4,
        warmup_epochs=5,
        center_lr=1.0,
        dual_lr=20.0,
        lower_bound_ratio=0.4,
        alpha=1e5,
        extract_batch_size=256,
        num_workers=8,
    ),
}
