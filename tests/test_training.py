"""Training recipes: presets, optimizer groups, schedules, exact resume, two processes, demo."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from in_process import run_here
from launch import ROOT, TINY, TRAIN, accelerate_launch, write_digit_folder
from test_readme import check_final_line_examples
from torch import nn

from secu_plugin.train.optim import build_optimizer, center_lr, encoder_lr
from secu_plugin.train.presets import PRESETS, get_preset


def test_presets_resolve_to_the_papers_numbers():
    common = {
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.2,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "warmup_epochs": 11,
        "dim": 128,
        "temperature_x": 0.05,
        "label_weight": 0.2,
        "dual_lr": 0.1,
        "lower_bound_ratio": 0.9,
        "alpha": 6000.0,
        "projection_layers": 2,
        "views": "byol",
    }
    table = {  # preset: epochs, center lr, min crop, heads, assigner, temperature_c, backbone
        "cifar10": (401, 1.2, 0.3, list(range(10, 101, 10)), "size", 0.05, "secu_resnet18_cifar"),
        "cifar10-entropy": (
            401,
            1.2,
            0.3,
            list(range(10, 101, 10)),
            "entropy",
            0.05,
            "secu_resnet18_cifar",
        ),
        "cifar100-20": (
            801,
            0.8,
            0.2,
            list(range(20, 201, 20)),
            "size",
            0.05,
            "secu_resnet18_cifar",
        ),
        "stl10": (801, 0.8, 0.2, list(range(10, 101, 10)), "size", 1.0, "secu_resnet18_stl"),
    }
    for name, (epochs, clr, crop, heads, assigner, tc, backbone) in table.items():
        preset = get_preset(name)
        assert {k: preset.to_dict()[k] for k in common} == common, name
        assert (
            preset.schedule.epochs,
            preset.optimization.center_lr,
            preset.augmentation.min_scale,
            preset.bank.num_clusters,
            preset.bank.assigner,
            preset.loss.temperature_c,
            preset.network.backbone,
        ) == (epochs, clr, crop, heads, assigner, tc, backbone), name
    imagenet = get_preset("imagenet")
    assert (
        imagenet.network.backbone,
        imagenet.loader.batch_size,
        imagenet.optimization.optimizer,
        imagenet.optimization.lr,
        imagenet.optimization.weight_decay,
        imagenet.schedule.epochs,
        imagenet.augmentation.min_scale,
        imagenet.bank.num_clusters,
        imagenet.loss.temperature_x,
        imagenet.loss.temperature_c,
        imagenet.bank.dual_lr,
        imagenet.bank.lower_bound_ratio,
        imagenet.bank.alpha,
        imagenet.optimization.center_lr,
        imagenet.network.projection_layers,
        imagenet.network.predictor_hidden_dim,
        imagenet.network.dim,
    ) == (
        "resnet50",
        1024,
        "lars",
        1.6,
        1e-6,
        1001,
        0.08,
        list(range(1000, 10001, 1000)),
        0.05,
        0.05,
        20.0,
        0.4,
        1e5,
        4.2,
        3,
        2048,
        128,
    )
    assert not imagenet.optimization.center_lr_ramp
    entropy = get_preset("imagenet-entropy")
    assert entropy.bank.assigner == "entropy" and entropy.optimization.center_lr_ramp
    assert set(PRESETS) >= {"mnist5k", "cifar10", "cifar10-entropy", "cifar100-20", "stl10"}
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("cifar11")
    with pytest.raises(ValueError, match="unknown preset settings"):
        get_preset("cifar10", learning_rate=1.0)


def test_presets_take_input_size_and_normalization_from_the_backbone():
    """The paper's crops and normalizations, through the networks' timm data config."""
    from secu_plugin.models import SeCuNetwork

    expected = {  # preset: input size, mean
        "cifar10": (32, [0.4914, 0.4822, 0.4465]),
        "cifar100-20": (32, [0.5071, 0.4867, 0.4408]),
        "stl10": (96, [0.485, 0.456, 0.406]),
        "mnist5k": (28, [0.1307]),
    }
    for name, (size, mean) in expected.items():
        config = SeCuNetwork(**asdict(get_preset(name).network)).data_config
        assert config["input_size"][-1] == size, name
        assert list(config["mean"]) == pytest.approx(mean), name


def test_schedules_follow_the_paper():
    kwargs = {"steps_per_epoch": 10, "epochs": 100}
    assert all(encoder_lr(0.2, 0, s, **kwargs) == 0.0 for s in range(10))  # epoch 0: lr 0
    warmup = [encoder_lr(0.2, e, s, **kwargs) for e in range(1, 11) for s in range(10)]
    assert warmup == sorted(warmup) and warmup[-1] < 0.2
    assert encoder_lr(0.2, 11, 0, **kwargs) == pytest.approx(0.2)
    assert encoder_lr(0.2, 99, 9, **kwargs) < 1e-3
    assert center_lr(1.2, 50, 3, **kwargs) == 1.2
    ramp = [center_lr(4.2, e, 0, ramp=True, **kwargs) for e in range(0, 100, 10)]
    assert ramp[0] == 0.0 and ramp == sorted(ramp) and ramp[-1] < 4.2


def test_lars_groups_match_the_reference():
    """Matrices and the centers: weight decay and trust ratio; biases and norms: neither."""
    encoder = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 4))
    centers = nn.ParameterList([nn.Parameter(torch.randn(3, 4)), nn.Parameter(torch.randn(2, 4))])
    optimizer = build_optimizer("lars", encoder, centers, weight_decay=0.1, momentum=0.0)
    roles = [
        (g["role"], g["weight_decay"], sorted(p.ndim for p in g["params"]))
        for g in optimizer.param_groups
    ]
    assert roles == [
        ("encoder", 0.1, [2, 2]),
        ("encoder", 0.0, [1, 1, 1, 1]),
        ("centers", 0.1, [2, 2]),
    ]
    for group in optimizer.param_groups:
        group["lr"] = 1.0
    params = [encoder[0].weight, encoder[0].bias, centers[0]]
    before = [p.detach().clone() for p in params]
    for p in [*encoder.parameters(), *centers]:
        p.grad = torch.ones_like(p)
    optimizer.step()
    # A bias moves by lr * grad exactly: no decay, no trust ratio.
    torch.testing.assert_close(params[1].detach(), before[1] - 1.0)
    for param, old in ((params[0], before[0]), (params[2], before[2])):
        grad = torch.ones_like(old) + 0.1 * old
        trust = 0.001 * old.norm() / (torch.ones_like(old).norm() + 0.1 * old.norm() + 1e-8)
        torch.testing.assert_close(param.detach(), old - trust * grad)
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer("adam", encoder, centers, weight_decay=0.0)


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """50 real MNIST-5k digits as PNG files in class subfolders (labels for evaluation).

    50 is not a multiple of the tests' batch of 16: each epoch drops a partial last batch."""
    return write_digit_folder(tmp_path_factory.mktemp("digits"))


