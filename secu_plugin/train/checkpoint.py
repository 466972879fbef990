"""Checkpoints of a training run: where training stands, and atomic saves of Accelerate state.

A run saves ``accelerator.save_state`` (model, optimizer, RNG, sampler, and every object
registered with ``register_for_checkpointing``: the bank and a :class:`TrainProgress`) into a
new ``checkpoints/state-<step>`` directory; only once it is complete does the ``latest`` file,
replaced atomically, name it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LATEST = "latest"  # file in checkpoints/ naming the last complete state directory


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


def save_checkpoint(accelerator, checkpoint_dir: Path, progress: TrainProgress) -> Path:
    """Saves the Accelerate state atomically; a crash while saving leaves the previous one.

    The state goes to a new directory, named by step and epoch so that the end of an epoch
    that is also a step checkpoint never writes into the directory ``latest`` names; only when
    it is complete does the ``latest`` file (replaced with ``os.replace``) name it. The
    previous state is then removed.
    """
    name = f"state-{progress.global_step:08d}-epoch-{progress.epoch:04d}"
    target = checkpoint_dir / name
    if target == latest_checkpoint(checkpoint_dir):
        return target  # this very state is saved already
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and target.exists():
        shutil.rmtree(target)  # left by a save that died before the pointer named it
    accelerator.wait_for_everyone()
    accelerator.save_state(str(target))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        pointer = checkpoint_dir / f".{LATEST}.tmp"
        pointer.write_text(name)
        previous = latest_checkpoint(checkpoint_dir)
        os.replace(pointer, checkpoint_dir / LATEST)
        if previous is not None and previous != target:
            shutil.rmtree(previous, ignore_errors=True)
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
