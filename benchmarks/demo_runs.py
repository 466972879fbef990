"""The demo's runs, one file: this release's run beside the earlier releases' as the range.

The demo (``accelerate launch recipes/train.py``, 40 epochs on MNIST-5k) takes about 20 minutes
on 2 CPU cores, so it runs once per release, not over seeds; the earlier releases' runs, each
with the date and commit of the file that holds it, are its range. This script types no number:
it reads the raw files and writes ``docs/demo_runs.json``, which the README renders.

- this release: ``docs/same_behaviour.json`` (``benchmarks/same_behaviour.py``), whose demo ran
  in the checkouts before and after a refactoring, byte-identical weights: each run with its
  commit, its total seconds and its seconds per epoch (total / epochs: the machine's speed that
  day, loading and evaluation included);
- earlier releases: each ``results.json`` kept under ``docs/`` (``--earlier``), dated by the last git
  commit that changed it (its run recorded no date, commit or time).

    python benchmarks/demo_runs.py --json docs/demo_runs.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import REPO_ROOT, start_record, write_json

FIGURES = ("accuracy", "nmi", "ari", "memory_accuracy", "memory_nmi", "memory_ari")


def committed_in(path: str) -> dict:
    """The last commit that changed ``path``, and its date: when an older raw file was
    committed (empty outside a git checkout)."""
    found = subprocess.run(
        ["git", "log", "-1", "--format=%H %cI", "--", path],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return {"commit": found[-2], "date": found[-1]} if len(found) >= 2 else {}


def this_release(path: str) -> list[dict]:
    """The demo runs of a ``same_behaviour.py`` record, one per checkout."""
    record = json.loads((REPO_ROOT / path).read_text(encoding="utf-8"))
    runs = []
    for side, run in record["runs"].items():
        demo = run["demo"]
        figures = demo["figures"]
        seconds = demo.get("seconds")
        runs.append(
            {
                "release": "this release",
                "source": f"{path} runs.{side}.demo",
                "commit": run["commit"],
                "date": record["provenance"]["date_utc"][:10],
                "command": run["commands"]["demo"],
                "epochs": figures["epochs"],
                **{name: figures[name] for name in FIGURES},
                "seconds": seconds,
                "seconds_per_epoch": round(seconds / figures["epochs"], 1) if seconds else None,
                "model_sha256": demo["model_sha256"],
            }
        )
    return runs


def earlier_release(path: str) -> dict:
    """An earlier release's ``results.json``: the ``predict`` and ``memory`` evaluations."""
    results = json.loads((REPO_ROOT / path).read_text(encoding="utf-8"))
    by_assignment = {e["assignment"]: e for e in results["evaluations"]}
    predicted, memory = by_assignment["predict"], by_assignment.get("memory", {})
    added = committed_in(path)
    return {
        "release": "earlier release",
        "source": path,
        "commit": added.get("commit"),
        "date": added.get("date", "")[:10] or None,
        "command": "accelerate launch recipes/train.py",
        "epochs": results.get("epochs", 40),
        **{name: round(predicted[name], 4) for name in ("accuracy", "nmi", "ari")},
        **{
            f"memory_{name}": round(memory[name], 4)
            for name in ("accuracy", "nmi", "ari")
            if name in memory
        },
        "seconds": None,
        "seconds_per_epoch": None,
    }


def demo_runs(current: str, earlier: list[str]) -> dict:
    """Every run, and the range (min, max) of each figure over all of them."""
    runs = [*this_release(current), *(earlier_release(path) for path in earlier)]
    ranges = {
        name: [
            min(r[name] for r in runs if r.get(name) is not None),
            max(r[name] for r in runs if r.get(name) is not None),
        ]
        for name in (*FIGURES, "seconds", "seconds_per_epoch")
        if any(r.get(name) is not None for r in runs)
    }
    return start_record(tuned_on=True, dataset="mnist5k", runs=runs, range=ranges)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--current", default="docs/same_behaviour.json")
    parser.add_argument("--earlier", nargs="*", default=["docs/mnist5k_results.json"])
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args(argv)
    record = demo_runs(args.current, args.earlier)
    if args.json:
        write_json(args.json, record)
    else:
        print(json.dumps(record, indent=2))
    return record


if __name__ == "__main__":
    main()
