"""Fine-tuning a trained frozen-head model by self-labeling, cheaply enough for a CPU.

A model from ``recipes/train_head.py`` clusters with a frozen backbone. Fine-tuning its last
stages on its own most confident assignments (SCAN's self-labeling step, with SeCu's centers
kept fixed as the classifier) can move the features towards its clusters. The pieces:

- :class:`StagedBackbone`: a timm EfficientNet-family backbone cut after ``blocks[split - 1]``:
  the *trunk* (stem and first stages, frozen) and the *tail* (last stages, head convolution,
  pooling, trained). The trunk's output of every view is computed once and cached, so an
  epoch runs only the tail (a few seconds for 5,000 images on 2 cores, against minutes for
  the whole network).
- the targets: per head and cluster, the images the model is most sure of
  and the cross-entropy against them
  (:func:`secu_plugin.frozen.self_labeling.confident_targets` and
  :func:`~secu_plugin.frozen.self_labeling.self_label_loss`, shared with the frozen heads).
- :func:`secu_plugin.k_signals.neighbor_agreement`: the label-free
  criterion that keeps or restores the start: how
  often an image's cluster is the cluster of its nearest neighbours in the *starting*
  backbone's feature space (a fixed graph that the fine-tuning cannot move); :class:`KeptState`
  keeps the state it prefers, the start included, through checkpoints.
- :class:`TailProjection`: the tail and the projection head, the module the recipe trains.

The settings and their presets: :mod:`secu_plugin.frozen.finetune_presets`.
"""

from __future__ import annotations

import torch
from torch import nn


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
        self.trunk_modules.requires_grad_(False)

    # Views of the backbone's modules, not registered twice: the state_dict holds each weight
    # once (a checkpoint in safetensors refuses tensors that share memory).
    @property
    def trunk_modules(self) -> nn.ModuleList:
        """The frozen modules: stem and first stages."""
        backbone = self.backbone
        return nn.ModuleList([backbone.conv_stem, backbone.bn1, *backbone.blocks[: self.split]])

    @property
    def tail_modules(self) -> nn.ModuleList:
        """The trained modules: the last stages and the head convolution."""
        backbone = self.backbone
        return nn.ModuleList([*backbone.blocks[self.split :], backbone.conv_head, backbone.bn2])

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


class TailProjection(nn.Module):
    """The trained part of a fine-tuned model as one module, from the trunk's activations to
    projections: the backbone's tail, then the projection head. What ``accelerator.prepare``
    wraps (on N processes, DDP averages its gradients) and a checkpoint saves (the whole
    backbone, trunk included, each weight once).

    Examples:
        >>> import timm
        >>> staged = StagedBackbone(timm.create_model("test_efficientnet", num_classes=0), 1)
        >>> tail = TailProjection(staged, nn.Linear(staged.backbone.num_features, 8))
        >>> tail(staged.trunk(torch.zeros(2, 3, 32, 32))).shape
        torch.Size([2, 8])
        >>> all(p.requires_grad for p in tail.trainable_parameters())
        True
    """

    def __init__(self, staged: StagedBackbone, projection_head: nn.Module) -> None:
        super().__init__()
        self.staged = staged
        self.projection_head = projection_head
        for parameter in self.trainable_parameters():
            parameter.requires_grad_(True)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The tail's parameters, then the projection head's (the trunk's stay frozen)."""
        tail = [p for module in self.staged.tail_modules for p in module.parameters()]
        return tail + list(self.projection_head.parameters())

    def forward(self, activations: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.staged.tail(activations))


class KeptState:
    """The epochs' label-free scores, the state the criterion prefers so far (the start
    included) and the generator that draws the batches and views: what a resumed run needs
    beyond the weights and the optimizer (``register_for_checkpointing`` takes it).

    A state is kept when its neighbour agreement beats the kept one's while its cluster sizes
    stay as balanced as the start's, less ``balance_tolerance`` (a collapsing head does not
    count); the first state considered, the start, is always kept.

    Examples:
        >>> kept = KeptState(seed=0)
        >>> start = {"epoch": 0, "neighbor_agreement": 0.5, "size_balance": 0.9}
        >>> kept.consider(start, {"w": torch.zeros(1)})
        >>> kept.consider({**start, "epoch": 1, "size_balance": 0.5, "neighbor_agreement": 0.7},
        ...               {"w": torch.ones(1)})
        >>> kept.consider({**start, "epoch": 2, "neighbor_agreement": 0.6}, {"w": torch.ones(1)})
        >>> kept.best["epoch"], [h["epoch"] for h in kept.history]
        (2, [0, 1, 2])
        >>> restored = KeptState(seed=1)
        >>> restored.load_state_dict(kept.state_dict())
        >>> restored.best["epoch"], torch.equal(restored.generator.get_state(),
        ...                                     kept.generator.get_state())
        (2, True)
    """

    def __init__(self, seed: int, balance_tolerance: float = 0.02) -> None:
        self.history: list[dict] = []
        self.best: dict | None = None
        self.generator = torch.Generator().manual_seed(seed)
        self.balance_tolerance = balance_tolerance

    def consider(self, scores: dict, state: dict[str, torch.Tensor]) -> None:
        """Adds an epoch's ``scores`` (``epoch``, ``neighbor_agreement``, ``size_balance``)
        to the history, and keeps a copy of the model's ``state`` where the criterion prefers
        it."""
        self.history.append(scores)
        if self.best is not None:
            balanced = scores["size_balance"] >= self.history[0]["size_balance"] - (
                self.balance_tolerance
            )
            if not (balanced and scores["neighbor_agreement"] > self.best["neighbor_agreement"]):
                return
        self.best = {**scores, "state": {k: v.detach().clone() for k, v in state.items()}}

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state["history"], state["best"]
        self.generator.set_state(state["generator"])
