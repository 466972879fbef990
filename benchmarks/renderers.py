"""The kinds of table that ``benchmarks/render_docs.py`` renders, each from its JSON files.

A kind is one function registered with ``@renderer("name")`` (the marker's ``table=name``): it
takes the loaded JSON files and the marker's options (``_paths``: the files' paths) and returns
the Markdown table. docs/figures.md lists the kinds and says how to add one.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from pathlib import Path

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
    floor = any("floor" in form["ms"] for _, form in forms)  # the dense products alone
    peak = any("step_peak_mib" in form for _, form in forms)
    header = ["machine", "heads", "sum K", "B", "views", "per-head ms", "SeCuLoss ms"]
    header += ["SwaV ms", "SeCuLoss / per-head", "SeCuLoss / SwaV"] if swav else []
    header += ["SeCuLoss / per-head"] if not swav else []
    header += ["products alone ms", "SeCuLoss / products"] if floor else []
    header += ["step peak MiB, per-head / SeCuLoss"] if peak else []
    rows = []

    def spread(form: dict, name: str) -> str:  # median, and min-max over rounds if recorded
        low, high = form.get("ms_min", {}).get(name), form.get("ms_max", {}).get(name)
        median = f"{form['ms'][name]:.2f}"
        return median if low is None else f"{median} ({low:.1f}-{high:.1f})"

    for where, form in forms:
        ms = form["ms"]
        row = [where, form["heads"], f"{sum(form['num_clusters']):,}", form["batch"]]
        row += [form["views"]]
        row += [spread(form, "baseline"), spread(form, "fused")]
        if swav:
            row += [spread(form, "swav") if "swav" in ms else "not measured"]
        row += [f"{ms['fused'] / ms['baseline']:.2f}x"]
        if swav:
            row += [f"{ms['fused'] / ms['swav']:.2f}x" if "swav" in ms else "-"]
        if floor:
            has = "floor" in ms
            row += [spread(form, "floor") if has else "not measured"]
            row += [f"{ms['fused'] / ms['floor']:.2f}x" if has else "-"]
        if peak:
            mib = form.get("step_peak_mib")
            row += [f"{mib['baseline']:.0f} / {mib['fused']:.0f}" if mib else "not measured"]
        rows.append(row)
    return table(header, rows)


@renderer("loss_scaling")
def render_loss_scaling(datas: list[dict], options: dict[str, str]) -> str:
    """SeCuLoss's step against the total number of centers and the batch."""
    points = [p for data in datas for p in data["scaling"]]
    floor = any("floor_ms" in p for p in points)  # the dense products alone, same run
    per_head = any("num_clusters" in p for p in points)
    rows = []
    for p in points:
        heads = p.get("num_clusters")
        row = [p["sweep"], p["batch"], f"{p['total_k']:,}"]
        if per_head:
            row += [f"{min(heads):,}-{max(heads):,}" if heads else "not recorded"]
        row += [f"{p['ms']:.2f}", f"{p['ns_per_bk']:.2f}"]
        if floor:
            row += [f"{p['floor_ms']:.2f}", f"{p['ms'] / p['floor_ms']:.2f}x"]
        rows.append(row)
    header = ["sweep", "B", "sum K", *(["K per head"] if per_head else []), "ms"]
    header += ["ns per (B x sum K)"]
    header += ["products alone ms", "SeCuLoss / products"] if floor else []
    return table(header, rows)


@renderer("train_step")
def render_train_step(datas: list[dict], options: dict[str, str]) -> str:
    """One row per file and mode; SeCu's share is (mode - A) / mode, for every row alike (of
    the medians where the file has interleaved rounds)."""
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
                    f"{mode['ms_per_step']:.1f}"
                    + (
                        f" ({mode['ms_per_step_min']:.1f}-{mode['ms_per_step_max']:.1f}, "
                        f"{len(mode['ms_per_step_rounds'])} rounds)"
                        if "ms_per_step_rounds" in mode
                        else " (1 run)"
                    ),
                    f"{mode['images_per_s']:.0f}",
                    f"{mode['peak_mib']:.0f}",
                    share,
                ]
            )
    header = ["file", "head_reductions", "mode", "ms/step, median (min-max)", "images/s"]
    header += ["peak MiB"]
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
        (
            "sharded_fetch",
            "sharded only: stored labels (all-reduce MAX, int32)",
            "2 (W-1)/W x 4 H B_g",
        ),
        ("center_gradient", "centers' gradient (all-reduce, float32)", "2 (W-1)/W x 4 sum K dim"),
    ]
    rows = [
        [label, formula] + [human_bytes(by_ranks[r][key]) for r in ranks]
        for key, label, formula in names
    ]
    return table(["collective", "bytes", *(f"W = {r}" for r in ranks)], rows)


