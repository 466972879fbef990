"""``secu-cluster``: cluster a folder of images with a trained SeCu model.

Loads a model with :meth:`secu_plugin.models.SeCuModel.from_pretrained` (a Hub repo id or a
folder written by ``save_pretrained``), reads every image file under a folder (recursively;
any size; grey, RGB, RGBA or palette), and writes one CSV row ``path,cluster,confidence`` per
readable image (``path`` starts with the folder as given), optionally with a montage of each
cluster's members and a cluster-size chart.
Unreadable files are reported on stderr and skipped. Rows are written (and flushed) batch by
batch, so an interrupted run keeps what it did, and ``--resume`` does only the files not yet in
the CSV. File names that are not valid UTF-8 are written as their original bytes (lossless;
read such a CSV with ``encoding="utf-8", errors="surrogateescape"``).

Exit codes: 0 success; 1 no image could be read; 2 bad arguments (unknown model, missing
folder, no head with the requested number of clusters, ...).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image

from secu_plugin.data.files import UNREADABLE_IMAGE_ERRORS, ImageFiles, find_image_files
from secu_plugin.viz import ensure_parent_folder

if TYPE_CHECKING:
    import torch

    from secu_plugin.models import SeCuModel

PROGRAM = "secu-cluster"


class _UsageError(Exception):
    """A bad command-line argument: reported on stderr, exit code 2."""


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
    parser.add_argument("--images", required=True, help="folder of images, searched recursively")
    parser.add_argument(
        "--num-clusters",
        type=int,
        default=None,
        metavar="K",
        help="use the head with K clusters (default: the model's first head)",
    )
    parser.add_argument("--out", required=True, help="CSV file to write: path,cluster,confidence")
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
        "--resume", action="store_true", help="keep the rows of --out and do only the rest"
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
    except _UsageError as error:
        if args.debug or os.environ.get("SECU_DEBUG") == "1":
            raise
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, stderr: TextIO) -> int:
    import torch

    from secu_plugin.models import SeCuModel

    if not os.path.isdir(args.images):
        raise _UsageError(f"--images {args.images!r} is not a folder")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as error:
        raise _UsageError(f"--device {args.device!r} is not a torch device: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _UsageError("--device cuda was given but no CUDA device is available")
    try:
        model = SeCuModel.from_pretrained(args.model, map_location="cpu")
    except (OSError, ValueError) as error:
        raise _UsageError(f"--model: {error}") from error
    try:
        head = 0 if args.num_clusters is None else model.head_index(args.num_clusters)
    except ValueError as error:
        raise _UsageError(f"--num-clusters {args.num_clusters}: {error}") from error
    num_clusters = model.num_clusters[head]
    paths = find_image_files(args.images)
    if not paths:
        raise _UsageError(f"no image files under {args.images!r}")
    if args.resume and os.path.isfile(args.out):
        _drop_partial_last_line(args.out)  # a row an interruption cut is redone
    done = _rows(args.out) if args.resume else {}
    todo = [path for path in paths if path not in done]
    model.to(device).eval()

    skipped: list[str] = []
    ensure_parent_folder(args.out)
    # Names that are not valid UTF-8 are written as their original bytes (surrogateescape):
    # lossless, the same bytes as on disk; read such a CSV back with errors="surrogateescape".
    mode = "a" if done else "w"
    with open(args.out, mode, newline="", encoding="utf-8", errors="surrogateescape") as file:
        writer = csv.writer(file)
        if not done:
            writer.writerow(["path", "cluster", "confidence"])
        for batch_paths, batch, unreadable in _batches(model, todo, args.batch_size, stderr):
            skipped += unreadable
            if batch_paths:
                ids, confidence = model.predict(batch, head=head)
                writer.writerows(
                    (path, int(cluster), f"{float(conf):.6f}")
                    for path, cluster, conf in zip(batch_paths, ids.tolist(), confidence.tolist())
                )
            file.flush()  # an interrupted run keeps every finished batch
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        print(f"{PROGRAM}: skipped {len(skipped)} unreadable file(s) of {len(paths)}: {shown}",
              file=stderr)  # fmt: skip
    rows = _rows(args.out)
    if not rows:
        print(f"{PROGRAM}: error: none of the {len(paths)} image files could be read", file=stderr)
        return 1
    readable = list(rows)
    ids_all = np.array([rows[path] for path in readable], dtype=np.int64)
    _save_pictures(args, readable, ids_all, num_clusters)
    used = len(np.unique(ids_all))
    print(
        f"{PROGRAM}: {len(readable)} images in {used} of {num_clusters} clusters "
        f"(head {head}) -> {args.out}",
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
        raise _UsageError(f"--resume: {csv_path!r} is not a CSV written by {PROGRAM}")
    return {row[0]: int(row[1]) for row in rows[1:]}


def _batches(
    model: SeCuModel, paths: list[str], batch_size: int, stderr: TextIO
) -> Iterator[tuple[list[str], torch.Tensor | None, list[str]]]:
    """Yields (paths, preprocessed batch, unreadable paths) per batch of files."""
    import torch
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(paths), unit="img", file=stderr, disable=len(paths) <= batch_size, desc=PROGRAM
    )
    try:
        for start in range(0, len(paths), batch_size):
            batch_paths, tensors, unreadable = [], [], []
            for path in paths[start : start + batch_size]:
                try:
                    with Image.open(path) as image:
                        image.load()
                        tensors.append(model.preprocess([image])[0])
                except UNREADABLE_IMAGE_ERRORS as error:
                    unreadable.append(path)
                    progress.write(
                        f"{PROGRAM}: skipping unreadable image {path}: {error}", file=stderr
                    )
                    continue
                batch_paths.append(path)
            progress.update(len(paths[start : start + batch_size]))
            batch = torch.stack(tensors) if tensors else None
            yield batch_paths, batch, unreadable
    finally:
        progress.close()


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


if __name__ == "__main__":
    sys.exit(main())
