"""Hugging Face Hub plumbing of :class:`SeCuModel`: the files, their checks, clear errors.

A downloaded model is untrusted: its config goes through the constructor's checks (and the
backbone's allow-list), and its sizes are checked against the weights file's header, read
without loading a tensor, before anything is allocated.
"""

from __future__ import annotations

import json
import os
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


def check_sizes_against_weights(weights_file: str, config: dict[str, Any]) -> None:
    """Refuses a config whose sizes disagree with the weights file, before any allocation.

    Reads only the safetensors header (names, shapes): a config asking for a huge ``dim`` or
    ``num_clusters`` fails here, cheaply, instead of allocating what it asks for.

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
    """
    from safetensors import safe_open

    try:
        with safe_open(weights_file, framework="pt") as weights:
            shapes = {name: tuple(weights.get_slice(name).get_shape()) for name in weights.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(f"cannot read the weights {weights_file!r}: {error}") from error
    heads = sorted(int(name.split(".")[1]) for name in shapes if name.startswith("centers."))
    num_clusters = config.get("num_clusters")
    dim = config.get("dim")
    if not isinstance(num_clusters, list) or len(num_clusters) != len(heads):
        raise ValueError(
            f"the config does not match the weights in {weights_file!r}: num_clusters="
            f"{num_clusters!r}, the weights hold {len(heads)} heads of centers"
        )
    for head, k in enumerate(num_clusters):
        shape = shapes.get(f"centers.{head}")
        if shape != (k, dim):
            raise ValueError(
                f"the config does not match the weights in {weights_file!r}: head {head} has "
                f"{shape} centers, the config asks for ({k!r}, {dim!r})"
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
