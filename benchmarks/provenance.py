"""Where a benchmark figure came from: the command, the code, the machine and how busy it was.

Every benchmark that writes a JSON puts :func:`provenance` in it, so that a number in the docs
can be traced to the exact command, commit (and whether the tree had uncommitted edits), day,
CPU, threads, GPU and library versions that produced it, and to the load the machine already
carried when the run started (a figure measured on a shared, busy machine says so).

    python benchmarks/provenance.py        # prints this machine's provenance as JSON
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("torch", "timm", "lightly", "accelerate", "scikit-learn", "numpy", "pillow")


def _git(*args: str, cwd: Path = REPO_ROOT) -> str | None:
    """The output of a git command in ``cwd`` (default: this repository), or None (no git, not a
    checkout)."""
    try:
        result = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def commit_of(checkout: Path) -> str:
    """The commit checked out in ``checkout`` (``git rev-parse HEAD`` there).

    Examples:
        >>> len(commit_of(REPO_ROOT))
        40
        >>> import tempfile
        >>> commit_of(Path(tempfile.mkdtemp()))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: ... is not a git checkout: git rev-parse HEAD failed there
    """
    commit = _git("rev-parse", "HEAD", cwd=checkout)
    if commit is None:
        raise ValueError(f"{checkout} is not a git checkout: git rev-parse HEAD failed there")
    return commit


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance() -> dict:
    """The command line, commit, date, machine, threads, GPU and versions of this process.

    ``dirty`` is True when the checkout has uncommitted changes (the commit alone does not
    reproduce the run then); ``commit`` and ``dirty`` are None outside a git checkout.
    ``load_average`` is the 1, 5 and 15 minute load when this is called (call it at the start).

    Examples:
        >>> info = provenance()
        >>> info["torch_threads"] >= 1, info["date_utc"].endswith("+00:00")
        (True, True)
        >>> {"command", "commit", "dirty", "cpu_model", "gpu", "load_average"} <= set(info)
        True
    """
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "commit": _git("rev-parse", "HEAD"),
        "cpu_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "cpu_cores_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "dirty": None if status is None else bool(status),
        "gpu": gpu,
        "load_average": [round(x, 2) for x in os.getloadavg()]
        if hasattr(os, "getloadavg")
        else None,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "versions": {name: _version(name) for name in LIBRARIES},
    }


if __name__ == "__main__":
    print(json.dumps(provenance(), indent=2))
