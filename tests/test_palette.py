"""Colour images whose colours carry nothing: RandomPalette, shape_views, the network's
per-image standardisation (input_norm) and what the auto preset chooses for colour data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from secu_plugin.data import (
    DataDescription,
    RandomPalette,
    TwoViewDataset,
    seeded_random,
    shape_views,
)
from secu_plugin.models import SeCuModel, SeCuNetwork
from secu_plugin.train.auto import auto_preset
from secu_plugin.train.presets import get_preset


def coloured_letter(foreground=(200, 40, 90), background=(30, 160, 70)) -> Image.Image:
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[:] = background
    pixels[6:26, 8:12] = foreground  # an L
    pixels[22:26, 8:22] = foreground
    return Image.fromarray(pixels)


def test_random_palette_permutes_and_inverts_channels_only():
    image = torch.rand(3, 5, 5)
    candidates = [image[c] for c in range(3)] + [1 - image[c] for c in range(3)]
    seen = set()
    for seed in range(40):
        with seeded_random(seed):
            recoloured = RandomPalette(invert_prob=0.5)(image)
        sources = []
        for channel in recoloured:
            matches = [i for i, c in enumerate(candidates) if torch.equal(channel, c)]
            assert len(matches) == 1
            sources.append(matches[0])
        assert sorted(s % 3 for s in sources) == [0, 1, 2]  # every input channel once
        seen.add(tuple(sources))
    assert len(seen) > 12  # of the 48 palettes
    with seeded_random(3):
        first = RandomPalette()(image)
    with seeded_random(3):
        assert torch.equal(RandomPalette()(image), first)
    untouched = RandomPalette(invert_prob=0.0)(image)
    assert sorted(untouched.sum((1, 2)).tolist()) == sorted(image.sum((1, 2)).tolist())


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RandomPalette(invert_prob=1.5), "invert_prob"),
        (lambda: RandomPalette()(torch.rand(5, 5)), r"\(C, H, W\)"),
        (lambda: shape_views(min_scale=0.0), "min_scale"),
        (lambda: shape_views(mean=[0.1, 0.2]), "mean must have 1 or 3 values"),
    ],
)
def test_bad_arguments_raise_value_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_two_views_of_a_coloured_shape_do_not_share_its_colours():
    image = coloured_letter()
    pairs = TwoViewDataset([(image, 0)] * 4, shape_views(32), seed=0)
    backgrounds = set()
    for epoch in range(15):
        pairs.set_epoch(epoch)
        view0, view1, _ = pairs[1]
        assert view0.shape == view1.shape == (3, 32, 32)
        for view in (view0, view1):
            backgrounds.add(tuple(view[:, 0, 15].round(decimals=3).tolist()))
    assert len(backgrounds) > 8  # the background's colour changes from view to view


def test_instance_input_norm_removes_each_images_levels_and_contrast():
    torch.manual_seed(0)
    network = SeCuNetwork("secu_convnet_tiny", in_chans=3, dim=8, input_norm="instance").eval()
    plain = SeCuNetwork("secu_convnet_tiny", in_chans=3, dim=8).eval()
    plain.load_state_dict(network.state_dict())
    x = torch.rand(4, 3, 28, 28)
    gain, offset = 0.2 + 3 * torch.rand(4, 3, 1, 1), torch.randn(4, 3, 1, 1)  # per image
    with torch.no_grad():
        changed, same = network.embed(gain * x + offset), network.embed(x)
        torch.testing.assert_close(changed, same, atol=1e-6, rtol=1e-4)
        plain_changed, plain_same = plain.embed(gain * x + offset), plain.embed(x)
    assert ((plain_changed - plain_same).norm() / plain_same.norm()) > 0.05
    with pytest.raises(ValueError, match="input_norm must be one of"):
        SeCuNetwork("secu_convnet_tiny", input_norm="batch")


def test_input_norm_survives_save_and_load(tmp_path):
    model = SeCuModel(backbone="secu_convnet_tiny", dim=8, num_clusters=[3], input_norm="instance")
    model.save_pretrained(tmp_path)
    loaded = SeCuModel.from_pretrained(tmp_path).eval()
    assert loaded.config["input_norm"] == "instance"
    x = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded(5 * x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_auto_preset_gives_colour_data_shape_views_and_standardised_inputs():
    colour = auto_preset(DataDescription(2000, channels=3, image_size=32, num_classes=10))
    assert (colour.augmentation.views, colour.network.input_norm, colour.network.in_chans) == (
        "shapes",
        "instance",
        3,
    )
    assert colour.augmentation.view_kwargs["invert_prob"] == 0.5
    grey = auto_preset(DataDescription(2000, channels=1, image_size=28, num_classes=10))
    assert (grey.augmentation.views, grey.network.input_norm) == ("digits", "none")
    # views named by hand: the network takes the images as they are, unless told otherwise
    byol = auto_preset(DataDescription(2000, 3, 32, 10), views="byol")
    assert (byol.augmentation.views, byol.network.input_norm) == ("byol", "none")
    grey_copies = auto_preset(DataDescription(2000, 3, 32, 10), in_chans=1)
    assert (grey_copies.augmentation.views, grey_copies.network.input_norm) == ("digits", "none")


def test_views_whose_channels_are_not_the_networks_are_refused():
    with pytest.raises(ValueError, match="views='shapes' gives 3-channel images"):
        get_preset("mnist5k", views="shapes")
    with pytest.raises(ValueError, match="views='digits' gives 1-channel images"):
        get_preset("cifar10", views="digits")
    assert get_preset("mnist5k", views="shapes", in_chans=3).augmentation.views == "shapes"


@pytest.mark.slow
def test_auto_preset_learns_the_shapes_of_a_small_colour_tune_set(tmp_path):
    """From scratch with the auto preset, as a user runs it, on 1,000 images of the tune set
    color32 (MNIST digits, each in its own random foreground and background colours): ACC at
    least k-means on the whitened pixels + 0.10 (about 3 minutes on 2 cores)."""
    import shutil

    from launch import TRAIN, run_recipe

    from benchmarks.kmeans_baseline import set_baselines
    from benchmarks.make_test_sets import make_color32
    from benchmarks.scratch_heldout import pixel_baseline_accuracy

    make_color32(tmp_path / "color32", seed=0)
    subset = tmp_path / "colour1000"
    for folder in sorted((tmp_path / "color32").iterdir()):
        (subset / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:100]:
            shutil.copy(image, subset / folder.name / image.name)
    out = tmp_path / "run"
    arguments = ["--data", str(subset), "--output_dir", str(out), "--seed", "0"]
    run_recipe(TRAIN, *arguments, env={"SECU_NUM_THREADS": "2"})
    results = json.loads((out / "results.json").read_text())
    accuracy = results["evaluations"][0]["accuracy"]
    assert results["evaluations"][0]["num_clusters"] == 10
    baseline = set_baselines(str(subset), {}, seeds=(0,), whitening=(20, 50, 256))
    _, whitened = pixel_baseline_accuracy(baseline)
    assert accuracy >= whitened + 0.10, (accuracy, whitened)
