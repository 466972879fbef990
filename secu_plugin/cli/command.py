"""The ``secu-cluster`` command: its arguments, and clustering a folder of images."""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np

from secu_plugin.cli.common import (
    PROGRAM,
    UsageError,
    open_image_file,
    preprocessed_batches,
    write_report,
)
from secu_plugin.cli.dataset import cluster_dataset
from secu_plugin.data.files import (
    ImageFiles,
    check_output_outside_data,
    find_image_files,
)
from secu_plugin.model_selection import head_to_use
from secu_plugin.viz import ensure_parent_folder

if TYPE_CHECKING:
    from secu_plugin.cluster_report import ClusterAssignments


def build_parser() -> argparse.ArgumentParser:
    """The ``secu-cluster`` argument parser.

    Examples:
        >>> args = build_parser().parse_args(["--model", "org/name", "--images", "photos",
        ...                                   "--out", "clusters.csv"])
        >>> args.num_clusters, args.batch_size, args.resume
        (None, 64, False)
    """
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Cluster every image under a folder with a trained SeCu model.",
        epilog="Exit codes: 0 success, 1 no readable image, 2 bad arguments.",
    )
    parser.add_argument(
        "--model", required=True, help="Hub repo id (org/name) or folder from save_pretrained"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="folder of images, searched recursively")
    source.add_argument(
        "--data",
        help="a Hugging Face data set (a save_to_disk folder, an image folder read as "
        "imagefolder, parquet files or a Hub id); --out gets it back with the cluster columns",
    )
    parser.add_argument("--split", default="train", help="the split of --data (default train)")
    parser.add_argument(
        "--num-clusters",
        type=int,
        default=None,
        metavar="K",
        help="use the head with K clusters (default: the recommended one, else the first)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="x.csv: path,cluster,confidence of the chosen head; x.parquet: path and "
        "cluster_k<K>, confidence_k<K> of every head; with --data a folder (save_to_disk) or "
        "x.parquet: the data set with those columns added",
    )
    parser.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="static HTML report of every head (index.html, thumbnails, plots; opens from disk)",
    )
    parser.add_argument("--montage", default=None, help="PNG montage: a row of samples per cluster")
    parser.add_argument("--sizes", default=None, help="PNG bar chart of the cluster sizes")
    parser.add_argument(
        "--samples-per-cluster", type=_positive_int, default=8, help="montage images per row"
    )
    parser.add_argument("--batch-size", type=_positive_int, default=64, help="images per batch")
    parser.add_argument(
        "--device",
        default=None,
        help="torch device, e.g. cpu or cuda (default: cuda if available, else cpu)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of a CSV --out, do only the rest"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks for usage errors")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``secu-cluster``; returns the exit code (0 ok, 1 no readable image, 2 bad arguments).

    Examples:
        >>> main(["--model", "org/name"])  # --images and --out missing: usage error on stderr
        2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits on --help (0) and on bad usage (2)
        return int(exit_request.code or 0)
    try:
        return _run(args, sys.stderr)
    except UsageError as error:
        if args.debug or os.environ.get("SECU_DEBUG") == "1":
            raise
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, stderr: TextIO) -> int:
    import torch

    from secu_plugin.cluster_report import ClusterAssignments, assign_batch, outputs
    from secu_plugin.models import SeCuModel

    if args.out is None and args.report is None:
        raise UsageError("nothing to write: give --out, --report or both")
    parquet = args.out is not None and args.out.lower().endswith(".parquet")
    if args.resume and (args.data is not None or args.report is not None or parquet):
        raise UsageError("--resume continues a CSV --out of --images (without --report)")
    if args.images is not None and not os.path.isdir(args.images):
        raise UsageError(f"--images {args.images!r} is not a folder")
    for flag, output in (("--out", args.out), ("--report", args.report)):
        for data_flag, data in (("--images", args.images), ("--data", args.data)):
            if output is not None and data is not None:
                try:  # what it writes would be read back as images by the next run
                    check_output_outside_data(output, data, flag, data_flag)
                except ValueError as error:
                    raise UsageError(str(error)) from error
    if args.data is not None and args.out is not None and args.out.lower().endswith(".csv"):
        raise UsageError("with --data, --out is a folder (save_to_disk) or a .parquet file")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise UsageError(f"--device {args.device!r} is not a torch device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was given but no CUDA device is available")
    try:
        model = SeCuModel.from_pretrained(args.model, map_location="cpu")
    except (OSError, ValueError) as error:
        raise UsageError(f"--model: {error}") from error
    try:
        head, told = head_to_use(model.training_recipe, model.num_clusters, args.num_clusters)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if told:
        print(
            f"{PROGRAM}: using head K={model.num_clusters[head]}, the one the training run recommends",
            file=stderr,
        )
    num_clusters = model.num_clusters[head]
    model.to(device).eval()
    if args.data is not None:
        return cluster_dataset(args, model, head, stderr)
    paths = find_image_files(args.images)
    if not paths:
        raise UsageError(f"no image files under {args.images!r}")
    if args.resume and os.path.isfile(args.out):
        _drop_partial_last_line(args.out)  # a row an interruption cut is redone
    done = _rows(args.out) if args.resume else {}
    todo = [path for path in paths if path not in done]

    skipped: list[str] = []
    found: list[ClusterAssignments] = []  # every head, for a parquet --out and the report
    found_paths: list[str] = []
    csv_out = args.out if args.out is not None and not parquet else None
    if csv_out:
        ensure_parent_folder(csv_out)
    # Names that are not valid UTF-8 are written as their original bytes (surrogateescape):
    # lossless, the same bytes as on disk; read such a CSV back with errors="surrogateescape".
    with (
        open(csv_out, "a" if done else "w", newline="", encoding="utf-8", errors="surrogateescape")
        if csv_out
        else contextlib.nullcontext()
    ) as file:
        writer = csv.writer(file) if file else None
        if writer and not done:
            writer.writerow(["path", "cluster", "confidence"])
        for batch_paths, batch, unreadable in preprocessed_batches(
            model, todo, open_image_file, args.batch_size, stderr
        ):
            skipped += unreadable
            if batch_paths:
                assigned = assign_batch(model, batch)
                if writer:
                    writer.writerows(
                        (path, int(cluster), f"{float(conf):.6f}")
                        for path, cluster, conf in zip(
                            batch_paths,
                            assigned.cluster_ids[head].tolist(),
                            assigned.confidence[head].tolist(),
                        )
                    )
                if parquet or args.report:
                    found.append(assigned)
                    found_paths += batch_paths
            if file:
                file.flush()  # an interrupted run keeps every finished batch
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(
            f"{PROGRAM}: skipped {len(skipped)} unreadable file(s) of {len(paths)}: {shown}",
            file=stderr,
        )
    rows = _rows(csv_out) if csv_out else {}
    if not rows and not found_paths:
        print(f"{PROGRAM}: error: none of the {len(paths)} image files could be read", file=stderr)
        return 1
    if found_paths:
        everything = ClusterAssignments.concatenate(found)
        if parquet:
            outputs.write_assignments_parquet(args.out, found_paths, everything)
        if args.report:
            write_report(args, found_paths, found_paths, everything, None, None, model)
        rows = rows or dict(zip(found_paths, everything.cluster_ids[head].tolist()))
    readable = list(rows)
    ids_all = np.array([rows[path] for path in readable], dtype=np.int64)
    _save_pictures(args, readable, ids_all, num_clusters)
    used = len(np.unique(ids_all))
    print(
        f"{PROGRAM}: {len(readable)} images in {used} of {num_clusters} clusters "
        f"(head {head}) -> {', '.join(filter(None, (args.out, args.report)))}",
        file=stderr,
    )
    return 0


