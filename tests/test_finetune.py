"""Fine-tuning a frozen-head model by self-labeling (recipes/finetune.py, its settings and its
pieces): the run, its refusals, a SIGKILL and --resume that end bit-identical, 2 processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

from secu_plugin import SeCuModel
from secu_plugin.frozen.finetune import StagedBackbone
from secu_plugin.frozen.finetune_presets import FINETUNE_PRESETS, FINETUNE_READS, FinetuneSettings
from secu_plugin.frozen.head_presets import HeadPreset
from secu_plugin.frozen.self_labeling import self_label_loss
from secu_plugin.k_signals import neighbor_agreement
from secu_plugin.train.presets import get_preset
from secu_plugin.train.settings import group_fields
from tests.in_process import run_here
from tests.launch import ROOT, accelerate_launch
from tests.test_readme import check_final_line_examples

FINETUNE = ROOT / "recipes" / "finetune.py"


def run_finetune(
    *args: str, check: bool = True, env: dict | None = None, launcher: list[str] | None = None
) -> subprocess.CompletedProcess:
    command = [*(launcher or [sys.executable]), str(FINETUNE), "--no_progress", *args]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "SECU_NUM_THREADS": "1", **(env or {})}
    environment.pop("SECU_DEBUG", None)
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=environment, check=False
    )
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def test_the_tail_trains_the_backbone_in_place_and_the_trunk_stays_frozen():
    torch.manual_seed(0)
    backbone = timm.create_model("test_efficientnet", num_classes=0).eval()
    staged = StagedBackbone(backbone, trainable_stages=2)
    trunk_before = [p.clone() for p in staged.trunk_modules.parameters()]
    x = torch.randn(4, 3, 32, 32)
    activations = staged.trunk(x)
    before = backbone(x).detach()
    assert torch.allclose(staged.tail(activations), before, atol=1e-5)
    optimizer = torch.optim.SGD([p for m in staged.tail_modules for p in m.parameters()], lr=0.1)
    staged.tail(activations).pow(2).mean().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(trunk_before, staged.trunk_modules.parameters()))
    # the backbone itself changed: the tail's modules are its own
    after = backbone(x).detach()
    assert not torch.allclose(after, before)
    assert torch.allclose(staged.tail(staged.trunk(x)), after, atol=1e-5)
    with pytest.raises(ValueError, match="trainable_stages"):
        StagedBackbone(backbone, trainable_stages=len(backbone.blocks) + 1)
    with pytest.raises(ValueError, match="EfficientNet-family"):
        StagedBackbone(timm.create_model("resnet10t", num_classes=0))


def test_neighbor_agreement_and_the_loss_prefer_clusters_that_follow_the_graph():
    neighbors = torch.tensor([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    follows = torch.tensor([[0, 0, 0, 1, 1, 1]])
    mixed = torch.tensor([[0, 1, 0, 1, 0, 1]])
    assert neighbor_agreement(follows, neighbors) == 1.0
    assert neighbor_agreement(mixed, neighbors) < 0.5
    centers = [torch.eye(2)]
    z = torch.tensor([[1.0, 0.1], [0.1, 1.0]], requires_grad=True)
    keep = torch.tensor([[True, True]])
    right = self_label_loss(z, centers, torch.tensor([[0, 1]]), keep, 0.2)
    wrong = self_label_loss(z, centers, torch.tensor([[1, 0]]), keep, 0.2)
    assert right < wrong
    none = self_label_loss(z, centers, torch.tensor([[0, 1]]), ~keep, 0.2)
    assert float(none) == 0.0


# 120 images, batches of 32: 3 steps per epoch.
TINY_FINETUNE = ["--epochs", "2", "--report_to", "none", "--set", "augmented_views=2",
                 "batch_size=32", "lr=1e-3"]  # fmt: skip


def test_finetune_settings_are_a_preset_registry_like_the_others():
    settings = get_preset("finetune", FINETUNE_PRESETS, **{"self_labeling.confident_fraction": 0.3})
    assert settings.self_labeling.confident_fraction == 0.3
    record = settings.to_dict()
    assert list(record) == list(group_fields(FinetuneSettings))  # every setting, flat
    assert settings.replace(**json.loads(json.dumps(record))) == settings  # JSON round trip
    assert FINETUNE_READS <= set(record)  # what it reads are settings it has
    # trainable_stages is declared once: no other settings class has it
    assert "trainable_stages" not in group_fields(HeadPreset)
    # the cached views take timm's create_transform arguments (no flips for digits)
    views = get_preset("finetune", FINETUNE_PRESETS, view_kwargs={"hflip": 0.0})
    assert views.augmentation.view_kwargs == {"hflip": 0.0}
    for change, named in (
        ({"trainable_stages": 0}, "trainable_stages"),
        ({"lr": 0.0}, "lr"),
        ({"momentum": 0.5}, "does not read ['momentum']"),
        ({"backbone": "resnet18"}, "does not read ['backbone']"),
        ({"learning_rate": 1.0}, "unknown preset settings"),
        ({"recommended_head_only": "yes"}, "recommended_head_only must be true or false"),
    ):
        with pytest.raises(ValueError, match=re.escape(named)):
            get_preset("finetune", FINETUNE_PRESETS, **change)


@pytest.fixture(scope="module")
def frozen_model(frozen_head_run, tmp_path_factory) -> tuple[Path, Path]:
    """A frozen-head model of timm's tiny test_efficientnet on 120 digit images: the session's
    run of recipes/train_head.py, its output linked as ``root/out`` (this module's feature
    cache and outputs stay in ``root``, apart from the shared run's). Root and digit folder."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "out").symlink_to(frozen_head_run.root / "out", target_is_directory=True)
    return root, frozen_head_run.digits


def finetune_args(root: Path, out: Path) -> list[str]:
    return ["--model", str(root / "out"), "--output_dir", str(out),
            "--cache_dir", str(root / "cache"), *TINY_FINETUNE]  # fmt: skip


@pytest.fixture(scope="module")
def finetuned(frozen_model) -> tuple[dict, Path]:
    """One uninterrupted fine-tuning run, shared: its final line and its output directory."""
    root, _ = frozen_model
    out = root / "finetuned"
    result = run_finetune(*finetune_args(root, out))
    return json.loads(result.stdout.strip().splitlines()[-1]), out


def checkpoint_state(out: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's weights, optimizer, counters and kept state, flattened."""
    checkpoints = out / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text()
    state = {f"model.{k}": v for k, v in load_file(latest / "model.safetensors").items()}
    optimizer = torch.load(latest / "optimizer.bin", weights_only=False)
    for index, slot in optimizer["state"].items():
        state.update({f"optimizer.{index}.{k}": torch.as_tensor(v) for k, v in slot.items()})
    progress = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)
    kept = torch.load(latest / "custom_checkpoint_1.pkl", weights_only=False)
    state["progress"] = torch.tensor([progress[k] for k in ("epoch", "global_step")])
    state["generator"] = kept["generator"]
    state.update({f"kept.{k}": v for k, v in kept["best"]["state"].items()})
    return state


def test_finetune_starts_from_the_frozen_model_and_never_ends_below_its_criterion(
    frozen_model, finetuned
):
    root, _ = frozen_model
    summary, out = finetuned
    start = SeCuModel.from_pretrained(root / "out" / "model")
    # the final line has what the other recipes print, and the scaffold's export wrote them
    for key in ("accuracy", "nmi", "ari", "recommended_num_clusters", "seconds"):
        assert key in summary, key
    check_final_line_examples("recipes/finetune.py", summary)  # the docs' example line
    assert summary["output_dir"] == str(out) and summary["model_dir"] == str(out / "model")
    assert Path(summary["report"]).is_file() and (out / "cluster_sizes.png").is_file()
    report = json.loads((out / "results.json").read_text())
    history = report["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert all(0 <= h["own_graph_agreement"] <= 1 for h in history)  # the logged diagnostic
    # against k-means on the pixels, as every recipe's final line
    assert summary["beats_kmeans_pixels"] == report["pixel_check"]["learned"]
    assert report["kept_epoch"] == summary["kept_epoch"] and "k_selection" in report
    # the kept state is the best by the label-free criterion, the start included
    kept = next(h for h in history if h["epoch"] == summary["kept_epoch"])
    assert kept["neighbor_agreement"] == max(
        h["neighbor_agreement"] for h in history
        if h["size_balance"] >= history[0]["size_balance"] - 0.02
    )  # fmt: skip
    assert summary["accuracy"] == kept["accuracy"]
    assert summary["start_accuracy"] == history[0]["accuracy"]
    finetuned_model = SeCuModel.from_pretrained(out / "model")
    assert finetuned_model.num_clusters == start.num_clusters
    record = finetuned_model.training_recipe
    assert record["finetuned_from"]["sha256"] and record["preset"]["trainable_stages"] == 2
    assert record["preset"]["augmented_views"] == 2  # the --set override, recorded
    assert "fine-tuned by self-labeling" in (out / "model" / "README.md").read_text()  # the card
    # the first stages are the start's; the centers are the start's (fixed classifier)
    assert torch.equal(finetuned_model.backbone.conv_stem.weight, start.backbone.conv_stem.weight)
    for before, after in zip(start.centers, finetuned_model.centers):
        assert torch.equal(before, after)
    conv_head = finetuned_model.backbone.conv_head.weight
    assert (not torch.equal(conv_head, start.backbone.conv_head.weight)) == (kept["epoch"] > 0)


def test_a_killed_finetuning_resumes_to_the_same_result(frozen_model, finetuned, tmp_path):
    root, _ = frozen_model
    summary, full = finetuned
    args = finetune_args(root, tmp_path / "cut")
    killed = run_finetune(*args, env={"SECU_KILL_AT": "step:5"}, check=False)  # in epoch 2
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = run_finetune(*args, "--resume")
    assert "resumed from" in resumed.stdout
    cut_state, full_state = checkpoint_state(tmp_path / "cut"), checkpoint_state(full)
    assert cut_state.keys() == full_state.keys()
    for key, value in full_state.items():
        assert torch.equal(cut_state[key], value), key  # bit for bit
    cut_summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    for key in ("accuracy", "nmi", "ari", "kept_epoch", "neighbor_agreement", "start_accuracy"):
        assert cut_summary[key] == summary[key], key
    cut_report = json.loads((tmp_path / "cut" / "results.json").read_text())
    assert cut_report["history"] == json.loads((full / "results.json").read_text())["history"]
    exported = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    for key, value in load_file(full / "model" / "model.safetensors").items():
        assert torch.equal(exported[key], value), key


def test_finetune_refuses_bad_input_with_a_clear_message(frozen_model, tmp_path):
    root, _ = frozen_model
    missing = run_finetune("--model", str(tmp_path), check=False)  # a real process: one line
    lines = missing.stderr.strip().splitlines()
    assert missing.returncode == 2 and len(lines) == 1 and "model.safetensors" in lines[0]
    for setting, named in (
        ("confident_fraction=1.5", "confident_fraction"),
        ("num_clusters=[5]", "does not read ['num_clusters']"),  # the start model's
        ("batch_size=500", "least one batch"),
    ):
        bad = run_here(
            FINETUNE,
            "--no_progress",
            "--model",
            str(root / "out"),
            "--output_dir",
            str(tmp_path / "out"),
            "--cache_dir",
            str(root / "cache"),
            "--set",
            setting,
            env={"HF_HUB_OFFLINE": "1", "SECU_DEBUG": None},
        )
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and len(lines) == 1 and named in lines[0], bad.stderr[-2000:]
        assert not (tmp_path / "out").exists()  # refused before the run wrote anything


@pytest.mark.slow
def test_two_process_finetuning_resumes_after_a_kill_to_the_same_result(frozen_model, tmp_path):
    """accelerate launch with 2 CPU processes: the cache split over them, each training on its
    share of every batch; one export, the same final line's keys. Both processes SIGKILLed
    inside epoch 2, then --resume: the same checkpoint, bit for bit, as an uninterrupted run."""
    root, _ = frozen_model

    def launch(out: Path, *extra: str, env: dict | None = None, check: bool = True):
        return run_finetune(
            *finetune_args(root, out), "--cache_dir", str(tmp_path / "cache"), *extra,
            launcher=[*accelerate_launch(2), "-q"], env={"ACCELERATE_USE_CPU": "1", **(env or {})},
            check=check,
        )  # fmt: skip

    full = launch(tmp_path / "two")
    summary = json.loads(full.stdout.strip().splitlines()[-1])
    out = tmp_path / "two"
    assert summary["epochs"] == 2 and Path(summary["report"]).is_file()
    assert summary["model_dir"] == str(out / "model")
    history = json.loads((out / "results.json").read_text())["history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert SeCuModel.from_pretrained(out / "model").num_clusters == [10, 20]
    killed = launch(tmp_path / "cut", env={"SECU_KILL_AT": "step:5"}, check=False)
    assert killed.returncode != 0
    resumed = launch(tmp_path / "cut", "--resume")
    assert "resumed from" in resumed.stdout
    cut_state, full_state = checkpoint_state(tmp_path / "cut"), checkpoint_state(out)
    assert cut_state.keys() == full_state.keys()
    for key, value in full_state.items():
        assert torch.equal(cut_state[key], value), key
