"""Renders every table of figures in README.md and docs/*.md from the JSON files it names.

    python benchmarks/render_docs.py           # rewrite the rendered parts in place
    python benchmarks/render_docs.py --check   # exit 1 and print a diff if any part differs
    python benchmarks/render_docs.py --stale   # list the figures measured on older code

A table sits between two markers naming its JSON file(s) and its kind (a renderer in
``benchmarks/renderers.py``, or one registered here with ``@renderer``):

    <!-- render: docs/cpu_loss_step.json table=loss_step -->
    | heads | ... |
    <!-- end render -->

and a number in prose between markers on one line (``value=`` is a dotted path into the JSON,
``*`` takes every element of a list; ``op=min|max|sum`` reduces them, over all the files named;
``fmt=`` is a Python format spec, or ``bytes`` for kB/MB/GB):

    ACC <!-- render: docs/mnist5k_results.json value=evaluations.0.accuracy fmt=.3f -->0.974<!-- end render -->

A figure whose JSON was measured on code that changed since (``benchmarks/figure_age.py``:
its modules' files differ between its commit and HEAD) is marked: a number gets "(measured on
older code, commit X)", a table a line under its source. The marks follow the committed
history, so commit the code, then measure; and re-render after a commit that changes code.

docs/figures.md says how to add a figure (script -> JSON -> marker -> render).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling module of table kinds
# The registry and its helpers live in renderers.py; a kind may also be added here with
# @renderer("name"): both register into the same RENDERERS.
import quality_renderers  # noqa: F401  (registers the clustering-quality kinds)
from figure_age import FigureAge, FigureAges
from renderers import DATA_SETS, RENDERERS, human_bytes, renderer, table  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"<!-- render: (?P<spec>[^\n]*?) -->(?P<body>.*?)<!-- end render -->", re.DOTALL
)
OPEN, CLOSE = "<!-- render:", "<!-- end render -->"
KEPT_MARK = re.compile(
    r"( \(measured on older code, [^)\n]*\)|\n\n\*\*Measured on older code\*\*.*)$"
)
FENCE = re.compile(r"(^ {0,3}```.*?^ {0,3}```[^\n]*$)", re.DOTALL | re.MULTILINE)


def sidecar(path: Path) -> dict[str, str]:
    """Date and commit from the ``environment.txt`` that the GPU suite writes beside its JSON
    (``date: ...`` and ``git: ...`` lines; ``unknown`` is not a commit)."""
    found = {}
    environment = path.parent / "environment.txt"
    if environment.is_file():
        for line in environment.read_text(encoding="utf-8").splitlines():
            key, _, value = line.partition(": ")
            if key in ("date", "git") and value.strip() not in ("", "unknown"):
                found["date" if key == "date" else "commit"] = value.strip()
    return found


def recorded(path: str, data: dict, root: Path) -> dict:
    """What a file records of its run, from ``provenance`` (``benchmarks/provenance.py``),
    ``environment`` (older scripts), its top level, or the GPU suite's ``environment.txt``."""
    found = {**sidecar(root / path), **data.get("environment", {}), **data}
    record = data.get("provenance") or {}
    aliases = {
        "date": "date_utc",
        "cpu": "cpu_model",
        "threads": "torch_threads",
        "loadavg": "load_average",
        "commit": "commit",
        "gpu": "gpu",
        "dirty": "dirty",
    }
    for key, name in aliases.items():
        if record.get(name) is not None:
            found[key] = record[name]
    if (record.get("versions") or {}).get("torch"):
        found["torch"] = record["versions"]["torch"]
    return found


def source_line(path: str, data: dict, root: Path) -> str:
    """Where a table's figures come from, with what the file records of its run."""
    provenance = recorded(path, data, root)
    said = []
    for key, label in (("date", "date"), ("commit", "commit"), ("gpu", "GPU"), ("cpu", "CPU")):
        value = provenance.get(key)
        if isinstance(value, str) and value:
            said.append(f"{label} {value[:12] if key == 'commit' else value}")
    if provenance.get("dirty"):
        said.append("uncommitted changes")
    for key in ("torch", "threads", "loadavg"):
        if provenance.get(key) is not None:
            said.append(f"{key} {provenance[key]}")
    missing = [k for k in ("date", "commit") if not provenance.get(k)]
    if missing:
        said.append(f"{' and '.join(missing)} not recorded")
    return f"`{path}` ({', '.join(said)})"