def _drop_partial_last_line(csv_path: str) -> None:
    """Cuts a last line an interruption left unfinished, so that appended rows start clean."""
    with open(csv_path, "rb+") as file:
        data = file.read()
        if data and not data.endswith(b"\n"):
            file.truncate(data.rfind(b"\n") + 1)


def _rows(csv_path: str) -> dict[str, int]:
    """The ``path -> cluster`` rows of a CSV written by this command (none if it is absent)."""
    if not os.path.isfile(csv_path):
        return {}
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as file:
        rows = list(csv.reader(file))
    if not rows or rows[0] != ["path", "cluster", "confidence"]:
        raise UsageError(f"--resume: {csv_path!r} is not a CSV written by {PROGRAM}")
    return {row[0]: int(row[1]) for row in rows[1:]}


def _save_pictures(
    args: argparse.Namespace, paths: list[str], cluster_ids: np.ndarray, num_clusters: int
) -> None:
    from secu_plugin.viz import save_cluster_montage, save_cluster_size_plot

    if args.montage:
        save_cluster_montage(
            ImageFiles(paths, mode="RGB"),
            cluster_ids,
            args.montage,
            samples_per_cluster=args.samples_per_cluster,
        )
    if args.sizes:
        counts = np.bincount(cluster_ids, minlength=num_clusters)
        save_cluster_size_plot([counts], [f"head K={num_clusters}"], args.sizes)
