"""Nothing lost: real training runs killed at chosen moments, corrupted checkpoints, a full
disk, and user mistakes that end in one clear line."""

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from in_process import run_here
from launch import ROOT, TINY, TRAIN, write_digit_folder
from PIL import Image
from safetensors.torch import load_file

# 50 images, batch 16: 3 steps per epoch; a step checkpoint every 3 steps falls on each epoch
# end, the case where a save used to write into the directory `latest` named.
RUN = ["--epochs", "3", "--no_progress", "--checkpoint_every", "3", "--report_to", "none", *TINY]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), seed=1)


def train(args, env_extra=None, preexec_fn=None, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env_extra or {}))
    env.pop("SECU_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=ROOT,
        preexec_fn=preexec_fn,
    )


def final_state(output_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = output_dir / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text()
    bank = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)
    weights = load_file(latest / "model.safetensors")
    return {**{f"bank.{k}": v for k, v in bank.items()}, **weights}


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.fixture(scope="module")
def uninterrupted(digits, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full")
    result = train(["--data", str(digits), "--output_dir", str(out), *RUN])
    assert result.returncode == 0, result.stderr[-3000:]
    return final_state(out)


def resume_until_done(args, out: Path) -> None:
    for _ in range(3):
        result = train([*args, "--resume"])
        if result.returncode == 0:
            return
    raise AssertionError(result.stdout[-2000:] + result.stderr[-3000:])


@pytest.mark.slow
@pytest.mark.parametrize(
    "moment",
    [
        "step:4",  # mid-epoch
        "save_start:2",  # the end of epoch 0, right after the step checkpoint of the same step
        "state_written:3",  # mid-save: the state is on disk, its manifest is not
        "manifest_written:3",  # complete but not yet named by `latest`
        "pointer_replaced:3",  # just after `latest` names the new checkpoint
    ],
)
def test_a_run_killed_at_any_moment_resumes_to_the_same_result(
    moment, digits, uninterrupted, tmp_path
):
    args = ["--data", str(digits), "--output_dir", str(tmp_path), *RUN]
    killed = train(args, env_extra={"SECU_KILL_AT": moment})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resume_until_done(args, tmp_path)
    assert_same_state(final_state(tmp_path), uninterrupted)


@pytest.mark.slow
def test_a_corrupted_checkpoint_is_detected_and_an_older_one_used(digits, uninterrupted, tmp_path):
    args = ["--data", str(digits), "--output_dir", str(tmp_path), *RUN]
    killed = train(args, env_extra={"SECU_KILL_AT": "step:7"})  # inside epoch 2
    assert killed.returncode == -9
    checkpoints = tmp_path / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text()
    weights = latest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit pattern in a tensor
    weights.write_bytes(bytes(data))
    resumed = train([*args, "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"checkpoint {latest} is unusable (model.safetensors: sha256" in resumed.stdout
    assert_same_state(final_state(tmp_path), uninterrupted)


@pytest.mark.slow
def test_a_full_disk_ends_the_run_clearly_and_keeps_the_last_checkpoint(digits, tmp_path):
    args = ["--data", str(digits), "--output_dir", str(tmp_path), *RUN]
    first = train([*args, "--max_steps", "3"])
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoints = tmp_path / "checkpoints"
    before = (checkpoints / "latest").read_text()

    def small_files():  # every file written from now on is cut at 64 KiB: a disk that fills
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    full = train([*args, "--resume"], preexec_fn=small_files)
    assert full.returncode == 2
    last_line = full.stderr.strip().splitlines()[-1]
    assert last_line.startswith("error: saving checkpoint") and "still names" in last_line
    assert "Traceback" not in full.stderr
    assert (checkpoints / "latest").read_text() == before
    from secu_plugin.train.checkpoint import verify_checkpoint

    assert verify_checkpoint(checkpoints / before) is None
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == [before]


@pytest.mark.parametrize("case", ["missing", "empty", "one_image", "too_few_for_the_heads"])
def test_user_mistakes_end_in_one_error_line(case, tmp_path):
    data = tmp_path / "data"
    if case != "missing":
        data.mkdir()
    if case == "one_image":
        Image.new("L", (28, 28)).save(data / "a.png")
    if case == "too_few_for_the_heads":
        for i in range(12):
            Image.new("L", (28, 28), color=i * 20).save(data / f"{i}.png")
    # The named preset's heads (the auto preset would fit its heads to 12 images).
    preset = ["--preset", "mnist5k"] if case == "too_few_for_the_heads" else []
    args = ["--data", str(data), "--output_dir", str(tmp_path / "out"), "--no_progress", *preset]
    # One case in a new process (what a user sees); the others in this process: the recipe's
    # own code, without a new process's seconds of imports.
    if case == "missing":
        result = train(args)
    else:
        result = run_here(TRAIN, *args, env={"SECU_DEBUG": None, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr and lines[-1].startswith("error: ")
    expected = {
        "missing": "does not exist",
        "empty": "no images",
        "one_image": "at least 2 images",
        "too_few_for_the_heads": "num_clusters",
    }
    assert expected[case] in lines[-1]
    if case == "missing":  # one case is enough to see that --debug shows the traceback
        debug = run_here(
            TRAIN, "--data", str(data), "--output_dir", str(tmp_path / "out"), "--debug"
        )
        assert "Traceback" in debug.stderr


def test_evaluate_reports_a_missing_model_in_one_line(tmp_path):
    evaluate = ROOT / "recipes" / "evaluate.py"
    # in this process: the recipe's own code, without a new process's seconds of imports
    result = run_here(evaluate, "--model", str(tmp_path / "no"), "--data", "mnist5k")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.slow
def test_two_processes_killed_during_a_save_resume_to_the_same_result(digits, tmp_path):
    from launch import accelerate_launch

    no_bn = ['backbone_kwargs={"norm":"none"}', "projection_batchnorm=false"]
    args = ["--data", str(digits), *RUN, *no_bn]
    env = {"ACCELERATE_USE_CPU": "1"}

    def launch(out, extra=(), kill_at=None):
        command = [*accelerate_launch(2), "-q", str(TRAIN), *args, "--output_dir", str(out),
                   *extra]  # fmt: skip
        run_env = dict(os.environ, OMP_NUM_THREADS="1", **env)
        if kill_at:
            run_env["SECU_KILL_AT"] = kill_at
        return subprocess.run(command, env=run_env, capture_output=True, text=True,
                              timeout=300, check=False, cwd=ROOT)  # fmt: skip

    full = launch(tmp_path / "full")
    assert full.returncode == 0, full.stderr[-3000:]
    killed = launch(tmp_path / "cut", kill_at="state_written:2")
    assert killed.returncode != 0
    resumed = launch(tmp_path / "cut", extra=["--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_state(final_state(tmp_path / "cut"), final_state(tmp_path / "full"))
