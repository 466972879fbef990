"""The summary of ``benchmarks/k_selection.py``'s runs: per candidate signal and role (tune,
held out), how often its best head is the true K (or the grid point nearest to it) and how far
off it is otherwise, in K and in grid steps; per held-out set, the same for the recipes' rule
(:func:`secu_plugin.model_selection.choose_head`), with how often it named a second K and
whether the truth was among the two.

Examples:
    >>> targets_of(7, [2, 4, 6, 8, 10]), targets_of(10, [2, 4, 6, 8, 10])
    ([6, 8], [10])
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from secu_plugin.k_signals import seed_agreement
from secu_plugin.model_selection import choose_head


def targets_of(true_k: int, heads: list[int]) -> list[int]:
    """The heads nearest to ``true_k`` (two on a tie): a pick among them is right."""
    distance = min(abs(k - true_k) for k in heads)
    return [k for k in heads if abs(k - true_k) == distance]


def score_pick(pick: int, true_k: int, heads: list[int]) -> dict:
    targets = targets_of(true_k, heads)
    steps = min(abs(heads.index(pick) - heads.index(t)) for t in targets)
    return {"pick": pick, "right": pick in targets, "k_off": pick - true_k, "steps_off": steps}


def add_seed_agreement(runs: list[dict], work: Path) -> None:
    """Per run and head: the mean adjusted Rand index with the same head of the other seeds'
    runs on the same set (their saved cluster ids)."""
    by_set: dict[str, list[dict]] = {}
    for run in runs:
        if run["returncode"] == 0:
            by_set.setdefault(run["set"], []).append(run)
    for name, done in by_set.items():
        if len(done) < 2:
            continue
        labels = {
            r["seed"]: np.load(work / "runs" / name / f"seed{r['seed']}" / "predictions.npy")
            for r in done
        }
        for run in done:
            others = [s for s in labels if s != run["seed"]]
            run["signals"]["seed_agreement"] = [
                round(
                    float(
                        np.mean(
                            [seed_agreement(labels[run["seed"]][h], labels[s][h]) for s in others]
                        )
                    ),
                    4,
                )
                for h in range(len(run["heads"]))
            ]


def rule_picks(signals: dict[str, list[float]], heads: list[int]) -> dict[str, int]:
    """The K each candidate rule picks from one run's per-head signals (projections): the best
    head of each signal, the largest K within a tolerance of a signal's best, and the best sum
    of two signals' ranks (ties: the smaller K)."""
    space = "_projections"
    scores = {n.removesuffix(space): v for n, v in signals.items() if n.endswith(space)}
    picks = {}
    for name, values in scores.items():
        picks[name] = heads[int(np.argmax(values))]
        for tolerance in (0.005, 0.01, 0.02):
            near = [k for k, v in zip(heads, values) if v >= max(values) - tolerance]
            picks[f"{name} (largest K within {tolerance})"] = max(near)
    pairs = [
        ("silhouette_pca32", "turtle"),
        ("silhouette_pca16", "turtle"),
        ("silhouette_pca32", "kappa"),
        ("silhouette_pca32", "modularity"),
    ]
    for first, second in pairs:
        if first in scores and second in scores:
            ranks = np.argsort(np.argsort(scores[first])) + np.argsort(np.argsort(scores[second]))
            picks[f"{first} + {second} (rank sum)"] = heads[int(np.argmax(ranks))]
    return picks


def signal_names(runs: list[dict]) -> list[str]:
    names = {
        n for r in runs if r["returncode"] == 0 for n in r["signals"] if n != "seconds_signals"
    }
    return sorted(names)


def summarize(runs: list[dict], work: Path) -> dict:
    """``{"signals": {role: {signal: {...}}}, "rule": {role: {...}}, "per_set": {...}}``."""
    add_seed_agreement(runs, work)
    done = [r for r in runs if r["returncode"] == 0]
    signals: dict[str, dict] = {}
    picks = {id(r): rule_picks(r["signals"], r["heads"]) for r in done}
    rules: dict[str, dict] = {}
    for role, name in itertools.product(("tune", "held_out"), sorted(picks[id(done[0])])):
        scored = [
            score_pick(picks[id(r)][name], r["true_k"], r["heads"])
            for r in done
            if r["role"] == role and name in picks[id(r)]
        ]
        if scored:
            rules.setdefault(role, {})[name] = _tally(scored)
    for role, signal in itertools.product(("tune", "held_out"), signal_names(done)):
        scored = [
            score_pick(r["heads"][int(np.argmax(r["signals"][signal]))], r["true_k"], r["heads"])
            for r in done
            if r["role"] == role and signal in r["signals"]
        ]
        if scored:
            signals.setdefault(role, {})[signal] = _tally(scored)
    per_set: dict[str, dict] = {}
    rule: dict[str, list] = {}
    for run in done:
        space = "_projections"  # the recipes score the projections
        scores = {n.removesuffix(space): v for n, v in run["signals"].items() if n.endswith(space)}
        choice = choose_head(scores, run["heads"])
        scored = score_pick(choice["recommended_num_clusters"], run["true_k"], run["heads"])
        second = choice.get("also_plausible")
        scored["also_plausible"] = second
        targets = targets_of(run["true_k"], run["heads"])
        scored["truth_among_two"] = scored["right"] or (second in targets)
        run["rule"] = scored
        rule.setdefault(run["role"], []).append(scored)
        per_set.setdefault(run["set"], {"role": run["role"], "true_k": run["true_k"], "runs": []})
        per_set[run["set"]]["runs"].append(scored)
    for entry in per_set.values():
        entry.update(_tally(entry.pop("runs")))
    return {
        "signals": signals,
        "candidate_rules": rules,
        "rule": {role: _tally(scored) for role, scored in rule.items()},
        "per_set": per_set,
    }


def _tally(scored: list[dict]) -> dict:
    wrong = [s for s in scored if not s["right"]]
    tally = {
        "runs": len(scored),
        "right": sum(s["right"] for s in scored),
        "right_share": round(sum(s["right"] for s in scored) / len(scored), 3),
        "max_steps_off": max(s["steps_off"] for s in scored),
        "k_off_when_wrong": [s["k_off"] for s in wrong],
        "steps_off_when_wrong": [s["steps_off"] for s in wrong],
        "picks": [s["pick"] for s in scored],
    }
    if "also_plausible" in scored[0]:
        fired = [s for s in scored if s["also_plausible"] is not None]
        tally["two_named"] = len(fired)
        tally["truth_among_two_when_named"] = sum(s["truth_among_two"] for s in fired)
    return tally
