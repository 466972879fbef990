"""Table kinds of the clustering-quality benchmarks (held-out protocol, issue 18): registered
into :data:`renderers.RENDERERS` when ``render_docs.py`` imports this module."""

from __future__ import annotations

from renderers import renderer, table


def role(name: str) -> str:
    return "tuned on" if name == "tune" else "held out"


@renderer("frozen_heldout")
def render_frozen_heldout(datas: list[dict], options: dict[str, str]) -> str:
    """benchmarks/frozen_heldout.py's summary: per set (and variant), the heads' ACC over the
    seeds beside the ceiling of the same features, the targets and the seconds."""
    rows = []
    for data in datas:
        for name, s in data["summary"].items():
            if not s.get("runs"):
                continue
            rows.append(
                [
                    f"`{name}`",
                    role(s["role"]),
                    f"{s['heads_acc_mean']:.3f} ({s['heads_acc_min']:.3f}-{s['heads_acc_max']:.3f})",
                    f"{s['kmeans_raw_acc_mean']:.3f}",
                    f"{s['kmeans_whitened_acc_mean']:.3f}",
                    f"{s['spectral_knn_graph_acc_mean']:.3f}",
                    f"{s['knn_agreement_whitened']:.3f}",
                    f"{s['linear_probe_acc_mean']:.3f}",
                    "yes" if s["meets_agreement_target"] else "no",
                    "yes" if s["meets_plain_clustering_target"] else "no",
                    ", ".join(map(str, s["seeds"])),
                    " / ".join(map(str, s["seconds_cold"])) or "-",
                    s["seconds_warm_mean"] if s["seconds_warm_mean"] is not None else "-",
                ]
            )
    header = [
        "set",
        "role",
        "heads ACC mean (min-max)",
        "k-means raw",
        "k-means whitened",
        "spectral k-NN graph",
        "5-NN agreement",
        "linear probe (supervised)",
        ">= 0.85 x agreement",
        ">= best plain + 0.05",
        "seeds",
        "s cold",
        "s warm (mean)",
    ]
    return table(header, rows)


# Issue 27's ACC targets on frozen Lite0 features: a share of the set's linear probe (0.90 on
# the two 10-letter sets named first, 0.85 on the other held-out ones, which must also beat
# the best plain clustering by 0.05), and 0.90 on MNIST-5k; none on the other tune sets.
PROBE_SHARE = {"letters10_grey28": 0.90, "letters10_colour64": 0.90}


def objective_target(name: str, summary: dict) -> float | None:
    """The ACC issue 27 asks of set ``name`` (its summary's probe and plain clusterings)."""
    if name == "mnist5k":
        return 0.90
    if summary["role"] == "tune":
        return None
    probe = summary["linear_probe_acc_mean"]
    if name in PROBE_SHARE:
        return PROBE_SHARE[name] * probe
    return max(0.85 * probe, summary["best_plain_clustering_acc_mean"] + 0.05)


@renderer("frozen_objectives")
def render_frozen_objectives(datas: list[dict], options: dict[str, str]) -> str:
    """benchmarks/frozen_heldout.py's summary by head objective (``--variants``), held-out
    sets first: the heads' ACC at the true K beside the best plain clustering and the probe,
    issue 27's target and whether every seed reached it, the warm-cache seconds."""
    rows = []
    for data in datas:
        for key, s in data["summary"].items():
            if s.get("runs"):  # the key: the set's name, then its variant in brackets
                rows.append((s["role"] == "tune", key.split(" [")[0], s))
    rendered = []
    for _, name, s in sorted(rows, key=lambda row: row[0]):
        target = objective_target(name, s)
        rendered.append(
            [
                f"`{name}`",
                role(s["role"]),
                f"`{s['variant']}`",
                f"{s['heads_acc_mean']:.3f} ({s['heads_acc_min']:.3f}-{s['heads_acc_max']:.3f})",
                f"{s['best_plain_clustering_acc_mean']:.3f}",
                f"{s['linear_probe_acc_mean']:.3f}",
                f"{s['heads_acc_mean'] / s['linear_probe_acc_mean']:.2f}",
                "-" if target is None else f"{target:.3f}",
                "-" if target is None else ("yes" if s["heads_acc_min"] >= target else "no"),
                ", ".join(map(str, s["seeds"])),
                s["seconds_warm_mean"] if s["seconds_warm_mean"] is not None else "-",
            ]
        )
    header = [
        "set",
        "role",
        "objective",
        "heads ACC at true K, mean (min-max)",
        "best plain clustering",
        "linear probe (supervised)",
        "heads / probe",
        "target",
        "every seed >= target",
        "seeds",
        "s warm (mean)",
    ]
    return table(header, rendered)


