"""The head objectives' main settings swept on cached features, in one process per set.

For each set of a ``make_test_sets.py`` manifest, its plain Lite0 features are read from the
feature cache that ``benchmarks/frozen_heldout.py`` (or ``recipes/train_head.py``) wrote under
``--work`` (found by the data path in the cache's key.json), and every variant trains its heads
at the set's true K with :func:`secu_plugin.frozen.objectives.train_objective_heads`, the
function ``recipes/train_head.py`` calls, exported as the recipe exports them; the exported
heads' clusters are scored (ACC, NMI, ARI). What a recipe run adds (reading the images, the
report, the ceiling) is left out, so a setting costs seconds, not a run; the chosen setting is
then checked by the recipe itself (``frozen_heldout.py``). Tune sets only choose a default
(docs/heldout.md).

Usage::

    python benchmarks/frozen_objectives_sweep.py --manifest /work/sets/sets.json \\
        --work outputs/frozen_heldout --sets mnist5k digits8 \\
        --variants scan:objective=scan temi:objective=temi,temi_heads=2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, without installing
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.common import manifest_sets, print_line, start_record, write_json
from benchmarks.frozen_heldout import holding
from secu_plugin.data import ImageDataset
from secu_plugin.frozen.head_presets import ObjectiveSettings
from secu_plugin.frozen.objectives import train_objective_heads
from secu_plugin.metrics import clustering_metrics


def cached_features(work: Path, data: str) -> tuple[Path, torch.Tensor]:
    """The plain view (N, D) of the complete feature cache under ``work``/cache whose key
    names ``data`` (a folder of the manifest, or a built-in set such as mnist5k)."""
    for key_file in sorted((work / "cache").glob("*/key.json")):
        description = json.loads(key_file.read_text())["key"]["data"]["description"]
        directory = key_file.parent
        wanted = data in description.split() or f"{data}/train" in description.split()
        if wanted and (directory / "COMPLETE").exists():
            features = np.load(directory / "features.npy", mmap_mode="r")[:, 0]
            return directory, torch.from_numpy(features.astype(np.float32))
    raise ValueError(f"no complete feature cache of {data!r} under {work / 'cache'}")


def objective_settings(items: list[str]) -> ObjectiveSettings:
    """``NAME=VALUE`` items as an :class:`ObjectiveSettings` (values typed from the defaults).

    Examples:
        >>> objective_settings(["objective=temi", "temi_heads=2"]).temi_heads
        2
    """
    defaults = ObjectiveSettings()
    values = {}
    for item in items:
        name, _, text = item.partition("=")
        if not hasattr(defaults, name):
            raise ValueError(f"{name!r} is not a head_objective setting")
        current = getattr(defaults, name)
        if isinstance(current, bool):
            values[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, (int, float)) and not isinstance(current, bool):
            values[name] = type(current)(float(text) if isinstance(current, float) else int(text))
        elif name in ("objective_steps",):
            values[name] = int(text)
        elif name in ("objective_lr",):
            values[name] = float(text)
        else:
            values[name] = text
    settings = dataclasses.replace(defaults, **values)
    settings.check()
    return settings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="sets.json of make_test_sets.py")
    parser.add_argument("--sets", nargs="*", help="these sets of the manifest only")
    parser.add_argument("--work", required=True, help="frozen_heldout.py's --work (the caches)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--variants", nargs="+", required=True, metavar="NAME:NAME=VALUE,...")
    parser.add_argument("--json", required=True)
    parser.add_argument("--lock", help="hold this flock file while a set's variants run")
    args = parser.parse_args(argv)
    _, chosen, _ = manifest_sets(parser, args.manifest, args.sets)
    variants = {}
    for item in args.variants:
        name, _, text = item.partition(":")
        variants[name] = objective_settings([s for s in text.split(",") if s])
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    report = {
        **start_record(),
        "manifest": os.fspath(args.manifest),
        "sets": [e["name"] for e in chosen],
        "seeds": args.seeds,
        "variants": {name: dataclasses.asdict(s) for name, s in variants.items()},
        "runs": [],
    }
    for entry in chosen:
        k = len(entry["classes"])
        directory, features = cached_features(Path(args.work), entry["data"])
        labels = np.asarray(ImageDataset.from_source(entry["data"], "train").labels)
        with holding(args.lock):
            for seed in args.seeds:
                for name, settings in variants.items():
                    started = time.time()
                    heads = train_objective_heads(settings, features, [k], seed)
                    seconds = round(time.time() - started, 1)
                    scores = clustering_metrics(labels, heads.labels[0].numpy())
                    record = {
                        "set": entry["name"],
                        "role": entry.get("role"),
                        "variant": name,
                        "seed": seed,
                        "num_clusters": k,
                        "cache_dir": os.fspath(directory),
                        **{m: round(float(v), 4) for m, v in scores.items()},
                        "agreement": heads.agreement[0],
                        "seconds_heads": seconds,
                    }
                    report["runs"].append(record)
                    write_json(args.json, report)
                    print_line(record)
    return report


if __name__ == "__main__":
    main()
