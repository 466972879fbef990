"""The files an evaluated run leaves beside its model: results.json, the cluster-size plot, a
montage of the images by cluster, and the HTML cluster report.

The recipes' export (:meth:`secu_plugin.train.scaffold.RecipeRun.export`) scores a run, then
calls these on the main process; each reads the model's training record (its ``k_selection``)
and writes under the run's output directory.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from secu_plugin.cluster_report import assign_projections
from secu_plugin.data import ImageDataset
from secu_plugin.viz import save_cluster_montage, save_cluster_size_plot

if TYPE_CHECKING:
    from secu_plugin.models import SeCuModel


def write_run_files(
    output_dir: Path,
    model: SeCuModel,
    eval_images: ImageDataset,
    predictions: np.ndarray,
    results: dict,
    extra: dict,
    cluster_sizes: list[np.ndarray],
) -> None:
    """``results.json`` (the scores ``results``, ``extra`` such as the baselines, and the K
    selection), ``cluster_sizes.png`` (one bar chart per head) and ``montage.png`` (up to 2,000
    evaluation images by their cluster of the evaluated head, or head 0 without labels)."""
    record = {**results, **extra, "k_selection": model.training_recipe["k_selection"]}
    (output_dir / "results.json").write_text(json.dumps(record, indent=2))
    save_cluster_size_plot(
        cluster_sizes, [f"K={k}" for k in model.num_clusters], output_dir / "cluster_sizes.png"
    )
    head = results["evaluations"][0]["head"] if results else 0
    sample = np.random.default_rng(0).permutation(len(eval_images))[:2000]
    save_cluster_montage(
        [eval_images[i][0] for i in sample], predictions[head][sample], output_dir / "montage.png"
    )


def write_run_report(
    output_dir: Path,
    model: SeCuModel,
    eval_images: ImageDataset,
    projections: torch.Tensor,
    labels: np.ndarray | None,
    *,
    title: str,
    feature_ceiling: dict[str, float] | None = None,
    notes: Sequence[str] = (),
) -> Path:
    """``report/index.html``: every head's clusters of the evaluation images (their sizes, the
    images nearest to each center and the least confident ones), opening on the recommended
    head; ``feature_ceiling`` beside every head's score, ``notes``: sentences at its top."""
    found = assign_projections(projections, list(model.centers), model.temperature)
    selection = model.training_recipe["k_selection"]
    return found.write_report(
        output_dir / "report",
        eval_images,
        recommended_head=selection["recommended_head"],
        k_selection=selection,
        labels=labels,
        class_names=eval_images.classes,
        names=eval_images.paths,
        feature_ceiling=feature_ceiling,
        title=title,
        notes=notes,
    )