@renderer("scratch_heldout")
def render_scratch_heldout(datas: list[dict], options: dict[str, str]) -> str:
    """benchmarks/scratch_heldout.py's summary: the auto preset from scratch per set beside
    k-means on the pixels, the margin (target: + 0.15 on held-out sets) and the time."""
    rows = []
    for data in datas:
        demo = data.get("demo_reference") or {}
        for name, s in data["summary"].items():
            if not s.get("runs"):
                continue
            share = f"{s['seconds_median'] / demo['seconds']:.2f}" if demo else "-"
            rows.append(
                [
                    f"`{name}`",
                    role(s["role"]),
                    f"{s['images']:,}",
                    f"{s['acc_mean']:.3f} ({s['acc_min']:.3f}-{s['acc_max']:.3f})",
                    f"{s['kmeans_pixels_acc']:.3f} / {s['kmeans_whitened_pixels_acc']:.3f}",
                    f"{s['margin_over_kmeans']:+.3f}",
                    s["training_steps"],
                    f"{s['seconds_median']:.0f}",
                    share,
                    f"{s['advice_given']} of {s['runs']}",
                    s["runs"],
                ]
            )
    header = [
        "set",
        "role",
        "images",
        "ACC mean (min-max)",
        "k-means on pixels, raw / whitened (best of 20, 50, 256 dims)",
        "margin",
        "training steps",
        "seconds (median)",
        "/ demo's seconds that day",
        "runs ending with advice",
        "seeds",
    ]
    return table(header, rows)


@renderer("k_selection")
def render_k_selection(datas: list[dict], options: dict[str, str]) -> str:
    """benchmarks/k_selection.py: ``view=signals``: per role and candidate signal, the runs whose
    best head is the true K (or the nearest grid point) and the farthest pick in grid steps;
    ``view=rules``: the same for every candidate rule (signals and their combinations);
    ``view=sets``: per set, the recipes' rule (right, off by, second K named); ``view=runs``:
    each run."""
    data = datas[0]
    if options.get("view") == "rules":
        rows = [
            [role(name), rule, f"{s['right']} of {s['runs']}", s["max_steps_off"]]
            for name, per_rule in data["candidate_rules"].items()
            if options.get("role", name) == name  # role=tune: the rows the choice was made on
            for rule, s in sorted(per_rule.items(), key=lambda item: -item[1]["right"])
        ]
        return table(["role", "candidate rule", "right", "farthest pick (grid steps)"], rows)
    if options.get("view") == "runs":
        rows = [
            [r["set"], role(r["role"]), r["seed"], r["true_k"], r["rule"]["pick"]]
            + [r["rule"]["also_plausible"] or "", "yes" if r["rule"]["right"] else "no"]
            + [r.get("seconds", "")]
            for r in data["runs"]
            if r["returncode"] == 0
        ]
        header = ["set", "role", "seed", "true K", "recommended K", "also plausible", "right"]
        return table([*header, "run, s"], rows)
    if options.get("view") == "sets":
        rows = []
        for name, s in data["per_set"].items():
            wrong = ", ".join(
                f"{k:+d} ({steps} step{'s' * (steps != 1)})"
                for k, steps in zip(s["k_off_when_wrong"], s["steps_off_when_wrong"])
            )
            rows.append(
                [f"`{name}`", role(s["role"]), s["true_k"], f"{s['right']} of {s['runs']}"]
                + [wrong or "-", s["max_steps_off"], s["two_named"]]
                + [s["truth_among_two_when_named"]]
            )
        header = ["set", "role", "true K", "right", "off when wrong (K, grid steps)"]
        header += ["farthest (steps)", "two K named", "truth among the two"]
        return table(header, rows)
    rows = []
    for name, per_signal in data["signals"].items():
        for signal, s in sorted(per_signal.items()):
            rows.append([role(name), signal, f"{s['right']} of {s['runs']}", s["max_steps_off"]])
    return table(["role", "signal (best head)", "right", "farthest pick (grid steps)"], rows)


