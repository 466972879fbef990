"""What the benchmarks over a ``make_test_sets.py`` manifest share: choosing its sets, and
running a recipe on one of them as a subprocess with the record of the run."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path


def manifest_sets(
    parser: argparse.ArgumentParser, manifest_path: str, names: list[str] | None
) -> tuple[dict, list[dict], list[str]]:
    """``(manifest, chosen, skipped)``: the manifest, its sets named in ``names`` (all when
    None) that have class folders, and the names of those without (labels aside: not scored
    here). An unknown name ends the benchmark through ``parser.error``."""
    manifest = json.loads(Path(manifest_path).read_text())
    entries = {entry["name"]: entry for entry in manifest["sets"]}
    unknown = sorted(set(names or []) - set(entries))
    if unknown:
        parser.error(f"not in {manifest_path}: {', '.join(unknown)}")
    chosen = [entries[name] for name in (names or entries)]
    skipped = [e["name"] for e in chosen if "labels_csv" in e]
    return manifest, [e for e in chosen if "labels_csv" not in e], skipped


def run_recipe(
    command: list[str], entry: dict, seed: int, env: dict | None = None, **fields
) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs ``command`` (a recipe on the set ``entry``) and returns its process and the run's
    record: set, role, ``fields``, seed, command, return code, seconds, and the output's tail
    when it failed."""
    started = time.time()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    record = {
        "set": entry["name"],
        "role": entry["role"],
        **fields,
        "seed": seed,
        "command": command,
        "returncode": result.returncode,
        "seconds_recipe": round(time.time() - started, 1),
    }
    if result.returncode != 0:
        record["output_tail"] = (result.stdout + result.stderr)[-3000:]
    return result, record
