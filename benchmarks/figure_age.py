"""Whether a figure was measured on code that changed since: its JSON's commit and modules
against the checkout's git history.

A benchmark's JSON records the commit it ran on and, in its provenance, ``modules``: the
project modules its process and its recipes imported (``benchmarks/common.py``). A figure is
measured on older code when one of those modules' files differs between that commit and HEAD
(what is committed: the answer does not change with uncommitted edits). A JSON without
``modules`` (written before they were recorded) counts as older when any file under
``secu_plugin/``, ``recipes/`` or ``benchmarks/`` changed since its commit: conservative, it
cannot tell which code it measured. A JSON without a commit, or with one this checkout does
not have, counts as older too. Runs a JSON kept from earlier runs (``earlier_provenance``) are
judged by their own commit and modules.

Used by ``benchmarks/render_docs.py``: the pages mark such figures, and ``--stale`` lists them.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

CODE_FOLDERS = ("secu_plugin", "recipes", "benchmarks")
NAMED_FILES = 3  # the files a page names; --stale names them all


@dataclass(frozen=True)
class FigureAge:
    """What a figure's JSON says of the code it measured, against HEAD.

    ``reason`` is empty when the figure is current; ``commit`` is the commit of the stale run
    (None when not recorded), ``changed`` the files that changed since it.

    Examples:
        >>> age = FigureAge(reason="", commit="abc", changed=())
        >>> age.stale, FigureAge("commit not recorded", None, ()).stale
        (False, True)
    """

    reason: str
    commit: str | None
    changed: tuple[str, ...]

    @property
    def stale(self) -> bool:
        return bool(self.reason)

    def short(self) -> str:
        """A few words for a marked number: which commit it was measured on.

        Examples:
            >>> FigureAge("x", "0123456789abcdef", ("a.py",)).short()
            'measured on older code, commit 0123456'
        """
        commit = f"commit {self.commit[:7]}" if self.commit else "commit not recorded"
        return f"measured on older code, {commit}"

    def described(self, named: int | None = NAMED_FILES) -> str:
        """The reason, naming at most ``named`` changed files (all when None).

        Examples:
            >>> FigureAge("2 module files changed since commit 0123", "0123",
            ...           ("a.py", "b.py")).described(named=1)
            '2 module files changed since commit 0123: `a.py` and 1 more'
        """
        if not self.changed:
            return self.reason
        shown = self.changed if named is None else self.changed[:named]
        more = len(self.changed) - len(shown)
        return f"{self.reason}: {', '.join(f'`{f}`' for f in shown)}" + (
            f" and {more} more" if more else ""
        )


def module_files(modules: list[str]) -> list[str]:
    """The files a module name can live in (a module or a package), relative to the root.

    Examples:
        >>> module_files(["secu_plugin.train"])
        ['secu_plugin/train.py', 'secu_plugin/train/__init__.py']
        >>> module_files(["os"])
        Traceback (most recent call last):
        ...
        ValueError: module 'os' is not under secu_plugin, recipes or benchmarks
    """
    files = []
    for name in modules:
        if name.partition(".")[0] not in CODE_FOLDERS:
            raise ValueError(f"module {name!r} is not under secu_plugin, recipes or benchmarks")
        path = name.replace(".", "/")
        files += [f"{path}.py", f"{path}/__init__.py"]
    return files


class FigureAges:
    """Judges figures against the git history of the checkout at ``root`` (git's answers
    are kept: many figures share a commit).

    Examples:
        >>> import tempfile
        >>> FigureAges(Path(tempfile.mkdtemp())).judges  # not a checkout: no judgement
        False
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        top = self._git("rev-parse", "--show-toplevel")
        in_checkout = top is not None and Path(top).resolve() == self.root
        # A shallow clone (CI's default) lacks the commits figures name: it cannot judge.
        shallow = in_checkout and self._git("rev-parse", "--is-shallow-repository") == "true"
        self.judges = in_checkout and not shallow
        self._changed: dict[tuple[str, tuple[str, ...]], tuple[str, ...] | None] = {}

    def _git(self, *args: str) -> str | None:
        try:
            result = subprocess.run(
                ["git", *args], cwd=self.root, capture_output=True, text=True, check=False
            )
        except OSError:  # no git
            return None
        return result.stdout.strip() if result.returncode == 0 else None

    def changed_since(self, commit: str, paths: list[str]) -> tuple[str, ...] | None:
        """The files among ``paths`` that differ between ``commit`` and HEAD; None when this
        checkout does not have ``commit``."""
        key = (commit, tuple(paths))
        if key not in self._changed:
            known = self._git("cat-file", "-e", f"{commit}^{{commit}}") is not None
            names = (
                self._git("diff", "--name-only", commit, "HEAD", "--", *paths) if known else None
            )
            self._changed[key] = None if names is None else tuple(sorted(names.split()))
        return self._changed[key]

    def of_run(self, commit: str | None, modules: list[str] | None) -> FigureAge:
        """The age of one run: its commit and the modules it imported (None: not recorded)."""
        if not commit:
            return FigureAge("commit not recorded", None, ())
        files = list(CODE_FOLDERS) if modules is None else module_files(modules)
        changed = self.changed_since(commit, files)
        if changed is None:
            return FigureAge(f"commit {commit[:12]} is not in this checkout", commit, ())
        if not changed:
            return FigureAge("", commit, ())
        if modules is None:  # which of them it ran is unknown: count them, name none
            reason = f"{len(changed)} project files changed since commit {commit[:12]}"
            return FigureAge(f"{reason} (its modules not recorded)", commit, ())
        reason = f"{len(changed)} of its module files changed since commit {commit[:12]}"
        return FigureAge(reason, commit, changed)

    def of_json(self, data: dict, commit: str | None) -> FigureAge:
        """The age of a JSON's figures: its run's (``commit`` as the page's source line reads
        it) and that of every earlier run it kept; the first stale one, else current."""
        provenance = data.get("provenance") or {}
        runs = [(commit, provenance.get("modules"))]
        runs += [(p.get("commit"), p.get("modules")) for p in data.get("earlier_provenance", [])]
        for run_commit, modules in runs:
            age = self.of_run(run_commit, modules)
            if age.stale:
                return age
        return FigureAge("", commit, ())
