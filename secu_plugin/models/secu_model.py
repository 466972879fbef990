"""The published SeCu model: backbone, projection head, optional predictor and cluster centers.

:class:`SeCuModel` is what a trained SeCu network becomes once training is over: everything
that maps an image to a cluster, and nothing of the training state (assignment memory,
cluster counts, dual variables), which stays in :class:`secu_plugin.core.bank.SeCuCenterBank`.
It saves to and loads from the Hugging Face Hub through ``PyTorchModelHubMixin``
(``config.json`` + ``model.safetensors`` + a ``README.md`` model card), and imports the
checkpoints of the paper's official code (https://github.com/idstcv/SeCu) with
:meth:`SeCuModel.from_reference_checkpoint`.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from PIL import Image
from torch import nn

from secu_plugin.models.backbones import create_backbone
from secu_plugin.models.card import check_results

DEFAULT_NUM_CLUSTERS: tuple[int, ...] = tuple(range(10, 101, 10))
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)
# Grey images: the average of ImageNet's channel statistics.
IMAGENET_GREY_MEAN: tuple[float, ...] = (0.449,)
IMAGENET_GREY_STD: tuple[float, ...] = (0.226,)

CONFIG_FILE = constants.CONFIG_NAME  # "config.json"
WEIGHTS_FILE = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"
MODEL_CARD_FILE = "README.md"

# Input sizes of the paper's networks, used by from_reference_checkpoint when none is given.
REFERENCE_INPUT_SIZES: dict[str | None, int] = {"cifar": 32, "stl": 96, None: 224}
# Keys of the official checkpoints that hold training state, not model weights.
_TRAINING_STATE_KEY = re.compile(r"^(assign_labels|counter|ldual)_(\d+)$")
_CENTER_KEY = re.compile(r"^center_(\d+)$")


class PretrainedModelNotFoundError(FileNotFoundError):
    """A model given to :meth:`SeCuModel.from_pretrained` could not be found or downloaded.

    The message says what was tried and how to fix it; the library error that caused it is
    chained as ``__cause__``.

    Examples:
        >>> error = PretrainedModelNotFoundError("no model at 'org/name'")
        >>> isinstance(error, FileNotFoundError), str(error)
        (True, "no model at 'org/name'")
    """


def build_projection_head(
    in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, batchnorm: bool = True
) -> nn.Sequential:
    """The SeCu projection MLP, with the layer indices of the paper's code.

    - 2 layers (CIFAR/STL): Linear(in, hidden)-BN-ReLU-Linear(hidden, out).
    - 3 layers (ImageNet): Linear(in, hidden)-BN-ReLU-Linear(hidden, hidden)-BN-ReLU-
      Linear(hidden, out)-BN(out).

    ``batchnorm=False`` leaves the BatchNorm layers out (identity in their place, so the layer
    indices stay those of the paper's code): a network whose output does not depend on how a
    batch is split over processes.

    Examples:
        >>> head = build_projection_head(512, 512, 128)
        >>> head(torch.randn(4, 512)).shape
        torch.Size([4, 128])
        >>> len(build_projection_head(64, 32, 16, num_layers=3))
        8
    """
    if num_layers not in (2, 3):
        raise ValueError(f"projection_layers must be 2 or 3, got {num_layers}")
    for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
        if value < 1:
            raise ValueError(f"projection head {name} must be positive, got {value}")
    def norm(width: int) -> nn.Module:
        return nn.BatchNorm1d(width) if batchnorm else nn.Identity()

    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), norm(hidden_dim), nn.ReLU(inplace=True)]
    if num_layers == 3:
        layers += [nn.Linear(hidden_dim, hidden_dim), norm(hidden_dim), nn.ReLU(inplace=True)]
        layers += [nn.Linear(hidden_dim, out_dim), norm(out_dim)]
    else:
        layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


def build_predictor(dim: int, hidden_dim: int) -> nn.Sequential:
    """The SeCu ImageNet predictor: Linear(dim, hidden)-BN-ReLU-Linear(hidden, dim).

    Examples:
        >>> build_predictor(128, 2048)(torch.randn(2, 128)).shape
        torch.Size([2, 128])
    """
    if dim < 1 or hidden_dim < 1:
        raise ValueError(f"predictor dims must be positive, got dim={dim}, hidden_dim={hidden_dim}")
    return nn.Sequential(
        nn.Linear(dim, hidden_dim),
        nn.BatchNorm1d(hidden_dim),
        nn.ReLU(inplace=True),
        nn.Linear(hidden_dim, dim),
    )


def _check_json_dict(name: str, value: dict | None) -> dict | None:
    """A deep copy of ``value`` after checking that it survives a JSON round trip unchanged."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict or None, not {type(value).__name__}")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must hold only JSON values (str, int, float, bool, None, list, dict with "
            f"str keys; no NaN): {error}"
        ) from error
    decoded = json.loads(encoded)
    if decoded != value:
        raise ValueError(
            f"{name} does not survive a JSON round trip (tuples or non-str keys?): "
            f"{value!r} becomes {decoded!r}; use lists and str keys"
        )
    return decoded


