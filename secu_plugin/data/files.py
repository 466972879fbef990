"""Image files on disk: which files are images, how a folder is walked, how an image is
read, and how a folder splits into train/test. Every part of the package uses these."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

from PIL import Image

from secu_plugin.data.transforms import to_uniform_mode

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
# The exceptions that mean "this file is not a readable image" (PIL raises all of these).
UNREADABLE_IMAGE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    Image.DecompressionBombError,
)
# Subfolder names accepted for each requested split, in order of preference.
SPLIT_FOLDER_ALIASES: dict[str, tuple[str, ...]] = {
    "train": ("train", "training"),
    "test": ("test", "testing", "val", "validation", "valid"),
    "val": ("val", "validation", "valid", "test"),
    "validation": ("validation", "val", "valid", "test"),
}


def read_image(path: str) -> Image.Image:
    """Fully decodes an image file; any failure becomes a ValueError naming the path."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_uniform_mode(image)
    except UNREADABLE_IMAGE_ERRORS as error:
        raise ValueError(f"cannot read image file {path!r}: {error}") from error


class ImageFiles(Sequence):
    """The images of a list of files, decoded when indexed: mode "L" (grey files) or "RGB", or
    ``mode`` if given. Also an :class:`~secu_plugin.data.sources.ImageDataset` source
    (``load``).

    Examples:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "grey.png")
        >>> Image.new("L", (4, 4)).save(path)
        >>> ImageFiles([path])[0].mode, ImageFiles([path], mode="RGB")[0].mode
        ('L', 'RGB')
    """

    def __init__(self, paths: Sequence[str], mode: str | None = None) -> None:
        if mode not in (None, "L", "RGB"):
            raise ValueError(f"mode must be None, 'L' or 'RGB', got {mode!r}")
        self.paths = list(paths)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Image.Image:  # type: ignore[override]
        image = read_image(self.paths[index])
        return image if self.mode in (None, image.mode) else image.convert(self.mode)

    def load(self, index: int) -> Image.Image:
        """The image at ``index`` (the source protocol of ``ImageDataset``)."""
        return self[index]


def is_readable_image(path: str) -> bool:
    """Checks a file with PIL's verify() and then a real decode (verify misses some damage)."""
    try:
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            image.load()
    except UNREADABLE_IMAGE_ERRORS:
        return False
    return True


def has_image_extension(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def find_image_files(directory: str, recursive: bool = True) -> list[str]:
    """Image files in ``directory`` (and below it), sorted; hidden files and folders skipped.

    Examples:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(folder, "sub"))
        >>> for name in ["b.png", "sub/a.JPG", "notes.txt", ".hidden.png"]:
        ...     open(os.path.join(folder, name), "wb").close()
        >>> [os.path.relpath(p, folder) for p in find_image_files(folder)]
        ['b.png', 'sub/a.JPG']
        >>> [os.path.relpath(p, folder) for p in find_image_files(folder, recursive=False)]
        ['b.png']
    """
    if not recursive:
        return sorted(
            entry.path
            for entry in os.scandir(directory)
            if entry.is_file()
            and not entry.name.startswith(".")
            and has_image_extension(entry.name)
        )
    paths = []
    for root, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        paths.extend(
            os.path.join(root, name)
            for name in filenames
            if not name.startswith(".") and has_image_extension(name)
        )
    return sorted(paths)


def subfolders(directory: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def split_folder(directory: str, split: str) -> str | None:
    """The subfolder of ``directory`` that holds ``split``, or None without a split layout.

    A directory has a split layout when every subfolder is named like a split (train,
    training, test, testing, val, validation, valid): such folders are splits, never classes.
    An evaluation split that is missing (``ROOT/train/`` alone) falls back to ``train``.

    Examples:
        >>> import tempfile
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(root, "train", "cat"))
        >>> split_folder(root, "train"), split_folder(root, "test")
        ('train', 'train')
        >>> os.makedirs(os.path.join(root, "val", "cat"))
        >>> split_folder(root, "test")
        'val'
    """
    names = set(subfolders(directory))
    split_names = {name for aliases in SPLIT_FOLDER_ALIASES.values() for name in aliases}
    if not names or not names <= split_names:
        return None
    for name in SPLIT_FOLDER_ALIASES.get(split, (split,)):
        if name in names:
            return name
    if split != "train":
        return split_folder(directory, "train")
    raise ValueError(
        f"split {split!r} not found in {directory!r}: it has split subfolders {sorted(names)}"
    )


def is_hf_imagefolder(directory: str) -> bool:
    """True when ``directory`` (or one of its subfolders) holds an imagefolder metadata file."""
    candidates = [directory] + [os.path.join(directory, d) for d in subfolders(directory)]
    return any(
        os.path.isfile(os.path.join(folder, name))
        for folder in candidates
        for name in HF_METADATA_FILES
    )


def is_parquet_source(source: str) -> bool:
    return source.lower().endswith(".parquet")


def check_output_outside_data(
    output_dir: str | os.PathLike,
    data: str,
    output_flag: str = "--output_dir",
    data_flag: str = "--data",
) -> None:
    """Refuses an output directory inside a local ``data`` folder: a run's output (montages,
    cluster folders, a model's files) would become its next run's input.

    Examples:
        >>> import tempfile
        >>> data = tempfile.mkdtemp()
        >>> check_output_outside_data(os.path.join(data, "..", "outputs"), data)
        >>> check_output_outside_data(os.path.join(data, "run"), data)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: --output_dir .../run is inside the --data folder ...: ...
        >>> check_output_outside_data("outputs/x", "mnist5k")  # not a folder: nothing to refuse
    """
    folder = os.path.expanduser(data)
    if not os.path.isdir(folder):
        return
    output = os.path.realpath(os.path.expanduser(os.fspath(output_dir)))
    root = os.path.realpath(folder)
    if output == root or output.startswith(root.rstrip(os.sep) + os.sep):
        raise ValueError(
            f"{output_flag} {os.fspath(output_dir)} is inside the {data_flag} folder {data}: the "
            "run's output would become the next run's input; write it outside the data folder"
        )


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read 1 MiB at a time (weights, checkpoint files).

    Examples:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile(delete=False) as file:
        ...     _ = file.write(b"abc")
        >>> file_sha256(file.name)[:16]
        'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
