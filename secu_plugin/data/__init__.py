"""Image data: sources (MNIST-5k, folders, Hugging Face data sets), views and transforms."""

from secu_plugin.data.arrays import load_mnist5k
from secu_plugin.data.describe import DataDescription, describe_data, has_informative_labels
from secu_plugin.data.feature_cache import FeatureCache, dataset_fingerprint
from secu_plugin.data.files import (
    UNREADABLE_IMAGE_ERRORS,
    check_output_outside_data,
    find_image_files,
    read_image,
)
from secu_plugin.data.indexed import IndexedDataset, with_indices
from secu_plugin.data.palette import RandomPalette, shape_views
from secu_plugin.data.sources import ImageDataset
from secu_plugin.data.transforms import ConvertMode, eval_transform
from secu_plugin.data.views import (
    MultiViewDataset,
    TransformedDataset,
    TwoViewDataset,
    byol_views,
    digit_views,
    seeded_random,
)

__all__ = [
    "UNREADABLE_IMAGE_ERRORS",
    "ConvertMode",
    "DataDescription",
    "FeatureCache",
    "ImageDataset",
    "IndexedDataset",
    "MultiViewDataset",
    "RandomPalette",
    "TransformedDataset",
    "TwoViewDataset",
    "byol_views",
    "check_output_outside_data",
    "dataset_fingerprint",
    "describe_data",
    "digit_views",
    "eval_transform",
    "find_image_files",
    "has_informative_labels",
    "load_mnist5k",
    "read_image",
    "seeded_random",
    "shape_views",
    "with_indices",
]
