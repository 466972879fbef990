"""Center bank, assigners and loss: state handling, bad input, dtypes, devices, AMP."""

import copy

import pytest
import torch
from factories import assert_same_state, snapshot

from secu_plugin import (
    EntropyConstrainedAssigner,
    SeCuCenterBank,
    SeCuLoss,
    SizeConstrainedAssigner,
)


def make(assigner="size", dim=16, num_clusters=(4, 6), num_instances=50, **kwargs):
    torch.manual_seed(0)
    bank = SeCuCenterBank(
        dim=dim, num_clusters=num_clusters, num_instances=num_instances, assigner=assigner, **kwargs
    )
    return bank, SeCuLoss(bank)


def test_public_api_shapes_and_defaults():
    bank = SeCuCenterBank(
        dim=128,
        num_clusters=[10, 20, 30],
        num_instances=1000,
        assigner="size",
        dual_lr=0.1,
        lower_bound_ratio=0.9,
    )
    criterion = SeCuLoss(bank=bank, temperature_x=0.05, temperature_c=0.05, label_weight=0.2)
    assert isinstance(bank.centers, torch.nn.ParameterList)
    assert [tuple(c.shape) for c in bank.centers] == [(10, 128), (20, 128), (30, 128)]
    assert bank.memory.shape == (3, 1000) and (bank.memory == -1).all()
    assert [c.shape for c in bank.counts] == [(10,), (20,), (30,)]
    assert [d.shape for d in bank.duals] == [(10,), (20,), (30,)]
    bank.start_epoch()
    z0, z1 = torch.randn(32, 128, requires_grad=True), torch.randn(32, 128, requires_grad=True)
    indices = torch.randperm(1000)[:32]
    loss = criterion(z0, z1, indices)
    loss.backward()
    bank.end_epoch()
    assert z0.grad is not None and all(c.grad is not None for c in bank.centers)
    assert (bank.memory[:, indices] >= 0).all()
    assert (bank.predict(z0, head=2) < 30).all() and bank.predict(z0).dtype == torch.int64
    # Defaults are the paper's CIFAR hyper-parameters.
    default_bank = SeCuCenterBank(num_instances=10)
    assert default_bank.num_clusters == list(range(10, 101, 10)) and default_bank.dim == 128
    assert default_bank.assigner.dual_lr == 0.1 and default_bank.assigner.lower_bound_ratio == 0.9
    assert SeCuCenterBank(num_instances=10, assigner="entropy").assigner.alpha == 6000.0
    default_loss = SeCuLoss(default_bank)
    assert (default_loss.temperature_x, default_loss.temperature_c, default_loss.label_weight) == (
        0.05,
        0.05,
        0.2,
    )


def test_memory_is_two_bytes_per_instance_and_head():
    bank = SeCuCenterBank(dim=128, num_clusters=range(1000, 10001, 1000), num_instances=1281167)
    assert bank.memory.dtype == torch.int16
    assert bank.memory.element_size() * bank.memory.numel() == 2 * 10 * 1281167  # 25.6 MB
    big = SeCuCenterBank(dim=4, num_clusters=[40000], num_instances=10)
    assert big.memory.dtype == torch.int32


BAD_INPUTS = {
    "indices out of range": lambda z, i: (z, z.clone(), torch.tensor([0, 1, 2, 50])),
    "negative indices": lambda z, i: (z, z.clone(), torch.tensor([0, 1, -1, 3])),
    "float indices": lambda z, i: (z, z.clone(), i.float()),
    "bool indices": lambda z, i: (z, z.clone(), torch.tensor([True, False, True, False])),
    "indices as a list": lambda z, i: (z, z.clone(), [0, 1, 2, 3]),
    "indices too short": lambda z, i: (z, z.clone(), i[:3]),
    "indices 2-D": lambda z, i: (z, z.clone(), i.view(2, 2)),
    "views of different lengths": lambda z, i: (z, z[:3].clone(), i),
    "wrong feature dimension": lambda z, i: (z[:, :8], z[:, :8].clone(), i),
    "features 3-D": lambda z, i: (z.view(4, 16, 1), z.view(4, 16, 1).clone(), i),
    "integer features": lambda z, i: (z.long(), z.long(), i),
    "NaN features": lambda z, i: (z, torch.full_like(z, float("nan")), i),
    "infinite features": lambda z, i: (z.masked_fill(z > 0, float("inf")), z.clone(), i),
    "empty batch": lambda z, i: (z[:0], z[:0].clone(), i[:0]),
}


@pytest.mark.parametrize("assigner", ["size", "entropy"])
@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_value_error_and_changes_nothing(case, assigner):
    bank, criterion = make(assigner)
    bank.start_epoch()
    criterion(torch.randn(8, 16), torch.randn(8, 16), torch.arange(8))  # some state first
    before = snapshot(bank)
    z0, z1, indices = BAD_INPUTS[case](torch.randn(4, 16), torch.arange(10, 14))
    with pytest.raises(ValueError) as error:
        criterion(z0, z1, indices)
    assert str(error.value)  # a message naming the problem
    assert_same_state(bank, before)


