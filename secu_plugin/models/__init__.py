"""Networks: timm backbones (with the paper's small-image variants registered as timm names),
projection heads, :class:`SeCuModel` and its Hugging Face Hub support."""

from secu_plugin.models.secu_model import SeCuModel

__all__ = ["SeCuModel"]
