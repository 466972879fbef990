"""examples/lightning_secu.py: a LightningModule holding the bank, Trainer(strategy="ddp",
devices=2) on 2 CPU processes (gloo): the ranks end with identical banks, and validation steps
(which run a SeCu loss too) leave the memory of the validation images empty."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = REPO_ROOT / "examples" / "lightning_secu.py"

pytest.importorskip("pytorch_lightning")
pytest.importorskip("lightly")
pytestmark = pytest.mark.slow  # two real DDP processes: the slow suite


def test_lightning_ddp_on_two_cpu_processes(tmp_path):
    steps, batch_per_device = 6, 16
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--devices",
            "2",
            "--max_steps",
            str(steps),
            "--batch_size_per_device",
            str(batch_per_device),
            "--val_check_interval",
            "3",
            "--bank_out",
            str(tmp_path),
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    banks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert banks[0].keys() == banks[1].keys()
    for key in banks[0]:
        assert torch.equal(banks[0][key], banks[1][key]), key
    memory = banks[0]["memory"]
    # Every training step labelled its global batch (the sampler draws distinct images here)...
    assert ((memory[:, :4000] >= 0).sum(1) == steps * 2 * batch_per_device).all()
    # ... and the validation steps (images 4000..4255) labelled nothing.
    assert (memory[:, 4000:] == -1).all()
    assert int(banks[0]["epoch"]) == 0
    # The epoch's size counts: every row of every step, in every head.
    assert int(banks[0]["stacked_counts"].sum()) == 3 * steps * 2 * batch_per_device
