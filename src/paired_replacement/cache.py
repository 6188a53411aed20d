"""Typed Python wrapper of ``torch.classes.paired.WeightCache``."""

from __future__ import annotations

import os

from collections.abc import Sequence
from typing import Any, NamedTuple

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


def _out_of_range(name: str, position: int, value: int, rows: int) -> IndexError:
    # Same wording as the C++ core's message for an id outside [0, N).
    return IndexError(f"{name}[{position}] = {value} is out of range [0, {rows})")


def _check_fits_int64(array: np.ndarray, name: str, rows: int) -> np.ndarray:
    """Raises IndexError with the real value for ids that do not fit int64 (uint64 >= 2^63, or
    Python ints beyond 64 bits), which a cast to int64 would wrap into negative numbers."""
    if array.dtype == np.uint64:
        too_big = np.flatnonzero(array > np.uint64(_INT64_MAX))
        if too_big.size:
            raise _out_of_range(name, int(too_big[0]), int(array[too_big[0]]), rows)
    elif array.dtype == object:  # NumPy's choice for Python ints beyond 64 bits
        for i, value in enumerate(array):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must hold integer row ids, got {type(value).__name__} "
                                f"{value!r} at position {i}")
            if not 0 <= int(value) <= _INT64_MAX:
                raise _out_of_range(name, i, int(value), rows)
        return array.astype(np.int64)
    return array


