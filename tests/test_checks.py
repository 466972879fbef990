"""Value checks without device synchronization: host-side indices, device-side flags that mask
the update of a bad step and raise at the next call, and (CUDA only) a step under
``torch.cuda.set_sync_debug_mode("error")``."""

import copy

import pytest
import torch
from factories import assert_same_state, snapshot

from secu_plugin import SeCuCenterBank, SeCuLoss


def make(assigner="entropy", check_values="deferred", device="cpu", **kwargs):
    torch.manual_seed(0)
    bank = SeCuCenterBank(
        dim=8, num_clusters=[3, 5], num_instances=20, assigner=assigner, alpha=2.0, **kwargs
    ).to(device)
    return bank, SeCuLoss(bank, check_values=check_values)


def batch(seed, size=6, device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    z0 = torch.randn(size, 8, generator=generator)
    z1 = torch.randn(size, 8, generator=generator)
    indices = torch.randperm(20, generator=generator)[:size]
    return z0.to(device), z1.to(device), indices


def nan_z1(args):
    z0, z1, indices = args
    return z0, torch.full_like(z1, float("nan")), indices


def out_of_range(args):
    z0, z1, indices = args
    return z0, z1, torch.cat([indices[:-1], torch.tensor([20])])


@pytest.mark.parametrize("assigner", ["size", "entropy"])
@pytest.mark.parametrize(
    "spoil, message", [(nan_z1, "z1 contains NaN"), (out_of_range, "indices out of range")]
)
def test_a_flagged_step_changes_nothing_and_the_next_call_raises(spoil, message, assigner):
    bank, criterion = make(assigner)
    criterion(*batch(0), epoch=0)
    before = snapshot(bank)
    loss = criterion(*spoil(batch(1)), epoch=0)  # no error yet: flagged on the "device"
    assert loss.shape == ()
    assert_same_state(bank, before)
    with pytest.raises(ValueError, match=message) as error:
        criterion(*batch(2), epoch=1)  # raised before the epoch switch or the step
    assert "unchanged" in str(error.value)
    assert_same_state(bank, before)
    criterion(*batch(2), epoch=1)  # then training goes on
    assert bank.epoch == 1


@pytest.mark.parametrize("hook", ["end_epoch", "start_epoch"])
def test_epoch_hooks_raise_a_pending_error_before_changing_anything(hook):
    bank, criterion = make("size")
    bank.start_epoch()
    criterion(*batch(0))
    criterion(*nan_z1(batch(1)))
    before = snapshot(bank)
    with pytest.raises(ValueError, match="z1 contains NaN"):
        getattr(bank, hook)()
    assert_same_state(bank, before)  # counts not reset, targets not frozen


@pytest.mark.parametrize("assigner", ["size", "entropy"])
def test_deferred_checks_give_the_same_trajectory_as_immediate_ones(assigner):
    states = []
    for check_values in (True, "deferred", False):
        bank, criterion = make(assigner, check_values=check_values)
        optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
        for step in range(6):
            optimizer.zero_grad()
            criterion(*batch(step), epoch=step // 3).backward()
            optimizer.step()
        states.append(snapshot(bank))
    for other in states[1:]:
        for key in states[0]:
            assert torch.equal(states[0][key], other[key]), key


def test_host_indices_are_checked_before_the_copy():
    """CPU indices (a DataLoader's) are range-checked on the host: ValueError at once, whatever
    their integer dtype, nothing changed."""
    bank, criterion = make("size", check_values=True)
    criterion(*batch(0), epoch=0)
    before = snapshot(bank)
    z0, z1, _ = batch(1)
    for indices in (torch.arange(15, 21), torch.tensor([0, 1, 2, 3, 4, -1])):
        with pytest.raises(ValueError, match=r"indices must be in \[0, 20\)"):
            criterion(z0, z1, indices.to(torch.int32))
        assert_same_state(bank, before)
    assert len(bank.deferred_errors) == 0


def test_calls_that_do_not_record_check_host_values_and_flag_nothing():
    """A validation call writes nothing, so there is no update to mask: host values are still
    checked at once, nothing is queued for later."""
    bank, criterion = make("size")
    criterion(*batch(0), epoch=0)
    before, queued = snapshot(bank), len(bank.deferred_errors)  # the good step's flags
    with torch.no_grad(), pytest.raises(ValueError, match="z1 contains NaN"):
        criterion(*nan_z1(batch(1)))
    assert len(bank.deferred_errors) == queued
    assert_same_state(bank, before)


def test_check_values_argument():
    bank, _ = make()
    with pytest.raises(ValueError, match="check_values"):
        SeCuLoss(bank, check_values="later")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("head_reductions", ["loop", "padded"])
@pytest.mark.parametrize("assigner", ["size", "entropy"])
@pytest.mark.parametrize("indices_on", ["cpu", "cuda"])
def test_default_cuda_step_makes_no_device_synchronization(assigner, head_reductions, indices_on):
    bank, criterion = make(
        assigner, check_values=True, device="cuda", head_reductions=head_reductions
    )
    optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)

    def step(seed, epoch, args=None):
        z0, z1, indices = args or batch(seed, device="cuda")
        z0.requires_grad_()
        optimizer.zero_grad()
        criterion(z0, z1, indices.to(indices_on), epoch=epoch).backward()
        optimizer.step()

    step(0, 0)  # warm-up: layouts, workspaces, pinned buffers
    reference = copy.deepcopy(bank)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for seed in range(1, 5):
            step(seed, seed // 3)  # an epoch switch included
        bad = nan_z1(batch(5, device="cuda"))
        before = snapshot(bank)
        step(5, 1, bad)  # flagged on the device, nothing read back
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    after_bad = snapshot(bank)
    for key in ("memory", "stacked_counts", "stacked_duals", "targets"):
        assert torch.equal(after_bad[key].cpu(), before[key].cpu()), key
    with pytest.raises(ValueError, match="z1 contains NaN"):
        step(6, 1)
    assert not torch.equal(reference.memory, bank.memory)  # the good steps recorded
