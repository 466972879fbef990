"""The report's figures, drawn with matplotlib (its object API: no pyplot state, no display).

Per head: the cluster sizes, the confidence distribution (overall and per cluster) and, with
labels, the confusion matrix of classes against clusters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Up to this many clusters a figure draws one box (or labelled tick) per cluster.
MAX_CLUSTERS_PER_AXIS = 60
_DPI = 100


def _figure(width: float, height: float, fixed_margins: bool = False):
    """A figure; ``fixed_margins``: margins set once instead of a constrained layout, which is
    most of the time a small plot takes (the per-head plots are drawn for every head of the
    K grid: docs/k_grid_cost.json)."""
    from matplotlib.figure import Figure

    if not fixed_margins:
        return Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    figure = Figure(figsize=(width, height), dpi=_DPI)
    # margins in inches, the same for every width: room for the tick labels and titles
    figure.subplots_adjust(
        left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height, top=1 - 0.3 / height
    )
    return figure


def _plain(text: str) -> str:
    """Text as matplotlib shows it literally: a ``$`` in a user's name starts no math."""
    return text.replace("$", r"\$")


def save_size_plot(sizes: np.ndarray, title: str, path: Path) -> None:
    """Bars of the cluster sizes by cluster id, with the size of a balanced clustering.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "sizes.png"
        >>> save_size_plot(np.array([5, 3, 0, 2]), "K=4", path)
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
    """
    from matplotlib.ticker import MaxNLocator

    figure = _figure(5.5, 2.4, fixed_margins=True)
    axes = figure.add_subplot()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.bar(np.arange(len(sizes)), sizes, width=0.8 if len(sizes) <= 200 else 1.0)
    axes.axhline(sizes.mean(), color="tab:red", linestyle="--", linewidth=1)
    axes.set(
        xlabel="cluster",
        ylabel="images",
        title=f"{_plain(title)}: cluster sizes (dashed: balanced)",
    )
    axes.set_xlim(-0.6, len(sizes) - 0.4)
    figure.savefig(path)


def save_confidence_plot(
    confidence: np.ndarray, per_cluster_confidence: list[np.ndarray], title: str, path: Path
) -> None:
    """Left: histogram of every image's confidence. Right: its distribution per cluster, the
    range and the quartiles of each cluster (a bar from the first to the third quartile, a tick
    at the median) up to ``MAX_CLUSTERS_PER_AXIS`` clusters, else each cluster's median
    against its size.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "confidence.png"
        >>> groups = [np.array([0.5]), np.array([0.9, 0.7]), np.array([])]
        >>> save_confidence_plot(np.array([0.5, 0.9, 0.7]), groups, "K=3", path)
        >>> path.stat().st_size > 0
        True
    """
    figure = _figure(8, 2.4, fixed_margins=True)
    figure.subplots_adjust(wspace=0.35)
    overall, per_cluster = figure.subplots(1, 2, width_ratios=[1, 2.5])
    overall.hist(confidence, bins=40, range=(0.0, 1.0), color="tab:blue")
    overall.set(xlabel="confidence", ylabel="images", title=f"{_plain(title)}: confidence")
    members, num_clusters = per_cluster_confidence, len(per_cluster_confidence)
    if num_clusters <= MAX_CLUSTERS_PER_AXIS:
        # three collections for every cluster at once: a boxplot draws a dozen artists per
        # cluster, the slowest part of the report on the 14 heads of the K grid
        quantiles = np.array(
            [np.quantile(m, [0, 0.25, 0.5, 0.75, 1]) if len(m) else [np.nan] * 5 for m in members]
        )
        positions = np.arange(num_clusters)
        per_cluster.vlines(positions, quantiles[:, 0], quantiles[:, 4], color="0.6", lw=1)
        per_cluster.vlines(
            positions,
            quantiles[:, 1],
            quantiles[:, 3],
            color="tab:blue",
            lw=6 if num_clusters <= 20 else 3,
        )
        per_cluster.scatter(
            positions, quantiles[:, 2], s=30, color="tab:orange", marker="_", zorder=3
        )
        per_cluster.set_xlim(-0.7, num_clusters - 0.3)
        per_cluster.set_xticks(positions, [str(c) for c in range(num_clusters)])
        per_cluster.tick_params(axis="x", labelsize=7 if num_clusters > 20 else 9)
        per_cluster.set(
            xlabel="cluster", ylabel="confidence", title="per cluster (range, quartiles, median)"
        )
    else:
        sizes = np.array([len(m) for m in members])
        medians = np.array([np.median(m) if len(m) else np.nan for m in members])
        per_cluster.scatter(sizes, medians, s=6)
        per_cluster.set(
            xlabel="cluster size", ylabel="median confidence", title="per cluster (one dot each)"
        )
    per_cluster.set_ylim(0.0, 1.02)
    figure.savefig(path)


