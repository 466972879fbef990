"""The published SeCu model: a :class:`SeCuNetwork` plus the trained centers of every head.

:class:`SeCuModel` is what a trained SeCu network becomes once training is over: everything
that maps an image to a cluster, and nothing of the training state (assignment memory,
cluster counts, dual variables), which stays in :class:`secu_plugin.SeCuCenterBank`. It saves
to and loads from the Hugging Face Hub through ``PyTorchModelHubMixin`` and its hooks
(``config.json`` + ``model.safetensors`` + a ``README.md`` model card).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from huggingface_hub import ModelCard, PyTorchModelHubMixin, hf_hub_download
from PIL import Image
from torch import nn

from secu_plugin.core.bank import DEFAULT_NUM_CLUSTERS
from secu_plugin.core.nearest import center_probabilities, nearest_center
from secu_plugin.models import hub, reference
from secu_plugin.models.card import check_results, model_card
from secu_plugin.models.modules import model_from_modules
from secu_plugin.models.network import SeCuNetwork


def _json_dict(name: str, value: dict | None) -> dict | None:
    """A deep copy of ``value`` after checking that it survives a JSON round trip unchanged."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict or None, not {type(value).__name__}")
    try:
        decoded = json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must hold only JSON values (no NaN): {error}") from error
    if decoded != value:
        raise ValueError(f"{name} does not survive a JSON round trip (use lists and str keys)")
    return decoded


