"""Fine-tuning a trained frozen-head model by self-labeling, cheaply enough for a CPU.

A model from ``recipes/train_head.py`` clusters with a frozen backbone. Fine-tuning its last
stages on its own most confident assignments (SCAN's self-labeling step, with SeCu's centers
kept fixed as the classifier) can move the features towards its clusters. Three pieces:

- :class:`StagedBackbone`: a timm EfficientNet-family backbone cut after ``blocks[split - 1]``:
  the *trunk* (stem and first stages, frozen) and the *tail* (last stages, head convolution,
  pooling, trained). The trunk's output of every view is computed once and cached, so an
  epoch runs only the tail (a few seconds for 5,000 images on 2 cores, against minutes for
  the whole network).
- the targets and the loss: per head and cluster, the images the model is most sure of, and
  the cross-entropy against them (:func:`secu_plugin.frozen.self_labeling.confident_targets`
  and :func:`~secu_plugin.frozen.self_labeling.self_label_loss`, shared with the frozen heads).
- the label-free criterion that keeps or restores the start: how often an image's cluster is
  the cluster of its nearest neighbours in the *starting* backbone's feature space (a fixed
  graph that the fine-tuning cannot move), :func:`secu_plugin.model_selection.neighbor_agreement`,
  the same share that scores a head's K.
"""

from __future__ import annotations

import torch
from torch import nn

# The recipe's loss and criterion, computed where the frozen heads and the K selection do.
from secu_plugin.frozen.self_labeling import self_label_loss
from secu_plugin.model_selection import neighbor_agreement

__all__ = ["FlatTrunk", "StagedBackbone", "neighbor_agreement", "self_label_loss"]


class StagedBackbone(nn.Module):
    """A timm EfficientNet-family backbone as a frozen trunk and a trainable tail.

    ``tail(trunk(x))`` equals ``backbone(x)``; both share the backbone's modules (training the
    tail trains the backbone in place).

    Examples:
        >>> import timm
        >>> backbone = timm.create_model("test_efficientnet", num_classes=0).eval()
        >>> staged = StagedBackbone(backbone, trainable_stages=1)
        >>> x = torch.randn(2, 3, 32, 32)
        >>> torch.allclose(staged.tail(staged.trunk(x)), backbone(x), atol=1e-5)
        True
        >>> sum(p.requires_grad for p in staged.trunk_modules.parameters())
        0
    """

    def __init__(self, backbone: nn.Module, trainable_stages: int = 2) -> None:
        super().__init__()
        needed = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "forward_head")
        if not all(hasattr(backbone, name) for name in needed):
            raise ValueError(
                f"fine-tuning the last stages needs a timm EfficientNet-family backbone "
                f"(conv_stem, blocks, conv_head), got {type(backbone).__name__}"
            )
        stages = len(backbone.blocks)
        if isinstance(trainable_stages, bool) or not 1 <= trainable_stages <= stages:
            raise ValueError(
                f"trainable_stages must be in [1, {stages}] for this backbone, got "
                f"{trainable_stages!r}"
            )
        self.backbone = backbone
        self.split = stages - trainable_stages
        self.trunk_modules = nn.ModuleList(
            [backbone.conv_stem, backbone.bn1, *backbone.blocks[: self.split]]
        )
        self.tail_modules = nn.ModuleList(
            [*backbone.blocks[self.split :], backbone.conv_head, backbone.bn2]
        )
        self.trunk_modules.requires_grad_(False)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen stages' activations (B, C, H, W) of a batch of images."""
        for module in self.trunk_modules:
            images = module(images)
        return images

    def tail(self, activations: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (B, num_features) from the trunk's activations."""
        for module in self.tail_modules:
            activations = module(activations)
        return self.backbone.forward_head(activations)


class FlatTrunk(nn.Module):
    """The trunk with flattened output: what a :class:`~secu_plugin.data.FeatureCache` stores
    (``num_features`` is its width, for the cache's shape).

    Examples:
        >>> import timm
        >>> staged = StagedBackbone(timm.create_model("test_efficientnet", num_classes=0), 1)
        >>> shape = tuple(staged.trunk(torch.zeros(1, 3, 32, 32)).shape[1:])
        >>> trunk = FlatTrunk(staged, shape)
        >>> trunk(torch.zeros(2, 3, 32, 32)).shape[1] == trunk.num_features
        True
    """

    def __init__(self, staged: StagedBackbone, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.staged = staged
        self.num_features = shape[0] * shape[1] * shape[2]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.staged.trunk(images).flatten(1)
