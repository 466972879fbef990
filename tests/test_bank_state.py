"""When the loss writes the bank, epochs without hooks, and the bank's state_dict protocol."""

import copy
from pathlib import Path

import pytest
import torch
from factories import assert_same_state, snapshot

from secu_plugin import SeCuCenterBank, SeCuLoss

FIXTURES = Path(__file__).parent / "fixtures"


def make(assigner="entropy", memory="auto", **kwargs):
    torch.manual_seed(0)
    bank = SeCuCenterBank(
        dim=8, num_clusters=[3, 5], num_instances=20, assigner=assigner, alpha=2.0, memory=memory
    )
    return bank, SeCuLoss(bank, **kwargs)


def batch(seed, size=6):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(size, 8, generator=generator),
        torch.randn(size, 8, generator=generator),
        torch.randperm(20, generator=generator)[:size],
    )


def trained(assigner="entropy"):
    bank, criterion = make(assigner)
    bank.start_epoch()
    criterion(*batch(0))
    return bank, criterion


READ_ONLY_CALLS = {
    "update=False": lambda criterion, args: criterion(*args, update=False),
    "loss in eval mode": lambda criterion, args: criterion.eval()(*args),
    "bank in eval mode": lambda criterion, args: (criterion.bank.eval(), criterion(*args))[1],
    "torch.no_grad": lambda criterion, args: _under(torch.no_grad(), criterion, args),
    "torch.inference_mode": lambda criterion, args: _under(torch.inference_mode(), criterion, args),
    "SeCuLoss(update=False)": lambda criterion, args: SeCuLoss(criterion.bank, update=False)(*args),
}


def _under(context, criterion, args):
    with context:
        return criterion(*args)


@pytest.mark.parametrize("assigner", ["size", "entropy"])
@pytest.mark.parametrize("case", sorted(READ_ONLY_CALLS))
def test_calls_outside_training_compute_the_loss_and_write_nothing(case, assigner):
    bank, criterion = trained(assigner)
    args = batch(1)
    expected = SeCuLoss(copy.deepcopy(bank))(*args).detach()  # the same call, recording
    before = snapshot(bank)
    loss = READ_ONLY_CALLS[case](criterion, args)
    torch.testing.assert_close(loss.detach(), expected, rtol=0, atol=0)
    assert_same_state(bank, before)
    # epoch= is not followed either: no epoch switch, no frozen targets.
    criterion.train(), bank.train()
    if case not in ("update=False", "SeCuLoss(update=False)"):
        with torch.no_grad():
            criterion(*args, epoch=5)
        assert_same_state(bank, before)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_explicit_update_true_records_even_outside_training(context):
    bank, criterion = trained()
    reference, reference_criterion = copy.deepcopy(bank), SeCuLoss(copy.deepcopy(bank))
    reference_criterion(*batch(1))
    criterion.eval()
    with context():
        criterion(*batch(1), update=True)
    assert_same_state(bank, reference_criterion.bank.state_dict())
    assert not torch.equal(bank.memory, reference.memory)  # it did record something


def test_records_rule():
    bank, criterion = make()
    assert criterion.records()
    with torch.no_grad():
        assert not criterion.records() and criterion.records(update=True)
    bank.eval()
    assert not criterion.records() and criterion.records(True)
    bank.train()
    assert not SeCuLoss(bank, update=False).records()
    assert not criterion.records(update=False)


def run(epoch_argument: bool, steps_per_epoch=3, epochs=3, assigner="size"):
    """Trains the centers; yields the state after every step."""
    bank, criterion = make(assigner)
    optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
    for epoch in range(epochs):
        if not epoch_argument:
            bank.start_epoch()
        for step in range(steps_per_epoch):
            optimizer.zero_grad()
            arguments = {"epoch": epoch} if epoch_argument else {}
            criterion(*batch(10 * epoch + step), **arguments).backward()
            optimizer.step()
            yield snapshot(bank)
        if not epoch_argument and epoch + 1 < epochs:
            bank.end_epoch()  # (the last epoch is ended by nobody in the epoch= run)


