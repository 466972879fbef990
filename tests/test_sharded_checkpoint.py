"""A sharded memory in checkpoints: every rank saves its shard inside the checkpoint's
manifest, and a run killed during or after a save resumes on 1, 2 or 4 processes to the result
of the uninterrupted run (real ``accelerate launch`` runs over gloo, ``memory=sharded`` forced
on 50 digits)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from in_process import run_here
from launch import ROOT, TINY, TRAIN, accelerate_launch, write_digit_folder
from safetensors.torch import load_file, save_file

from secu_plugin import SeCuCenterBank
from secu_plugin.data import load_mnist5k
from secu_plugin.train.checkpoint import resume_checkpoint, write_manifest
from secu_plugin.train.memory_shards import SHARDS_DIR, MemoryShards, shard_file
from secu_plugin.train.report import EpochReport

# 50 images, global batch 16: 3 steps per epoch, a checkpoint every 3 steps. Without
# BatchNorm: each process normalizes its own part of the batch (SyncBatchNorm is CUDA-only),
# which would make 1 and N processes train different networks.
SHARDED = ["--epochs", "3", "--no_progress", "--checkpoint_every", "3", "--report_to", "none",
           *TINY, "memory=sharded", 'backbone_kwargs={"norm":"none"}',
           "projection_batchnorm=false"]  # fmt: skip
NUM_IMAGES = 5000  # the Lightning example indexes all of MNIST-5k (4000 of them train)


def trained_bank(memory: str = "sharded") -> SeCuCenterBank:
    torch.manual_seed(0)
    bank = SeCuCenterBank(dim=4, num_clusters=[3, 5], num_instances=11, memory=memory)
    bank.start_epoch()
    bank.memory.copy_(torch.randint(0, 3, (2, 11), dtype=bank.memory.dtype))
    bank.stacked_counts += torch.arange(8)
    return bank


def write_shards(directory: Path, full: torch.Tensor, world: int, previous=None) -> None:
    """The files ``world`` ranks of a sharded run would have written."""
    for rank in range(world):
        tensors = {"memory": full[:, rank::world].contiguous(),
                   "memory_shard": torch.tensor([rank, world])}  # fmt: skip
        if previous is not None:
            tensors["report_previous"] = previous[:, rank::world].contiguous()
        path = shard_file(directory, rank, world)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))


@pytest.mark.parametrize("world", [1, 2, 4])
def test_shards_of_any_world_size_restore_the_bank_and_the_report(tmp_path, world):
    source = trained_bank()
    previous = torch.flip(source.memory, [1]).clone()
    report = EpochReport()
    report.load_state_dict({"previous": previous, "unsettled_epochs": 2})
    saving = MemoryShards(source, report)
    bank_state, report_state = (r.state_dict() for r in saving.registered)
    assert "memory" not in bank_state and int(bank_state["memory_shards"]) == 1
    assert report_state["previous"] is None  # in the shard files instead
    write_shards(tmp_path, source.memory, world, previous)
    bank_state["memory_shards"] = torch.tensor(world)

    for memory in ("sharded", "replicated"):  # a resume may also change the setting
        bank, restored_report = trained_bank(memory), EpochReport()
        bank.memory.fill_(-1)
        loading = MemoryShards(bank, restored_report)
        loading.registered[0].load_state_dict(bank_state)
        loading.registered[1].load_state_dict(report_state)
        loading.load(tmp_path)
        assert torch.equal(bank.memory, source.memory)
        assert torch.equal(bank.stacked_counts, source.stacked_counts)
        restored = restored_report.state_dict()
        assert torch.equal(restored["previous"], previous) and restored["unsettled_epochs"] == 2


def test_a_missing_or_foreign_shard_is_refused_by_name(tmp_path):
    directory = tmp_path / "checkpoints" / "state-00000003-epoch-0001"
    source = trained_bank()
    state = MemoryShards(source, EpochReport()).registered[0].state_dict()
    state["memory_shards"] = torch.tensor(2)
    write_shards(directory, source.memory, 2)

    def load():
        bank = trained_bank()
        bank.memory.fill_(-1)
        shards = MemoryShards(bank, EpochReport())
        shards.registered[0].load_state_dict(state)
        shards.load(directory)
        return bank

    assert torch.equal(load().memory, source.memory)
    second = shard_file(directory, 1, 2)
    second.rename(tmp_path / "aside")
    with pytest.raises(ValueError, match="missing \\['rank-00001-of-00002.safetensors'\\]"):
        load()
    save_file({"memory": torch.zeros(2, 5, dtype=torch.int16),
               "memory_shard": torch.tensor([0, 2])}, str(second))  # fmt: skip
    with pytest.raises(ValueError, match="holds the shard \\[0, 2\\]"):
        load()
    second.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="rank-00001-of-00002.safetensors: not a memory shard"):
        load()
    # The manifest covers the shards: a changed shard makes the checkpoint unusable.
    (tmp_path / "aside").rename(second)
    write_manifest(directory)
    assert resume_checkpoint_or_none(directory) == directory
    data = bytearray(second.read_bytes())
    data[-1] ^= 1
    second.write_bytes(bytes(data))
    assert resume_checkpoint_or_none(directory) is None


def resume_checkpoint_or_none(directory: Path) -> Path | None:
    (directory.parent / "latest").write_text(directory.name)
    try:
        return resume_checkpoint(directory.parent, log=lambda _: None)
    except ValueError:
        return None


@pytest.mark.parametrize("memory", ["sharded", "replicated"])
def test_evaluate_scores_the_memory_of_a_checkpoint(tmp_path, memory):
    """recipes/evaluate.py --checkpoint: the training memory's ACC / NMI / ARI from a run's
    newest verified checkpoint, its shards read one at a time (here: 3 ranks)."""
    labels = torch.from_numpy(load_mnist5k()[1]).long()
    bank = SeCuCenterBank(dim=2, num_clusters=[10, 3], num_instances=len(labels), memory=memory)
    truth = (labels + 3) % 10  # a perfect clustering of the K=10 head, under other ids
    truth[:100] = -1  # not assigned yet: left out
    bank.memory[0] = truth.to(bank.memory.dtype)
    directory = tmp_path / "checkpoints" / "state-00000003-epoch-0001"
    directory.mkdir(parents=True)
    state = MemoryShards(bank, None).registered[0].state_dict()
    if memory == "sharded":
        state["memory_shards"] = torch.tensor(3)
        write_shards(directory, bank.memory, 3)
    torch.save(state, directory / "custom_checkpoint_0.pkl")
    write_manifest(directory)
    (directory.parent / "latest").write_text(directory.name)
    evaluate = ROOT / "recipes" / "evaluate.py"
    args = ["--checkpoint", str(tmp_path), "--data", "mnist5k"]
    if memory == "sharded":  # the recipe as a user runs it
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, str(evaluate), *args]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    else:  # in this process: the recipe's own code, without a new process's seconds of imports
        result = run_here(evaluate, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert scores["num_clusters"] == 10 and scores["num_images"] == len(labels) - 100
    assert scores["accuracy"] == scores["nmi"] == scores["ari"] == 1.0
    # A shard that does not match the manifest: no verified checkpoint to score.
    if memory == "sharded":
        shard_file(directory, 2, 3).write_bytes(b"changed")
        result = run_here(evaluate, *args, env={"SECU_DEBUG": None})
        assert result.returncode == 2 and "no complete checkpoint" in result.stderr


# ---- real runs (slow): 2 and 4 gloo processes, killed, resumed on 1, 2 and 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return write_digit_folder(tmp_path_factory.mktemp("digits"), seed=1)


def launch(digits: Path, out: Path, processes: int, resume=False, kill_at=None):
    # One process: the recipe itself (accelerate launch refuses --multi_gpu with one).
    launcher = [*accelerate_launch(processes), "-q"] if processes > 1 else [sys.executable]
    command = [*launcher, str(TRAIN), "--data", str(digits),
               "--output_dir", str(out), *SHARDED, *(["--resume"] if resume else [])]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", ACCELERATE_USE_CPU="1")
    env.pop("SECU_DEBUG", None)
    if kill_at:
        env["SECU_KILL_AT"] = kill_at
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600,
                          check=False, cwd=ROOT)  # fmt: skip


def final_state(out: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint: the bank (its memory put together from every rank's shard, in
    instance order), the report's memory of the epoch start, and the network's weights."""
    checkpoints = out / "checkpoints"
    latest = checkpoints / (checkpoints / "latest").read_text()
    bank = torch.load(latest / "custom_checkpoint_0.pkl", weights_only=False)
    report = torch.load(latest / "custom_checkpoint_2.pkl", weights_only=False)
    world = int(bank.pop("memory_shards"))
    shards = sorted((latest / SHARDS_DIR).iterdir())
    assert [p.name for p in shards] == [shard_file(latest, r, world).name for r in range(world)]
    assert report["previous"] is None and report["previous_in_shards"]
    memory = previous = None
    for rank, path in enumerate(shards):
        shard = load_file(path)
        if memory is None:
            memory = torch.full((shard["memory"].shape[0], 50), -2, dtype=shard["memory"].dtype)
            previous = memory.clone()
        memory[:, rank::world] = shard["memory"]
        previous[:, rank::world] = shard["report_previous"]
    weights = load_file(latest / "model.safetensors")
    return {**{f"bank.{k}": v for k, v in bank.items()}, "bank.memory": memory,
            "report.previous": previous, **weights}  # fmt: skip


