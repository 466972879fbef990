"""``secu-cluster``: cluster a folder of images with a trained SeCu model.

Loads a model with :meth:`secu_plugin.models.SeCuModel.from_pretrained` (a Hub repo id or a
folder written by ``save_pretrained``), reads every image file under a folder (recursively;
any size; grey, RGB, RGBA or palette), and writes one CSV row ``path,cluster,confidence`` per
readable image (``path`` starts with the folder as given), optionally with a montage of each
cluster's members and a cluster-size chart.
Unreadable files are reported on stderr and skipped.

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

if TYPE_CHECKING:
    import torch

    from secu_plugin.models import SeCuModel

PROGRAM = "secu-cluster"
_UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class _UsageError(Exception):
    """A bad command-line argument: reported on stderr, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    """The ``secu-cluster`` argument parser.

    Examples:
        >>> args = build_parser().parse_args(["--model", "org/name", "--images", "photos",
        ...                                   "--out", "clusters.csv"])
        >>> args.head, args.batch_size
        (None, 64)
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
        "--head",
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
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return 2


def find_image_files(folder: str) -> list[str]:
    """Image files under ``folder``, recursively and sorted; hidden files and folders skipped.

    Examples:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(folder, "sub"))
        >>> for name in ["b.png", "sub/a.JPG", "notes.txt", ".hidden.png"]:
        ...     open(os.path.join(folder, name), "wb").close()
        >>> [os.path.relpath(p, folder) for p in find_image_files(folder)]
        ['b.png', 'sub/a.JPG']
    """
    from secu_plugin.data.images import IMAGE_EXTENSIONS

    paths = []
    for root, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(
            os.path.join(root, name)
            for name in filenames
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(paths)


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
        head = 0 if args.head is None else model.head_index(args.head)
    except ValueError as error:
        raise _UsageError(f"--head {args.head}: {error}") from error
    num_clusters = model.num_clusters[head]
    paths = find_image_files(args.images)
    if not paths:
        raise _UsageError(f"no image files under {args.images!r}")
    model.to(device).eval()

    readable: list[str] = []
    cluster_ids: list[np.ndarray] = []
    skipped = 0
    _ensure_parent(args.out)
    with open(args.out, "w", newline="", encoding="utf-8") as out_file:
        writer = csv.writer(out_file)
        writer.writerow(["path", "cluster", "confidence"])
        for batch_paths, batch, unreadable in _batches(model, paths, args.batch_size, stderr):
            skipped += unreadable
            if not batch_paths:
                continue
            ids, confidence = model.predict(batch, head=head)
            ids_np, confidence_np = ids.cpu().numpy(), confidence.cpu().numpy()
            writer.writerows(
                (path, int(cluster), f"{float(conf):.6f}")
                for path, cluster, conf in zip(batch_paths, ids_np, confidence_np)
            )
            readable.extend(batch_paths)
            cluster_ids.append(ids_np)
    if skipped:
        print(f"{PROGRAM}: skipped {skipped} unreadable file(s) of {len(paths)}", file=stderr)
    if not readable:
        print(f"{PROGRAM}: error: none of the {len(paths)} image files could be read", file=stderr)
        return 1
    ids_all = np.concatenate(cluster_ids)
    _save_pictures(args, readable, ids_all, num_clusters)
    used = len(np.unique(ids_all))
    print(
        f"{PROGRAM}: {len(readable)} images in {used} of {num_clusters} clusters "
        f"(head {head}) -> {args.out}",
        file=stderr,
    )
    return 0


def _batches(
    model: SeCuModel, paths: list[str], batch_size: int, stderr: TextIO
) -> Iterator[tuple[list[str], torch.Tensor | None, int]]:
    """Yields (paths, preprocessed batch, number of unreadable files) per batch of files."""
    import torch
    from tqdm.auto import tqdm

    progress = tqdm(
        total=len(paths), unit="img", file=stderr, disable=len(paths) <= batch_size, desc=PROGRAM
    )
    try:
        for start in range(0, len(paths), batch_size):
            batch_paths, tensors, unreadable = [], [], 0
            for path in paths[start : start + batch_size]:
                try:
                    with Image.open(path) as image:
                        image.load()
                        tensors.append(model.preprocess([image])[0])
                except _UNREADABLE as error:
                    unreadable += 1
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


class _ImagesOnDisk(Sequence):
    """The images of a list of files, opened when indexed (the montage only needs a few)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        from secu_plugin.data.images import ConvertMode

        with Image.open(self.paths[index]) as image:
            image.load()
            return ConvertMode("RGB")(image)


def _save_pictures(
    args: argparse.Namespace, paths: list[str], cluster_ids: np.ndarray, num_clusters: int
) -> None:
    from secu_plugin.viz import save_cluster_montage, save_cluster_size_plot

    if args.montage:
        save_cluster_montage(
            _ImagesOnDisk(paths),
            cluster_ids,
            args.montage,
            samples_per_cluster=args.samples_per_cluster,
        )
    if args.sizes:
        counts = np.bincount(cluster_ids, minlength=num_clusters)
        save_cluster_size_plot([counts], [f"head K={num_clusters}"], args.sizes)


def _ensure_parent(path: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
