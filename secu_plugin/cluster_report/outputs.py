"""The assignments as data other tools read: a parquet table, or a Hugging Face data set with
the cluster columns added (``Dataset.add_column``), ready for ``save_to_disk``/``push_to_hub``."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from secu_plugin.cluster_report.assignments import ClusterAssignments
from secu_plugin.data.hf import HFImages, load_hf_images


def write_assignments_parquet(
    path: str | os.PathLike, paths: list[str], assignments: ClusterAssignments
) -> None:
    """One row per image: ``path``, then ``cluster_k<K>`` and ``confidence_k<K>`` per head.
    A name that is not valid UTF-8 (parquet strings must be) keeps its odd bytes as ``\\xNN``.

    Examples:
        >>> import tempfile, pyarrow.parquet as pq
        >>> found = ClusterAssignments(np.array([[1, 0]]), np.array([[0.9, 0.8]]),
        ...                            np.array([[0.7, 0.6]]), [2])
        >>> path = os.path.join(tempfile.mkdtemp(), "clusters.parquet")
        >>> write_assignments_parquet(path, ["a.png", "b.png"], found)
        >>> pq.read_table(path).column_names
        ['path', 'cluster_k2', 'confidence_k2']
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if len(paths) != len(assignments):
        raise ValueError(f"{len(paths)} paths for {len(assignments)} assigned images")
    readable = [
        p.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace") for p in paths
    ]
    table = pa.table({"path": pa.array(readable, pa.string()), **assignments.columns()})
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    pq.write_table(table, path)


def is_saved_dataset(folder: str) -> bool:
    """Whether ``folder`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return os.path.isfile(os.path.join(folder, "dataset_dict.json")) or (
        os.path.isfile(os.path.join(folder, "state.json"))
        and os.path.isfile(os.path.join(folder, "dataset_info.json"))
    )


def load_dataset_source(source: str, split: str = "train") -> HFImages:
    """A Hugging Face data set from a ``save_to_disk`` folder (``datasets.load_from_disk``),
    or from anything :func:`secu_plugin.data.hf.load_hf_images` takes: an image folder
    (``imagefolder``: class subfolders become a ClassLabel), parquet files, a Hub id.

    Examples:
        >>> import tempfile, datasets
        >>> from PIL import Image
        >>> folder = tempfile.mkdtemp()
        >>> images = datasets.Features({"image": datasets.Image()})
        >>> datasets.Dataset.from_dict({"image": [Image.new("L", (4, 4))]}, images).save_to_disk(
        ...     folder)
        >>> load_dataset_source(folder).image_column
        'image'
    """
    import datasets

    expanded = os.path.expanduser(source)
    if os.path.isdir(expanded) and is_saved_dataset(expanded):
        return load_hf_images(datasets.load_from_disk(expanded), split=split)
    if not os.path.exists(expanded) and (
        source.startswith(("/", "./", "../", "~")) or source.count("/") > 1
    ):
        raise ValueError(f"data path {source!r} does not exist")
    return load_hf_images(expanded if os.path.exists(expanded) else source, split=split)


def with_cluster_columns(hf_dataset: Any, assignments: ClusterAssignments, rows: np.ndarray) -> Any:
    """``hf_dataset`` with every head's ``cluster_k<K>`` and ``confidence_k<K>`` columns added
    (columns of those names are replaced). ``rows`` are the data set's rows that
    ``assignments`` cover, in order; the others (unreadable images) get cluster -1 and a
    missing (None) confidence.

    Examples:
        >>> import datasets
        >>> table = datasets.Dataset.from_dict({"x": [1, 2, 3]})
        >>> found = ClusterAssignments(np.array([[1, 0]]), np.array([[0.9, 0.8]]),
        ...                            np.array([[0.7, 0.6]]), [2])
        >>> list(with_cluster_columns(table, found, np.array([0, 2]))["cluster_k2"])
        [1, -1, 0]
    """
    import datasets

    if len(rows) != len(assignments):
        raise ValueError(f"{len(rows)} rows for {len(assignments)} assigned images")
    for name, values in assignments.columns().items():
        if name in hf_dataset.column_names:
            hf_dataset = hf_dataset.remove_columns(name)
        if name.startswith("cluster_"):
            column = np.full(len(hf_dataset), -1, dtype=np.int64)
            column[rows] = values
            feature = datasets.Value("int64")
        else:
            column = [None] * len(hf_dataset)
            for row, value in zip(rows.tolist(), values.tolist()):
                column[row] = value
            feature = datasets.Value("float32")
        hf_dataset = hf_dataset.add_column(name, column, feature=feature)
    return hf_dataset


def save_dataset(hf_dataset: Any, out: str, source: str) -> None:
    """``to_parquet`` for a ``.parquet`` name, else ``save_to_disk`` into folder ``out``."""
    if os.path.exists(source) and os.path.realpath(out) == os.path.realpath(source):
        raise ValueError("--out must differ from --data: a data set cannot overwrite its source")
    if out.lower().endswith(".parquet"):
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        hf_dataset.to_parquet(out)
    else:
        hf_dataset.save_to_disk(out)
