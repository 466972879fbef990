"""Import of the checkpoints written by the paper's official code (github.com/idstcv/SeCu).

Those files are ``torch.save`` pickles: they are read with ``weights_only=True`` unless the
caller trusts the file, so that no code in them runs.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

# Keys of the official checkpoints that hold training state, not model weights.
_TRAINING_STATE_KEY = re.compile(r"^(assign_labels|counter|ldual)_(\d+)$")
_CENTER_KEY = re.compile(r"^center_(\d+)$")


def load_reference_checkpoint(
    model_class: Callable[..., nn.Module],
    path: str | os.PathLike,
    backbone: str = "secu_resnet18_cifar",
    num_clusters: list[int] | None = None,
    weights_only: bool = True,
    **model_kwargs: Any,
) -> nn.Module:
    """Imports a checkpoint written by the paper's official code (github.com/idstcv/SeCu).

    ``model_class`` builds the model from the read configuration:
    :meth:`SeCuModel.from_reference_checkpoint <secu_plugin.models.SeCuModel>` passes itself.

    The checkpoint is the ``.pth.tar`` dict the official ``main.py`` / ``main_imagenet.py``
    save: ``state_dict`` keys prefixed ``module.``; ``encoder.*`` a ResNet in torchvision
    naming (the CIFAR/STL networks call the residual projection ``shortcut``, mapped to
    timm's ``downsample``), ``encoder.fc.*`` the projection MLP (2 or 3 layers),
    ``predictor.*`` (ImageNet), ``center_{i}`` of shape (dim, K_i). The training state
    (``assign_labels_{i}``, ``counter_{i}``, ``ldual_{i}``) is not part of the model: see
    :func:`load_reference_training_state`.

    ``dim``, ``num_clusters``, ``in_chans``, the projection layers and hidden width and
    the predictor are read from the checkpoint. The input size and normalization are the
    backbone's (``secu_resnet18_cifar``: 32 px and CIFAR-10's statistics, as the official
    code; ``secu_resnet18_stl``: 96 px, ImageNet's); give ``mean``/``std`` for CIFAR-100
    ([0.5071, 0.4867, 0.4408] / [0.2675, 0.2565, 0.2761]).

    Args:
        path: The checkpoint file.
        backbone: The timm name of the encoder: ``secu_resnet18_cifar``,
            ``secu_resnet18_stl``, or ``resnet50`` for ImageNet.
        num_clusters: Expected clusters per head; checked against the checkpoint.
        weights_only: Load with ``torch.load(weights_only=True)`` (safe). Set False only
            for a checkpoint you trust that holds other Python objects.
        **model_kwargs: Other :class:`SeCuModel` arguments (``mean``, ``std``,
            ``input_size``, ``temperature``, ``backbone_kwargs``, ...).

    Raises:
        ValueError: The file is not such a checkpoint, has unknown or missing keys (listed),
            or disagrees with the arguments.
    """
    state = _load_reference_state_dict(path, weights_only)
    center_heads = sorted(int(match.group(1)) for key in state if (match := _CENTER_KEY.match(key)))
    if not center_heads:
        raise ValueError(f"{os.fspath(path)!r} has no center_<i> tensor: not a SeCu checkpoint")
    if center_heads != list(range(len(center_heads))):
        raise ValueError(f"center heads must be numbered 0..n-1, got {center_heads}")
    centers = [state[f"center_{i}"] for i in center_heads]
    if any(c.ndim != 2 for c in centers) or len({c.shape[0] for c in centers}) != 1:
        raise ValueError(
            "center_<i> must be (dim, K_i) matrices of one dim, got "
            f"{[tuple(c.shape) for c in centers]}"
        )
    dim = int(centers[0].shape[0])
    found_clusters = [int(c.shape[1]) for c in centers]
    if num_clusters is not None and list(num_clusters) != found_clusters:
        raise ValueError(
            f"num_clusters={list(num_clusters)}, but the checkpoint's heads have {found_clusters}"
        )

    unknown = [
        key
        for key in state
        if not (
            key.startswith(("encoder.", "predictor."))
            or _CENTER_KEY.match(key)
            or _TRAINING_STATE_KEY.match(key)
        )
    ]
    if unknown:
        raise ValueError(f"unknown keys in the SeCu checkpoint: {sorted(unknown)}")

    fc_linear = sorted(
        int(key.split(".")[2])
        for key in state
        if re.fullmatch(r"encoder\.fc\.\d+\.weight", key) and state[key].ndim == 2
    )
    if fc_linear == [0, 3]:
        projection_layers = 2
    elif fc_linear == [0, 3, 6]:
        projection_layers = 3
    else:
        raise ValueError(
            "encoder.fc must be the SeCu projection MLP with Linear layers at indices 0, 3 "
            f"(2 layers) or 0, 3, 6 (3 layers), found Linear layers at {fc_linear}"
        )
    projection_hidden_dim = int(state["encoder.fc.0.weight"].shape[0])
    conv1 = state.get("encoder.conv1.weight")
    if conv1 is None or conv1.ndim != 4:
        raise ValueError("the encoder has no conv1.weight: not a ResNet checkpoint")
    predictor_weight = state.get("predictor.0.weight")
    inferred: dict[str, Any] = {
        "dim": dim,
        "num_clusters": found_clusters,
        "projection_layers": projection_layers,
        "projection_hidden_dim": projection_hidden_dim,
        "predictor_hidden_dim": (
            None if predictor_weight is None else int(predictor_weight.shape[0])
        ),
        "in_chans": int(conv1.shape[1]),
    }
    for key, value in inferred.items():
        if key in model_kwargs and model_kwargs[key] != value:
            raise ValueError(f"{key}={model_kwargs[key]!r} but the checkpoint has {value!r}")
    model = model_class(backbone=backbone, **model_kwargs, **inferred)

    converted: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("encoder.fc."):
            converted["projection_head." + key[len("encoder.fc.") :]] = value
        elif key.startswith("encoder."):
            name = key[len("encoder.") :].replace(".shortcut.", ".downsample.")
            converted["backbone." + name] = value
        elif key.startswith("predictor."):
            converted[key] = value
    for head, center in enumerate(centers):
        converted[f"centers.{head}"] = center.t().contiguous()
    expected = model.state_dict()
    missing = sorted(set(expected) - set(converted))
    unexpected = sorted(set(converted) - set(expected))
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(converted[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(converted) & set(expected)
        if converted[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        raise ValueError(
            f"the checkpoint does not match SeCuModel(backbone={backbone!r}): "
            f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches "
            f"{wrong_shape} (model key names; 'downsample' is the checkpoint's 'shortcut')"
        )
    model.load_state_dict(converted, strict=True)
    model.eval()
    return model


def load_reference_training_state(
    path: str | os.PathLike, weights_only: bool = True
) -> dict[str, Any]:
    """The training state of an official SeCu checkpoint (not part of :class:`SeCuModel`).

    Returns:
        ``{"epoch": int | None, "assignments": [...], "counts": [...], "duals": [...]}``, one
        tensor per head (``assign_labels_i``, ``counter_i``, ``ldual_i``; ``duals`` is empty
        for the entropy constraint).
    """
    checkpoint = _torch_load(path, weights_only)
    state = _reference_state_dict(checkpoint, path)
    heads = sorted(int(m.group(1)) for key in state if (m := _CENTER_KEY.match(key)))
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return {
        "epoch": int(epoch) if isinstance(epoch, int) else None,
        "assignments": [
            state[f"assign_labels_{i}"] for i in heads if f"assign_labels_{i}" in state
        ],
        "counts": [state[f"counter_{i}"] for i in heads if f"counter_{i}" in state],
        "duals": [state[f"ldual_{i}"] for i in heads if f"ldual_{i}" in state],
    }


def _torch_load(path: str | os.PathLike, weights_only: bool) -> Any:
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {os.fspath(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        hint = (
            " It holds objects that weights_only=True refuses; if you trust the file, pass "
            "weights_only=False."
            if weights_only
            else ""
        )
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {error}.{hint}") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {error}") from error


def _reference_state_dict(checkpoint: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{os.fspath(path)!r} holds no state_dict")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        names = sorted(map(str, not_tensors))
        raise ValueError(f"state_dict entries that are not tensors: {names}")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _load_reference_state_dict(
    path: str | os.PathLike, weights_only: bool
) -> dict[str, torch.Tensor]:
    return _reference_state_dict(_torch_load(path, weights_only), path)
