"""Data parallel SeCu: two real CPU processes reproduce the single-process trajectories."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from golden_replay import GOLDEN_FILES

SCRIPT = Path(__file__).parent / "scripts" / "distributed_replay.py"


def check_reports(out_dir: Path) -> None:
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, report in enumerate(reports):
        # Without a working process group each process believes it is alone: assert it is not.
        assert report["world_size"] == 2 and report["rank"] == rank
        assert set(report["golden"]) == {p.stem for p in GOLDEN_FILES}
        assert all(steps > 0 for steps in report["golden"].values())
        assert report["padded"]["identical"]
        assert report["padded"]["labelled"] == 2 * 37
    assert reports[0]["padded"]["steps"] == reports[1]["padded"]["steps"] > 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(command: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_two_gloo_processes_match_single_process_golden(tmp_path):
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=2",
            "--master_addr=127.0.0.1",
            f"--master_port={free_port()}",
            str(SCRIPT),
            str(tmp_path),
            "torchrun",
        ],
        tmp_path,
    )
    check_reports(tmp_path)


def test_two_process_accelerate_launch(tmp_path):
    accelerate = Path(sys.executable).parent / "accelerate"
    run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(free_port()),
            str(SCRIPT),
            str(tmp_path),
            "accelerate",
        ],
        tmp_path,
    )
    check_reports(tmp_path)
