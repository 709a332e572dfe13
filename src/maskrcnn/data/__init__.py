"""Data: the Dataset API, readers for images and annotation formats, resizing, augmentation."""

from .dataset import Dataset
from .formats import FORMATS, detect_format, load_dataset

__all__ = ["Dataset", "FORMATS", "detect_format", "load_dataset"]
