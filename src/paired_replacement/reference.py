"""Pure-NumPy reference of the *paired replacement* weight cache.

This module is the executable specification of the cache used for
dynamic-sparse FFN inference.  The optimised C++ implementation is compared
against it slot for slot, so the slot-assignment rules below are normative.

Layout
------
There are ``N`` neurons.  Row ``r`` of the *pools* holds everything neuron
``r`` needs:

* ``pool_concat[r]  = concat(gate[r], up[r])``  (just ``up[r]`` without gate)
* ``pool_down_t[r]  = down[:, r]``

The *packed block* (``packed_concat``, ``packed_down_t``) has capacity ``N``
rows, of which only the prefix of ``m`` slots ``[0, m)`` is meaningful.
``row_at[slot]`` is the pool row stored at ``slot`` and ``slot_of[row]`` is
the slot of ``row`` (``-1`` when inactive).  Contents of slots ``>= m`` are
stale and unspecified.

Update rule (paired replacement)
--------------------------------
Given ordered lists ``added`` (A ids) and ``removed`` (R ids), the new size
is ``m' = m - R + A``.  The new prefix ``[0, m')`` has *holes*: the slots
of removed rows that lie below ``m'`` (in ``removed`` order), followed by
the growth slots ``m .. m'-1``.  The *fillers* are the added rows (in
``added`` order) followed by the kept rows stranded in the tail
``[m', m)`` (in slot order).  Hole ``i`` receives filler ``i``.

Minimum-write argument: every hole is a slot of the new prefix that does not
already hold a row that stays active, so it must be written at least once;
every other prefix slot already holds a kept row and need not be touched.
Each hole receives exactly one row (an addition or a tail row), so the
number of writes is ``#holes = max(A, h)`` where ``h`` is the number of
removed rows whose slot is below ``m'``: if ``m' >= m`` then ``h = R`` and
``#holes = R + (m' - m) = A``; if ``m' < m`` then ``#holes = h`` and the
``h - A >= 0`` kept tail rows plus the ``A`` additions fill them.  No packed
layout can do better.

Hybrid policy: when ``W = #holes`` exceeds ``hybrid_tau_frac * m'`` the
whole prefix is instead rebuilt with the active rows in ascending row-id
order (``m'`` writes), which keeps the block sorted and is cheaper to do as
one contiguous gather when most of the prefix changes anyway.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "UpdateStats",
    "PairedCache",
    "baseline_full_rebuild",
    "min_writes",
]

PATH_NOOP = "noop"
PATH_PAIRED = "paired"
PATH_REBUILD = "rebuild"

IndexList = Union[Sequence[int], np.ndarray]


@dataclass(frozen=True)
class UpdateStats:
    """Summary of one cache update.

    ``added``/``removed`` are the counts A and R, ``rows_written`` the number
    of packed rows written, ``path`` one of ``"noop"``, ``"paired"``,
    ``"rebuild"``, and ``m_before``/``m_after`` the active counts.
    """

    added: int
    removed: int
    rows_written: int
    path: str
    m_before: int
    m_after: int


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _is_float_dtype(dtype: np.dtype) -> bool:
    """True for NumPy floating dtypes (and ml_dtypes' bfloat16 if present)."""
    return bool(np.issubdtype(dtype, np.floating)) or dtype.name == "bfloat16"


def _validate_mask(mask, n: int, name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a fresh 1-D bool array of length ``n`` or raise."""
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise TypeError(f"{name} must have dtype bool, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} must have length {n} (number of neurons), got {arr.shape[0]}")
    return arr.copy()


def _validate_weights(hidden_size, gate, up, down):
    """Validate the weight triple; return ``(gate_or_None, up, down)`` as arrays.

    ``hidden_size=None`` skips the hidden-size check (it is taken from ``down``).
    """
    if hidden_size is not None:
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, numbers.Integral):
            raise TypeError(f"hidden_size must be an integer, got {type(hidden_size).__name__}")
        hidden_size = int(hidden_size)
        if hidden_size < 0:
            raise ValueError(f"hidden_size must be >= 0, got {hidden_size}")

    up = np.asarray(up)
    if not _is_float_dtype(up.dtype):
        raise TypeError(f"up must have a floating dtype, got dtype {up.dtype}")
    if up.ndim != 2:
        raise ValueError(f"up must be 2-D [N, U], got shape {up.shape}")
    n = up.shape[0]

    down = np.asarray(down)
    if not _is_float_dtype(down.dtype):
        raise TypeError(f"down must have a floating dtype, got dtype {down.dtype}")
    if down.ndim != 2 or down.shape[1] != n:
        raise ValueError(f"down must be 2-D [hidden, N={n}], got shape {down.shape}")
    if hidden_size is not None and down.shape[0] != hidden_size:
        raise ValueError(
            f"hidden_size={hidden_size} does not match down.shape[0]={down.shape[0]}"
        )
    if down.dtype != up.dtype:
        raise TypeError(f"down dtype {down.dtype} differs from up dtype {up.dtype}")

    if gate is not None:
        gate = np.asarray(gate)
        if gate.size == 0:
            gate = None  # "no gate"
    if gate is not None:
        if not _is_float_dtype(gate.dtype):
            raise TypeError(f"gate must have a floating dtype, got dtype {gate.dtype}")
        if gate.ndim != 2 or gate.shape[0] != n:
            raise ValueError(f"gate must be 2-D [N={n}, G], got shape {gate.shape}")
        if gate.dtype != up.dtype:
            raise TypeError(f"gate dtype {gate.dtype} differs from up dtype {up.dtype}")
    return gate, up, down


def _validate_tau(value) -> float:
    """Return ``value`` as a finite float >= 0 or raise ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"hybrid_tau_frac must be a finite real number >= 0, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0.0:
        raise ValueError(f"hybrid_tau_frac must be a finite real number >= 0, got {value!r}")
    return value


def _as_index_list(ids, name: str, n: int) -> np.ndarray:
    """Validate a 1-D list of row ids (order kept) and return it as int64."""
    arr = np.asarray(ids)
    if arr.size == 0:
        if arr.ndim > 1:
            raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
        return np.zeros(0, dtype=np.int64)  # empty lists are fine whatever their dtype
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must contain integer row ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = (arr < 0) | (arr >= n)
    if bad.any():
        raise IndexError(f"{name} contains row id {arr[bad][0]} out of range [0, {n})")
    arr = arr.astype(np.int64)
    if np.unique(arr).size != arr.size:
        vals, counts = np.unique(arr, return_counts=True)
        raise ValueError(f"{name} contains duplicate row id {vals[counts > 1][0]}")
    return arr


# --------------------------------------------------------------------------
# independent helpers
# --------------------------------------------------------------------------


def _build_pools(gate: Optional[np.ndarray], up: np.ndarray, down: np.ndarray):
    """Return fresh C-contiguous copies ``(pool_concat [N, G+U], pool_down_t [N, hidden])``."""
    if gate is None:
        pool_concat = np.array(up, order="C", copy=True)
    else:
        pool_concat = np.ascontiguousarray(np.concatenate([gate, up], axis=1))
    pool_down_t = np.array(down.T, order="C", copy=True)
    return pool_concat, pool_down_t


def baseline_full_rebuild(mask, gate, up, down) -> Tuple[np.ndarray, np.ndarray]:
    """Gather all active rows again, ascending: ``(concat [m, G+U], down [hidden, m])``.

    This is the "rebuild everything from scratch" baseline; it shares no
    state with :class:`PairedCache`.
    """
    gate, up, down = _validate_weights(None, gate, up, down)
    mask = _validate_mask(mask, up.shape[0])
    pool_concat, pool_down_t = _build_pools(gate, up, down)
    idx = np.flatnonzero(mask)
    concat = np.take(pool_concat, idx, axis=0)
    down_active = np.ascontiguousarray(np.take(pool_down_t, idx, axis=0).T)
    return concat, down_active


def min_writes(slot_of, m: int, added, removed) -> int:
    """Minimum packed-row writes for an update: ``max(A, h)``.

    ``slot_of`` is the position map *before* the update, ``m`` the active
    count before it, and ``h`` the number of removed rows whose slot is
    below the new size ``m' = m - R + A``.
    """
    slot_of = np.asarray(slot_of)
    a = len(added)
    r = len(removed)
    m_new = m - r + a
    h = sum(1 for row in removed if 0 <= slot_of[int(row)] < m_new)
    return max(a, h)


# --------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------


class PairedCache:
    """Packed FFN weight cache updated by paired replacement.

    ``PairedCache(mask, hidden_size, gate, up, down, *, hybrid_tau_frac=0.5)``
    copies the weights into row pools and loads ``mask`` by a rebuild
    (active rows ascending in slots ``0..m-1``).
    """

    def __init__(self, mask, hidden_size, gate, up, down, *, hybrid_tau_frac: float = 0.5):
        gate, up, down = _validate_weights(hidden_size, gate, up, down)
        n = up.shape[0]
        mask = _validate_mask(mask, n)
        self._tau = _validate_tau(hybrid_tau_frac)

        self.num_neurons = n
        self.hidden_size = int(hidden_size)
        self.gate_size = 0 if gate is None else gate.shape[1]
        self.up_size = up.shape[1]
        self.dtype = up.dtype

        self.pool_concat, self.pool_down_t = _build_pools(gate, up, down)
        self.packed_concat = np.zeros_like(self.pool_concat)
        self.packed_down_t = np.zeros_like(self.pool_down_t)
        self.row_at = np.full(n, -1, dtype=np.int64)
        self.slot_of = np.full(n, -1, dtype=np.int64)

        # Empty cache, then load the initial mask by a rebuild.
        self._mask = np.zeros(n, dtype=np.bool_)
        self._m = 0
        m_new = int(mask.sum())
        self._rebuild(mask, m_new)
        self._mask = mask
        self._m = m_new
        self._last = UpdateStats(added=m_new, removed=0, rows_written=m_new,
                                 path=PATH_REBUILD, m_before=0, m_after=m_new)

    # ---------------------------------------------------------------- props
    @property
    def has_gate(self) -> bool:
        """Whether the pools carry gate columns (``gate_size > 0``)."""
        return self.gate_size > 0

    @property
    def hybrid_tau_frac(self) -> float:
        """Rebuild threshold: rebuild when ``W > hybrid_tau_frac * m'``."""
        return self._tau

    @hybrid_tau_frac.setter
    def hybrid_tau_frac(self, value) -> None:
        self._tau = _validate_tau(value)

    @property
    def num_active(self) -> int:
        """Number of active rows ``m``."""
        return self._m

    @property
    def mask(self) -> np.ndarray:
        """Copy of the current activity mask ``[N]``."""
        return self._mask.copy()

    def active_indices(self) -> np.ndarray:
        """Copy of ``row_at[:m]``: the pool row id held by each slot (int64)."""
        return self.row_at[: self._m].copy()

    def position_map(self) -> np.ndarray:
        """Copy of ``slot_of`` (int64 ``[N]``, ``-1`` for inactive rows)."""
        return self.slot_of.copy()

    def concat_weight(self) -> np.ndarray:
        """Read-only view ``packed_concat[:m]`` (``[m, G+U]``, gate columns first)."""
        view = self.packed_concat[: self._m]
        view.flags.writeable = False
        return view

    def down_weight(self) -> np.ndarray:
        """Read-only view ``packed_down_t[:m].T`` (``[hidden, m]``)."""
        view = self.packed_down_t[: self._m].T
        view.flags.writeable = False
        return view

    def last_update_stats(self) -> UpdateStats:
        """Stats of the most recent update (the initial load counts as a rebuild)."""
        return self._last

    # -------------------------------------------------------------- updates
    def update(self, new_mask) -> UpdateStats:
        """Move to ``new_mask``; added/removed ids are taken in ascending order."""
        new_mask = _validate_mask(new_mask, self.num_neurons)
        added = np.flatnonzero(new_mask & ~self._mask).astype(np.int64)
        removed = np.flatnonzero(self._mask & ~new_mask).astype(np.int64)
        return self._apply(added, removed)

    def update_from_indices(self, added: IndexList, removed: IndexList) -> UpdateStats:
        """Add / remove the given row ids, used in the order given.

        Raises (before changing anything) IndexError for ids outside
        ``[0, N)``, ValueError for duplicates, for adding an active row or
        removing an inactive one, TypeError for non-integer ids.
        """
        n = self.num_neurons
        added = _as_index_list(added, "added", n)
        removed = _as_index_list(removed, "removed", n)
        already = added[self._mask[added]]
        if already.size:
            raise ValueError(f"added contains row id {already[0]} which is already active")
        missing = removed[~self._mask[removed]]
        if missing.size:
            raise ValueError(f"removed contains row id {missing[0]} which is not active")
        return self._apply(added, removed)

    def _apply(self, added: np.ndarray, removed: np.ndarray) -> UpdateStats:
        """The shared update algorithm; inputs are validated ordered id lists."""
        m = self._m
        a, r = len(added), len(removed)
        m_new = m - r + a

        # 1. nothing to do
        if a == 0 and r == 0:
            self._last = UpdateStats(0, 0, 0, PATH_NOOP, m, m)
            return self._last

        new_mask = self._mask.copy()
        new_mask[removed] = False
        new_mask[added] = True

        # 2. holes: removed rows' slots inside the new prefix, then growth slots
        holes = [int(self.slot_of[row]) for row in removed if self.slot_of[row] < m_new]
        holes.extend(range(m, m_new))

        # 3. removed rows become inactive
        self.slot_of[removed] = -1

        # 4. fillers: additions, then kept rows stranded in the tail [m', m)
        fillers = [int(row) for row in added]
        for s in range(m_new, m):
            row = int(self.row_at[s])
            if self.slot_of[row] == s:
                fillers.append(row)

        # 5. one filler per hole
        assert len(holes) == len(fillers), (holes, fillers)
        w = len(holes)

        # 6. hybrid policy
        if w > self._tau * m_new:
            self._rebuild(new_mask, m_new)
            path, written = PATH_REBUILD, m_new
        else:
            for slot, row in zip(holes, fillers):
                self.packed_concat[slot] = self.pool_concat[row]
                self.packed_down_t[slot] = self.pool_down_t[row]
                self.row_at[slot] = row
                self.slot_of[row] = slot
            path, written = PATH_PAIRED, w

        # 7. commit
        self._mask = new_mask
        self._m = m_new
        self._last = UpdateStats(a, r, written, path, m, m_new)
        return self._last

    def _rebuild(self, new_mask: np.ndarray, m_new: int) -> None:
        """Write the active rows of ``new_mask`` ascending into slots ``0..m_new-1``."""
        rows = np.flatnonzero(new_mask)
        assert rows.size == m_new
        self.slot_of[:] = -1
        for slot, row in enumerate(rows):
            self.packed_concat[slot] = self.pool_concat[row]
            self.packed_down_t[slot] = self.pool_down_t[row]
            self.row_at[slot] = row
            self.slot_of[row] = slot
