"""``secu-cluster``: cluster a folder of images with a trained SeCu model.

Loads a model with :meth:`secu_plugin.models.SeCuModel.from_pretrained` (a Hub repo id or a
folder written by ``save_pretrained``), reads every image file under a folder (recursively;
any size; grey, RGB, RGBA or palette), and writes one CSV row ``path,cluster,confidence`` per
readable image (``path`` starts with the folder as given), optionally with a montage of each
cluster's members and a cluster-size chart. ``--out x.parquet`` holds every head's
``cluster_k<K>``/``confidence_k<K>`` columns; ``--data`` takes a Hugging Face data set and gives
it back with those columns added; ``--report DIR`` writes :mod:`secu_plugin.cluster_report`'s page.
Unreadable files are skipped (said on stderr). Rows are written (and flushed) batch by batch,
so an interrupted run keeps what it did; ``--resume`` does the rest. Names not valid UTF-8 are
written as their bytes (lossless: read the CSV with ``encoding="utf-8", errors="surrogateescape"``).

Exit codes: 0 success; 1 no image could be read; 2 bad arguments (unknown model, missing
folder, no head with the requested number of clusters, ...).
"""

from secu_plugin.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
