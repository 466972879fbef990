"""The digits' views drawn on tensors: the geometry of one view, batches rendered as single
images are, and the seeded batch fetch of TwoViewDataset."""

import random

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from secu_plugin.data import ImageDataset, TwoViewDataset, byol_views, digit_views, load_mnist5k
from secu_plugin.data.tensor_views import DigitViews, view_matrix

WHOLE = (0.0, 0.0, 28.0, 28.0)


@pytest.fixture(scope="module")
def mnist():
    return load_mnist5k()


def warp(image: torch.Tensor, matrix) -> torch.Tensor:
    theta = torch.tensor([matrix])
    grid = F.affine_grid(theta, [1, 1, *image.shape], align_corners=False)
    return F.grid_sample(image[None, None], grid, align_corners=False)[0, 0]


def brightest(image: torch.Tensor) -> tuple[int, int]:
    row, column = divmod(int(image.argmax()), image.shape[1])
    return row, column


def one_pixel(row: int, column: int) -> torch.Tensor:
    image = torch.zeros(28, 28)
    image[row, column] = 1.0
    return image


def test_view_matrix_moves_pixels_as_its_parameters_say() -> None:
    image = one_pixel(10, 5)
    assert torch.allclose(
        warp(image, view_matrix(28, 28, 0.0, (0, 0), 1.0, 0.0, WHOLE)), image, atol=1e-6
    )
    # shift by (3, 2) pixels: column + 3, row + 2
    assert brightest(warp(image, view_matrix(28, 28, 0.0, (3.0, 2.0), 1.0, 0.0, WHOLE))) == (
        12,
        8,
    )
    # a quarter turn about the center (13.5, 13.5): (x, y) = (-8, -3) goes to (3, -8) or
    # (-3, 8) depending on the direction; both views draw the angle symmetrically
    turned = brightest(warp(image, view_matrix(28, 28, 90.0, (0, 0), 1.0, 0.0, WHOLE)))
    assert turned in ((5, 16), (5, 17), (22, 10), (22, 11))
    # zoom 2 doubles the distance to the center: (-8.5, -3.5) + 13.5 -> (-17, -7) + 13.5
    zoomed = torch.zeros(28, 28)
    zoomed[12, 9] = 1.0  # (-4.5, -1.5) from the center
    assert brightest(warp(zoomed, view_matrix(28, 28, 0.0, (0, 0), 2.0, 0.0, WHOLE))) in (
        (10, 4),
        (10, 5),
        (11, 4),
        (11, 5),
    )
    # the crop's left half, stretched over the whole output: column c -> 2 c
    left_half = (-7.0, 0.0, 14.0, 28.0)
    assert brightest(warp(one_pixel(14, 3), view_matrix(28, 28, 0, (0, 0), 1, 0, left_half))) in (
        (14, 6),
        (14, 7),
    )


def test_a_batch_renders_the_views_each_image_gets_alone(mnist) -> None:
    images, _ = mnist
    views = DigitViews(erase_prob=0.5)
    pictures = [Image.fromarray(images[i]) for i in range(6)]
    draws = []
    for i, picture in enumerate(pictures):
        random.seed(i)
        draws.append(views.draw(picture))
    batch = views.render(draws)
    for i, picture in enumerate(pictures):
        random.seed(i)
        alone = views(picture)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(alone, batch[i]))
    assert not torch.equal(batch[0][0], batch[0][1])  # two different views of one image


def test_views_of_large_and_oblong_images_have_the_input_size() -> None:
    views = DigitViews(input_size=28)
    for size in ((64, 64), (40, 56), (20, 20)):
        pair = views(Image.new("L", size, color=200))
        assert [v.shape for v in pair] == [(1, 28, 28), (1, 28, 28)]
    # one batch with images of two sizes
    draws = [views.draw(Image.new("L", size)) for size in ((28, 28), (40, 56), (28, 28))]
    assert [pair[0].shape for pair in views.render(draws)] == [(1, 28, 28)] * 3


def test_bad_view_settings_are_refused() -> None:
    for kwargs, word in (
        ({"translate": 1.5}, "translate"),
        ({"min_scale": 0.0}, "min_scale"),
        ({"scale": (1.2, 0.9)}, "scale"),
        ({"erase_prob": 2.0}, "erase_prob"),
        ({"input_size": 0}, "input_size"),
    ):
        with pytest.raises(ValueError, match=word):
            DigitViews(**kwargs)


@pytest.mark.parametrize("make_views", [digit_views, lambda: byol_views(32)])
def test_batch_fetch_gives_each_index_its_own_seeded_views(mnist, make_views) -> None:
    images, labels = mnist
    pairs = TwoViewDataset(ImageDataset.from_arrays(images[:8], labels[:8]), make_views(), seed=4)
    pairs.set_epoch(2)
    state = torch.get_rng_state()
    batch = pairs.__getitems__([6, 1, 3])
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generators are untouched
    for (a, b, index), expected_index in zip(batch, [6, 1, 3]):
        single = pairs[expected_index]
        assert index == expected_index == single[2]
        assert torch.allclose(a, single[0], atol=1e-6) and torch.allclose(b, single[1], atol=1e-6)
    pairs.set_epoch(3)
    assert not torch.equal(pairs.__getitems__([6])[0][0], batch[0][0])
