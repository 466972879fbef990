"""Hugging Face Hub plumbing of :class:`SeCuModel`: the files, their checks, clear errors.

A downloaded model is untrusted: its config goes through the constructor's checks (and the
backbone's allow-list), and its sizes are checked against the weights file's header, read
without loading a tensor, before anything is allocated: first every integer of the config
(:func:`check_sizes_against_weights`), then every tensor of the model built on the meta device
(:func:`check_model_against_weights`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from typing import Any

import torch
from huggingface_hub import constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn

CONFIG_FILE = constants.CONFIG_NAME  # "config.json"
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"


class PretrainedModelNotFoundError(FileNotFoundError):
    """A model given to :meth:`SeCuModel.from_pretrained` could not be found or downloaded.

    The message says what was tried and how to fix it; the library error that caused it is
    chained as ``__cause__``.

    Examples:
        >>> error = PretrainedModelNotFoundError("no model at 'org/name'")
        >>> isinstance(error, FileNotFoundError), str(error)
        (True, "no model at 'org/name'")
    """


def weight_shapes(weights_file: str) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header alone (no tensor
    is read). ValueError if the file cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(weights_file, framework="pt") as weights:
            return {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(f"cannot read the weights {weights_file!r}: {error}") from error


def check_sizes_against_weights(weights_file: str, config: dict[str, Any]) -> None:
    """Refuses a config whose sizes disagree with the weights file, before any allocation.

    Reads only the safetensors header (names, shapes). ``dim`` and ``num_clusters`` must be
    the centers' shapes; every other integer of the config but ``results`` and ``training``
    (hidden widths, ``in_chans``, ``input_size``, ``projection_layers``, the integers in
    ``backbone_kwargs`` such as widths, layers or patch sizes) must be at most the number of
    values of the largest tensor in the file, which no real size exceeds. A config asking for a huge size fails here, cheaply,
    instead of allocating it; :func:`check_model_against_weights` then compares every shape.

    Examples:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = os.path.join(tempfile.mkdtemp(), WEIGHTS_FILE)
        >>> save_file({"centers.0": torch.zeros(10, 8)}, path)
        >>> check_sizes_against_weights(path, {"dim": 8, "num_clusters": [10]})
        >>> try:
        ...     check_sizes_against_weights(path, {"dim": 10**12, "num_clusters": [10]})
        ... except ValueError as error:
        ...     print(str(error).split(": ", 1)[1])
        head 0 has (10, 8) centers, the config asks for (10, 1000000000000)
        >>> try:
        ...     check_sizes_against_weights(
        ...         path, {"dim": 8, "num_clusters": [10], "projection_hidden_dim": 10**12})
        ... except ValueError as error:
        ...     print(str(error).split(": ", 1)[1])
        projection_hidden_dim=1000000000000 is larger than any tensor in the weights (80 values)
    """
    shapes = weight_shapes(weights_file)
    heads = sorted(int(name.split(".")[1]) for name in shapes if name.startswith("centers."))
    num_clusters = config.get("num_clusters")
    dim = config.get("dim")
    mismatch = f"the config does not match the weights in {weights_file!r}"
    if not isinstance(num_clusters, list) or len(num_clusters) != len(heads):
        raise ValueError(
            f"{mismatch}: num_clusters={num_clusters!r}, the weights hold {len(heads)} heads of "
            "centers"
        )
    for head, k in enumerate(num_clusters):
        shape = shapes.get(f"centers.{head}")
        if shape != (k, dim):
            raise ValueError(
                f"{mismatch}: head {head} has {shape} centers, the config asks for ({k!r}, {dim!r})"
            )
    largest = max((math.prod(shape) for shape in shapes.values()), default=0)
    for name, value in _config_integers(config):
        if value > largest:
            raise ValueError(
                f"{mismatch}: {name}={value} is larger than any tensor in the weights "
                f"({largest} values)"
            )


def _config_integers(value: Any, name: str = "") -> list[tuple[str, int]]:
    """(field, integer) for every integer in a config (nested in lists and dicts), but the
    centers' sizes (checked exactly), the records of results and training (no sizes) and
    booleans."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int):
        return [(name, value)]
    if isinstance(value, dict):
        skip = ("dim", "num_clusters", "results", "training") if not name else ()
        return [
            item
            for key, inner in value.items()
            if key not in skip
            for item in _config_integers(inner, f"{name}[{key!r}]" if name else str(key))
        ]
    if isinstance(value, (list, tuple)):
        return [item for inner in value for item in _config_integers(inner, name)]
    return []


