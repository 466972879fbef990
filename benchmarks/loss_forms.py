"""The forms of one SeCu loss step that ``loss_step.py`` times, and how they are timed.

Each form is a closure running one step (forward, backward, gradients cleared) on the same
:class:`Inputs`: a SeCu criterion (:func:`secu_step`: the per-head baseline or the fused
``SeCuLoss``), lightly's SwaV on the same heads (:func:`swav_step`) and the dense products
alone (:func:`floor_step`). :func:`time_steps` interleaves them step by step so that noise from
other processes hits all of them alike.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from benchmarks.common import synchronize, timed
from secu_plugin import SeCuCenterBank

try:
    from lightly.models.modules import SwaVPrototypes
except ImportError:  # the GPU machine may not have lightly
    SwaVPrototypes = None

Step = Callable[[], None]


class Inputs:
    """Fixed features and a cycle of index batches (distinct within a batch)."""

    def __init__(
        self, batch: int, dim: int, num_views: int, num_instances: int, device: torch.device
    ) -> None:
        generator = torch.Generator().manual_seed(0)
        self.views = [
            torch.randn(batch, dim, generator=generator).to(device).requires_grad_()
            for _ in range(num_views)
        ]
        self.batches = [
            torch.randperm(num_instances, generator=generator)[:batch].to(device) for _ in range(8)
        ]
        self._next = 0

    def indices(self) -> torch.Tensor:
        self._next = (self._next + 1) % len(self.batches)
        return self.batches[self._next]

    def clear_grad(self) -> None:
        for view in self.views:
            view.grad = None


def secu_step(criterion: torch.nn.Module, inputs: Inputs) -> Step:
    """One step of a SeCu criterion (either form): forward, backward, gradients cleared."""
    bank = criterion.bank

    def step() -> None:
        loss = criterion(*inputs.views[:2], inputs.indices(), *inputs.views[2:])
        loss.backward()
        inputs.clear_grad()
        for center in bank.centers:
            center.grad = None

    return step


def swav_step(heads: Sequence[int], inputs: Inputs, device: torch.device) -> Step:
    """One step of lightly's SwaV on the same heads: two views, no queue, no multi-crop."""
    prototypes = SwaVPrototypes(inputs.views[0].shape[1], n_prototypes=list(heads)).to(device)
    from lightly.loss import SwaVLoss

    criterion = SwaVLoss()
    z0, z1 = inputs.views[:2]

    def step() -> None:
        prototypes.normalize()
        out0 = prototypes(F.normalize(z0, dim=1))
        out1 = prototypes(F.normalize(z1, dim=1))
        loss = sum(criterion([a, b], []) for a, b in zip(out0, out1)) / len(heads)
        loss.backward()
        inputs.clear_grad()
        prototypes.zero_grad(set_to_none=True)

    step.module = prototypes  # for the state size
    return step


def floor_step(total_k: int, inputs: Inputs, device: torch.device) -> Step:
    """The three dense products of a SeCu step alone, into preallocated outputs."""
    generator = torch.Generator().manual_seed(1)
    flat = torch.cat([view.detach() for view in inputs.views])
    dim = flat.shape[1]
    centers = F.normalize(torch.randn(total_k, dim, generator=generator), dim=1).to(device)
    targets = F.normalize(torch.randn(total_k, dim, generator=generator), dim=1).to(device)
    similarity = flat.new_empty(flat.shape[0], total_k)
    logits = flat.new_empty(flat.shape[0], total_k)
    gradient = torch.empty_like(flat)

    def step() -> None:
        torch.mm(flat, centers.T, out=similarity)
        torch.mm(flat, targets.T, out=logits)
        torch.mm(logits, targets, out=gradient)

    return step


def state_bytes(step: Step, bank: SeCuCenterBank | None) -> int:
    module = bank if bank is not None else getattr(step, "module", None)
    if module is None:
        return 0
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def time_steps(
    steps: dict[str, Step], device: torch.device, repeats: int, warmup: int, rounds: int = 1
) -> dict[str, list[float]]:
    """Per form, the median seconds per step of each round: the forms interleaved step by step,
    the order rotating each step."""
    names = list(steps)
    for _ in range(warmup):
        for name in names:
            steps[name]()
    medians: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(rounds):
        times: dict[str, list[float]] = {name: [] for name in names}
        for repeat in range(repeats):
            shift = repeat % len(names)
            for name in names[shift:] + names[:shift]:
                times[name].append(timed(steps[name], device))
        for name, values in times.items():
            medians[name].append(statistics.median(values))
    return medians


def peak_memory(steps: dict[str, Step], device: torch.device) -> dict[str, float]:
    """MiB allocated during one step of each form above what was resident before it (CUDA)."""
    peaks = {}
    for name, step in steps.items():
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        peaks[name] = (torch.cuda.max_memory_allocated(device) - resident) / 2**20
    return peaks