def run_recipe(args, launcher=None, timeout=900):
    # No GPU here: Accelerate's CPU flag next to --multi_gpu makes the processes one run.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1")
    command = [*(launcher or [sys.executable]), str(TRAIN), "--no_progress", *args]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result


def saved_state(output_dir: Path) -> tuple[dict, dict, dict]:
    """The bank, the progress and the network weights of the last checkpoint."""
    from safetensors.torch import load_file

    latest = output_dir / "checkpoints" / (output_dir / "checkpoints" / "latest").read_text()
    bank = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)
    progress = torch.load(latest / "custom_checkpoint_1.pkl", weights_only=False)
    return bank, progress, load_file(latest / "model.safetensors")


def epoch_lines(log) -> dict[str, str]:
    """The epoch lines of a run's log, by epoch, without their timing."""
    lines = [
        line.rsplit(" | ", 1)[0] for line in log.stdout.splitlines() if line.startswith("epoch ")
    ]
    return {line.split(":")[0]: line for line in lines}


@pytest.fixture(scope="module")
def full_run(digit_folder, tmp_path_factory) -> tuple[dict, subprocess.CompletedProcess, Path]:
    """One uninterrupted 3-epoch run, shared: its summary, its log and its output directory
    (a test that changes the directory works on a copy)."""
    out = tmp_path_factory.mktemp("full")
    summary, log = run_recipe(["--data", str(digit_folder), "--epochs", "3", *TINY,
                               "--output_dir", str(out)])  # fmt: skip
    return summary, log, out


def test_a_run_that_has_not_settled_ends_with_advice(full_run):
    summary, log, _ = full_run
    last = [line for line in log.stdout.splitlines() if line.startswith("epoch 2:")][-1]
    changed = float(last.split("| changed ")[1].split("%")[0]) / 100
    # Three epochs on 50 images: the heads are still moving, and the run says what to try.
    assert changed > 0.10, last
    assert "recipes/train_head.py" in summary["advice"]
    assert f"advice: {summary['advice']}" in log.stdout
    assert f"reassigned {100 * changed:.0f}% of the images" in summary["advice"]