def assert_same_state(resumed: dict, full: dict, exact: bool) -> None:
    """Equal; on another number of processes the gradients are averaged in another order,
    so floating-point tensors agree to float32 rounding and every label exactly."""
    assert resumed.keys() == full.keys()
    for key, value in full.items():
        if exact or not value.is_floating_point():
            assert torch.equal(resumed[key], value), key
        else:
            torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-5, msg=key)


@pytest.fixture(scope="module")
def uninterrupted_run(digits, tmp_path_factory) -> tuple[dict, Path]:
    """One uninterrupted run on 2 processes, shared: its final line and output directory."""
    out = tmp_path_factory.mktemp("full")
    result = launch(digits, out, 2)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), out


@pytest.mark.slow
def test_two_processes_with_a_sharded_memory_are_in_sync(uninterrupted_run):
    """Each rank holds its own part of a sharded memory (and its own ``memory_shard`` index):
    the check compares only what the ranks must share, so a correct run reports them in sync."""
    summary, _ = uninterrupted_run
    assert summary["num_processes"] == 2 and summary["ranks_in_sync"] is True


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_run) -> dict:
    _, out = uninterrupted_run
    assert (out / "results.json").is_file()  # the export ran: the memory's ACC included
    state = final_state(out)
    # Every rank's labels were saved: an epoch labels 48 of the 50 images, a rank owns 25.
    assert ((state["bank.memory"] >= 0).sum(1) >= 48).all()
    return state


