"""SeCu (Stable Cluster Discrimination, ICCV 2023) as a plugin for lightly, timm and the Hub.

The core (center bank, constrained assigners, loss) needs torch alone and is imported here;
the layers above it (``SeCuModel``, data, metrics) load on first use.
"""

from secu_plugin.core import (
    ConstrainedAssigner,
    EntropyConstrainedAssigner,
    SeCuCenterBank,
    SeCuLoss,
    SeCuLossTerms,
    SizeConstrainedAssigner,
)

__version__ = "0.1.0"

__all__ = [
    "ConstrainedAssigner",
    "EntropyConstrainedAssigner",
    "SeCuCenterBank",
    "SeCuLoss",
    "SeCuLossTerms",
    "SeCuModel",
    "SizeConstrainedAssigner",
]


def __getattr__(name: str):
    # SeCuModel pulls in timm and huggingface_hub: import it only when asked for.
    if name == "SeCuModel":
        from secu_plugin.models import SeCuModel

        return SeCuModel
    raise AttributeError(f"module 'secu_plugin' has no attribute {name!r}")
