"""Image data: sources (MNIST-5k, folders, Hugging Face data sets), views and transforms."""

from secu_plugin.data.images import (
    ImageDataset,
    TransformedDataset,
    TwoViewDataset,
    load_mnist5k,
)

__all__ = ["ImageDataset", "TransformedDataset", "TwoViewDataset", "load_mnist5k"]
