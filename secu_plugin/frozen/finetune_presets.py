"""Settings of fine-tuning a frozen-head model (``recipes/finetune.py``): the shared groups of
:mod:`secu_plugin.train.settings` and the frozen path's cache, pairs and self-labeling groups
of :mod:`secu_plugin.frozen.head_presets`, with the fine-tuning's own values. A registry of
values, like the frozen path's presets.

The network, the heads (``num_clusters``) and the temperature are the start model's, and the
optimizer is AdamW: the settings that fine-tuning does not read (:data:`FINETUNE_READS` lists
those it does) keep the preset's values, and a change to one of them is refused rather than
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from secu_plugin.frozen.head_presets import FeatureCacheSettings, PairSettings, SelfLabelSettings
from secu_plugin.train.settings import (
    LoaderSettings,
    OptimizerSettings,
    RunSettings,
    ScheduleSettings,
    ViewSettings,
)

# The settings fine-tuning reads, under their flat names.
FINETUNE_READS = frozenset(
    {
        "data",
        "min_scale",  # the cached augmented views' smallest crop
        "view_kwargs",  # their other arguments of timm's create_transform (hflip, color_jitter)
        "batch_size",
        "num_workers",  # of the extraction
        "lr",  # AdamW's, for the tail and the projection head
        "weight_decay",
        "epochs",
        "augmented_views",
        "cache_dtype",
        "extract_batch_size",
        "cache_chunk_size",
        "num_neighbors",  # of the fixed reference graph
        "neighbor_whitening",
        "confident_fraction",
        "trainable_stages",
        "recommended_head_only",
    }
)


@dataclass(frozen=True, kw_only=True)
class FinetuneSettings(RunSettings):
    """Every setting of a fine-tuning run. ``--set name=value`` overrides any that it reads
    (:data:`FINETUNE_READS`).

    ``trainable_stages``: the backbone's last stages that train (with its head convolution);
    ``recommended_head_only``: the targets (and the kept state's criterion) of the start's
    recommended head alone, not of every head;
    ``confident_fraction``: the share of each cluster, most confident first, whose
    assignments are the targets; ``lr`` and ``weight_decay``: AdamW's; ``epochs``: of
    self-labeling; ``num_neighbors`` and ``neighbor_whitening``: the label-free criterion's
    reference graph (in the starting backbone's feature space).

    Examples:
        >>> from secu_plugin.train.presets import get_preset
        >>> settings = get_preset("finetune", FINETUNE_PRESETS, trainable_stages=1)
        >>> settings.trainable_stages, settings.optimization.lr, settings.cache.augmented_views
        (1, 0.0001, 4)
        >>> get_preset("finetune", FINETUNE_PRESETS, num_clusters=[5])
        Traceback (most recent call last):
        ...
        ValueError: fine-tuning does not read ['num_clusters'] (the network, heads and temperature are the start model's; the optimizer is AdamW)
    """

    # timm's training transform of the backbone, for the cached augmented views
    augmentation: ViewSettings = field(default_factory=lambda: ViewSettings("timm", 0.5))
    loader: LoaderSettings = field(default_factory=lambda: LoaderSettings(batch_size=128))
    optimization: OptimizerSettings = field(
        default_factory=lambda: OptimizerSettings(lr=1e-4, weight_decay=1e-4)
    )
    schedule: ScheduleSettings = field(default_factory=lambda: ScheduleSettings(8, 0))
    cache: FeatureCacheSettings = field(
        default_factory=lambda: FeatureCacheSettings(augmented_views=4)
    )
    pairing: PairSettings = field(default_factory=PairSettings)
    self_labeling: SelfLabelSettings = field(default_factory=SelfLabelSettings)
    trainable_stages: int = 2
    recommended_head_only: bool = False

    def check(self) -> None:
        """Refuses settings that cannot run, or that fine-tuning would not read, naming them."""
        super().check()  # every string setting against what it declares
        registered = FINETUNE_PRESETS.get(self.name)
        if registered is not None:
            mine, theirs = self.to_dict(), registered.to_dict()
            unread = [n for n in mine if n not in FINETUNE_READS | {"name"}]
            changed = sorted(n for n in unread if mine[n] != theirs[n])
            if changed:
                raise ValueError(
                    f"fine-tuning does not read {changed} (the network, heads and temperature "
                    "are the start model's; the optimizer is AdamW)"
                )
        positive = {
            "epochs": self.schedule.epochs,
            "augmented_views": self.cache.augmented_views,
            "batch_size": self.loader.batch_size,
            "num_neighbors": self.pairing.num_neighbors,
            "trainable_stages": self.trainable_stages,
        }
        for name, value in positive.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.recommended_head_only, bool):
            raise ValueError(
                f"recommended_head_only must be true or false, got {self.recommended_head_only!r}"
            )
        fraction = self.self_labeling.confident_fraction
        if not 0 < fraction <= 1:
            raise ValueError(f"confident_fraction must be in (0, 1], got {fraction}")
        if not self.optimization.lr > 0:
            raise ValueError(f"lr must be positive, got {self.optimization.lr}")


FINETUNE_PRESETS: dict[str, FinetuneSettings] = {
    # The values chosen before any held-out run (docs/finetune.md): the last 2 stages, the most
    # confident half of each cluster, AdamW at 1e-4, 8 epochs over 4 cached augmented views.
    "finetune": FinetuneSettings(name="finetune"),
}
