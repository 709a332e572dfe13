"""maskrcnn: Mask R-CNN instance segmentation that trains on your data, evaluates, detects and deploys."""

from .config import Config, ConfigError
from .errors import DataError, MaskRCNNError, WeightsError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "MaskRCNNError", "WeightsError", "load", "__version__"]


def load(*args, **kwargs):  # noqa: D401 - thin re-export, see maskrcnn.inference.predictor.load
    """Load a model for detection; see :func:`maskrcnn.inference.predictor.load`."""
    from .inference.predictor import load as _load

    return _load(*args, **kwargs)