def confusion_matrix(
    labels: np.ndarray, cluster_ids: np.ndarray, num_classes: int, num_clusters: int
) -> np.ndarray:
    """Counts (num_classes, num_clusters) of the labelled images (labels < 0 left out).

    Examples:
        >>> confusion_matrix(np.array([0, 0, 1, -1]), np.array([1, 1, 0, 0]), 2, 2).tolist()
        [[0, 2], [1, 0]]
    """
    known = labels >= 0
    counts = np.zeros((num_classes, num_clusters), dtype=np.int64)
    np.add.at(counts, (labels[known], cluster_ids[known]), 1)
    return counts


def cluster_order(counts: np.ndarray) -> np.ndarray:
    """Clusters ordered by their majority class, then by size: a good clustering shows as a
    diagonal.

    Examples:
        >>> cluster_order(np.array([[0, 5, 1], [4, 0, 0]])).tolist()
        [1, 2, 0]
    """
    majority = counts.argmax(axis=0)
    return np.lexsort((-counts.sum(axis=0), majority))


def save_confusion_plot(counts: np.ndarray, class_names: list[str], title: str, path: Path) -> None:
    """Heatmap of the share of each cluster's labelled images per class (columns sum to 1),
    clusters in :func:`cluster_order`.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "confusion.png"
        >>> save_confusion_plot(np.array([[3, 0], [1, 4]]), ["cat", "dog"], "K=2", path)
        >>> path.exists()
        True
    """
    num_classes, num_clusters = counts.shape
    order = cluster_order(counts)
    share = counts[:, order] / np.maximum(counts[:, order].sum(axis=0, keepdims=True), 1)
    figure = _figure(min(4 + 0.22 * num_clusters, 16), min(2 + 0.25 * num_classes, 10))
    axes = figure.add_subplot()
    image = axes.imshow(
        share, aspect="auto", cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest"
    )
    figure.colorbar(image, ax=axes, label="share of the cluster")
    if num_clusters <= MAX_CLUSTERS_PER_AXIS:
        axes.set_xticks(np.arange(num_clusters), [str(c) for c in order], fontsize=7)
    if num_classes <= MAX_CLUSTERS_PER_AXIS:
        axes.set_yticks(np.arange(num_classes), [_plain(n) for n in class_names], fontsize=7)
    axes.set(
        xlabel="cluster (by majority class)", ylabel="class", title=f"{_plain(title)}: classes"
    )
    figure.savefig(path)


def save_k_signal_plot(
    num_clusters: list[int],
    scores: list[float],
    recommended: int,
    also_plausible: int | None,
    signal: str,
    path: Path,
) -> None:
    """Every head's label-free score against its K (log axis), the recommended head marked
    (and the second K the run names when the two are close).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "k.png"
        >>> save_k_signal_plot([2, 5, 10, 20], [0.3, 0.5, 0.7, 0.6], 2, 20, "modularity", path)
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
    """
    figure = _figure(5.5, 2.6)
    axes = figure.add_subplot()
    axes.plot(num_clusters, scores, marker="o", color="tab:blue")
    best = num_clusters[recommended]
    axes.plot([best], [scores[recommended]], marker="*", markersize=16, color="tab:red", lw=0)
    axes.annotate(
        f"recommended K={best}",
        (best, scores[recommended]),
        xytext=(6, -14),
        textcoords="offset points",
        color="tab:red",
    )
    if also_plausible is not None:
        other = num_clusters.index(also_plausible)
        axes.plot(
            [also_plausible], [scores[other]], marker="*", markersize=12, color="tab:orange", lw=0
        )
    axes.set_xscale("log")
    axes.set_xticks(num_clusters, [str(k) for k in num_clusters])
    axes.minorticks_off()
    axes.set(
        xlabel="K (clusters of the head)",
        ylabel=_plain(signal),
        title="Which K: every head's score (higher fits better)",
    )
    figure.savefig(path)
