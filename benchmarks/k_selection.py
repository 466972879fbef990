"""How often the label-free K signal (:mod:`secu_plugin.model_selection`) recommends the head
whose K is the true number of classes (or the grid point nearest to it), with the default heads.

Sets (written under ``--work``), each with its true K:

- tune ``mnist``: MNIST-5k's digits 0-2, 0-4, 0-6, all (the built-in ``mnist5k``), and with
  scikit-learn's 1,797 digits (upscaled to 28 x 28) as ten more classes (K = 3, 5, 7, 10, 20);
- tune ``digits8``: scikit-learn's digits 0-4, all, and those with a random 1,797 of MNIST-5k
  as ten more classes (K = 5, 10, 20; upscaled to 28 x 28 where mixed);
- tune ``colour``: 2,000 MNIST-5k digits at 32 x 32 in random colours (``make_test_sets``'
  ``color32``), digits 0-2 and 0-6 (K = 3, 7);
- held-out ``letters_grey`` / ``letters_colour``: ``letters{5,7,10,13,20}_{grey28,colour64}``
  of ``benchmarks/make_test_sets.py --flat`` (``--per_class`` images per letter): flat folders,
  labels kept aside, so nothing reads K from class folders.

Each set and seed: ``recipes/train_head.py`` (EfficientNet-Lite0 offline weights, 112 px) with
the preset's default heads (no K given). Every candidate signal
(:mod:`secu_plugin.k_signals`) is recomputed from the saved model and the cached features on
the same heads; the heads' cluster ids are kept (``--work``/runs) for the agreement between
seeds. The signal and the "close" margin are chosen on the tune sets
(``--role tune``); the held-out sets are scored afterwards (``--role held_out``) to check it.
Writes ``--json`` after every run: the provenance, every run, a per-signal and per-set summary.

Usage::

    python benchmarks/k_selection.py --work /tmp/kselect --role tune --seeds 0 1 2
    python benchmarks/k_selection.py --work /tmp/kselect --role held_out --seeds 0 1 2 --resume
    python benchmarks/k_selection.py --work /tmp/kselect --summarize --merge other.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import add_to_earlier, start_record, write_json
from benchmarks.frozen_heldout import CACHE_LINE, lite0_weights, recipe_command
from benchmarks.k_selection_summary import summarize

SETS = {  # name -> (family, role, true K)
    "mnist_k3": ("mnist", "tune", 3),
    "mnist_k5": ("mnist", "tune", 5),
    "mnist_k7": ("mnist", "tune", 7),
    "mnist_k10": ("mnist", "tune", 10),
    "mnist_k20": ("mnist", "tune", 20),
    "digits8_k5": ("digits8", "tune", 5),
    "digits8_k10": ("digits8", "tune", 10),
    "digits8_k20": ("digits8", "tune", 20),
    "colour_k3": ("colour", "tune", 3),
    "colour_k7": ("colour", "tune", 7),
    **{
        f"letters{k}_{kind}": (f"letters_{kind[:-2]}", "held_out", k)
        for kind in ("grey28", "colour64")
        for k in (5, 7, 10, 13, 20)
    },
}


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"{int(label):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")


def _digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, 0..16 scaled to 0..255 and upscaled to 28 x 28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = [
        np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in small
    ]
    return np.stack(big), digits.target


def make_tune_sets(work: Path) -> dict[str, str]:
    """The tune sets as ``ROOT/<class>/`` folders (``mnist_k10`` is the built-in MNIST-5k)."""
    from sklearn.datasets import load_digits

    from benchmarks.make_test_sets import make_color32
    from secu_plugin.data import load_mnist5k

    mnist, mnist_labels = load_mnist5k()
    digits = load_digits()
    digits8 = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    digits28, digit_labels = _digits28()
    subset = np.sort(np.random.default_rng(0).permutation(len(mnist))[:1797])
    colour_root = work / "sets" / "color32"
    if not (colour_root / "done").exists():
        make_color32(colour_root, 0)
        (colour_root / "done").write_text("")
    sets = {
        **{
            f"mnist_k{k}": (mnist[mnist_labels < k], mnist_labels[mnist_labels < k])
            for k in (3, 5, 7)
        },
        "mnist_k20": (
            np.concatenate([mnist, digits28]),
            np.concatenate([mnist_labels, digit_labels + 10]),
        ),
        "digits8_k5": (digits8[digits.target < 5], digits.target[digits.target < 5]),
        "digits8_k10": (digits8, digits.target),
        "digits8_k20": (
            np.concatenate([digits28, mnist[subset]]),
            np.concatenate([digit_labels, mnist_labels[subset] + 10]),
        ),
    }
    paths = {"mnist_k10": "mnist5k"}
    for k in (3, 7):  # colour digits 0..k-1: the color32 images of those classes
        files = sorted(p for p in colour_root.glob("*/*.png") if int(p.parent.name) < k)
        sets[f"colour_k{k}"] = (
            np.stack([np.asarray(Image.open(p)) for p in files]),
            np.array([int(p.parent.name) for p in files]),
        )
    for name, (images, labels) in sets.items():
        root = work / "sets" / name
        if not (root / "done").exists():
            _write_folder(root, images, labels)
            (root / "done").write_text("")
        paths[name] = os.fspath(root)
    return paths


def make_held_out_sets(work: Path, names: list[str], per_class: int) -> dict[str, str]:
    """The letter sets as flat folders, labels in ``WORK/sets/NAME_labels.csv``."""
    out = work / "sets"
    missing = [n for n in names if not (out / f"{n}_labels.csv").exists()]
    if missing:
        command = [sys.executable, os.fspath(REPO_ROOT / "benchmarks" / "make_test_sets.py")]
        command += ["--out", os.fspath(out), "--per_class", str(per_class), "--flat"]
        subprocess.run([*command, "--sets", *missing], check=True, capture_output=True)
    return {n: os.fspath(out / n) for n in names}


def _true_labels(data: str, work: Path) -> np.ndarray | None:
    """The classes of a flat set's images in the order the recipe reads them."""
    from secu_plugin.data import ImageDataset

    table = work / "sets" / f"{Path(data).name}_labels.csv"
    if not table.exists():
        return None
    with open(table, newline="") as file:
        by_name = {row["file"]: row["label"] for row in csv.DictReader(file)}
    paths = ImageDataset.from_source(data, split="train").paths
    names = sorted(set(by_name.values()))
    return np.array([names.index(by_name[Path(p).name]) for p in paths])


