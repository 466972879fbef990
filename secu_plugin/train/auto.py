"""The ``auto`` preset: training settings derived from the data, for small sets of own images.

``accelerate launch recipes/train.py --data ROOT`` (no ``--preset``) trains with it. A sample
of the training images is described (:func:`secu_plugin.data.describe_data`: number of images,
grey or colour, typical size, number of classes when the labels say something, pixel mean and
std) and :func:`auto_preset`, a pure function, maps that description to a
:class:`~secu_plugin.train.presets.Preset`: the ``mnist5k`` preset with the data-dependent
settings replaced:

- network: ``secu_convnet_small`` (any ``in_chans``, any input from 8 pixels), 1 channel for
  grey data and 3 for colour, the data's own mean and std, input size from the images (see
  :func:`input_size_for`);
- views sized to the input (:func:`view_settings`): grey data gets the digits' affine views,
  with neither crop nor erasing on tiny images; colour data gets the same warps with a random
  palette per view (``shapes``) and each image standardised per channel (``input_norm``):
  BYOL's colour jitter left the colours to tell images apart (docs/colour_shortcut.json);
- the schedule (:func:`schedule_for`): the batch from the number of images
  (:func:`~secu_plugin.train.settings.batch_size_for`, from 64 for up to 20,000 images), the
  demo's 40 passes over the data but at most a budget of 3,000 training steps (so time grows
  with the data up to 5,000 images, then stays flat), a warm-up of a fixed number of steps
  turned into epochs; epoch 0 still only fills the assignment memory (encoder lr 0), on top;
- heads ``[C, 2C, 3C, 4C, 5C]`` for ``C`` known classes, else the grid 2..50 of
  :data:`secu_plugin.model_selection.HEAD_GRID` (K not given), each
  kept only if the data has at least 20 images per cluster (:func:`heads_for`);
- everything else is the CPU demo's (``mnist5k``: backbone, dual step, temperatures, learning
  rates), measured for a few thousand steps rather than the paper's hundreds of epochs.

Any ``--set``/``--epochs`` override wins, and the derived settings follow it (a different
batch changes the number of epochs of the step budget; a different input size, the views).
The description and the budget are kept in ``Preset.resolved_from``, so the model's
``training`` record says what the settings came from. Measurements: ``docs/results.md``.
"""

from __future__ import annotations

import math
import os

from secu_plugin.data.describe import DataDescription
from secu_plugin.data.transforms import per_channel
from secu_plugin.model_selection import HEAD_GRID
from secu_plugin.train.presets import AUTO, PRESETS, Preset, get_preset
from secu_plugin.train.settings import batch_size_for

# The named preset the auto settings start from.
BASE_PRESET = "mnist5k"
# Passes over the data after the memory-filling epoch (the demo's), at most STEP_BUDGET
# training steps; of them the linear warm-up. A fixed step budget made 2,000 images cost
# as much as the demo's 5,000.
EPOCH_BUDGET = 40
STEP_BUDGET = 3000
WARMUP_STEPS = 100
# Largest input side: larger images are resized down to it (time grows with its square).
MAX_INPUT_SIZE = 32
MIN_IMAGES_PER_CLUSTER = 20
# Colour data: the probability that a channel of a view is inverted (shape_views).
PALETTE_INVERT_PROB = 0.5
DEFAULT_HEADS = HEAD_GRID


def input_size_for(image_size: int) -> int:
    """The network's input side: the images' own size, at most :data:`MAX_INPUT_SIZE`.

    Examples:
        >>> input_size_for(8), input_size_for(28), input_size_for(56), input_size_for(500)
        (8, 28, 32, 32)
    """
    return int(min(max(image_size, 1), MAX_INPUT_SIZE))


def _between(size: int, small: float, large: float, low: int = 8, high: int = 24) -> float:
    """``small`` at ``low`` pixels and below, ``large`` at ``high`` and above, linear between."""
    t = min(max((size - low) / (high - low), 0.0), 1.0)
    return round(small + t * (large - small), 3)


def view_settings(channels: int, input_size: int) -> tuple[str, float, dict]:
    """``(views, min_scale, view_kwargs)`` for the data's channels and the input size.

    Grey data: the digits' views (small affine warps, no flip, no colour jitter). From 24
    pixels up they are the ``mnist5k`` preset's (crop to 70% of the area, 25% erasing); toward
    8 pixels the crop and the erasing fade out (a 2-10% erase or a 70% crop of an 8x8 image
    removes whole strokes) and the affine warp shrinks to about a pixel.
    Colour data: the same warps in RGB, without erasing, and a random palette per view
    (``shapes``: channels permuted, each inverted with probability 0.5), so that two views
    share their shape and not their colours (chosen on the tune set color32:
    docs/scratch_heldout.json).

    Examples:
        >>> view_settings(1, 8)
        ('digits', 1.0, {'rotation': 10.0, 'translate': 0.125, 'scale': [0.9, 1.1], 'shear': 5.0, 'erase_prob': 0.0})
        >>> view_settings(1, 28)[:2], view_settings(1, 28)[2]["erase_prob"]
        (('digits', 0.7), 0.25)
        >>> view_settings(3, 32)[:2], view_settings(3, 32)[2]["invert_prob"]
        (('shapes', 0.7), 0.5)
    """
    kwargs = {
        "rotation": _between(input_size, 10.0, 15.0),
        "translate": _between(input_size, 0.125, 0.1),
        "scale": [_between(input_size, 0.9, 0.85), _between(input_size, 1.1, 1.15)],
        "shear": _between(input_size, 5.0, 10.0),
        "erase_prob": _between(input_size, 0.0, 0.25, low=12),
    }
    min_scale = _between(input_size, 1.0, 0.7, low=12)
    if channels == 1:
        return "digits", min_scale, kwargs
    return "shapes", min_scale, {**kwargs, "erase_prob": 0.0, "invert_prob": PALETTE_INVERT_PROB}


