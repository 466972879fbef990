"""Replays a golden SeCu trajectory (tests/fixtures/golden) through the plugin.

Used in-process by test_golden.py and, one half of every batch per rank, by the scripts of the
distributed tests. Every comparison is float64 with relative tolerance 1e-8.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from secu_plugin import SeCuCenterBank, SeCuLoss, SeCuLossTerms
from secu_plugin.core import dist

GOLDEN_DIR = Path(__file__).parent / "fixtures" / "golden"
GOLDEN_FILES = sorted(GOLDEN_DIR.glob("*.npz")) + sorted(GOLDEN_DIR.glob("imagenet/*.npz"))
RTOL, ATOL = 1e-8, 1e-12


def close(actual, expected, what: str) -> None:
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().cpu().numpy()
    np.testing.assert_allclose(np.asarray(actual), expected, rtol=RTOL, atol=ATOL, err_msg=what)


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    if dist.world_size() == 1:
        return value
    value = value.detach().clone()
    torch.distributed.all_reduce(value)
    return value / dist.world_size()


def replay(
    path: Path,
    rank: int = 0,
    world_size: int = 1,
    device: str = "cpu",
    head_reductions: str = "auto",
    memory: str = "auto",
    steps: tuple[int, int | None] = (0, None),
    load: Callable[[SeCuCenterBank], None] | None = None,
    save: Callable[[SeCuCenterBank], None] | None = None,
    epochs_by_argument: bool = False,
    loss_options: dict | None = None,
    wrap: Callable[[SeCuLoss], Callable[..., SeCuLossTerms]] | None = None,
) -> int:
    """Replays ``path``; with world_size > 1 this process holds chunk ``rank`` of every batch.

    ``steps = (first, stop)`` replays only those steps: ``load`` restores the bank saved
    (by ``save``, after the last step) by a replay that stopped at ``first``, which may have run
    on another number of processes. ``epochs_by_argument`` passes ``epoch=`` to the loss
    instead of calling ``start_epoch`` / ``end_epoch``. ``loss_options`` go to ``SeCuLoss``;
    ``wrap(criterion)`` returns what computes the terms instead of ``criterion.terms`` (e.g. a
    DistributedDataParallel module that holds the bank), built once the bank is restored.

    Returns the number of steps checked; raises AssertionError on the first mismatch.
    """
    data = np.load(path)
    config = json.loads(str(data["config_json"]))
    heads = range(len(config["num_clusters"]))
    bank = (
        SeCuCenterBank(
            dim=config["dim"],
            num_clusters=config["num_clusters"],
            num_instances=config["num_instances"],
            assigner=config["constraint"],
            dual_lr=config["dual_lr"],
            lower_bound_ratio=config["lratio"],
            alpha=config["alpha"],
            head_reductions=head_reductions,
            memory=memory,
        )
        .double()
        .to(device)
    )
    criterion = SeCuLoss(
        bank,
        temperature_x=config["tx"],
        temperature_c=config["tw"],
        label_weight=config["tau"],
        **(loss_options or {}),
    )
    with torch.no_grad():
        for i in heads:
            bank.centers[i].copy_(torch.from_numpy(data[f"h{i}_init_centers"].T).to(device))
    if load is not None:
        load(bank)
    compute_terms = criterion.terms if wrap is None else wrap(criterion)
    has_predictor = "p1" in data
    epochs = data["epoch"]
    starts = np.concatenate([[0], np.cumsum(data["batch_sizes"])])
    first, stop = steps[0], len(epochs) if steps[1] is None else steps[1]
    visited = np.zeros(config["num_instances"], dtype=bool)
    visited[data["idx"][: starts[first]]] = True
    for step in range(first, stop):
        epoch = int(epochs[step])
        if not epochs_by_argument and (step == 0 or epochs[step - 1] != epoch):
            bank.start_epoch()
        for i in heads:
            close(bank.centers[i].detach(), data[f"h{i}_centers_before"][step].T, f"centers {step}")
        rows = np.array_split(np.arange(starts[step], starts[step + 1]), world_size)[rank]

        def leaf(key: str, rows=rows) -> torch.Tensor:
            return torch.from_numpy(data[key][rows]).to(device).requires_grad_()

        inputs = {"z0": leaf("z1"), "z1": leaf("z2")}
        if has_predictor:
            inputs.update(p0=leaf("p1"), p1=leaf("p2"))
        indices = torch.from_numpy(data["idx"][rows]).to(device)
        for center in bank.centers:
            center.grad = None
        epoch_argument = {"epoch": epoch} if epochs_by_argument else {}
        terms = compute_terms(indices=indices, **inputs, **epoch_argument)
        terms.loss.backward()

        where = f"{path.name} step {step}"
        for i in heads:  # after the call: with epoch=, the loss itself freezes them
            close(
                bank.frozen_targets(i), data[f"h{i}_pre_centers"][step].T, f"targets h{i} {where}"
            )
        close(mean_over_ranks(terms.representation_loss), data["loss_x"][step], f"loss_x {where}")
        close(mean_over_ranks(terms.center_loss), data["loss_c"][step], f"loss_c {where}")
        names = {"z0": "grad_z1", "z1": "grad_z2", "p0": "grad_p1", "p1": "grad_p2"}
        for name, tensor in inputs.items():
            # Each rank's loss is the mean over its rows: its gradient is world_size times the
            # gradient of the global mean (equal chunks).
            close(tensor.grad / world_size, data[names[name]][rows], f"{names[name]} {where}")
        visited[data["idx"][starts[step] : starts[step + 1]]] = True
        full_memory = bank.gather_memory()  # a sharded memory: from every rank
        for i in heads:
            close(bank.centers[i].grad.T, data[f"h{i}_grad_centers"][step], f"grad c{i} {where}")
            np.testing.assert_array_equal(
                terms.labels[i].cpu().numpy(),
                data[f"h{i}_batch_labels"][rows],
                f"labels h{i} {where}",
            )
            memory = full_memory[i].long().cpu().numpy()
            expected = data[f"h{i}_labels_after"][step]
            np.testing.assert_array_equal(memory[visited], expected[visited], f"memory {where}")
            assert (memory[~visited] == -1).all(), f"unvisited instances labelled, {where}"
            np.testing.assert_array_equal(
                bank.counts[i].cpu().numpy(),
                data[f"h{i}_counts_after"][step],
                f"counts h{i} {where}",
            )
            close(bank.duals[i], data[f"h{i}_duals_after"][step], f"duals h{i} {where}")
        with torch.no_grad():
            for center in bank.centers:
                center -= config["center_lr"] * center.grad
        last_of_epoch = step + 1 == len(epochs) or epochs[step + 1] != epoch
        if last_of_epoch and not epochs_by_argument:
            bank.end_epoch()
    if save is not None:
        save(bank)
    return stop - first
