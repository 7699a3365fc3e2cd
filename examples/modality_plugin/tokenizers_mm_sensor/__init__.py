"""tokenizers-mm-sensor: multivariate sensor time series as a tokenizers-mm modality (a plugin)."""

from .data import ACTIVITIES, make_windows
from .tokenizer import SensorTokenizer

__all__ = ["ACTIVITIES", "SensorTokenizer", "make_windows"]
