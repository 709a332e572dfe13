"""Data: the Dataset API, readers for images and annotation formats, resizing, augmentation."""

from .dataset import Dataset

__all__ = ["Dataset"]
