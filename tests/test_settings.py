"""Settings as data: each field declared once, flat and grouped overrides, the flat record."""

from __future__ import annotations

import dataclasses
import inspect
import json
import typing
from collections import Counter

import pytest

from secu_plugin.frozen.head_presets import HEAD_PRESETS, HeadPreset
from secu_plugin.train.presets import PRESETS, Preset, get_preset
from secu_plugin.train.settings import RunSettings, batch_size_for, group_fields


def test_no_setting_is_declared_in_two_settings_classes():
    classes = {RunSettings, Preset, HeadPreset}
    classes |= {type(getattr(PRESETS["mnist5k"], f.name)) for f in dataclasses.fields(Preset)}
    classes |= {
        type(getattr(HEAD_PRESETS["frozen"], f.name)) for f in dataclasses.fields(HeadPreset)
    }
    classes = {cls for cls in classes if dataclasses.is_dataclass(cls)}
    # the base, 2 presets, 7 shared groups, cache, pairing, self-labeling and the objective
    assert len(classes) == 14
    declared = Counter()
    for cls in classes:
        hints = typing.get_type_hints(cls)
        own = inspect.get_annotations(cls)
        settings = [name for name in own if typing.get_origin(hints[name]) is not typing.ClassVar]
        declared.update(name for name in settings if not dataclasses.is_dataclass(hints[name]))
    assert [name for name, count in declared.items() if count > 1] == []
    # The groups both recipes compose are the same classes.
    assert group_fields(Preset)["lr"] == group_fields(HeadPreset)["lr"] == "optimization"


def test_flat_and_grouped_overrides_reach_the_same_field():
    flat = get_preset("mnist5k", lr=0.1, num_clusters=[10, 20], in_chans=3, views="byol")
    grouped = get_preset(
        "mnist5k",
        **{"optimization.lr": 0.1, "bank.num_clusters": [10, 20], "network.in_chans": 3,
           "augmentation.views": "byol"},
    )  # fmt: skip
    assert flat == grouped
    assert (flat.optimization.lr, flat.bank.num_clusters) == (0.1, [10, 20])
    assert PRESETS["mnist5k"].optimization.lr == 0.2  # the registry's value is untouched
    for wrong in ({"learning_rate": 1.0}, {"bank.lr": 0.1}, {"optimization": 0.1}):
        with pytest.raises(ValueError, match="unknown preset settings"):
            get_preset("mnist5k", **wrong)


def test_the_record_carries_every_setting_under_its_flat_name():
    for preset in [*PRESETS.values(), *HEAD_PRESETS.values()]:
        record = preset.to_dict()
        assert list(record) == list(group_fields(type(preset)))
        assert type(preset).flat_names(record) == record
        assert preset.replace(**json.loads(json.dumps(record))) == preset  # JSON round trip
    assert PRESETS["imagenet"].to_dict()["optimizer"] == "lars"


def test_the_frozen_recipe_refuses_what_its_loop_cannot_use():
    for change, message in (
        ({"predictor_hidden_dim": 32}, "predictor"),
        ({"backbone_lr_factor": 0.1}, "frozen"),
        ({"views": "byol"}, "timm"),
        ({"pairs": "views"}, "augmented_views=2"),
    ):
        with pytest.raises(ValueError, match=message):
            get_preset("frozen", HEAD_PRESETS, **change)


def test_one_batch_rule():
    frozen = get_preset("frozen", HEAD_PRESETS)
    assert frozen.loader.batch_size is None  # from the data
    assert (
        [frozen.with_batch_size_for(n).loader.batch_size for n in (5000, 1797, 100)]
        == [
            batch_size_for(5000),
            batch_size_for(1797),
            batch_size_for(100),
        ]
        == [256, 64, 4]
    )
    named = get_preset("mnist5k")
    assert named.with_batch_size_for(100) is named  # a batch the settings name is kept
