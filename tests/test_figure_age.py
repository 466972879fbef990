"""Figures say their age: a figure whose modules changed in git after its commit is listed by
``render_docs.py --stale`` and marked on the page; one whose modules did not change is not.
A real git repository in a temporary folder, and a real recipe process that reports its
modules."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "render_docs.py"
spec = importlib.util.spec_from_file_location("render_docs", SCRIPT)
render_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(render_docs)

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
PAGE = (
    "Changed: <!-- render: docs/changed.json value=acc fmt=.2f --><!-- end render -->.\n"
    "Kept: <!-- render: docs/kept.json value=acc fmt=.2f --><!-- end render -->.\n"
    "Old: <!-- render: docs/old.json value=acc fmt=.2f --><!-- end render -->.\n"
    "Foreign: <!-- render: docs/foreign.json value=acc fmt=.2f --><!-- end render -->.\n\n"
    "<!-- render: docs/changed.json table=test_acc -->\n<!-- end render -->\n"
)


def git(root: Path, *args: str) -> str:
    completed = subprocess.run(
        ["git", *args], cwd=root, env=GIT_ENV, capture_output=True, text=True, check=True
    )
    return completed.stdout.strip()


def commit_all(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return git(root, "rev-parse", "HEAD")


def write(root: Path, path: str, text: str) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(text)


def figure(commit: str | None, modules: list[str] | None) -> str:
    provenance = {"commit": commit, **({"modules": modules} if modules is not None else {})}
    return json.dumps({"provenance": provenance, "acc": 0.5})


def stale_repo(root: Path) -> str:
    """Figures measured at commit ``measured``; then ``secu_plugin/loss.py`` changes."""
    git(root, "init", "-q")
    write(root, "secu_plugin/__init__.py", "")
    write(root, "secu_plugin/loss.py", "A = 1\n")
    write(root, "secu_plugin/bank.py", "B = 1\n")
    measured = commit_all(root, "code")
    write(root, "docs/changed.json", figure(measured, ["secu_plugin", "secu_plugin.loss"]))
    write(root, "docs/kept.json", figure(measured, ["secu_plugin", "secu_plugin.bank"]))
    write(root, "docs/old.json", figure(measured, None))  # written before modules were
    write(root, "docs/foreign.json", figure("f" * 40, ["secu_plugin.bank"]))  # not this repo's
    write(root, "README.md", PAGE)
    commit_all(root, "figures")
    write(root, "secu_plugin/loss.py", "A = 2\n")
    commit_all(root, "a change to the loss")
    return measured


def test_a_changed_module_makes_its_figure_stale_and_an_unchanged_one_does_not(tmp_path):
    @render_docs.renderer("test_acc")
    def accuracy_table(datas: list[dict], options: dict[str, str]) -> str:
        return f"| acc |\n|---|\n| {datas[0]['acc']} |"

    try:
        measured = stale_repo(tmp_path)
        listed = render_docs.stale_figures(tmp_path)
        render_docs.render_all(tmp_path, check=False)
        page = (tmp_path / "README.md").read_text()
        unchanged_check = render_docs.render_all(tmp_path, check=True)
        archive = tmp_path / "archive"  # the same pages without the history: marks are kept
        shutil.copytree(tmp_path / "docs", archive / "docs")
        shutil.copy(tmp_path / "README.md", archive)
        archive_check = render_docs.render_all(archive, check=True)
    finally:
        del render_docs.RENDERERS["test_acc"]
    assert [line.split(": ")[0:2] for line in listed] == [
        ["README.md:1", "docs/changed.json value=acc fmt=.2f"],
        ["README.md:3", "docs/old.json value=acc fmt=.2f"],
        ["README.md:4", "docs/foreign.json value=acc fmt=.2f"],
        ["README.md:6", "docs/changed.json table=test_acc"],
    ]
    assert listed[0].endswith(f"changed since commit {measured[:12]}: `secu_plugin/loss.py`")
    assert "(its modules not recorded)" in listed[1] and "is not in this checkout" in listed[2]
    short = f"(measured on older code, commit {measured[:7]})"
    assert f"Changed: <!-- render: docs/changed.json value=acc fmt=.2f -->0.50 {short}<" in page
    assert "Kept: <!-- render: docs/kept.json value=acc fmt=.2f -->0.50<" in page
    assert f"Old: <!-- render: docs/old.json value=acc fmt=.2f -->0.50 {short}<" in page
    assert "**Measured on older code** (`docs/changed.json`: 1 of its module files" in page
    assert unchanged_check == []  # the render is the same given the same git state
    assert archive_check == []


def test_stale_lists_nothing_when_nothing_changed_and_exits_1_when_something_did(tmp_path):
    stale_repo(tmp_path)
    git(tmp_path, "revert", "--no-edit", "HEAD")  # the loss as it was measured
    write(tmp_path, "docs/old.json", figure(git(tmp_path, "rev-parse", "HEAD"), None))
    write(tmp_path, "docs/foreign.json", json.dumps({"acc": 0.5}))  # no commit recorded
    write(tmp_path, "README.md", PAGE.split("\n\n")[0])
    write(tmp_path, "secu_plugin/loss.py", "A = 3\n")  # not committed: the history decides
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "--stale", "--root", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 1, completed.stderr
    assert (
        completed.stdout
        == "README.md:4: docs/foreign.json value=acc fmt=.2f: commit not recorded\n"
    )
    write(tmp_path, "README.md", PAGE.split("Foreign")[0])
    assert render_docs.stale_figures(tmp_path) == []


def test_a_benchmark_records_the_modules_of_the_recipes_it_ran(tmp_path):
    """``write_json`` records this process's project modules and those a recipe subprocess
    reported through ``run_or_exit`` (here a run that ends in a user error: exit 2)."""
    program = (
        "import sys; from secu_plugin.train.runtime import run_or_exit; import secu_plugin.train."
        "optim; run_or_exit(lambda args: (_ for _ in ()).throw(ValueError('bad')), None)"
    )
    code = (
        "import sys, json; sys.path.insert(0, sys.argv[1]);"
        "from benchmarks.common import run_timed, start_record, write_json;"
        "record = start_record();"
        f"result, _ = run_timed([sys.executable, '-c', {program!r}], env=dict(PYTHONPATH=sys.argv[1]));"
        "write_json(sys.argv[2], {**record, 'returncode': result.returncode})"
    )
    out = tmp_path / "run.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SECU_RECORD_MODULES", None)
    subprocess.run([sys.executable, "-c", code, str(ROOT), str(out)], env=env, check=True)
    record = json.loads(out.read_text())
    modules = record["provenance"]["modules"]
    assert record["returncode"] == 2
    assert "secu_plugin.train.optim" in modules  # imported by the recipe alone
    assert "benchmarks.common" in modules and modules == sorted(modules)
    assert all(name.split(".")[0] in ("secu_plugin", "recipes", "benchmarks") for name in modules)