def check_model_against_weights(
    weights_file: str, build: Callable[[], nn.Module], strict: bool = True
) -> None:
    """Builds the model on the meta device (no memory) and refuses it, before it is built for
    real, if a tensor has another shape than in the weights file, or (``strict``) if the two
    hold different tensors. With ``strict=False``, the tensors the file lacks (left at their
    initial values) may hold no more values than the whole file.

    Examples:
        >>> import tempfile
        >>> from safetensors.torch import save_file
        >>> path = os.path.join(tempfile.mkdtemp(), WEIGHTS_FILE)
        >>> save_file({"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, path)
        >>> check_model_against_weights(path, lambda: nn.Linear(2, 3))
        >>> check_model_against_weights(path, lambda: nn.Linear(2, 4))
        Traceback (most recent call last):
        ...
        ValueError: the config does not match the weights in ...: missing [], unexpected [], wrong shapes ['bias: (3,) in the weights, (4,) in the model', 'weight: (3, 2) in the weights, (4, 2) in the model']
    """
    shapes = weight_shapes(weights_file)
    with torch.device("meta"):
        model = build()
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong_shape = sorted(
        f"{key}: {shapes[key]} in the weights, {expected[key]} in the model"
        for key in set(shapes) & set(expected)
        if shapes[key] != expected[key]
    )
    if wrong_shape or (strict and (missing or unexpected)):
        raise ValueError(
            f"the config does not match the weights in {weights_file!r}: missing {missing}, "
            f"unexpected {unexpected}, wrong shapes {wrong_shape}"
        )
    fresh = sum(math.prod(expected[key]) for key in missing)
    if fresh > sum(math.prod(shape) for shape in shapes.values()):
        raise ValueError(
            f"the config does not match the weights in {weights_file!r}: the tensors it adds "
            f"({missing}) hold {fresh} values, more than the whole weights file"
        )


def local_model_files(directory: str) -> tuple[str, str]:
    missing = [
        name
        for name in (CONFIG_FILE, WEIGHTS_FILE)
        if not os.path.isfile(os.path.join(directory, name))
    ]
    if missing:
        raise PretrainedModelNotFoundError(
            f"directory {directory!r} is not a saved SeCuModel: it has no "
            f"{' and no '.join(missing)}. "
            "Save a model there with SeCuModel.save_pretrained(directory), or pass a Hub repo id."
        )
    return os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)


def hub_error_with_fix(error: Exception, model_id: str, revision: str | None) -> Exception | None:
    """An error that says how to fix a huggingface_hub download error, or None to re-raise it."""
    local_hint = "or pass the path of a local directory written by SeCuModel.save_pretrained"
    login_hint = "log in with `hf auth login` (or `huggingface-cli login`) or pass token=..."
    download_hint = f"`hf download {model_id}` (or `huggingface-cli download {model_id}`)"
    if isinstance(error, HFValidationError):
        return ValueError(
            f"{model_id!r} is neither an existing local directory nor a valid Hugging Face Hub "
            f"repo id ('org/name'): {str(error).rstrip('.')}. Check the path, {local_hint}."
        )
    if isinstance(error, GatedRepoError):
        return PretrainedModelNotFoundError(
            f"the Hub repository {model_id!r} is gated: request access on its page, then "
            f"{login_hint}."
        )
    if isinstance(error, RepositoryNotFoundError):
        return PretrainedModelNotFoundError(
            f"no model repository {model_id!r} on the Hugging Face Hub: check the id; for a "
            f"private repository {login_hint}; {local_hint}."
        )
    if isinstance(error, RevisionNotFoundError):
        return PretrainedModelNotFoundError(
            f"the repository {model_id!r} has no revision {revision!r}: check the branch, tag "
            "or commit."
        )
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return PretrainedModelNotFoundError(
            f"cannot load {model_id!r}: it is not in the local Hugging Face cache and the Hub "
            "cannot be reached (offline mode HF_HUB_OFFLINE=1, local_files_only=True, or no "
            f"network). Check the repo id; download the model first while online with "
            f"{download_hint}, {local_hint}."
        )
    if isinstance(error, EntryNotFoundError):
        return PretrainedModelNotFoundError(
            f"the repository {model_id!r} has no {CONFIG_FILE} or {WEIGHTS_FILE}: it was not "
            "written by SeCuModel.save_pretrained / push_to_hub. Check the repo id."
        )
    if isinstance(error, HfHubHTTPError):
        return PretrainedModelNotFoundError(
            f"cannot download {model_id!r} from the Hugging Face Hub: {error}. Check the repo "
            f"id and your access ({login_hint}), {local_hint}."
        )
    if isinstance(error, (json.JSONDecodeError, AttributeError)):
        return ValueError(f"the config.json of {model_id!r} is not a SeCuModel config: {error}")
    if isinstance(error, (ConnectionError, TimeoutError)):
        return PretrainedModelNotFoundError(
            f"cannot reach the Hugging Face Hub to download {model_id!r}: {error}. Download it "
            f"while online with {download_hint}, {local_hint}."
        )
    return None


def load_weights(
    model: nn.Module, weights_file: str, map_location: str | torch.device, strict: bool
) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(weights_file, device=str(map_location))
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(f"cannot read the weights {weights_file!r}: {error}") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        key for key in set(state) & set(expected) if state[key].shape != expected[key].shape
    )
    if wrong_shape or (strict and (missing or unexpected)):
        raise ValueError(
            f"the weights in {weights_file!r} do not match the model built from its config: "
            f"missing {missing}, unexpected {unexpected}, wrong shapes {wrong_shape}"
        )
    model.load_state_dict(state, strict=strict)
    model.to(map_location)
