"""``write_cluster_report``: a clustering as a static HTML report a person can look through."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from secu_plugin.cluster_report import plots
from secu_plugin.cluster_report.page import (
    GENERATOR,
    ClusterView,
    HeadView,
    cluster_table_row,
    confusion_table,
    render_page,
)
from secu_plugin.cluster_report.selection import (
    THUMBNAIL_FOLDER,
    ShownMembers,
    images_per_row,
    write_thumbnails,
)

PLOT_FOLDER = "plots"
# Up to this many classes and clusters the confusion matrix is also a table of counts.
MAX_CONFUSION_TABLE = 40


def _per_head(name: str, values: Any, num_images: int, dtype: Any) -> np.ndarray:
    """(H, N) array from one array per head (or a single (N,) array for one head)."""
    array = np.asarray(values)
    if array.ndim == 1:
        array = array[None]
    if array.ndim != 2 or array.shape[1] != num_images:
        raise ValueError(
            f"{name} must be one array of {num_images} values per head (the number of images), "
            f"got shape {array.shape}"
        )
    if not np.issubdtype(array.dtype, dtype):
        raise ValueError(f"{name} must hold {np.dtype(dtype).name} values, got {array.dtype}")
    return array


def _prepare_directory(directory: Path) -> None:
    """Creates the folder, or empties the parts of an earlier report in it; refuses a folder
    that holds anything else (the report never deletes what it did not write)."""
    index = directory / "index.html"
    if directory.exists() and any(directory.iterdir()):
        if not index.is_file() or GENERATOR not in index.read_text(errors="replace")[:1000]:
            raise ValueError(
                f"report folder {str(directory)!r} is not empty and holds no earlier report: "
                "give a new or empty folder"
            )
        for folder in (THUMBNAIL_FOLDER, PLOT_FOLDER):
            shutil.rmtree(directory / folder, ignore_errors=True)
    directory.mkdir(parents=True, exist_ok=True)
    # A stub index names the folder as a report before anything else is written: a write
    # killed half-way (a training run killed during its export) leaves a folder that the next
    # write recognizes as its own and replaces, instead of refusing it.
    stub = directory / f".{index.name}.partial"
    stub.write_text(f"<!-- {GENERATOR}: being written -->\n", encoding="utf-8")
    os.replace(stub, index)
    (directory / PLOT_FOLDER).mkdir(parents=True, exist_ok=True)


def write_cluster_report(
    directory: str | os.PathLike,
    images: Sequence[Any] | np.ndarray,
    cluster_ids: Sequence[np.ndarray] | np.ndarray,
    confidence: Sequence[np.ndarray] | np.ndarray,
    center_similarity: Sequence[np.ndarray] | np.ndarray | None = None,
    *,
    num_clusters: Sequence[int] | None = None,
    head_names: Sequence[str] | None = None,
    recommended_head: int | None = None,
    k_selection: dict | None = None,
    labels: np.ndarray | Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    feature_ceiling: dict[str, float] | None = None,
    title: str = "SeCu cluster report",
    notes: Sequence[str] = (),
    per_cluster: int = 12,
    images_per_head: int = 4000,
    thumb_size: int = 96,
) -> Path:
    """Writes a static HTML report of a clustering into ``directory``; returns its index.html.

    The page (``index.html``, ``thumbs/``, ``plots/``; no network, opens from disk) has a
    switch between heads (the recommended one marked and shown first) and, per head: the
    cluster sizes and confidence plots (matplotlib), the confusion matrix against ``labels``
    when given, an index of the clusters, and a section per cluster with its size, its
    confidence quartiles, the ``per_cluster`` images nearest to its center and its least
    confident ones. Thumbnails are written once, however many heads show an image; fewer
    images per cluster are shown when two rows of every cluster would pass
    ``images_per_head``, so the report's size does not grow with the data.

    Args:
        directory: A new or empty folder, or the folder of an earlier report (replaced).
        images: Item i is a PIL image, an (image, label) pair (an ``ImageDataset``) or a
            uint8 array; only the images shown are read.
        cluster_ids: One int array (N,) per head, e.g. ``ClusterAssignments.cluster_ids``.
        confidence: One float array (N,) per head, the probability of the assigned cluster.
        center_similarity: One float array (N,) per head, the cosine similarity to the
            assigned center; None ranks "nearest" by confidence instead.
        num_clusters: K per head (default: the largest id + 1).
        head_names: Shown names (default ``K=<k>``).
        recommended_head: Index of the head to mark and show first, or None.
        k_selection: The run's label-free head scores
            (:func:`secu_plugin.model_selection.head_selection`): plotted against K at the top,
            with the recommended head (and ``also_plausible``, said in words: "K=10 or K=20",
            each a link to its head).
        labels: Known class per image (-1 unknown), for the confusion matrices; or None.
        class_names: Names of the label values (default their numbers).
        names: A name per image (its file path), shown on hover (default ``image <i>``).
        feature_ceiling: Label-based accuracies of other methods on the same features, by
            name (e.g. ``{"linear probe (supervised)": 0.98}``), shown beside every head's
            score against ``labels``: how much of what the features know the heads found.
        title: The page title.
        notes: Sentences shown under the title (a run's comparison with k-means, its advice).
        per_cluster: Images per row (nearest; least confident) of a cluster, at most.
        images_per_head: Budget of images shown per head.
        thumb_size: Longest side of a thumbnail in pixels.

    Examples:
        >>> import tempfile
        >>> from secu_plugin.data import load_mnist5k
        >>> digits, digit_labels = load_mnist5k()
        >>> rng = np.random.default_rng(0)
        >>> ids = np.stack([digit_labels[:200] % 3, digit_labels[:200] % 5])
        >>> index = write_cluster_report(tempfile.mkdtemp(), digits[:200], ids,
        ...                              rng.uniform(0.3, 1, ids.shape), num_clusters=[3, 5],
        ...                              recommended_head=1, labels=digit_labels[:200])
        >>> index.name, sorted(p.name for p in index.parent.iterdir())
        ('index.html', ['index.html', 'plots', 'thumbs'])
    """
    num_images = len(images)
    if num_images == 0:
        raise ValueError("no images to report on")
    ids = _per_head("cluster_ids", cluster_ids, num_images, np.integer).astype(np.int64)
    conf = _per_head("confidence", confidence, num_images, np.floating).astype(np.float64)
    if conf.shape != ids.shape:
        raise ValueError(f"confidence has shape {conf.shape}, cluster_ids {ids.shape}")
    if not np.isfinite(conf).all() or conf.min() < 0 or conf.max() > 1:
        raise ValueError("confidence values must be probabilities in [0, 1]")
    similarity = conf
    if center_similarity is not None:
        similarity = _per_head("center_similarity", center_similarity, num_images, np.floating)
        if similarity.shape != ids.shape or not np.isfinite(similarity).all():
            raise ValueError("center_similarity must be finite, one value per image and head")
    num_heads = ids.shape[0]
    ks = (
        [int(ids[h].max()) + 1 for h in range(num_heads)]
        if num_clusters is None
        else [int(k) for k in num_clusters]
    )
    if (
        len(ks) != num_heads
        or ids.min() < 0
        or any(ids[h].max() >= ks[h] for h in range(num_heads))
    ):
        raise ValueError(f"cluster ids must lie in [0, K) of their head; K per head: {ks}")
    if head_names is None:
        head_names = [
            f"K={k}" if ks.count(k) == 1 else f"K={k} (head {h})" for h, k in enumerate(ks)
        ]
    head_names = [str(name) for name in head_names]
    if len(head_names) != num_heads:
        raise ValueError(f"got {len(head_names)} head names for {num_heads} heads")
    if recommended_head is not None and not 0 <= int(recommended_head) < num_heads:
        raise ValueError(f"recommended_head must be a head index in [0, {num_heads})")
    names = [f"image {i}" for i in range(num_images)] if names is None else [str(n) for n in names]
    if len(names) != num_images:
        raise ValueError(f"got {len(names)} names for {num_images} images")
    if per_cluster < 1 or images_per_head < 1 or thumb_size < 8:
        raise ValueError("per_cluster and images_per_head must be >= 1, thumb_size >= 8")
    label_array, class_list = _labels(labels, class_names, num_images)

    directory = Path(directory)
    _prepare_directory(directory)
    heads, shown = [], set()
    for h in range(num_heads):
        members = ShownMembers(
            ids[h],
            conf[h],
            similarity[h],
            ks[h],
            images_per_row(ks[h], per_cluster, images_per_head),
        )
        shown |= members.indices()
        heads.append(
            _head_view(
                directory,
                h,
                head_names[h],
                ids[h],
                conf[h],
                ks[h],
                members,
                recommended_head == h,
                label_array,
                class_list,
                center_similarity is not None,
                feature_ceiling or {},
            )
        )
    thumbs = write_thumbnails(directory, images, shown, thumb_size)
    recommended = (
        "" if recommended_head is None else f"; recommended: {head_names[recommended_head]}"
    )
    subtitle = f"{num_images} images, {num_heads} head{'s' * (num_heads > 1)}{recommended}"
    which_k = "" if k_selection is None else _which_k(directory, k_selection, ks, head_names)
    which_k = "".join(f'<p class="note">{escape(str(note))}</p>' for note in notes) + which_k
    page = render_page(
        title,
        subtitle,
        heads,
        recommended_head or 0,
        names,
        conf,
        thumbs,
        min(thumb_size, 96),
        which_k,
    )
    index = directory / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def _which_k(directory: Path, selection: dict, ks: list[int], head_names: list[str]) -> str:
    """The header's K paragraph: the recommended K (or two, each a link to its head) and the
    plot of every head's score against K."""
    signal = str(selection.get("signal", ""))
    try:
        scores = [float(h[signal]) for h in selection["heads"]]
        best = ks.index(selection["recommended_num_clusters"])
        second = selection.get("also_plausible")
        other = None if second is None else ks.index(second)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"k_selection does not score this report's heads: {error!r}") from error
    if len(scores) != len(ks):
        raise ValueError(f"k_selection scores {len(scores)} heads, the report has {len(ks)}")
    path = f"{PLOT_FOLDER}/k-signal.png"
    plots.save_k_signal_plot(ks, scores, best, second, signal, directory / path)
    link = '<a href="#head-{}">{}</a>'
    words = f"The run recommends {link.format(best, escape(head_names[best]))}"
    if other is not None:
        words = (
            f"The run names two values: {link.format(best, escape(head_names[best]))} or "
            f"{link.format(other, escape(head_names[other]))} (their scores are close: look at "
            "both, and keep the one whose clusters read as your groups)"
        )
    alt = f"{escape(signal)} of every head against K"
    return f'<p class="which-k">{words}.</p><img src="{path}" alt="{alt}" class="plot">'


