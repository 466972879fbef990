"""What every benchmark script shares: its record's start, the sets it runs on, timing, the JSON.

- the record: :func:`start_record` puts :func:`benchmarks.provenance.provenance` first (called
  at the start, so its load average is the machine's before the run), :func:`add_to_earlier`
  keeps an earlier run's records and provenance when a benchmark adds to its JSON,
  :func:`commit_of` names the commit of another checkout (one compared with this one);
- the sets: :func:`manifest_sets` chooses sets of a ``make_test_sets.py`` manifest (each with its
  ``role``: tuned on or held out), :func:`manifest_fields` says which manifest they came from;
- timing: :func:`timed` (a step on a device, synchronized), :func:`run_timed` (a command in a
  subprocess) and :func:`run_recipe` (a recipe on one set, with the run's record);
- output: :func:`write_json` (the record, rewritten after each run so a stopped benchmark keeps
  what it did), :func:`print_line` (one JSON line per run, flushed), :func:`device_environment`;
- the code measured: :func:`write_json` adds to the provenance ``modules``, the project modules
  this process and the recipes it ran imported (:func:`modules_imported`), from which
  ``render_docs.py --stale`` tells which figures were measured on code that changed since.

A script imports it after putting the repository on ``sys.path`` (two lines at its top), so it
runs as ``python benchmarks/NAME.py`` from anywhere without installing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.provenance import REPO_ROOT, commit_of, cpu_model, provenance
from secu_plugin.train.runtime import MODULES_FOLDER_VARIABLE, project_modules

__all__ = [
    "REPO_ROOT",
    "add_to_earlier",
    "commit_of",
    "device_environment",
    "manifest_fields",
    "manifest_sets",
    "modules_imported",
    "print_line",
    "provenance",
    "run_recipe",
    "run_timed",
    "start_record",
    "synchronize",
    "timed",
    "write_json",
]


def start_record(**fields: Any) -> dict:
    """A benchmark's JSON record: its provenance first, then ``fields``.

    Examples:
        >>> record = start_record(seeds=[0, 1])
        >>> list(record), record["seeds"], "load_average" in record["provenance"]
        (['provenance', 'seeds'], [0, 1], True)
    """
    record_recipe_modules()
    return {"provenance": provenance(), **fields}


def record_recipe_modules() -> Path:
    """The folder where the recipes this process starts (and their ranks) write the project
    modules they imported (``secu_plugin.train.runtime.run_or_exit`` does, when
    ``SECU_RECORD_MODULES`` names a folder); set for this process and its children.

    Examples:
        >>> record_recipe_modules() == record_recipe_modules()  # one folder per benchmark
        True
    """
    if not os.environ.get(MODULES_FOLDER_VARIABLE):
        os.environ[MODULES_FOLDER_VARIABLE] = tempfile.mkdtemp(prefix="secu-modules-")
    return Path(os.environ[MODULES_FOLDER_VARIABLE])


def modules_imported() -> list[str]:
    """The sorted project modules this process imported and those its recipes reported (see
    :func:`record_recipe_modules`): what a figure measured.

    Examples:
        >>> import sys
        >>> folder = record_recipe_modules()
        >>> _ = subprocess.run([sys.executable, "-c", "from secu_plugin.train import runtime; "
        ...     "runtime.run_or_exit(lambda args: None, None)"], check=True)
        >>> "benchmarks.common" in modules_imported()  # this process
        True
        >>> any("secu_plugin.train.runtime" in f.read_text() for f in folder.glob("modules-*"))
        True
    """
    found = set(project_modules())
    folder = os.environ.get(MODULES_FOLDER_VARIABLE)
    for file in sorted(Path(folder).glob("modules-*.txt")) if folder else []:
        found.update(file.read_text(encoding="utf-8").split())
    return sorted(found)


def add_to_earlier(record: dict, path: str | os.PathLike) -> dict | None:
    """The earlier record in ``path`` (None when there is none), whose provenance, and that of
    the runs before it, ``record["earlier_provenance"]`` then lists: a benchmark that adds runs
    to its JSON keeps where every run came from. The caller takes the earlier runs it keeps.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "run.json"
        >>> add_to_earlier({"provenance": {"date_utc": "b"}}, path) is None
        True
        >>> write_json(path, {"provenance": {"date_utc": "a"}, "runs": [1]})
        >>> record = {"provenance": {"date_utc": "b"}, "runs": []}
        >>> add_to_earlier(record, path)["runs"], record["earlier_provenance"][0]["date_utc"]
        ([1], 'a')
    """
    if not Path(path).is_file():
        return None
    earlier = json.loads(Path(path).read_text())
    record["earlier_provenance"] = [*earlier.get("earlier_provenance", []), earlier["provenance"]]
    return earlier


def manifest_sets(
    parser: argparse.ArgumentParser, manifest_path: str | os.PathLike, names: list[str] | None
) -> tuple[dict, list[dict], list[str]]:
    """``(manifest, chosen, skipped)``: the manifest, its sets named in ``names`` (all when
    None, else in the order asked) that have class folders, and the names of those without
    (labels aside: not scored here). An unknown name ends the benchmark through
    ``parser.error``.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "sets.json"
        >>> sets = [{"name": "a", "role": "tune"}, {"name": "f", "labels_csv": "f.csv"}]
        >>> write_json(path, {"sets": sets})
        >>> _, chosen, skipped = manifest_sets(argparse.ArgumentParser(), path, None)
        >>> [entry["name"] for entry in chosen], skipped
        (['a'], ['f'])
    """
    manifest = json.loads(Path(manifest_path).read_text())
    entries = {entry["name"]: entry for entry in manifest["sets"]}
    unknown = sorted(set(names or []) - set(entries))
    if unknown:
        parser.error(f"not in {manifest_path}: {', '.join(unknown)}")
    chosen = [entries[name] for name in (names or entries)]
    skipped = [e["name"] for e in chosen if "labels_csv" in e]
    return manifest, [e for e in chosen if "labels_csv" not in e], skipped


def manifest_fields(manifest_path: str | os.PathLike, manifest: dict) -> dict:
    """Which manifest a benchmark's sets came from, and that manifest's own provenance.

    Examples:
        >>> manifest_fields("sets.json", {"provenance": {"commit": "abc"}, "sets": []})
        {'manifest': 'sets.json', 'manifest_provenance': {'commit': 'abc'}}
    """
    return {
        "manifest": os.fspath(manifest_path),
        "manifest_provenance": manifest.get("provenance"),
    }


def synchronize(device: Any) -> None:
    """Waits for the work queued on a CUDA device (nothing to wait for on a CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], Any], device: Any = "cpu", repeats: int = 1) -> float:
    """Seconds per call of ``work()``, called ``repeats`` times in a row on ``device``, with the
    device synchronized before and after (so CUDA steps are timed whole, not only launched).

    Examples:
        >>> seconds = timed(lambda: sum(range(1000)), repeats=3)
        >>> 0 <= seconds < 10
        True
        >>> timed(print, repeats=0)
        Traceback (most recent call last):
        ...
        ValueError: repeats must be at least 1, got 0
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    synchronize(device)
    return (time.perf_counter() - started) / repeats


def run_timed(
    command: list[str], env: dict | None = None
) -> tuple[subprocess.CompletedProcess, float]:
    """Runs ``command`` (its output captured) and returns its process and its seconds, to 0.1 s.

    Examples:
        >>> import sys
        >>> result, seconds = run_timed([sys.executable, "-c", "print(6 * 7)"])
        >>> result.returncode, result.stdout.strip(), seconds >= 0
        (0, '42', True)
    """
    if env is not None and MODULES_FOLDER_VARIABLE not in env:  # the recipe says what it ran
        env = {**env, MODULES_FOLDER_VARIABLE: os.fspath(record_recipe_modules())}
    else:
        record_recipe_modules()
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    return result, round(time.time() - started, 1)


def run_recipe(
    command: list[str], entry: dict, seed: int, env: dict | None = None, **fields: Any
) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs ``command`` (a recipe on the set ``entry``) and returns its process and the run's
    record: set, role, ``fields``, seed, command, return code, seconds, and the output's tail
    when it failed.

    Examples:
        >>> import sys
        >>> entry = {"name": "a", "role": "tune"}
        >>> _, record = run_recipe([sys.executable, "-c", "exit(3)"], entry, 0, variant="x")
        >>> record["set"], record["role"], record["variant"], record["returncode"]
        ('a', 'tune', 'x', 3)
    """
    result, seconds = run_timed(command, env)
    record = {
        "set": entry["name"],
        "role": entry["role"],
        **fields,
        "seed": seed,
        "command": command,
        "returncode": result.returncode,
        "seconds_recipe": seconds,
    }
    if result.returncode != 0:
        record["output_tail"] = (result.stdout + result.stderr)[-3000:]
    return result, record


