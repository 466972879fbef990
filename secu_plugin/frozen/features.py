"""Embedding a data set once with a frozen backbone, into a :class:`FeatureCache`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from secu_plugin.core.neighbors import nearest_neighbors, whitened
from secu_plugin.data.feature_cache import FeatureCache, dataset_fingerprint
from secu_plugin.data.views import MultiViewDataset
from secu_plugin.train.checkpoint import fault_point

if TYPE_CHECKING:
    from secu_plugin.data import ImageDataset
    from secu_plugin.train.scaffold import RecipeRun


def default_cache_root() -> Path:
    """``$SECU_CACHE`` if set, else ``~/.cache/secu-plugin/features``."""
    return Path(os.environ.get("SECU_CACHE", Path.home() / ".cache" / "secu-plugin" / "features"))


def cache_key(
    backbone: str, weights: dict, transforms: list[Callable], dataset: Any, seed: int
) -> dict[str, Any]:
    """What cached features depend on: the backbone and where its weights came from, every
    view's transform (its ``repr``: sizes, crops, normalization), the data and the seed."""
    return {
        "backbone": backbone,
        "weights": weights,
        "transforms": [repr(t) for t in transforms],
        "data": dataset_fingerprint(dataset),
        "seed": seed if len(transforms) > 1 else None,  # only augmented views are drawn
    }


@torch.no_grad()
def extract_features(
    accelerator,
    backbone: nn.Module,
    images: MultiViewDataset,
    cache: FeatureCache,
    batch_size: int,
    num_workers: int = 0,
    show_progress: bool = True,
) -> None:
    """Fills the chunks of ``cache`` that are not written yet with ``backbone``'s features of
    every view of ``images``; each process takes every N-th missing chunk. Returns when the
    cache is complete on every process.

    Examples:
        >>> import tempfile, timm
        >>> from accelerate import Accelerator
        >>> from torchvision import transforms as T
        >>> from secu_plugin.data import ImageDataset
        >>> from torch.utils.data import Subset
        >>> data = Subset(ImageDataset.mnist5k(), range(6))
        >>> views = MultiViewDataset(data, [T.ToTensor()])
        >>> cache = FeatureCache.open(tempfile.mkdtemp(), {"demo": 1}, 6, 1, 8, chunk_size=4)
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(784, 8))
        >>> extract_features(Accelerator(cpu=True), net, views, cache, 4, show_progress=False)
        >>> cache.complete, cache.features.shape
        (True, torch.Size([6, 1, 8]))
    """
    missing = cache.missing_chunks()
    mine = missing[accelerator.process_index :: accelerator.num_processes]
    bar = tqdm(
        total=sum(len(cache.chunk_rows(c)) for c in missing),
        desc="features",
        unit="img",
        file=sys.stderr,
        disable=not (show_progress and accelerator.is_main_process and missing),
        dynamic_ncols=True,
        mininterval=1.0,
    )
    if mine:
        backbone.eval()
        on_cpu = accelerator.device.type == "cpu"
        if on_cpu:  # convolutions run about 2x faster channels-last on CPUs
            backbone.to(memory_format=torch.channels_last)
        # Batches never cross a chunk: a resumed extraction computes every chunk with the
        # same batches as an uninterrupted one (bit-identical features).
        batches = [
            list(cache.chunk_rows(chunk))[start : start + batch_size]
            for chunk in mine
            for start in range(0, len(cache.chunk_rows(chunk)), batch_size)
        ]
        # Its own generator: an extraction draws nothing from the global RNG, so a run that
        # reuses the cache initializes and trains exactly like the run that filled it.
        loader = DataLoader(
            images,
            batch_sampler=batches,
            num_workers=num_workers,
            generator=torch.Generator().manual_seed(0),
        )
        pending: list[torch.Tensor] = []
        chunks = iter(mine)
        chunk = next(chunks)
        for views, _ in loader:
            batch, num_views = views.shape[:2]
            flat = views.flatten(0, 1).to(accelerator.device)
            if on_cpu:
                flat = flat.contiguous(memory_format=torch.channels_last)
            with accelerator.autocast():
                features = backbone(flat)
            pending.append(features.float().reshape(batch, num_views, -1).cpu())
            if sum(len(p) for p in pending) == len(cache.chunk_rows(chunk)):
                cache.write_chunk(chunk, torch.cat(pending))
                fault_point("feature_chunk")  # the fault tests kill a run here
                bar.update(len(cache.chunk_rows(chunk)) * accelerator.num_processes)
                pending, chunk = [], next(chunks, None)
        if on_cpu:
            backbone.to(memory_format=torch.contiguous_format)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and not cache.complete:
        cache.mark_complete()
    accelerator.wait_for_everyone()


def cached_neighbors(
    accelerator,
    cache: FeatureCache,
    k: int,
    whitening: int = 0,
    log: Callable[[str], None] = print,
) -> torch.Tensor:
    """The (N, k) nearest neighbours of the plain views in ``cache``, computed once (by the
    main process, on its device) and stored next to the features. ``whitening`` > 0: in the
    :func:`~secu_plugin.core.neighbors.whitened` space of that many dimensions."""
    path = cache.directory / f"neighbors-{k}-whitened-{whitening}.npy"
    if accelerator.is_main_process and not path.exists():
        log(f"finding the {k} nearest neighbours of {cache.num_images} images")
        space = cache.features[:, 0]
        if whitening:
            space = whitened(space, min(whitening, cache.dim, cache.num_images - 1))
        neighbors = nearest_neighbors(space, k, device=accelerator.device)
        temporary = path.with_suffix(".tmp.npy")
        np.save(temporary, neighbors.numpy())
        os.replace(temporary, path)
    accelerator.wait_for_everyone()
    neighbors = torch.from_numpy(np.load(path))
    if neighbors.shape != (cache.num_images, k):
        raise ValueError(f"{path} has shape {tuple(neighbors.shape)}, delete it")
    return neighbors


def open_feature_cache(
    run: RecipeRun,
    backbone: torch.nn.Module,
    weights: dict,
    images: ImageDataset,
    transforms: list[Callable],
    cache_root: Path,
    backbone_name: str | None = None,
) -> FeatureCache:
    """The frozen backbone's features of every view (``transforms``) of ``images``: reused
    when a complete cache exists for exactly these inputs, else embedded (split over the
    processes, resumed chunk by chunk after an interruption). ``backbone_name``, for the
    cache's key: default the settings' backbone (a fine-tuning run names its model's)."""
    settings, accelerator = run.settings, run.accelerator
    name = backbone_name or settings.network.backbone
    key = cache_key(name, weights, transforms, images, run.args.seed)
    cache_settings = settings.cache
    shape = (
        len(images),
        len(transforms),
        int(backbone.num_features),
        cache_settings.cache_dtype,
        cache_settings.cache_chunk_size,
    )
    if accelerator.is_main_process:
        FeatureCache.open(cache_root, key, *shape)
    accelerator.wait_for_everyone()
    cache = FeatureCache.open(cache_root, key, *shape, create=False)
    if cache.complete:
        run.log(f"reusing the cached features in {cache.directory}")
        return cache
    todo = len(cache.missing_chunks())
    run.log(
        f"embedding {len(images)} images x {len(transforms)} views ({todo} chunks) "
        f"into {cache.directory}"
    )
    views = MultiViewDataset(images, transforms, seed=run.args.seed)
    extract_features(
        accelerator,
        backbone,
        views,
        cache,
        cache_settings.extract_batch_size,
        settings.loader.num_workers,
        show_progress=not run.args.no_progress,
    )
    return cache