def test_the_docs_example_of_the_final_line_has_the_real_keys(full_run):
    """The README's example of the demo's final line, against a real run's: keys and types."""
    check_final_line_examples("recipes/train.py", full_run[0])


def test_a_run_no_better_than_kmeans_on_the_pixels_says_so_with_the_next_command(
    full_run, digit_folder
):
    summary, _, out = full_run
    # Three epochs from scratch on 50 digits learn less than k-means on their pixels shows.
    assert summary["beats_kmeans_pixels"] is False
    assert summary["accuracy"] <= summary["kmeans_pixels_accuracy"] + 0.02
    advice = summary["advice"]
    assert "no better than k-means on the pixels" in advice
    assert f"accelerate launch recipes/train_head.py --data {digit_folder}" in advice
    check = json.loads((out / "results.json").read_text())["pixel_check"]
    assert check["learned"] is False and check["images"] == 50 and check["score"] == "accuracy"
    assert f"{check['kmeans_pixels']:.3f}" in advice and f"{check['run']:.3f}" in advice
    page = (out / "report" / "index.html").read_text()
    assert "no better than k-means on the pixels" in page and "recipes/train_head.py" in page


def test_interrupted_and_resumed_run_matches_uninterrupted_run(digit_folder, full_run, tmp_path):
    args = ["--data", str(digit_folder), "--epochs", "3", *TINY]
    full, full_log, full_dir = full_run
    # Interrupted inside epoch 1 (3 steps per epoch), then resumed.
    part, _ = run_recipe([*args, "--output_dir", str(tmp_path / "cut"), "--max_steps", "4"])
    assert part["steps"] == 4
    # A save that died half-way leaves a directory that nothing points to: resume ignores it.
    checkpoints = tmp_path / "cut" / "checkpoints"
    latest = (checkpoints / "latest").read_text()
    (checkpoints / "state-99999999-epoch-0009").mkdir()
    (checkpoints / ".latest.tmp").write_text("state-99999999-epoch-0009")
    resumed, log = run_recipe([*args, "--output_dir", str(tmp_path / "cut"), "--resume"])
    assert f"resumed from {checkpoints / latest}" in log.stdout
    assert resumed["steps"] == full["steps"] == 9
    full_bank, full_progress, full_weights = saved_state(full_dir)
    cut_bank, cut_progress, cut_weights = saved_state(tmp_path / "cut")
    assert cut_progress == full_progress
    for saved, restored in ((full_bank, cut_bank), (full_weights, cut_weights)):
        assert saved.keys() == restored.keys()
        for key in saved:
            assert torch.equal(saved[key], restored[key]), key  # bit for bit
    # The resumed epoch reports what the uninterrupted one did (loss, sizes, changes, ACC).
    resumed_lines = epoch_lines(log)
    assert set(resumed_lines) == {"epoch 1", "epoch 2"}
    assert resumed_lines == {k: v for k, v in epoch_lines(full_log).items() if k in resumed_lines}
    assert (resumed["accuracy"], resumed["nmi"]) == (full["accuracy"], full["nmi"])


def test_checkpoints_are_replaced_atomically(full_run):
    """The shared run's directory, as the run left it (a resume that ignores a half-written
    save: test_interrupted_and_resumed_run_matches_uninterrupted_run)."""
    checkpoints = full_run[2] / "checkpoints"
    states = sorted((p.name for p in checkpoints.iterdir() if p.is_dir()), reverse=True)
    assert len(states) == 2  # --keep_checkpoints 2: older states removed
    assert (checkpoints / "latest").read_text() == states[0]
    assert all((checkpoints / name / "MANIFEST.json").is_file() for name in states)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    # in this process: the recipe's own code, without a new process's seconds of imports
    result = run_here(TRAIN, "--resume", "--output_dir", str(tmp_path), *TINY)
    assert result.returncode != 0 and "no complete checkpoint" in result.stderr


