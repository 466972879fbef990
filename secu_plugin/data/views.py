"""What training and evaluation see: two augmented views of each image (lightly's
``BYOLTransform``, or the digits' augmentation), or one deterministic view."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.data import Dataset
from torchvision import transforms as T

from secu_plugin.data.transforms import MNIST_MEAN, MNIST_STD, ConvertMode, per_channel


class TwoViewDataset(Dataset):
    """Two augmented views of each image and its index, for SeCu training.

    Item ``i`` is ``(view0, view1, i)``; the index addresses SeCu's assignment memory.
    Labels are not returned: they are for evaluation only.

    With ``seed``, the views of image ``i`` in epoch ``e`` are a function of ``(seed, e, i)``
    alone (the random generators of torch, numpy and ``random`` are seeded from it for the
    item and restored afterwards): the same whatever the number of DataLoader workers, the
    prefetching, or a resume in the middle of an epoch. Call :meth:`set_epoch` every epoch;
    the epoch lives in shared memory, so persistent workers see it too.

    Args:
        dataset: An :class:`ImageDataset` or any dataset whose items are ``(image, label)``.
        transform: A multi-view transform returning the two views of an image, such as
            lightly's ``BYOLTransform`` (:func:`byol_views`) or :func:`digit_views`.
        seed: Makes the views reproducible per (epoch, index); None: global random state.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> pairs = TwoViewDataset(ImageDataset.mnist5k(), digit_views(), seed=0)
        >>> a, b, index = pairs[7]
        >>> a.shape, b.shape, index
        (torch.Size([1, 28, 28]), torch.Size([1, 28, 28]), 7)
        >>> bool((pairs[7][0] == a).all()), pairs.set_epoch(1), bool((pairs[7][0] == a).all())
        (True, None, False)
    """

    def __init__(self, dataset: Dataset, transform: Callable, seed: int | None = None) -> None:
        if type(dataset).__module__.split(".")[0] == "datasets":
            raise ValueError(
                f"TwoViewDataset needs items (PIL image, label), not a raw {type(dataset).__name__} "
                "of Hugging Face datasets: wrap it with ImageDataset.from_hf(dataset)"
            )
        if not callable(transform):
            raise ValueError(f"transform must be callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that, with the seed, draws the views."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def _views(self, image: Any) -> tuple[Any, Any]:
        views = self.transform(image)
        if len(views) != 2:
            raise ValueError(f"transform must return 2 views, it returned {len(views)}")
        return views[0], views[1]

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, _ = self.dataset[index]
        if self.seed is None:
            return (*self._views(image), index)
        with seeded_random(self.seed, int(self._epoch), int(index)):
            return (*self._views(image), index)


@contextlib.contextmanager
def seeded_random(*key: int) -> Iterator[None]:
    """Seeds the random generators of torch (CPU), numpy and ``random`` from ``key`` for the
    block, and restores them afterwards: augmentations drawn inside are a function of ``key``
    alone (whatever the workers, the prefetching or a resume).

    Examples:
        >>> with seeded_random(0, 1, 2):
        ...     a = torch.rand(1)
        >>> with seeded_random(0, 1, 2):
        ...     b = torch.rand(1)
        >>> bool(a == b)
        True
    """
    item_seed = hash(tuple(key)) % (2**31)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also seed every accelerator,
        # 30 times slower per image.
        torch.default_generator.manual_seed(item_seed)
        np.random.seed(item_seed)
        random.seed(item_seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class MultiViewDataset(Dataset):
    """Several views of each image, stacked, and its index: what a feature cache embeds.

    Item ``i`` is ``(torch.stack([transforms[0](image), ...]), i)``. View ``v`` of image ``i``
    is drawn with :func:`seeded_random` from ``(seed, v, i)``, so an interrupted extraction
    that starts again computes the same views.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> views = MultiViewDataset(ImageDataset.mnist5k(), [T.ToTensor(), T.ToTensor()])
        >>> stacked, index = views[3]
        >>> stacked.shape, index
        (torch.Size([2, 1, 28, 28]), 3)
    """

    def __init__(self, dataset: Dataset, transforms: Sequence[Callable], seed: int = 0) -> None:
        if not transforms or not all(callable(t) for t in transforms):
            raise ValueError("transforms must be a non-empty list of callables")
        self.dataset = dataset
        self.transforms = list(transforms)
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, _ = self.dataset[index]
        views = []
        for view, transform in enumerate(self.transforms):
            with seeded_random(self.seed, view, int(index)):
                views.append(transform(image))
        return torch.stack(views), index


class TransformedDataset(Dataset):
    """One deterministic view of each image, its label and its index, for evaluation.

    Item ``i`` is ``(transform(image), label, i)``, label -1 when unknown.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> data = TransformedDataset(ImageDataset.mnist5k(), T.ToTensor())
        >>> x, label, index = data[600]
        >>> x.shape, label, index
        (torch.Size([1, 28, 28]), 1, 600)
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image, label = self.dataset[index]
        return self.transform(image), label, index


