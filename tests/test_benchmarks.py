"""The benchmark scripts: the per-head baseline computes SeCu, torch.compile agrees, CLIs run."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

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


@pytest.mark.slow
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
    for row in results["modes"]:  # the median of 3 interleaved rounds, every round kept
        assert len(row["ms_per_step_rounds"]) == 3
        assert row["ms_per_step_min"] <= row["ms_per_step"] <= row["ms_per_step_max"]
        assert row["ms_per_step"] == sorted(row["ms_per_step_rounds"])[1]
    assert results["provenance"]["command"].endswith("--json " + str(tmp_path / "train_step.json"))


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
    written = json.loads(output.read_text())
    assert written["provenance"]["commit"] and "--smoke" in written["provenance"]["command"]
    rows = written["rows"]
    measured = [row for row in rows if row["sharded_measured"]]
    assert {row["world_size"] for row in measured} == {2}
    for row in measured:
        assert row["sharded_bytes"] == 2 * 10 * (-(-row["num_instances"] // 2) + 1)
        assert row["replicated_bytes"] == 2 * 10 * row["num_instances"]


def test_pixel_baselines_record_every_seed_and_space(tmp_path):
    """kmeans_baseline.py on a small digit folder: each seed's k-means on raw and whitened
    pixels and spectral clustering, the provenance, and the set's role from sets.json."""
    from benchmarks import kmeans_baseline
    from secu_plugin.data import load_mnist5k

    images, labels = load_mnist5k()
    root = tmp_path / "digits"
    for i in range(0, 5000, 25):  # 200 images, 20 per class
        (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(root / str(labels[i]) / f"{i}.png")
    (tmp_path / "sets.json").write_text(
        json.dumps({"sets": [{"name": "digits", "role": "held_out"}]})
    )
    output = tmp_path / "pixels.json"
    record = kmeans_baseline.main(
        [
            str(root),
            "--seeds",
            "0",
            "1",
            "--whitening",
            "16",
            "64",
            "--spectral",
            "--json",
            str(output),
        ]
    )
    assert json.loads(output.read_text()) == record
    assert record["provenance"]["commit"] and record["seeds"] == [0, 1]
    (found,) = record["sets"]
    assert found["tuned_on"] == "held out" and found["K"] == 10 and found["train_images"] == 200
    assert [run["seed"] for run in found["runs"]] == [0, 1]
    for run in found["runs"]:
        assert set(run["kmeans_whitened_pixels"]) == {"16", "64"}
        assert run["spectral_whitened_pixels"]["whitening_dim"] == 16
        assert run["kmeans_pixels"]["accuracy"] > 0.3  # 10 digit classes: chance is about 0.1
    with pytest.raises(ValueError, match="whitening"):
        kmeans_baseline.set_baselines(str(root), {}, (0,), whitening=(0,))


def test_kill_soak_reads_the_step_of_the_checkpoint_latest_names(tmp_path):
    from benchmarks.kill_soak import checkpointed_step

    assert checkpointed_step(tmp_path) is None  # killed before the first checkpoint
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("state-00000009-epoch-0001")
    assert checkpointed_step(tmp_path) == 9


def test_demo_runs_are_read_from_their_raw_files():
    """docs/demo_runs.json is what benchmarks/demo_runs.py makes of the files it names."""
    from benchmarks.demo_runs import demo_runs

    made = demo_runs("docs/same_behaviour.json", ["docs/mnist5k_results.json"])
    committed = json.loads((REPO_ROOT / "docs" / "demo_runs.json").read_text())
    assert made["runs"] == committed["runs"] and made["range"] == committed["range"]
    behaviour = json.loads((REPO_ROOT / "docs" / "same_behaviour.json").read_text())
    first = behaviour["runs"]["before"]["demo"]
    assert made["runs"][0]["accuracy"] == first["figures"]["accuracy"]
    assert made["runs"][0]["seconds"] == first["seconds"]
    earlier = json.loads((REPO_ROOT / "docs" / "mnist5k_results.json").read_text())
    assert made["runs"][-1]["accuracy"] == round(earlier["evaluations"][0]["accuracy"], 4)
    assert made["runs"][-1]["commit"]  # dated by the commit that last changed it


@pytest.mark.parametrize("name", ["common", "provenance", "report_screenshot", "colour_shortcut"])
def test_the_shared_helpers_examples_run(name):
    """The docstring examples of what every benchmark shares, and of scripts whose functions
    have them (benchmarks/ is outside the default doctest paths)."""
    import doctest
    import importlib

    module = importlib.import_module(f"benchmarks.{name}")
    failed, attempted = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert attempted > 0 and failed == 0


def test_every_benchmark_takes_its_provenance_from_the_shared_record():
    """No script calls ``provenance()`` itself: ``common.start_record`` puts it first in every
    record, at the start of the run."""
    import ast

    shared = {"common.py", "provenance.py"}
    calls = [
        path.name
        for path in sorted((REPO_ROOT / "benchmarks").glob("*.py"))
        if path.name not in shared
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "provenance"
    ]
    assert calls == []


def test_demo_speed_summary_and_tables_from_a_record() -> None:
    """demo_speed.py's summary (medians, every value, ratios) and the tables render_docs
    draws from it, on a record of four runs."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    from quality_renderers import path_scores, render_demo_speed

    from benchmarks.demo_speed import summarize

    def run(checkout, seed, whole, accuracy):
        return {
            "checkout": checkout,
            "seed": seed,
            "seconds_whole_command": whole,
            "seconds_training": whole - 20,
            "seconds_per_epoch_median": whole / 40,
            "seconds_start_up": 7.0,
            "seconds_evaluation_and_export": 13.0,
            "accuracy": accuracy,
            "recommended_num_clusters": 10,
        }

    runs = [
        run("before", 0, 600.0, 0.98),
        run("after", 0, 300.0, 0.97),
        run("after", 1, 320.0, 0.89),
        run("after", 2, 310.0, 0.975),
    ]
    summary = summarize(runs)
    assert summary["after"]["seconds_whole_command"] == {
        "median": 310.0,
        "values": [300.0, 310.0, 320.0],
    }
    assert summary["seconds_whole_command_after_over_before"] == round(310 / 600, 3)
    assert summary["accuracy_min_after"] == 0.89
    record = {
        "dataset": "mnist5k",
        "tuned_on": True,
        "runs": runs,
        "summary": summary,
        "commits": {"before": "3833424aaa", "after": "abcdef0bbb"},
        "profiles": {},
    }
    text = render_demo_speed([record], {})
    assert text.count("| after (`abcdef0`) |") == 3 and "| 0.8900 |" in text
    acc, runs_counted, seconds, _ = path_scores([record])["mnist5k"]["scratch"]
    assert (runs_counted, seconds) == (3, 310.0) and abs(acc - (0.97 + 0.89 + 0.975) / 3) < 1e-12