@pytest.mark.slow
@pytest.mark.parametrize(
    ("processes", "kill_at", "resume_on"),
    [
        (2, "state_written:2", [2, 1]),  # during a save: shards on disk, no manifest yet
        (2, "pointer_replaced:2", [4]),  # just after a save
        (4, "state_written:3", [4, 2]),
    ],
)
def test_a_sharded_run_killed_resumes_on_any_number_of_processes(
    processes, kill_at, resume_on, digits, uninterrupted, tmp_path
):
    cut = tmp_path / "cut"
    killed = launch(digits, cut, processes, kill_at=kill_at)
    assert killed.returncode != 0, killed.stderr[-2000:]
    assert (cut / "checkpoints" / "latest").is_file()
    for resumed_on in resume_on:
        # Each resume starts from the same interrupted checkpoint.
        out = tmp_path / f"resumed-on-{resumed_on}"
        subprocess.run(["cp", "-r", str(cut), str(out)], check=True)
        resumed = launch(digits, out, resumed_on, resume=True)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "resumed from" in resumed.stdout + resumed.stderr
        # Bit-identical when every part ran on the 2 processes of the uninterrupted run.
        exact = processes == resumed_on == 2
        assert_same_state(final_state(out), uninterrupted, exact=exact)


@pytest.mark.slow
def test_lightning_saves_every_ranks_shard_and_resumes_on_one_process(tmp_path):
    pytest.importorskip("pytorch_lightning")
    pytest.importorskip("lightly")
    example = ROOT / "examples" / "lightning_secu.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def fit(devices: int, max_steps: int, out: str, *extra: str) -> None:
        result = subprocess.run(
            [sys.executable, str(example), "--devices", str(devices), "--max_steps",
             str(max_steps), "--batch_size_per_device", "16", "--val_check_interval", "3",
             "--memory", "sharded", "--checkpoint_dir", str(tmp_path / "checkpoints"),
             "--bank_out", str(tmp_path / out), *extra],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    fit(2, 6, "two")
    shards = [torch.load(tmp_path / "two" / f"rank{r}.pt") for r in range(2)]
    labelled = torch.zeros(3, NUM_IMAGES, dtype=torch.bool)
    for rank, state in enumerate(shards):
        assert state["memory_shard"].tolist() == [rank, 2]
        labelled[:, rank::2] = state["memory"] >= 0
    assert (labelled.sum(1) == 6 * 2 * 16).all()  # 6 steps of 2 x 16 distinct images
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert "bank.memory" not in checkpoint["state_dict"]
    assert checkpoint["memory_shards"]["world_size"] == 2

    # One process resumes and trains one more step of 16 images: it holds every label of
    # both ranks' shards (rank 0's checkpoint alone would have half of them).
    fit(1, 7, "one", "--resume", str(tmp_path / "checkpoints" / "last.ckpt"))
    memory = torch.load(tmp_path / "one" / "rank0.pt")["memory"]
    assert (memory[labelled] >= 0).all()
    assert ((memory >= 0).sum(1) <= 6 * 2 * 16 + 16).all()