def candidate_signals(
    run_dir: Path, cache_dir: str, seed: int, spaces: tuple[str, ...] = ("projections",)
) -> tuple[dict, np.ndarray]:
    """Every candidate signal per head, from the saved model and cached features (in each of
    ``spaces``: the projections the heads cluster, the backbone's features), and the heads'
    cluster ids (H, N)."""
    import torch

    from secu_plugin import SeCuModel
    from secu_plugin.data import FeatureCache
    from secu_plugin.k_signals import (
        knn_graph,
        knn_modularity,
        linear_generalisation,
        pca_basis,
        pca_silhouettes,
        sample_indices,
    )
    from secu_plugin.train.evaluation import predict_projections, project_features

    model = SeCuModel.from_pretrained(run_dir / "model")
    features = torch.as_tensor(
        np.asarray(FeatureCache(cache_dir).features[:, 0]), dtype=torch.float32
    )
    with torch.no_grad():
        projections = project_features(model.projection_head, features)
    predictions = predict_projections(projections, model.centers)
    sample = sample_indices(len(features), 2000, seed)
    embedded = {"projections": projections.numpy(), "features": features.numpy()}
    signals: dict[str, list[float]] = {}
    started = time.time()
    # empty clusters do not count
    labellings = [np.unique(ids, return_inverse=True)[1] for ids in predictions[:, sample]]
    for space in spaces:
        embeddings = embedded[space][sample]
        neighbors = knn_graph(embeddings, 10)
        reduced = {dims: pca_basis(embeddings, dims) for dims in (8, 16, 32)}
        values: dict[str, list[float]] = {}
        for dims in (8, 16, 32):
            values[f"silhouette_pca{dims}"] = pca_silhouettes(reduced[dims], labellings)
        for labels in labellings:
            modularity, kappa = knn_modularity(neighbors, labels)
            values.setdefault("modularity", []).append(modularity)
            values.setdefault("kappa", []).append(kappa)
            for name, chance in (("linear_generalisation", "kappa"), ("turtle", "uniform")):
                score = linear_generalisation(reduced[32], labels, seed, chance=chance)
                values.setdefault(name, []).append(score)
        for name, scores in values.items():
            signals[f"{name}_{space}"] = scores
    signals["seconds_signals"] = round(time.time() - started, 1)
    return signals, predictions


def cache_of(data: str, work: Path) -> str:
    """The feature cache (a folder of ``WORK/cache``) whose key names ``data``'s folder."""
    for key in sorted((work / "cache").glob("*/key.json")):
        description = json.loads(key.read_text())["key"]["data"]["description"]
        if description.endswith(f"/{Path(data).name}") or Path(data).name in description.split():
            return os.fspath(key.parent)
    raise ValueError(f"no feature cache in {work / 'cache'} for {data}")


def rescore(report: dict, work: Path) -> None:
    """The candidate signals anew, from its saved model and cache (no training), of every run
    scored by an earlier version of :func:`candidate_signals`."""
    for run in report["runs"]:
        if run["returncode"] != 0 or "turtle_projections" in run["signals"]:
            continue  # failed, or scored by this code already
        run_dir = work / "runs" / run["set"] / f"seed{run['seed']}"
        data = run["command"][run["command"].index("--data") + 1]
        cache = run.get("cache_dir") or cache_of(data, work)
        run["signals"], _ = candidate_signals(run_dir, cache, run["seed"])
        print(json.dumps({"rescored": run["set"], "seed": run["seed"]}), flush=True)


