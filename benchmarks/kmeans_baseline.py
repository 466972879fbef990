"""k-means on raw pixels: the baseline that a SeCu run on the same images must beat.

For each image set (a ``--data`` root as the recipes read it: ``ROOT/<class>/``,
``ROOT/train|test/<class>/``, a flat folder, ...), scikit-learn's ``KMeans`` (K = number of
classes, ``n_init=10``) is fitted on the training images' pixels (flattened, scaled to [0, 1];
grey images one value per pixel, RGB three) and predicts the evaluation split, which is the
training split where the set has no other, the same images the recipe evaluates. ACC
(Hungarian), NMI and ARI as the recipe reports them (``secu_plugin.metrics``).

A flat folder has no labels: pass them with ``--labels ROOT=CSV`` (``file,label`` rows, the file
names relative to ROOT, as ``make_test_sets.py`` writes them).

``--score CSV`` scores a ``secu-cluster`` CSV (``path,cluster,confidence``) against such a
labels file instead: how the clusters of a run on unlabeled images are measured.

Usage::

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


def kmeans_baseline(root: str, labels_files: dict[str, str], seed: int = 0) -> dict:
    from sklearn.cluster import KMeans

    started = time.time()
    train = ImageDataset.from_source(root, split="train")
    evaluation = ImageDataset.from_source(root, split="test")
    train_labels = labels_of(train, root, labels_files)
    eval_labels = labels_of(evaluation, root, labels_files)
    num_classes = len(np.unique(train_labels[train_labels >= 0]))
    x_train = pixels(train)
    x_eval = x_train if evaluation.paths == train.paths else pixels(evaluation)
    kmeans = KMeans(n_clusters=num_classes, n_init=10, random_state=seed).fit(x_train)
    metrics = clustering_metrics(eval_labels, kmeans.predict(x_eval))
    image, _ = train[0]
    return {
        "set": os.path.basename(os.path.normpath(root)),
        "train_images": len(train),
        "eval_split": evaluation.split,
        "eval_images": len(evaluation),
        "size": f"{image.size[0]}x{image.size[1]}",
        "mode": image.mode,
        "K": num_classes,
        **{f"kmeans_{name}": round(value, 4) for name, value in metrics.items()},
        "seconds": round(time.time() - started, 1),
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


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="*", help="image set roots (recipe --data folders)")
    parser.add_argument("--labels", nargs="*", default=[], metavar="ROOT=CSV")
    parser.add_argument("--score", metavar="CSV", help="score a secu-cluster CSV instead")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    labels_files = {}
    for item in args.labels:
        root, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--labels expects ROOT=CSV, got {item!r}")
        labels_files[os.path.normpath(root)] = path
    results = []
    if args.score:
        if len(labels_files) != 1:
            parser.error("--score needs exactly one --labels ROOT=CSV")
        (root, labels_csv), = labels_files.items()  # fmt: skip
        results.append(score_csv(args.score, root, labels_csv))
    for root in args.roots:
        results.append(kmeans_baseline(os.path.normpath(root), labels_files, seed=args.seed))
    for result in results:
        print(json.dumps(result), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
