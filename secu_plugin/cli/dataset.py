"""``secu-cluster --data``: a Hugging Face data set given back with every head's columns."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, TextIO

import numpy as np

from secu_plugin.cli.common import PROGRAM, UsageError, preprocessed_batches, write_report

if TYPE_CHECKING:
    from secu_plugin.models import SeCuModel


def cluster_dataset(args: argparse.Namespace, model: SeCuModel, head: int, stderr: TextIO) -> int:
    """``--data``: every head's columns added to the data set, saved to ``--out``."""
    from torch.utils.data import Subset

    from secu_plugin.cluster_report import ClusterAssignments, assign_batch, outputs
    from secu_plugin.data import ImageDataset
    from secu_plugin.data.hf import HFSource

    try:
        loaded = outputs.load_dataset_source(args.data, args.split)
    except (OSError, ValueError, ConnectionError) as error:
        raise UsageError(f"--data {args.data!r}: {error}") from error
    source = HFSource(loaded.dataset, loaded.image_column, loaded.description)
    found, rows = [], []
    for batch_rows, batch, _ in preprocessed_batches(
        model, list(range(len(source))), source.load, args.batch_size, stderr
    ):
        if batch_rows:
            found.append(assign_batch(model, batch))
            rows += batch_rows
    if not rows:
        print(f"{PROGRAM}: error: none of the {len(source)} images could be read", file=stderr)
        return 1
    everything = ClusterAssignments.concatenate(found)
    if len(rows) < len(source):
        print(
            f"{PROGRAM}: skipped {len(source) - len(rows)} unreadable image(s) of "
            f"{len(source)} (cluster -1 in --out)",
            file=stderr,
        )
    if args.out:
        try:
            columns = outputs.with_cluster_columns(loaded.dataset, everything, np.array(rows))
            outputs.save_dataset(columns, args.out, args.data)
        except ValueError as error:
            raise UsageError(str(error)) from error
    if args.report:
        labels = None if loaded.labels is None else loaded.labels[rows]
        images = Subset(ImageDataset(source), rows)  # read only for the images shown
        write_report(
            args, images, [f"row {r}" for r in rows], everything, labels, loaded.classes, model
        )
    used = len(np.unique(everything.cluster_ids[head]))
    print(
        f"{PROGRAM}: {len(rows)} images in {used} of {model.num_clusters[head]} clusters "
        f"(head {head}) -> {', '.join(filter(None, (args.out, args.report)))}",
        file=stderr,
    )
    return 0
