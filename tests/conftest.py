import os
import sys

import pytest

# Helpers shared by tests and by the scripts they launch in subprocesses (golden_replay, ...).
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)


@pytest.fixture(scope="session")
def frozen_head_run(tmp_path_factory):
    """One recipes/train_head.py run, shared by the tests that read its model, its log or its
    feature cache (the export's checks, fine-tuning's start): each run of the recipe costs
    seconds of start-up alone. A test must not write into its directories."""
    from tests.launch import start_frozen_head_run

    return start_frozen_head_run(tmp_path_factory.mktemp("frozen_head_run"))