@renderer("kill_soak")
def render_kill_soak(datas: list[dict], options: dict[str, str]) -> str:
    """Each soak file's trials: the preset soaked, how many were killed (and at which
    checkpointed steps), resumed to the same result, failed."""
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
        if any("checkpoint_step_at_kill" in t for t in trials):
            steps = [t["checkpoint_step_at_kill"] for t in trials if t["killed"]]
            before = sum(step is None for step in steps)
            at = sorted(step for step in steps if step is not None)
            where = f"{before} before the first checkpoint; after steps {', '.join(map(str, at))}"
            where += f" of {data['total_steps']}" if data.get("total_steps") else ""
        else:
            where = "not recorded"
        preset = data.get("preset", "not named (the default of `--data` then)")
        rows.append(
            [
                f"`{Path(path).name}`",
                preset,
                *counts[:2],
                where,
                *counts[2:],
                f"{data['uninterrupted_seconds']:.1f}",
            ]
        )
    if len(datas) > 1:
        rows.append(["together", "-", *totals[:2], "-", *totals[2:], "-"])
    header = ["file", "preset", "trials", "killed at a random moment"]
    header += ["last checkpoint when killed", "identical to the uninterrupted run", "errors"]
    return table([*header, "uninterrupted run, s"], rows)


def spread(values: list[float], fmt: str, centre: Callable = statistics.mean) -> str:
    """``centre (min-max)`` of the values, or the one value; ``centre``: mean for scores,
    median for times."""
    if len(values) == 1:
        return format(values[0], fmt)
    low, high = format(min(values), fmt), format(max(values), fmt)
    return f"{format(centre(values), fmt)} ({low}-{high})"


def role(name: str, status: object) -> str:
    """ "tuned on ..." or "held out" for a data set; refuses one that is neither."""
    status = DATA_SETS.get(name) if status is None else status
    if status is None:
        raise ValueError(
            f"data set {name!r}: say whether it is tuned on or held out "
            "(DATA_SETS in benchmarks/renderers.py, or 'tuned_on' in its JSON)"
        )
    if isinstance(status, bool):
        return "tuned on" if status else "held out"
    return str(status)


@renderer("pixel_baselines")
def render_pixel_baselines(datas: list[dict], options: dict[str, str]) -> str:
    """``benchmarks/kmeans_baseline.py``: each set's clusterings of pixels, mean (min-max) over
    the seeds."""
    rows = []
    for data in datas:
        for found in data["sets"]:
            runs = found["runs"]
            status = role(found["set"], DATA_SETS.get(found["set"]) or found.get("tuned_on"))
            methods = [("k-means on pixels", [r["kmeans_pixels"] for r in runs])]
            for dim in runs[0]["kmeans_whitened_pixels"]:
                scores = [r["kmeans_whitened_pixels"][dim] for r in runs]
                methods.append((f"k-means on whitened pixels ({dim} dims)", scores))
            if "spectral_whitened_pixels" in runs[0]:
                scores = [r["spectral_whitened_pixels"] for r in runs]
                dim = scores[0]["whitening_dim"]
                methods.append((f"spectral, k-NN graph of whitened pixels ({dim} dims)", scores))
            for method, scores in methods:
                rows.append(
                    [
                        found["set"],
                        status,
                        f"{found['eval_split']} ({found['eval_images']})",
                        found["K"],
                        method,
                        len(scores),
                        *(
                            spread([s[m] for s in scores], ".3f")
                            for m in ("accuracy", "nmi", "ari")
                        ),
                    ]
                )
    header = ["data set", "tuned on / held out", "split (images)", "K", "method", "seeds"]
    return table([*header, "ACC", "NMI", "ARI"], rows)


@renderer("demo_runs")
def render_demo_runs(datas: list[dict], options: dict[str, str]) -> str:
    """``benchmarks/demo_runs.py``: the demo's runs, this release's and earlier ones."""
    rows = []
    for data in datas:
        status = role(data["dataset"], data.get("tuned_on"))
        for run in data["runs"]:
            seconds = run.get("seconds")
            rows.append(
                [
                    run["release"],
                    run.get("date") or "not recorded",
                    f"`{run['commit'][:7]}`" if run.get("commit") else "not recorded",
                    f"{data['dataset']} ({status})",
                    run["epochs"],
                    *(f"{run[m]:.4f}" for m in ("accuracy", "nmi", "ari", "memory_accuracy")),
                    f"{seconds:.0f} ({run['seconds_per_epoch']:.1f} per epoch)"
                    if seconds
                    else "not recorded",
                ]
            )
    header = ["run", "date", "commit", "data set", "epochs", "ACC", "NMI", "ARI"]
    return table([*header, "memory ACC", "seconds (total / epochs)"], rows)


@renderer("clustering")
def render_clustering(datas: list[dict], options: dict[str, str]) -> str:
    """A run's evaluations (results.json), each data set labelled tuned on or held out."""
    rows = []
    seconds = any("seconds" in data for data in datas)
    for data in datas:
        spent = data.get("seconds", "-")
        spent = spent.get("total", "-") if isinstance(spent, dict) else spent
        for e in data["evaluations"]:
            status = role(e["dataset"], e.get("tuned_on"))
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
