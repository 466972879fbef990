"""Any map-style data set, each item with its index appended: what SeCu's memory needs."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset


class IndexedDataset(Dataset):
    """Item ``i`` of ``dataset`` with ``i`` appended, everything else kept (the target too).

    - a tuple item gains a last element: ``(image, target)`` → ``(image, target, i)``;
      lightly's ``LightlyDataset`` ``(views, target, fname)`` → ``(views, target, fname, i)``;
    - a dict item (a Hugging Face row) gains the key ``"index"``;
    - any other item ``x`` becomes ``(x, i)``.

    ``i`` is the position in ``dataset``: wrap the whole training set, then take subsets of
    the wrapped set, so that every image keeps one index (SeCu's memory is addressed by it).
    """

    def __init__(self, dataset: Dataset) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise ValueError(
                f"with_indices needs a map-style data set (__getitem__ and __len__), got "
                f"{type(dataset).__name__}: an iterable or streaming set has no stable index "
                "per image; load it as a map-style set (e.g. load_dataset(..., streaming=False))"
            )
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if isinstance(item, tuple):
            return (*item, index)
        if isinstance(item, dict):
            if "index" in item:
                raise ValueError("the data set's rows already have an 'index' key")
            return {**item, "index": index}
        return item, index


def with_indices(dataset: Dataset) -> IndexedDataset:
    """``dataset`` with each item's index appended (:class:`IndexedDataset`).

    Examples:
        >>> from secu_plugin.data import ImageDataset
        >>> image, target, index = with_indices(ImageDataset.mnist5k())[600]
        >>> image.size, target, index
        ((28, 28), 1, 600)
        >>> from lightly.data import LightlyDataset
        >>> from lightly.transforms.multi_view_transform import MultiViewTransform
        >>> from torchvision import datasets, transforms as T
        >>> views = MultiViewTransform([T.ToTensor(), T.ToTensor()])
        >>> torchvision_set = datasets.FakeData(8, image_size=(3, 32, 32), num_classes=4)
        >>> lightly_set = LightlyDataset.from_torch_dataset(torchvision_set, views)
        >>> (view0, view1), target, fname, index = with_indices(lightly_set)[7]
        >>> view0.shape, target == torchvision_set[7][1], index
        (torch.Size([3, 32, 32]), True, 7)
        >>> with_indices([{"image": "a.png"}])[0]
        {'image': 'a.png', 'index': 0}
    """
    return IndexedDataset(dataset)
