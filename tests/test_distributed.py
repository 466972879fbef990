"""Data parallel SeCu: 2 and 4 real CPU processes (gloo) reproduce the single-process
trajectories, with a replicated or a sharded memory, inside DistributedDataParallel, and across
a re-sharding resume 2 -> 4 -> 1 processes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from golden_replay import GOLDEN_FILES, replay

SCRIPT = Path(__file__).parent / "scripts" / "distributed_replay.py"
sys.path.insert(0, str(SCRIPT.parent))
from distributed_replay import FOUR_PROCESS_FILES, RESHARD

pytestmark = pytest.mark.slow  # real multi-process runs: the slow suite


def read_reports(out_dir: Path, world: int) -> list[dict]:
    reports = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]
    for rank, report in enumerate(reports):
        # Without a working process group each process believes it is alone: assert it is not.
        assert report["world_size"] == world and report["rank"] == rank
    return reports


def check_reports(out_dir: Path) -> None:
    reports = read_reports(out_dir, 2)
    for report in reports:
        assert set(report["golden"]) == {p.stem for p in GOLDEN_FILES}
        for checks in report["golden"].values():
            assert set(checks) == {"replicated", "sharded", "ddp", "ddp_alone"}
            assert all(steps > 0 for steps in checks.values())
        for memory in ("replicated", "sharded"):
            assert report["padded"][memory]["identical"]
            assert report["padded"][memory]["labelled"] == 2 * 37
        # Sharded or not, the same trajectory.
        assert report["padded"]["sharded"]["state"] == report["padded"]["replicated"]["state"]
        assert report["reshard"] == {path.stem: two for path, two, _ in RESHARD}
        for deferred in report["deferred"].values():
            assert deferred["unchanged"] and deferred["labelled"] == 8
    for memory in ("replicated", "sharded"):
        # Both ranks masked rank 1's bad step and raise at the next call.
        assert "another rank had NaN" in reports[0]["deferred"][memory]["message"]
        assert "z1 contains NaN" in reports[1]["deferred"][memory]["message"]
    assert reports[0]["padded"]["replicated"]["steps"] == reports[1]["padded"]["sharded"]["steps"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(processes: int, tmp_path: Path, *arguments: str) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={processes}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(SCRIPT),
        str(tmp_path),
        "torchrun",
        *arguments,
    ]
    run(command, tmp_path)


def run(command: list[str], tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def test_two_gloo_processes_match_single_process_golden(tmp_path):
    torchrun(2, tmp_path)
    check_reports(tmp_path)


def test_sharded_memory_on_4_processes_and_resumes_2_to_4_to_1(tmp_path):
    """Golden replays on 4 processes with a sharded memory; and trajectories that run their
    first steps on 2 processes, the next on 4 and the rest on 1, each part restored from the
    previous part's per-rank shards: every step matches the golden file (float64, 1e-8; the
    memory exactly)."""
    torchrun(2, tmp_path, "reshard")  # the first steps, and the 2-process shards
    torchrun(4, tmp_path, "four")
    for report in read_reports(tmp_path, 4):
        assert report["golden"] == {
            p.stem: {"sharded": 12 if "size" in p.stem else 20} for p in FOUR_PROCESS_FILES
        }
        assert report["reshard"] == {path.stem: four - two for path, two, four in RESHARD}
    for path, _, four in RESHARD:
        shards = sorted((tmp_path / f"reshard_{path.stem}_4").glob("rank*.pt"))
        assert len(shards) == 4
        saved = [torch.load(f) for f in shards]
        assert {tuple(s["memory_shard"].tolist()) for s in saved} == {(r, 4) for r in range(4)}
        for last_memory in ("sharded", "replicated"):
            steps = replay(
                path,
                memory=last_memory,
                steps=(four, None),
                load=lambda bank, saved=saved: bank.load_sharded(saved),
                epochs_by_argument=True,
            )
            assert steps > 0


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
