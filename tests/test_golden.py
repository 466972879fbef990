"""The plugin reproduces whole training trajectories of the reference SeCu code (float64)."""

import pytest
from golden_replay import GOLDEN_FILES, replay


def test_all_golden_files_are_present():
    assert len(GOLDEN_FILES) == 6


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_golden_replay(path):
    assert replay(path) > 0
