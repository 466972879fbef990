"""Settings of SeCu heads trained on the cached features of a frozen pretrained backbone
(``recipes/train_head.py``). Numbers only, like :mod:`secu_plugin.train.presets`."""

from __future__ import annotations

from dataclasses import dataclass, field

from secu_plugin.train.presets import RunSettings


@dataclass(frozen=True)
class HeadPreset(RunSettings):
    """Every setting of a frozen-backbone run. ``--set name=value`` overrides any field.

    Examples:
        >>> from secu_plugin.train.presets import get_preset
        >>> preset = get_preset("frozen", HEAD_PRESETS)
        >>> preset.pairs, preset.num_clusters[:3]
        ('neighbors', [10, 20, 30])
        >>> get_preset("frozen", HEAD_PRESETS, epochs=3).epochs
        3
    """

    name: str
    data: str = "mnist5k"
    # the frozen backbone: any timm model with pretrained weights
    backbone: str = "vit_small_patch14_dinov2.lvd142m"
    input_size: int | None = None  # None: the backbone's pretrained_cfg
    # the feature cache
    cache_dtype: str = "float16"
    augmented_views: int = 0  # augmented views cached per image, besides the plain one
    min_scale: float = 0.5  # of the augmented views' random crops
    extract_batch_size: int = 64
    cache_chunk_size: int = 1024  # images per chunk: what an interrupted extraction redoes
    # pairs of the two-view loss: "neighbors" (an image and one of its k nearest neighbours
    # in the backbone's feature space) or "views" (two augmented views of the image)
    pairs: str = "neighbors"
    num_neighbors: int = 5
    # neighbours in the square-rooted, PCA-whitened feature space of this many dimensions
    # (0: plain cosine); the heads still see the plain features
    neighbor_whitening: int = 256
    # heads: projection MLP (1 = a single linear layer) and centers
    dim: int = 128
    projection_layers: int = 2
    projection_hidden_dim: int = 512
    projection_batchnorm: bool = True
    num_clusters: list[int] = field(default_factory=lambda: [10, 20, 30, 40, 50])
    # optimization, over the cache
    epochs: int = 30
    batch_size: int | None = None  # None: from the number of images (batch_size_for)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 3
    center_lr: float = 0.5
    # at the start of this epoch, every head's centers and memory are reset by spherical
    # k-means on the projections (the head has learnt for a few epochs); -1: never
    kmeans_epoch: int = 3
    # SeCu
    assigner: str = "size"
    dual_lr: float = 1.0
    lower_bound_ratio: float = 0.9
    alpha: float = 6000.0
    temperature_x: float = 0.1
    temperature_c: float = 0.2
    label_weight: float = 0.2
    num_workers: int = 0

    def check(self) -> None:
        """Refuses settings that cannot run, naming the setting."""
        if self.pairs not in ("neighbors", "views"):
            raise ValueError(f"pairs must be 'neighbors' or 'views', got {self.pairs!r}")
        if self.pairs == "views" and self.augmented_views < 2:
            raise ValueError(
                "pairs=views needs at least 2 augmented views per image: "
                "--set augmented_views=2 (or more)"
            )
        if self.num_neighbors < 1:
            raise ValueError(f"num_neighbors must be positive, got {self.num_neighbors}")


HEAD_PRESETS: dict[str, HeadPreset] = {
    # Any data set of a few thousand to a few hundred thousand images (measured on MNIST-5k
    # through EfficientNet-Lite0 and on sklearn's digits: docs/results.md).
    "frozen": HeadPreset(name="frozen"),
    # ImageNet-1k on a DINOv2 ViT-B/14 (not run here: no GPU, no download; see the README):
    # the heads, batch and schedule of TEMI/TURTLE-style heads on frozen features.
    "frozen-imagenet": HeadPreset(
        name="frozen-imagenet",
        data="imagenet-1k",
        backbone="vit_base_patch14_dinov2.lvd142m",  # its own 518 px input (fixed in timm)
        num_neighbors=20,
        dim=256,
        projection_hidden_dim=2048,
        num_clusters=list(range(1000, 10001, 1000)),
        epochs=100,
        batch_size=4096,
        lr=0.4,
        warmup_epochs=5,
        center_lr=1.0,
        dual_lr=20.0,
        lower_bound_ratio=0.4,
        alpha=1e5,
        extract_batch_size=256,
        num_workers=8,
    ),
}


def batch_size_for(num_images: int, largest: int = 256) -> int:
    """The batch of a frozen-feature run: the largest power of two up to ``largest`` that
    gives at least 16 steps per epoch (small sets need steps more than large batches:
    sklearn's 1797 digits reach ACC 0.915 with 64 and 0.669 with 256).

    Examples:
        >>> batch_size_for(5000), batch_size_for(1797), batch_size_for(100)
        (256, 64, 4)
    """
    batch = largest
    while batch > 2 and num_images // batch < 16:
        batch //= 2
    return batch
