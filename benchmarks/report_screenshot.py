"""The picture of a run's HTML cluster report that the README and docs/report.md show.

    python benchmarks/report_screenshot.py --model outputs/mnist5k   # after the README's demo

opens ``outputs/mnist5k/report/index.html`` (the report the run wrote) from disk in headless
Chromium (Debian's ``chromium``, as the slow tests use it), writes the top of the page to
``docs/cluster_report.png`` and, beside it, ``docs/cluster_report.json``: the provenance, the
run pictured (its directory, its final figures from ``results.json``, its recommended head) and
the window's size. ``--model`` takes a run's output directory, its ``model/`` folder, its
``report/`` folder or the ``index.html`` itself. No test writes into ``docs/``: the tests run
this script on a small run of their own and write into a scratch folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import REPO_ROOT, start_record, write_json

WINDOW = (1200, 1400)  # wide enough for two clusters side by side, tall enough for the plots


def chromium() -> str | None:
    """The headless browser's program, if installed (``chromium`` or ``chromium-browser``)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browser_command(profile: Path, program: str | None = None) -> list[str]:
    """Chromium (``program``, else the installed one), headless, with nothing reaching the
    network and a scratch ``profile``.

    Examples:
        >>> command = browser_command(Path("/tmp/profile"), program="chromium")
        >>> command[0], "--headless" in command, "--user-data-dir=/tmp/profile" in command
        ('chromium', True, True)
    """
    program = program or chromium()
    if program is None:
        raise ValueError("no chromium found: install Debian's chromium (apt-get install chromium)")
    return [
        program,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",  # the page's script (the head switch) has run
    ]


def report_index(model: Path) -> Path:
    """The report's ``index.html`` from a run's output directory, its ``model/`` or ``report/``
    folder, or the file itself.

    Examples:
        >>> report_index(Path("/nowhere"))
        Traceback (most recent call last):
        ...
        ValueError: /nowhere: no report/index.html there (give a training run's output directory)
    """
    for index in (model, model / "index.html", model / "report" / "index.html"):
        if index.name == "index.html" and index.is_file():
            return index
    if (model.parent / "report" / "index.html").is_file():  # the run's model/ folder
        return model.parent / "report" / "index.html"
    raise ValueError(
        f"{model}: no report/index.html there (give a training run's output directory)"
    )


def take_screenshot(index: Path, out: Path, window: tuple[int, int] = WINDOW) -> Path:
    """Opens ``index`` from disk in headless Chromium and writes the top ``window`` of the
    page to the PNG ``out``; returns ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        command = browser_command(Path(profile))
        size = f"--window-size={window[0]},{window[1]}"
        subprocess.run(
            [
                *command,
                f"--screenshot={out.resolve()}",
                size,
                "--hide-scrollbars",
                index.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=True,
        )
    if not out.is_file():
        raise ValueError(f"{index}: chromium wrote no screenshot")
    return out


def pictured_run(index: Path) -> dict:
    """What the picture is of: the run's directory and, from its ``results.json``, the
    evaluations and the recommended head (empty where the report has no run beside it)."""
    run = index.parent.parent
    results_file = run / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    selection = results.get("k_selection") or {}
    return {
        "output_dir": str(run),
        "report": str(index),
        "evaluations": results.get("evaluations", []),
        "recommended_num_clusters": selection.get("recommended_num_clusters"),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the run's output directory")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "cluster_report.png")
    args = parser.parse_args(argv)
    record = start_record(window=list(WINDOW))
    index = report_index(args.model)
    take_screenshot(index, args.out)
    record.update(image=str(args.out), run=pictured_run(index))
    write_json(args.out.with_suffix(".json"), record)
    return record


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
