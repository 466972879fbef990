"""Networks: timm backbones (the paper's small-image networks registered as timm names with
their ``pretrained_cfg``), projection heads, :class:`SeCuNetwork` (what is trained) and
:class:`SeCuModel` (what is published: the network and the trained centers, on the Hub)."""

from secu_plugin.models.backbones import create_backbone
from secu_plugin.models.heads import build_predictor, build_projection_head
from secu_plugin.models.hub import PretrainedModelNotFoundError
from secu_plugin.models.network import SeCuNetwork
from secu_plugin.models.secu_model import SeCuModel

__all__ = [
    "PretrainedModelNotFoundError",
    "SeCuModel",
    "SeCuNetwork",
    "build_predictor",
    "build_projection_head",
    "create_backbone",
]