@pytest.mark.parametrize("assigner", ["size", "entropy"])
def test_a_run_driven_by_epoch_equals_a_run_with_hooks(assigner):
    by_argument = list(run(True, assigner=assigner))
    with_hooks = list(run(False, assigner=assigner))
    assert len(by_argument) == 9
    for step, (a, b) in enumerate(zip(by_argument, with_hooks)):
        for key in a:
            assert torch.equal(a[key], b[key]), (step, key)
    assert int(by_argument[-1]["epoch"]) == 2


def test_set_epoch_is_idempotent_and_freezes_once():
    bank, criterion = make()
    criterion(*batch(0), epoch=0)
    frozen = bank.targets.clone()
    with torch.no_grad():
        for center in bank.centers:
            center.mul_(-1.0)  # the centers move during the epoch
    criterion(*batch(1), epoch=0)  # the same epoch: targets stay
    assert torch.equal(bank.targets, frozen) and bank.epoch == 0
    counts = bank.stacked_counts.clone()
    criterion(*batch(2), epoch=1)  # a new one: re-frozen (the entropy counts carry over)
    assert torch.allclose(bank.targets, -frozen) and bank.epoch == 1
    assert int(bank.stacked_counts.sum()) >= int(counts.sum())


def test_size_counts_restart_at_an_epoch_switch():
    bank, criterion = make("size")
    criterion(*batch(0), epoch=0)
    criterion(*batch(1), epoch=0)
    assert int(bank.stacked_counts.sum()) == 2 * 2 * 6  # 2 heads x 2 steps x 6 rows
    criterion(*batch(2), epoch=1)
    assert int(bank.stacked_counts.sum()) == 2 * 6  # reset, then this step


def test_start_epoch_without_number_counts_up():
    bank, _ = make()
    assert bank.epoch == -1
    bank.start_epoch()
    bank.start_epoch()
    assert bank.epoch == 1
    bank.start_epoch(7)
    assert bank.epoch == 7


@pytest.mark.parametrize("epoch", [-1, 1.5, "3", None.__class__])
def test_bad_epoch_raises_and_changes_nothing(epoch):
    bank, criterion = trained()
    before = snapshot(bank)
    with pytest.raises(ValueError, match="epoch"):
        criterion(*batch(1), epoch=epoch)
    assert_same_state(bank, before)
    with pytest.raises(ValueError, match="epoch"):
        bank.set_epoch(epoch)
    assert_same_state(bank, before)


def test_version_1_checkpoint_still_loads():
    """tests/fixtures/bank_v1.pt was saved by the previous release (memory a buffer, no epoch)."""
    saved = torch.load(FIXTURES / "bank_v1.pt")
    assert saved._metadata[""]["version"] == 1 and "epoch" not in saved
    bank = SeCuCenterBank(dim=4, num_clusters=[3, 5], num_instances=12, assigner="entropy")
    bank.load_state_dict(saved)
    assert torch.equal(bank.memory, saved["memory"]) and bank.memory.dtype == torch.int16
    assert torch.equal(bank.stacked_counts, saved["stacked_counts"]) and bank.epoch == -1
    # The histogram of the loaded memory is the loaded entropy counts.
    assert torch.equal(torch.cat(bank.cluster_sizes()), bank.stacked_counts)


