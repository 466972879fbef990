"""What a data set looks like, from a sample of its images: the number of images, grey or
colour, typical size, number of classes where the labels say something, pixel mean and std.

The ``auto`` training settings are a function of this description
(:func:`secu_plugin.train.auto.auto_preset`); a recipe reads its data once and describes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


def has_informative_labels(labels: np.ndarray | None) -> bool:
    """Whether ``labels`` can score a clustering: at least two distinct known classes.

    Examples:
        >>> has_informative_labels(np.array([0, 1, -1])), has_informative_labels(np.zeros(4))
        (True, False)
        >>> has_informative_labels(None)
        False
    """
    if labels is None:
        return False
    labels = np.asarray(labels)
    return len(np.unique(labels[labels >= 0])) >= 2


@dataclass(frozen=True)
class DataDescription:
    """What the auto preset needs to know about a data set.

    Attributes:
        num_images: Training images.
        channels: 1 (grey data) or 3 (colour data).
        image_size: Median shorter side of the sampled images, in pixels.
        num_classes: Classes, when the labels are informative (two or more); else None.
        mean, std: Pixel mean and standard deviation in [0, 1] (one value per channel),
            measured on the sample.
        sampled: How many images were read to measure the above.

    Examples:
        >>> DataDescription(1797, channels=1, image_size=8, num_classes=10).to_dict()["mean"]
        [0.5]
    """

    num_images: int
    channels: int
    image_size: int
    num_classes: int | None = None
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    sampled: int = 0

    def to_dict(self) -> dict:
        """The description as JSON values (tuples as lists): the model's training record."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _is_colour(pixels: np.ndarray) -> bool:
    """Whether an RGB image has visible colour (not grey stored as RGB, as JPEGs often are)."""
    spread = pixels.max(axis=-1).astype(np.int16) - pixels.min(axis=-1).astype(np.int16)
    return float(spread.mean()) > 4.0


def describe_data(dataset, sample_size: int = 256, seed: int = 0) -> DataDescription:
    """Describes an :class:`~secu_plugin.data.ImageDataset` from a random sample of its images.

    Unreadable images in the sample are passed over. The data counts as colour when at least
    10% of the sampled images show colour; grey images stored as RGB count as grey.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> description = describe_data(ImageDataset.mnist5k(), sample_size=64)
        >>> description.num_images, description.channels, description.image_size
        (5000, 1, 28)
        >>> description.num_classes, round(description.mean[0], 1)
        (10, 0.1)
    """
    count = len(dataset)
    if count == 0:
        raise ValueError("the data set has no images")
    order = np.random.default_rng(seed).permutation(count)[: min(sample_size, count)]
    images = []
    for index in order:
        try:
            images.append(dataset[int(index)][0])
        except ValueError:  # an unreadable file: the recipe reports those itself
            continue
    if not images:
        raise ValueError(f"none of the {len(order)} sampled images could be read")
    arrays = [np.asarray(image.convert("RGB") if image.mode != "L" else image) for image in images]
    colour = sum(a.ndim == 3 and _is_colour(a) for a in arrays) >= max(1, 0.1 * len(arrays))
    channels = 3 if colour else 1
    values = [
        (a.reshape(-1, 3) if channels == 3 else a.reshape(-1, 3).mean(1, keepdims=True))
        if a.ndim == 3
        else (np.repeat(a.reshape(-1, 1), channels, axis=1))
        for a in arrays
    ]
    pixels = np.concatenate(values).astype(np.float64) / 255.0
    sizes = [min(image.size) for image in images]
    labels = getattr(dataset, "labels", None)
    num_classes = None
    if has_informative_labels(labels):
        known = np.asarray(labels)[np.asarray(labels) >= 0]
        num_classes = int(getattr(dataset, "num_classes", None) or len(np.unique(known)))
    return DataDescription(
        num_images=count,
        channels=channels,
        image_size=int(np.median(sizes)),
        num_classes=num_classes,
        mean=tuple(round(float(m), 4) for m in pixels.mean(0)),
        std=tuple(round(max(float(s), 1e-3), 4) for s in pixels.std(0)),
        sampled=len(images),
    )
