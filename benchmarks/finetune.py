"""Fine-tuning from the frozen-head model (``recipes/finetune.py``) on sets of a
``make_test_sets.py`` manifest, tune and held-out: the start's ACC beside the fine-tuned one.

For each set and seed: ``recipes/train_head.py`` (EfficientNet-Lite0, offline weights, 112 px)
trains the start, then ``recipes/finetune.py --model`` fine-tunes it; both run as subprocesses
with their exact commands recorded. Every run, the per-epoch history (the label-free
criterion, cluster-size balance, and ACC, which the run never reads), the provenance and the
role of each set go to ``--json`` (default ``docs/finetune.json``), rewritten after each run.

Held-out sets are scored to check a change, never to choose one (docs/heldout.md).

A configuration of the fine-tuning tried is a ``--variant`` (a name for its ``--finetune_args``);
``--add`` appends the runs to the JSON's earlier ones (each run keeps its variant, arguments,
commit and date), and ``summary`` gives, per set and variant, every seed's start and kept ACC
and the best ACC any epoch reached (read with the labels: what a perfect choice of epoch
would have kept, an upper bound of the variant, never a choice).

Usage::

    python benchmarks/make_test_sets.py --out /tmp/secu_sets --sets mnist5k letters10_grey28
    python benchmarks/finetune.py --manifest /tmp/secu_sets/sets.json --work /tmp/finetune
    python benchmarks/finetune.py --manifest /tmp/secu_sets/sets.json --sets digits8 --add \
        --variant lr3e-5 --finetune_args --set lr=3e-5
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
    add_to_earlier,
    manifest_fields,
    manifest_sets,
    print_line,
    run_timed,
    start_record,
    write_json,
)
from benchmarks.frozen_heldout import lite0_weights, recipe_command


def run_one(
    entry: dict, seed: int, weights: Path, work: Path, finetune_args: list[str], variant: str
) -> dict:
    """The start (frozen heads) and its fine-tuning on one set with one seed."""
    run_dir = work / "runs" / entry["name"] / variant / f"seed{seed}"
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
    record: dict = {
        "set": entry["name"],
        "role": entry["role"],
        "seed": seed,
        "variant": variant,
        "finetune_args": finetune_args,
    }
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
    record["acc_best_epoch"] = max(h["accuracy"] for h in record["history"])  # labels: a bound
    return record


def summarize(runs: list[dict]) -> dict:
    """Per set and variant: every seed's start, kept and best-epoch ACC, and the smallest
    gain over the seeds (kept - start, and best epoch - start)."""
    summary: dict = {}
    for run in runs:
        if "acc_finetuned" not in run:
            continue
        entry = summary.setdefault(run["set"], {}).setdefault(
            run["variant"], {"role": run["role"], "seeds": [], "start": [], "kept": [], "best": []}
        )
        entry["seeds"].append(run["seed"])
        entry["start"].append(run["acc_start"])
        entry["kept"].append(run["acc_finetuned"])
        entry["best"].append(run["acc_best_epoch"])
    for variants in summary.values():
        for entry in variants.values():
            pairs = list(zip(entry["start"], entry["kept"], entry["best"]))
            entry["min_gain_kept"] = round(min(k - s for s, k, _ in pairs), 4)
            entry["min_gain_best_epoch"] = round(min(b - s for s, _, b in pairs), 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="make_test_sets.py's sets.json")
    parser.add_argument("--sets", nargs="*", help="default: every labelled set of the manifest")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--work", default="/tmp/finetune_bench", help="weights, caches, runs")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "finetune.json"))
    parser.add_argument("--variant", default="default", help="a name for --finetune_args")
    parser.add_argument("--add", action="store_true", help="keep the JSON's earlier runs")
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
    earlier = add_to_earlier(output, args.json) if args.add else None
    runs = [] if earlier is None else earlier["runs"]
    for run in runs:  # a file from before variants: its runs are its one configuration's
        run.setdefault("finetune_args", earlier.get("finetune_args", []))
        run.setdefault("variant", " ".join(run["finetune_args"]) or "default")
        run.setdefault("commit", earlier["provenance"]["commit"])
        if "history" in run:
            run.setdefault("acc_best_epoch", max(h["accuracy"] for h in run["history"]))
    output.update(
        **manifest_fields(args.manifest, manifest),
        seeds=args.seeds,
        finetune_args=args.finetune_args,
        roles={**(earlier or {}).get("roles", {}), **{e["name"]: e["role"] for e in entries}},
        runs=runs,
    )
    made = {k: output["provenance"][k] for k in ("commit", "dirty", "date_utc")}
    for entry in entries:
        for seed in args.seeds:
            record = run_one(entry, seed, weights, work, args.finetune_args, args.variant)
            output["runs"].append({**record, **made})
            brief = ("set", "variant", "seed", "acc_start", "acc_finetuned", "acc_best_epoch")
            print_line({k: record.get(k) for k in brief})
            output["summary"] = summarize(output["runs"])
            write_json(args.json, output)


if __name__ == "__main__":
    main()
