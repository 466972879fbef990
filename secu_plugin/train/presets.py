"""Named training recipes: the paper's settings and the CPU demo on MNIST-5k.

A preset holds numbers only (no imports beyond the standard library). The input size and
normalization come from the backbone's timm ``pretrained_cfg`` (the registered
``secu_resnet18_cifar`` carries CIFAR-10's); a preset sets ``input_size``/``mean``/``std`` only
where it differs from its backbone's.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

CIFAR100_MEAN, CIFAR100_STD = [0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761]


class RunSettings:
    """What every settings dataclass of a recipe can do (``--set`` overrides, JSON, checks)."""

    name: str
    batch_size: int
    num_clusters: list[int]

    def replace(self, **changes):
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown preset settings: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Refuses settings that cannot run (subclasses add their rules)."""

    def bank_arguments(self) -> dict:
        """The :class:`secu_plugin.SeCuCenterBank` arguments of these settings (all but
        ``num_instances``, which comes from the data).

        Examples:
            >>> get_preset("mnist5k").bank_arguments()["num_clusters"]
            [10, 20, 30, 40, 50]
        """
        names = ("dim", "num_clusters", "assigner", "dual_lr", "lower_bound_ratio", "alpha")
        return {name: getattr(self, name) for name in names}

    def loss_arguments(self) -> dict:
        """The :class:`secu_plugin.SeCuLoss` arguments of these settings (besides the bank).

        Examples:
            >>> get_preset("mnist5k").loss_arguments()["temperature_x"]
            0.2
        """
        return {
            name: getattr(self, name) for name in ("temperature_x", "temperature_c", "label_weight")
        }

    def check_data_size(self, num_images: int, num_processes: int = 1) -> None:
        """Refuses data too small for this preset (or a batch that the processes cannot
        share evenly), saying which setting to change.

        Examples:
            >>> get_preset("mnist5k").check_data_size(5000)
            >>> get_preset("mnist5k").check_data_size(30)
            Traceback (most recent call last):
            ...
            ValueError: 30 images, fewer than the largest head's 50 clusters: pass fewer clusters, e.g. --set num_clusters=[3,6]
        """
        if self.batch_size % num_processes:
            raise ValueError(
                f"batch_size {self.batch_size} is not divisible by the {num_processes} processes: "
                "every process takes an equal share of each batch"
            )
        if num_images < 2:
            raise ValueError(f"{num_images} image(s): clustering needs at least 2 images")
        largest = max(self.num_clusters)
        if num_images < largest:
            suggestion = sorted({max(2, num_images // 10), max(2, num_images // 5)})
            raise ValueError(
                f"{num_images} images, fewer than the largest head's {largest} clusters: pass "
                f"fewer clusters, e.g. --set num_clusters={json.dumps(suggestion, separators=(',', ':'))}"
            )
        if num_images < self.batch_size:
            raise ValueError(
                f"{num_images} images, fewer than one batch of {self.batch_size}: pass a smaller "
                f"batch, e.g. --set batch_size={max(2, num_images // 4)}"
            )


@dataclass(frozen=True)
class Preset(RunSettings):
    """Every setting of a SeCu training run. ``--set name=value`` overrides any field.

    Examples:
        >>> preset = get_preset("cifar10")
        >>> preset.epochs, preset.center_lr, preset.min_scale, preset.assigner
        (401, 1.2, 0.3, 'size')
        >>> get_preset("cifar10", epochs=5).epochs
        5
    """

    name: str
    data: str = "mnist5k"
    # network
    backbone: str = "secu_resnet18_cifar"  # any timm name; secu_* carry the paper's stems
    backbone_kwargs: dict | None = None  # extra timm create_model arguments
    in_chans: int = 3
    # None: the backbone's pretrained_cfg (input size, normalization)
    input_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    dim: int = 128
    projection_layers: int = 2
    projection_batchnorm: bool = True
    predictor_hidden_dim: int | None = None
    # views
    views: str = "byol"  # "byol" (lightly's BYOL pair) or "digits"
    min_scale: float = 0.3
    # further keyword arguments of the view function (digit_views: rotation, translate, scale,
    # shear, erase_prob; byol_views: grayscale_input); None: its defaults
    view_kwargs: dict | None = None
    # optimization
    epochs: int = 401
    batch_size: int = 128  # in total, over all processes
    optimizer: str = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 11
    center_lr: float = 1.2
    center_lr_ramp: bool = False
    # the backbone's lr relative to the encoder's (below 1 when fine-tuning pretrained weights)
    backbone_lr_factor: float = 1.0
    # centers and memory from k-means on the initial projections (a pretrained backbone)
    kmeans_warm_start: bool = False
    # SeCu
    num_clusters: list[int] = field(default_factory=lambda: list(range(10, 101, 10)))
    assigner: str = "size"
    dual_lr: float = 0.1
    lower_bound_ratio: float = 0.9
    alpha: float = 6000.0
    temperature_x: float = 0.05
    temperature_c: float = 0.05
    label_weight: float = 0.2
    num_workers: int = 4
    # what the settings were derived from (the auto preset: the data's description and the
    # step budget); None for the named presets
    resolved_from: dict | None = None

    def network_arguments(self) -> dict:
        """The arguments of :class:`secu_plugin.models.SeCuNetwork` this preset trains.

        Examples:
            >>> get_preset("mnist5k").network_arguments()["backbone"]
            'secu_convnet_small'
        """
        return {name: getattr(self, name) for name in NETWORK_FIELDS}


NETWORK_FIELDS: tuple[str, ...] = (
    "backbone",
    "backbone_kwargs",
    "in_chans",
    "input_size",
    "mean",
    "std",
    "dim",
    "projection_layers",
    "projection_batchnorm",
    "predictor_hidden_dim",
)


PRESETS: dict[str, Preset] = {
    # The CPU demo, found by measuring on 2 cores (docs/results.md): a small CNN, augmentations
    # for digits (no flips, no color), small batches (more steps in a few minutes), a stronger
    # dual step for the few steps per epoch, and softer temperatures.
    "mnist5k": Preset(
        name="mnist5k",
        data="mnist5k",
        backbone="secu_convnet_small",
        in_chans=1,
        views="digits",
        min_scale=0.7,
        epochs=40,
        batch_size=64,
        lr=0.2,
        warmup_epochs=2,
        center_lr=0.5,
        num_clusters=[10, 20, 30, 40, 50],
        dual_lr=1.0,
        temperature_x=0.2,
        temperature_c=0.2,
        num_workers=0,
    ),
    "cifar10": Preset(name="cifar10", data="uoft-cs/cifar10"),
    "cifar10-entropy": Preset(name="cifar10-entropy", data="uoft-cs/cifar10", assigner="entropy"),
    "cifar100-20": Preset(
        name="cifar100-20",
        data="uoft-cs/cifar100",
        mean=list(CIFAR100_MEAN),
        std=list(CIFAR100_STD),
        epochs=801,
        center_lr=0.8,
        min_scale=0.2,
        num_clusters=list(range(20, 201, 20)),
    ),
    "stl10": Preset(
        name="stl10",
        data="tanganke/stl10",
        backbone="secu_resnet18_stl",
        epochs=801,
        center_lr=0.8,
        min_scale=0.2,
        temperature_c=1.0,
    ),
    "imagenet": Preset(
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
    ),
}
PRESETS["imagenet-entropy"] = PRESETS["imagenet"].replace(
    name="imagenet-entropy", assigner="entropy", center_lr_ramp=True
)


# The preset derived from the data (secu_plugin/train/auto.py): what the recipe trains with
# when --data is given and no --preset is named.
AUTO = "auto"
PRESET_CHOICES: list[str] = sorted([*PRESETS, AUTO])


def get_preset(name: str, presets: dict | None = None, **overrides) -> Preset:
    """The preset ``name`` of ``presets`` (default: :data:`PRESETS`) with ``overrides``
    applied and checked.

    ``"auto"`` derives the settings from the data named by ``overrides["data"]`` (default
    MNIST-5k): :func:`secu_plugin.train.auto.resolve_auto_preset`, which reads a sample of it.

    Examples:
        >>> get_preset("mnist5k", epochs=2).epochs
        2
        >>> get_preset("auto", data="mnist5k").resolved_from["data"]["num_images"]
        5000
    """
    if presets is None and name == AUTO:
        from secu_plugin.train.auto import resolve_auto_preset  # reads images: not at import

        return resolve_auto_preset(**overrides)
    presets = PRESETS if presets is None else presets
    if name not in presets:
        choices = PRESET_CHOICES if presets is PRESETS else sorted(presets)
        raise ValueError(f"unknown preset {name!r}; choose from {choices}")
    preset = presets[name].replace(**overrides)
    preset.check()
    return preset


def parse_overrides(items: list[str]) -> dict:
    """Parses ``name=value`` strings (values as JSON where they parse, else strings).

    Examples:
        >>> parse_overrides(["epochs=3", "num_clusters=[10,20]", "mean=null", "views=byol"])
        {'epochs': 3, 'num_clusters': [10, 20], 'mean': None, 'views': 'byol'}
    """
    overrides = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects name=value, got {item!r}")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return overrides
