"""The values a string setting may take, declared in its type and checked before a run starts.

Every ``str`` field of a settings group declares what it accepts, in one of two ways:

- a set of allowed values, as a ``Literal`` type: ``views: Literal["byol", "digits", "timm"]``;
- a free-form kind, as an ``Annotated`` string with a :class:`FreeForm`: what the value names
  (a timm model, a data source) and the check of one value (:data:`TimmModelName`, ...).

:func:`check_setting` checks one value against its field's type; a recipe checks its command
line's values before it reads data, and the settings check every value when they are resolved
(``get_preset``, ``resolve_preset``: never while a registry is built), so a misspelt choice
(``--set views=byoll``) is one error naming the setting, the value and the allowed ones, before
any data is read. To add a string setting: give it a ``Literal`` of its values, or one of the
free-form kinds below (or a new :class:`FreeForm` with its own check).

Only the standard library at import time; the timm check imports timm when it runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin


@dataclass(frozen=True)
class FreeForm:
    """The declared kind of a free-form string setting: what a value names, and its check
    (raises ValueError, saying why, for a value that cannot be one).

    Examples:
        >>> FreeForm("a run's name", non_empty).check("demo")
    """

    kind: str
    check: Callable[[str], None]


def non_empty(value: str) -> None:
    """Refuses an empty (or blank) string.

    Examples:
        >>> non_empty(" ")
        Traceback (most recent call last):
        ...
        ValueError: it is empty
    """
    if not value.strip():
        raise ValueError("it is empty")


def timm_model_name(value: str) -> None:
    """Refuses a name that timm does not know (this package's ``secu_*`` models included;
    an ``hf-hub:`` repository passes, checked when the recipe creates the model).

    Examples:
        >>> timm_model_name("secu_convnet_small")
    """
    from secu_plugin.models.backbones import check_backbone_name  # timm, when checked only

    check_backbone_name(value, allow_hub=True)


RunName = Annotated[str, FreeForm("a run's name", non_empty)]
DataSource = Annotated[
    str, FreeForm("mnist5k, an image folder, parquet files or a Hub data set", non_empty)
]
TimmModelName = Annotated[str, FreeForm("a timm model name", timm_model_name)]


def declared_values(hint: Any) -> tuple[Any, ...] | FreeForm | None:
    """What a setting's type hint declares: the allowed values of a ``Literal``, the
    :class:`FreeForm` of an ``Annotated`` string, else None.

    Examples:
        >>> declared_values(Literal["sgd", "lars"]), declared_values(int)
        (('sgd', 'lars'), None)
        >>> declared_values(TimmModelName).kind
        'a timm model name'
    """
    if get_origin(hint) is Literal:
        return get_args(hint)
    if get_origin(hint) is Annotated:
        return next((extra for extra in hint.__metadata__ if isinstance(extra, FreeForm)), None)
    return None


def check_setting(name: str, hint: Any, value: Any, allowed: tuple[str, ...] | None = None) -> None:
    """Refuses a value that setting ``name``'s type ``hint`` does not declare; ``allowed``
    narrows a ``Literal`` (a recipe that takes only some of a shared group's values).

    Examples:
        >>> check_setting("optimizer", Literal["sgd", "lars"], "lars")
        >>> check_setting("optimizer", Literal["sgd", "lars"], "adam")
        Traceback (most recent call last):
        ...
        ValueError: optimizer='adam' is not one of the allowed values: 'sgd', 'lars'
        >>> check_setting("name", RunName, "")
        Traceback (most recent call last):
        ...
        ValueError: name='' is not a run's name: it is empty
    """
    declared = declared_values(hint)
    if isinstance(declared, tuple):
        choices = declared if allowed is None else allowed
        if not isinstance(value, str) or value not in choices:
            raise ValueError(
                f"{name}={value!r} is not one of the allowed values: "
                + ", ".join(repr(choice) for choice in choices)
            )
    elif isinstance(declared, FreeForm):
        if not isinstance(value, str):
            raise ValueError(f"{name}={value!r} is not {declared.kind}: it is not a string")
        try:
            declared.check(value)
        except ValueError as error:
            raise ValueError(f"{name}={value!r} is not {declared.kind}: {error}") from None
