"""From-scratch SeCu (``recipes/train.py --data ROOT``, the auto preset) on sets of a
``make_test_sets.py`` manifest, next to k-means on the same pixels.

For each set and seed the recipe runs as a subprocess, as a user would run it (no preset, no
settings); k-means on the raw and on the whitened pixels (``benchmarks/kmeans_baseline.py``,
3 seeds, whitened to 20, 50 and 256 dimensions) runs once per set. The
demo's time on this machine is read from a run of the same day (``--demo_json``, the
``benchmarks/same_behaviour.py`` file) so that the time target (2,000 images in at most half the
demo's time) compares runs of one machine. Every raw run, its command and the provenance go to
``--json`` (default ``docs/scratch_heldout.json``), rewritten after each run.

Held-out sets are scored to check a change, never to choose one (docs/heldout.md).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/sets --sets mnist1797 letters10_grey28 \\
        --per_class 200
    python benchmarks/scratch_heldout.py --manifest /tmp/sets/sets.json --seeds 0
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (
    REPO_ROOT,
    add_to_earlier,
    manifest_fields,
    manifest_sets,
    print_line,
    run_recipe,
    start_record,
    write_json,
)
from benchmarks.kmeans_baseline import set_baselines


def run_one(entry: dict, seed: int, work: Path) -> dict:
    """One from-scratch run of the recipe on one set: its final line and its results.json."""
    run_dir = work / "runs" / entry["name"] / f"seed{seed}"
    command = [
        sys.executable,
        os.fspath(REPO_ROOT / "recipes" / "train.py"),
        "--data",
        entry["data"],
        "--output_dir",
        os.fspath(run_dir),
        "--seed",
        str(seed),
        "--no_progress",
        "--report_to",
        "none",
    ]
    result, record = run_recipe(command, entry, seed, images=entry["images"])
    if result.returncode != 0:
        return record
    record["summary"] = json.loads(result.stdout.strip().splitlines()[-1])
    record["results"] = json.loads((run_dir / "results.json").read_text())
    config = json.loads((run_dir / "model" / "config.json").read_text())
    record["resolved_from"] = config["training"]["preset"].get("resolved_from")
    return record


def pixel_baseline_accuracy(baseline: dict) -> tuple[float, float]:
    """k-means ACC on the raw pixels and on the best whitening of them (each a mean over the
    seeds): the best whitening is picked with the labels, which can only favour the rival."""
    runs = baseline["runs"]
    raw = float(np.mean([run["kmeans_pixels"]["accuracy"] for run in runs]))
    dims = runs[0]["kmeans_whitened_pixels"]
    whitened = max(
        float(np.mean([run["kmeans_whitened_pixels"][dim]["accuracy"] for run in runs]))
        for dim in dims
    )
    return round(raw, 4), round(whitened, 4)


def summarize(runs: list[dict], baselines: dict) -> dict:
    """Per set: ACC over the seeds (mean, min, max), k-means on the raw and the whitened pixels,
    the margin over the stronger of the two, seconds."""
    summary: dict = {}
    for name in dict.fromkeys(run["set"] for run in runs):
        done = [r for r in runs if r["set"] == name and r["returncode"] == 0]
        if not done:
            summary[name] = {"runs": 0}
            continue
        accuracy = [r["results"]["evaluations"][0]["accuracy"] for r in done]
        raw, whitened = pixel_baseline_accuracy(baselines[name])
        kmeans = max(raw, whitened)  # the stronger of the two plain baselines
        summary[name] = {
            "role": done[0]["role"],
            "images": done[0]["images"],
            "runs": len(done),
            "acc_mean": round(float(np.mean(accuracy)), 4),
            "acc_min": round(min(accuracy), 4),
            "acc_max": round(max(accuracy), 4),
            "kmeans_pixels_acc": raw,
            "kmeans_whitened_pixels_acc": whitened,
            "margin_over_kmeans": round(float(np.mean(accuracy)) - kmeans, 4),
            "seconds_median": float(np.median([r["summary"]["seconds"] for r in done])),
            "training_steps": done[0]["summary"]["steps"],
            "advice_given": sum("advice" in r["summary"] for r in done),
        }
    return summary


def demo_reference(path: Path) -> dict | None:
    """The demo's seconds and date from a ``same_behaviour.py`` file (the newest run in it)."""
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    demo = data["runs"]["after"]["demo"]
    return {
        "file": os.fspath(path),
        "date_utc": data["provenance"]["date_utc"],
        "seconds": demo["seconds"],
        "epochs": demo["figures"]["epochs"],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="sets.json of make_test_sets.py")
    parser.add_argument("--sets", nargs="*", help="these sets of the manifest only")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--work", default="outputs/scratch_heldout", help="runs go here")
    parser.add_argument("--demo_json", default=os.fspath(REPO_ROOT / "docs/same_behaviour.json"))
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "scratch_heldout.json"))
    parser.add_argument(
        "--add", action="store_true", help="keep the runs already in --json (one set at a time)"
    )
    args = parser.parse_args(argv)
    report = start_record()  # at the start: the load before the run
    manifest, chosen, _ = manifest_sets(parser, args.manifest, args.sets)
    report.update(
        **manifest_fields(args.manifest, manifest),
        demo_reference=demo_reference(Path(args.demo_json)),
        sets=[e["name"] for e in chosen],
        seeds=args.seeds,
        kmeans_pixels={},
        runs=[],
    )
    # earlier invocations: their runs and provenance
    earlier = add_to_earlier(report, args.json) if args.add else None
    if earlier is not None:
        report["sets"] = list(dict.fromkeys([*earlier["sets"], *report["sets"]]))
        report["kmeans_pixels"] = earlier["kmeans_pixels"]
        report["runs"] = earlier["runs"]
    done = {(run["set"], run["seed"]) for run in report["runs"]}
    if any(entry["data"] == "mnist5k" for entry in chosen):
        parser.error("mnist5k is the demo's data: use the demo's own figures")
    for entry in chosen:  # every baseline first: a summary covers every set
        # k-means with 10 restarts; the whitening of wide images (a D x D eigendecomposition,
        # D = 12,288 for 64 px colour) is the slow part, so one seed
        report["kmeans_pixels"][entry["name"]] = set_baselines(
            entry["data"], {}, seeds=(0,), whitening=(20, 50, 256)
        )
    write(report, Path(args.json))
    for entry in chosen:
        for seed in [s for s in args.seeds if (entry["name"], s) not in done]:
            record = run_one(entry, seed, Path(args.work))
            report["runs"].append(record)
            write(report, Path(args.json))
            brief = {k: record[k] for k in ("set", "seed", "returncode", "seconds_recipe")}
            print_line({**brief, **report["summary"][entry["name"]]})
    return report


def write(report: dict, path: Path) -> None:
    report["summary"] = summarize(report["runs"], report["kmeans_pixels"])
    write_json(path, report)


if __name__ == "__main__":
    main()