def _as_indices(values: IndexLike, name: str, rows: int) -> torch.Tensor:
    """1-D int64 CPU tensor of row ids; rejects scalars, bool and floating input by name.

    An empty Python sequence is fine (it has no dtype); an empty float array or tensor is refused
    like a non-empty one, from NumPy and from torch alike.
    """
    if isinstance(values, torch.Tensor):
        t = values
        if t.dtype == torch.uint64 and t.layout == torch.strided and t.device.type == "cpu":
            t = torch.from_numpy(_check_fits_int64(t.numpy(), name, rows).astype(np.int64))
    else:
        if isinstance(values, np.ndarray):
            array = values
        else:
            array = np.asarray(values)
            if array.size == 0 and array.dtype == np.float64:  # [] or (): no dtype was given
                array = array.astype(np.int64)
        if array.ndim != 1:
            raise ValueError(f"{name} must be 1-D (a sequence of row ids), got shape {array.shape}")
        if array.dtype != object and (array.dtype == np.bool_ or
                                      not np.issubdtype(array.dtype, np.integer)):
            raise TypeError(f"{name} must hold integer row ids, got dtype {array.dtype}")
        array = _check_fits_int64(array, name, rows)
        t = torch.from_numpy(np.ascontiguousarray(array))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(f"{name} must hold integer row ids, got dtype {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {t.layout}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64).contiguous()


class UpdateWork(NamedTuple):
    """Work of the last update besides its row copies (counted, not timed)."""

    mask_words_scanned: int  # 64-bit words of the mask read (N/64 per mask diff or rebuild scan)
    copy_tasks: int  # parallel tasks that copied rows (1: the calling thread alone)
    slow_bytes_read: int = 0  # bytes read from a slower tier (a pool file); 0 for the DRAM pool


#: hybrid_tau_frac of a cache on a pool file unless given: never rebuild (see from_pool_file)
FILE_TIER_TAU = 2.0


class TierInfo(NamedTuple):
    """Where a cache's pool lives (see :meth:`WeightCache.from_pool_file`)."""

    tier: str  # "dram" (the cache's own pool in memory) or "file" (a pool file on disk)
    path: str  # the pool file ("" for dram)
    direct_io: bool  # the file is read with O_DIRECT (no page cache); False: buffered + dropped
    queue_depth: int  # reads in flight at once (threads of the file reader)
    bytes_read: int  # bytes read from the file since the cache was built
    #: records read straight into their packed slots (no staging copy: file_pool.hpp F5)
    scatter_reads: int = 0
    #: reads issued; records of consecutive rows are read together (file_pool.hpp F6)
    reads: int = 0
    #: who issues the reads (file_pool.hpp F7): "linux-aio" (from the updating thread) or
    #: "threads" (the reader threads; PAIRED_REPLACEMENT_IO_ENGINE=threads asks for them)
    io_engine: str = ""


class SingleOwner:
    """Refuses copy, deepcopy and pickle with a clear TypeError naming the class: a cache wrapper
    owns one native cache (a copy would share it, and the two would race), and a pickle could
    not hold its pools. Subclasses name what to do instead in ``_COPY_HINT``."""

    _COPY_HINT = "build a new one from the weights, or use snapshot() for a copy of the block"

    def __copy__(self) -> Any:
        raise TypeError(f"a {type(self).__name__} cannot be copied (two wrappers would share one "
                        f"cache): {self._COPY_HINT}")

    def __deepcopy__(self, memo: dict) -> Any:
        raise TypeError(f"a {type(self).__name__} cannot be deep-copied: {self._COPY_HINT}")

    def __reduce__(self) -> Any:
        raise TypeError(f"a {type(self).__name__} cannot be pickled: save the weights and the "
                        "mask instead")


class WeightCache(SingleOwner):
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
    that changes ``num_active``. The views are **read-only by contract**: the cache never reads the
    packed block back, so a write into a view stays in that slot until an update rewrites it (a
    corruption that :meth:`check_invariants` reports). All weights are float32, float16 or
    bfloat16, contiguous, on the CPU; ``gate_weight`` and ``up_weight`` are [N, hidden_size].

    Not thread-safe: use one cache per thread (or a lock). Two threads calling one cache at once
    get ``RuntimeError`` ("... being updated by another thread") and the cache stays valid; several
    threads may read (getters) at once while no update runs. A cache cannot be copied or pickled
    (``copy.copy``, ``copy.deepcopy`` and ``pickle`` raise ``TypeError``): build a new one from the
    weights, or take :meth:`snapshot` copies of the block.
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
        # Explicit settings go to the constructor, which then does not read their environment
        # variables (a malformed WEIGHT_CACHE_GRAIN cannot block grain=...).
        self._cache: Any = torch.classes.paired.WeightCache(
            _as_mask(mask), _as_int(hidden_size, "hidden_size"), gate, up_weight, down_weight, True,
            None if grain is None else _as_int(grain, "grain"),
            None if par_threshold is None else _as_int(par_threshold, "par_threshold"),
            None if hybrid_tau_frac is None else _as_float(hybrid_tau_frac, "hybrid_tau_frac"),
        )
        self._bind(int(up_weight.shape[0]))

    def _bind(self, rows: int) -> None:
        self._rows = rows
        # Bound once: looking a method up on a ScriptObject costs about a microsecond per call.
        self._update_mask = self._cache.update_active_weights
        self._update_indices = self._cache.update_from_indices

    @classmethod
    def from_pool_file(
        cls,
        path: str | os.PathLike,
        mask: MaskLike,
        *,
        queue_depth: int = 16,
        grain: int | None = None,
        par_threshold: int | None = None,
        hybrid_tau_frac: float | None = None,
    ) -> "WeightCache":
        """A cache whose pool is a pool file (:mod:`paired_replacement.pool_file`): the full
        weights stay on disk and each update reads exactly the rows it writes, with direct I/O
        (``O_DIRECT``; where the file system refuses it, buffered reads whose pages are dropped
        at once -- :attr:`tier_info` says which), ``queue_depth`` reads in flight: Linux native
        AIO requests issued by the updating thread, or reader threads where AIO cannot run
        (``tier_info.io_engine``; ``PAIRED_REPLACEMENT_IO_ENGINE=threads`` asks for them).
        Records of consecutive rows are read together. Only the packed rows are in memory: :meth:`pool_concat_weight` / :meth:`pool_down_weight_t` raise.
        ``last_update_work().slow_bytes_read`` counts the bytes each update read. A read error
        raises RuntimeError and leaves the cache with no active row (update again to reload).

        ``hybrid_tau_frac`` defaults to 2 here (never rebuild), not to the in-memory default: a
        rebuild reads all m' active records again, the paired update only the W <= m' it writes,
        so on a slow tier the rebuild never pays.
        """
        load_extension()
        self = cls.__new__(cls)
        self._cache = torch.classes.paired.WeightCache.from_pool_file(
            os.fspath(path), _as_mask(mask), _as_int(queue_depth, "queue_depth"),
            None if grain is None else _as_int(grain, "grain"),
            None if par_threshold is None else _as_int(par_threshold, "par_threshold"),
            FILE_TIER_TAU if hybrid_tau_frac is None else _as_float(hybrid_tau_frac,
                                                                    "hybrid_tau_frac"),
        )
        self._bind(int(self._cache.position_map().shape[0]))
        return self

    @property
    def tier_info(self) -> TierInfo:
        """Where the pool lives: "dram" or a pool "file" (path, direct I/O, queue depth, bytes)."""
        return TierInfo(*self._cache.tier_info())

    # ---- updates ----
    def update_active_weights(self, mask: MaskLike) -> None:
        """Make the active set equal ``mask`` (bool [N]); rewrites only the rows that must change."""
        if type(mask) is torch.Tensor:  # fast path; the C++ side checks everything about it
            self._update_mask(mask)
        else:
            self._update_mask(_as_mask(mask))

    def update_from_indices(self, added: IndexLike, removed: IndexLike) -> None:
        """Activate ``added`` and deactivate ``removed`` (row ids) in O(len(added) + len(removed)).

        Raises IndexError for an id outside [0, N) and ValueError for a duplicate, an added row that
        is already active or a removed row that is not; the cache is then unchanged. int64 CPU
        tensors are passed on as they are (the fastest way to call this); anything else is
        converted first.
        """
        if (type(added) is torch.Tensor and added.dtype is torch.int64
                and type(removed) is torch.Tensor and removed.dtype is torch.int64):
            self._update_indices(added, removed)  # the C++ side checks layout, device, shape
        else:
            self._update_indices(_as_indices(added, "added", self._rows),
                                 _as_indices(removed, "removed", self._rows))

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
        """A, R, rows written (per buffer) and path ("noop", "paired", "rebuild") of the last update.

        ``rows_written`` is W = max(A, h) on the paired path and m' on a hybrid rebuild.
        """
        added, removed, rows_written, path, m_before, m_after = self._cache.last_update_stats()
        return UpdateStats(added, removed, rows_written, path, m_before, m_after)

    def last_update_work(self) -> UpdateWork:
        """Mask words read and parallel copy tasks of the last update (see :class:`UpdateWork`)."""
        return UpdateWork(*self._cache.last_update_work())

    def pool_concat_weight(self) -> torch.Tensor:
        """[N, G+U] pool the cache gathers from (read-only; writing to it corrupts the cache)."""
        return self._cache.pool_concat_weight()

    def pool_down_weight_t(self) -> torch.Tensor:
        """[N, H] transposed down pool (read-only; writing to it corrupts the cache)."""
        return self._cache.pool_down_weight_t()

    def check_invariants(self) -> None:
        """O(N·row bytes) self-check of the bookkeeping and packed rows; raises RuntimeError.

        It also catches a write into a view: every packed row must equal its pool row.
        """
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
        block, down = self._cache.get_concat_weight(), self._cache.get_active_down_weight()
        tier = self.tier_info
        where = "" if tier.tier == "dram" else f", pool file {tier.path!r}"
        return (
            f"WeightCache(N={self._rows}, concat_cols={block.shape[1]}, hidden={down.shape[0]}, "
            f"dtype={block.dtype}, m={self.num_active}{where})"
        )