BAD_STATES = {
    "memory of the wrong shape": lambda s: s.update(memory=s["memory"][:, :5]),
    "memory of floats": lambda s: s.update(memory=s["memory"].float()),
    "missing memory": lambda s: s.pop("memory"),
    "missing epoch": lambda s: s.pop("epoch"),
    "epoch of floats": lambda s: s.update(epoch=torch.tensor(1.5)),
    "centers of the wrong shape": lambda s: s.update({"centers.1": torch.zeros(4, 8)}),
    "counts of the wrong shape": lambda s: s.update(stacked_counts=torch.zeros(3)),
    "unknown entry": lambda s: s.update(extra=torch.zeros(1)),
    "a shard of rank 1 of 2": lambda s: s.update(
        memory=s["memory"][:, 1::2], memory_shard=torch.tensor([1, 2])
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_STATES))
def test_bad_state_dict_raises_value_error_and_loads_nothing(case):
    source, _ = trained()
    saved = snapshot(source)
    BAD_STATES[case](saved)
    bank, _ = make()
    before = snapshot(bank)
    with pytest.raises(ValueError) as error:
        bank.load_state_dict(saved)
    assert str(error.value)
    assert_same_state(bank, before)


def test_the_memory_is_no_buffer_and_follows_the_module():
    bank, _ = trained()
    assert "memory" not in dict(bank.named_buffers())  # DDP broadcasts buffers
    assert all(b.dtype != torch.int16 for b in bank.buffers())
    memory = bank.memory.clone()
    bank.double()
    assert bank.memory.dtype == torch.int16 and torch.equal(bank.memory, memory)
    assert bank.targets.dtype == torch.float64
    copied = copy.deepcopy(bank)
    assert torch.equal(copied.memory, memory) and copied.memory.data_ptr() != bank.memory.data_ptr()
    bank.to("meta")
    assert bank.memory.device.type == "meta"


@pytest.mark.parametrize("assigner", ["size", "entropy"])
def test_one_process_sharded_memory_equals_replicated(assigner):
    states = []
    for memory in ("replicated", "sharded"):
        bank, criterion = make(assigner, memory=memory)
        optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
        for step in range(6):
            optimizer.zero_grad()
            criterion(*batch(step), epoch=step // 3).backward()
            optimizer.step()
        states.append(snapshot(bank))
        assert bank.memory_sharded == (memory == "sharded")
    replicated, sharded = states
    assert sharded.pop("memory_shard").tolist() == [0, 1]
    for key in replicated:
        assert torch.equal(replicated[key], sharded[key]), key
    # Either form loads the other's checkpoint.
    bank, _ = make(assigner, memory="sharded")
    bank.load_state_dict(replicated)
    assert torch.equal(bank.memory, replicated["memory"])
    bank, _ = make(assigner, memory="replicated")
    bank.load_sharded([{**sharded, "memory_shard": torch.tensor([0, 1])}])
    assert torch.equal(bank.memory, replicated["memory"])


def test_auto_memory_shards_above_one_gib():
    small = SeCuCenterBank(dim=2, num_clusters=[2] * 10, num_instances=1_281_167)
    assert not small.memory_sharded
    big = SeCuCenterBank(dim=2, num_clusters=[2] * 10, num_instances=60_000_000, memory="auto")
    assert big.memory_sharded  # one process: the shard is everything
    with pytest.raises(ValueError, match="memory"):
        SeCuCenterBank(dim=2, num_clusters=[2], num_instances=3, memory="striped")


def test_load_sharded_reassembles_and_rejects_incomplete_sets():
    source, _ = trained()
    full = snapshot(source)
    shards = [
        {**full, "memory": full["memory"][:, r::3].clone(), "memory_shard": torch.tensor([r, 3])}
        for r in range(3)
    ]
    bank, _ = make()
    bank.load_sharded(list(reversed(shards)))  # any order
    assert_same_state(bank, full)
    before = snapshot(bank)
    for broken in (shards[:2], [shards[0], shards[0], shards[2]], []):
        with pytest.raises(ValueError):
            make()[0].load_sharded(broken)
    other = {**shards[1], "stacked_counts": full["stacked_counts"] + 1}
    with pytest.raises(ValueError, match="stacked_counts"):
        bank.load_sharded([shards[0], other, shards[2]])
    assert_same_state(bank, before)
