"""The report's ``index.html``: markup, inline CSS and the head switch in inline JavaScript.

Everything a user supplied (file names, class names, head names, the title) goes through
:func:`html.escape`, attributes included; image sources are the report's own file names. The
page loads nothing from the network, so it opens from disk. Without JavaScript every head
shows, one after the other; with it, one head at a time, chosen by the links at the top (or
by the address: ``index.html#head-2-cluster-17`` opens that cluster of that head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape

import numpy as np

GENERATOR = "secu-plugin cluster report"

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; background: #fafafa; }
header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd;
  padding: 8px 16px; z-index: 1; }
h1 { font-size: 20px; margin: 0 0 4px; }
nav.heads a { display: inline-block; margin: 2px 4px 2px 0; padding: 3px 10px;
  border: 1px solid #bbb; border-radius: 12px; text-decoration: none; color: #224; }
nav.heads a[aria-current] { background: #224; color: #fff; }
.badge { background: #e6a700; color: #000; border-radius: 8px; padding: 0 6px; font-size: 11px; }
main { padding: 0 16px 32px; }
.plots { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
img.plot { max-width: 100%; display: block; margin: 4px 0; }
.clusters { display: grid; gap: 0 12px; grid-template-columns: repeat(auto-fill, minmax(480px, 1fr)); }
table { border-collapse: collapse; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: right; }
section.cluster { scroll-margin-top: 120px; background: #fff; border: 1px solid #ddd; border-radius: 6px; margin: 12px 0;
  padding: 6px 12px; }
h3 { margin: 4px 0; font-size: 16px; }
h4 { margin: 6px 0 2px; font-size: 13px; color: #555; font-weight: normal; }
.row { display: flex; flex-wrap: wrap; gap: 4px; }
figure { margin: 0; text-align: center; font-size: 11px; color: #555; }
img.thumb { width: var(--thumb); height: var(--thumb); object-fit: contain; background: #eee;
  image-rendering: pixelated; display: block; }
.unreadable { width: var(--thumb); height: var(--thumb); display: flex; align-items: center;
  justify-content: center; background: #fdd; }
[hidden] { display: none !important; }
"""

SCRIPT = """
(function () {
  "use strict";
  var heads = Array.prototype.slice.call(document.querySelectorAll("section.head"));
  var links = Array.prototype.slice.call(document.querySelectorAll("nav.heads a"));
  var fallback = document.getElementById(document.body.getAttribute("data-default-head"));
  function show(hash) {
    var id = hash.slice(1);
    try { id = decodeURIComponent(id); } catch (error) { id = ""; }  // a malformed address
    var target = id ? document.getElementById(id) : null;
    var head = target ? target.closest("section.head") : null;
    if (!head) { head = fallback; }
    heads.forEach(function (section) { section.hidden = section !== head; });
    links.forEach(function (link) {
      if (link.getAttribute("href") === "#" + head.id) { link.setAttribute("aria-current", "page"); }
      else { link.removeAttribute("aria-current"); }
    });
    if (target && target !== head) { target.scrollIntoView(); }
  }
  window.addEventListener("hashchange", function () { show(window.location.hash); });
  show(window.location.hash);
}());
"""


@dataclass
class ClusterView:
    """What one cluster's section shows.

    Examples:
        >>> view = ClusterView(cluster=3, size=0, nearest=[], least_confident=[],
        ...                    confidence_quantiles=None)
        >>> "empty" in _cluster_section(HeadView(0, "K=4", 4, False, "", [], [view], ""), view,
        ...                             [], np.zeros(0), {})
        True
    """

    cluster: int
    size: int
    nearest: list[int]
    least_confident: list[int]
    confidence_quantiles: list[float] | None  # min, 25%, median, 75%, max
    majority: str | None = None  # "'cat': 93% of 500 labelled"


@dataclass
class HeadView:
    """What one head's section shows.

    Examples:
        >>> head = HeadView(0, "K=2 <b>", 2, True, "2 clusters", [], [], "Nearest to the center")
        >>> _head_section(head, [], np.zeros((1, 0)), {}).count("&lt;b&gt;")
        1
    """

    index: int
    name: str
    num_clusters: int
    recommended: bool
    summary: str
    plots: list[tuple[str, str]]  # (relative path, description)
    clusters: list[ClusterView]
    nearest_title: str
    confusion_table: str = ""
    confusion_plot: tuple[str, str] | None = None  # (relative path, description)
    cluster_table_rows: list[str] = field(default_factory=list)


def head_id(head: int) -> str:
    return f"head-{head}"


def cluster_id(head: int, cluster: int) -> str:
    return f"head-{head}-cluster-{cluster}"


def _badge(recommended: bool) -> str:
    return ' <span class="badge">recommended</span>' if recommended else ""


def _figure(index: int, names: list[str], confidence: np.ndarray, thumbs: dict[int, str]) -> str:
    name = escape(names[index], quote=True)
    label = f"{confidence[index]:.2f}"
    if index not in thumbs:
        return (
            f'<figure><div class="unreadable" title="{name}">unreadable</div>'
            f"<figcaption>{label}</figcaption></figure>"
        )
    return (
        f'<figure><img class="thumb" src="{thumbs[index]}" loading="lazy" alt="{name}" '
        f'title="{name} (confidence {label})" data-index="{index}">'
        f"<figcaption>{label}</figcaption></figure>"
    )


