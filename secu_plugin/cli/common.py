"""What both inputs of ``secu-cluster`` (a folder, a Hugging Face data set) share: the usage
error, reading images in preprocessed batches, and the HTML report."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image

from secu_plugin.data.files import UNREADABLE_IMAGE_ERRORS
from secu_plugin.model_selection import recorded_recommendation

if TYPE_CHECKING:
    import torch

    from secu_plugin.cluster_report import ClusterAssignments
    from secu_plugin.models import SeCuModel

PROGRAM = "secu-cluster"


class UsageError(Exception):
    """A bad command-line argument: reported on stderr, exit code 2."""


def write_report(
    args: argparse.Namespace,
    images: Sequence,
    names: list[str],
    assignments: ClusterAssignments,
    labels: np.ndarray | None,
    class_names: list[str] | None,
    model: SeCuModel,
) -> None:
    """The HTML report; the recommended head: --num-clusters's, the record's, the card's."""
    evaluated = ((model.results or {}).get("evaluations", [model.results or {}]) or [{}])[0]
    recommended = recorded_recommendation(model.training_recipe, list(model.num_clusters))
    # the training run's K plot and words, unless the user chose the head
    selection = None if recommended is None else model.training_recipe["k_selection"]
    if selection is not None and "signal" not in selection:
        selection = None  # a hand-written record: the head is marked, nothing plotted
    if args.num_clusters is not None:
        recommended = model.head_index(args.num_clusters)
    elif recommended is None and evaluated.get("num_clusters") in model.num_clusters:
        recommended = model.head_index(evaluated["num_clusters"])
    try:
        assignments.write_report(
            args.report,
            images,
            recommended_head=recommended,
            k_selection=selection if args.num_clusters is None else None,
            labels=labels,
            class_names=class_names,
            names=names,
            title=f"Clusters of {args.images or args.data} by {args.model}",
        )
    except ValueError as error:
        raise UsageError(f"--report: {error}") from error


def open_image_file(path: str) -> Image.Image:
    with Image.open(path) as image:
        image.load()
        return image


def preprocessed_batches(
    model: SeCuModel, items: list, load: Callable, batch_size: int, stderr: TextIO
) -> Iterator[tuple[list, torch.Tensor | None, list]]:
    """Yields (items, preprocessed batch, unreadable items) per batch of ``load(item)``."""
    import torch
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(items), unit="img", file=stderr, disable=len(items) <= batch_size, desc=PROGRAM
    )
    try:
        for start in range(0, len(items), batch_size):
            batch_items, tensors, unreadable = [], [], []
            for item in items[start : start + batch_size]:
                try:
                    tensors.append(model.preprocess([load(item)])[0])
                except UNREADABLE_IMAGE_ERRORS as error:
                    unreadable.append(item)
                    progress.write(
                        f"{PROGRAM}: skipping unreadable image {item}: {error}", file=stderr
                    )
                    continue
                batch_items.append(item)
            progress.update(len(items[start : start + batch_size]))
            batch = torch.stack(tensors) if tensors else None
            yield batch_items, batch, unreadable
    finally:
        progress.close()