def sources(paths: list[str], datas: list[dict], root: Path) -> str:
    return "Source: " + "; ".join(source_line(p, d, root) for p, d in zip(paths, datas)) + "."


def lookup(data: object, path: str) -> list[object]:
    """Every value at a dotted path; ``*`` takes each element of a list."""
    values = [data]
    for part in path.split("."):
        found = []
        for value in values:
            if part == "*" and isinstance(value, list):
                found += value
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                found.append(value[int(part)])
            elif isinstance(value, dict) and part in value:
                found.append(value[part])
            else:
                raise ValueError(f"value={path}: nothing at {part!r}")
        values = found
    return values


@renderer("value")
def render_value(datas: list[dict], options: dict[str, str]) -> str:
    """One number for prose: ``value=PATH [op=min|max|sum] [fmt=SPEC|bytes]``."""
    values = [v for data in datas for v in lookup(data, options["value"])]
    operations = {"min": min, "max": max, "sum": sum}
    operation = options.get("op")
    if operation is not None:
        if operation not in operations:
            raise ValueError(f"op={operation}: use one of {sorted(operations)}")
        values = [operations[operation](values)]
    if len(values) != 1:
        raise ValueError(f"value={options['value']}: {len(values)} values; give op=")
    fmt = options.get("fmt", "")
    return human_bytes(values[0]) if fmt == "bytes" else format(values[0], fmt)


def parse_spec(spec: str) -> tuple[list[str], dict[str, str]]:
    paths, options = [], {}
    for token in shlex.split(spec):
        key, equals, value = token.partition("=")
        if equals:
            options[key] = value
        else:
            paths.append(token)
    if ("table" in options) == ("value" in options):
        raise ValueError(f"marker {spec!r}: give exactly one of table=NAME or value=PATH")
    if not paths:
        raise ValueError(f"marker {spec!r}: name the JSON file(s) it renders")
    return paths, options


def load_json(root: Path, path: str) -> dict:
    file = (root / path).resolve()
    if not file.is_relative_to(root.resolve()) or file.suffix != ".json":
        raise ValueError(f"{path}: a marker names JSON files inside the repository only")
    if not file.is_file():
        raise ValueError(f"{path}: no such file")
    return json.loads(file.read_text(encoding="utf-8"))


def figure_age(paths: list[str], datas: list[dict], root: Path, ages: FigureAges | None):
    """``(path, age)`` of the first of a marker's files measured on older code, else None
    (and None when ``ages`` is None: outside a git checkout nothing is judged)."""
    for path, data in zip(paths, datas) if ages is not None and ages.judges else ():
        age = ages.of_json(data, recorded(path, data, root).get("commit"))
        if age.stale:
            return path, age
    return None


def render_marker(match: re.Match, root: Path, ages: FigureAges | None = None) -> str:
    """One marker and what it renders, from the JSON files it names, marked when measured on
    older code (judged by ``ages``)."""
    spec, body = match["spec"], match["body"]
    if OPEN in body:
        raise ValueError(f"marker {spec!r} is not closed before the next one")
    paths, options = parse_spec(spec)
    kind = "value" if "value" in options else options["table"]
    if kind not in RENDERERS or (kind == "value") != ("value" in options):
        raise ValueError(f"unknown table {kind!r}; known: {sorted(set(RENDERERS) - {'value'})}")
    datas = [load_json(root, path) for path in paths]
    rendered = RENDERERS[kind](datas, {**options, "_paths": paths})
    older = figure_age(paths, datas, root, ages)
    if kind == "value":
        line_start = match.string.rfind("\n", 0, match.start()) + 1
        if "\n" in body or not match.string[line_start : match.start()].strip():
            # A line that starts with "<!--" would end the paragraph (an HTML block).
            raise ValueError(f"value marker {spec!r} must sit inside one line of text")
        # A recorded date or commit is not a measurement: it has no age to mark.
        marked = older and not options["value"].startswith("provenance.")
        mark = f" ({older[1].short()})" if marked else ""
        return f"<!-- render: {spec} -->{rendered}{kept_mark(body, ages) or mark}{CLOSE}"
    mark = f"\n\n{older_code_line(*older)}" if older else kept_mark(body, ages)
    return f"<!-- render: {spec} -->\n{rendered}\n\n{sources(paths, datas, root)}{mark}\n{CLOSE}"