def _labels(
    labels: Any, class_names: Sequence[str] | None, num_images: int
) -> tuple[np.ndarray | None, list[str]]:
    if labels is None:
        return None, []
    array = np.asarray(labels)
    if array.shape != (num_images,) or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be {num_images} integers (-1: unknown), got {array.shape}")
    if not (array >= 0).any():
        return None, []
    count = int(array.max()) + 1
    names = [str(c) for c in range(count)] if class_names is None else [str(n) for n in class_names]
    if len(names) < count:
        raise ValueError(f"{len(names)} class names for labels up to {count - 1}")
    return array.astype(np.int64), names


def _head_view(
    directory: Path,
    head: int,
    name: str,
    ids: np.ndarray,
    conf: np.ndarray,
    k: int,
    members: ShownMembers,
    recommended: bool,
    labels: np.ndarray | None,
    class_names: list[str],
    by_similarity: bool,
    feature_ceiling: dict[str, float],
) -> HeadView:
    sizes = members.sizes
    plot_files = [
        (f"{PLOT_FOLDER}/head-{head}-sizes.png", f"cluster sizes of {name}"),
        (f"{PLOT_FOLDER}/head-{head}-confidence.png", f"confidence of {name}"),
    ]
    # Each cluster's confidences, by one sort (a mask per cluster would cost N * K).
    per_cluster = np.split(conf[np.argsort(ids, kind="stable")], np.cumsum(sizes)[:-1])
    plots.save_size_plot(sizes, name, directory / plot_files[0][0])
    plots.save_confidence_plot(conf, per_cluster, name, directory / plot_files[1][0])
    summary = (
        f"{k} clusters, {int((sizes > 0).sum())} non-empty; size min {sizes.min()}, median "
        f"{int(np.median(sizes))}, max {sizes.max()}; mean confidence {conf.mean():.3f}"
    )
    counts, table, majority, confusion_plot = None, "", [None] * k, None
    if labels is not None:
        from secu_plugin.metrics import clustering_metrics

        counts = plots.confusion_matrix(labels, ids, len(class_names), k)
        metrics = clustering_metrics(labels, ids)
        summary += "; against the labels: " + ", ".join(
            f"{short} {metrics[m]:.3f}"
            for m, short in (("accuracy", "ACC"), ("nmi", "NMI"), ("ari", "ARI"))
        )
        if feature_ceiling:  # what the same features reach: the heads' score beside it
            summary += "; ceiling of the same features: " + ", ".join(
                f"{name} ACC {value:.3f}" for name, value in feature_ceiling.items()
            )
        path = f"{PLOT_FOLDER}/head-{head}-confusion.png"
        plots.save_confusion_plot(counts, class_names, name, directory / path)
        confusion_plot = (path, f"classes against the clusters of {name}")
        if len(class_names) <= MAX_CONFUSION_TABLE and k <= MAX_CONFUSION_TABLE:
            table = confusion_table(counts, plots.cluster_order(counts), class_names)
        for c in range(k):
            labelled = int(counts[:, c].sum())
            if labelled:
                top = int(counts[:, c].argmax())
                share = counts[top, c] / labelled
                majority[c] = f"{class_names[top]!r}: {share:.0%} of {labelled} labelled"
    views = []
    for c in range(k):
        member_conf = per_cluster[c]
        quantiles = (
            np.quantile(member_conf, [0, 0.25, 0.5, 0.75, 1]).tolist() if len(member_conf) else None
        )
        views.append(
            ClusterView(
                c,
                int(sizes[c]),
                members.nearest[c].tolist(),
                members.least_confident[c].tolist(),
                quantiles,
                majority[c],
            )
        )
    return HeadView(
        index=head,
        name=name,
        num_clusters=k,
        recommended=recommended,
        summary=summary,
        plots=plot_files,
        clusters=views,
        confusion_table=table,
        confusion_plot=confusion_plot,
        nearest_title="Nearest to the center" if by_similarity else "Most confident",
        cluster_table_rows=[cluster_table_row(head, v) for v in views],
    )
