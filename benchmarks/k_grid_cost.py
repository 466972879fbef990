"""What the default head grid (:data:`secu_plugin.model_selection.HEAD_GRID`, 14 heads) costs
against the earlier default heads K = 10, 20, 30, 40, 50, per run.

- frozen path: ``recipes/train_head.py`` (EfficientNet-Lite0 offline weights, 112 px) on
  ``--data`` with a fresh feature cache for each (a user's first run on a folder), heads
  10..50 then the default grid, seed 0, the feature ceiling off, ``--rounds`` times
  interleaved; the recipe's own seconds, each grid's fastest run compared;
- from scratch: the demo's (``mnist5k`` preset) loss step alone (:class:`SeCuLoss` with its
  bank, batch 64, dim 128, 5,000 instances, backward and the centers' SGD step), median ms over
  ``--steps`` steps for each grid, interleaved; the demo runs 40 x 78 such steps, so the grid
  adds about 3,120 x the difference (the network's step is the same for both).

Usage::

    python benchmarks/k_grid_cost.py --data /work/sets/mnist56flat --json docs/k_grid_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import print_line, start_record, write_json
from benchmarks.frozen_heldout import lite0_weights, recipe_command

OLD_HEADS = [10, 20, 30, 40, 50]


def loss_step_ms(heads: list[int], steps: int) -> list[float]:
    """Each step's milliseconds of the demo's loss, bank and centers' step with ``heads``."""
    import torch

    from secu_plugin import SeCuCenterBank, SeCuLoss
    from secu_plugin.train.presets import PRESETS

    torch.manual_seed(0)
    preset = PRESETS["mnist5k"]
    bank = SeCuCenterBank(
        num_instances=5000, dim=128, **{**asdict(preset.bank), "num_clusters": heads}
    )
    loss = SeCuLoss(bank, **asdict(preset.loss))
    optimizer = torch.optim.SGD(list(bank.centers), lr=0.1)
    features = torch.randn(64, 128, requires_grad=True)
    times = []
    for _ in range(steps):
        indices = torch.randperm(5000)[:64]
        started = time.perf_counter()
        loss(features, features + 0.1 * torch.randn(64, 128), indices).backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(1000 * (time.perf_counter() - started))
    return times[steps // 5 :]  # the first fifth warms up


def frozen_run(data: str, heads: list[int] | None, weights: Path, work: Path) -> dict:
    overrides = ["feature_ceiling=false"] + (
        [f"num_clusters={heads}".replace(" ", "")] if heads else []
    )
    command = recipe_command(data, 0, weights, work, work / "run", overrides)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.fspath(REPO_ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, check=True)
    final = json.loads(result.stdout.strip().splitlines()[-1])
    keep = (
        "seconds",
        "seconds_features",
        "seconds_heads",
        "recommended_num_clusters",
        "also_plausible",
    )
    return {"heads": heads or "default", "command": command, **{k: final.get(k) for k in keep}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="the frozen runs' --data")
    parser.add_argument("--weights", help="EfficientNet-Lite0 weights (written if missing)")
    parser.add_argument("--steps", type=int, default=150, help="loss steps per grid and round")
    parser.add_argument("--rounds", type=int, default=1, help="frozen runs per grid, interleaved")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "k_grid_cost.json"))
    args = parser.parse_args(argv)
    from secu_plugin.model_selection import HEAD_GRID

    report = start_record(old_heads=OLD_HEADS, grid=list(HEAD_GRID))
    with tempfile.TemporaryDirectory() as scratch:
        weights = Path(args.weights) if args.weights else lite0_weights(Path(scratch) / "w.st")
        # interleaved rounds: a shared machine that slows down slows both grids alike
        report["frozen"] = [
            frozen_run(args.data, heads, weights, Path(scratch) / f"{name}{round_}")
            for round_ in range(args.rounds)
            for name, heads in (("old", OLD_HEADS), ("grid", None))
        ]
    # each grid's fastest run: the noise of a shared machine only ever adds time
    old = min(run["seconds"] for run in report["frozen"][0::2])
    new = min(run["seconds"] for run in report["frozen"][1::2])
    report["frozen_seconds_fastest"] = {"old": old, "grid": new}
    report["frozen_slower_percent"] = round(100 * (new / old - 1), 1)
    rounds = {"old": [], "grid": []}
    for _ in range(2):  # interleaved rounds: a machine that slows down slows both alike
        for name, heads in (("old", OLD_HEADS), ("grid", list(HEAD_GRID))):
            times = sorted(loss_step_ms(heads, args.steps))
            rounds[name].append(round(times[len(times) // 2], 3))
    report["scratch_loss_step_ms"] = rounds
    extra = (min(rounds["grid"]) - min(rounds["old"])) * 40 * 78 / 1000
    report["scratch_demo_extra_seconds_estimate"] = round(extra, 1)
    write_json(args.json, report)
    print_line({k: v for k, v in report.items() if k != "provenance"})
    return report


if __name__ == "__main__":
    main()