def path_scores(datas: list[dict]) -> dict[str, dict]:
    """Per set, the two paths' figures from the files of ``table=which_path``, told apart by
    what they hold: frozen_heldout.py's summary (``heads_acc_mean``), scratch_heldout.py's
    (``acc_mean``) and demo_runs.py's runs (the demo is the from-scratch run on its set).

    Examples:
        >>> frozen = {"summary": {"a": {"role": "held_out", "runs": 3, "heads_acc_mean": 0.8,
        ...     "kmeans_raw_acc_mean": 0.5, "kmeans_whitened_acc_mean": 0.6,
        ...     "seconds_cold": [60.0], "seconds_warm_mean": 30.0}}}
        >>> path_scores([frozen])["a"]["frozen"]
        (0.8, 3, 60.0, 0.6)
    """
    found: dict[str, dict] = {}
    for data in datas:
        # per set in the held-out benchmarks' summaries; demo_speed.py's is per checkout
        summary = {} if "commits" in data else data.get("summary", {})
        for name, s in summary.items():
            entry = found.setdefault(name, {"role": role(s["role"])})
            if s.get("runs") and "heads_acc_mean" in s:
                best = max(s["kmeans_raw_acc_mean"], s["kmeans_whitened_acc_mean"])
                seconds = (s["seconds_cold"] or [s["seconds_warm_mean"]])[0]
                entry["frozen"] = (s["heads_acc_mean"], s["runs"], seconds, best)
            elif s.get("runs") and "acc_mean" in s:
                best = max(s["kmeans_pixels_acc"], s["kmeans_whitened_pixels_acc"])
                entry["scratch"] = (s["acc_mean"], s["runs"], s["seconds_median"], best)
        if "dataset" in data and data.get("runs"):
            tuned = "tune" if data.get("tuned_on") else "held_out"
            entry = found.setdefault(data["dataset"], {"role": role(tuned)})
            entry["scratch"] = demo_scores(data)
    return found


def demo_scores(data: dict) -> tuple:
    """(mean ACC, runs, median seconds, None) of the demo: demo_speed.py's summary of this
    checkout's runs, or the first of demo_runs.py's runs.

    Examples:
        >>> after = {"seconds_whole_command": {"median": 310.0, "values": [300.0, 310.0]},
        ...          "accuracy": {"median": 0.98, "values": [0.97, 0.98]}}
        >>> demo_scores({"commits": {}, "summary": {"after": after}})
        (0.975, 2, 310.0, None)
    """
    if "commits" not in data:  # demo_runs.py
        demo = data["runs"][0]
        return demo["accuracy"], 1, demo["seconds"], None
    after = data["summary"]["after"]
    accuracies = after["accuracy"]["values"]
    seconds = after["seconds_whole_command"]["median"]
    return sum(accuracies) / len(accuracies), len(accuracies), seconds, None


