"""The plugin reproduces whole training trajectories of the reference SeCu code (float64)."""

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
