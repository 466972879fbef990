"""A feature cache on disk: every image embedded once by a frozen backbone, memory-mapped.

Layout of one cache (a directory named by the hash of what produced it)::

    <root>/<key hash>/
        key.json        # what the features depend on: backbone, weights, transform, data, views
        features.npy    # (N, V, D) float16 or float32, numpy's .npy: memory-mappable, written in place
        chunks/000012   # one empty marker per finished chunk of rows (written after its rows)
        COMPLETE        # written last

A run that finds a complete cache with the same key reuses it; one that finds a partial cache
computes only the chunks without a marker (an interrupted extraction resumes). Several
processes may fill one cache at once, each its own chunks. The ``.npy`` format was chosen over
safetensors because it can be written chunk by chunk in place and read without loading it.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

DTYPES = {"float16": np.float16, "float32": np.float32}


def key_hash(key: dict[str, Any]) -> str:
    """A short stable hash of a JSON key.

    Examples:
        >>> key_hash({"a": 1}) == key_hash({"a": 1}), key_hash({"a": 1}) == key_hash({"a": 2})
        (True, False)
    """
    text = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies a data set's images for the cache key: for files, every path with its
    size and modification time (an edited image invalidates the cache); otherwise the
    description and length.

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> dataset_fingerprint(ImageDataset.mnist5k())["images"]
        5000
    """
    fingerprint: dict[str, Any] = {
        "description": getattr(dataset, "description", type(dataset).__name__),
        "split": getattr(dataset, "split", None),
        "images": len(dataset),
    }
    paths = getattr(dataset, "paths", None)
    if paths:
        digest = hashlib.sha256()
        for path in paths:
            stat = os.stat(path)
            digest.update(f"{os.fsencode(path)!r}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        fingerprint["files"] = digest.hexdigest()
    return fingerprint


class FeatureCache:
    """The features of ``num_images`` images × ``num_views`` views, ``dim`` each, on disk.

    Use :meth:`open` (creates or reuses the cache of a key), :meth:`missing_chunks`,
    :meth:`write_chunk`, :meth:`mark_complete`, then :attr:`features`.

    Examples:
        >>> import tempfile
        >>> key = {"backbone": "demo", "data": "ten images"}
        >>> cache = FeatureCache.open(tempfile.mkdtemp(), key, 10, num_views=1, dim=4, chunk_size=4)
        >>> cache.missing_chunks()
        [0, 1, 2]
        >>> for chunk in cache.missing_chunks():
        ...     rows = cache.chunk_rows(chunk)
        ...     cache.write_chunk(chunk, torch.ones(len(rows), 1, 4))
        >>> cache.mark_complete()
        >>> cache.complete, cache.features.shape, cache.features.dtype
        (True, torch.Size([10, 1, 4]), torch.float16)
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        meta = json.loads((self.directory / "key.json").read_text())
        self.key: dict[str, Any] = meta["key"]
        self.num_images, self.num_views, self.dim = meta["shape"]
        self.dtype: str = meta["dtype"]
        self.chunk_size: int = meta["chunk_size"]

    @classmethod
    def open(
        cls,
        root: str | os.PathLike,
        key: dict[str, Any],
        num_images: int,
        num_views: int,
        dim: int,
        dtype: str = "float16",
        chunk_size: int = 1024,
        create: bool = True,
    ) -> FeatureCache:
        """The cache of ``key`` under ``root``, created empty unless it exists.

        Several processes may call this together if only one has ``create=True`` and the
        others call it after that one returned (e.g. after ``accelerator.wait_for_everyone()``).
        """
        if dtype not in DTYPES:
            raise ValueError(f"cache dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        for name, value in (("num_images", num_images), ("num_views", num_views), ("dim", dim)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        full_key = {**key, "dtype": dtype}
        directory = Path(root) / key_hash(full_key)
        if create and not (directory / "key.json").exists():
            (directory / "chunks").mkdir(parents=True, exist_ok=True)
            np.lib.format.open_memmap(
                directory / "features.npy",
                mode="w+",
                dtype=DTYPES[dtype],
                shape=(num_images, num_views, dim),
            ).flush()
            meta = {
                "key": full_key,
                "shape": [num_images, num_views, dim],
                "dtype": dtype,
                "chunk_size": chunk_size,
            }
            temporary = directory / "key.json.tmp"
            temporary.write_text(json.dumps(meta, indent=2))
            os.replace(temporary, directory / "key.json")  # key.json last: the cache exists
        cache = cls(directory)
        if (cache.num_images, cache.num_views, cache.dim) != (num_images, num_views, dim):
            raise ValueError(
                f"the cache in {directory} holds {cache.num_images} x {cache.num_views} x "
                f"{cache.dim} features, expected {num_images} x {num_views} x {dim}: delete it"
            )
        return cache

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_size)

    def chunk_rows(self, chunk: int) -> range:
        """The image indices of ``chunk``."""
        return range(chunk * self.chunk_size, min((chunk + 1) * self.chunk_size, self.num_images))

    def missing_chunks(self) -> list[int]:
        """The chunks not written yet (all of them in a new cache)."""
        done = {int(p.name) for p in (self.directory / "chunks").iterdir() if p.name.isdigit()}
        return [chunk for chunk in range(self.num_chunks) if chunk not in done]

    def write_chunk(self, chunk: int, features: torch.Tensor) -> None:
        """Writes the (rows, num_views, dim) features of ``chunk``, flushed to disk before its
        marker: a killed process leaves the chunk missing, never half-written and marked."""
        rows = self.chunk_rows(chunk)
        expected = (len(rows), self.num_views, self.dim)
        if tuple(features.shape) != expected:
            raise ValueError(
                f"chunk {chunk} needs features {expected}, got {tuple(features.shape)}"
            )
        if not torch.isfinite(features).all():
            raise ValueError(f"chunk {chunk}: the backbone gave NaN or infinite features")
        array = np.load(self.directory / "features.npy", mmap_mode="r+")
        array[rows.start : rows.stop] = features.detach().cpu().numpy().astype(array.dtype)
        array.flush()
        del array
        marker = self.directory / "chunks" / f"{chunk:06d}"
        marker.touch()

    def mark_complete(self) -> None:
        missing = self.missing_chunks()
        if missing:
            raise ValueError(f"{len(missing)} chunks of {self.directory} are not written yet")
        (self.directory / "COMPLETE").touch()

    @property
    def complete(self) -> bool:
        return (self.directory / "COMPLETE").exists()

    @property
    def features(self) -> torch.Tensor:
        """All features, (N, V, D), memory-mapped read-only (nothing is loaded until used)."""
        array = np.load(self.directory / "features.npy", mmap_mode="r")
        if array.shape != (self.num_images, self.num_views, self.dim):
            raise ValueError(f"{self.directory / 'features.npy'} has shape {array.shape}")
        with warnings.catch_warnings():
            # torch warns that the memory map is read-only: the tensor is never written.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array)
