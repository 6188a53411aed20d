"""Paired Replacement: a differential weight cache for dynamic-sparse FFN inference.

- :class:`WeightCache` — the C++ cache (``torch.classes.paired.WeightCache``) with a typed wrapper.
- :mod:`paired_replacement.reference` — the NumPy reference (no torch, no compiled code).
- :func:`load_extension` — choose which compiled build this process uses (see ``_extension``).
"""

from ._extension import load_extension, loaded_library
from .cache import WeightCache
from .reference import PairedCache, UpdateStats, baseline_full_rebuild

__all__ = [
    "WeightCache",
    "PairedCache",
    "UpdateStats",
    "baseline_full_rebuild",
    "load_extension",
    "loaded_library",
]
__version__ = "0.1.0"
