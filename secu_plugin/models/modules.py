"""Modules trained elsewhere (a timm backbone, a lightly projection head, lightly's SwaV
prototypes or a SeCu center bank) as the parts of a :class:`SeCuModel`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from secu_plugin.models.network import SeCuNetwork


def backbone_architecture(backbone: nn.Module) -> str:
    """The timm architecture name of ``backbone`` (from its ``pretrained_cfg``): a SeCuModel
    rebuilds its backbone from that name."""
    config = getattr(backbone, "pretrained_cfg", None)
    if not isinstance(config, dict) or not config.get("architecture"):
        raise ValueError(
            f"the backbone ({type(backbone).__name__}) is not a timm model: a SeCuModel rebuilds "
            "its backbone from a timm name; create it with timm.create_model(name, num_classes=0)"
        )
    return str(config["architecture"])


def projection_layout(head: nn.Module) -> tuple[dict[str, Any], list[nn.Module]]:
    """The :func:`build_projection_head` arguments that reproduce ``head`` (a Sequential of
    Linear / BatchNorm1d / ReLU, ours or a lightly ``ProjectionHead`` such as
    ``SwaVProjectionHead``), and its Linear and BatchNorm layers in order.

    Examples:
        >>> from lightly.models.modules import SwaVProjectionHead
        >>> projection_layout(SwaVProjectionHead(64, 32, 16))[0]
        {'num_layers': 2, 'hidden_dim': 32, 'out_dim': 16, 'in_dim': 64, 'batchnorm': True}
    """
    layers = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    linears = [m for m in layers if isinstance(m, nn.Linear)]
    norms = [m for m in layers if isinstance(m, nn.BatchNorm1d)]
    if len(linears) not in (1, 2, 3):
        raise ValueError(f"the projection head must have 1 to 3 Linear layers, has {len(linears)}")
    batchnorm = bool(norms)
    # Ours: a BatchNorm after every hidden Linear (and after the last one with 3 layers).
    expected_norms = {1: 0, 2: 1, 3: 3}[len(linears)] if batchnorm else 0
    if len(norms) != expected_norms:
        raise ValueError(
            f"a {len(linears)}-layer projection head has {len(norms)} BatchNorm layers; "
            f"SeCu's has {expected_norms} (or none)"
        )
    layout = {
        "num_layers": len(linears),
        "hidden_dim": linears[0].out_features if len(linears) > 1 else linears[0].in_features,
        "out_dim": linears[-1].out_features,
        "in_dim": linears[0].in_features,
        "batchnorm": batchnorm,
    }
    return layout, layers


def copy_projection(source: list[nn.Module], target: nn.Module) -> None:
    """Copies Linear/BatchNorm layers in order into ``target``; a Linear without bias (lightly's,
    before a BatchNorm) gets a zero bias, which computes the same function."""
    target_layers = [m for m in target.modules() if isinstance(m, (nn.Linear, nn.BatchNorm1d))]
    if [type(m) for m in target_layers] != [type(m) for m in source]:
        raise ValueError("the projection head's layers do not match SeCu's layout")
    with torch.no_grad():
        for mine, theirs in zip(target_layers, source):
            state = dict(theirs.state_dict())
            if isinstance(mine, nn.Linear) and "bias" not in state:
                state["bias"] = torch.zeros(mine.out_features)
            mine.load_state_dict(state)


def centers_of(centers: Any) -> list[torch.Tensor]:
    """(K, dim) centers per head from a ``SeCuCenterBank``, lightly's ``SwaVPrototypes``
    (each head's prototype weights), or a list of tensors.

    Examples:
        >>> from lightly.models.modules import SwaVPrototypes
        >>> [c.shape for c in centers_of(SwaVPrototypes(16, n_prototypes=[10, 20]))]
        [torch.Size([10, 16]), torch.Size([20, 16])]
    """
    heads = getattr(centers, "heads", None)  # lightly's SwaVPrototypes
    if isinstance(heads, nn.ModuleList):
        return [head.weight.detach() for head in heads]
    if hasattr(centers, "centers") and isinstance(centers.centers, nn.ParameterList):
        return [c.detach() for c in centers.centers]
    if isinstance(centers, Sequence) and all(isinstance(c, torch.Tensor) for c in centers):
        return [c.detach() for c in centers]
    raise ValueError(
        "centers must be a SeCuCenterBank, lightly's SwaVPrototypes or a list of (K, dim) tensors"
    )


def model_from_modules(
    model_class: type,
    backbone: nn.Module,
    projection_head: nn.Module,
    centers: Any,
    in_chans: int = 3,
    **kwargs: Any,
):
    """:meth:`SeCuModel.from_modules`: the network rebuilt around ``backbone``'s architecture,
    its weights and the projection head's copied in, then ``model_class.from_network``."""
    layout, layers = projection_layout(projection_head)
    network_kwargs = {k: kwargs.pop(k) for k in ("input_size", "mean", "std") if k in kwargs}
    network = SeCuNetwork(
        backbone_architecture(backbone),
        in_chans=in_chans,
        dim=layout["out_dim"],
        projection_layers=layout["num_layers"],
        projection_batchnorm=layout["batchnorm"],
        projection_hidden_dim=layout["hidden_dim"],
        **network_kwargs,
    )
    network.backbone.load_state_dict(backbone.state_dict())
    if network.feature_dim != layout["in_dim"]:
        raise ValueError(
            f"the projection head takes {layout['in_dim']} features, the backbone gives "
            f"{network.feature_dim}"
        )
    copy_projection(layers, network.projection_head)
    return model_class.from_network(network, centers_of(centers), **kwargs)
