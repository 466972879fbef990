"""The plugin reproduces whole training trajectories of the reference SeCu code (float64)."""

import copy

import numpy as np
import pytest
import torch
from golden_replay import GOLDEN_FILES, replay


def test_all_golden_files_are_present():
    assert len(GOLDEN_FILES) == 6


@pytest.mark.parametrize("head_reductions", ["loop", "padded"])
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_replay(path, head_reductions):
    assert replay(path, head_reductions=head_reductions) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_replay_on_cuda(path):
    assert replay(path, device="cuda") > 0


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_replay_with_epoch_argument_and_sharded_memory(path):
    """No epoch hooks: the loss's ``epoch=`` switches epochs; a (one-process) sharded memory."""
    assert replay(path, epochs_by_argument=True, memory="sharded") > 0


@pytest.mark.parametrize("epochs_by_argument", [True, False], ids=["epoch_argument", "hooks"])
@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_resume_mid_epoch_equals_the_uninterrupted_run(path, epochs_by_argument, tmp_path):
    """Stopped in the middle of the second epoch and restored from a checkpoint file into a new
    bank, the replay goes on matching the golden trajectory (the restored targets are not
    frozen again: they would not match), and ends bit for bit where the uninterrupted run ends."""
    epochs = np.load(path)["epoch"]
    middle = int(np.flatnonzero(epochs == 1)[0]) + 1
    assert epochs[middle] == epochs[middle - 1] == 1  # really mid-epoch
    checkpoint, finals = tmp_path / "bank.pt", []

    def keep(bank):
        finals.append(copy.deepcopy(bank.state_dict()))

    options = {"epochs_by_argument": epochs_by_argument}
    replay(path, save=keep, **options)
    replay(
        path, steps=(0, middle), save=lambda b: torch.save(b.state_dict(), checkpoint), **options
    )
    restore = lambda b: b.load_state_dict(torch.load(checkpoint))
    replay(path, steps=(middle, None), load=restore, save=keep, **options)
    uninterrupted, resumed = finals
    assert uninterrupted.keys() == resumed.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key
