"""k-means on pixels, raw and whitened: the baselines a SeCu run from scratch must beat.

For each image set (``mnist5k``, the bundled digits, or a ``--data`` root as the recipes read
it: ``ROOT/<class>/``, ``ROOT/train|test/<class>/``, a flat folder, ...) and each seed, the
training images' pixels (flattened, scaled to [0, 1]; grey images one value per pixel, RGB three)
are clustered into K = number of classes, and the evaluation split (the training split where
the set has no other, the same images the recipe evaluates) is scored:

- ``kmeans_pixels``: :func:`secu_plugin.baselines.kmeans_baseline` (scikit-learn's ``KMeans``,
  ``n_init=10``) on the raw pixels, not normalized;
- ``kmeans_whitened_pixels``: the same k-means in the space where the frozen heads find their
  neighbours (:func:`secu_plugin.core.neighbors.whitened`: square root, L2 normalization, PCA
  whitening to each of the ``--whitening`` numbers of dimensions, then L2-normalized; whitening
  every pixel amplifies the noise of nearly constant ones, so fewer dimensions may cluster
  better), fitted on the training images and applied to the evaluation ones;
- ``spectral_whitened_pixels`` (``--spectral``; training split = evaluation split only): spectral
  clustering of the k-NN graph in the first whitened space, as the frozen-feature baselines do.

ACC (Hungarian), NMI and ARI as the recipe reports them (``secu_plugin.metrics``). The JSON
(``--json``) holds the provenance (``benchmarks/provenance.py``), every seed's scores and, per
set, whether it is tuned on or held out (from ``sets.json`` beside a ``make_test_sets.py``
folder; ``mnist5k`` is tuned on).

A flat folder has no labels: pass them with ``--labels ROOT=CSV`` (``file,label`` rows, the file
names relative to ROOT, as ``make_test_sets.py`` writes them).

``--score CSV`` scores a ``secu-cluster`` CSV (``path,cluster,confidence``) against such a
labels file instead: how the clusters of a run on unlabeled images are measured.

Usage::

    python benchmarks/kmeans_baseline.py mnist5k --seeds 0 1 2 --whitening 256 20 50 \\
        --spectral --json docs/kmeans_pixels.json
    python benchmarks/kmeans_baseline.py /tmp/secu_sets/digits8 /tmp/secu_sets/mnist8
    python benchmarks/kmeans_baseline.py /tmp/secu_sets/mnist56flat \\
        --labels /tmp/secu_sets/mnist56flat=/tmp/secu_sets/mnist56flat_labels.csv
    python benchmarks/kmeans_baseline.py --score clusters.csv \\
        --labels /tmp/secu_sets/mnist56flat=/tmp/secu_sets/mnist56flat_labels.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from secu_plugin.data import ImageDataset
from secu_plugin.metrics import clustering_metrics


def read_labels(csv_path: str) -> dict[str, int]:
    """``file -> label`` from a ``file,label`` CSV."""
    with open(csv_path, newline="") as file:
        return {row["file"]: int(row["label"]) for row in csv.DictReader(file)}


def pixels(dataset: ImageDataset) -> np.ndarray:
    """(N, D) float32 pixels in [0, 1]; every image in the dataset's mode, at its own size
    (the sets here have one size each)."""
    arrays = [np.asarray(dataset[i][0], dtype=np.float32).reshape(-1) for i in range(len(dataset))]
    sizes = {a.size for a in arrays}
    if len(sizes) != 1:
        raise ValueError(f"images of different sizes ({sorted(sizes)}): resize them first")
    return np.stack(arrays) / 255.0


def labels_of(dataset: ImageDataset, root: str, labels_files: dict[str, str]) -> np.ndarray:
    if dataset.labels is not None:
        return dataset.labels
    if root not in labels_files:
        raise ValueError(f"{root} has no class folders: pass --labels {root}=CSV")
    table = read_labels(labels_files[root])
    return np.array([table[os.path.relpath(p, root)] for p in dataset.paths], dtype=np.int64)


def role_of(root: str) -> str | None:
    """ "tuned on" or "held out" for a set: ``mnist5k`` is tuned on; a folder written by
    ``make_test_sets.py`` has its role in the ``sets.json`` beside it; else None (unknown)."""
    if os.path.basename(root) == "mnist5k":
        return "tuned on"
    manifest = Path(root).parent / "sets.json"
    if manifest.is_file():
        for entry in json.loads(manifest.read_text(encoding="utf-8")).get("sets", []):
            if entry.get("name") == os.path.basename(root):
                return {"tune": "tuned on", "held_out": "held out"}.get(entry.get("role"))
    return None


def rounded(metrics: dict) -> dict:
    return {name: round(value, 4) for name, value in metrics.items()}


def pixel_baselines(
    x_train: np.ndarray,
    x_eval: np.ndarray | None,
    eval_labels: np.ndarray,
    num_classes: int,
    seed: int,
    whitening: tuple[int, ...],
    spectral: bool,
) -> dict:
    """One seed's scores of every pixel baseline; ``x_eval`` None: the training images are the
    evaluation images. The whitening is fitted without labels on all the images at once, once
    per number of dimensions in ``whitening`` (the k-means scores are keyed by it); spectral
    clustering uses the first."""
    import torch
    import torch.nn.functional as F

    from secu_plugin.baselines import kmeans_baseline, spectral_clustering
    from secu_plugin.core.neighbors import whitened

    found: dict = {"seed": seed, "seconds": {}}
    started = time.time()
    scores = kmeans_baseline(
        x_train, eval_labels, num_classes, seed, normalize=False, eval_features=x_eval
    )
    found["kmeans_pixels"] = rounded(scores)
    found["seconds"]["kmeans_pixels"] = round(time.time() - started, 2)

    everything = x_train if x_eval is None else np.concatenate([x_train, x_eval])
    found["kmeans_whitened_pixels"] = {}
    for dims in whitening:
        started = time.time()
        dim = min(dims, everything.shape[1], len(everything) - 1)
        space = F.normalize(whitened(torch.from_numpy(everything), dim), dim=1).numpy()
        train_space, eval_space = space[: len(x_train)], space[len(x_train) :]
        # already L2-normalized: k-means sees the space as the heads' neighbours do
        scores = kmeans_baseline(
            train_space,
            eval_labels,
            num_classes,
            seed,
            normalize=False,
            eval_features=None if x_eval is None else eval_space,
        )
        found["kmeans_whitened_pixels"][str(dim)] = rounded(scores)
        found["seconds"][f"kmeans_whitened_pixels_{dim}"] = round(time.time() - started, 2)
        if dims == whitening[0]:
            graph_space, graph_dim = train_space, dim

    if spectral and x_eval is None:
        started = time.time()
        assigned = spectral_clustering(torch.from_numpy(graph_space), num_classes, seed)
        scores = rounded(clustering_metrics(eval_labels, assigned))
        found["spectral_whitened_pixels"] = {**scores, "whitening_dim": graph_dim}
        found["seconds"]["spectral_whitened_pixels"] = round(time.time() - started, 2)
    return found


def set_baselines(
    root: str,
    labels_files: dict[str, str],
    seeds: tuple[int, ...] = (0,),
    whitening: tuple[int, ...] = (256,),
    spectral: bool = False,
) -> dict:
    """Every pixel baseline of one image set, for each seed (see the module's docstring)."""
    if not seeds:
        raise ValueError("give at least one seed")
    if not whitening or min(whitening) < 1:
        raise ValueError(f"whitening: give positive numbers of dimensions, got {whitening}")
    train = ImageDataset.from_source(root, split="train")
    evaluation = ImageDataset.from_source(root, split="test")
    train_labels = labels_of(train, root, labels_files)
    eval_labels = labels_of(evaluation, root, labels_files)
    num_classes = len(np.unique(train_labels[train_labels >= 0]))
    x_train = pixels(train)
    same = evaluation.paths == train.paths
    x_eval = None if same else pixels(evaluation)
    image, _ = train[0]
    runs = [
        pixel_baselines(x_train, x_eval, eval_labels, num_classes, seed, whitening, spectral)
        for seed in seeds
    ]
    return {
        "set": os.path.basename(os.path.normpath(root)),
        "tuned_on": role_of(os.path.normpath(root)),
        "train_images": len(train),
        "eval_split": evaluation.split,
        "eval_images": len(evaluation),
        "size": f"{image.size[0]}x{image.size[1]}",
        "mode": image.mode,
        "K": num_classes,
        "runs": runs,
    }


def score_csv(csv_path: str, root: str, labels_csv: str, num_images: int | None = None) -> dict:
    """ACC/NMI/ARI of a ``secu-cluster`` CSV against a labels file of the images under root."""
    table = read_labels(labels_csv)
    truth, clusters = [], []
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as file:
        for row in csv.DictReader(file):
            truth.append(table[os.path.relpath(row["path"], root)])
            clusters.append(int(row["cluster"]))
    if num_images is not None and len(truth) != num_images:
        raise ValueError(f"{csv_path} has {len(truth)} rows, expected {num_images}")
    metrics = clustering_metrics(np.array(truth), np.array(clusters))
    return {"csv": csv_path, "images": len(truth), **{k: round(v, 4) for k, v in metrics.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", help="mnist5k or image set roots (recipe --data)")
    parser.add_argument("--labels", nargs="*", default=[], metavar="ROOT=CSV")
    parser.add_argument("--score", metavar="CSV", help="score a secu-cluster CSV instead")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="k-means seeds")
    parser.add_argument(
        "--whitening", type=int, nargs="+", default=[256], help="whitened dimensions, each tried"
    )
    parser.add_argument("--spectral", action="store_true", help="add spectral clustering")
    parser.add_argument("--json", help="also write the results (with provenance) to this file")
    args = parser.parse_args(argv)
    from benchmarks.common import print_line, start_record, write_json

    record = start_record(seeds=args.seeds, sets=[])
    labels_files = {}
    for item in args.labels:
        root, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--labels expects ROOT=CSV, got {item!r}")
        labels_files[os.path.normpath(root)] = path
    if args.score:
        if len(labels_files) != 1:
            parser.error("--score needs exactly one --labels ROOT=CSV")
        ((root, labels_csv),) = labels_files.items()
        record["scored"] = score_csv(args.score, root, labels_csv)
        print_line(record["scored"])
    for root in args.roots:
        found = set_baselines(
            os.path.normpath(root),
            labels_files,
            tuple(args.seeds),
            tuple(args.whitening),
            args.spectral,
        )
        record["sets"].append(found)
        print_line(found)
    if args.json:
        write_json(args.json, record)
    return record


if __name__ == "__main__":
    main()
