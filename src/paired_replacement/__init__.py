"""Paired Replacement: a differential weight cache for dynamic-sparse FFN inference.

- :class:`WeightCache` — the C++ cache (``torch.classes.paired.WeightCache``) with a typed wrapper;
  ``WeightCache.from_pool_file`` keeps the pool in a pool file (:mod:`.pool_file`, the file tier).
- :class:`QuantizedWeightCache` — int8 rows with per-row scales (:mod:`.quant`).
- :class:`DeviceWeightCache` — the packed block on a device, pools pinned or on the device
  (:mod:`.device`; ``python -m paired_replacement.gpu_check`` on a GPU).
- :mod:`paired_replacement.reference` — the NumPy reference (no torch, no compiled code).
- :func:`load_extension` — choose which compiled build this process uses (see ``_extension``).

Importing the package registers ``torch.classes.paired.WeightCache`` and ``torch.ops.paired.*``
(the original API) without importing torch itself: the compiled library is loaded on their first
use (see ``_registration``). Names are imported on first use too, so that torch-free tools (the
NumPy reference, the analysis stage) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import _registration

_EXPORTS = {
    "WeightCache": ".cache",
    "PairedCache": ".reference",
    "UpdateStats": ".reference",
    "UpdateWork": ".cache",
    "TierInfo": ".cache",
    "QuantizedWeightCache": ".quant",
    "DeviceWeightCache": ".device",
    "write_pool_file": ".pool_file",
    "read_pool_file": ".pool_file",
    "baseline_full_rebuild": ".reference",
    "load_extension": "._extension",
    "loaded_library": "._extension",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"

_registration.install()


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
