"""Checkpoints of a training run: where training stands, and atomic saves of Accelerate state.

A run saves ``accelerator.save_state`` (model, optimizer, RNG, sampler, and every object
registered with ``register_for_checkpointing``: the bank and a :class:`TrainProgress`) into a
new ``checkpoints/state-<step>-epoch-<epoch>`` directory, with every rank's shard of a sharded
memory (:mod:`secu_plugin.train.memory_shards`), then a manifest of its files; only
then does the ``latest`` file, replaced atomically, name it. ``--resume`` verifies the manifest
and falls back to the newest complete checkpoint. docs/reliability.md says what survives what.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from secu_plugin.data.files import file_sha256

if TYPE_CHECKING:
    from secu_plugin.train.memory_shards import MemoryShards

LATEST = "latest"  # file in checkpoints/ naming the last complete state directory
MANIFEST = "MANIFEST.json"  # written last into a state directory: its files, sizes, sha256


class TrainProgress:
    """Where training stands, saved with the Accelerate state so a resume continues there.

    Holds counters and the running loss of the current epoch (a sum on the device, read back
    once per epoch); nothing grows with the number of steps.

    Examples:
        >>> import torch
        >>> progress = TrainProgress()
        >>> progress.record(torch.tensor(0.5)); progress.record(torch.tensor(1.5))
        >>> progress.epoch_mean_loss()
        1.0
        >>> restored = TrainProgress()
        >>> restored.load_state_dict(progress.state_dict())
        >>> restored.global_step, restored.epoch_mean_loss()
        (2, 1.0)
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self._loss_sum = 0.0  # a float, or a device tensor between read-backs
        self._loss_steps = 0

    def record(self, loss) -> None:
        """Counts a step and adds its loss, without waiting for the device."""
        self._loss_sum = self._loss_sum + loss.detach().double()
        self._loss_steps += 1
        self.step_in_epoch += 1
        self.global_step += 1
        fault_point("step")

    def epoch_mean_loss(self) -> float:
        """The mean loss of the steps recorded this epoch (one device read-back)."""
        return float(self._loss_sum) / max(self._loss_steps, 1)

    def next_epoch(self) -> None:
        """Moves to the start of the next epoch."""
        self.epoch += 1
        self.step_in_epoch = 0
        self._loss_sum, self._loss_steps = 0.0, 0

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "loss_sum": float(self._loss_sum),
            "loss_steps": self._loss_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.step_in_epoch = int(state["step_in_epoch"])
        self.global_step = int(state["global_step"])
        self._loss_sum = float(state["loss_sum"])
        self._loss_steps = int(state["loss_steps"])


def save_checkpoint(
    accelerator,
    checkpoint_dir: Path,
    progress: TrainProgress,
    keep: int = 2,
    memory_shards: MemoryShards | None = None,
) -> Path:
    """Saves the Accelerate state so that no crash, kill or full disk loses the last good one.

    The state goes to a fresh directory named by step and epoch (the end of an epoch that is
    also a step checkpoint never writes into a directory ``latest`` names). Once every process
    has written its files, a manifest (name, size and sha256 of every file) is written last,
    then the ``latest`` file is replaced atomically to name the directory; the oldest complete
    checkpoints beyond ``keep`` are removed. ``memory_shards``: every rank writes its shard of
    a sharded memory beside the state, before the manifest. A failed write (disk full) removes the partial
    directory and raises an ``OSError`` saying that ``latest`` still names the previous one.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
    name = f"state-{progress.global_step:08d}-epoch-{progress.epoch:04d}"
    target = checkpoint_dir / name
    if target == latest_checkpoint(checkpoint_dir):
        return target  # this very state is saved already
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and target.exists():
        shutil.rmtree(target)  # left by a save that died before the pointer named it
    accelerator.wait_for_everyone()
    fault_point("save_start")
    try:
        accelerator.save_state(str(target))
        if memory_shards is not None:
            memory_shards.save(target)  # on every rank: save_state wrote rank 0's state only
        accelerator.wait_for_everyone()
        fault_point("state_written")
        if accelerator.is_main_process:
            write_manifest(target)
            fault_point("manifest_written")
            _write_atomically(checkpoint_dir / LATEST, name)
            fault_point("pointer_replaced")
    except Exception as error:  # OSError, or the safetensors writer's own error
        if accelerator.is_main_process:
            shutil.rmtree(target, ignore_errors=True)
        previous = latest_checkpoint(checkpoint_dir)
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise OSError(
            f"saving checkpoint {target} failed ({reason}); nothing was lost: "
            + (
                f"'latest' still names {previous}"
                if previous
                else "there was no earlier checkpoint"
            )
        ) from error
    if accelerator.is_main_process:
        for old in complete_checkpoints(checkpoint_dir)[keep:]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def latest_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The state directory the ``latest`` file names, if it exists; None otherwise.

    Examples:
        >>> latest_checkpoint(Path("no/such/run/checkpoints")) is None
        True
    """
    pointer = checkpoint_dir / LATEST
    if not pointer.is_file():
        return None
    target = checkpoint_dir / pointer.read_text().strip()
    return target if target.is_dir() else None