def byol_views(
    input_size: int,
    min_scale: float = 0.08,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    grayscale_input: bool = False,
) -> MultiViewTransform:
    """The two asymmetric BYOL views used by the SeCu paper: lightly's ``BYOLTransform``.

    Both views: RandomResizedCrop(input_size, scale=(min_scale, 1)), horizontal flip p 0.5,
    color jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, normalize(mean, std).
    View 1: gaussian blur p 1.0, no solarization. View 2: blur p 0.1, solarization p 0.2.
    Every input is converted to RGB first, so grey ("L") images give 3-channel tensors.

    Args:
        input_size: Output side length in pixels.
        min_scale: Smallest crop area, as a fraction of the image.
        mean: Normalization mean, 1 or 3 values.
        std: Normalization std, 1 or 3 values.
        grayscale_input: Set for grey data: drops saturation, hue and random grayscale,
            which leave a grey image unchanged anyway, to save time.

    Returns:
        A transform mapping a PIL image to its two views, 3 x input_size x input_size tensors.

    Examples:
        >>> from PIL import Image
        >>> view0, view1 = byol_views(32, min_scale=0.2)(Image.new("L", (40, 40)))
        >>> view0.shape, view1.shape
        (torch.Size([3, 32, 32]), torch.Size([3, 32, 32]))
    """
    from lightly.transforms.byol_transform import (
        BYOLTransform,
        BYOLView1Transform,
        BYOLView2Transform,
    )

    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    mean3 = list(per_channel("mean", mean, 3))
    std3 = list(per_channel("std", std, 3, positive=True))
    common: dict[str, Any] = {
        "input_size": input_size,
        "min_scale": min_scale,
        "cj_prob": 0.8,
        "cj_strength": 1.0,
        "cj_bright": 0.4,
        "cj_contrast": 0.4,
        "cj_sat": 0.0 if grayscale_input else 0.2,
        "cj_hue": 0.0 if grayscale_input else 0.1,
        "random_gray_scale": 0.0 if grayscale_input else 0.2,
        "hf_prob": 0.5,
        "normalize": {"mean": mean3, "std": std3},
    }
    byol = BYOLTransform(
        view_1_transform=BYOLView1Transform(gaussian_blur=1.0, solarization_prob=0.0, **common),
        view_2_transform=BYOLView2Transform(gaussian_blur=0.1, solarization_prob=0.2, **common),
    )
    # Grey images become RGB first, so that every view has 3 channels.
    return MultiViewTransform([T.Compose([ConvertMode("RGB"), t]) for t in byol.transforms])


def digit_views(
    input_size: int = 28,
    rotation: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.85, 1.15),
    shear: float = 10.0,
    min_scale: float = 0.7,
    erase_prob: float = 0.25,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
) -> MultiViewTransform:
    """Augmentations for handwritten digits (the CPU demo): two views drawn alike, each a
    :func:`warped_view` of the grey image.

    No horizontal flip and no color jitter (a flipped 2 or 5 is another shape; grey
    levels carry nothing).

    Args:
        input_size, rotation, translate, scale, shear, min_scale, erase_prob, mean, std:
            As :func:`warped_view`'s (mean and std: one value).

    Returns:
        A lightly ``MultiViewTransform`` mapping a PIL image to its two views,
        1 x input_size x input_size tensors.

    Examples:
        >>> from PIL import Image
        >>> views = digit_views(rotation=10, erase_prob=0.0)(Image.new("L", (28, 28)))
        >>> [view.shape for view in views]
        [torch.Size([1, 28, 28]), torch.Size([1, 28, 28])]
    """
    transform = warped_view(
        input_size, rotation, translate, scale, shear, min_scale, erase_prob, mean, std, mode="L"
    )
    return MultiViewTransform([transform, transform])


def warped_view(
    input_size: int,
    rotation: float,
    translate: float,
    scale: Sequence[float],
    shear: float,
    min_scale: float,
    erase_prob: float,
    mean: Sequence[float],
    std: Sequence[float],
    mode: str = "L",
    tensor_steps: Sequence[Callable] = (),
) -> T.Compose:
    """One random view of a shape: small affine warps and crops, no flip, no colour jitter.

    Pipeline: ``mode`` ("L" or "RGB") → RandomAffine(±rotation°, translate, scale, ±shear°,
    black fill) → RandomResizedCrop(input_size, scale=(min_scale, 1), ratio=(0.8, 1.25)) (a
    plain resize if ``min_scale`` is 1) → tensor → ``tensor_steps`` → normalize →
    RandomErasing(p=erase_prob, 2-10% of the area, filled with the black value).

    Args:
        input_size: Output side length in pixels.
        rotation: Largest rotation in degrees.
        translate: Largest shift, as a fraction of width/height.
        scale: Range of the affine zoom.
        shear: Largest shear in degrees.
        min_scale: Smallest crop area, as a fraction of the image.
        erase_prob: Probability of erasing a small rectangle; 0 disables it.
        mean: Normalization mean (one value, or one per channel).
        std: Normalization std (one value, or one per channel).
        mode: The PIL mode the image is converted to first.
        tensor_steps: Random steps on the (channels, size, size) tensor in [0, 1].

    Examples:
        >>> from PIL import Image
        >>> view = warped_view(16, 10, 0.1, (0.9, 1.1), 5, 1.0, 0.0, [0.5], [0.25], mode="RGB")
        >>> view(Image.new("L", (20, 20))).shape
        torch.Size([3, 16, 16])
    """
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
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
    channels = 1 if mode == "L" else 3
    mean_c = list(per_channel("mean", mean, channels))
    std_c = list(per_channel("std", std, channels, positive=True))

    crop: Callable = (
        T.Resize((input_size, input_size))
        if min_scale >= 1.0
        else T.RandomResizedCrop(input_size, scale=(min_scale, 1.0), ratio=(0.8, 1.25))
    )
    steps: list[Callable] = [
        ConvertMode(mode),
        T.RandomAffine(
            degrees=rotation,
            translate=(translate, translate),
            scale=tuple(scale),
            shear=shear,
            fill=0,
        ),
        crop,
        T.ToTensor(),
        *tensor_steps,
        T.Normalize(mean_c, std_c),
    ]
    if erase_prob > 0:
        # Erase with the normalized black, the digits' background, so that strokes go missing.
        black = [(0.0 - m) / s for m, s in zip(mean_c, std_c)]
        steps.append(T.RandomErasing(p=erase_prob, scale=(0.02, 0.1), value=black))
    return T.Compose(steps)