def _float_list(name: str, values: Sequence[float], length: int) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"{name} must be a list of {length} floats, got {values!r}")
    floats = [float(v) for v in values]
    if len(floats) != length:
        raise ValueError(f"{name} must have {length} values (one per channel), got {len(floats)}")
    if not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be finite, got {floats}")
    return floats


class SeCuModel(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="secu-plugin",
    license="apache-2.0",
    pipeline_tag="image-feature-extraction",
    tags=["secu", "deep-clustering", "image-clustering", "self-supervised", "timm"],
    repo_url="https://github.com/idstcv/SeCu",
):
    """A trained SeCu clustering network: images → projections → cluster ids of each head.

    Every argument is a plain JSON value, written to ``config.json`` by ``save_pretrained``
    and read back by ``from_pretrained``.

    Args:
        backbone: A timm model name, built by :func:`secu_plugin.models.backbones.create_backbone`.
        backbone_kwargs: Extra timm ``create_model`` arguments (JSON values only).
        stem: ``None`` (timm's stem), ``"cifar"`` or ``"stl"`` (the paper's small-image stems).
        in_chans: Input channels: 1 (grey) or 3 (RGB) for PIL inputs.
        dim: Dimension of the projection and of the centers.
        projection_layers: 2 (CIFAR/STL head) or 3 (ImageNet head, ends with BatchNorm).
        projection_batchnorm: BatchNorm in the projection head (the paper's); False drops it.
        projection_hidden_dim: Hidden width of the projection head; ``None``: the backbone's
            feature dimension, as in the paper.
        predictor_hidden_dim: Hidden width of the predictor (ImageNet: 2048); ``None``: no
            predictor.
        num_clusters: Number of clusters of each head (default 10, 20, ..., 100).
        temperature: Temperature of the softmax over center similarities in :meth:`predict`.
        input_size: Side of the square images fed to the backbone (PIL inputs are resized and
            center cropped to it).
        mean: Normalization mean, one value per channel; ``None``: ImageNet's (for grey
            inputs the average of its channels, 0.449).
        std: Normalization std, one value per channel; ``None``: ImageNet's (grey: 0.226).
        results: Measured evaluation results, rendered in the model card (format: see
            :mod:`secu_plugin.models.card`; checked here); ``None``: not evaluated.
        training: The training recipe (command, data, epochs, ...), rendered in the card.

    Attributes:
        backbone: The timm feature extractor (``num_features`` wide).
        projection_head: The projection MLP.
        predictor: The predictor MLP, or None.
        centers: ``nn.ParameterList``; head i has shape (num_clusters[i], dim) (raw: the model
            normalizes them when it predicts).
        results: The ``results`` argument.
        training_recipe: The ``training`` argument (``self.training`` is nn.Module's flag).

    Examples:
        >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, input_size=28,
        ...                   mean=[0.1307], std=[0.3081], num_clusters=[10, 20])
        >>> model(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 128])
        >>> cluster_ids, confidence = model.predict(torch.randn(3, 1, 28, 28), head=1)
        >>> cluster_ids.shape, cluster_ids.dtype, int(cluster_ids.max()) < 20
        (torch.Size([3]), torch.int64, True)
        >>> model.head_index(20)
        1
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        backbone_kwargs: dict | None = None,
        stem: str | None = None,
        in_chans: int = 3,
        dim: int = 128,
        projection_layers: int = 2,
        projection_batchnorm: bool = True,
        projection_hidden_dim: int | None = None,
        predictor_hidden_dim: int | None = None,
        num_clusters: list[int] | None = None,
        temperature: float = 0.05,
        input_size: int = 224,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        results: dict | None = None,
        training: dict | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, str) or not backbone:
            raise ValueError(f"backbone must be a timm model name, got {backbone!r}")
        backbone_kwargs = _check_json_dict("backbone_kwargs", backbone_kwargs)
        for name, value in (("in_chans", in_chans), ("dim", dim), ("input_size", input_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_clusters is None:
            num_clusters = list(DEFAULT_NUM_CLUSTERS)
        if (
            not isinstance(num_clusters, Sequence)
            or not num_clusters
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in num_clusters)
        ):
            raise ValueError(
                f"num_clusters must be a list of ints >= 2 (one per head), got {num_clusters!r}"
            )
        num_clusters = list(num_clusters)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        if mean is None:
            mean = list(IMAGENET_GREY_MEAN if in_chans == 1 else IMAGENET_MEAN[:in_chans])
        if std is None:
            std = list(IMAGENET_GREY_STD if in_chans == 1 else IMAGENET_STD[:in_chans])
        mean = _float_list("mean", mean, in_chans)
        std = _float_list("std", std, in_chans)
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        results = _check_json_dict("results", results)
        training = _check_json_dict("training", training)
        check_results(results)

        self.backbone = create_backbone(
            backbone, stem=stem, in_chans=in_chans, **(backbone_kwargs or {})
        )
        feature_dim = int(self.backbone.num_features)
        hidden = feature_dim if projection_hidden_dim is None else projection_hidden_dim
        self.projection_head = build_projection_head(
            feature_dim, hidden, dim, projection_layers, batchnorm=bool(projection_batchnorm)
        )
        self.predictor = (
            None if predictor_hidden_dim is None else build_predictor(dim, predictor_hidden_dim)
        )
        self.centers = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(k, dim), dim=1)) for k in num_clusters]
        )

        self.feature_dim = feature_dim
        self.dim = dim
        self.in_chans = in_chans
        self.num_clusters = num_clusters
        self.temperature = float(temperature)
        self.input_size = input_size
        self.mean = mean
        self.std = std
        self.results = results
        self.training_recipe = training
        self._preprocess_transform: Any = None
        self._card_repo_id: str | None = None
        # The exact arguments, written to config.json. Set here rather than left to the mixin,
        # which silently drops values it cannot serialize; None defaults are resolved.
        self._hub_mixin_config = {
            "backbone": backbone,
            "backbone_kwargs": backbone_kwargs,
            "stem": stem,
            "in_chans": in_chans,
            "dim": dim,
            "projection_layers": projection_layers,
            "projection_batchnorm": bool(projection_batchnorm),
            "projection_hidden_dim": projection_hidden_dim,
            "predictor_hidden_dim": predictor_hidden_dim,
            "num_clusters": list(num_clusters),
            "temperature": float(temperature),
            "input_size": input_size,
            "mean": list(mean),
            "std": list(std),
            "results": results,
            "training": training,
        }

    # ------------------------------------------------------------------ properties

    @property
    def config(self) -> dict[str, Any]:
        """A copy of the constructor arguments, as written to ``config.json``."""
        return copy.deepcopy(self._hub_mixin_config)

    @property
    def num_heads(self) -> int:
        """Number of clustering heads."""
        return len(self.num_clusters)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def head_index(self, num_clusters: int) -> int:
        """The index of the first head with ``num_clusters`` clusters.

        Raises:
            ValueError: No head has that many clusters (the message lists the heads).
        """
        if num_clusters in self.num_clusters:
            return self.num_clusters.index(num_clusters)
        raise ValueError(
            f"no head has {num_clusters} clusters; this model's heads have {self.num_clusters}"
        )

    # ------------------------------------------------------------------ inputs

    def preprocess(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL images (any size, any mode) → a normalized (B, in_chans, size, size) batch.

        Each image is converted to grey ("L", ``in_chans=1``) or "RGB" (``in_chans=3``),
        its short side resized to ``input_size``, center cropped and normalized with
        ``mean``/``std`` (:func:`secu_plugin.data.eval_transform`).
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
            from secu_plugin.data.images import eval_transform

            self._preprocess_transform = eval_transform(
                self.input_size, self.mean, self.std, channels=self.in_chans
            )
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

    # ------------------------------------------------------------------ forward

    def embed(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Backbone features (B, feature_dim) of a tensor batch or of PIL images."""
        return self.backbone(self._as_batch(images))

    def forward(self, images: torch.Tensor | Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """Projections (B, dim), not normalized, of a tensor batch or of PIL images."""
        return self.projection_head(self.embed(images))

    def cluster_probabilities(self, z: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Softmax over head ``head``'s normalized centers of cos(z, center) / temperature."""
        self._check_head(head)
        centers = F.normalize(self.centers[head], dim=1)
        logits = F.normalize(z.to(centers.dtype), dim=1) @ centers.T / self.temperature
        return logits.softmax(dim=1)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor | Image.Image | Sequence[Image.Image], head: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster ids and confidences of a batch, in eval mode and without gradients.

        The projection (not the predictor, which only serves training) is compared with the
        head's centers.

        Args:
            images: A (B, C, H, W) tensor, already normalized, or PIL images (preprocessed).
            head: Index of the head (see :meth:`head_index` to find it from its K).

        Returns:
            ``(cluster_ids, confidence)``: int64 (B,) and float (B,), the largest softmax
            probability (see :meth:`cluster_probabilities`).
        """
        self._check_head(head)
        was_training = self.training
        self.eval()
        try:
            probabilities = self.cluster_probabilities(self(images), head)
        finally:
            self.train(was_training)
        confidence, cluster_ids = probabilities.max(dim=1)
        return cluster_ids.long(), confidence

    def _check_head(self, head: int) -> None:
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.num_heads:
            raise ValueError(
                f"head must be an index in [0, {self.num_heads}) (heads have "
                f"{self.num_clusters} clusters), got {head!r}"
            )

    def set_results(self, results: dict | None) -> None:
        """Records measured evaluation results (rendered in the card, written to config.json).

        Checked like the ``results`` argument; on a ValueError nothing changes.

        Examples:
            >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, input_size=28,
            ...                   num_clusters=[10])
            >>> model.set_results({"dataset": "MNIST-5k", "split": "train", "num_clusters": 10,
            ...                    "accuracy": 0.9, "nmi": 0.8, "ari": 0.7})
            >>> model.config["results"]["accuracy"]
            0.9
        """
        results = _check_json_dict("results", results)
        check_results(results)
        self.results = results
        self._hub_mixin_config["results"] = copy.deepcopy(results)

    @torch.no_grad()
    def set_centers(self, centers: Sequence[torch.Tensor]) -> None:
        """Copies trained centers in, e.g. ``model.set_centers(bank.centers)`` before saving.

        Args:
            centers: One (num_clusters[i], dim) tensor per head, raw or normalized.

        Raises:
            ValueError: Wrong number of heads, a wrong shape or non-finite values; the model is
                left unchanged.
        """
        centers = list(centers)
        if len(centers) != self.num_heads:
            raise ValueError(f"expected centers for {self.num_heads} heads, got {len(centers)}")
        for head, (new, current) in enumerate(zip(centers, self.centers)):
            shape = tuple(new.shape) if isinstance(new, torch.Tensor) else type(new).__name__
            if shape != tuple(current.shape):
                raise ValueError(
                    f"centers[{head}] must be a tensor of shape {tuple(current.shape)}, got {shape}"
                )
            if not torch.isfinite(new).all():
                raise ValueError(f"centers[{head}] holds NaN or infinite values")
        for new, current in zip(centers, self.centers):
            current.copy_(new.detach().to(device=current.device, dtype=current.dtype))

    # ------------------------------------------------------------------ saving

    def _save_pretrained(self, save_directory: Path) -> None:
        """Writes ``model.safetensors`` and the model card (the mixin writes config.json)."""
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / WEIGHTS_FILE))
        card = self._render_card(self._card_repo_id)
        (Path(save_directory) / MODEL_CARD_FILE).write_text(card, encoding="utf-8")

    def _render_card(self, repo_id: str | None) -> str:
        from secu_plugin.models.card import render_model_card

        return render_model_card(self.config, self.results, self.training_recipe, repo_id)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card rendered from ``model_cards/template.md`` (not the mixin's default)."""
        return ModelCard(self._render_card(kwargs.get("repo_id", self._card_repo_id)))

    def save_pretrained(
        self, save_directory: str | Path, *, repo_id: str | None = None, **kwargs: Any
    ) -> str | None:
        """Writes config.json, model.safetensors and README.md (the model card) to a folder.

        ``repo_id``, when given, is the Hub name used in the card's usage snippet (and the
        repository pushed to with ``push_to_hub=True``). An existing README.md is replaced.
        """
        previous = self._card_repo_id
        if repo_id is not None:
            self._card_repo_id = repo_id
        try:
            return super().save_pretrained(save_directory, repo_id=repo_id, **kwargs)
        finally:
            self._card_repo_id = previous

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Uploads config.json, model.safetensors and the model card to a Hub repository."""
        previous = self._card_repo_id
        self._card_repo_id = repo_id
        try:
            return super().push_to_hub(repo_id, **kwargs)
        finally:
            self._card_repo_id = previous

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> SeCuModel:
        """Loads a model saved with :meth:`save_pretrained`: a local folder or a Hub repo id.

        Args:
            pretrained_model_name_or_path: A folder holding config.json and model.safetensors,
                or a Hub repository id ("org/name"), downloaded or read from the HF cache.
            force_download, token, cache_dir, local_files_only, revision: As in
                ``huggingface_hub.hf_hub_download``.
            map_location: Device the weights are loaded to.
            strict: Require the weights to match the model exactly.
            **model_kwargs: Constructor arguments that override config.json.

        Returns:
            The model, in eval mode.

        Raises:
            PretrainedModelNotFoundError: The folder or repository cannot be found, or cannot
                be downloaded (offline, no access); the message says how to fix it.
            ValueError: The name is neither a folder nor a valid repo id, or the files do not
                describe a SeCuModel.
        """
        model_id = os.fspath(pretrained_model_name_or_path)
        if model_id.startswith("~"):
            model_id = os.path.expanduser(model_id)
        if os.path.isdir(model_id):
            config_file, weights_file = _local_model_files(model_id)
        else:
            download: dict[str, Any] = {
                "repo_id": model_id,
                "revision": revision,
                "cache_dir": cache_dir,
                "force_download": force_download,
                "token": token,
                "local_files_only": local_files_only,
            }
            try:
                config_file = hf_hub_download(filename=CONFIG_FILE, **download)
                weights_file = hf_hub_download(filename=WEIGHTS_FILE, **download)
            except Exception as error:
                clear_error = _hub_error_with_fix(error, model_id, revision)
                if clear_error is None:
                    raise
                raise clear_error from error
        config = _read_config(config_file, cls)
        config.update(model_kwargs)
        model = cls(**config)
        _load_weights(model, weights_file, map_location, strict)
        model.eval()
        return model

    @classmethod
    def from_reference_checkpoint(
        cls,
        path: str | os.PathLike,
        backbone: str = "resnet18",
        stem: str | None = "cifar",
        num_clusters: list[int] | None = None,
        weights_only: bool = True,
        **model_kwargs: Any,
    ) -> SeCuModel:
        """Imports a checkpoint written by the paper's official code (github.com/idstcv/SeCu).

        The checkpoint is the ``.pth.tar`` dict the official ``main.py`` / ``main_imagenet.py``
        save: ``state_dict`` keys prefixed ``module.``; ``encoder.*`` a ResNet in torchvision
        naming (the CIFAR/STL networks call the residual projection ``shortcut``, mapped to
        timm's ``downsample``), ``encoder.fc.*`` the projection MLP (2 or 3 layers),
        ``predictor.*`` (ImageNet), ``center_{i}`` of shape (dim, K_i). The training state
        (``assign_labels_{i}``, ``counter_{i}``, ``ldual_{i}``) is not part of the model: see
        :func:`load_reference_training_state`.

        ``dim``, ``num_clusters``, ``in_chans``, the projection layers and hidden width and
        the predictor are read from the checkpoint. Give ``mean``/``std`` of the data the
        model was trained on (the official code normalizes CIFAR-10 with
        [0.4914, 0.4822, 0.4465] / [0.2023, 0.1994, 0.2010], CIFAR-100 with
        [0.5071, 0.4867, 0.4408] / [0.2675, 0.2565, 0.2761], STL-10 and ImageNet with
        ImageNet's statistics, the default). ``input_size`` defaults to 32 (``stem="cifar"``),
        96 (``"stl"``) or 224 (``None``).

        Args:
            path: The checkpoint file.
            backbone: The timm name of the encoder (``resnet18`` for CIFAR/STL, ``resnet50``
                for ImageNet).
            stem: ``"cifar"``, ``"stl"`` or ``None`` (ImageNet).
            num_clusters: Expected clusters per head; checked against the checkpoint.
            weights_only: Load with ``torch.load(weights_only=True)`` (safe). Set False only
                for a checkpoint you trust that holds other Python objects.
            **model_kwargs: Other :class:`SeCuModel` arguments (``mean``, ``std``,
                ``input_size``, ``temperature``, ``backbone_kwargs``, ...).

        Raises:
            ValueError: The file is not such a checkpoint, has unknown or missing keys (listed),
                or disagrees with the arguments.
        """
        state = _load_reference_state_dict(path, weights_only)
        center_heads = sorted(
            int(match.group(1)) for key in state if (match := _CENTER_KEY.match(key))
        )
        if not center_heads:
            raise ValueError(f"{os.fspath(path)!r} has no center_<i> tensor: not a SeCu checkpoint")
        if center_heads != list(range(len(center_heads))):
            raise ValueError(f"center heads must be numbered 0..n-1, got {center_heads}")
        centers = [state[f"center_{i}"] for i in center_heads]
        if any(c.ndim != 2 for c in centers) or len({c.shape[0] for c in centers}) != 1:
            raise ValueError(
                "center_<i> must be (dim, K_i) matrices of one dim, got "
                f"{[tuple(c.shape) for c in centers]}"
            )
        dim = int(centers[0].shape[0])
        found_clusters = [int(c.shape[1]) for c in centers]
        if num_clusters is not None and list(num_clusters) != found_clusters:
            raise ValueError(
                f"num_clusters={list(num_clusters)}, but the checkpoint's heads have "
                f"{found_clusters}"
            )

        unknown = [
            key
            for key in state
            if not (
                key.startswith(("encoder.", "predictor."))
                or _CENTER_KEY.match(key)
                or _TRAINING_STATE_KEY.match(key)
            )
        ]
        if unknown:
            raise ValueError(f"unknown keys in the SeCu checkpoint: {sorted(unknown)}")

        fc_linear = sorted(
            int(key.split(".")[2])
            for key in state
            if re.fullmatch(r"encoder\.fc\.\d+\.weight", key) and state[key].ndim == 2
        )
        if fc_linear == [0, 3]:
            projection_layers = 2
        elif fc_linear == [0, 3, 6]:
            projection_layers = 3
        else:
            raise ValueError(
                "encoder.fc must be the SeCu projection MLP with Linear layers at indices 0, 3 "
                f"(2 layers) or 0, 3, 6 (3 layers), found Linear layers at {fc_linear}"
            )
        projection_hidden_dim = int(state["encoder.fc.0.weight"].shape[0])
        conv1 = state.get("encoder.conv1.weight")
        if conv1 is None or conv1.ndim != 4:
            raise ValueError("the encoder has no conv1.weight: not a ResNet checkpoint")
        predictor_weight = state.get("predictor.0.weight")
        inferred: dict[str, Any] = {
            "dim": dim,
            "num_clusters": found_clusters,
            "projection_layers": projection_layers,
            "projection_hidden_dim": projection_hidden_dim,
            "predictor_hidden_dim": (
                None if predictor_weight is None else int(predictor_weight.shape[0])
            ),
            "in_chans": int(conv1.shape[1]),
        }
        for key, value in inferred.items():
            if key in model_kwargs and model_kwargs[key] != value:
                raise ValueError(f"{key}={model_kwargs[key]!r} but the checkpoint has {value!r}")
        arguments: dict[str, Any] = {
            "input_size": REFERENCE_INPUT_SIZES.get(stem, 224),
            **model_kwargs,
            **inferred,
        }
        model = cls(backbone=backbone, stem=stem, **arguments)

        converted: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.startswith("encoder.fc."):
                converted["projection_head." + key[len("encoder.fc.") :]] = value
            elif key.startswith("encoder."):
                name = key[len("encoder.") :].replace(".shortcut.", ".downsample.")
                converted["backbone." + name] = value
            elif key.startswith("predictor."):
                converted[key] = value
        for head, center in enumerate(centers):
            converted[f"centers.{head}"] = center.t().contiguous()
        expected = model.state_dict()
        missing = sorted(set(expected) - set(converted))
        unexpected = sorted(set(converted) - set(expected))
        wrong_shape = sorted(
            f"{key}: checkpoint {tuple(converted[key].shape)}, model {tuple(expected[key].shape)}"
            for key in set(converted) & set(expected)
            if converted[key].shape != expected[key].shape
        )
        if missing or unexpected or wrong_shape:
            raise ValueError(
                f"the checkpoint does not match SeCuModel(backbone={backbone!r}, stem={stem!r}): "
                f"missing keys {missing}, unexpected keys {unexpected}, shape mismatches "
                f"{wrong_shape} (model key names; 'downsample' is the checkpoint's 'shortcut')"
            )
        model.load_state_dict(converted, strict=True)
        model.eval()
        return model


def load_reference_training_state(
    path: str | os.PathLike, weights_only: bool = True
) -> dict[str, Any]:
    """The training state of an official SeCu checkpoint (not part of :class:`SeCuModel`).

    Returns:
        ``{"epoch": int | None, "assignments": [...], "counts": [...], "duals": [...]}``, one
        tensor per head (``assign_labels_i``, ``counter_i``, ``ldual_i``; ``duals`` is empty
        for the entropy constraint).
    """
    checkpoint = _torch_load(path, weights_only)
    state = _reference_state_dict(checkpoint, path)
    heads = sorted(int(m.group(1)) for key in state if (m := _CENTER_KEY.match(key)))
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return {
        "epoch": int(epoch) if isinstance(epoch, int) else None,
        "assignments": [
            state[f"assign_labels_{i}"] for i in heads if f"assign_labels_{i}" in state
        ],
        "counts": [state[f"counter_{i}"] for i in heads if f"counter_{i}" in state],
        "duals": [state[f"ldual_{i}"] for i in heads if f"ldual_{i}" in state],
    }


# ---------------------------------------------------------------------- helpers


def _torch_load(path: str | os.PathLike, weights_only: bool) -> Any:
    import pickle

    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file {os.fspath(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as error:
        hint = (
            " It holds objects that weights_only=True refuses; if you trust the file, pass "
            "weights_only=False."
            if weights_only
            else ""
        )
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {error}.{hint}") from error
    except (RuntimeError, EOFError, OSError) as error:
        raise ValueError(f"cannot load checkpoint {os.fspath(path)!r}: {error}") from error


def _reference_state_dict(checkpoint: Any, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{os.fspath(path)!r} holds no state_dict")
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        names = sorted(map(str, not_tensors))
        raise ValueError(f"state_dict entries that are not tensors: {names}")
    if all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return state


def _load_reference_state_dict(
    path: str | os.PathLike, weights_only: bool
) -> dict[str, torch.Tensor]:
    return _reference_state_dict(_torch_load(path, weights_only), path)


def _local_model_files(directory: str) -> tuple[str, str]:
    missing = [
        name
        for name in (CONFIG_FILE, WEIGHTS_FILE)
        if not os.path.isfile(os.path.join(directory, name))
    ]
    if missing:
        raise PretrainedModelNotFoundError(
            f"directory {directory!r} is not a saved SeCuModel: it has no "
            f"{' and no '.join(missing)}. "
            "Save a model there with SeCuModel.save_pretrained(directory), or pass a Hub repo id."
        )
    return os.path.join(directory, CONFIG_FILE), os.path.join(directory, WEIGHTS_FILE)


def _hub_error_with_fix(error: Exception, model_id: str, revision: str | None) -> Exception | None:
    """An error that says how to fix a huggingface_hub download error, or None to re-raise it."""
    local_hint = "or pass the path of a local directory written by SeCuModel.save_pretrained"
    login_hint = "log in with `hf auth login` (or `huggingface-cli login`) or pass token=..."
    download_hint = f"`hf download {model_id}` (or `huggingface-cli download {model_id}`)"
    if isinstance(error, HFValidationError):
        return ValueError(
            f"{model_id!r} is neither an existing local directory nor a valid Hugging Face Hub "
            f"repo id ('org/name'): {str(error).rstrip('.')}. Check the path, {local_hint}."
        )
    if isinstance(error, GatedRepoError):
        return PretrainedModelNotFoundError(
            f"the Hub repository {model_id!r} is gated: request access on its page, then "
            f"{login_hint}."
        )
    if isinstance(error, RepositoryNotFoundError):
        return PretrainedModelNotFoundError(
            f"no model repository {model_id!r} on the Hugging Face Hub: check the id; for a "
            f"private repository {login_hint}; {local_hint}."
        )
    if isinstance(error, RevisionNotFoundError):
        return PretrainedModelNotFoundError(
            f"the repository {model_id!r} has no revision {revision!r}: check the branch, tag "
            "or commit."
        )
    if isinstance(error, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
        return PretrainedModelNotFoundError(
            f"cannot load {model_id!r}: it is not in the local Hugging Face cache and the Hub "
            "cannot be reached (offline mode HF_HUB_OFFLINE=1, local_files_only=True, or no "
            f"network). Check the repo id; download the model first while online with "
            f"{download_hint}, {local_hint}."
        )
    if isinstance(error, EntryNotFoundError):
        return PretrainedModelNotFoundError(
            f"the repository {model_id!r} has no {CONFIG_FILE} or {WEIGHTS_FILE}: it was not "
            "written by SeCuModel.save_pretrained / push_to_hub. Check the repo id."
        )
    if isinstance(error, HfHubHTTPError):
        return PretrainedModelNotFoundError(
            f"cannot download {model_id!r} from the Hugging Face Hub: {error}. Check the repo "
            f"id and your access ({login_hint}), {local_hint}."
        )
    if isinstance(error, (ConnectionError, TimeoutError)):
        return PretrainedModelNotFoundError(
            f"cannot reach the Hugging Face Hub to download {model_id!r}: {error}. Download it "
            f"while online with {download_hint}, {local_hint}."
        )
    return None


def _read_config(config_file: str, cls: type[SeCuModel]) -> dict[str, Any]:
    try:
        with open(config_file, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot read the model config {config_file!r}: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"the model config {config_file!r} is not a JSON object")
    known = set(cls._hub_mixin_init_parameters) - {"self"}
    unknown = sorted(set(config) - known)
    if unknown:
        warnings.warn(
            f"ignoring unknown keys {unknown} in {config_file!r} (written by a newer version?)",
            stacklevel=3,
        )
    return {key: value for key, value in config.items() if key in known}


def _load_weights(
    model: SeCuModel, weights_file: str, map_location: str | torch.device, strict: bool
) -> None:
    from safetensors.torch import load_file

    try:
        state = load_file(weights_file, device=str(map_location))
    except Exception as error:  # safetensors raises its own SafetensorError
        raise ValueError(f"cannot read the weights {weights_file!r}: {error}") from error
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        key for key in set(state) & set(expected) if state[key].shape != expected[key].shape
    )
    if wrong_shape or (strict and (missing or unexpected)):
        raise ValueError(
            f"the weights in {weights_file!r} do not match the model built from its config: "
            f"missing {missing}, unexpected {unexpected}, wrong shapes {wrong_shape}"
        )
    model.load_state_dict(state, strict=strict)
    model.to(map_location)