@renderer("which_path")
def render_which_path(datas: list[dict], options: dict[str, str]) -> str:
    """The README's choice of path: per set (held-out sets first), the heads on pretrained
    features and the from-scratch run, ACC (mean over the seeds) and seconds, beside the best
    k-means on the same features and on the pixels."""

    def cell(scores: tuple | None) -> list[str]:
        if scores is None:
            return ["not run", "-"]
        acc, runs, seconds, _ = scores
        seeds = f"{runs} seed{'s' * (runs != 1)}"
        return [f"{acc:.3f} ({seeds})", "-" if seconds is None else f"{seconds:.0f}"]

    found = path_scores(datas)
    order = sorted(found, key=lambda name: found[name]["role"] != "held out")
    rows = []
    for name in order:
        entry = found[name]
        frozen, scratch = entry.get("frozen"), entry.get("scratch")
        baselines = [
            "-" if scores is None or scores[3] is None else f"{scores[3]:.3f}"
            for scores in (frozen, scratch)
        ]
        rows.append([f"`{name}`", entry["role"], *cell(frozen), *cell(scratch), *baselines])
    header = ["set", "role", "pretrained + SeCu heads: ACC", "s", "from scratch: ACC", "s"]
    return table([*header, "k-means on the features", "k-means on the pixels"], rows)


@renderer("objective_sweep")
def render_objective_sweep(datas: list[dict], options: dict[str, str]) -> str:
    """benchmarks/frozen_objectives_sweep.py: per variant (rows) the exported heads' ACC at the
    true K on every set (columns, held-out sets first), their mean and the heads' seconds."""
    runs = [r for data in datas for r in data["runs"]]
    sets = sorted(
        dict.fromkeys(r["set"] for r in runs),
        key=lambda n: n.startswith(("mnist", "digits", "color")),
    )
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        cells, means = [], []
        for name in sets:
            accs = [r["accuracy"] for r in mine if r["set"] == name]
            means.append(sum(accs) / len(accs) if accs else None)
            cells.append(f"{means[-1]:.3f}" if accs else "-")
        done = [m for m in means if m is not None]
        seconds = [r["seconds_heads"] for r in mine]
        rows.append(
            [
                f"`{variant}`",
                *cells,
                f"{sum(done) / len(done):.3f}" if len(done) == len(sets) else "-",
                f"{sum(seconds) / len(seconds):.0f}",
            ]
        )
    header = ["variant", *[f"`{n}`" for n in sets], "mean", "s heads (mean)"]
    return table(header, rows)


@renderer("demo_speed")
def render_demo_speed(datas: list[dict], options: dict[str, str]) -> str:
    """``benchmarks/demo_speed.py``: every run of the demo in both checkouts, in the order
    they ran, then the profile's milliseconds per step of each part."""
    rows = []
    for data in datas:
        for run in data["runs"]:
            rows.append(
                [
                    f"{run['checkout']} (`{data['commits'][run['checkout']][:7]}`)",
                    run["seed"],
                    f"{run['seconds_whole_command']:.0f}",
                    f"{run['seconds_training']:.0f}",
                    f"{run['seconds_per_epoch_median']:.1f}",
                    f"{run['seconds_start_up']:.0f} / {run['seconds_evaluation_and_export']:.0f}",
                    f"{run['accuracy']:.4f}",
                    run.get("recommended_num_clusters") or "-",
                ]
            )
    header = ["checkout", "seed", "whole command s", "training s", "s per epoch"]
    text = table([*header, "start-up / evaluation and export s", "ACC", "K named"], rows)
    profiles = [
        (name, data["commits"][name], found)
        for data in datas
        for name, found in data.get("profiles", {}).items()
    ]
    if not profiles:
        return text
    parts = list(profiles[0][2]["ms_per_step"])
    rows = [
        [f"{name} (`{commit[:7]}`)", found["steps"]]
        + [f"{found['ms_per_step'][part]:.1f}" for part in parts]
        + [f"{found['seconds_start_up']:.1f}"]
        for name, commit, found in profiles
    ]
    header = ["profile (cProfile)", "steps", *(f"{part} ms/step" for part in parts)]
    return text + "\n\n" + table([*header, "start-up s"], rows)
