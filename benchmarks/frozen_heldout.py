"""Frozen-backbone SeCu heads on every set of a ``make_test_sets.py`` manifest, tune and held-out,
next to the ceiling of the same cached features.

For each labelled set, each variant (default: the preset as it is) and each seed,
``recipes/train_head.py`` runs as a subprocess with the offline ImageNet EfficientNet-Lite0
weights at 112 px (docs/frozen.md's offline lines); the recipe writes the ceiling of the
features it cached (:func:`secu_plugin.baselines.feature_ceiling`) into its results.json.
Every raw run (its exact command, whether its feature cache was cold or warm, the seconds), and
the provenance of the whole benchmark go to ``--json`` (default ``docs/frozen_heldout.json``),
rewritten after each run, with a per-set summary that says whether the issue's targets are met.
A set without class folders (``mnist56flat``) is skipped: its labels are aside.

Held-out sets are scored to check a change, never to choose one (docs/heldout.md).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets
    python benchmarks/frozen_heldout.py --manifest /tmp/secu_sets/sets.json
    python benchmarks/frozen_heldout.py --manifest /tmp/secu_sets/sets.json \\
        --sets letters10_grey28 --seeds 0 --partial          # one set, one seed
    python benchmarks/frozen_heldout.py --manifest /tmp/secu_sets/sets.json --sets mnist5k \\
        --variants neighbors whitening_off:neighbor_whitening=0 \\
        views:pairs=views,augmented_views=2 --json docs/frozen_pair_modes.json
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import manifest_sets, print_line, run_recipe, start_record, write_json

# What the recipe prints when it opens a feature cache; the last one is the evaluation split's.
CACHE_LINE = re.compile(r"(?:reusing the cached features in|\) into) (\S.*)$")


def recipe_command(
    data: str, seed: int, weights: Path, work: Path, run_dir: Path, overrides: list[str]
) -> list[str]:
    """The recipe's command line; ``overrides``: its ``--set NAME=VALUE`` items."""
    return [
        sys.executable,
        os.fspath(REPO_ROOT / "recipes" / "train_head.py"),
        "--data",
        data,
        "--backbone",
        "tf_efficientnet_lite0",
        "--pretrained_file",
        os.fspath(weights),
        "--input_size",
        "112",
        "--cache_dir",
        os.fspath(work / "cache"),
        "--output_dir",
        os.fspath(run_dir),
        "--seed",
        str(seed),
        "--no_progress",
        "--report_to",
        "none",
        "--set",
        *overrides,
    ]


@contextlib.contextmanager
def holding(lock: str | None):
    """Holds ``flock(lock)`` (a machine shared with other jobs) while the block runs, so a
    run's seconds never include the wait for it."""
    if lock is None:
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lite0_weights(path: Path) -> Path:
    """The offline EfficientNet-Lite0 weights, written once from their pip package."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "secu_plugin.models.pretrained", os.fspath(path)], check=True
        )
    return path


def run_one(
    entry: dict,
    seed: int,
    weights: Path,
    work: Path,
    extra: list[str],
    variant: str = "default",
    true_k_only: bool = False,
    lock: str | None = None,
) -> dict:
    """One recipe run on one set; the recipe itself adds the ceiling of the features it cached
    to its results.json (``feature_ceiling``). ``extra``: ``NAME=VALUE`` settings for the
    recipe; ``true_k_only``: one head, of K = the set's number of classes. Whether the run found its features cached (warm) or embedded them (cold) is read
    from its output."""
    run_dir = work / "runs" / entry["name"] / variant / f"seed{seed}"
    overrides = list(extra)
    if not any(o.startswith("num_clusters=") for o in overrides):
        # Heads of K, 2K, ..., 5K for a set of K classes: for K = 10 the preset's default.
        k = len(entry["classes"])
        grid = [k] if true_k_only else [k * m for m in range(1, 6)]
        overrides.append(f"num_clusters={grid}".replace(" ", ""))
    command = recipe_command(entry["data"], seed, weights, work, run_dir, overrides)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with holding(lock):
        result, record = run_recipe(command, entry, seed, environment, variant=variant)
    if result.returncode != 0:
        return record
    record["results"] = json.loads((run_dir / "results.json").read_text())
    lines = result.stdout.splitlines()
    caches = [m.group(1) for m in map(CACHE_LINE.search, lines) if m]
    if not caches:
        raise ValueError(f"{entry['name']}: the recipe printed no feature cache directory")
    record["cache_dir"] = caches[-1]
    record["feature_cache"] = "warm" if any("reusing the cached" in x for x in lines) else "cold"
    record["ceiling"] = record["results"].get("feature_ceiling")
    if record["ceiling"] is None:
        raise ValueError(f"{entry['name']}: the recipe wrote no feature_ceiling (labels?)")
    return record


def summary_key(record: dict) -> str:
    """A set's name, with its variant when not the default one."""
    variant = record.get("variant", "default")
    return record["set"] if variant == "default" else f"{record['set']} [{variant}]"


