"""The benchmark scripts: the per-head baseline computes SeCu, torch.compile agrees, CLIs run."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from secu_plugin import SeCuCenterBank, SeCuLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from secu_plugin.core.per_head import PerHeadSeCuLoss

NUM_INSTANCES, BATCH, DIM = 60, 12, 16


def twin_banks(assigner: str, dtype: torch.dtype) -> tuple[SeCuCenterBank, SeCuCenterBank]:
    torch.manual_seed(0)
    bank = SeCuCenterBank(DIM, [4, 7, 3], NUM_INSTANCES, assigner=assigner, alpha=5.0)
    bank = bank.to(dtype)
    return bank, copy.deepcopy(bank)


def leaves(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.detach().clone().requires_grad_() for t in tensors]


def run_steps(first, second, num_views: int, dtype: torch.dtype, steps: int, check) -> None:
    """Runs both criteria on the same inputs for ``steps`` steps; ``check`` compares each one.

    Two steps per epoch: the second epoch's representation loss uses the stored labels. The
    centers take a gradient step after each step, so the states only stay equal if the
    gradients do.
    """
    banks = first.bank, second.bank
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        if step % 2 == 0:
            for bank in banks:
                bank.start_epoch()
        views = [
            torch.randn(BATCH, DIM, generator=generator, dtype=dtype) for _ in range(num_views)
        ]
        indices = torch.randperm(NUM_INSTANCES, generator=generator)[:BATCH]
        views_a, views_b = leaves(views), leaves(views)
        loss_a = first(*views_a[:2], indices, *views_a[2:])
        loss_b = second(*views_b[:2], indices, *views_b[2:])
        loss_a.backward()
        loss_b.backward()
        check(loss_a, loss_b, views_a, views_b)
        for bank in banks:
            with torch.no_grad():
                for center in bank.centers:
                    center -= 0.5 * center.grad
                    center.grad = None
            if step % 2 == 1:
                bank.end_epoch()


def assert_same(loss_a, loss_b, views_a, views_b, banks, rtol: float, atol: float) -> None:
    torch.testing.assert_close(loss_a, loss_b, rtol=rtol, atol=atol)
    for view_a, view_b in zip(views_a, views_b):
        torch.testing.assert_close(view_a.grad, view_b.grad, rtol=rtol, atol=atol)
    for center_a, center_b in zip(banks[0].centers, banks[1].centers):
        torch.testing.assert_close(center_a.grad, center_b.grad, rtol=rtol, atol=atol)
    state_a, state_b = banks[0].state_dict(), banks[1].state_dict()
    for key in ("memory", "stacked_counts", "stacked_duals", "targets"):
        torch.testing.assert_close(state_a[key], state_b[key], rtol=rtol, atol=atol, msg=key)


@pytest.mark.parametrize("num_views", [2, 4], ids=["two_views", "with_predictor"])
@pytest.mark.parametrize("assigner", ["size", "entropy"])
def test_per_head_baseline_matches_secu_loss(assigner, num_views):
    bank, twin = twin_banks(assigner, torch.float64)
    fused = SeCuLoss(bank, temperature_x=0.1, temperature_c=0.05, label_weight=0.3)
    baseline = PerHeadSeCuLoss(twin, temperature_x=0.1, temperature_c=0.05, label_weight=0.3)

    def check(loss_a, loss_b, views_a, views_b):
        assert_same(loss_a, loss_b, views_a, views_b, (bank, twin), rtol=1e-6, atol=1e-9)

    run_steps(fused, baseline, num_views, torch.float64, steps=4, check=check)
    assert (bank.memory >= 0).sum() > BATCH  # both epochs recorded labels


@pytest.mark.slow
def test_torch_compile_matches_eager():
    bank, twin = twin_banks("size", torch.float32)
    eager = SeCuLoss(bank)
    compiled = torch.compile(SeCuLoss(twin))  # graph breaks allowed (assignment, checks)

    def check(loss_a, loss_b, views_a, views_b):
        assert_same(loss_a, loss_b, views_a, views_b, (bank, twin), rtol=1e-5, atol=1e-6)

    run_steps(eager, compiled, 2, torch.float32, steps=2, check=check)


def run_script(name: str, tmp_path: Path) -> tuple[str, dict]:
    output = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / f"{name}.py"),
            "--smoke",
            "--threads",
            "1",
            "--json",
            str(output),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(output.read_text())


def test_loss_step_smoke(tmp_path):
    stdout, results = run_script("loss_step", tmp_path)
    assert "| heads | sum K | B | views | baseline ms | fused ms | SwaV ms |" in stdout
    assert "2 bytes per instance and head" in stdout
    assert [row["heads"] for row in results["forms"]] == ["cifar", "imagenet"]
    for row in results["forms"]:
        assert row["ms"]["baseline"] > 0 and row["ms"]["fused"] > 0
    memory = results["bank_memory"]
    assert memory["bytes_per_instance_and_head"] == 2
    assert memory["memory_mb"] == pytest.approx(2 * 10 * 1_281_167 / 1e6)


@pytest.mark.slow
def test_train_step_smoke(tmp_path):
    stdout, results = run_script("train_step", tmp_path)
    assert "| mode | ms/step | images/s | peak MiB |" in stdout
    assert "SeCu adds" in stdout
    assert [row["mode"] for row in results["modes"]] == ["A", "B", "C"]
    assert "With check_values=False SeCu adds" in stdout
    assert all(row["images_per_s"] > 0 for row in results["modes"])


@pytest.mark.slow
def test_memory_table_smoke(tmp_path):
    """Real banks on 2 gloo processes: the measured shard sizes equal the table's formulas
    (the script asserts it) and the table prints."""
    output = tmp_path / "memory.json"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "memory_table.py"),
            "--smoke",
            "--json",
            str(output),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "| N | ranks | replicated / rank | sharded / rank |" in result.stdout
    rows = json.loads(output.read_text())["rows"]
    measured = [row for row in rows if row["sharded_measured"]]
    assert {row["world_size"] for row in measured} == {2}
    for row in measured:
        assert row["sharded_bytes"] == 2 * 10 * (-(-row["num_instances"] // 2) + 1)
        assert row["replicated_bytes"] == 2 * 10 * row["num_instances"]
