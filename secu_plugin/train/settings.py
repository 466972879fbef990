"""Training settings as data: one small frozen dataclass per thing a run configures.

A recipe's settings (:class:`~secu_plugin.train.presets.Preset` from scratch,
:class:`~secu_plugin.frozen.head_presets.HeadPreset` on a frozen backbone) are composed of
these groups, and every field is declared in exactly one class. So a flat name such as
``lr`` or ``num_clusters`` names one field of one group, which is how ``--set name=value``
finds it (``--set optimization.lr=0.1`` names the group as well). The recipe hands each group
to the constructor it configures::

    network = SeCuNetwork(**asdict(settings.network))
    bank = SeCuCenterBank(num_instances=len(images), dim=network.dim, **asdict(settings.bank))
    criterion = SeCuLoss(bank, **asdict(settings.loss))

Every string setting declares the values it takes (:mod:`secu_plugin.train.choices`): a
recipe checks its command line's values before it reads data (:meth:`RunSettings.checked_overrides`)
and every value when the settings are resolved (:meth:`RunSettings.check`).

Numbers only: this module imports nothing beyond the standard library.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from secu_plugin.train.choices import DataSource, RunName, TimmModelName, check_setting


@dataclass(frozen=True)
class NetworkSettings:
    """The arguments of :class:`secu_plugin.models.SeCuNetwork`: backbone and heads.

    ``input_size``, ``mean`` and ``std`` of None take the backbone's timm ``pretrained_cfg``.

    Examples:
        >>> NetworkSettings(backbone="secu_convnet_tiny", in_chans=1).dim
        128
    """

    backbone: TimmModelName = "secu_resnet18_cifar"  # secu_* carry the paper's stems
    backbone_kwargs: dict | None = None  # extra timm create_model arguments
    in_chans: int = 3
    input_size: int | None = None
    mean: list[float] | None = None
    std: list[float] | None = None
    dim: int = 128
    projection_layers: int = 2
    projection_hidden_dim: int | None = None  # None: the backbone's feature width
    projection_batchnorm: bool = True
    predictor_hidden_dim: int | None = None  # None: no predictor
    # "instance": each image standardised per channel first (colours that carry nothing)
    input_norm: Literal["none", "instance"] = "none"


@dataclass(frozen=True)
class ViewSettings:
    """The random views of an image: the kind, the smallest crop, the view function's extra
    arguments (``digit_views``: rotation, translate, scale, shear, erase_prob; ``shape_views``:
    the same and invert_prob; ``byol_views``: grayscale_input; None: its defaults).

    Examples:
        >>> ViewSettings(views="digits", min_scale=0.7).view_kwargs is None
        True
    """

    # "byol" (lightly's BYOL pair), "digits", "shapes" (the digits' warps in colour with a
    # random palette per view), or "timm" (timm's training transform: frozen heads)
    views: Literal["byol", "digits", "shapes", "timm"] = "byol"
    min_scale: float = 0.3
    view_kwargs: dict | None = None


@dataclass(frozen=True)
class LoaderSettings:
    """The training DataLoader: the global batch (over all processes; None: from the number
    of images, :func:`batch_size_for`) and the worker processes.

    Examples:
        >>> LoaderSettings(batch_size=64).num_workers
        0
    """

    batch_size: int | None = None
    num_workers: int = 0


@dataclass(frozen=True)
class OptimizerSettings:
    """The optimizer (:func:`secu_plugin.train.optim.build_optimizer`) and its learning rates:
    the encoder's peak (cosine after the warm-up), the centers' (constant, or ramped up), and
    the backbone's relative to the encoder's (below 1 when fine-tuning pretrained weights).

    Examples:
        >>> OptimizerSettings(optimizer="lars").lr
        0.2
    """

    optimizer: Literal["sgd", "lars"] = "sgd"
    lr: float = 0.2
    momentum: float = 0.9
    weight_decay: float = 1e-4
    center_lr: float = 1.2
    center_lr_ramp: bool = False
    backbone_lr_factor: float = 1.0


@dataclass(frozen=True)
class ScheduleSettings:
    """Epochs (epoch 0 only fills the assignment memory: encoder lr 0) and warm-up epochs.

    Examples:
        >>> ScheduleSettings(epochs=40, warmup_epochs=2).epochs
        40
    """

    epochs: int = 401
    warmup_epochs: int = 11


@dataclass(frozen=True)
class BankSettings:
    """The arguments of :class:`secu_plugin.SeCuCenterBank` but ``num_instances`` (from the
    data) and ``dim`` (from the network).

    Examples:
        >>> BankSettings(num_clusters=[10, 20]).dual_lr
        0.1
    """

    num_clusters: list[int] = field(default_factory=lambda: list(range(10, 101, 10)))
    assigner: Literal["size", "entropy"] = "size"
    dual_lr: float = 0.1
    lower_bound_ratio: float = 0.9
    alpha: float = 6000.0
    # "replicated", "sharded" (each rank keeps its own instances' labels) or "auto" (sharded
    # above 1 GiB of labels); "sharded" at any size tests the per-rank checkpoints.
    memory: Literal["auto", "replicated", "sharded"] = "auto"


@dataclass(frozen=True)
class LossSettings:
    """The arguments of :class:`secu_plugin.SeCuLoss` but the bank.

    Examples:
        >>> LossSettings(temperature_c=0.2).temperature_x
        0.05
    """

    temperature_x: float = 0.05
    temperature_c: float = 0.05
    label_weight: float = 0.2


def batch_size_for(num_images: int, largest: int = 256, smallest: int = 2) -> int:
    """The batch a run takes when its settings name none: ``largest``, halved (not below
    ``smallest``) until an epoch has at least 16 steps. Small sets need steps more than
    large batches (sklearn's 1797 digits on frozen features: ACC 0.915 with 64, 0.669 with 256).

    Examples:
        >>> batch_size_for(5000), batch_size_for(1797), batch_size_for(100)
        (256, 64, 4)
        >>> batch_size_for(500, largest=64, smallest=8), batch_size_for(50, largest=64, smallest=8)
        (16, 8)
    """
    batch = largest
    while batch > smallest and batch * 16 > num_images:
        batch //= 2
    return batch


@functools.cache
def setting_types(cls: type) -> dict[str, tuple[str | None, Any]]:
    """Each flat setting name of the settings class ``cls``: its group (None: a field of
    ``cls`` itself) and its type (``Literal`` and ``Annotated`` kept); refuses a name declared
    twice.

    Examples:
        >>> from secu_plugin.train.presets import Preset
        >>> setting_types(Preset)["optimizer"]
        ('optimization', typing.Literal['sgd', 'lars'])
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    names: dict[str, tuple[str | None, Any]] = {}
    for outer in dataclasses.fields(cls):
        group = hints[outer.name]
        if _is_group(group):
            inner = typing.get_type_hints(group, include_extras=True)
            found = {f.name: (outer.name, inner[f.name]) for f in dataclasses.fields(group)}
        else:
            found = {outer.name: (None, group)}
        for name, declared in found.items():
            if name in names:
                raise TypeError(f"{cls.__name__}: setting {name!r} is declared twice")
            names[name] = declared
    return names


def group_fields(cls: type) -> dict[str, str | None]:
    """Each flat setting name of the settings class ``cls`` and its group (None: a field of
    ``cls`` itself).

    Examples:
        >>> from secu_plugin.train.presets import Preset
        >>> fields = group_fields(Preset)
        >>> fields["lr"], fields["num_clusters"], fields["data"]
        ('optimization', 'bank', None)
    """
    return {name: group for name, (group, _) in setting_types(cls).items()}


def _is_group(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """What every recipe's settings hold and can do: the run's name and data, the groups both
    recipes configure (the dataclasses above), flat ``--set`` overrides, a flat record, checks.

    Subclasses add their own groups and settings, and may give a group another default.

    Examples:
        >>> from secu_plugin.train.presets import get_preset
        >>> preset = get_preset("mnist5k").replace(lr=0.1, **{"bank.dual_lr": 0.5})
        >>> preset.optimization.lr, preset.bank.dual_lr, preset.to_dict()["dual_lr"]
        (0.1, 0.5, 0.5)
    """

    # The allowed values of a shared group's string setting that this recipe narrows.
    recipe_choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    name: RunName
    data: DataSource = "mnist5k"
    network: NetworkSettings = field(default_factory=NetworkSettings)
    augmentation: ViewSettings = field(default_factory=ViewSettings)
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    optimization: OptimizerSettings = field(default_factory=OptimizerSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    bank: BankSettings = field(default_factory=BankSettings)
    loss: LossSettings = field(default_factory=LossSettings)

    @classmethod
    def flat_names(cls, changes: dict[str, Any]) -> dict[str, Any]:
        """``changes`` under flat names (``optimization.lr`` becomes ``lr``); refuses names
        these settings do not have.

        Examples:
            >>> from secu_plugin.train.presets import Preset
            >>> Preset.flat_names({"optimization.lr": 0.1, "epochs": 3})
            {'lr': 0.1, 'epochs': 3}
        """
        fields = group_fields(cls)
        flat: dict[str, Any] = {}
        unknown = []
        for key, value in changes.items():
            group, _, name = key.rpartition(".")
            if name not in fields or (group and fields[name] != group):
                unknown.append(key)
            else:
                flat[name] = value
        if unknown:
            raise ValueError(f"unknown preset settings: {sorted(unknown)}")
        return flat

    @classmethod
    def checked_overrides(cls, changes: dict[str, Any]) -> dict[str, Any]:
        """:meth:`flat_names` of ``changes``, each value checked (:meth:`check_value`): what a
        recipe does with its command line before it reads any data.

        Examples:
            >>> from secu_plugin.train.presets import Preset
            >>> Preset.checked_overrides({"optimization.optimizer": "lars"})
            {'optimizer': 'lars'}
        """
        flat = cls.flat_names(changes)
        for name, value in flat.items():
            cls.check_value(name, value)
        return flat

    @classmethod
    def check_value(cls, name: str, value: Any) -> None:
        """Refuses a value of the string setting ``name`` (flat) that its type does not
        declare (:func:`~secu_plugin.train.choices.check_setting`), or that this recipe does
        not take (:attr:`recipe_choices`); other settings pass.

        Examples:
            >>> from secu_plugin.train.presets import Preset
            >>> Preset.check_value("views", "byoll")
            Traceback (most recent call last):
            ...
            ValueError: views='byoll' is not one of the allowed values: 'byol', 'digits', 'shapes'
        """
        check_setting(name, setting_types(cls)[name][1], value, cls.recipe_choices.get(name))

    def replace(self, **changes: Any):
        """A copy with ``changes`` applied; each key is a flat name (``lr``) or
        ``group.name`` (``optimization.lr``)."""
        fields = group_fields(type(self))
        top: dict[str, Any] = {}
        grouped: dict[str, dict[str, Any]] = {}
        for name, value in self.flat_names(changes).items():
            if fields[name] is None:
                top[name] = value
            else:
                grouped.setdefault(fields[name], {})[name] = value
        for group, values in grouped.items():
            top[group] = dataclasses.replace(getattr(self, group), **values)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict:
        """Every setting under its flat name (the model's ``training`` record, the trackers)."""
        record: dict[str, Any] = {}
        for outer in dataclasses.fields(self):
            value = getattr(self, outer.name)
            if dataclasses.is_dataclass(value):
                record.update(dataclasses.asdict(value))
            else:
                record[outer.name] = copy.deepcopy(value)
        return record

    def check(self) -> None:
        """Refuses settings that cannot run: every string setting's value against what it
        declares (:meth:`check_value`); subclasses add their rules."""
        for name, value in self.to_dict().items():
            self.check_value(name, value)

    def with_batch_size_for(self, num_images: int):
        """These settings with a batch: the one they name, else :func:`batch_size_for`."""
        if self.loader.batch_size is not None:
            return self
        return self.replace(batch_size=batch_size_for(num_images))

    def check_data_size(self, num_images: int, num_processes: int = 1) -> None:
        """Refuses data too small for these settings (or a batch that the processes cannot
        share evenly), saying which setting to change.

        Examples:
            >>> from secu_plugin.train.presets import get_preset
            >>> get_preset("mnist5k").check_data_size(5000)
            >>> get_preset("mnist5k").check_data_size(30)
            Traceback (most recent call last):
            ...
            ValueError: 30 images, fewer than the largest head's 50 clusters: pass fewer clusters, e.g. --set num_clusters=[3,6]
        """
        batch_size = self.loader.batch_size
        if batch_size % num_processes:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the {num_processes} processes: "
                "every process takes an equal share of each batch"
            )
        if num_images < 2:
            raise ValueError(f"{num_images} image(s): clustering needs at least 2 images")
        largest = max(self.bank.num_clusters)
        if num_images < largest:
            suggestion = sorted({max(2, num_images // 10), max(2, num_images // 5)})
            raise ValueError(
                f"{num_images} images, fewer than the largest head's {largest} clusters: pass "
                f"fewer clusters, e.g. --set num_clusters={json.dumps(suggestion, separators=(',', ':'))}"
            )
        if num_images < batch_size:
            raise ValueError(
                f"{num_images} images, fewer than one batch of {batch_size}: pass a smaller "
                f"batch, e.g. --set batch_size={max(2, num_images // 4)}"
            )


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
