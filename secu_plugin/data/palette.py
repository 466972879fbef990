"""Views for images whose colours carry nothing: each view gets a random palette.

In folders of coloured shapes (letters, digits, icons drawn in arbitrary colours), a network
trained from scratch separates the images by their colours, which two views of an image share,
instead of by their shapes (measured in ``docs/colour_shortcut.json``: the BYOL views' run
grouped color32 by background colour). :class:`RandomPalette` draws each view's channel order
and which channels are inverted; with the network's per-image standardisation
(``SeCuNetwork(input_norm="instance")``), what the two views share is the shape alone, while
the edges between colours of equal brightness stay visible (a grey copy would lose them).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightly.transforms.multi_view_transform import MultiViewTransform

from secu_plugin.data.views import warped_view


class RandomPalette:
    """A random palette for a (C, H, W) tensor in [0, 1]: the channels in a random order, each
    inverted (``1 - x``) with probability ``invert_prob``. Draws from torch's global generator
    (seeded per image by :class:`~secu_plugin.data.TwoViewDataset`).

    Args:
        invert_prob: Probability that a channel is inverted.

    Examples:
        >>> image = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 0.25), torch.ones(2, 2)])
        >>> _ = torch.manual_seed(0)
        >>> recoloured = RandomPalette(invert_prob=1.0)(image)
        >>> sorted(recoloured[:, 0, 0].tolist())  # each channel inverted, in some order
        [0.0, 0.75, 1.0]
    """

    def __init__(self, invert_prob: float = 0.5) -> None:
        if not 0.0 <= invert_prob <= 1.0:
            raise ValueError(f"invert_prob must be in [0, 1], got {invert_prob}")
        self.invert_prob = invert_prob

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 3:
            raise ValueError(f"RandomPalette needs a (C, H, W) tensor, got {tuple(image.shape)}")
        channels = image.shape[0]
        image = image[torch.randperm(channels)]
        inverted = torch.rand(channels, 1, 1) < self.invert_prob
        return torch.where(inverted, 1.0 - image, image)

    def __repr__(self) -> str:
        return f"RandomPalette(invert_prob={self.invert_prob})"


def shape_views(
    input_size: int = 32,
    rotation: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.85, 1.15),
    shear: float = 10.0,
    min_scale: float = 0.7,
    erase_prob: float = 0.0,
    invert_prob: float = 0.5,
    mean: Sequence[float] = (0.5,),
    std: Sequence[float] = (0.25,),
) -> MultiViewTransform:
    """Two views of a coloured shape: the digits' warps (:func:`~secu_plugin.data.digit_views`)
    in RGB, then a :class:`RandomPalette` each. Train with ``input_norm="instance"``: the
    palette changes each channel's level and sign, the standardisation takes the level away.

    Args:
        input_size, rotation, translate, scale, shear, min_scale, erase_prob, mean, std:
            As :func:`~secu_plugin.data.views.warped_view`'s.
        invert_prob: Probability that a channel of a view is inverted.

    Returns:
        A lightly ``MultiViewTransform`` mapping a PIL image to its two views,
        3 x input_size x input_size tensors.

    Examples:
        >>> from PIL import Image
        >>> views = shape_views(24)(Image.new("RGB", (32, 32), (200, 30, 90)))
        >>> [view.shape for view in views]
        [torch.Size([3, 24, 24]), torch.Size([3, 24, 24])]
    """
    view = warped_view(
        input_size,
        rotation,
        translate,
        scale,
        shear,
        min_scale,
        erase_prob,
        mean,
        std,
        mode="RGB",
        tensor_steps=[RandomPalette(invert_prob)],
    )
    return MultiViewTransform([view, view])