def summarize(runs: list[dict]) -> dict:
    """Per set (and variant): the heads' ACC over the seeds (mean, min, max) beside the plain
    clusterings, the 5-NN agreement and the probe, whether the targets are met, the seconds."""
    summary: dict = {}
    for name in dict.fromkeys(map(summary_key, runs)):
        done = [r for r in runs if summary_key(r) == name and r["returncode"] == 0]
        if not done:
            summary[name] = {"runs": 0}
            continue
        heads = [r["results"]["evaluations"][0]["accuracy"] for r in done]
        ceilings = [r["ceiling"] for r in done]
        methods = ("kmeans_raw", "kmeans_whitened", "spectral_knn_graph", "linear_probe")
        means = {m: round(float(np.mean([c[m]["accuracy"] for c in ceilings])), 4) for m in methods}
        agreement = round(float(np.mean([c["knn_agreement"]["whitened"] for c in ceilings])), 4)
        best_plain = max(means[m] for m in methods[:3])
        heads_mean = round(float(np.mean(heads)), 4)
        seconds = {
            kind: [r["seconds_recipe"] for r in done if r.get("feature_cache") == kind]
            for kind in ("cold", "warm")
        }
        summary[name] = {
            "role": done[0]["role"],
            "variant": done[0].get("variant", "default"),
            "runs": len(done),
            "seeds": [r["seed"] for r in done],
            "heads_acc_mean": heads_mean,
            "heads_acc_min": round(min(heads), 4),
            "heads_acc_max": round(max(heads), 4),
            **{f"{m}_acc_mean": v for m, v in means.items()},
            "knn_agreement_whitened": agreement,
            "best_plain_clustering_acc_mean": best_plain,
            # the targets: >= 0.85 x the 5-NN agreement, >= best plain clustering + 0.05
            "meets_agreement_target": heads_mean >= 0.85 * agreement,
            "meets_plain_clustering_target": heads_mean >= best_plain + 0.05,
            "seconds_cold": [round(x, 1) for x in seconds["cold"]],
            "seconds_warm_mean": round(float(np.mean(seconds["warm"])), 1)
            if seconds["warm"]
            else None,
        }
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
    parser.add_argument("--lock", help="hold this flock file during each run (a shared machine)")
    parser.add_argument(
        "--true_k_only", action="store_true", help="one head per run, at the true K (cheaper)"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="NAME=VALUE", help="to the recipe")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=["default"],
        metavar="NAME[:NAME=VALUE,...]",
        help="recipe settings compared on every set, e.g. whitening_off:neighbor_whitening=0",
    )
    args = parser.parse_args(argv)
    manifest, chosen, skipped = manifest_sets(parser, args.manifest, args.sets)
    work = Path(args.work)
    weights = Path(args.weights) if args.weights else lite0_weights(work / "lite0.safetensors")
    extra = ([f"epochs={args.epochs}"] if args.epochs else []) + args.set
    variants = []
    for item in args.variants:
        name, _, settings = item.partition(":")
        variants.append((name, [s for s in settings.split(",") if s]))
    report = {
        **start_record(),  # its provenance first: the load before the runs
        "partial": args.partial,
        "manifest": os.fspath(args.manifest),
        "manifest_provenance": manifest.get("provenance"),
        "sets": [e["name"] for e in chosen],
        "skipped_unlabelled": skipped,
        "seeds": args.seeds,
        "true_k_only": args.true_k_only,
        "variants": dict(variants),
        "runs": [],
    }
    # Seed by seed over all sets: a benchmark stopped early has every set at its first seeds.
    for seed in args.seeds:
        for entry in chosen:
            for variant, settings in variants:
                record = run_one(
                    entry,
                    seed,
                    weights,
                    work,
                    extra + settings,
                    variant,
                    args.true_k_only,
                    args.lock,
                )
                report["runs"].append(record)
                report["summary"] = summarize(report["runs"])
                write_json(args.json, report)
                brief = {k: record[k] for k in ("set", "seed", "returncode", "seconds_recipe")}
                print_line({**brief, **report["summary"][summary_key(record)]})
    return report


if __name__ == "__main__":
    main()