def test_bad_predictor_inputs():
    bank, criterion = make()
    before = snapshot(bank)
    z = torch.randn(4, 16)
    with pytest.raises(ValueError, match="p0 and p1"):
        criterion(z, z, torch.arange(4), p0=z)
    with pytest.raises(ValueError, match="p1 has 3 rows"):
        criterion(z, z, torch.arange(4), p0=z, p1=z[:3])
    assert_same_state(bank, before)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0}, "dim"),
        ({"num_clusters": []}, "num_clusters"),
        ({"num_clusters": [1]}, "num_clusters"),
        ({"num_instances": 0}, "num_instances"),
        ({"assigner": "kmeans"}, "assigner"),
        ({"dual_lr": 0.0}, "dual_lr"),
        ({"lower_bound_ratio": -1.0}, "lower_bound_ratio"),
        ({"assigner": "entropy", "alpha": -1.0}, "alpha"),
    ],
)
def test_bad_bank_arguments(kwargs, message):
    arguments = {"dim": 4, "num_clusters": [3], "num_instances": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        SeCuCenterBank(**arguments)


def test_bad_loss_arguments_and_predict_head():
    bank, _ = make()
    for kwargs in ({"temperature_x": 0.0}, {"temperature_c": -1.0}, {"label_weight": 1.5}):
        with pytest.raises(ValueError):
            SeCuLoss(bank, **kwargs)
    with pytest.raises(ValueError, match="head"):
        bank.predict(torch.randn(2, 16), head=2)


def train_with_duplicates(assigner, epochs=4, seed=0):
    bank, criterion = make(assigner, num_instances=30)
    optimizer = torch.optim.SGD(bank.parameters(), lr=0.5)
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(30, 16, generator=generator)
    for _ in range(epochs):
        bank.start_epoch()
        order = torch.randperm(30, generator=generator)
        # Pad every batch with repeats of its first indices, as a padded sampler does.
        for batch in order.split(8):
            indices = torch.cat([batch, batch[:3]])
            z0 = base[indices] + 0.3 * torch.randn(len(indices), 16, generator=generator)
            z1 = base[indices] + 0.3 * torch.randn(len(indices), 16, generator=generator)
            optimizer.zero_grad()
            criterion(z0, z1, indices).backward()
            optimizer.step()
            yield bank, indices
        bank.end_epoch()


def test_duplicate_indices_keep_entropy_counts_equal_to_memory_histogram():
    steps = 0
    for bank, _ in train_with_duplicates("entropy"):
        steps += 1
        for head, counts in enumerate(bank.counts):
            memory = bank.memory[head].long()
            histogram = torch.bincount(memory[memory >= 0], minlength=counts.numel())
            assert torch.equal(counts, histogram)
    assert steps == 16 and (bank.memory >= 0).all()


def test_duplicate_indices_keep_the_last_label():
    bank, criterion = make("size", num_instances=10)
    bank.start_epoch()
    z = torch.randn(3, 16)
    indices = torch.tensor([7, 7, 7])
    terms = criterion.terms(z, z.clone(), indices)
    assert torch.equal(bank.memory[:, 7].long(), terms.labels[:, 2])
    # Size counts count every row of the batch (the duals see the padded batch as it is).
    assert all(int(c.sum()) == 3 for c in bank.counts)


def test_size_counts_reset_at_end_of_epoch_and_entropy_counts_do_not():
    for assigner, reset in (("size", True), ("entropy", False)):
        bank, criterion = make(assigner)
        bank.start_epoch()
        criterion(torch.randn(8, 16), torch.randn(8, 16), torch.arange(8))
        bank.end_epoch()
        assert all(int(c.sum()) == (0 if reset else 8) for c in bank.counts)


def test_soft_target_uses_previous_label_then_fresh_one():
    """The representation loss's one-hot target: the fresh label for an unseen instance, else
    the stored one (checked by the loss value against a direct computation)."""
    bank, criterion = make("size", dim=4, num_clusters=[3], num_instances=2)
    bank.double()
    bank.start_epoch()
    z0, z1 = torch.randn(2, 4, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        bank.memory[0, 1] = 2  # instance 1 has a stored label, instance 0 none

    def expected_representation_loss(labels):
        targets = bank.frozen_targets(0)
        x0 = torch.nn.functional.normalize(z0, dim=1) @ targets.T / 0.05
        x1 = torch.nn.functional.normalize(z1, dim=1) @ targets.T / 0.05
        onehot = torch.nn.functional.one_hot(labels, 3).double()
        t0 = 0.8 * x1.softmax(1) + 0.2 * onehot
        t1 = 0.8 * x0.softmax(1) + 0.2 * onehot
        return (
            -((x0.log_softmax(1) * t0).sum(1).mean() + (x1.log_softmax(1) * t1).sum(1).mean()) / 2
        )

    terms = criterion.terms(z0, z1, torch.tensor([0, 1]))
    fresh = terms.labels[0]
    labels = torch.tensor([int(fresh[0]), 2])
    torch.testing.assert_close(
        terms.representation_loss, expected_representation_loss(labels), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes(dtype):
    bank, criterion = make("entropy")
    bank.to(dtype)
    bank.start_epoch()
    z0 = torch.randn(8, 16, dtype=dtype, requires_grad=True)
    z1 = torch.randn(8, 16, dtype=dtype, requires_grad=True)
    loss = criterion(z0, z1, torch.arange(8))
    loss.backward()
    assert loss.dtype == dtype and z0.grad.dtype == dtype
    assert bank.centers[0].grad.dtype == dtype and bank.memory.dtype == torch.int16


def test_amp_autocast_on_cpu():
    bank, criterion = make()
    bank.start_epoch()
    encoder = torch.nn.Linear(10, 16)
    x = torch.randn(8, 10)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        z0, z1 = encoder(x), encoder(x + 0.1)
        assert z0.dtype == torch.bfloat16
        loss = criterion(z0, z1, torch.arange(8))
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(encoder.weight.grad).all() and bank.centers[0].grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    bank, criterion = make("entropy")
    bank.double().start_epoch()
    gpu_bank = copy.deepcopy(bank).cuda()
    gpu_criterion = SeCuLoss(gpu_bank)
    z0, z1 = torch.randn(8, 16, dtype=torch.float64), torch.randn(8, 16, dtype=torch.float64)
    loss = criterion(z0, z1, torch.arange(8))
    gpu_loss = gpu_criterion(z0.cuda(), z1.cuda(), torch.arange(8).cuda())
    torch.testing.assert_close(gpu_loss.cpu(), loss)
    assert torch.equal(gpu_bank.memory.cpu(), bank.memory)


def test_custom_assigner_is_pluggable():
    class Nearest(SizeConstrainedAssigner):
        def assign(self, cost, counts, duals, stored_labels, layout):
            return layout.argmin(cost)

    bank = SeCuCenterBank(dim=4, num_clusters=[3], num_instances=5, assigner=Nearest())
    SeCuLoss(bank)(torch.randn(5, 4), torch.randn(5, 4), torch.arange(5))
    assert (bank.memory >= 0).all()
    assert isinstance(
        SeCuCenterBank(
            dim=4, num_clusters=[3], num_instances=5, assigner=EntropyConstrainedAssigner(1.0)
        ).assigner,
        EntropyConstrainedAssigner,
    )


def test_predictor_variant_on_a_hand_checked_case():
    """ImageNet form, 2 rows, heads K=2 and K=3, written out term by term."""
    torch.manual_seed(3)
    bank = SeCuCenterBank(dim=3, num_clusters=[2, 3], num_instances=4).double()
    bank.start_epoch()
    criterion = SeCuLoss(bank, temperature_x=0.5, temperature_c=0.25, label_weight=0.3)
    raw = {
        name: torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
        for name in ("z0", "z1", "p0", "p1")
    }
    indices = torch.tensor([3, 1])
    terms = criterion.terms(raw["z0"], raw["z1"], indices, p0=raw["p0"], p1=raw["p1"])
    terms.loss.backward()

    unit = {
        k: torch.nn.functional.normalize(v.detach(), dim=1).requires_grad_() for k, v in raw.items()
    }
    centers = [c.detach().clone().requires_grad_() for c in bank.centers]
    expected_x = expected_c = 0.0
    for head, k in enumerate([2, 3]):
        current = torch.nn.functional.normalize(centers[head], dim=1)
        frozen = bank.frozen_targets(head)
        sims = {n: unit[n].detach() @ current.T for n in unit}
        cost = -(sims["z0"] + sims["z1"] + sims["p0"] + sims["p1"]) / 4
        labels = terms.labels[head]
        for row in range(2):
            # Size constraint with zero duals: the nearest center on the mean similarity.
            assert labels[row] == cost[row].argmin()
            for name in unit:
                logits = (
                    torch.stack(
                        [
                            sims[name][row, j] if j == labels[row] else sims[name][row, j].detach()
                            for j in range(k)
                        ]
                    )
                    / 0.25
                )
                expected_c = expected_c - torch.log_softmax(logits, 0)[labels[row]] / (2 * 4 * 2)
            for view, other in (("0", "1"), ("1", "0")):
                with torch.no_grad():
                    target = 0.7 * torch.softmax(unit["z" + other][row] @ frozen.T / 0.5, 0)
                    target[labels[row]] += 0.3  # no stored label yet: the fresh one
                for name in ("z" + view, "p" + view):  # the projection's target trains both
                    log_prob = torch.log_softmax(unit[name][row] @ frozen.T / 0.5, 0)
                    expected_x = expected_x - (target * log_prob).sum() / (2 * 4 * 2)
    torch.testing.assert_close(terms.representation_loss, expected_x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(terms.center_loss, expected_c, rtol=1e-12, atol=1e-12)
    (expected_x + expected_c).backward()
    for head in range(2):
        torch.testing.assert_close(bank.centers[head].grad, centers[head].grad)
    for name, value in raw.items():
        # Chain the normalized gradient back through the normalization by hand.
        expected = torch.autograd.grad(
            torch.nn.functional.normalize(value, dim=1), value, unit[name].grad
        )[0]
        torch.testing.assert_close(value.grad, expected)
