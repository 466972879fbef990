"""Image data for SeCu: datasets that yield PIL images and the augmentations applied to them.

One uniform dataset, :class:`ImageDataset`, covers the bundled MNIST-5k digits, plain image
folders and Hugging Face ``datasets``; :class:`TwoViewDataset` turns it into the
``(view1, view2, index)`` batches that SeCu trains on and :class:`TransformedDataset` into the
``(tensor, label, index)`` batches used for evaluation.

``lightly`` and ``datasets`` are imported inside the functions that need them, so that
``import secu_plugin.data`` stays cheap.
"""

from __future__ import annotations

import glob
import importlib.resources
import os
import random
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
IMAGENET_MEAN: tuple[float, ...] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, ...] = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
)
# Files that make a directory a Hugging Face "imagefolder" rather than a plain folder.
HF_METADATA_FILES: tuple[str, ...] = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
# Subfolder names accepted for each requested split, in order of preference.
SPLIT_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "test": ("test", "testing", "val", "validation", "valid"),
    "val": ("val", "validation", "valid", "test"),
    "validation": ("validation", "val", "valid", "test"),
}
# Column names taken as labels when no ClassLabel feature says so, in order of preference.
LABEL_COLUMN_NAMES: tuple[str, ...] = ("label", "labels", "fine_label", "coarse_label")


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """Loads the 5000 bundled MNIST digits (500 per class, sorted by label).

    See ``secu_plugin/assets/MNIST5K.md`` for their origin and license.

    Returns:
        ``(images, labels)``: uint8 array of shape (5000, 28, 28), white digits on black,
        and int64 array of shape (5000,) with values 0..9.

    Examples:
        >>> images, labels = load_mnist5k()
        >>> images.shape, images.dtype, labels.shape, labels.dtype
        ((5000, 28, 28), dtype('uint8'), (5000,), dtype('int64'))
        >>> np.bincount(labels).tolist()
        [500, 500, 500, 500, 500, 500, 500, 500, 500, 500]
    """
    resource = importlib.resources.files("secu_plugin") / "assets" / "mnist5k.npz"
    with resource.open("rb") as file, np.load(file) as npz:
        images = np.asarray(npz["images"], dtype=np.uint8)
        labels = np.asarray(npz["labels"], dtype=np.int64)
    return images, labels


def _to_uniform_mode(image: Image.Image) -> Image.Image:
    """Returns the image in mode "L" (grey sources) or "RGB" (everything else)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode in ("1", "LA", "La"):
        return image.convert("L")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # PIL's convert("L") clips 16/32-bit values at 255; rescale by the data's range instead.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        # Going through RGBA avoids PIL's warning about byte-wise palette transparency.
        return image.convert("RGBA").convert("RGB")
    return image.convert("RGB")


def _read_image_file(path: str) -> Image.Image:
    """Fully decodes an image file; any failure becomes a ValueError naming the path."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_uniform_mode(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read image file {path!r}: {error}") from error