def kept_mark(body: str, ages: FigureAges | None) -> str:
    """The mark of older code already in ``body`` when there is no history to judge by (a
    source archive, a shallow clone): the page keeps what a full clone rendered.

    Examples:
        >>> kept_mark("0.97 (measured on older code, commit 0123456)", None)
        ' (measured on older code, commit 0123456)'
    """
    if ages is not None and ages.judges:
        return ""
    found = KEPT_MARK.search(body)
    return found[0] if found else ""


def older_code_line(path: str, age: FigureAge) -> str:
    """The line under a table measured on older code.

    Examples:
        >>> older_code_line("docs/a.json", FigureAge("commit not recorded", None, ()))
        '**Measured on older code** (`docs/a.json`: commit not recorded).'
    """
    return f"**Measured on older code** (`{path}`: {age.described()})."


def render_text(text: str, root: Path, name: str = "text", ages: FigureAges | None = None) -> str:
    """``text`` with every marked part re-rendered from the JSON its marker names; markers
    inside fenced code blocks are examples and stay as they are."""

    def replace(match: re.Match) -> str:
        try:
            return render_marker(match, root, ages)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
        except (KeyError, IndexError, TypeError) as error:  # a file without the expected fields
            raise ValueError(f"{name}: marker {match['spec']!r}: {error!r} in its file") from None

    parts = FENCE.split(text)  # odd indices: fenced code blocks
    for index in range(0, len(parts), 2):
        opened, ended = parts[index].count(OPEN), parts[index].count(CLOSE)
        if opened != ended:
            raise ValueError(f"{name}: {opened} render marker(s), {ended} end(s)")
        parts[index] = MARKER.sub(replace, parts[index])
    return "".join(parts)


def documents(root: Path) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def render_all(root: Path, check: bool) -> list[str]:
    """Renders every document (writes it unless ``check``); returns the diffs found."""
    diffs, ages = [], FigureAges(root)
    for document in documents(root):
        if not document.is_file():
            continue
        text = document.read_text(encoding="utf-8")
        name = str(document.relative_to(root))
        rendered = render_text(text, root, name, ages)
        if rendered != text:
            diff = difflib.unified_diff(
                text.splitlines(keepends=True), rendered.splitlines(keepends=True), name, name
            )
            diffs.append("".join(diff))
            if not check:
                document.write_text(rendered, encoding="utf-8")
    return diffs


def stale_figures(root: Path) -> list[str]:
    """One line per marker (fenced examples aside) whose figures were measured on older code:
    page and line, its marker, and which files changed since its commit."""
    ages, found = FigureAges(root), []
    if not ages.judges:
        raise ValueError(f"{root}: not the top of a full git clone, no history to judge by")
    for document in documents(root):
        text = document.read_text(encoding="utf-8") if document.is_file() else ""
        offset = 0
        for index, part in enumerate(FENCE.split(text)):
            for match in MARKER.finditer(part) if index % 2 == 0 else ():
                paths, _ = parse_spec(match["spec"])
                datas = [load_json(root, path) for path in paths]
                older = figure_age(paths, datas, root, ages)
                if older:
                    line = text.count("\n", 0, offset + match.start()) + 1
                    where = f"{document.relative_to(root)}:{line}"
                    found.append(f"{where}: {match['spec']}: {older[1].described(named=None)}")
            offset += len(part)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a diff")
    parser.add_argument(
        "--stale",
        action="store_true",
        help="change nothing; list the figures measured on older code (exit 1 if any)",
    )
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    if args.stale:
        try:
            stale = stale_figures(args.root)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        print("".join(f"{line}\n" for line in stale), end="")
        return 1 if stale else 0
    try:
        diffs = render_all(args.root, args.check)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for diff in diffs:
        print(diff, end="")
    if args.check and diffs:
        print(
            f"{len(diffs)} document(s) differ from their render: run "
            "python benchmarks/render_docs.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
