"""How long the README's first command takes and where its time goes: timed runs over seeds in
this checkout, optionally beside an earlier checkout, and a cProfile split of its steps.

    # this checkout alone (--before_seeds empty): --before is still profiled and its commit kept
    python benchmarks/demo_speed.py --before ../checkout-at-3833424 --seeds 0 1 2 \\
        --before_seeds --work /tmp/demo_speed --json docs/demo_speed.json
    # side by side (the default --before_seeds 0): the earlier checkout's seeds alternate in
    python benchmarks/demo_speed.py --before ../checkout-at-3833424 --seeds 0 1 2 \\
        --before_seeds 0 --work /tmp/demo_speed --json docs/demo_speed.json

Each run is the README's command (``accelerate launch recipes/train.py``, with ``--seed`` and
its own output folder) in its checkout (``PYTHONPATH``) with this interpreter's packages,
timed from launch to exit (the whole command, install excluded); its training time is the
sum of its epochs (results.json). With ``--before_seeds``, a seed in both lists runs in the
earlier checkout, then in this one, so both meet the same machine. The profile runs each
checkout's recipe under cProfile for ``--profile_steps`` steps (0: no profile) and splits a
step's time into its parts (cProfile's overhead inflates the Python-heavy ones); evaluation
and export are the timed runs' time after their last epoch.

The JSON (rewritten after each run) holds ``commits`` (of both checkouts), ``runs`` (one per
timed run: checkout, seed, command, times, figures), ``profiles`` (per checkout: start-up and
ms per step of each part) and ``summary`` (per checkout, the times' and accuracy's medians and
values; the after/before ratios when both checkouts ran).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import commit_of, print_line, record_recipe_modules, start_record, write_json
from secu_plugin.train.runtime import MODULES_FOLDER_VARIABLE

THIS_CHECKOUT = Path(__file__).resolve().parents[1]

FIGURES = ("accuracy", "nmi", "ari", "memory_accuracy", "memory_nmi", "memory_ari")
# (part, file path ending, function name): where cProfile's cumulative times are read
PROFILE_PARTS = (
    ("data and views", "torch/utils/data/dataloader.py", "_next_data"),
    ("forward", "recipes/train.py", "forward"),
    ("loss and bank", "secu_plugin/core/loss.py", "forward"),
    ("backward", "torch/autograd/graph.py", "_engine_run_backward"),
    ("optimizer", "torch/optim/optimizer.py", "wrapper"),
    ("epoch ends and checkpoints", "secu_plugin/train/scaffold.py", "end_epoch"),
    ("training loop", "recipes/train.py", "main"),
)


def timed_demo(checkout: Path, output: Path, seed: int) -> dict:
    """One run of the README's first command in ``checkout``: its whole time, its phases
    (lines stamped as they arrive) and its figures."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    script = str(checkout / "recipes" / "train.py")
    command = [accelerate, "launch", script, "--output_dir", str(output), "--seed", str(seed)]
    command += ["--no_progress", "--report_to", "none"]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    if checkout == THIS_CHECKOUT:  # the recipe says which modules it ran (not an older checkout)
        env[MODULES_FOLDER_VARIABLE] = os.fspath(record_recipe_modules())
    started = time.time()
    stamped: list[tuple[float, str]] = []
    with subprocess.Popen(
        command, cwd=checkout, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        for line in process.stdout:
            stamped.append((time.time() - started, line.rstrip("\n")))
    whole = time.time() - started
    if process.returncode != 0:
        tail = "\n".join(line for _, line in stamped[-30:])
        raise RuntimeError(f"{command} failed ({process.returncode}):\n{tail}")
    final = json.loads([line for _, line in stamped if line.startswith("{")][-1])
    epochs = json.loads((output / "results.json").read_text())["seconds"]["epochs"]
    epoch_lines = [at for at, line in stamped if line.startswith("epoch ")]
    first_epoch_started = epoch_lines[0] - epochs[0]
    return {
        "seed": seed,
        "command": command,
        "seconds_whole_command": round(whole, 1),
        "seconds_training": round(sum(epochs), 1),
        "seconds_per_epoch_median": sorted(epochs)[len(epochs) // 2],
        "seconds_start_up": round(first_epoch_started, 1),
        "seconds_between_epochs": round(epoch_lines[-1] - first_epoch_started - sum(epochs), 1),
        "seconds_evaluation_and_export": round(whole - epoch_lines[-1], 1),
        **{k: final.get(k) for k in ("epochs", *FIGURES)},
        "recommended_num_clusters": final.get("recommended_num_clusters"),
    }


def profile(checkout: Path, output: Path, steps: int) -> dict:
    """Seconds per training step of each part, and the start-up, from cProfile."""
    stats_file = output.with_suffix(".pstats")
    command = [sys.executable, "-m", "cProfile", "-o", str(stats_file)]
    command += [str(checkout / "recipes" / "train.py"), "--output_dir", str(output)]
    command += ["--max_steps", str(steps), "--no_progress", "--report_to", "none"]
    env = dict(os.environ, PYTHONPATH=str(checkout))
    subprocess.run(command, cwd=checkout, env=env, capture_output=True, check=True)
    stats = pstats.Stats(str(stats_file)).stats  # {(file, line, name): (cc, nc, tt, ct, ...)}
    total = max(entry[3] for entry in stats.values())
    cumulative = {}
    for part, path_end, name in PROFILE_PARTS:
        cumulative[part] = sum(
            entry[3]
            for (file, _, function), entry in stats.items()
            if file.endswith(path_end) and function == name
        )
    loop = cumulative.pop("training loop")
    return {
        "command": command,
        "steps": steps,
        "seconds_total": round(total, 2),
        "seconds_start_up": round(total - loop, 2),
        "ms_per_step": {part: round(1e3 * value / steps, 1) for part, value in cumulative.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the earlier checkout")
    parser.add_argument("--after", type=Path, default=THIS_CHECKOUT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--before_seeds", type=int, nargs="*", default=[0])
    parser.add_argument("--profile_steps", type=int, default=156, help="0: no profile")
    parser.add_argument("--work", type=Path, required=True, help="the runs' output folders")
    parser.add_argument("--json", type=Path, default=None, help="write the record here")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": args.after.resolve()}
    record = start_record(
        dataset="mnist5k",
        role="tune",
        tuned_on=True,
        commits={name: commit_of(path) for name, path in checkouts.items()},
        runs=[],
        profiles={},
    )
    # alternate between the checkouts, so that both meet the same machine
    order = []
    for seed in args.seeds:
        if seed in args.before_seeds:
            order.append(("before", seed))
        order.append(("after", seed))
    order += [("before", seed) for seed in args.before_seeds if seed not in args.seeds]
    for name, seed in order:
        run = timed_demo(checkouts[name], args.work / f"{name}-seed{seed}", seed)
        record["runs"].append({"checkout": name, **run})
        print_line({"checkout": name, **{k: v for k, v in run.items() if k != "command"}})
        if args.json:  # each run kept as it ends
            write_json(args.json, record)
    if args.profile_steps:
        for name, path in checkouts.items():
            found = profile(path, args.work / f"profile-{name}", args.profile_steps)
            record["profiles"][name] = found
            print_line({"profile": name, **found["ms_per_step"]})
    record["summary"] = summarize(record["runs"])
    print_line(record["summary"])
    if args.json:
        write_json(args.json, record)


def summarize(runs: list[dict]) -> dict:
    """Per checkout, the median and range of each time and figure; the after/before ratios of
    the medians."""
    summary: dict = {}
    keys = ("seconds_whole_command", "seconds_training", "seconds_per_epoch_median", "accuracy")
    for name in ("before", "after"):
        mine = [run for run in runs if run["checkout"] == name]
        if not mine:
            continue
        summary[name] = {"seeds": [run["seed"] for run in mine]}
        for key in keys:
            values = sorted(run[key] for run in mine)
            summary[name][key] = {"median": values[len(values) // 2], "values": values}
    if "before" in summary and "after" in summary:
        for key in ("seconds_whole_command", "seconds_training"):
            after, before = summary["after"][key]["median"], summary["before"][key]["median"]
            summary[f"{key}_after_over_before"] = round(after / before, 3)
        summary["accuracy_min_after"] = summary["after"]["accuracy"]["values"][0]
    return summary


if __name__ == "__main__":
    main()
