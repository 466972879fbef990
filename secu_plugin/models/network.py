"""The network SeCu trains: a timm backbone, the projection head and the optional predictor.

It has no centers: while training, the center bank owns them; :class:`SeCuModel` adds them
once training is over. Its input size and normalization are those of the backbone's timm
``pretrained_cfg`` (``data_config``), optionally overridden.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from timm.data import resolve_model_data_config
from torch import nn

from secu_plugin.data.transforms import eval_transform, per_channel
from secu_plugin.models.backbones import create_backbone
from secu_plugin.models.heads import build_predictor, build_projection_head

# Architecture options a config may pass to timm. Nothing here can name a file or a URL
# (``pretrained``, ``pretrained_cfg``, ``checkpoint_path``, ... are refused): loading a model
# reads that model's own files and nothing else.
BACKBONE_KWARGS: frozenset[str] = frozenset(
    {
        "drop_rate",
        "drop_path_rate",
        "proj_drop_rate",
        "attn_drop_rate",
        "global_pool",
        "norm",
        "output_stride",
        "img_size",
        "patch_size",
        "class_token",
        "reg_tokens",
        "dynamic_img_size",
        "widths",
        "layers",
        "channels",
    }
)


# What the network does to each image before the backbone (see SeCuNetwork's input_norm).
INPUT_NORMS: tuple[str, ...] = ("none", "instance")


def check_backbone_kwargs(backbone_kwargs: dict | None) -> dict | None:
    """A copy of ``backbone_kwargs`` after checking every key against :data:`BACKBONE_KWARGS`
    and every value is a plain JSON scalar (or a list of them).

    Examples:
        >>> check_backbone_kwargs({"drop_rate": 0.1})
        {'drop_rate': 0.1}
        >>> check_backbone_kwargs({"checkpoint_path": "/etc/passwd"})
        Traceback (most recent call last):
        ...
        ValueError: backbone_kwargs key 'checkpoint_path' is not allowed (allowed: attn_drop_rate, ...
    """
    if backbone_kwargs is None:
        return None
    if not isinstance(backbone_kwargs, dict):
        raise ValueError(f"backbone_kwargs must be a dict, got {type(backbone_kwargs).__name__}")
    scalar = (str, int, float, bool, type(None))
    for key, value in backbone_kwargs.items():
        if key not in BACKBONE_KWARGS:
            raise ValueError(
                f"backbone_kwargs key {key!r} is not allowed (allowed: "
                f"{', '.join(sorted(BACKBONE_KWARGS))}); weights come from the model's own files"
            )
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, scalar) for v in values):
            raise ValueError(f"backbone_kwargs[{key!r}] must be a JSON scalar, got {value!r}")
    return json.loads(json.dumps(backbone_kwargs))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class SeCuNetwork(nn.Module):
    """Images → SeCu projections: a timm backbone, the projection MLP, an optional predictor.

    Args:
        backbone: A timm model name (``secu_resnet18_cifar``, ``resnet50``, ...).
        backbone_kwargs: Architecture options for timm (keys from :data:`BACKBONE_KWARGS`).
        in_chans: Input channels: 1 (grey) or 3 (RGB) for PIL inputs.
        dim: Dimension of the projection (and of the centers).
        projection_layers: 2 (CIFAR/STL head) or 3 (ImageNet head, ends with BatchNorm).
        projection_batchnorm: BatchNorm in the projection head (the paper's); False drops it.
        projection_hidden_dim: Hidden width of the projection; ``None``: the backbone's width.
        predictor_hidden_dim: Hidden width of the predictor (ImageNet: 2048); ``None``: none.
        input_size, mean, std: Overrides of the backbone's ``pretrained_cfg``; ``None``: the
            backbone's (the registered ``secu_*`` networks carry the paper's).
        input_norm: ``"instance"``: each image is standardised per channel before the
            backbone (its own mean and contrast taken away), for images whose colours carry
            nothing; ``"none"``: as given.

    Examples:
        >>> network = SeCuNetwork("secu_convnet_tiny", in_chans=1, dim=16)
        >>> network(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 16])
        >>> network.data_config["input_size"], network.data_config["mean"]
        ((1, 28, 28), (0.1307,))
        >>> SeCuNetwork("secu_resnet18_cifar", mean=[0.5]).config["mean"]
        [0.5, 0.5, 0.5]
        >>> standardised = SeCuNetwork("secu_convnet_tiny", in_chans=3, input_norm="instance")
        >>> x = torch.rand(2, 3, 28, 28)
        >>> _ = standardised.eval()
        >>> torch.allclose(standardised(x), standardised(3 * x + 0.5), atol=1e-4)
        True
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict | None = None,
        in_chans: int = 3,
        dim: int = 128,
        projection_layers: int = 2,
        projection_batchnorm: bool = True,
        projection_hidden_dim: int | None = None,
        predictor_hidden_dim: int | None = None,
        input_size: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        input_norm: str = "none",
    ) -> None:
        super().__init__()
        backbone_kwargs = check_backbone_kwargs(backbone_kwargs)
        in_chans, dim = _positive_int("in_chans", in_chans), _positive_int("dim", dim)
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"input_norm must be one of {INPUT_NORMS}, got {input_norm!r}")
        self.input_norm = (
            nn.InstanceNorm2d(in_chans, affine=False) if input_norm == "instance" else nn.Identity()
        )
        overlay: dict[str, Any] = {}
        if input_size is not None:
            size = _positive_int("input_size", input_size)
            overlay["input_size"] = (in_chans, size, size)
        for name, values in (("mean", mean), ("std", std)):
            if values is not None:
                overlay[name] = per_channel(name, values, in_chans, positive=name == "std")
        timm_kwargs = dict(backbone_kwargs or {})
        if overlay:
            timm_kwargs["pretrained_cfg_overlay"] = overlay
        self.backbone = create_backbone(backbone, in_chans=in_chans, **timm_kwargs)
        self.feature_dim = int(self.backbone.num_features)
        hidden = self.feature_dim if projection_hidden_dim is None else projection_hidden_dim
        self.projection_head = build_projection_head(
            self.feature_dim, hidden, dim, projection_layers, batchnorm=bool(projection_batchnorm)
        )
        self.predictor = (
            None if predictor_hidden_dim is None else build_predictor(dim, predictor_hidden_dim)
        )
        self.in_chans, self.dim = in_chans, dim
        self.data_config = self._resolve_data_config()
        self._preprocess_transform: Any = None
        self._network_config = {
            "backbone": backbone,
            "backbone_kwargs": backbone_kwargs,
            "in_chans": in_chans,
            "dim": dim,
            "projection_layers": projection_layers,
            "projection_batchnorm": bool(projection_batchnorm),
            "projection_hidden_dim": projection_hidden_dim,
            "predictor_hidden_dim": predictor_hidden_dim,
            # Resolved, so that a saved model keeps its preprocessing whatever timm's defaults.
            "input_size": int(self.data_config["input_size"][-1]),
            "mean": list(self.data_config["mean"]),
            "std": list(self.data_config["std"]),
            "input_norm": input_norm,
        }

    def _resolve_data_config(self) -> dict[str, Any]:
        config = dict(resolve_model_data_config(self.backbone))
        _, height, width = config["input_size"]
        config["input_size"] = (self.in_chans, height, width)
        for name in ("mean", "std"):
            config[name] = per_channel(name, config[name], self.in_chans, average_rgb=True)
        return config

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments (input size and normalization resolved), plain JSON."""
        return json.loads(json.dumps(self._network_config))

    def embed(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Backbone features (B, feature_dim) of a tensor batch or of PIL images."""
        return self.backbone(self.input_norm(self._as_batch(images)))

    def forward(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Projections (B, dim), not normalized, of a tensor batch or of PIL images."""
        return self.projection_head(self.embed(images))

    def preprocess(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any size, any mode) → a normalized (B, in_chans, size, size) batch,
        with timm's evaluation transform of :attr:`data_config`.

        Examples:
            >>> network = SeCuNetwork("secu_convnet_tiny", in_chans=1)
            >>> network.preprocess([Image.new("RGB", (40, 30))]).shape
            torch.Size([1, 1, 28, 28])
        """
        if isinstance(images, Image.Image):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("preprocess needs at least one image")
        for position, image in enumerate(images):
            if not isinstance(image, Image.Image):
                kind = type(image).__name__
                raise ValueError(f"images must be PIL images, item {position} is {kind}")
        if self.in_chans not in (1, 3):
            raise ValueError(
                f"PIL inputs need in_chans 1 or 3, this model has {self.in_chans}: pass tensors"
            )
        if self._preprocess_transform is None:
            self._preprocess_transform = eval_transform(self.data_config, self.in_chans)
        return torch.stack([self._preprocess_transform(image) for image in images])

    def _as_batch(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        if not isinstance(images, torch.Tensor):
            images = self.preprocess(images)
        if images.ndim != 4 or images.shape[1] != self.in_chans:
            raise ValueError(
                f"images must be a (batch, {self.in_chans}, height, width) tensor, "
                f"got shape {tuple(images.shape)}"
            )
        if not images.is_floating_point():
            raise ValueError(f"images must be a floating point tensor, got {images.dtype}")
        parameter = next(self.parameters())
        return images.to(device=parameter.device, dtype=parameter.dtype)
