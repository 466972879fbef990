"""Kill-and-resume soak: SIGKILL real training runs at random moments, resume each, and check
that every run ends bit for bit equal to an uninterrupted one (no unusable checkpoint).

    python benchmarks/kill_soak.py --runs 10 --preset mnist5k --out docs/kill_soak.json

Each trial starts `recipes/train.py` (a tiny network on 50 MNIST-5k digits, the preset named
explicitly by ``--preset``, default ``mnist5k``, so that a rerun soaks the same configuration
whatever the recipe's default for ``--data`` becomes; a checkpoint every 3 steps and at each
epoch end), kills its whole process group at a uniformly random moment of an uninterrupted
run's duration, then resumes with `--resume` until it finishes (or starts again if it was
killed before its first checkpoint).

The JSON records the provenance (``benchmarks/provenance.py``), the exact training command and,
per trial, whether the kill happened (a run may finish first), the last step checkpointed when
it did (``checkpoint_step_at_kill``; None: killed before the first checkpoint) and whether the
resumed run ended identical to the uninterrupted one.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import REPO_ROOT, print_line, start_record, write_json
from secu_plugin.data import load_mnist5k

TRAIN = REPO_ROOT / "recipes" / "train.py"
ARGS = [
    "--epochs",
    "3",
    "--no_progress",
    "--checkpoint_every",
    "3",
    "--report_to",
    "none",
    "--set",
    "backbone=secu_convnet_tiny",
    "num_clusters=[10,20]",
    "batch_size=16",
    "warmup_epochs=1",
    "num_workers=0",
]
STATE = re.compile(r"state-(?P<step>\d+)-epoch-(?P<epoch>\d+)")


def checkpointed_step(output_dir: Path) -> int | None:
    """The global step of the checkpoint that ``latest`` names; None if there is none yet."""
    latest = output_dir / "checkpoints" / "latest"
    found = STATE.fullmatch(latest.read_text().strip()) if latest.is_file() else None
    return int(found["step"]) if found else None


def make_digits(root: Path) -> None:
    images, labels = load_mnist5k()
    for i in np.random.default_rng(1).choice(len(images), size=50, replace=False):
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / str(labels[i]) / f"{i}.png")


def start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, str(TRAIN), *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def final_state(output_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = output_dir / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text()
    bank = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)
    return {**{f"bank.{k}": v for k, v in bank.items()}, **load_file(latest / "model.safetensors")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preset", default="mnist5k", help="the recipe's --preset, named")
    parser.add_argument("--out", type=Path)
    options = parser.parse_args()
    record = start_record()  # at the start: the load before the run
    rng = random.Random(options.seed)
    work = Path(tempfile.mkdtemp(prefix="secu-soak-"))
    make_digits(work / "digits")
    data = ["--data", str(work / "digits"), "--preset", options.preset]

    began = time.time()
    full = start([*data, "--output_dir", str(work / "full"), *ARGS])
    assert full.wait() == 0, full.stderr.read().decode()[-2000:]
    duration = time.time() - began
    reference = final_state(work / "full")
    total_steps = checkpointed_step(work / "full")

    trials = []
    for trial in range(options.runs):
        out = work / f"trial{trial}"
        delay = rng.uniform(0.0, duration)
        process = start([*data, "--output_dir", str(out), *ARGS])
        time.sleep(delay)
        killed = process.poll() is None
        if killed:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        at_kill = checkpointed_step(out) if killed else None
        resumes = 0
        while True:
            # Killed before its first checkpoint: nothing was saved, so start again.
            saved = (out / "checkpoints" / "latest").is_file()
            resume = ["--resume"] if saved else []
            resumed = start([*data, "--output_dir", str(out), *ARGS, *resume])
            code = resumed.wait()
            resumes += 1
            if code == 0 or resumes == 3:
                break
        state = final_state(out) if code == 0 else {}
        same = (
            code == 0
            and state.keys() == reference.keys()
            and all(torch.equal(state[k], reference[k]) for k in reference)
        )
        error = "" if code == 0 else resumed.stderr.read().decode().strip().splitlines()[-1]
        trials.append(
            {
                "trial": trial,
                "kill_after_s": round(delay, 2),
                "killed": killed,
                "checkpoint_step_at_kill": at_kill,
                "resumes": resumes,
                "finished": code == 0,
                "identical": same,
                "error": error,
            }
        )
        print_line(trials[-1])

    summary = {
        "runs": len(trials),
        "identical": sum(t["identical"] for t in trials),
        "killed": sum(t["killed"] for t in trials),
        "preset": options.preset,
        "seed": options.seed,
        "total_steps": total_steps,
        "train_command": shlex.join(["recipes/train.py", *data, *ARGS]),
        "uninterrupted_seconds": round(duration, 1),
        "trials": trials,
    }
    print_line({k: v for k, v in summary.items() if k != "trials"})
    if options.out:
        write_json(options.out, {**record, **summary}, indent=1)


if __name__ == "__main__":
    main()
