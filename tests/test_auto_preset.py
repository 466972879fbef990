"""The auto preset: the rules from a data description to a Preset (no training here)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from secu_plugin.data import DataDescription, ImageDataset, describe_data
from secu_plugin.model_selection import HEAD_GRID
from secu_plugin.train.auto import (
    auto_preset,
    default_num_workers,
    describe_settings,
    resolve_preset,
)
from secu_plugin.train.presets import PRESET_CHOICES, PRESETS, Preset, get_preset


def schedule(preset: Preset) -> tuple[int, int, int]:
    """(steps per epoch, training steps after epoch 0, warm-up steps after epoch 0)."""
    per_epoch = preset.resolved_from["data"]["num_images"] // preset.loader.batch_size
    return (
        per_epoch,
        (preset.schedule.epochs - 1) * per_epoch,
        (preset.schedule.warmup_epochs - 1) * per_epoch,
    )


def test_small_grey_8px_set_gets_whole_image_views_and_the_demos_passes():
    preset = auto_preset(DataDescription(1797, channels=1, image_size=8, num_classes=10))
    assert (
        preset.name,
        preset.network.backbone,
        preset.network.in_chans,
        preset.network.input_size,
    ) == (
        "auto",
        "secu_convnet_small",
        1,
        8,
    )
    # No crop and no erasing of an 8x8 digit; the affine warp moves it by about a pixel.
    assert preset.augmentation.views == "digits" and preset.augmentation.min_scale == 1.0
    assert preset.augmentation.view_kwargs["erase_prob"] == 0.0
    assert preset.augmentation.view_kwargs["translate"] * 8 <= 1.0
    assert preset.loader.batch_size == 64 and preset.bank.num_clusters == [10, 20, 30, 40, 50]
    per_epoch, training, warmup = schedule(preset)
    assert per_epoch == 28 and training == 40 * per_epoch  # 40 passes: under the step budget
    assert 0 < warmup <= 150 and preset.schedule.warmup_epochs < preset.schedule.epochs
    preset.check_data_size(1797)


def test_28px_grey_set_gets_the_cpu_demo_settings():
    preset = auto_preset(DataDescription(5000, 1, 28, 10, mean=(0.13,), std=(0.31,)))
    demo = get_preset("mnist5k")
    same = ("backbone", "in_chans", "views", "min_scale", "batch_size", "lr", "center_lr")
    assert {k: preset.to_dict()[k] for k in same} == {k: demo.to_dict()[k] for k in same}
    more = ("dual_lr", "temperature_x", "temperature_c", "optimizer")
    assert {k: preset.to_dict()[k] for k in more} == {k: demo.to_dict()[k] for k in more}
    # 10 known classes: heads C..5C; the demo, told no K, has the grid from 2 to 50
    assert preset.bank.num_clusters == [10, 20, 30, 40, 50]
    assert demo.bank.num_clusters == list(HEAD_GRID)
    assert (preset.network.input_size, preset.network.mean, preset.network.std) == (
        28,
        [0.13],
        [0.31],
    )
    assert (
        preset.schedule.epochs == demo.schedule.epochs == 40
    )  # 78 steps per epoch: 39 epochs of training
    assert preset.augmentation.view_kwargs["erase_prob"] == 0.25


def test_rgb_32px_set_gets_shape_views_with_a_random_palette():
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    preset = auto_preset(DataDescription(2000, 3, 32, 10, mean=mean, std=std))
    assert (preset.network.in_chans, preset.network.input_size, preset.augmentation.views) == (
        3,
        32,
        "shapes",
    )
    grey = auto_preset(DataDescription(2000, 1, 32, 10))
    assert preset.augmentation.view_kwargs == {
        **grey.augmentation.view_kwargs,  # the digits' warps, in colour
        "erase_prob": 0.0,
        "invert_prob": 0.5,
    }
    assert preset.network.input_norm == "instance"
    assert preset.network.mean == list(mean) and preset.network.std == list(std)
    assert preset.augmentation.min_scale == grey.augmentation.min_scale == 0.7


def test_large_images_are_resized_down_and_unknown_classes_get_the_default_heads():
    preset = auto_preset(DataDescription(5000, 1, 56, None))
    assert preset.network.input_size == 32 and preset.bank.num_clusters == list(HEAD_GRID)
    small = auto_preset(DataDescription(300, 1, 28, None))  # at least 20 images per cluster
    assert (
        small.bank.num_clusters == [2, 3, 4, 5, 6, 8, 10, 12, 15] and small.loader.batch_size == 16
    )
    small.check_data_size(300)
    tiny = auto_preset(DataDescription(50, 3, 64, 4))
    assert tiny.bank.num_clusters == [4] and tiny.loader.batch_size == 8
    tiny.check_data_size(50)


def test_time_grows_with_the_data_until_the_step_budget():
    # 2,000 images take 40 passes (1,240 steps), under half the demo's 3,120 steps; from about
    # 5,000 images on the 3,000-step budget caps the run.
    steps = {
        n: schedule(auto_preset(DataDescription(n, 1, 28, 10)))[1] for n in (2000, 5000, 50_000)
    }
    assert steps[2000] == 40 * (2000 // 64) and steps[2000] <= 0.5 * 3120
    assert 3000 <= steps[5000] < 3000 + 5000 // 64
    assert 3000 <= steps[50_000] < 3000 + 50_000 // 128


def test_heads_follow_the_number_of_classes():
    assert auto_preset(DataDescription(3000, 1, 28, 3)).bank.num_clusters == [3, 6, 9, 12, 15]
    assert auto_preset(DataDescription(3000, 1, 28, 20)).bank.num_clusters == [20, 40, 60, 80, 100]


def test_overrides_win_and_the_derived_settings_follow_them():
    grey8 = DataDescription(1797, 1, 8, 10)
    half = auto_preset(grey8, batch_size=32)
    assert half.loader.batch_size == 32 and schedule(half)[1] == 40 * 56  # 40 passes of 56 steps
    short = auto_preset(grey8, epochs=3)
    assert short.schedule.epochs == 3 and short.schedule.warmup_epochs == 2
    bigger = auto_preset(grey8, input_size=28)
    assert (
        bigger.augmentation.min_scale == 0.7
        and bigger.augmentation.view_kwargs["erase_prob"] == 0.25
    )
    named = auto_preset(grey8, views="byol", in_chans=3)
    assert (
        named.augmentation.view_kwargs == {}  # byol_views' own defaults
        and len(named.network.mean) == 3
    )
    assert auto_preset(grey8, num_clusters=[7]).bank.num_clusters == [7]
    with pytest.raises(ValueError, match="unknown preset settings"):
        auto_preset(grey8, learning_rate=0.1)


def test_named_presets_are_unchanged_by_the_new_fields():
    for name, preset in PRESETS.items():
        assert preset.augmentation.view_kwargs is None and preset.resolved_from is None, name
    assert "auto" in PRESET_CHOICES and "auto" not in PRESETS


def write_folder(root, images, labels=None):
    for index, image in enumerate(images):
        folder = root if labels is None else root / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index}.png")


def test_describe_data_measures_mode_size_classes_and_statistics(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    write_folder(tmp_path / "grey", grey, labels=np.arange(40) % 4)
    described = describe_data(ImageDataset.from_source(str(tmp_path / "grey")))
    assert (described.num_images, described.channels, described.image_size) == (40, 1, 8)
    assert described.num_classes == 4
    assert described.mean[0] == pytest.approx(grey.mean() / 255, abs=1e-3)
    assert described.std[0] == pytest.approx(grey.std() / 255, abs=1e-3)

    colour = rng.integers(0, 256, (30, 40, 32, 3), dtype=np.uint8)
    write_folder(tmp_path / "colour", colour)  # flat: no labels
    described = describe_data(ImageDataset.from_source(str(tmp_path / "colour")))
    assert (described.channels, described.image_size, described.num_classes) == (3, 32, None)
    assert len(described.mean) == 3

    # Grey pictures stored as RGB (as JPEGs often are) are grey data.
    as_rgb = np.repeat(grey[..., None], 3, axis=-1)
    write_folder(tmp_path / "grey_rgb", as_rgb, labels=np.zeros(40, dtype=int))
    with pytest.warns(UserWarning, match="same class"):
        single_class = ImageDataset.from_source(str(tmp_path / "grey_rgb"))
    described = describe_data(single_class)
    assert described.channels == 1 and described.num_classes is None  # a single class


def test_resolve_preset_auto_derives_from_the_description_and_prints_its_settings(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (200, 12, 12, 3), dtype=np.uint8)
    write_folder(tmp_path / "train", images, labels=np.arange(200) % 2)
    description = describe_data(ImageDataset.from_source(str(tmp_path)))
    preset = resolve_preset("auto", description, data=str(tmp_path), epochs=4)
    workers = default_num_workers()
    assert preset == auto_preset(description, str(tmp_path), workers, epochs=4)
    with pytest.raises(ValueError, match="derived from the data"):
        get_preset("auto", data=str(tmp_path))  # a named preset never reads data
    assert (preset.network.in_chans, preset.network.input_size, preset.schedule.epochs) == (
        3,
        12,
        4,
    )
    assert preset.bank.num_clusters == [2, 4, 6, 8, 10] and preset.loader.batch_size == 8
    record = json.loads(json.dumps(preset.to_dict()))  # goes into the model's training record
    assert record["resolved_from"]["data"]["num_images"] == 200
    text = describe_settings(preset)
    assert text.startswith("resolved settings (auto, from 200 colour 12 px images, 2 classes)")
    assert "view_kwargs" in text and "training steps" in text