def _cluster_section(
    head: HeadView,
    view: ClusterView,
    names: list[str],
    confidence: np.ndarray,
    thumbs: dict[int, str],
) -> str:
    parts = [
        (
            f'<section class="cluster" id="{cluster_id(head.index, view.cluster)}" '
            f'data-cluster="{view.cluster}" data-size="{view.size}">'
        ),
        f'<h3>Cluster {view.cluster} <span class="size">{view.size} images</span></h3>',
    ]
    if view.size == 0:
        parts.append("<p>empty: no image is nearest to this center</p></section>")
        return "".join(parts)
    q = view.confidence_quantiles
    parts.append(
        f'<p class="confidence">confidence: min {q[0]:.2f} · quartiles {q[1]:.2f} / {q[2]:.2f} / '
        f"{q[3]:.2f} · max {q[4]:.2f}</p>"
    )
    if view.majority:
        parts.append(f'<p class="majority">majority class {escape(view.majority)}</p>')
    rows = (
        (head.nearest_title, "nearest", view.nearest),
        ("Least confident", "least-confident", view.least_confident),
    )
    for title, kind, members in rows:
        if not members:
            continue
        figures = "".join(_figure(i, names, confidence, thumbs) for i in members)
        parts.append(f'<h4>{title}</h4><div class="row {kind}">{figures}</div>')
    parts.append("</section>")
    return "".join(parts)


def _head_section(
    head: HeadView, names: list[str], confidence: np.ndarray, thumbs: dict[int, str]
) -> str:
    parts = [
        (
            f'<section class="head" id="{head_id(head.index)}" data-head="{head.index}" '
            f'data-num-clusters="{head.num_clusters}"'
            f"{' data-recommended' if head.recommended else ''}>"
        ),
        f"<h2>{escape(head.name)}{_badge(head.recommended)}</h2>",
        f'<p class="summary">{escape(head.summary)}</p>',
    ]
    plots = "".join(
        f'<img class="plot" src="{path}" alt="{escape(alt, quote=True)}">'
        for path, alt in head.plots
    )
    parts.append(f'<div class="plots">{plots}</div>')
    if head.confusion_plot is not None:  # folded: the images come first
        path, alt = head.confusion_plot
        parts.append(
            "<details><summary>Classes against clusters (confusion matrix)</summary>"
            f'<div class="plots"><img class="plot" src="{path}" alt="{escape(alt, quote=True)}">'
            f"{head.confusion_table}</div></details>"
        )
    parts.append(
        "<details><summary>Index of the clusters</summary>"
        '<table class="cluster-index"><thead><tr><th>cluster</th><th>size</th>'
        "<th>median confidence</th><th>majority class</th></tr></thead><tbody>"
        + "".join(head.cluster_table_rows)
        + "</tbody></table></details>"
    )
    parts.append('<div class="clusters">')
    parts += [
        _cluster_section(head, c, names, confidence[head.index], thumbs) for c in head.clusters
    ]
    parts.append("</div></section>")
    return "\n".join(parts)


def cluster_table_row(head: int, view: ClusterView) -> str:
    """A row of the head's index of clusters, linking to the cluster's section."""
    median = "" if view.confidence_quantiles is None else f"{view.confidence_quantiles[2]:.2f}"
    return (
        f'<tr><td><a href="#{cluster_id(head, view.cluster)}">{view.cluster}</a></td>'
        f"<td>{view.size}</td><td>{median}</td><td>{escape(view.majority or '')}</td></tr>"
    )


def confusion_table(counts: np.ndarray, order: np.ndarray, class_names: list[str]) -> str:
    """Classes (rows) against clusters (columns, in ``order``), as counts.

    Examples:
        >>> confusion_table(np.array([[2, 0]]), np.array([1, 0]), ["<b>"])[:40]
        '<table class="confusion"><thead><tr><th>'
        >>> "&lt;b&gt;" in confusion_table(np.array([[2, 0]]), np.array([1, 0]), ["<b>"])
        True
    """
    header = "".join(f"<th>{c}</th>" for c in order)
    rows = "".join(
        f"<tr><th>{escape(name)}</th>"
        + "".join(f"<td>{v}</td>" for v in counts[row, order])
        + "</tr>"
        for row, name in enumerate(class_names)
    )
    return (
        f'<table class="confusion"><thead><tr><th>class \\ cluster</th>{header}</tr></thead>'
        f"<tbody>{rows}</tbody></table>"
    )


def render_page(
    title: str,
    subtitle: str,
    heads: list[HeadView],
    default_head: int,
    names: list[str],
    confidence: np.ndarray,
    thumbs: dict[int, str],
    thumb_pixels: int,
    which_k: str = "",
) -> str:
    """The whole ``index.html``; ``which_k``: HTML shown under the subtitle (the K chosen)."""
    links = "".join(
        f'<a href="#{head_id(h.index)}">{escape(h.name)}{_badge(h.recommended)}</a>' for h in heads
    )
    sections = "\n".join(_head_section(h, names, confidence, thumbs) for h in heads)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="generator" content="{GENERATOR}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n"
        f'<body data-default-head="{head_id(default_head)}" style="--thumb: {thumb_pixels}px">\n'
        f"<header><h1>{escape(title)}</h1><p>{escape(subtitle)}</p>{which_k}"
        f'<nav class="heads" aria-label="clustering heads">{links}</nav></header>\n'
        f"<main>\n{sections}\n</main>\n<script>{SCRIPT}</script>\n</body></html>\n"
    )