def device_environment(device: Any, **extra: Any) -> dict:
    """What a timing ran on: Python, torch, the device, torch's threads, the CPU and its cores,
    the GPU's name on CUDA, and ``extra`` (such as other libraries' versions).

    Examples:
        >>> environment = device_environment("cpu", timm="1.0")
        >>> environment["device"], environment["timm"], "gpu" in environment
        ('cpu', '1.0', False)
    """
    import torch

    device = torch.device(device)
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        **extra,
    }
    if device.type == "cuda":
        found["gpu"] = torch.cuda.get_device_name(device)
    return found


def write_json(path: str | os.PathLike, record: dict, indent: int = 2) -> None:
    """Writes ``record`` to ``path`` (its folder made when missing), ending in a newline; a
    record with a ``provenance`` gets there (in ``record`` too) ``modules``:
    :func:`modules_imported` by now.

    Examples:
        >>> path = Path(tempfile.mkdtemp()) / "run.json"
        >>> write_json(path, {"provenance": {"commit": "abc"}})
        >>> "benchmarks.common" in json.loads(path.read_text())["provenance"]["modules"]
        True
    """
    if isinstance(record.get("provenance"), dict):  # in place: the caller's record says it too
        record["provenance"]["modules"] = modules_imported()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=indent) + "\n")


def print_line(fields: dict) -> None:
    """One JSON line on stdout, flushed at once: a benchmark's progress, run by run.

    Examples:
        >>> print_line({"set": "a", "seed": 0})
        {"set": "a", "seed": 0}
    """
    print(json.dumps(fields), flush=True)
