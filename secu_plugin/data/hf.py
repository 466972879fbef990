"""Hugging Face ``datasets`` as SeCu image sources: loading, image and label columns."""

from __future__ import annotations

import glob
import os
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from secu_plugin.data.files import UNREADABLE_IMAGE_ERRORS, is_parquet_source
from secu_plugin.data.transforms import to_uniform_mode

# Column names taken as labels when no ClassLabel feature says so, in order of preference.
LABEL_COLUMN_NAMES: tuple[str, ...] = ("label", "labels", "fine_label", "coarse_label")


def hf_split_name(folder: str) -> str:
    """The split name Hugging Face's imagefolder gives to a split subfolder."""
    if folder in ("val", "valid", "validation"):
        return "validation"
    if folder in ("test", "testing"):
        return "test"
    return "train"


def _find_image_column(features: Any) -> str:
    import datasets

    for name, feature in features.items():
        if isinstance(feature, datasets.Image):
            return name
    raise ValueError(
        "no image column (feature type datasets.Image) among "
        f"{ {name: type(f).__name__ for name, f in features.items()} }; "
        "pass image_column= or cast the column with datasets.Image()"
    )


def _find_label_column(features: Any) -> str | None:
    import datasets

    class_label_columns = [
        name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)
    ]
    for name in LABEL_COLUMN_NAMES:
        if name in class_label_columns:
            return name
    if class_label_columns:
        return class_label_columns[0]
    for name in LABEL_COLUMN_NAMES:
        if name in features:
            return name
    return None


def _read_labels(values: list[Any], column: str) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels (None → -1); string labels become indices of their sorted names."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in present):
        return np.array([-1 if v is None else int(v) for v in values], dtype=np.int64), None
    if all(isinstance(v, str) for v in present):
        classes = sorted(set(present))
        index = {name: i for i, name in enumerate(classes)}
        return np.array([-1 if v is None else index[v] for v in values], dtype=np.int64), classes
    raise ValueError(f"label column {column!r} must hold integers or strings")


class HFSource:
    """The image column of a Hugging Face ``datasets.Dataset``, as an :class:`ImageDataset`
    source (``len`` and ``load(index)``)."""

    def __init__(self, hf_dataset: Any, image_column: str, description: str) -> None:
        self.hf_dataset = hf_dataset.select_columns([image_column])
        self.image_column = image_column
        self.description = description

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def load(self, index: int) -> Image.Image:
        try:
            image = self.hf_dataset[index][self.image_column]
        except UNREADABLE_IMAGE_ERRORS as error:
            raise ValueError(f"cannot read image {index} of {self.description}: {error}") from error
        if image is None:
            raise ValueError(f"image {index} of {self.description} is missing (None)")
        return to_uniform_mode(image)


class HFImages(NamedTuple):
    """A Hugging Face data set resolved for SeCu: its image column and labels."""

    dataset: Any
    image_column: str
    labels: np.ndarray | None
    num_classes: int | None
    classes: list[str] | None
    description: str
    split: str


def _as_map_style(hf_dataset: Any, split: str) -> Any:
    """The ``datasets.Dataset`` to read, or a ValueError that says what to do instead."""
    import datasets

    if isinstance(hf_dataset, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(
            "a streaming (iterable) data set cannot be clustered: SeCu keeps one assignment per "
            "image and needs a stable index for each; load it with "
            "datasets.load_dataset(..., streaming=False)"
        )
    if isinstance(hf_dataset, datasets.DatasetDict):
        if split not in hf_dataset:
            raise ValueError(f"split {split!r} not found, available: {sorted(hf_dataset)}")
        hf_dataset = hf_dataset[split]
    if not isinstance(hf_dataset, datasets.Dataset):
        raise ValueError(
            f"expected a datasets.Dataset for split {split!r}, got {type(hf_dataset).__name__}"
        )
    if hf_dataset.format.get("type") == "custom":
        raise ValueError(
            "this data set has a transform set (with_transform / set_transform): pass the raw "
            "data set; SeCu applies its own views (reset it with dataset.reset_format())"
        )
    return hf_dataset


def load_hf_images(
    name_or_path: Any,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    **load_kwargs: Any,
) -> HFImages:
    """Loads a Hugging Face data set (object, Hub name, imagefolder directory or parquet
    files) and finds its image and label columns. See :meth:`ImageDataset.from_hf`.

    Examples:
        >>> import datasets
        >>> streamed = datasets.Dataset.from_dict({"x": [1]}).to_iterable_dataset()
        >>> load_hf_images(streamed)
        Traceback (most recent call last):
        ...
        ValueError: a streaming (iterable) data set cannot be clustered: SeCu keeps one ...
    """
    import datasets

    description = "Hugging Face dataset"
    if isinstance(name_or_path, (str, os.PathLike)):
        source = os.fspath(name_or_path)
        if load_kwargs.get("streaming"):
            raise ValueError(
                "streaming=True gives an iterable data set, which cannot be clustered: SeCu "
                "keeps one assignment per image and needs a stable index for each"
            )
        if os.path.isdir(source):
            name_or_path = datasets.load_dataset(
                "imagefolder", data_dir=source, split=split, **load_kwargs
            )
        elif is_parquet_source(source):
            files = sorted(glob.glob(os.path.expanduser(source)))
            if not files:
                raise ValueError(f"no parquet file matches {source!r}")
            name_or_path = datasets.load_dataset(
                "parquet", data_files={split: files}, split=split, **load_kwargs
            )
        else:
            name_or_path = datasets.load_dataset(source, split=split, **load_kwargs)
        description = f"{source} [{split}]"
    elif isinstance(name_or_path, datasets.DatasetDict):
        description = f"Hugging Face dataset split {split!r}"
    hf_dataset = _as_map_style(name_or_path, split)

    features = hf_dataset.features
    image_column = image_column or _find_image_column(features)
    if image_column not in features:
        raise ValueError(f"image column {image_column!r} not in columns {list(features)}")
    if not isinstance(features[image_column], datasets.Image):
        raise ValueError(
            f"column {image_column!r} has type {features[image_column]!r}, expected "
            "datasets.Image (use dataset.cast_column(name, datasets.Image()))"
        )
    if not features[image_column].decode:
        hf_dataset = hf_dataset.cast_column(image_column, datasets.Image(decode=True))

    label_column = label_column or _find_label_column(features)
    labels, num_classes, classes = None, None, None
    if label_column is not None:
        if label_column not in features:
            raise ValueError(f"label column {label_column!r} not in columns {list(features)}")
        labels, classes = _read_labels(list(hf_dataset[label_column]), label_column)
        feature = features[label_column]
        if isinstance(feature, datasets.ClassLabel):
            classes, num_classes = list(feature.names), feature.num_classes
        elif classes is not None:
            num_classes = len(classes)
    return HFImages(hf_dataset, image_column, labels, num_classes, classes, description, split)
