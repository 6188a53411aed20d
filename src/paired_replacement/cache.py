"""Typed Python wrapper of ``torch.classes.paired.WeightCache``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ._extension import load_extension
from .reference import UpdateStats

# The dtypes the cache supports (the C++ binding checks the same three), by name.
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

IndexLike = torch.Tensor | np.ndarray | Sequence[int]
MaskLike = torch.Tensor | np.ndarray


_INT64_MAX = 2**63 - 1


def _as_int(value: Any, name: str) -> int:
    """A Python/NumPy integer (not bool) that fits int64; no silent truncation of floats."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if not -_INT64_MAX - 1 <= int(value) <= _INT64_MAX:
        raise ValueError(f"{name} = {value} does not fit in 64 bits")
    return int(value)


def _as_float(value: Any, name: str) -> float:
    """A real number (int or float, not bool or str); range checks are the C++ core's."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    return float(value)


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def _as_mask(mask: MaskLike) -> torch.Tensor:
    # NumPy bool arrays are shared, not copied (except a negatively strided one, which torch cannot
    # view); anything else is passed on for the C++ checks, which name the problem.
    if isinstance(mask, np.ndarray):
        if mask.dtype != np.bool_:
            raise TypeError(f"mask must be a bool array, got dtype {mask.dtype}")
        if any(stride < 0 for stride in mask.strides):
            mask = np.ascontiguousarray(mask)
        return torch.from_numpy(mask)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor or numpy.ndarray, got {type(mask).__name__}")
    return mask


def _as_indices(values: IndexLike, name: str) -> torch.Tensor:
    """1-D int64 CPU tensor of row ids; rejects scalars, bool and floating input by name."""
    if isinstance(values, torch.Tensor):
        t = values
    else:
        array = np.asarray(values)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D (a sequence of row ids), got shape {array.shape}")
        if array.size == 0:
            array = array.astype(np.int64)
        if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
            raise TypeError(f"{name} must hold integer row ids, got dtype {array.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(array))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer row ids, got dtype {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


class WeightCache:
    """Packed, differentially updated copy of the active rows of a sparse SwiGLU FFN.

    Args:
        mask: bool [N], the initial active set (may be all False).
        hidden_size: H, the rows of ``down_weight``.
        gate_weight: [N, G] or None / an empty tensor for an FFN without gate.
        up_weight: [N, U].
        down_weight: [H, N] (stored transposed internally, returned as a transposed view).
        grain, par_threshold, hybrid_tau_frac: override the WEIGHT_CACHE_* environment values.

    Views returned by the getters alias the live packed block: they reflect later updates and stay
    valid memory after the cache is gone. Pass ``copy=True`` (or call :meth:`snapshot`) for a copy
    that does not change. A view's shape is fixed when it is taken; take a new one after an update
    that changes ``num_active``. All weights are float32, float16 or bfloat16, contiguous, on the
    CPU. Not thread-safe.
    """

    def __init__(
        self,
        mask: MaskLike,
        hidden_size: int,
        gate_weight: torch.Tensor | None,
        up_weight: torch.Tensor,
        down_weight: torch.Tensor,
        *,
        grain: int | None = None,
        par_threshold: int | None = None,
        hybrid_tau_frac: float | None = None,
    ) -> None:
        load_extension()
        up_weight = _as_tensor(up_weight, "up_weight")
        down_weight = _as_tensor(down_weight, "down_weight")
        gate = (torch.empty(0, dtype=up_weight.dtype) if gate_weight is None
                else _as_tensor(gate_weight, "gate_weight"))
        self._cache: Any = torch.classes.paired.WeightCache(
            _as_mask(mask), _as_int(hidden_size, "hidden_size"), gate, up_weight, down_weight, True
        )
        if grain is not None:
            self.grain = grain
        if par_threshold is not None:
            self.par_threshold = par_threshold
        if hybrid_tau_frac is not None:
            self.hybrid_tau_frac = hybrid_tau_frac

    # ---- updates ----
    def update_active_weights(self, mask: MaskLike) -> None:
        """Make the active set equal ``mask`` (bool [N]); rewrites only the rows that must change."""
        self._cache.update_active_weights(_as_mask(mask))

    def update_from_indices(self, added: IndexLike, removed: IndexLike) -> None:
        """Activate ``added`` and deactivate ``removed`` (row ids) in O(len(added) + len(removed)).

        Raises IndexError for an id outside [0, N) and ValueError for a duplicate, an added row that
        is already active or a removed row that is not; the cache is then unchanged.
        """
        self._cache.update_from_indices(_as_indices(added, "added"), _as_indices(removed, "removed"))

    # ---- seed-compatible getters ----
    def get_concat_weight(self, copy: bool = False) -> torch.Tensor:
        """[m, G+U]: the active gate rows' columns, then the up rows' columns (a live view)."""
        w = self._cache.get_concat_weight()
        return w.clone() if copy else w

    def get_active_down_weight(self, copy: bool = False) -> torch.Tensor:
        """[H, m]: the active columns of down, as a transposed view of the packed rows."""
        w = self._cache.get_active_down_weight()
        return w.clone() if copy else w

    def get_num_active(self) -> int:
        return int(self._cache.get_num_active())

    @property
    def num_active(self) -> int:
        return self.get_num_active()

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of (concat weight, down weight) that later updates do not change."""
        return self.get_concat_weight(copy=True), self.get_active_down_weight(copy=True)

    # ---- introspection ----
    def active_indices(self) -> torch.Tensor:
        """int64 [m]: the row id stored at each slot of the packed block (its row order)."""
        return self._cache.active_indices()

    def position_map(self) -> torch.Tensor:
        """int64 [N]: slot of each row, -1 for inactive rows."""
        return self._cache.position_map()

    @property
    def mask(self) -> torch.Tensor:
        """bool [N]: a copy of the current active set."""
        return self._cache.mask()

    def last_update_stats(self) -> UpdateStats:
        """A, R, rows written (per buffer) and path ("noop", "paired", "rebuild") of the last update."""
        added, removed, rows_written, path, m_before, m_after = self._cache.last_update_stats()
        return UpdateStats(added, removed, rows_written, path, m_before, m_after)

    def pool_concat_weight(self) -> torch.Tensor:
        """[N, G+U] pool the cache gathers from (read-only; writing to it corrupts the cache)."""
        return self._cache.pool_concat_weight()

    def pool_down_weight_t(self) -> torch.Tensor:
        """[N, H] transposed down pool (read-only; writing to it corrupts the cache)."""
        return self._cache.pool_down_weight_t()

    def check_invariants(self) -> None:
        """O(N·row bytes) self-check of the bookkeeping and packed rows; raises RuntimeError."""
        self._cache.check_invariants()

    # ---- settings ----
    @property
    def grain(self) -> int:
        """Rows per parallel task (>= 1); default WEIGHT_CACHE_GRAIN or 64."""
        return int(self._cache.grain())

    @grain.setter
    def grain(self, value: int) -> None:
        self._cache.set_grain(_as_int(value, "grain"))

    @property
    def par_threshold(self) -> int:
        """Copy in parallel when an update writes at least this many rows; default 64."""
        return int(self._cache.par_threshold())

    @par_threshold.setter
    def par_threshold(self, value: int) -> None:
        self._cache.set_par_threshold(_as_int(value, "par_threshold"))

    @property
    def hybrid_tau_frac(self) -> float:
        """Rebuild by a straight gather when rows to write > tau * m' (>= 1 disables); default 0.5."""
        return float(self._cache.hybrid_tau_frac())

    @hybrid_tau_frac.setter
    def hybrid_tau_frac(self, value: float) -> None:
        self._cache.set_hybrid_tau_frac(_as_float(value, "hybrid_tau_frac"))

    @property
    def torch_object(self) -> Any:
        """The underlying ``torch.classes.paired.WeightCache`` (for TorchScript users)."""
        return self._cache

    def __repr__(self) -> str:
        pool = self.pool_concat_weight()
        return (
            f"WeightCache(N={pool.shape[0]}, concat_cols={pool.shape[1]}, "
            f"hidden={self.pool_down_weight_t().shape[1]}, dtype={pool.dtype}, m={self.num_active})"
        )