def run_one(name: str, data: str, seed: int, args, weights: Path) -> dict:
    work = Path(args.work)
    run_dir = work / "runs" / name / f"seed{seed}"
    overrides = ["feature_ceiling=false", *args.set]
    command = recipe_command(data, seed, weights, work, run_dir, overrides)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.fspath(REPO_ROOT)}
    started = time.time()
    locked = ["flock", args.lock, *command] if args.lock else command
    result = subprocess.run(locked, capture_output=True, text=True, env=environment, check=False)
    family, role, true_k = SETS[name]
    record = {"set": name, "family": family, "role": role, "seed": seed, "true_k": true_k}
    record.update(command=command, returncode=result.returncode)
    record["seconds_recipe_with_queue"] = round(time.time() - started, 1)
    if result.returncode != 0:
        record["output_tail"] = (result.stdout + result.stderr)[-3000:]
        return record
    final = json.loads(result.stdout.strip().splitlines()[-1])
    record.update({k: final.get(k) for k in ("seconds", "seconds_features", "seconds_heads")})
    results = json.loads((run_dir / "results.json").read_text())
    record["recipe_k_selection"] = results["k_selection"]
    record["heads"] = [h["num_clusters"] for h in results["k_selection"]["heads"]]
    caches = [m.group(1) for m in map(CACHE_LINE.search, result.stdout.splitlines()) if m]
    signals, predictions = candidate_signals(run_dir, caches[-1], seed)
    record["signals"], record["cache_dir"] = signals, caches[-1]
    np.save(run_dir / "predictions.npy", predictions.astype(np.int16))
    truth = _true_labels(data, work)
    if truth is None and results.get("evaluations"):  # class folders: the recipe scored them
        record["accuracy_per_head"] = {
            str(e["num_clusters"]): e["accuracy"] for e in results["evaluations"]
        }
    elif truth is not None:
        from secu_plugin.metrics import clustering_metrics

        record["accuracy_per_head"] = {
            str(k): round(clustering_metrics(truth, p.astype(np.int64))["accuracy"], 4)
            for k, p in zip(record["heads"], predictions)
        }
    return record


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="outputs/k_selection", help="sets, runs, cache")
    parser.add_argument("--role", choices=["tune", "held_out"], help="required unless --summarize")
    parser.add_argument("--sets", nargs="*", help="default: every set of --role")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides (NAME=VALUE)")
    parser.add_argument("--per_class", type=int, default=200, help="letter images per class")
    parser.add_argument("--weights", help="default: WORK/lite0.safetensors (written if missing)")
    parser.add_argument("--lock", help="run each recipe under `flock LOCK` (a shared machine)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --json")
    parser.add_argument("--summarize", action="store_true", help="no runs: --json's summary anew")
    parser.add_argument("--merge", nargs="*", default=[], help="with --summarize: add their runs")
    parser.add_argument("--rescore", action="store_true", help="with --summarize: signals anew")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "k_selection.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.summarize:  # the rule or the summary changed: every run's record is kept
        report = json.loads(Path(args.json).read_text())
        for other in map(json.loads, map(Path.read_text, map(Path, args.merge))):
            # runs of the same benchmark written to other files (run side by side)
            report["earlier_provenance"] += [*other["earlier_provenance"], other["provenance"]]
            done = {(r["set"], r["seed"]) for r in report["runs"] if r["returncode"] == 0}
            report["runs"] += [r for r in other["runs"] if (r["set"], r["seed"]) not in done]
        if args.rescore:
            rescore(report, work)
        # the figures (every pick, tally and rule) are this code's: its provenance is the
        # JSON's, the runs' own (who trained the heads) stay in earlier_provenance
        report["earlier_provenance"].append(report["provenance"])
        report.pop("summarized", None)
        report.update(summarize(report["runs"], work), provenance=start_record()["provenance"])
        write_json(args.json, report)
        return report
    if args.role is None:
        parser.error("--role is required (or --summarize)")
    names = args.sets or [n for n, (_, role, _) in SETS.items() if role == args.role]
    unknown = [n for n in names if n not in SETS or SETS[n][1] != args.role]
    if unknown:
        parser.error(f"not {args.role} sets: {unknown}")
    weights = Path(args.weights) if args.weights else lite0_weights(work / "lite0.safetensors")
    paths = make_tune_sets(work) if args.role == "tune" else {}
    if args.role == "held_out":
        paths = make_held_out_sets(work, names, args.per_class)
    report = start_record(earlier_provenance=[], runs=[])
    earlier = add_to_earlier(report, args.json) if args.resume else None
    if earlier is not None:  # a JSON of the same benchmark: add to it
        report["runs"] = [r for r in earlier["runs"] if r["returncode"] == 0]
    report["per_class_letters"] = args.per_class
    done = {(r["set"], r["seed"]) for r in report["runs"]}
    for seed in args.seeds:  # every set once before the next seed: partial results cover all
        for name in names:
            if (name, seed) in done:
                continue
            record = run_one(name, paths[name], seed, args, weights)
            report["runs"].append(record)
            report.update(summarize(report["runs"], work))
            write_json(args.json, report)
            brief = {k: record.get(k) for k in ("set", "seed", "returncode", "seconds")}
            brief["recipe_k"] = record.get("recipe_k_selection", {}).get("recommended_num_clusters")
            print(json.dumps(brief), flush=True)
    return report


if __name__ == "__main__":
    main()
