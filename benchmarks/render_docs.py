"""Renders every table of figures in README.md and docs/*.md from the JSON files it names.

    python benchmarks/render_docs.py           # rewrite the rendered parts in place
    python benchmarks/render_docs.py --check   # exit 1 and print a diff if any part differs

A table sits between two markers naming its JSON file(s) and its kind (a renderer below):

    <!-- render: docs/cpu_loss_step.json table=loss_step -->
    | heads | ... |
    <!-- end render -->

and a number in prose between markers on one line (``value=`` is a dotted path into the JSON,
``*`` takes every element of a list; ``op=min|max|sum`` reduces them, over all the files named;
``fmt=`` is a Python format spec, or ``bytes`` for kB/MB/GB):

    ACC <!-- render: docs/mnist5k_results.json value=evaluations.0.accuracy fmt=.3f -->0.974<!-- end render -->

docs/figures.md says how to add a figure (script -> JSON -> marker -> render).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(
    r"<!-- render: (?P<spec>[^\n]*?) -->(?P<body>.*?)<!-- end render -->", re.DOTALL
)
OPEN, CLOSE = "<!-- render:", "<!-- end render -->"
FENCE = re.compile(r"(^ {0,3}```.*?^ {0,3}```[^\n]*$)", re.DOTALL | re.MULTILINE)

Renderer = Callable[[list[dict], dict[str, str]], str]
RENDERERS: dict[str, Renderer] = {}

# Whether a data set's scores were looked at while any default was chosen. A set missing here
# (and not labelled in its own JSON with "tuned_on") cannot appear in an accuracy table.
DATA_SETS = {
    "mnist5k": "tuned on (the `mnist5k` preset, every frozen-head default)",
    "sklearn_digits": "tuned on (the frozen heads' batch rule)",
    "digits8": "tuned on (sklearn's digits: the frozen heads' batch rule)",
    # benchmarks/make_test_sets.py's sets drawn from MNIST-5k share its images
    **dict.fromkeys(("mnist1797", "mnist8", "color32", "mnist56flat"), "tuned on (MNIST-5k's)"),
}
MODES = {
    "A": "A: backbone + projection + predictor (no SeCu)",
    "B": "B: A + SeCuLoss, input checks on",
    "C": "C: A + SeCuLoss(check_values=False)",
}


def renderer(name: str) -> Callable[[Renderer], Renderer]:
    """Registers a table renderer under ``name`` (the marker's ``table=name``)."""

    def register(function: Renderer) -> Renderer:
        RENDERERS[name] = function
        return function

    return register


def table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def human_bytes(value: float) -> str:
    """Decimal units, three significant digits: ``human_bytes(25623340) == '25.6 MB'``."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if value >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:.0f} B"


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


def source_line(path: str, data: dict, root: Path) -> str:
    """Where a table's figures come from, with what the file records of its run."""
    provenance = {**sidecar(root / path), **data.get("environment", {}), **data}
    provenance.update(data.get("provenance", {}))
    said = []
    for key, label in (("date", "date"), ("commit", "commit"), ("gpu", "GPU"), ("cpu", "CPU")):
        value = provenance.get(key)
        if isinstance(value, str) and value:
            said.append(f"{label} {value}")
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


def machine(data: dict) -> str:
    """The device a benchmark file ran on, in a few words."""
    environment = data.get("environment", {})
    if environment.get("gpu"):
        return environment["gpu"].removeprefix("NVIDIA ")
    return f"CPU, {environment.get('threads', '?')} threads"


@renderer("loss_step")
def render_loss_step(datas: list[dict], options: dict[str, str]) -> str:
    """One row per head set: the per-head form, SeCuLoss and lightly's SwaV (where measured)."""
    forms = [(machine(data), form) for data in datas for form in data["forms"]]
    swav = any("swav" in form["ms"] for _, form in forms)
    peak = any("step_peak_mib" in form for _, form in forms)
    header = ["machine", "heads", "sum K", "B", "views", "per-head ms", "SeCuLoss ms"]
    header += ["SwaV ms", "SeCuLoss / per-head", "SeCuLoss / SwaV"] if swav else []
    header += ["SeCuLoss / per-head"] if not swav else []
    header += ["step peak MiB, per-head / SeCuLoss"] if peak else []
    rows = []
    for where, form in forms:
        ms = form["ms"]
        row = [where, form["heads"], f"{sum(form['num_clusters']):,}", form["batch"]]
        row += [form["views"]]
        row += [f"{ms['baseline']:.2f}", f"{ms['fused']:.2f}"]
        if swav:
            row += [f"{ms['swav']:.2f}" if "swav" in ms else "not measured"]
        row += [f"{ms['fused'] / ms['baseline']:.2f}x"]
        if swav:
            row += [f"{ms['fused'] / ms['swav']:.2f}x" if "swav" in ms else "-"]
        if peak:
            mib = form.get("step_peak_mib")
            row += [f"{mib['baseline']:.0f} / {mib['fused']:.0f}" if mib else "not measured"]
        rows.append(row)
    return table(header, rows)


@renderer("loss_scaling")
def render_loss_scaling(datas: list[dict], options: dict[str, str]) -> str:
    """SeCuLoss's step against the total number of centers and the batch."""
    rows = [
        [p["sweep"], p["batch"], f"{p['total_k']:,}", f"{p['ms']:.2f}", f"{p['ns_per_bk']:.2f}"]
        for data in datas
        for p in data["scaling"]
    ]
    return table(["sweep", "B", "sum K", "ms", "ns per (B x sum K)"], rows)


@renderer("train_step")
def render_train_step(datas: list[dict], options: dict[str, str]) -> str:
    """One row per file and mode; SeCu's share is (mode - A) / mode, for every row alike."""
    rows = []
    for path, data in zip(options["_paths"], datas):
        modes = {m["mode"]: m for m in data["modes"]}
        reductions = data["args"].get("head_reductions", "not recorded")
        for name, mode in modes.items():
            share = "-"
            if name != "A" and "A" in modes:
                base = modes["A"]["ms_per_step"]
                share = f"{100 * (mode['ms_per_step'] - base) / mode['ms_per_step']:.2f}%"
            rows.append(
                [
                    f"`{Path(path).name}`",
                    reductions,
                    MODES.get(name, name),
                    f"{mode['ms_per_step']:.1f}",
                    f"{mode['images_per_s']:.0f}",
                    f"{mode['peak_mib']:.0f}",
                    share,
                ]
            )
    header = ["file", "head_reductions", "mode", "ms/step", "images/s", "peak MiB"]
    return table([*header, "SeCu's share of the step"], rows)


@renderer("frozen_heads_scale")
def render_frozen_heads_scale(datas: list[dict], options: dict[str, str]) -> str:
    """Frozen-ImageNet-shaped heads on a cached feature file, one row per file."""
    rows = []
    for data in datas:
        gpu = f", {data['peak_gpu_gib']:.1f} GiB GPU" if "peak_gpu_gib" in data else ""
        block = data["knn_seconds_per_block"]
        size = data.get("knn_block_size")
        block = (
            f"{block:.2f} s per block of {size:,} queries" if size else f"{block:.2f} s per block"
        )
        k = f"k {data['knn_k']}: " if "knn_k" in data else ""
        rows.append(
            [
                f"{data['images']:,} x {data['dim']}",
                f"{data.get('device', 'cpu')}, {data['machine']}",
                f"{data['step_seconds_median']:.3g}",
                f"{data['epoch_seconds_extrapolated']:.1f}",
                f"{k}{data['knn_seconds_extrapolated']:.0f} s ({block})",
                f"{data['peak_rss_gib']:.1f} GiB host{gpu}",
                data.get("note", ""),
            ]
        )
    header = ["cache", "device", "s per step", "s per epoch (extrapolated)"]
    header += ["exact k-NN (extrapolated)", "peak memory", "note"]
    return table(header, rows)


@renderer("memory_table")
def render_memory_table(datas: list[dict], options: dict[str, str]) -> str:
    """Bytes of the assignment memory per rank, and of one step's communication per rank."""
    rows = []
    for row in (row for data in datas for row in data["rows"]):
        growth = []
        if row["replicated_resident_growth"] is not None:
            growth.append(f"replicated {human_bytes(row['replicated_resident_growth'])}")
        if row["sharded_resident_growth_rank0"] is not None:
            growth.append(f"rank 0 sharded {human_bytes(row['sharded_resident_growth_rank0'])}")
        rows.append(
            [
                f"{row['num_instances']:,}",
                row["world_size"],
                human_bytes(row["replicated_bytes"]),
                human_bytes(row["sharded_bytes"]),
                ", ".join(growth) or "not built (formula only)",
                human_bytes(row["replicated_step_bytes"]),
                human_bytes(row["sharded_step_bytes"]),
                human_bytes(row["communication"]["center_gradient"]),
            ]
        )
    header = ["N", "ranks", "replicated / rank", "sharded / rank"]
    header += ["resident memory growth measured", "step comm, replicated", "step comm, sharded"]
    return table([*header, "of which center gradient"], rows)


@renderer("communication")
def render_communication(datas: list[dict], options: dict[str, str]) -> str:
    """Each collective's bytes per step and rank, at the ranks named by ``ranks=8,512``."""
    ranks = [int(r) for r in options.get("ranks", "8,512").split(",")]
    by_ranks = {row["world_size"]: row["communication"] for row in datas[0]["rows"]}
    missing = [r for r in ranks if r not in by_ranks]
    if missing:
        raise ValueError(f"communication: no row for ranks {missing} in the file")
    names = [
        ("sizes", "batch sizes (all-gather, int64)", "8 W"),
        ("indices", "global batch indices (all-gather, int64)", "8 B_g"),
        ("labels", "labels + bad-step flag (all-gather, int32)", "4 (H + 1) B_g"),
        ("sharded_fetch", "sharded only: stored labels (all-reduce MAX, int32)", "2 (W-1)/W x 4 H B_g"),
        ("center_gradient", "centers' gradient (all-reduce, float32)", "2 (W-1)/W x 4 sum K dim"),
    ]  # fmt: skip
    rows = [[label, formula] + [human_bytes(by_ranks[r][key]) for r in ranks]
            for key, label, formula in names]  # fmt: skip
    return table(["collective", "bytes", *(f"W = {r}" for r in ranks)], rows)


@renderer("kill_soak")
def render_kill_soak(datas: list[dict], options: dict[str, str]) -> str:
    """Each soak file's trials: how many were killed, resumed to the same result, failed."""
    rows, totals = [], [0, 0, 0, 0]
    for path, data in zip(options["_paths"], datas):
        trials = data["trials"]
        counts = [
            len(trials),
            sum(t["killed"] for t in trials),
            sum(t["identical"] for t in trials),
            sum(bool(t["error"]) for t in trials),
        ]
        totals = [a + b for a, b in zip(totals, counts)]
        rows.append([f"`{Path(path).name}`", *counts, f"{data['uninterrupted_seconds']:.1f}"])
    if len(datas) > 1:
        rows.append(["together", *totals, "-"])
    header = ["file", "trials", "killed at a random moment", "identical to the uninterrupted run"]
    return table([*header, "errors", "uninterrupted run, s"], rows)


@renderer("clustering")
def render_clustering(datas: list[dict], options: dict[str, str]) -> str:
    """A run's evaluations (results.json), each data set labelled tuned on or held out."""
    rows = []
    seconds = any("seconds" in data for data in datas)
    for data in datas:
        spent = data.get("seconds", "-")
        spent = spent.get("total", "-") if isinstance(spent, dict) else spent
        for e in data["evaluations"]:
            status = e.get("tuned_on", DATA_SETS.get(e["dataset"]))
            if status is None:
                raise ValueError(
                    f"data set {e['dataset']!r}: say whether it is tuned on or held out "
                    "(DATA_SETS in benchmarks/render_docs.py, or 'tuned_on' in its JSON)"
                )
            if isinstance(status, bool):
                status = "tuned on" if status else "held out"
            rows.append(
                [
                    e["dataset"],
                    status,
                    f"{e['split']} ({e['num_images']})",
                    e["num_clusters"],
                    e["assignment"],
                    f"{e['accuracy']:.4f}",
                    f"{e['nmi']:.4f}",
                    f"{e['ari']:.4f}",
                    *([spent] if seconds else []),
                ]
            )
        if "kmeans_accuracy" in data:  # the baseline the frozen-head recipe runs on its cache
            kmeans = [f"{data['kmeans_' + m]:.4f}" for m in ("accuracy", "nmi", "ari")]
            rows.append([*rows[-1][:4], "k-means on the same features", *kmeans])
            rows[-1] += ["-"] if seconds else []
    header = ["data set", "tuned on / held out", "split (images)", "head K", "assignment"]
    return table([*header, "ACC", "NMI", "ARI", *(["seconds"] if seconds else [])], rows)


@renderer("k_selection")
def render_k_selection(datas: list[dict], options: dict[str, str]) -> str:
    """``view=signals``: per family and candidate signal, the runs whose recommended head is the
    true K, and the farthest head recommended; ``view=runs``: each run's pick."""
    data = datas[0]
    names = {"recipe": "the recipes' signal", "modularity_projections": "modularity, projections",
             "kappa_projections": "kappa, projections", "modularity_features":
             "modularity, backbone features", "kappa_features": "kappa, backbone features"}  # fmt: skip
    if options.get("view") == "runs":
        heads = data["heads"]
        signal = data["signal_chosen"]
        rows = [[r["family"], r["set"], r["seed"], r["true_k"],
                 heads[max(range(len(heads)), key=lambda h: r["signals"][signal][h])],
                 f"{r['accuracy_true_k_head']:.3f}", r["seconds_recipe"]]
                for r in data["runs"] if r["returncode"] == 0]  # fmt: skip
        header = ["family", "set", "seed", "true K", "recommended K", "ACC of the true-K head"]
        return table([*header, "run, s (queue included)"], rows)
    rows = []
    for family, summary in data["summary"].items():
        for signal, name in names.items():
            found = summary[signal]
            rows.append([family, summary["role"], name, f"{found['right']} of {found['runs']}",
                         found["max_head_distance"]])  # fmt: skip
    header = ["family", "role", "signal", "right head", "farthest pick (heads away)"]
    return table(header, rows)


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


def render_marker(match: re.Match, root: Path) -> str:
    """One marker and what it renders, from the JSON files it names."""
    spec, body = match["spec"], match["body"]
    if OPEN in body:
        raise ValueError(f"marker {spec!r} is not closed before the next one")
    paths, options = parse_spec(spec)
    kind = "value" if "value" in options else options["table"]
    if kind not in RENDERERS or (kind == "value") != ("value" in options):
        raise ValueError(f"unknown table {kind!r}; known: {sorted(set(RENDERERS) - {'value'})}")
    datas = [load_json(root, path) for path in paths]
    rendered = RENDERERS[kind](datas, {**options, "_paths": paths})
    if kind == "value":
        line_start = match.string.rfind("\n", 0, match.start()) + 1
        if "\n" in body or not match.string[line_start : match.start()].strip():
            # A line that starts with "<!--" would end the paragraph (an HTML block).
            raise ValueError(f"value marker {spec!r} must sit inside one line of text")
        return f"<!-- render: {spec} -->{rendered}{CLOSE}"
    return f"<!-- render: {spec} -->\n{rendered}\n\n{sources(paths, datas, root)}\n{CLOSE}"


def render_text(text: str, root: Path, name: str = "text") -> str:
    """``text`` with every marked part re-rendered from the JSON its marker names; markers
    inside fenced code blocks are examples and stay as they are."""

    def replace(match: re.Match) -> str:
        try:
            return render_marker(match, root)
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
    diffs = []
    for document in documents(root):
        if not document.is_file():
            continue
        text = document.read_text(encoding="utf-8")
        name = str(document.relative_to(root))
        rendered = render_text(text, root, name)
        if rendered != text:
            diff = difflib.unified_diff(
                text.splitlines(keepends=True), rendered.splitlines(keepends=True), name, name
            )
            diffs.append("".join(diff))
            if not check:
                document.write_text(rendered, encoding="utf-8")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 on a diff")
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root")
    args = parser.parse_args(argv)
    try:
        diffs = render_all(args.root, args.check)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for diff in diffs:
        print(diff, end="")
    if args.check and diffs:
        print(f"{len(diffs)} document(s) differ from their render: run "
              "python benchmarks/render_docs.py", file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
