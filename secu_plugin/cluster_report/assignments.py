"""Every head's assignments of a set of images: cluster id, confidence, similarity to the center.

One forward pass gives the projections; each head then assigns by its nearest center. The
report ranks a cluster's members by their cosine similarity to its center and shows the least
confident ones, so both figures are kept, for every head, next to the cluster ids.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from secu_plugin.cluster_report.report import write_cluster_report
from secu_plugin.core.nearest import cosine_logits


@dataclass
class ClusterAssignments:
    """The assignments of N images by H heads: arrays of shape (H, N).

    Attributes:
        cluster_ids: int64, the nearest center of each head.
        confidence: float32, the softmax probability of that center.
        center_similarity: float32, the cosine similarity to that center (1: at the center).
        num_clusters: K of each head.

    Examples:
        >>> found = assign_projections(torch.tensor([[2.0, 0.1]]), [torch.eye(2)], 1.0)
        >>> found.cluster_ids.tolist(), found.num_clusters
        ([[0]], [2])
        >>> ClusterAssignments.concatenate([found, found]).cluster_ids.shape
        (1, 2)
    """

    cluster_ids: np.ndarray
    confidence: np.ndarray
    center_similarity: np.ndarray
    num_clusters: list[int]

    def __len__(self) -> int:
        return self.cluster_ids.shape[1]

    @classmethod
    def concatenate(cls, parts: Sequence[ClusterAssignments]) -> ClusterAssignments:
        """The assignments of consecutive batches as one (their heads must agree)."""
        if not parts:
            raise ValueError("no assignments to concatenate")
        if any(part.num_clusters != parts[0].num_clusters for part in parts):
            raise ValueError("the batches were assigned by different heads")
        return cls(
            np.concatenate([p.cluster_ids for p in parts], axis=1),
            np.concatenate([p.confidence for p in parts], axis=1),
            np.concatenate([p.center_similarity for p in parts], axis=1),
            list(parts[0].num_clusters),
        )

    def head_names(self) -> list[str]:
        """``K=10``, ``K=20``, ...; a K that two heads share names the head index too."""
        return [
            f"K={k}" if self.num_clusters.count(k) == 1 else f"K={k} (head {head})"
            for head, k in enumerate(self.num_clusters)
        ]

    def columns(self, skip_heads: Sequence[int] = ()) -> dict[str, np.ndarray]:
        """Table columns, ``cluster_k10``, ``confidence_k10``, ... per head (a K that two heads
        share gets ``_head<i>``): what ``--out x.parquet`` and a data set's new columns hold.

        Examples:
            >>> found = ClusterAssignments(np.array([[1, 0]]), np.array([[0.9, 0.8]]),
            ...                            np.array([[0.7, 0.6]]), [2])
            >>> sorted(found.columns())
            ['cluster_k2', 'confidence_k2']
        """
        columns: dict[str, np.ndarray] = {}
        for head, k in enumerate(self.num_clusters):
            if head in skip_heads:
                continue
            suffix = f"k{k}" if self.num_clusters.count(k) == 1 else f"k{k}_head{head}"
            columns[f"cluster_{suffix}"] = self.cluster_ids[head].astype(np.int64)
            columns[f"confidence_{suffix}"] = self.confidence[head].astype(np.float32)
        return columns

    def write_report(
        self, directory: str | os.PathLike, images: Sequence[Any] | np.ndarray, **options: Any
    ) -> Path:
        """:func:`~secu_plugin.cluster_report.write_cluster_report` of every head: these ids,
        confidences, center similarities, K and head names; ``options`` are its other keywords.

        Examples:
            >>> import tempfile
            >>> projections = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
            >>> found = assign_projections(projections, [torch.eye(4)[:2], torch.eye(4)], 0.1)
            >>> images = np.random.default_rng(0).integers(0, 256, (30, 8, 8), dtype=np.uint8)
            >>> page = found.write_report(tempfile.mkdtemp(), images, title="Noise").read_text()
            >>> "K=2" in page and "K=4" in page and "Noise" in page
            True
        """
        return write_cluster_report(
            directory,
            images,
            self.cluster_ids,
            self.confidence,
            self.center_similarity,
            num_clusters=self.num_clusters,
            head_names=self.head_names(),
            **options,
        )


@torch.no_grad()
def assign_projections(
    projections: torch.Tensor, centers: Sequence[torch.Tensor], temperature: float
) -> ClusterAssignments:
    """Every head's assignment of ``projections`` (N, dim): the nearest center (cosine), its
    softmax probability at ``temperature`` (as :meth:`SeCuModel.predict` gives it) and the
    cosine similarity to it.

    Examples:
        >>> found = assign_projections(torch.tensor([[1.0, 0.0], [0.0, 3.0]]),
        ...                            [torch.eye(2)], temperature=0.05)
        >>> found.cluster_ids.tolist(), found.center_similarity.round(3).tolist()
        ([[0, 1]], [[1.0, 1.0]])
    """
    if projections.ndim != 2:
        raise ValueError(f"projections must be (N, dim), got shape {tuple(projections.shape)}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature!r}")
    ids, confidence, similarity = [], [], []
    projections = projections.float()
    for head_centers in centers:
        cosines = cosine_logits(projections, head_centers.detach().float().to(projections.device))
        head_confidence, head_ids = (cosines / temperature).softmax(dim=1).max(1)
        ids.append(head_ids.cpu().numpy().astype(np.int64))
        confidence.append(head_confidence.cpu().numpy().astype(np.float32))
        nearest = cosines.gather(1, head_ids[:, None]).squeeze(1)
        similarity.append(nearest.cpu().numpy().astype(np.float32))
    return ClusterAssignments(
        np.stack(ids), np.stack(confidence), np.stack(similarity), [len(c) for c in centers]
    )


@torch.no_grad()
def assign_batch(model: torch.nn.Module, batch: torch.Tensor) -> ClusterAssignments:
    """Every head's assignment of a preprocessed batch by a :class:`SeCuModel`, in eval mode.

    Examples:
        >>> from secu_plugin.models import SeCuModel
        >>> model = SeCuModel(backbone="secu_convnet_tiny", in_chans=1, num_clusters=[4, 6])
        >>> batch = torch.randn(3, 1, 28, 28)
        >>> found = assign_batch(model, batch)
        >>> found.cluster_ids.shape, found.head_names()
        ((2, 3), ['K=4', 'K=6'])
        >>> ids, confidence = model.predict(batch, head=1)  # the same rule as predict
        >>> found.cluster_ids[1].tolist() == ids.tolist()
        True
    """
    was_training = model.training
    model.eval()
    try:
        projections = model(batch.to(model.device))
    finally:
        model.train(was_training)
    return assign_projections(projections, list(model.centers), model.temperature)