class SeCuModel(
    SeCuNetwork,
    PyTorchModelHubMixin,
    library_name="secu-plugin",
    license="apache-2.0",
    pipeline_tag="image-feature-extraction",
    tags=["secu", "deep-clustering", "image-clustering", "self-supervised", "timm"],
    repo_url="https://github.com/idstcv/SeCu",
):
    """A trained SeCu clustering model: images → projections → cluster ids of each head.

    Every argument is a plain JSON value, written to ``config.json`` by ``save_pretrained``
    and read back by ``from_pretrained``. The network arguments are :class:`SeCuNetwork`'s.

    Args:
        num_clusters: Number of clusters of each head (default 10, 20, ..., 100).
        temperature: Temperature of the confidence (softmax over center similarities).
        results: Measured evaluation results, rendered in the model card (format: see
            :mod:`secu_plugin.models.card`); ``None``: not evaluated.
        training: The training recipe (command, data, preset, ...), rendered in the card.

    Attributes:
        centers: ``nn.ParameterList``; head i has shape (num_clusters[i], dim).
        results: The ``results`` argument.
        training_recipe: The ``training`` argument (``self.training`` is nn.Module's flag).

    Examples:
        >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, num_clusters=[10, 20])
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
        num_clusters: list[int] | None = None,
        temperature: float = 0.05,
        results: dict | None = None,
        training: dict | None = None,
    ) -> None:
        num_clusters = list(DEFAULT_NUM_CLUSTERS) if num_clusters is None else num_clusters
        if (
            not isinstance(num_clusters, Sequence)
            or not num_clusters
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 2 for k in num_clusters)
        ):
            raise ValueError(
                f"num_clusters must be a list of ints >= 2 (one per head), got {num_clusters!r}"
            )
        if isinstance(temperature, bool) or not (
            isinstance(temperature, (int, float)) and temperature > 0
        ):
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        results, training = _json_dict("results", results), _json_dict("training", training)
        check_results(results)
        super().__init__(
            backbone,
            backbone_kwargs,
            in_chans,
            dim,
            projection_layers,
            projection_batchnorm,
            projection_hidden_dim,
            predictor_hidden_dim,
            input_size,
            mean,
            std,
            input_norm,
        )
        self.num_clusters = list(num_clusters)
        self.temperature = float(temperature)
        self.centers = nn.ParameterList(
            [nn.Parameter(F.normalize(torch.randn(k, self.dim), dim=1)) for k in num_clusters]
        )
        self.results = results
        self.training_recipe = training

    # ------------------------------------------------------------------ the model

    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, as written to ``config.json``."""
        return {
            **super().config,
            "num_clusters": list(self.num_clusters),
            "temperature": self.temperature,
            "results": copy.deepcopy(self.results),
            "training": copy.deepcopy(self.training_recipe),
        }

    @property
    def num_heads(self) -> int:
        """Number of clustering heads."""
        return len(self.num_clusters)

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.parameters()).device

    def head_index(self, num_clusters: int) -> int:
        """The index of the first head with ``num_clusters`` clusters (a ValueError listing
        the heads if none has)."""
        if num_clusters in self.num_clusters:
            return self.num_clusters.index(num_clusters)
        raise ValueError(
            f"no head has {num_clusters} clusters; this model's heads have {self.num_clusters}"
        )

    def cluster_probabilities(self, z: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Softmax over head ``head``'s centers of cos(z, center) / temperature."""
        self._check_head(head)
        return center_probabilities(z, self.centers[head], self.temperature)

    @torch.no_grad()
    def predict(
        self, images: torch.Tensor | Image.Image | Sequence[Image.Image], head: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cluster ids and confidences of a batch, in eval mode and without gradients.

        Args:
            images: A (B, C, H, W) tensor, already normalized, or PIL images (preprocessed).
            head: Index of the head (see :meth:`head_index` to find it from its K).

        Returns:
            ``(cluster_ids, confidence)``: int64 (B,) and float (B,): the nearest center
            (cosine) of the projection, and its softmax probability.
        """
        self._check_head(head)
        was_training = self.training
        self.eval()
        try:
            return nearest_center(self(images), self.centers[head], self.temperature)
        finally:
            self.train(was_training)

    def _check_head(self, head: int) -> None:
        if isinstance(head, bool) or not isinstance(head, int) or not 0 <= head < self.num_heads:
            raise ValueError(
                f"head must be an index in [0, {self.num_heads}) (heads have "
                f"{self.num_clusters} clusters), got {head!r}"
            )

    def set_results(self, results: dict | None) -> None:
        """Records measured evaluation results (rendered in the card, written to config.json).

        Examples:
            >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, num_clusters=[10])
            >>> model.set_results({"dataset": "MNIST-5k", "split": "train", "num_clusters": 10,
            ...                    "accuracy": 0.9, "nmi": 0.8, "ari": 0.7})
            >>> model.config["results"]["accuracy"]
            0.9
        """
        results = _json_dict("results", results)
        check_results(results)
        self.results = results

    @classmethod
    def from_network(
        cls,
        network: SeCuNetwork,
        centers: Sequence[torch.Tensor],
        temperature: float = 0.05,
        results: dict | None = None,
        training: dict | None = None,
    ) -> SeCuModel:
        """The model a training run exports: ``network``'s configuration and weights, and the
        trained ``centers`` (one (K_i, dim) tensor per head, e.g. ``bank.centers``).

        Examples:
            >>> network = SeCuNetwork("secu_convnet_tiny", in_chans=1, dim=8)
            >>> model = SeCuModel.from_network(network, [torch.randn(4, 8), torch.randn(6, 8)])
            >>> model.num_clusters, bool((model.centers[1] != 0).any())
            ([4, 6], True)
        """
        centers = [torch.as_tensor(c).detach() for c in centers]
        if any(c.ndim != 2 or c.shape[1] != network.dim for c in centers) or not centers:
            raise ValueError(
                f"centers must be (K, {network.dim}) tensors, got {[tuple(c.shape) for c in centers]}"
            )
        model = cls(
            **network.config,
            num_clusters=[int(c.shape[0]) for c in centers],
            temperature=temperature,
            results=results,
            training=training,
        )
        if not all(torch.isfinite(c).all() for c in centers):
            raise ValueError("centers hold NaN or infinite values")
        state = {f"centers.{head}": c for head, c in enumerate(centers)}
        state.update(network.state_dict())
        model.load_state_dict(state, strict=True)  # SyncBatchNorm has BatchNorm's keys
        return model.to(next(network.parameters()).device)

    @classmethod
    def from_modules(
        cls,
        backbone: nn.Module,
        projection_head: nn.Module,
        centers: Any,
        in_chans: int = 3,
        **kwargs: Any,
    ) -> SeCuModel:
        """A model from parts trained elsewhere: a timm ``backbone`` (``num_classes=0``), a
        projection head (SeCu's, or a lightly ``ProjectionHead`` such as
        ``SwaVProjectionHead``), and the centers (a ``SeCuCenterBank``, lightly's
        ``SwaVPrototypes``, or a list of (K, dim) tensors). ``kwargs``: ``input_size``, ``mean``,
        ``std`` (default: the backbone's pretrained_cfg) and :meth:`from_network`'s.

        Examples:
            >>> import timm
            >>> from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes
            >>> backbone = timm.create_model("test_resnet", num_classes=0)
            >>> head = SwaVProjectionHead(backbone.num_features, 64, 16)
            >>> model = SeCuModel.from_modules(backbone, head, SwaVPrototypes(16, [10, 20]))
            >>> model.num_clusters, model.config["projection_layers"]
            ([10, 20], 2)
            >>> images = torch.randn(2, 3, 32, 32)
            >>> _ = backbone.eval(), head.eval(), model.eval()
            >>> torch.allclose(model(images), head(backbone(images)), atol=1e-6)
            True
        """
        return model_from_modules(cls, backbone, projection_head, centers, in_chans, **kwargs)

    # ------------------------------------------------------------------ the Hub

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: writes ``model.safetensors`` (config and card come after)."""
        from safetensors.torch import save_model

        save_model(self, str(Path(save_directory) / hub.WEIGHTS_FILE))

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The card from ``model_cards/template.md``, with the mixin's metadata (library,
        license, tags) and this model's measured results as the Hub's model-index."""
        base = super().generate_model_card()
        return model_card(base.data, self.config, kwargs.get("repo_id"))

    def save_pretrained(
        self, save_directory: str | Path, *, repo_id: str | None = None, **kwargs: Any
    ) -> str | None:
        """Writes config.json, model.safetensors and README.md (the model card) to a folder.

        ``repo_id``, when given, is the Hub name used in the card's usage snippet (and the
        repository pushed to with ``push_to_hub=True``). An existing README.md is replaced.
        """
        kwargs.setdefault("config", self.config)
        kwargs.setdefault("model_card_kwargs", {}).setdefault("repo_id", repo_id)
        Path(save_directory, "README.md").unlink(missing_ok=True)  # the mixin keeps one
        return super().save_pretrained(save_directory, repo_id=repo_id, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Uploads config.json, model.safetensors and the model card to a Hub repository."""
        kwargs.setdefault("config", self.config)
        kwargs.setdefault("model_card_kwargs", {}).setdefault("repo_id", repo_id)
        return super().push_to_hub(repo_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any) -> SeCuModel:
        """Loads a model saved with :meth:`save_pretrained`: a local folder or a Hub repo id
        (downloaded, or read from the HF cache; ``HF_HUB_OFFLINE=1`` works offline).

        Keyword arguments are the mixin's (``revision``, ``cache_dir``, ``force_download``,
        ``token``, ``local_files_only``), ``map_location``, ``strict``, or constructor
        arguments that override config.json. Returns the model in eval mode.

        Raises:
            PretrainedModelNotFoundError: The folder or repository cannot be found, or cannot
                be downloaded (offline, no access); the message says how to fix it.
            ValueError: The name is neither a folder nor a valid repo id, or the files do not
                describe a SeCuModel.
        """
        model_id = os.path.expanduser(os.fspath(pretrained_model_name_or_path))
        if os.path.isdir(model_id):
            hub.local_model_files(model_id)
        try:
            return super().from_pretrained(model_id, **kwargs)
        except Exception as error:
            clear_error = hub.hub_error_with_fix(error, model_id, kwargs.get("revision"))
            if clear_error is None:
                raise
            raise clear_error from error

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str | torch.device = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> SeCuModel:
        """The mixin's hook: the config's sizes, then the shapes of the model it builds (on the
        meta device), are checked against the weights' header; then the model is built and the
        weights loaded."""
        if os.path.isdir(model_id):
            weights_file = os.path.join(model_id, hub.WEIGHTS_FILE)
        else:
            weights_file = hf_hub_download(
                repo_id=model_id,
                filename=hub.WEIGHTS_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        num_clusters = model_kwargs.get("num_clusters", list(DEFAULT_NUM_CLUSTERS))
        sizes = {"dim": 128, **model_kwargs, "num_clusters": num_clusters}
        hub.check_sizes_against_weights(weights_file, sizes)
        hub.check_model_against_weights(weights_file, lambda: cls(**model_kwargs), strict)
        model = cls(**model_kwargs)
        hub.load_weights(model, weights_file, map_location, strict)
        model.eval()
        return model

    @classmethod
    def from_reference_checkpoint(
        cls, path: str | os.PathLike, backbone: str = "secu_resnet18_cifar", **kwargs: Any
    ) -> SeCuModel:
        """Imports a checkpoint of the paper's official code (github.com/idstcv/SeCu); see
        :func:`secu_plugin.models.reference.load_reference_checkpoint`."""
        return reference.load_reference_checkpoint(cls, path, backbone=backbone, **kwargs)
