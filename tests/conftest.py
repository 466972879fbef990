import os
import sys

# Helpers shared by tests and by the scripts they launch in subprocesses (golden_replay, ...).
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)
