"""The images SeCu clusters: :class:`ImageDataset`, one uniform dataset over the bundled
MNIST-5k digits, image folders and Hugging Face ``datasets`` (item i: PIL image and label).

Where the images come from is a source object (``len`` and ``load(index)``): in-memory arrays
(:mod:`secu_plugin.data.arrays`), files (:class:`~secu_plugin.data.files.ImageFiles`) or a
Hugging Face data set (:mod:`secu_plugin.data.hf`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from secu_plugin.data.arrays import ArraySource, load_mnist5k
from secu_plugin.data.files import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    find_image_files,
    is_hf_imagefolder,
    is_parquet_source,
    is_readable_image,
    split_folder,
    subfolders,
)
from secu_plugin.data.hf import HFSource, hf_split_name, load_hf_images


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
        classes, paths, skipped, description, split: Stored as the attributes below.

    Attributes:
        labels: int64 array of shape (len,) (-1 where unknown), or None without labels.
        num_classes: Number of classes, or None without labels.
        classes: Class names when the source has them (folder names, ClassLabel names).
        paths: Image file paths for folder datasets, else None.
        skipped: Paths dropped as unreadable by ``from_folder(..., skip_corrupt=True)``.
        description: Where the data came from, for logs.
        split: The split loaded ("train" where the source has a single split).
        transform: None, or a callable applied to every image (torchvision's convention:
            lightly's ``LightlyDataset.from_torch_dataset(dataset, transform)`` sets it).

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
        split: str = "train",
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
        self.split = split
        self.transform: Any = None  # applied to each image, as torchvision data sets do
        known = labels[labels >= 0] if labels is not None else None
        if known is not None and len(known) and len(np.unique(known)) == 1:
            warnings.warn(
                f"{description or 'the data'}: every labelled image has the same class; the "
                "labels say nothing about a clustering (a split folder taken as a class?)",
                stacklevel=3,
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        index = int(index) % len(self)
        label = -1 if self.labels is None else int(self.labels[index])
        image = self._source.load(index)
        return (image if self.transform is None else self.transform(image)), label

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
            ArraySource(images),
            labels=None if labels is None else np.asarray(labels),
            description=f"arrays {images.shape}",
        )

    def save_pngs(self, folder: str | os.PathLike, limit: int | None = None) -> list[str]:
        """Writes the images as PNG files, ``folder/<label>/<index>.png`` (``folder/<index>.png``
        without labels): a real image folder, e.g. for ``secu-cluster``. Returns the paths.

        Examples:
            >>> import tempfile
            >>> digits = ImageDataset.from_arrays(np.zeros((3, 8, 8), np.uint8), labels=[2, 0, 2])
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     paths = digits.save_pngs(folder)
            ...     ImageDataset.from_folder(folder).labels.tolist()  # classes "0", "2"
            [0, 1, 1]
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
            ArraySource(images),
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
            (name, find_image_files(os.path.join(root, name), recursive=True))
            for name in subfolders(root)
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
            paths = find_image_files(root, recursive=False)
            labels = None
        if not paths:
            raise ValueError(
                f"no images found in {root!r} (extensions: {', '.join(IMAGE_EXTENSIONS)})"
            )
        skipped: list[str] = []
        if skip_corrupt:
            readable = np.array([is_readable_image(p) for p in paths], dtype=bool)
            skipped = [p for p, ok in zip(paths, readable) if not ok]
            paths = [p for p, ok in zip(paths, readable) if ok]
            if labels is not None:
                labels = labels[readable]
            if not paths:
                raise ValueError(f"all {len(skipped)} images in {root!r} are unreadable")
        return cls(
            ImageFiles(paths),
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
        loaded = load_hf_images(name_or_path, split, image_column, label_column, **load_kwargs)
        return cls(
            HFSource(loaded.dataset, loaded.image_column, loaded.description),
            labels=loaded.labels,
            num_classes=loaded.num_classes,
            classes=loaded.classes,
            description=loaded.description,
            split=loaded.split,
        )

    @classmethod
    def from_source(
        cls, source: str = "mnist5k", split: str = "train", skip_corrupt: bool = False
    ) -> ImageDataset:
        """Loads the data named by a recipe's ``--data`` flag.

        - ``"mnist5k"`` (default): the bundled digits. It has one split only, so every
          ``split`` returns the same 5000 images: the demo evaluates on its training images,
          SCAN-style.
        - An existing directory: if its subfolders are splits (``train/``, ``test/``,
          ``val/``, ...), the one matching ``split`` is used (``"test"`` falls back to
          ``val``, then to ``train`` when there is no evaluation split); otherwise the
          directory itself, for every split. ``split`` of the result names the split loaded. With a Hugging Face
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
            folder_split = split_folder(expanded, split)
            if is_hf_imagefolder(expanded):
                # datasets maps train/ val/ test/ subfolders to its own split names.
                hf_split = "train" if folder_split is None else hf_split_name(folder_split)
                return cls.from_hf(expanded, split=hf_split)
            folder = expanded if folder_split is None else os.path.join(expanded, folder_split)
            dataset = cls.from_folder(folder, skip_corrupt=skip_corrupt)
            dataset.split = "train" if folder_split is None else hf_split_name(folder_split)
            return dataset
        if is_parquet_source(expanded):
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
