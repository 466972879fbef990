"""Image data: sources (MNIST-5k, folders, Hugging Face data sets), views and transforms."""

from secu_plugin.data.files import UNREADABLE_IMAGE_ERRORS, find_image_files, read_image
from secu_plugin.data.sources import ImageDataset, load_mnist5k
from secu_plugin.data.transforms import ConvertMode, eval_transform
from secu_plugin.data.views import TransformedDataset, TwoViewDataset, byol_views, digit_views

__all__ = [
    "UNREADABLE_IMAGE_ERRORS",
    "ConvertMode",
    "ImageDataset",
    "TransformedDataset",
    "TwoViewDataset",
    "byol_views",
    "digit_views",
    "eval_transform",
    "find_image_files",
    "load_mnist5k",
    "read_image",
]
