"""How often the label-free K signal (:mod:`secu_plugin.model_selection`) recommends the head whose
K is the true number of classes, on sets with K = 5, 10 and 20 classes.

Families of sets, each with K = 5, 10 and 20 classes (written under ``--work``):

- tune ``mnist``: MNIST-5k's digits 0-4 (2,500 images), all of MNIST-5k (5,000), and MNIST-5k
  with scikit-learn's 1,797 digits (upscaled to 28 x 28) as ten further classes (6,797);
- tune ``digits8``: scikit-learn's digits 0-4 (901), all 1,797, and those with a random 1,797
  of MNIST-5k as ten further classes (3,594; the digits upscaled to 28 x 28);
- held-out ``letters_grey28`` / ``letters_colour64``: the ``letters{5,10,20}_*`` sets of
  ``benchmarks/make_test_sets.py`` (``--per_class`` images per letter, default 200).

Each set and seed: ``recipes/train_head.py`` (EfficientNet-Lite0 offline weights, 112 px) with
heads ``--heads`` (default 5, 10, 15, 20, 30, 40: every true K present). The recipe's own
recommendation comes from its results.json; beside it, every candidate signal is recomputed
from the saved model and the cached features (modularity and kappa of the k-NN graph, in the
projection space the recipe uses and in the backbone's feature space), so that the candidates
are compared on the same heads. The signal was chosen on the tune families; the held-out
family is scored only to check it. Writes ``--json`` (default ``docs/k_selection.json``) after
every run, with the provenance and a per-family summary.

Usage::

    python benchmarks/k_selection.py --work /tmp/kselect --seeds 0
    python benchmarks/k_selection.py --work /tmp/kselect --families letters_grey28 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.frozen_heldout import CACHE_LINE, lite0_weights, recipe_command
from benchmarks.provenance import provenance

FAMILIES = {  # family -> role, the set names for K = 5, 10, 20
    "mnist": ("tune", ["mnist_k5", "mnist_k10", "mnist_k20"]),
    "digits8": ("tune", ["digits8_k5", "digits8_k10", "digits8_k20"]),
    "letters_grey28": ("held_out", ["letters5_grey28", "letters10_grey28", "letters20_grey28"]),
    "letters_colour64": (
        "held_out",
        ["letters5_colour64", "letters10_colour64", "letters20_colour64"],
    ),
}
SIGNAL_CHOSEN = "modularity_projections"  # what the recipes compute: see docs/k_selection.md
SIGNALS = ("modularity_projections", "kappa_projections", "modularity_features", "kappa_features")


def _write_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> int:
    for index, (image, label) in enumerate(zip(images, labels)):
        folder = root / f"{int(label):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:05d}.png")
    return len(images)


def _digits28() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, 0..16 scaled to 0..255 and upscaled to 28 x 28."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    big = [
        np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in small
    ]
    return np.stack(big), digits.target


def make_digit_sets(work: Path, seed: int) -> dict[str, str]:
    """The tune sets as ``ROOT/<class>/`` folders (``mnist_k10`` is the built-in MNIST-5k)."""
    from sklearn.datasets import load_digits

    from secu_plugin.data import load_mnist5k

    mnist, mnist_labels = load_mnist5k()
    digits = load_digits()
    digits8 = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    digits28, digit_labels = _digits28()
    subset = np.sort(np.random.default_rng(seed).permutation(len(mnist))[:1797])
    sets = {
        "mnist_k5": (mnist[mnist_labels < 5], mnist_labels[mnist_labels < 5]),
        "mnist_k20": (
            np.concatenate([mnist, digits28]),
            np.concatenate([mnist_labels, digit_labels + 10]),
        ),
        "digits8_k5": (digits8[digits.target < 5], digits.target[digits.target < 5]),
        "digits8_k10": (digits8, digits.target),
        "digits8_k20": (
            np.concatenate([digits28, mnist[subset]]),
            np.concatenate([digit_labels, mnist_labels[subset] + 10]),
        ),
    }
    paths = {"mnist_k10": "mnist5k"}
    for name, (images, labels) in sets.items():
        root = work / "sets" / name
        if not (root / "done").exists():
            _write_folder(root, images, labels)
            (root / "done").write_text("")
        paths[name] = os.fspath(root)
    return paths


def make_letter_sets(work: Path, names: list[str], per_class: int) -> dict[str, str]:
    out = work / "sets"
    missing = [n for n in names if not (out / n).exists()]
    if missing:
        command = [
            sys.executable,
            os.fspath(REPO_ROOT / "benchmarks" / "make_test_sets.py"),
            "--out",
            os.fspath(out),
            "--per_class",
            str(per_class),
            "--sets",
            *missing,
        ]
        subprocess.run(command, check=True, capture_output=True)
    return {n: os.fspath(out / n) for n in names}


def candidate_signals(run_dir: Path, cache_dir: str, seed: int) -> dict[str, list[float]]:
    """Every candidate signal per head, recomputed from the saved model and cached features."""
    import torch

    from secu_plugin import SeCuModel
    from secu_plugin.data import FeatureCache
    from secu_plugin.model_selection import head_selection
    from secu_plugin.train.evaluation import predict_projections, project_features

    model = SeCuModel.from_pretrained(run_dir / "model")
    features = torch.as_tensor(
        np.asarray(FeatureCache(cache_dir).features[:, 0]), dtype=torch.float32
    )
    with torch.no_grad():
        projections = project_features(model.projection_head, features)
    predictions = predict_projections(projections, model.centers)
    ks = [int(c.shape[0]) for c in model.centers]
    signals = {}
    for space, embeddings in (("projections", projections), ("features", features)):
        found = head_selection(embeddings, predictions, ks, seed=seed, space=space)
        signals[f"modularity_{space}"] = [h["knn_modularity"] for h in found["heads"]]
        signals[f"kappa_{space}"] = [h["knn_kappa"] for h in found["heads"]]
    signals["size_balance"] = [h["size_balance"] for h in found["heads"]]
    return signals


def run_one(name: str, data: str, true_k: int, seed: int, args, weights: Path) -> dict:
    run_dir = Path(args.work) / "runs" / name / f"seed{seed}"
    heads = "[" + ",".join(str(k) for k in args.heads) + "]"
    command = recipe_command(
        data, seed, weights, Path(args.work), run_dir, [f"num_clusters={heads}"]
    )
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.fspath(REPO_ROOT)}
    started = time.time()
    locked = ["flock", args.lock, *command] if args.lock else command
    result = subprocess.run(locked, capture_output=True, text=True, env=environment, check=False)
    record = {
        "set": name,
        "seed": seed,
        "true_k": true_k,
        "command": command,
        "returncode": result.returncode,
        "seconds_recipe": round(time.time() - started, 1),
    }
    if result.returncode != 0:
        record["output_tail"] = (result.stdout + result.stderr)[-3000:]
        return record
    results = json.loads((run_dir / "results.json").read_text())
    record["accuracy_true_k_head"] = results["evaluations"][0]["accuracy"]
    record["recipe_recommended_k"] = results["k_selection"]["recommended_num_clusters"]
    caches = [m.group(1) for m in map(CACHE_LINE.search, result.stdout.splitlines()) if m]
    record["signals"] = candidate_signals(run_dir, caches[-1], seed)
    return record


def summarize(runs: list[dict], heads: list[int]) -> dict:
    """Per family and candidate signal: the right head's count and the largest head distance."""
    summary = {}
    for family, (role, names) in FAMILIES.items():
        done = [r for r in runs if r["set"] in names and r["returncode"] == 0]
        if not done:
            continue
        per_signal = {}
        for signal in (*SIGNALS, "recipe"):
            picks = [
                r["recipe_recommended_k"]
                if signal == "recipe"
                else heads[int(np.argmax(r["signals"][signal]))]
                for r in done
            ]
            distances = [
                abs(heads.index(p) - heads.index(r["true_k"])) for p, r in zip(picks, done)
            ]
            per_signal[signal] = {
                "picked": [
                    f"{r['set']}/seed{r['seed']}: K={p} (true {r['true_k']})"
                    for p, r in zip(picks, done)
                ],
                "right": sum(d == 0 for d in distances),
                "runs": len(done),
                "max_head_distance": max(distances),
            }
        summary[family] = {"role": "tuned on" if role == "tune" else "held out", **per_signal}
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="outputs/k_selection", help="sets, runs, cache")
    parser.add_argument("--families", nargs="*", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--heads", nargs="*", type=int, default=[5, 10, 15, 20, 30, 40])
    parser.add_argument("--per_class", type=int, default=200, help="letter images per class")
    parser.add_argument("--weights", help="default: WORK/lite0.safetensors (written if missing)")
    parser.add_argument("--lock", help="run each recipe under `flock LOCK` (a shared machine)")
    parser.add_argument("--resume", action="store_true", help="keep the runs already in --json")
    parser.add_argument("--json", default=os.fspath(REPO_ROOT / "docs" / "k_selection.json"))
    args = parser.parse_args(argv)
    work = Path(args.work)
    weights = Path(args.weights) if args.weights else lite0_weights(work / "lite0.safetensors")
    paths = make_digit_sets(work, seed=0)
    letters = [n for f in args.families for n in FAMILIES[f][1] if n.startswith("letters")]
    paths.update(make_letter_sets(work, letters, args.per_class) if letters else {})
    report = {
        "provenance": provenance(),
        "earlier_provenance": [],
        "families": args.families,
        "seeds": args.seeds,
        "heads": args.heads,
        "per_class_letters": args.per_class,
        "signal_chosen": SIGNAL_CHOSEN,
        "runs": [],
    }
    if args.resume and Path(args.json).is_file():  # a JSON of the same benchmark: add to it
        earlier = json.loads(Path(args.json).read_text())
        if earlier["heads"] != args.heads or earlier["per_class_letters"] != args.per_class:
            parser.error(f"{args.json} has other heads or letter sets: no --resume")
        report["earlier_provenance"] = [
            *earlier.get("earlier_provenance", []),
            earlier["provenance"],
        ]
        report["families"] = list(dict.fromkeys(earlier["families"] + args.families))
        report["seeds"] = sorted(set(earlier["seeds"]) | set(args.seeds))
        report["runs"] = [r for r in earlier["runs"] if r["returncode"] == 0]
    done = {(r["set"], r["seed"]) for r in report["runs"]}
    for family in args.families:
        for true_k, name in zip((5, 10, 20), FAMILIES[family][1]):
            for seed in args.seeds:
                if (name, seed) in done:
                    continue
                record = run_one(name, paths[name], true_k, seed, args, weights)
                record["family"], record["role"] = family, FAMILIES[family][0]
                report["runs"].append(record)
                report["summary"] = summarize(report["runs"], args.heads)
                Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
                brief = {
                    k: record.get(k)
                    for k in ("set", "seed", "returncode", "seconds_recipe", "recipe_recommended_k")
                }
                print(json.dumps(brief), flush=True)
    return report


if __name__ == "__main__":
    main()
