"""The SeCu algorithm itself, on plain tensors: center bank, constrained assigners, loss.

Needs torch alone (``tests/test_architecture.py`` imports it in a fresh interpreter and checks
that no timm, huggingface_hub, accelerate, torchvision or lightly module gets loaded).
"""

from secu_plugin.core.assign import (
    ConstrainedAssigner,
    EntropyConstrainedAssigner,
    SizeConstrainedAssigner,
)
from secu_plugin.core.bank import SeCuCenterBank
from secu_plugin.core.layout import HeadLayout
from secu_plugin.core.loss import SeCuLoss, SeCuLossTerms

__all__ = [
    "ConstrainedAssigner",
    "EntropyConstrainedAssigner",
    "HeadLayout",
    "SeCuCenterBank",
    "SeCuLoss",
    "SeCuLossTerms",
    "SizeConstrainedAssigner",
]