def _is_readable_image(path: str) -> bool:
    """Checks a file with PIL's verify() and then a real decode (verify misses some damage)."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _images_in(directory: str, recursive: bool) -> list[str]:
    """Image files in ``directory``, sorted; hidden files and folders are ignored."""
    if not recursive:
        return sorted(
            entry.path
            for entry in os.scandir(directory)
            if entry.is_file()
            and not entry.name.startswith(".")
            and _has_image_extension(entry.name)
        )
    paths = []
    for root, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(
            os.path.join(root, name)
            for name in filenames
            if not name.startswith(".") and _has_image_extension(name)
        )
    return sorted(paths)


def _subfolders(directory: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def _split_folder(directory: str, split: str) -> str | None:
    """The subfolder of ``directory`` holding ``split``, or None if it has no split layout.

    A directory has a split layout when it has a ``train`` subfolder and a test or
    validation one (``test``, ``val``, ``validation``, ``valid``).
    """
    subfolders = set(_subfolders(directory))
    has_train = bool(subfolders & {"train", "training"})
    has_eval = bool(subfolders & {"test", "testing", "val", "validation", "valid"})
    if not (has_train and has_eval):
        return None
    for name in SPLIT_FOLDER_ALIASES.get(split, (split,)):
        if name in subfolders:
            return name
    raise ValueError(
        f"split {split!r} not found in {directory!r}: it has subfolders {sorted(subfolders)}"
    )


def _is_hf_imagefolder(directory: str) -> bool:
    """True when ``directory`` (or one of its subfolders) holds an imagefolder metadata file."""
    candidates = [directory] + [os.path.join(directory, d) for d in _subfolders(directory)]
    return any(
        os.path.isfile(os.path.join(folder, name))
        for folder in candidates
        for name in HF_METADATA_FILES
    )


def _is_parquet_source(source: str) -> bool:
    return source.lower().endswith(".parquet")


class _ArraySource:
    """Images held in a uint8 array of shape (N, H, W) or (N, H, W, 3)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class _FileSource:
    """Images stored as files, decoded on access."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image:
        return _read_image_file(self.paths[index])


class _HFSource:
    """The image column of a Hugging Face ``datasets.Dataset``."""

    def __init__(self, hf_dataset: Any, image_column: str, description: str) -> None:
        self.hf_dataset = hf_dataset.select_columns([image_column])
        self.image_column = image_column
        self.description = description

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def load(self, index: int) -> Image.Image:
        try:
            image = self.hf_dataset[index][self.image_column]
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ValueError(f"cannot read image {index} of {self.description}: {error}") from error
        if image is None:
            raise ValueError(f"image {index} of {self.description} is missing (None)")
        return _to_uniform_mode(image)


class ImageDataset(Dataset):
    """A uniform view over image data: item ``i`` is ``(PIL image, label)``.

    Images come back in mode "L" (grey sources) or "RGB". The label is -1 when the source
    has no labels. Labels are for evaluation only; SeCu never trains on them.

    Build it with one of the constructors: :meth:`mnist5k`, :meth:`from_arrays`,
    :meth:`from_folder`, :meth:`from_hf`, or :meth:`from_source` (used by the recipes'
    ``--data`` flag).

    Args:
        source: Any object with ``__len__`` and ``load(index) -> PIL.Image``; the
            constructors below build it.
        labels: One label per image (-1 where unknown), or None.
        num_classes: Defaults to ``max(labels) + 1``.
        classes, paths, skipped, description: Stored as the attributes below.

    Attributes:
        labels: int64 array of shape (len,) (-1 where unknown), or None without labels.
        num_classes: Number of classes, or None without labels.
        classes: Class names when the source has them (folder names, ClassLabel names).
        paths: Image file paths for folder datasets, else None.
        skipped: Paths dropped as unreadable by ``from_folder(..., skip_corrupt=True)``.
        description: Where the data came from, for logs.

    Examples:
        >>> dataset = ImageDataset.mnist5k()
        >>> len(dataset), dataset.num_classes
        (5000, 10)
        >>> image, label = dataset[0]
        >>> image.mode, image.size, label
        ('L', (28, 28), 0)
    """

    def __init__(
        self,
        source: Any,
        labels: np.ndarray | None = None,
        num_classes: int | None = None,
        classes: list[str] | None = None,
        paths: list[str] | None = None,
        skipped: list[str] | None = None,
        description: str = "",
    ) -> None:
        if labels is not None:
            labels = np.asarray(labels, dtype=np.int64)
            if labels.shape != (len(source),):
                raise ValueError(f"labels must have shape ({len(source)},), got {labels.shape}")
            if num_classes is None:
                num_classes = int(labels.max()) + 1 if (labels >= 0).any() else 0
        self._source = source
        self.labels = labels
        self.num_classes = num_classes if labels is not None else None
        self.classes = classes
        self.paths = paths
        self.skipped = skipped if skipped is not None else []
        self.description = description

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = int(index) % len(self)
        label = -1 if self.labels is None else int(self.labels[index])
        return self._source.load(index), label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.description!r}, len={len(self)}, "
            f"num_classes={self.num_classes})"
        )

    @classmethod
    def from_arrays(
        cls, images: np.ndarray, labels: np.ndarray | Sequence[int] | None = None
    ) -> ImageDataset:
        """Wraps in-memory images: uint8 of shape (N, H, W) (grey) or (N, H, W, 3) (RGB).

        Examples:
            >>> images = np.zeros((4, 8, 8), dtype=np.uint8)
            >>> dataset = ImageDataset.from_arrays(images, labels=[0, 1, 1, 2])
            >>> len(dataset), dataset.num_classes, dataset[2][1]
            (4, 3, 1)
            >>> ImageDataset.from_arrays(images)[0][1]
            -1
        """
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {images.dtype}")
        if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
            raise ValueError(
                f"images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}"
            )
        return cls(
            _ArraySource(images),
            labels=None if labels is None else np.asarray(labels),
            description=f"arrays {images.shape}",
        )

    def save_pngs(self, folder: str | os.PathLike, limit: int | None = None) -> list[str]:
        """Writes the images as PNG files, ``folder/<label>/<index>.png`` (``folder/<index>.png``
        without labels): a real image folder, e.g. for ``secu-cluster``. Returns the paths.

        Examples:
            >>> import tempfile
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     paths = ImageDataset.mnist5k().save_pngs(folder, limit=3)
            ...     ImageDataset.from_folder(folder).labels.tolist()
            [0, 0, 0]
        """
        count = len(self) if limit is None else min(int(limit), len(self))
        paths = []
        for index in range(count):
            image, label = self[index]
            target = os.path.join(os.fspath(folder), str(label) if label >= 0 else "")
            os.makedirs(target, exist_ok=True)
            path = os.path.join(target, f"{index}.png")
            image.save(path)
            paths.append(path)
        return paths

    @classmethod
    def mnist5k(cls) -> ImageDataset:
        """The 5000 bundled MNIST digits as 28x28 PIL images in mode "L", labels 0..9.

        There is a single split; the demo evaluates clustering on its training images, as
        SCAN and SeCu do for unsupervised clustering.

        Examples:
            >>> dataset = ImageDataset.mnist5k()
            >>> dataset.classes[:3], dataset[4999][1]
            (['0', '1', '2'], 9)
        """
        images, labels = load_mnist5k()
        dataset = cls(
            _ArraySource(images),
            labels=labels,
            num_classes=10,
            classes=[str(digit) for digit in range(10)],
            description="mnist5k",
        )
        return dataset

    @classmethod
    def from_folder(cls, path: str | os.PathLike, skip_corrupt: bool = False) -> ImageDataset:
        """A plain image folder, with or without class subfolders.

        With class subfolders (``path/<class>/.../*.png``, as in torchvision's
        ``ImageFolder``) the labels are the indices of the sorted subfolder names; images
        directly in ``path`` are then ignored. Without subfolders, the images in ``path``
        are unlabeled (label -1). Extensions: jpg, jpeg, png, bmp, gif, webp, tif, tiff (any
        case). Files are sorted, so the order is deterministic. Hidden files are ignored.

        Args:
            path: The folder.
            skip_corrupt: If False, an unreadable image raises ``ValueError`` naming its path
                when it is loaded. If True, every image is decoded once up front, unreadable
                ones are dropped and their paths recorded in ``skipped``.

        Examples:
            >>> import tempfile
            >>> folder = tempfile.mkdtemp()
            >>> for name in ["cat", "dog"]:
            ...     os.makedirs(os.path.join(folder, name))
            ...     Image.new("RGB", (4, 4)).save(os.path.join(folder, name, "a.png"))
            >>> dataset = ImageDataset.from_folder(folder)
            >>> dataset.classes, dataset.labels.tolist()
            (['cat', 'dog'], [0, 1])
        """
        root = os.fspath(path)
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root!r} does not exist or is not a directory")
        class_paths = [
            (name, _images_in(os.path.join(root, name), recursive=True))
            for name in _subfolders(root)
        ]
        class_paths = [(name, paths) for name, paths in class_paths if paths]
        if class_paths:
            classes = [name for name, _ in class_paths]
            paths = [p for _, class_files in class_paths for p in class_files]
            labels: np.ndarray | None = np.concatenate(
                [
                    np.full(len(files), index, dtype=np.int64)
                    for index, (_, files) in enumerate(class_paths)
                ]
            )
        else:
            classes = None
            paths = _images_in(root, recursive=False)
            labels = None
        if not paths:
            raise ValueError(
                f"no images found in {root!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        skipped: list[str] = []
        if skip_corrupt:
            readable = np.array([_is_readable_image(p) for p in paths], dtype=bool)
            skipped = [p for p, ok in zip(paths, readable) if not ok]
            paths = [p for p, ok in zip(paths, readable) if ok]
            if labels is not None:
                labels = labels[readable]
            if not paths:
                raise ValueError(f"all {len(skipped)} images in {root!r} are unreadable")
        return cls(
            _FileSource(paths),
            labels=labels,
            num_classes=None if classes is None else len(classes),
            classes=classes,
            paths=paths,
            skipped=skipped,
            description=f"folder {root}",
        )

    @classmethod
    def from_hf(
        cls,
        name_or_path: Any,
        split: str = "train",
        image_column: str | None = None,
        label_column: str | None = None,
        **load_kwargs: Any,
    ) -> ImageDataset:
        """A Hugging Face ``datasets`` dataset.

        ``name_or_path`` is one of:

        - a Hub dataset name such as ``"uoft-cs/cifar10"`` (or a builder name such as
          ``"parquet"`` with ``data_files=...`` in ``load_kwargs``);
        - a local directory, loaded as an ``imagefolder`` (``data_dir=name_or_path``);
        - a ``.parquet`` file or glob: the matching files are taken as the split ``split``;
        - a ``datasets.Dataset``, or a ``datasets.DatasetDict`` (then ``split`` picks one).

        The image column is the first feature of type ``datasets.Image`` unless given. The
        label column, unless given, is a ``ClassLabel`` feature or a column named label,
        labels, fine_label or coarse_label (preferred in that order); without one the
        dataset is unlabeled. Missing labels (None) become -1.

        Args:
            name_or_path: What to load, see above.
            split: The split to load.
            image_column: Name of the image column (detected if None).
            label_column: Name of the label column (detected if None).
            **load_kwargs: Passed to ``datasets.load_dataset`` (e.g. ``cache_dir``).

        Examples:
            >>> import datasets
            >>> hf = datasets.Dataset.from_dict(
            ...     {"img": [Image.new("L", (4, 4))] * 2, "label": [3, 1]},
            ...     features=datasets.Features(
            ...         {"img": datasets.Image(), "label": datasets.Value("int64")}),
            ... )
            >>> dataset = ImageDataset.from_hf(hf)
            >>> dataset.labels.tolist(), dataset.num_classes
            ([3, 1], 4)
        """
        import datasets

        if isinstance(name_or_path, datasets.DatasetDict):
            if split not in name_or_path:
                raise ValueError(f"split {split!r} not found, available: {sorted(name_or_path)}")
            hf_dataset = name_or_path[split]
            description = f"Hugging Face dataset split {split!r}"
        elif isinstance(name_or_path, datasets.Dataset):
            hf_dataset = name_or_path
            description = "Hugging Face dataset"
        else:
            source = os.fspath(name_or_path)
            if os.path.isdir(source):
                hf_dataset = datasets.load_dataset(
                    "imagefolder", data_dir=source, split=split, **load_kwargs
                )
            elif _is_parquet_source(source):
                files = sorted(glob.glob(os.path.expanduser(source)))
                if not files:
                    raise ValueError(f"no parquet file matches {source!r}")
                hf_dataset = datasets.load_dataset(
                    "parquet", data_files={split: files}, split=split, **load_kwargs
                )
            else:
                hf_dataset = datasets.load_dataset(source, split=split, **load_kwargs)
            description = f"{source} [{split}]"
        if not isinstance(hf_dataset, datasets.Dataset):
            # ValueError like all bad-input errors here (e.g. streaming=True gives an
            # IterableDataset, which has no random access).
            raise ValueError(
                f"expected a datasets.Dataset for split {split!r}, got {type(hf_dataset).__name__}"
            )

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
        return cls(
            _HFSource(hf_dataset, image_column, description),
            labels=labels,
            num_classes=num_classes,
            classes=classes,
            description=description,
        )

    @classmethod
    def from_source(
        cls, source: str = "mnist5k", split: str = "train", skip_corrupt: bool = False
    ) -> ImageDataset:
        """Loads the data named by a recipe's ``--data`` flag.

        - ``"mnist5k"`` (default): the bundled digits. It has one split only, so every
          ``split`` returns the same 5000 images: the demo evaluates on its training images,
          SCAN-style.
        - An existing directory: if it has ``train/`` and ``test/`` (or ``val/``)
          subfolders, the one matching ``split`` is used (``"test"`` falls back to
          ``val``); otherwise the directory itself, for every split. With a Hugging Face
          metadata file (metadata.csv / metadata.jsonl) it is loaded as an ``imagefolder``
          through :meth:`from_hf`, else as a plain folder through :meth:`from_folder`.
        - A ``.parquet`` file or glob: :meth:`from_hf` with those files as ``split``.
        - Anything else: a Hugging Face Hub dataset name, :meth:`from_hf`.

        Args:
            source: What to load, see above.
            split: "train" for training; "test" (or "val") for evaluation.
            skip_corrupt: Passed to :meth:`from_folder` for plain folders.

        Examples:
            >>> ImageDataset.from_source("mnist5k", split="test").description
            'mnist5k'
        """
        if not source:
            raise ValueError("data source must be a non-empty string")
        if source.lower() == "mnist5k":
            return cls.mnist5k()
        expanded = os.path.expanduser(source)
        if os.path.isdir(expanded):
            split_folder = _split_folder(expanded, split)
            if _is_hf_imagefolder(expanded):
                # datasets maps train/ val/ test/ subfolders to its own split names.
                hf_split = "train"
                if split_folder is not None:
                    hf_split = _hf_split_name(split_folder)
                return cls.from_hf(expanded, split=hf_split)
            folder = expanded if split_folder is None else os.path.join(expanded, split_folder)
            return cls.from_folder(folder, skip_corrupt=skip_corrupt)
        if _is_parquet_source(expanded):
            return cls.from_hf(expanded, split=split)
        if os.path.exists(expanded):
            raise ValueError(
                f"unsupported data file {source!r}: expected a directory, a .parquet file, "
                "'mnist5k' or a Hugging Face Hub dataset name"
            )
        # A Hub id is "name" or "owner/name"; anything path-like must exist locally.
        if source.startswith(("/", "./", "../", "~", ".\\")) or source.count("/") > 1:
            raise ValueError(f"data path {source!r} does not exist")
        return cls.from_hf(source, split=split)


def _hf_split_name(folder: str) -> str:
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


class TwoViewDataset(Dataset):
    """Two augmented views of each image and its index, for SeCu training.

    Item ``i`` is ``(view1, view2, i)``; the index addresses SeCu's assignment memory.
    Labels are not returned: they are for evaluation only.

    With ``seed``, the views of image ``i`` in epoch ``e`` are a function of ``(seed, e, i)``
    alone (the random generators of torch, numpy and ``random`` are seeded from it for the
    item and restored afterwards): the same whatever the number of DataLoader workers, the
    prefetching, or a resume in the middle of an epoch. Call :meth:`set_epoch` every epoch;
    the epoch lives in shared memory, so persistent workers see it too.

    Args:
        dataset: An :class:`ImageDataset` or any dataset whose items are ``(image, label)``.
        transform1: Augmentation for the first view.
        transform2: Augmentation for the second view; ``transform1`` if None.
        seed: Makes the views reproducible per (epoch, index); None: global random state.

    Examples:
        >>> view1, view2 = digit_view_transforms()
        >>> pairs = TwoViewDataset(ImageDataset.mnist5k(), view1, view2, seed=0)
        >>> a, b, index = pairs[7]
        >>> a.shape, b.shape, index
        (torch.Size([1, 28, 28]), torch.Size([1, 28, 28]), 7)
        >>> bool((pairs[7][0] == a).all()), pairs.set_epoch(1), bool((pairs[7][0] == a).all())
        (True, None, False)
    """

    def __init__(
        self,
        dataset: Dataset,
        transform1: Callable,
        transform2: Callable | None = None,
        seed: int | None = None,
    ) -> None:
        self.dataset = dataset
        self.transform1 = transform1
        self.transform2 = transform1 if transform2 is None else transform2
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that, with the seed, draws the views."""
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Any, int]:
        image, _ = self.dataset[index]
        if self.seed is None:
            return self.transform1(image), self.transform2(image), index
        item_seed = hash((self.seed, int(self._epoch), int(index))) % (2**31)
        python_state, numpy_state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed would also seed every accelerator,
            # 30 times slower per image.
            torch.default_generator.manual_seed(item_seed)
            np.random.seed(item_seed)
            random.seed(item_seed)
            try:
                return self.transform1(image), self.transform2(image), index
            finally:
                random.setstate(python_state)
                np.random.set_state(numpy_state)


class TransformedDataset(Dataset):
    """One deterministic view of each image, its label and its index, for evaluation.

    Item ``i`` is ``(transform(image), label, i)``, label -1 when unknown.

    Examples:
        >>> to_tensor = eval_transform(28, MNIST_MEAN, MNIST_STD, channels=1)
        >>> data = TransformedDataset(ImageDataset.mnist5k(), to_tensor)
        >>> x, label, index = data[600]
        >>> x.shape, label, index
        (torch.Size([1, 28, 28]), 1, 600)
    """

    def __init__(self, dataset: Dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        image, label = self.dataset[index]
        return self.transform(image), label, index


class ConvertMode:
    """Converts a PIL image to a mode ("L" or "RGB"); picklable, unlike a lambda.

    Examples:
        >>> ConvertMode("RGB")(Image.new("L", (2, 2))).mode
        'RGB'
    """

    def __init__(self, mode: str) -> None:
        if mode not in ("L", "RGB"):
            raise ValueError(f"mode must be 'L' or 'RGB', got {mode!r}")
        self.mode = mode

    def __call__(self, image: Image.Image) -> Image.Image:
        image = _to_uniform_mode(image)
        return image if image.mode == self.mode else image.convert(self.mode)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.mode!r})"


def _channel_stats(
    mean: Sequence[float], std: Sequence[float], channels: int
) -> tuple[list[float], list[float]]:
    """Mean/std with one value per channel; a single value is repeated."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            expected = "1 value" if channels == 1 else f"1 or {channels} values"
            raise ValueError(f"{name} must have {expected}, got {len(values)}: {values}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std must be positive, got {std}")
    return mean * (channels // len(mean)), std * (channels // len(std))


def byol_view_transforms(
    input_size: int,
    min_scale: float = 0.08,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    grayscale_input: bool = False,
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """The two asymmetric BYOL views used by the SeCu paper, from lightly's transforms.

    Both views: RandomResizedCrop(input_size, scale=(min_scale, 1)), horizontal flip p 0.5,
    color jitter (0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, normalize(mean, std).
    View 1: gaussian blur p 1.0, no solarization. View 2: blur p 0.1, solarization p 0.2.
    Every input is converted to RGB first, so grey ("L") images give 3-channel tensors.

    Args:
        input_size: Output side length in pixels.
        min_scale: Smallest crop area, as a fraction of the image.
        mean: Normalization mean, 1 or 3 values.
        std: Normalization std, 1 or 3 values.
        grayscale_input: Set for grey data: drops saturation, hue and random grayscale,
            which leave a grey image unchanged anyway, to save time.

    Returns:
        ``(view1_transform, view2_transform)``, each mapping a PIL image to a
        3 x input_size x input_size tensor.

    Examples:
        >>> view1, view2 = byol_view_transforms(32, min_scale=0.2)
        >>> view1(Image.new("L", (40, 40))).shape
        torch.Size([3, 32, 32])
    """
    from lightly.transforms.byol_transform import BYOLView1Transform, BYOLView2Transform

    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    mean3, std3 = _channel_stats(mean, std, channels=3)
    common: dict[str, Any] = {
        "input_size": input_size,
        "min_scale": min_scale,
        "cj_prob": 0.8,
        "cj_strength": 1.0,
        "cj_bright": 0.4,
        "cj_contrast": 0.4,
        "cj_sat": 0.0 if grayscale_input else 0.2,
        "cj_hue": 0.0 if grayscale_input else 0.1,
        "random_gray_scale": 0.0 if grayscale_input else 0.2,
        "hf_prob": 0.5,
        "normalize": {"mean": mean3, "std": std3},
    }
    view1 = BYOLView1Transform(gaussian_blur=1.0, solarization_prob=0.0, **common)
    view2 = BYOLView2Transform(gaussian_blur=0.1, solarization_prob=0.2, **common)
    return T.Compose([ConvertMode("RGB"), view1]), T.Compose([ConvertMode("RGB"), view2])


def digit_view_transforms(
    input_size: int = 28,
    rotation: float = 15.0,
    translate: float = 0.1,
    scale: tuple[float, float] = (0.85, 1.15),
    shear: float = 10.0,
    min_scale: float = 0.7,
    erase_prob: float = 0.25,
    mean: Sequence[float] = MNIST_MEAN,
    std: Sequence[float] = MNIST_STD,
) -> tuple[Callable[[Image.Image], torch.Tensor], Callable[[Image.Image], torch.Tensor]]:
    """Augmentations for handwritten digits (the CPU demo), as two identical views.

    No horizontal flip and no color jitter (a flipped 2 or 5 is another shape; grey
    levels carry nothing). Pipeline: grey → RandomAffine(±rotation°, translate, scale,
    ±shear°, black fill) → RandomResizedCrop(input_size, scale=(min_scale, 1),
    ratio=(0.8, 1.25)) (a plain resize if ``min_scale`` is 1) → tensor → normalize →
    RandomErasing(p=erase_prob, 2-10% of the area, filled with the background value).

    Args:
        input_size: Output side length in pixels.
        rotation: Largest rotation in degrees.
        translate: Largest shift, as a fraction of width/height.
        scale: Range of the affine zoom.
        shear: Largest shear in degrees.
        min_scale: Smallest crop area, as a fraction of the image.
        erase_prob: Probability of erasing a small rectangle; 0 disables it.
        mean: Normalization mean (one value).
        std: Normalization std (one value).

    Returns:
        ``(view1_transform, view2_transform)``, each mapping a PIL image to a
        1 x input_size x input_size tensor.

    Examples:
        >>> view1, _ = digit_view_transforms(rotation=10, erase_prob=0.0)
        >>> view1(Image.new("L", (28, 28))).shape
        torch.Size([1, 28, 28])
    """
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if rotation < 0 or shear < 0:
        raise ValueError(f"rotation and shear must be >= 0, got {rotation} and {shear}")
    if not 0.0 <= translate < 1.0:
        raise ValueError(f"translate must be in [0, 1), got {translate}")
    if len(scale) != 2 or not 0.0 < scale[0] <= scale[1]:
        raise ValueError(f"scale must be (low, high) with 0 < low <= high, got {scale}")
    if not 0.0 < min_scale <= 1.0:
        raise ValueError(f"min_scale must be in (0, 1], got {min_scale}")
    if not 0.0 <= erase_prob <= 1.0:
        raise ValueError(f"erase_prob must be in [0, 1], got {erase_prob}")
    mean1, std1 = _channel_stats(mean, std, channels=1)

    crop: Callable = (
        T.Resize((input_size, input_size))
        if min_scale >= 1.0
        else T.RandomResizedCrop(input_size, scale=(min_scale, 1.0), ratio=(0.8, 1.25))
    )
    steps: list[Callable] = [
        ConvertMode("L"),
        T.RandomAffine(
            degrees=rotation,
            translate=(translate, translate),
            scale=tuple(scale),
            shear=shear,
            fill=0,
        ),
        crop,
        T.ToTensor(),
        T.Normalize(mean1, std1),
    ]
    if erase_prob > 0:
        # Erase with the normalized background (black) so that strokes go missing.
        background = (0.0 - mean1[0]) / std1[0]
        steps.append(T.RandomErasing(p=erase_prob, scale=(0.02, 0.1), value=background))
    transform = T.Compose(steps)
    return transform, transform


def eval_transform(
    input_size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    channels: int = 3,
) -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic evaluation transform: resize the short side, center crop, normalize.

    Args:
        input_size: Output side length in pixels.
        mean: Normalization mean, 1 or ``channels`` values.
        std: Normalization std, 1 or ``channels`` values.
        channels: 1 (grey) or 3 (RGB); the image is converted to match.

    Returns:
        A transform mapping a PIL image to a ``channels`` x input_size x input_size tensor.

    Examples:
        >>> eval_transform(224)(Image.new("L", (64, 48))).shape
        torch.Size([3, 224, 224])
        >>> eval_transform(28, MNIST_MEAN, MNIST_STD, channels=1)(Image.new("RGB", (28, 28))).shape
        torch.Size([1, 28, 28])
    """
    if input_size <= 0:
        raise ValueError(f"input_size must be positive, got {input_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    mean_c, std_c = _channel_stats(mean, std, channels=channels)
    return T.Compose(
        [
            ConvertMode("L" if channels == 1 else "RGB"),
            T.Resize(input_size),
            T.CenterCrop(input_size),
            T.ToTensor(),
            T.Normalize(mean_c, std_c),
        ]
    )
