"""The digits' augmentation (the CPU demo and small grey images), drawn on tensors.

A view is a random affine map (rotation, shift, zoom, shear) followed by a random resized
crop. Both are affine, so one ``grid_sample`` renders their composition from the image in a
single resampling: about 5x cheaper per view than the same steps as PIL transforms one after
the other, which took a quarter of the demo's training time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from secu_plugin.data.transforms import MNIST_MEAN, MNIST_STD, ConvertMode, per_channel

# RandomErasing's ranges, as torchvision draws them: 2-10 % of the area, aspect 0.3-3.3.
ERASE_AREA = (0.02, 0.1)
ERASE_LOG_RATIO = (math.log(0.3), math.log(3.3))
CROP_LOG_RATIO = (math.log(0.8), math.log(1.25))


class ViewDraw(NamedTuple):
    """An image's pixels (1 x H x W, in [0, 1]) and what was drawn for its two views: each
    view's ``affine_grid`` matrix and erased rectangle (or None)."""

    pixels: torch.Tensor
    matrices: tuple
    erased: tuple


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * random.random()


def view_matrix(
    width: int,
    height: int,
    angle: float,
    shift: tuple[float, float],
    zoom: float,
    shear: float,
    crop: tuple[float, float, float, float],
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The 2 x 3 ``affine_grid`` matrix of one view: from the output's normalized coordinates
    to the image's. ``angle`` and ``shear`` (along x) in degrees, ``shift`` in pixels, ``crop``
    = (center x, center y, width, height) in pixels of the transformed image, about its center.

    Examples:
        >>> view_matrix(28, 28, 0.0, (0.0, 0.0), 1.0, 0.0, (0.0, 0.0, 28.0, 28.0))
        ((1.0, 0.0, 0.0), (-0.0, 1.0, 0.0))
    """
    center_x, center_y, crop_w, crop_h = crop
    # The image's point p of the crop's point q is the inverse of p -> rotate(shear(zoom *
    # p)) + shift: p = A (q - shift), A = unshear @ unrotate / zoom (plain floats: a view
    # costs microseconds, not one small tensor operation per factor).
    a, k = math.radians(angle), math.tan(math.radians(shear))
    cos, sin = math.cos(a), math.sin(a)
    a00, a01 = (cos + k * sin) / zoom, (sin - k * cos) / zoom
    a10, a11 = -sin / zoom, cos / zoom
    # q = crop center + (crop_w / 2, crop_h / 2) * u for the output's u in [-1, 1]^2, and the
    # image's normalized coordinates are 2 p / (width, height) (align_corners=False).
    dx, dy = center_x - shift[0], center_y - shift[1]
    sx, sy = 2.0 / width, 2.0 / height
    return (
        (sx * a00 * crop_w / 2, sx * a01 * crop_h / 2, sx * (a00 * dx + a01 * dy)),
        (sy * a10 * crop_w / 2, sy * a11 * crop_h / 2, sy * (a10 * dx + a11 * dy)),
    )


class DigitViews:
    """Two random views of a grey image, as 1 x S x S tensors: the digits' augmentation.

    No horizontal flip and no colour jitter (a flipped 2 or 5 is another shape; grey levels
    carry nothing). Each view: an affine map (±``rotation``°, shift up to ``translate`` of the
    side, zoom in ``scale``, ±``shear``° along x, black outside the image), a random crop of at
    least ``min_scale`` of the area (aspect 0.8-1.25; the whole image if ``min_scale`` is 1)
    resized to ``input_size``, rendered together by one bilinear ``grid_sample``; then
    normalization and, with probability ``erase_prob``, a rectangle of 2-10 % of the area
    set to the background (strokes go missing). Images larger than ``input_size`` are first
    shrunk with antialiasing (their shorter side to ``input_size``).

    The randomness comes from Python's ``random``: under :func:`~secu_plugin.data.views.
    seeded_random` (as :class:`~secu_plugin.data.TwoViewDataset` draws), each image's views
    are a function of the seed, the epoch and its index.

    Examples:
        >>> views = DigitViews(rotation=10, erase_prob=0.0)
        >>> [view.shape for view in views(Image.new("L", (28, 28)))]
        [torch.Size([1, 28, 28]), torch.Size([1, 28, 28])]
    """

    def __init__(
        self,
        input_size: int = 28,
        rotation: float = 15.0,
        translate: float = 0.1,
        scale: Sequence[float] = (0.85, 1.15),
        shear: float = 10.0,
        min_scale: float = 0.7,
        erase_prob: float = 0.25,
        mean: Sequence[float] = MNIST_MEAN,
        std: Sequence[float] = MNIST_STD,
    ) -> None:
        if input_size <= 0:
            raise ValueError(f"input_size must be positive, got {input_size}")
        if rotation < 0 or shear < 0:
            raise ValueError(f"rotation and shear must be >= 0, got {rotation} and {shear}")
        if not 0.0 <= translate < 1.0:
            raise ValueError(f"translate must be in [0, 1), got {translate}")
        if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
            raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
        if not 0.0 < min_scale <= 1.0:
            raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
        if not 0.0 <= erase_prob <= 1.0:
            raise ValueError(f"erase_prob must be in [0, 1], got {erase_prob}")
        self.input_size = input_size
        self.rotation, self.translate, self.shear = rotation, translate, shear
        self.scale = (float(scale[0]), float(scale[1]))
        self.min_scale, self.erase_prob = min_scale, erase_prob
        self.mean = per_channel("mean", mean, 1)[0]
        self.std = per_channel("std", std, 1, positive=True)[0]
        # Erased pixels take the normalized value of black, the background.
        self.background = (0.0 - self.mean) / self.std
        self.to_grey = ConvertMode("L")

    def __call__(self, image: Image.Image) -> list[torch.Tensor]:
        return list(self.render([self.draw(image)])[0])

    def draw(self, image: Image.Image) -> ViewDraw:
        """What is random about an image's two views (drawn from ``random``), with its pixels:
        :meth:`render` makes the views of many images at once, without randomness."""
        pixels = self._pixels(image)
        height, width = pixels.shape[-2:]
        matrices = tuple(self._matrix(width, height) for _ in range(2))
        erased = tuple(
            self._erase_box() if self.erase_prob > 0 and random.random() < self.erase_prob else None
            for _ in range(2)
        )
        return ViewDraw(pixels, matrices, erased)

    def render(self, draws: Sequence[ViewDraw]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The two views of each draw: one resampling for all images of the same size."""
        views: list[torch.Tensor | None] = [None] * (2 * len(draws))
        by_size: dict[tuple[int, ...], list[int]] = {}
        for position, drawn in enumerate(draws):
            by_size.setdefault(tuple(drawn.pixels.shape), []).append(position)
        for positions in by_size.values():
            pixels = torch.stack([draws[p].pixels for p in positions]).repeat_interleave(2, 0)
            matrices = torch.tensor([m for p in positions for m in draws[p].matrices])
            size = [len(matrices), 1, self.input_size, self.input_size]
            grid = F.affine_grid(matrices, size, align_corners=False)
            rendered = F.grid_sample(pixels, grid, align_corners=False)
            rendered = rendered.sub_(self.mean).div_(self.std)
            for row, position in enumerate(positions):
                for view in range(2):
                    box = draws[position].erased[view]
                    if box is not None:
                        top, left, erase_h, erase_w = box
                        rendered[2 * row + view, :, top : top + erase_h, left : left + erase_w] = (
                            self.background
                        )
                    views[2 * position + view] = rendered[2 * row + view]
        return [(views[2 * i], views[2 * i + 1]) for i in range(len(draws))]

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        """The image as a 1 x H x W float tensor in [0, 1], shrunk if larger than needed."""
        image = self.to_grey(image)
        shorter = min(image.size)
        if shorter > self.input_size:
            factor = self.input_size / shorter
            size = (max(1, round(image.width * factor)), max(1, round(image.height * factor)))
            image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=None)
        return pil_to_tensor(image).float().div_(255.0)

    def _crop(self, width: int, height: int) -> tuple[float, float, float, float]:
        if self.min_scale >= 1.0:
            return 0.0, 0.0, float(width), float(height)
        area = _uniform(self.min_scale, 1.0) * width * height
        ratio = math.exp(_uniform(*CROP_LOG_RATIO))
        crop_w = min(float(width), math.sqrt(area * ratio))
        crop_h = min(float(height), math.sqrt(area / ratio))
        center_x = _uniform(-(width - crop_w) / 2, (width - crop_w) / 2)
        center_y = _uniform(-(height - crop_h) / 2, (height - crop_h) / 2)
        return center_x, center_y, crop_w, crop_h

    def _matrix(self, width: int, height: int) -> tuple[tuple[float, ...], ...]:
        return view_matrix(
            width,
            height,
            angle=_uniform(-self.rotation, self.rotation),
            shift=(
                _uniform(-self.translate, self.translate) * width,
                _uniform(-self.translate, self.translate) * height,
            ),
            zoom=_uniform(*self.scale),
            shear=_uniform(-self.shear, self.shear),
            crop=self._crop(width, height),
        )

    def _erase_box(self) -> tuple[int, int, int, int] | None:
        """A rectangle to set to the background (top, left, height, width), drawn as
        torchvision's RandomErasing draws it: up to 10 tries for one that fits."""
        side = self.input_size
        for _ in range(10):
            area = _uniform(*ERASE_AREA) * side * side
            ratio = math.exp(_uniform(*ERASE_LOG_RATIO))
            erase_h, erase_w = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
            if erase_h < side and erase_w < side:
                return (
                    random.randint(0, side - erase_h),
                    random.randint(0, side - erase_w),
                    erase_h,
                    erase_w,
                )
        return None
