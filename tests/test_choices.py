"""Every string setting declares its values, and a wrong one is refused before data is read."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import types
import typing
from pathlib import Path

import pytest
import torch

from secu_plugin.frozen import finetune_presets, head_presets
from secu_plugin.frozen.finetune_presets import FINETUNE_PRESETS, FinetuneSettings
from secu_plugin.frozen.head_presets import HEAD_PRESETS, HeadPreset
from secu_plugin.train import presets, settings
from secu_plugin.train.choices import FreeForm, declared_values
from secu_plugin.train.presets import PRESETS, Preset, get_preset
from secu_plugin.train.settings import setting_types
from tests.in_process import run_here

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {
    Preset: ("mnist5k", PRESETS),
    HeadPreset: ("frozen", HEAD_PRESETS),
    FinetuneSettings: ("finetune", FINETUNE_PRESETS),
}


def settings_classes() -> list[type]:
    """Every dataclass the settings modules define: the groups and the recipes' settings."""
    return [
        cls
        for module in (settings, presets, head_presets, finetune_presets)
        for _, cls in inspect.getmembers(module, dataclasses.is_dataclass)
        if isinstance(cls, type) and cls.__module__ == module.__name__
    ]


def holds_strings(hint: typing.Any) -> bool:
    """Whether a field of this type can hold a string (``str``, ``str | None``, ...)."""
    if hint is str:
        return True
    origin = typing.get_origin(hint)
    if origin is typing.Annotated:
        return holds_strings(typing.get_args(hint)[0])
    if origin is typing.Literal:
        return any(isinstance(value, str) for value in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return any(holds_strings(arg) for arg in typing.get_args(hint))
    return False


def test_every_string_setting_declares_its_values():
    classes = settings_classes()
    assert len(classes) >= 13  # the base, 2 recipes, 7 shared groups, cache, pairing, ...
    undeclared = []
    for cls in classes:
        hints = typing.get_type_hints(cls, include_extras=True)
        for field in dataclasses.fields(cls):
            hint = hints[field.name]
            if holds_strings(hint) and declared_values(hint) is None:
                undeclared.append(f"{cls.__name__}.{field.name}")
            if typing.get_origin(hint) is typing.Literal:  # choices are strings, none repeated
                values = typing.get_args(hint)
                assert all(isinstance(v, str) for v in values) and len(set(values)) == len(values)
    assert undeclared == []
    # every group is one of a recipe's: the walk over the recipes below reaches them all
    groups = {
        type(getattr(registry[name], field.name))
        for cls, (name, registry) in RECIPES.items()
        for field in dataclasses.fields(cls)
    }
    assert {c for c in classes if not issubclass(c, settings.RunSettings)} <= groups


def wrong_values(declared: tuple | FreeForm) -> list:
    if isinstance(declared, FreeForm):
        return ["", 3]
    return [declared[0] + "x", declared[0].upper(), None]


@pytest.mark.parametrize("cls", list(RECIPES), ids=lambda cls: cls.__name__)
def test_a_wrong_value_of_every_string_setting_names_it_and_the_allowed_ones(cls):
    name, registry = RECIPES[cls]
    checked = 0
    for setting, (group, hint) in setting_types(cls).items():
        declared = declared_values(hint)
        if declared is None:
            continue
        allowed = cls.recipe_choices.get(setting, declared)
        for wrong in wrong_values(declared):
            # as --set gives it, and as a settings object built without --set is resolved
            built = registry[name]
            if group is None:
                built = dataclasses.replace(built, **{setting: wrong})
            else:
                changed = dataclasses.replace(getattr(built, group), **{setting: wrong})
                built = dataclasses.replace(built, **{group: changed})
            for attempt in (
                functools.partial(get_preset, name, registry, **{setting: wrong}),
                built.check,
            ):
                with pytest.raises(ValueError) as refused:
                    attempt()
                message = str(refused.value)
                assert message.startswith(f"{setting}={wrong!r} "), message
                if isinstance(declared, FreeForm):
                    assert declared.kind in message
                else:
                    assert all(repr(value) in message for value in allowed), message
        checked += 1
    strings = [hint for _, hint in setting_types(cls).values() if holds_strings(hint)]
    assert checked == len(strings) >= 7  # name, data, backbone, views, optimizer, ...


def test_a_recipe_narrows_the_shared_views_to_those_its_loop_makes():
    assert get_preset("mnist5k", views="byol", in_chans=3).augmentation.views == "byol"
    with pytest.raises(ValueError, match="views='timm' is not one of .*'digits', 'shapes'$"):
        get_preset("mnist5k", views="timm")
    with pytest.raises(ValueError, match="views='digits' is not one of the allowed values: 'timm'"):
        get_preset("frozen", HEAD_PRESETS, views="digits")


def test_the_declared_choices_are_those_their_consumers_take():
    from secu_plugin import SeCuCenterBank
    from secu_plugin.data.feature_cache import DTYPES
    from secu_plugin.train.optim import build_optimizer

    types_ = setting_types(HeadPreset)
    assert declared_values(types_["cache_dtype"][1]) == tuple(DTYPES)
    for assigner in declared_values(types_["assigner"][1]):
        SeCuCenterBank(dim=2, num_clusters=[2], num_instances=4, assigner=assigner)
    for memory in declared_values(types_["memory"][1]):
        SeCuCenterBank(dim=2, num_clusters=[2], num_instances=4, memory=memory)
    encoder = torch.nn.Linear(2, 2)
    centers = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(2, 2))])
    for optimizer in declared_values(types_["optimizer"][1]):
        build_optimizer(optimizer, encoder, centers, weight_decay=0.0)


@pytest.mark.parametrize(
    "recipe, change",
    [("train.py", "views=byoll"), ("train_head.py", "pairs=neighbours")],
)
def test_a_misspelt_choice_ends_the_recipe_before_it_reads_data(tmp_path, recipe, change):
    """The data folder does not exist: reading it would fail with another message."""
    missing = tmp_path / "no_such_data"
    # in this process: the recipe's own code, without a new process's seconds of imports
    result = run_here(
        ROOT / "recipes" / recipe,
        "--data",
        str(missing),
        "--output_dir",
        str(tmp_path / "out"),
        "--set",
        change,
        env={"SECU_DEBUG": None},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    setting, value = change.split("=")
    allowed = ("byol", "digits", "shapes") if setting == "views" else ("neighbors", "views")
    assert result.stderr.strip().splitlines() == [
        f"error: {setting}={value!r} is not one of the allowed values: "
        + ", ".join(repr(v) for v in allowed)
    ]
    assert not (tmp_path / "out").exists()
