"""Fine-tuning from the frozen-head model (``recipes/finetune.py``) on sets of a
``make_test_sets.py`` manifest, tune and held-out: the start's ACC beside the fine-tuned one.

For each set and seed: ``recipes/train_head.py`` (EfficientNet-Lite0, offline weights, 112 px)
trains the start, then ``recipes/finetune.py --model`` fine-tunes it; both run as subprocesses
with their exact commands recorded. Every run, the per-epoch history (the label-free
criterion, cluster-size balance, and ACC, which the run never reads), the provenance and the
role of each set go to ``--json`` (default ``docs/finetune.json``), rewritten after each run.

Held-out sets are scored to check a change, never to choose one (docs/heldout.md).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets --sets mnist5k letters10_grey28
    python benchmarks/finetune.py --manifest /tmp/secu_sets/sets.json --work /tmp/finetune
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import (
    REPO_ROOT,
    manifest_fields,
    manifest_sets,
    print_line,
    run_timed,
    start_record,
    write_json,
)
from benchmarks.frozen_heldout import lite0_weights, recipe_command


def run_one(entry: dict, seed: int, weights: Path, work: Path, finetune_args: list[str]) -> dict:
    """The start (frozen heads) and its fine-tuning on one set with one seed."""
    run_dir = work / "runs" / entry["name"] / f"seed{seed}"
    k = len(entry["classes"])
    heads = f"num_clusters={[k * m for m in range(1, 6)]}".replace(" ", "")
    start_command = recipe_command(entry["data"], seed, weights, work, run_dir / "start", [heads])
    finetune_command = [
        sys.executable,
        os.fspath(REPO_ROOT / "recipes" / "finetune.py"),
        "--model",
        os.fspath(run_dir / "start"),
        "--data",
        entry["data"],
        "--output_dir",
        os.fspath(run_dir / "finetuned"),
        "--cache_dir",
        os.fspath(work / "cache"),
        "--seed",
        str(seed),
        "--no_progress",
        *finetune_args,
    ]
    record: dict = {"set": entry["name"], "role": entry["role"], "seed": seed}
    for stage, command in (("start", start_command), ("finetune", finetune_command)):
        result, seconds = run_timed(command, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        record[stage] = {"command": command, "returncode": result.returncode, "seconds": seconds}
        if result.returncode != 0:
            record[stage]["output_tail"] = (result.stdout + result.stderr)[-3000:]
            return record
        record[stage]["summary"] = json.loads(result.stdout.strip().splitlines()[-1])
    report = json.loads((run_dir / "finetuned" / "results.json").read_text())
    record["history"] = report["history"]
    summary = record["finetune"]["summary"]
    record["acc_start_recipe"] = record["start"]["summary"].get("accuracy")
    record["acc_start"] = summary.get("start_accuracy")  # the same start, scored by finetune.py
    record["acc_finetuned"] = summary.get("accuracy")
    record["kept_epoch"] = summary["kept_epoch"]
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="make_test_sets.py's sets.json")
    parser.add_argument("--sets", nargs="*", help="default: every labelled set of the manifest")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--work", default="/tmp/finetune_bench", help="weights, caches, runs")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "finetune.json"))
    parser.add_argument(
        "--finetune_args",
        nargs=argparse.REMAINDER,
        default=[],
        help="passed to recipes/finetune.py (last on the command line)",
    )
    args = parser.parse_args()
    output = start_record()  # at the start: the load before the run
    # the sets with class folders, in the order asked (a flat folder's labels are aside)
    manifest, entries, _ = manifest_sets(parser, args.manifest, args.sets)
    work = Path(args.work)
    weights = lite0_weights(work / "lite0.safetensors")
    output.update(
        **manifest_fields(args.manifest, manifest),
        seeds=args.seeds,
        finetune_args=args.finetune_args,
        roles={e["name"]: e["role"] for e in entries},
        runs=[],
    )
    for entry in entries:
        for seed in args.seeds:
            record = run_one(entry, seed, weights, work, args.finetune_args)
            output["runs"].append(record)
            brief = ("set", "role", "seed", "acc_start", "acc_finetuned", "kept_epoch")
            print_line({k: record.get(k) for k in brief})
            write_json(args.json, output)


if __name__ == "__main__":
    main()
