"""Do two checkouts train the same models? The demo and the frozen heads, run in each, compared.

A refactoring that should change no behaviour is checked by running the README's two main
commands in the checkout before and after it, on the same machine, and comparing what they
wrote byte for byte: the model weights (``model.safetensors``) and the figures.

    python benchmarks/same_behaviour.py --before ../old-checkout --after . \\
        --work /tmp/same --out docs/same_behaviour.json
    # runs already made by the commands this script prints: compare only
    python benchmarks/same_behaviour.py --before ../old --after . --work /tmp/same --reuse ...

Each checkout runs with its own code (``PYTHONPATH``) and this interpreter's packages; the
frozen run gets its own feature cache, so nothing is shared between the two.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import commit_of, print_line, start_record, write_json

FIGURES = ("accuracy", "nmi", "ari", "memory_accuracy", "memory_nmi", "memory_ari", "epochs")


def commands(checkout: Path, work: Path) -> dict[str, list[str]]:
    """The runs of one checkout: the frozen heads (offline EfficientNet-Lite0) and the demo."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    weights = str(work / "lite0.safetensors")
    common = ["--no_progress", "--report_to", "none"]
    return {
        "weights": [sys.executable, "-m", "secu_plugin.models.pretrained", weights],
        "frozen_heads": [
            accelerate,
            "launch",
            str(checkout / "recipes" / "train_head.py"),
            "--backbone",
            "tf_efficientnet_lite0",
            "--pretrained_file",
            weights,
            "--input_size",
            "112",
            "--output_dir",
            str(work / "lite0-mnist5k"),
            *common,
        ],
        "demo": [
            accelerate,
            "launch",
            str(checkout / "recipes" / "train.py"),
            "--output_dir",
            str(work / "mnist5k"),
            *common,
        ],
    }


def run(checkout: Path, work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(checkout), SECU_CACHE=str(work / "cache"))
    for name, command in commands(checkout, work).items():
        with open(work / f"{name}.log", "w") as log:
            subprocess.run(
                command, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, check=True
            )


def outcome(work: Path, name: str) -> dict:
    """What a run left: its weights' sha256, its figures and its final JSON line."""
    folder = work / {"frozen_heads": "lite0-mnist5k", "demo": "mnist5k"}[name]
    weights = (folder / "model" / "model.safetensors").read_bytes()
    final = [line for line in (work / f"{name}.log").read_text().splitlines() if line[:1] == "{"]
    summary = json.loads(final[-1])
    return {
        "model_sha256": hashlib.sha256(weights).hexdigest(),
        "figures": {key: summary[key] for key in FIGURES if key in summary},
        "seconds": summary.get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout before")
    parser.add_argument("--after", type=Path, required=True, help="the checkout after")
    parser.add_argument("--before_commit", help="default: the --before checkout's HEAD")
    parser.add_argument("--after_commit", help="default: the --after checkout's HEAD")
    parser.add_argument("--work", type=Path, required=True, help="outputs: WORK/before, /after")
    parser.add_argument("--reuse", action="store_true", help="compare runs already in --work")
    parser.add_argument("--out", type=Path, default=Path("docs/same_behaviour.json"))
    args = parser.parse_args()
    record = start_record(runs={})
    for side, checkout in (("before", args.before), ("after", args.after)):
        work = (args.work / side).resolve()
        if not args.reuse:
            run(checkout.resolve(), work)
        commit = args.before_commit if side == "before" else args.after_commit
        record["runs"][side] = {
            "commit": commit or commit_of(checkout),
            "commands": {k: " ".join(v) for k, v in commands(checkout.resolve(), work).items()},
            **{name: outcome(work, name) for name in ("frozen_heads", "demo")},
        }
    before, after = record["runs"]["before"], record["runs"]["after"]
    record["identical"] = {
        name: before[name]["model_sha256"] == after[name]["model_sha256"]
        and before[name]["figures"] == after[name]["figures"]
        for name in ("frozen_heads", "demo")
    }
    write_json(args.out, record)
    print_line(record["identical"])


if __name__ == "__main__":
    main()
