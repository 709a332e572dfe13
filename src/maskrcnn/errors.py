"""Errors meant for the user: one line that names the file or field and the fix.

The CLI prints ``error: <message>`` for these and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MaskRCNNError(Exception):
    """Base of every user-facing error (bad input, bad config, missing file)."""


class DataError(MaskRCNNError, ValueError):
    """An image, mask or annotation file cannot be used; the message names the file."""


class WeightsError(MaskRCNNError, ValueError):
    """A checkpoint cannot be loaded into the configured model."""
