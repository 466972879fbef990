"""A recipe's command line run in the test's own process, for runs that end before training
(a refusal, a score): a new Python process spends about 5 s importing torch, timm and
scikit-learn before the recipe's first line, here they are imported already."""

from __future__ import annotations

import io
import logging
import os
import random
import runpy
import subprocess
import sys
import traceback
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import torch


def run_here(
    script: Path, *args: str, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    r"""``python script *args`` run as ``__main__`` in this process: its exit code, stdout and
    stderr, as a subprocess would give them. ``env`` sets variables (None: unsets one) for
    the run. Stderr gets what a new process would print there: the warnings issued (every
    one, the deprecations too), the log records from WARNING up, and an uncaught exception's
    traceback (exit code 1). The process's environment, argv, thread count and random states
    are restored afterwards, so later tests see no difference.

    Examples:
        >>> import tempfile
        >>> script = Path(tempfile.mkdtemp()) / "script.py"
        >>> _ = script.write_text("import sys, warnings\nprint(sys.argv[1:])\n"
        ...                       "warnings.warn('careful')\nsys.exit(3)\n")
        >>> result = run_here(script, "a", "b")
        >>> result.returncode, result.stdout
        (3, "['a', 'b']\n")
        >>> "UserWarning: careful" in result.stderr
        True
    """
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = (os.environ.copy(), sys.argv, list(sys.path), torch.get_num_threads())
    rng = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    for name, value in (env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(Path(script).resolve().parent))  # as `python script` puts it
    handler = logging.StreamHandler(stderr)  # a new process's last-resort handler
    handler.setLevel(logging.WARNING)
    logging.getLogger().addHandler(handler)

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    returncode = 0
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr), warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show_warning
            try:
                runpy.run_path(str(script), run_name="__main__")
            except SystemExit as exit_:
                if isinstance(exit_.code, int) or exit_.code is None:
                    returncode = exit_.code or 0
                else:  # sys.exit("message"): printed, exit code 1
                    print(exit_.code, file=sys.stderr)
                    returncode = 1
            except Exception:  # noqa: BLE001 (any uncaught one, as python prints it)
                traceback.print_exc(file=sys.stderr)
                returncode = 1
    finally:
        logging.getLogger().removeHandler(handler)
        environment, sys.argv, sys.path[:], threads = saved
        os.environ.clear()
        os.environ.update(environment)
        torch.set_num_threads(threads)
        random.setstate(rng[0])
        np.random.set_state(rng[1])
        torch.random.set_rng_state(rng[2])
    return subprocess.CompletedProcess(
        [sys.executable, str(script), *args], returncode, stdout.getvalue(), stderr.getvalue()
    )