def write_manifest(directory: Path) -> None:
    """Writes ``MANIFEST.json`` (every file's size and sha256) last, atomically.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "weights.bin").write_bytes(b"1234")
        >>> write_manifest(folder)
        >>> verify_checkpoint(folder) is None
        True
        >>> _ = (folder / "weights.bin").write_bytes(b"1235")
        >>> verify_checkpoint(folder)
        'weights.bin: sha256 differs from the manifest'
    """
    files = {
        path.relative_to(directory).as_posix(): {
            "size": path.stat().st_size,
            "sha256": file_sha256(path),
        }
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    _write_atomically(directory / MANIFEST, json.dumps({"files": files}, indent=1))


def verify_checkpoint(directory: Path) -> str | None:
    """None if ``directory`` is a complete checkpoint matching its manifest, else what is wrong.

    Examples:
        >>> verify_checkpoint(Path("no/such/checkpoint"))
        'no MANIFEST.json: the save did not finish'
    """
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        return f"no {MANIFEST}: the save did not finish"
    try:
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST}: {error}"
    for relative, expected in files.items():
        path = directory / relative
        if not path.is_file():
            return f"{relative}: missing"
        if path.stat().st_size != expected["size"]:
            return f"{relative}: {path.stat().st_size} bytes, the manifest says {expected['size']}"
        if file_sha256(path) != expected["sha256"]:
            return f"{relative}: sha256 differs from the manifest"
    return None


def complete_checkpoints(checkpoint_dir: Path) -> list[Path]:
    """The checkpoint directories that hold a manifest, newest first (not verified).

    Examples:
        >>> complete_checkpoints(Path("no/such/run/checkpoints"))
        []
    """
    if not checkpoint_dir.is_dir():
        return []
    found = [p for p in checkpoint_dir.glob("state-*") if (p / MANIFEST).is_file()]
    return sorted(found, key=lambda p: p.name, reverse=True)


def resume_checkpoint(checkpoint_dir: Path, log=print) -> Path:
    """The checkpoint to resume from: what ``latest`` names if it verifies, else the newest
    complete one (saying why); a ValueError if there is none.

    Examples:
        >>> resume_checkpoint(Path("no/such/run/checkpoints"))
        Traceback (most recent call last):
        ...
        ValueError: --resume: no complete checkpoint in no/such/run/checkpoints
    """
    named = latest_checkpoint(checkpoint_dir)
    candidates = ([named] if named else []) + [
        p for p in complete_checkpoints(checkpoint_dir) if p != named
    ]
    for candidate in candidates:
        problem = verify_checkpoint(candidate)
        if problem is None:
            return candidate
        log(f"checkpoint {candidate} is unusable ({problem}); trying an older one")
    raise ValueError(f"--resume: no complete checkpoint in {checkpoint_dir}")


def fault_point(name: str) -> None:
    """Kills this process at a named moment of a save when ``SECU_KILL_AT`` says so.

    ``SECU_KILL_AT=save_start:2`` SIGKILLs the process the second time it reaches
    ``save_start``: the fault tests use it to stop a real run at exact moments.
    """
    wanted = os.environ.get("SECU_KILL_AT")
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _FAULT_COUNTS[name] = _FAULT_COUNTS.get(name, 0) + 1
    if _FAULT_COUNTS[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


_FAULT_COUNTS: dict[str, int] = {}


def _write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a temporary file, flushes it to disk, then renames it over ``path``."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a power cut
    finally:
        os.close(directory)
