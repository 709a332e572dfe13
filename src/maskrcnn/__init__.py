"""maskrcnn: Mask R-CNN instance segmentation that trains on your data, evaluates, detects and deploys."""

import os as _os
import sys as _sys

#: OpenMP settings applied when this package is imported before torch (the ``maskrcnn`` command,
#: or ``import maskrcnn`` first); a value already in the environment is kept. torch's OpenMP
#: threads spin-wait ~300,000 rounds after each parallel op by default, taking a core from the
#: data-loader process and from the threads of :mod:`maskrcnn.modeling.threaded_ops`; a short spin
#: made ~10 % more steps in the first minutes of the nuclei preset's training on 2 cores
#: (docs/performance.md).
OPENMP_DEFAULTS = {"GOMP_SPINCOUNT": "1000"}
if "torch" not in _sys.modules:  # libgomp reads these once, when torch loads it
    for _k, _v in OPENMP_DEFAULTS.items():
        _os.environ.setdefault(_k, _v)

from .config import Config, ConfigError
from .errors import DataError, MaskRCNNError, WeightsError

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "DataError", "MaskRCNNError", "WeightsError", "load", "__version__"]


def load(*args, **kwargs):  # noqa: D401 - thin re-export, see maskrcnn.inference.predictor.load
    """Load a model for detection; see :func:`maskrcnn.inference.predictor.load`."""
    from .inference.predictor import load as _load

    return _load(*args, **kwargs)