@pytest.mark.slow
def test_two_process_accelerate_launch_matches_one_process(digit_folder, tmp_path):
    # No BatchNorm: then a batch split over two processes gives the network the same outputs
    # as the whole batch in one (SyncBatchNorm exists only on CUDA). 50 images, batches of 16:
    # the partial last batch is dropped alike, never padded with repeated images.
    args = [
        "--data",
        str(digit_folder),
        "--epochs",
        "3",
        *TINY,
        'backbone_kwargs={"norm":"none"}',
        "projection_batchnorm=false",
    ]
    launch = accelerate_launch(2)
    two, _ = run_recipe([*args, "--output_dir", str(tmp_path / "two")], launcher=launch)
    one, _ = run_recipe([*args, "--output_dir", str(tmp_path / "one")])
    assert two["num_processes"] == 2 and one["num_processes"] == 1
    assert two["ranks_in_sync"] is True  # every rank's bank state hashed and compared
    two_bank, two_progress, _ = saved_state(tmp_path / "two")
    one_bank, one_progress, _ = saved_state(tmp_path / "one")
    assert torch.equal(two_bank["memory"], one_bank["memory"])
    for key in one_bank:
        if key.startswith("counts"):
            assert torch.equal(two_bank[key], one_bank[key]), key
    torch.testing.assert_close(two_bank["centers.0"], one_bank["centers.0"], rtol=1e-4, atol=1e-5)
    assert two_progress["global_step"] == one_progress["global_step"] == 9


def test_imagenet_recipe_runs_with_predictor_lars_and_byol_views(digit_folder, tmp_path):
    """recipes/train_imagenet.py (3-layer head, predictor, LARS, BYOL views), shrunk."""
    script = ROOT / "recipes" / "train_imagenet.py"
    args = [
        "--data",
        str(digit_folder),
        "--epochs",
        "2",
        "--output_dir",
        str(tmp_path),
        "--no_progress",
        "--set",
        "backbone=secu_convnet_tiny",
        "input_size=32",
        "num_clusters=[10,20]",
        "batch_size=16",
        "num_workers=0",
        "warmup_epochs=1",
        "predictor_hidden_dim=32",
    ]
    result = subprocess.run(
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] == 6
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["projection_layers"] == 3 and config["predictor_hidden_dim"] == 32
    assert config["training"]["preset"]["optimizer"] == "lars"


def test_gradient_accumulation_over_two_half_batches_matches_one_full_batch():
    """Accelerate's accumulation gives the encoder the full batch's gradient when the halves
    get the labels the full batch would (here: a negligible dual step, fresh memory); in general the
    second half is assigned from the state the first half left (see the README)."""
    from accelerate import Accelerator

    from secu_plugin import SeCuCenterBank, SeCuLoss

    def gradients(accumulation: int, batches: list[torch.Tensor]) -> torch.Tensor:
        torch.manual_seed(0)
        encoder = nn.Linear(12, 8)
        bank = SeCuCenterBank(dim=8, num_clusters=[4, 6], num_instances=32, dual_lr=1e-9)
        bank.start_epoch()
        criterion = SeCuLoss(bank)
        optimizer = torch.optim.SGD([*encoder.parameters(), *bank.centers], lr=0.0)
        accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
        encoder, optimizer = accelerator.prepare(encoder, optimizer)
        for x0, x1, indices in batches:
            with accelerator.accumulate(encoder):
                loss = criterion(encoder(x0), encoder(x1), indices)
                accelerator.backward(loss)
                grad = encoder.weight.grad.clone()
                optimizer.step()
                optimizer.zero_grad()
        return grad

    generator = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(16, 12, generator=generator), torch.randn(16, 12, generator=generator)
    indices = torch.arange(16)
    full = gradients(1, [(x0, x1, indices)])
    halves = gradients(2, [(x0[:8], x1[:8], indices[:8]), (x0[8:], x1[8:], indices[8:])])
    torch.testing.assert_close(halves, full, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_launch_whose_processes_would_run_alone_is_refused(digit_folder, tmp_path):
    """--multi_gpu without GPUs and without the CPU flag: N separate runs, refused."""
    launch = [*accelerate_launch(2), "-q"]
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    result = subprocess.run(
        [*launch, str(TRAIN), "--data", str(digit_folder), "--output_dir", str(tmp_path), *TINY],
        env=dict(env, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=300,
        check=False, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode != 0
    assert "error: 2 processes were launched but Accelerate runs 1" in result.stderr


def test_an_output_directory_inside_the_data_folder_is_refused(digit_folder):
    """A run's output never becomes its input: the next run would train on its montage."""
    inside = digit_folder / "3" / "run"
    result = run_here(
        TRAIN, "--data", str(digit_folder), "--output_dir", str(inside), "--no_progress", *TINY,
        env={"SECU_DEBUG": None},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: --output_dir") and "Traceback" not in result.stderr
    assert str(inside) in last_line and f"--data folder {digit_folder}" in last_line
    assert not inside.exists()
