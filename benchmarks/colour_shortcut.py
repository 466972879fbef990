"""Whether a run's clusters follow the images' colours instead of their shapes.

A run of ``recipes/train.py`` on a colour set with class folders (``ROOT/<class>/``) is scored
twice at the head whose K is the number of classes: against the classes, and against *colour
groups*, k-means (K = the number of classes, 10 restarts) on each image's background colour
(the mean RGB of its one-pixel border), and on its luminance (what a run on grey copies,
``--set in_chans=1``, sees). Colour groups that agree with the clusters far better
than the classes do mean the network learnt the colours: the shortcut a colour set with random
colours per image offers (``color32`` and the colour letter sets of ``make_test_sets.py``).
The colour groups are also scored against the classes, which they should not predict.

Usage::

    python benchmarks/colour_shortcut.py --manifest /work/sets/sets.json --set color32 \\
        --run /tmp/c32/runs/color32/seed0 --json docs/colour_shortcut.json

``--set`` names a set of a ``make_test_sets.py`` manifest; ``--run`` takes several runs on it
(each its own row; a run's ``--label`` names it). The JSON holds the provenance, the manifest,
the set's role (tuned on or held out) and every run's scores.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.common import manifest_fields, manifest_sets, start_record, write_json
from secu_plugin.baselines import kmeans_clusters
from secu_plugin.metrics import clustering_metrics


def background_colours(images: list) -> np.ndarray:
    """(N, 3) the mean RGB of each PIL image's one-pixel border, in [0, 1].

    Examples:
        >>> from PIL import Image
        >>> background_colours([Image.new("RGB", (4, 4), (255, 0, 0))]).tolist()
        [[1.0, 0.0, 0.0]]
    """
    colours = []
    for image in images:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
        border = np.concatenate([pixels[0], pixels[-1], pixels[1:-1, 0], pixels[1:-1, -1]])
        colours.append(border.mean(axis=0))
    return np.stack(colours)


def score_run(run: Path, entry: dict) -> dict:
    """The run's evaluation head on the manifest ``entry``'s set, scored against the classes
    and the colour groups."""
    from secu_plugin import SeCuModel
    from secu_plugin.data import ImageDataset
    from secu_plugin.data.transforms import eval_transform
    from secu_plugin.train.evaluation import evaluation_head

    model = SeCuModel.from_pretrained(str(run / "model"))
    dataset = ImageDataset.from_source(entry["data"])
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    labels = np.asarray(labels)
    transform = eval_transform(model.data_config, model.in_chans)
    batch = torch.stack([transform(image) for image in images])
    num_classes = len(np.unique(labels))
    head = evaluation_head(list(model.num_clusters), num_classes)
    clusters = torch.cat([model.predict(part, head)[0] for part in batch.split(256)]).numpy()
    colours = background_colours(images)
    groups = kmeans_clusters(colours, num_classes, normalize=False)
    # ITU-R 601 luma, as PIL's conversion to grey: what a run on grey copies (in_chans=1) sees
    luma = colours @ np.array([[0.299], [0.587], [0.114]])
    luminance_groups = kmeans_clusters(luma, num_classes, normalize=False)
    return {
        "run": str(run),
        "set": entry["name"],
        "data": entry["data"],
        "role": entry["role"],
        "images": len(labels),
        "num_clusters": int(model.num_clusters[head]),
        "training_preset": (model.training_recipe or {}).get("preset", {}).get("resolved_from"),
        "clusters_vs_classes": clustering_metrics(labels, clusters),
        "clusters_vs_colour_groups": clustering_metrics(groups, clusters),
        "colour_groups_vs_classes": clustering_metrics(labels, groups),
        "clusters_vs_luminance_groups": clustering_metrics(luminance_groups, clusters),
        "luminance_groups_vs_classes": clustering_metrics(labels, luminance_groups),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, nargs="+", required=True, help="run output dirs")
    parser.add_argument("--label", nargs="*", default=None, help="a name per run")
    parser.add_argument("--manifest", required=True, help="sets.json of make_test_sets.py")
    parser.add_argument("--set", required=True, help="a set of the manifest (class folders)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    labels = args.label or [run.name for run in args.run]
    if len(labels) != len(args.run):
        parser.error(f"--label: {len(labels)} names for {len(args.run)} runs")
    report = start_record(role="diagnosis: no default is chosen on it")
    manifest, chosen, _ = manifest_sets(parser, args.manifest, [args.set])
    if not chosen:
        parser.error(f"--set {args.set}: no class folders, so no classes to score against")
    report.update(manifest_fields(args.manifest, manifest))
    report["runs"] = [
        {"label": label, **score_run(run, chosen[0])} for label, run in zip(labels, args.run)
    ]
    for row in report["runs"]:
        print(
            json.dumps(
                {key: row[key] for key in ("label", "role", "num_clusters")}
                | {key: row[key]["nmi"] for key in row if key.endswith(("classes", "groups"))}
            )
        )
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main()
