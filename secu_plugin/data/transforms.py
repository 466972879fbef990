"""Image modes, per-channel statistics and the evaluation transform: what turns any PIL image
into a model's input.

The evaluation transform is timm's (``create_transform`` of a model's data config, as
``timm.data.resolve_model_data_config`` gives it), after a conversion to the model's mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import create_transform
from torchvision import transforms as T

# The bundled digits' statistics (timm has ImageNet's: IMAGENET_DEFAULT_MEAN / _STD).
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)


def per_channel(
    name: str,
    values: Sequence[float],
    channels: int,
    average_rgb: bool = False,
    positive: bool = False,
) -> tuple[float, ...]:
    """A normalization statistic with one value per channel: a single value is repeated; with
    ``average_rgb``, RGB statistics are averaged for a grey input. ValueError otherwise.

    Examples:
        >>> per_channel("mean", [0.5], channels=3)
        (0.5, 0.5, 0.5)
        >>> per_channel("std", (0.2, 0.3, 0.4), channels=1, average_rgb=True)
        (0.3,)
        >>> per_channel("std", [0.2, 0.3], channels=3)
        Traceback (most recent call last):
        ...
        ValueError: std must have 1 or 3 values, got 2
    """
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a list of {channels} floats, got {values!r}")
    floats = tuple(float(v) for v in values)
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be finite, got {list(floats)}")
    if len(floats) == 1:
        floats = floats * channels
    elif len(floats) == 3 and channels == 1 and average_rgb:
        floats = (sum(floats) / 3,)
    if len(floats) != channels:
        raise ValueError(f"{name} must have 1 or {channels} values, got {len(values)}")
    if positive and any(v <= 0 for v in floats):
        raise ValueError(f"{name} must be positive, got {list(floats)}")
    return floats


def to_uniform_mode(image: Image.Image) -> Image.Image:
    """Returns the image in mode "L" (grey sources) or "RGB" (everything else)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # PIL's convert("L") clips 16/32-bit values at 255; rescale by the data's range instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's warning about byte-wise palette transparency.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


class ConvertMode:
    """Converts a PIL image to a mode ("L" or "RGB"); picklable, unlike a lambda.

    Examples:
        >>> ConvertMode("RGB")(Image.new("L", (2, 2))).mode
        'RGB'
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        image = to_uniform_mode(image)
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


def eval_transform(
    data_config: dict[str, Any], in_chans: int
) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic transform of a model: mode conversion, then timm's evaluation
    transform of its data config (resize, center crop by ``crop_pct``, tensor, normalize).

    Args:
        data_config: ``timm.data.resolve_model_data_config(model)`` (or ``SeCuNetwork.data_config``).
        in_chans: 1 (grey: images converted to "L") or 3 ("RGB").

    Examples:
        >>> config = {"input_size": (1, 28, 28), "interpolation": "bilinear", "mean": MNIST_MEAN,
        ...           "std": MNIST_STD, "crop_pct": 1.0, "crop_mode": "center"}
        >>> eval_transform(config, in_chans=1)(Image.new("RGB", (56, 40))).shape
        torch.Size([1, 28, 28])
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for PIL images, got {in_chans}")
    return T.Compose(
        [
            ConvertMode("L" if in_chans == 1 else "RGB"),
            create_transform(**data_config, is_training=False),
        ]
    )


def augment_transform(
    data_config: dict[str, Any], in_chans: int, min_scale: float = 0.5, **timm_kwargs: Any
) -> Callable[[Image.Image], torch.Tensor]:
    """A random view for a pretrained model: mode conversion, then timm's training transform
    of its data config (random resized crop of at least ``min_scale`` of the image, flip,
    colour jitter, normalization), as timm fine-tunes that model; ``timm_kwargs`` go to timm's
    ``create_transform`` (``hflip=0.0``: no flips, for digits and letters).

    Examples:
        >>> from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
        >>> config = {"input_size": (3, 32, 32), "interpolation": "bilinear",
        ...           "mean": IMAGENET_DEFAULT_MEAN,
        ...           "std": IMAGENET_DEFAULT_STD}
        >>> augment_transform(config, in_chans=3)(Image.new("L", (40, 40))).shape
        torch.Size([3, 32, 32])
    """
    if in_chans not in (1, 3):
        raise ValueError(f"in_chans must be 1 or 3 for PIL images, got {in_chans}")
    if not 0 < min_scale <= 1:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    timm_config = {
        k: v for k, v in data_config.items() if k in ("input_size", "interpolation", "mean", "std")
    }
    return T.Compose(
        [
            ConvertMode("L" if in_chans == 1 else "RGB"),
            create_transform(
                **timm_config, is_training=True, scale=(min_scale, 1.0), **timm_kwargs
            ),
        ]
    )