def auto_batch_size(num_images: int) -> int:
    """64 (the CPU demo's: many steps per epoch) up to 20,000 images, 128 up to 200,000, then
    256; halved (down to 8) until an epoch has at least 16 steps (:func:`batch_size_for`).

    Examples:
        >>> auto_batch_size(50), auto_batch_size(500), auto_batch_size(1797), auto_batch_size(50_000)
        (8, 16, 64, 128)
    """
    largest = 64 if num_images <= 20_000 else 128 if num_images <= 200_000 else 256
    return batch_size_for(num_images, largest=largest, smallest=8)


def schedule_for(
    num_images: int,
    batch_size: int,
    step_budget: int = STEP_BUDGET,
    warmup_steps: int = WARMUP_STEPS,
    epochs: int | None = None,
    epoch_budget: int = EPOCH_BUDGET,
) -> dict:
    """Epochs and warm-up epochs: ``epoch_budget`` passes over the data, fewer where they
    would exceed ``step_budget`` training steps (the recipe counts in epochs).

    Epoch 0 only fills the assignment memory, so ``epochs`` is one more than the training
    epochs; the warm-up is ``warmup_steps`` rounded to whole epochs (at least one, and it ends
    before the last epoch). With ``epochs`` given (an override) it is kept.

    Examples:
        >>> schedule_for(1797, 64)  # 28 steps per epoch: 40 epochs of training, 4 of warm-up
        {'epochs': 41, 'warmup_epochs': 5, 'steps_per_epoch': 28, 'training_steps': 1120}
        >>> schedule_for(20_000, 64)["training_steps"]  # 312 steps per epoch: the step budget
        3120
        >>> schedule_for(5000, 64)["epochs"], schedule_for(5000, 64, epochs=3)["warmup_epochs"]
        (40, 2)
    """
    steps_per_epoch = max(1, num_images // batch_size)  # the recipe drops the last partial batch
    if epochs is None:
        training = min(epoch_budget, math.ceil(step_budget / steps_per_epoch))
        epochs = 1 + max(2, training)
    warmup = 1 + max(1, round(warmup_steps / steps_per_epoch))
    warmup = min(warmup, max(1, epochs - 1))
    return {
        "epochs": int(epochs),
        "warmup_epochs": int(warmup),
        "steps_per_epoch": steps_per_epoch,
        "training_steps": (int(epochs) - 1) * steps_per_epoch,
    }


def heads_for(num_images: int, num_classes: int | None) -> list[int]:
    """``[C, 2C, ..., 5C]`` with ``C`` classes, else :data:`HEAD_GRID` (2..50); heads with fewer
    than :data:`MIN_IMAGES_PER_CLUSTER` images per cluster are dropped (``C`` itself is kept
    while the data has at least 2 images per class).

    Examples:
        >>> heads_for(1797, 10), heads_for(500, 3), heads_for(100, None), heads_for(30, None)
        ([10, 20, 30, 40, 50], [3, 6, 9, 12, 15], [2, 3, 4, 5], [2])
        >>> heads_for(1797, None) == list(HEAD_GRID)
        True
    """
    base = list(DEFAULT_HEADS) if num_classes is None else [num_classes * k for k in range(1, 6)]
    heads = [k for k in base if k * MIN_IMAGES_PER_CLUSTER <= num_images]
    if not heads:
        first = base[0] if num_classes is not None and 2 * base[0] <= num_images else None
        heads = [first or max(2, num_images // MIN_IMAGES_PER_CLUSTER)]
    return heads


def _channel_values(name: str, values: tuple[float, ...], channels: int) -> list[float]:
    # Rounded as the description is: colour data trained as grey averages its RGB statistics.
    averaged = per_channel(name, values, channels, average_rgb=True)
    return [round(v, 4) for v in averaged]


def auto_preset(
    description: DataDescription, data: str = "mnist5k", num_workers: int = 0, **overrides
) -> Preset:
    """The auto preset for data described by ``description``: :data:`BASE_PRESET` with the
    data-dependent settings replaced; ``overrides`` (flat or ``group.name``) win, and the
    derived settings follow them. A pure function: it reads no data.

    Examples:
        >>> grey8 = DataDescription(1797, channels=1, image_size=8, num_classes=10)
        >>> preset = auto_preset(grey8, data="digits")
        >>> preset.network.input_size, preset.loader.batch_size, preset.schedule.epochs
        (8, 64, 41)
        >>> preset.augmentation.views, preset.augmentation.min_scale
        ('digits', 1.0)
        >>> auto_preset(grey8, batch_size=32).schedule.epochs  # still 40 passes, of 56 steps
        41
        >>> auto_preset(DataDescription(9000, 1, 28, 10)).schedule.epochs  # 3000 of 140 steps
        23
    """
    overrides = Preset.flat_names(overrides)
    channels = int(overrides.get("in_chans", description.channels))
    input_size = overrides.get("input_size") or input_size_for(description.image_size)
    views, min_scale, view_kwargs = view_settings(channels, int(input_size))
    if overrides.get("views", views) != views:  # views named by hand: their own defaults
        view_kwargs = {}
    batch_size = int(overrides.get("batch_size", auto_batch_size(description.num_images)))
    schedule = schedule_for(description.num_images, batch_size, epochs=overrides.get("epochs"))
    derived = PRESETS[BASE_PRESET].replace(
        name=AUTO,
        data=data,
        in_chans=channels,
        # colour data: each image standardised per channel, as its views' palettes need
        input_norm="instance" if overrides.get("views", views) == "shapes" else "none",
        input_size=int(input_size),
        mean=_channel_values("mean", description.mean, channels),
        std=_channel_values("std", description.std, channels),
        views=views,
        min_scale=min_scale,
        view_kwargs=view_kwargs,
        epochs=schedule["epochs"],
        batch_size=batch_size,
        warmup_epochs=schedule["warmup_epochs"],
        num_clusters=heads_for(description.num_images, description.num_classes),
        num_workers=num_workers,
        resolved_from={
            "data": description.to_dict(),
            "epoch_budget": EPOCH_BUDGET,
            "step_budget": STEP_BUDGET,
            "warmup_steps": WARMUP_STEPS,
            "steps_per_epoch": schedule["steps_per_epoch"],
            "training_steps": schedule["training_steps"],
        },
    )
    return derived.replace(**overrides)


def default_num_workers() -> int:
    """DataLoader workers: none on a CPU-only machine (they would take the training's cores),
    else half the cores, at most 8."""
    import torch

    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 2) // 2))


def preset_data(name: str, overrides: dict) -> str:
    """The data a run of preset ``name`` trains on: ``overrides["data"]`` (``--data``), else
    the named preset's (the auto preset's base for ``"auto"``).

    Examples:
        >>> preset_data("imagenet", {}), preset_data("auto", {}), preset_data("auto", {"data": "x"})
        ('imagenet-1k', 'mnist5k', 'x')
    """
    if "data" in overrides:
        return overrides["data"]
    named = PRESETS.get(BASE_PRESET if name == AUTO else name)
    return named.data if named is not None else PRESETS[BASE_PRESET].data


def resolve_preset(name: str, description: DataDescription | None = None, /, **overrides) -> Preset:
    """The settings ``recipes/train.py`` trains with: the named preset, or for ``"auto"`` the
    settings derived from ``description`` (of the training data the recipe read), with the
    workers of this machine unless ``overrides`` name them.

    Examples:
        >>> grey8 = DataDescription(1797, channels=1, image_size=8, num_classes=10)
        >>> resolve_preset("auto", grey8, data="digits", epochs=5).schedule.epochs
        5
        >>> resolve_preset("mnist5k", grey8).network.input_size is None  # named: as it is
        True
    """
    if name != AUTO:
        return get_preset(name, **overrides)
    if description is None:
        raise ValueError("the auto preset needs a description of the data (describe_data)")
    overrides = Preset.flat_names(overrides)
    overrides.setdefault("num_workers", default_num_workers())
    preset = auto_preset(description, data=overrides.pop("data", "mnist5k"), **overrides)
    preset.check()
    return preset


def describe_settings(preset: Preset) -> str:
    """The resolved settings as printable lines (the recipe prints them at the start).

    Examples:
        >>> grey8 = DataDescription(1797, channels=1, image_size=8, num_classes=10)
        >>> print(describe_settings(auto_preset(grey8)).splitlines()[0])
        resolved settings (auto, from 1797 grey 8 px images, 10 classes):
    """
    lines = []
    source = getattr(preset, "resolved_from", None) or {}
    described = source.get("data")
    if described:
        kind = "colour" if described["channels"] == 3 else "grey"
        classes = described["num_classes"]
        lines.append(
            f"resolved settings ({preset.name}, from {described['num_images']} {kind} "
            f"{described['image_size']} px images, "
            f"{'unknown' if classes is None else classes} classes):"
        )
    else:
        lines.append(f"settings ({preset.name}):")
    for name, value in preset.to_dict().items():
        if name not in ("name", "resolved_from"):
            lines.append(f"  {name}: {value}")
    if source:
        lines.append(
            f"  schedule: {source['training_steps']} training steps "
            f"({source['steps_per_epoch']} per epoch) after the memory-filling epoch 0"
        )
    return "\n".join(lines)
