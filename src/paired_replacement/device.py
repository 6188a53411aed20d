"""Device-resident packed block: the core's bookkeeping, a mover that copies only changed rows.

:class:`DeviceWeightCache` keeps the packed block (gate|up rows and the transposed down rows of the
active neurons) on a device -- a CUDA GPU, or ``"cpu"``, the host backend the CPU tests drive --
and its pools either in pinned host memory (``pool="pinned"``, the offloaded case) or on the
device too (``pool="device"``).

The bookkeeping (mask diff, holes, fillers, the slot of each row) is **not** reimplemented here: a
plain :class:`~paired_replacement.cache.WeightCache` over tiny dummy pools (one float16 column per
row) decides the new slot -> row map, and the mover executes that plan. After an update the slots
whose row changed (``s >= m_old`` or ``row_at_new[s] != row_at_old[s]``) are exactly the slots that
must be rewritten: on the core's paired path they are its ``W = max(A, h)`` holes, on its rebuild
path they can only be fewer than ``m'``. Only those rows move:

* pinned pool: ``index_select(pool, rows, out=host_stage)`` on the host, one non-blocking copy of
  the staged rows to a device staging buffer, ``packed.index_copy_(0, slots, dev_stage)``;
* device pool: ``index_select(pool, rows, out=dev_stage)`` and the same ``index_copy_``.

Every row-sized buffer (pools, packed block, host and device staging, the index buffers) is
allocated once in the constructor; an update allocates no row-sized memory (only small host index
tensors of the diff). On CUDA the copies are queued, not waited for: the update records
:attr:`ready_event`, :meth:`wait` makes the current stream wait for it (the getters call it first
unless given ``wait=False``) and :meth:`synchronize` blocks the host. The next update blocks the
host only until this one's host -> device copies are done (it reuses the host staging buffers).
With ``stream=True`` the copies run on a side stream, so they can overlap compute queued after the
update: the staging copies start at once, and the side stream waits for the work already queued on
the caller's stream (which may still read the block) just before its first write into the block.

The default ``hybrid_tau_frac`` is 2 (never rebuild): over PCIe the paired update always moves
fewer bytes than re-sending the whole active set.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, NamedTuple

import numpy as np
import torch

from ._extension import load_extension
from .cache import (DTYPES, IndexLike, MaskLike, SingleOwner, WeightCache, _as_int,
                    _as_tensor)
from .reference import UpdateStats

#: hybrid_tau_frac of a DeviceWeightCache unless given: never rebuild (see the module doc)
DEVICE_TAU = 2.0

POOL_KINDS = ("pinned", "device")

_BITS = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


class DeviceUpdateWork(NamedTuple):
    """What the mover did in the last update (counted, not timed)."""

    rows_moved: int  # slots rewritten in each packed buffer (gate|up and down^T)
    bytes_h2d: int  # row bytes copied host -> device (pinned pool: rows_moved * row bytes; else 0)
    bytes_written: int  # bytes written into the packed block (both buffers)
    index_bytes_h2d: int  # bytes of the slot and row ids copied to the device (int64)
    core_rows_written: int  # rows the core's plan wrote in its own (dummy) block: W or m'
    chunks: int  # staging rounds (1 unless rows_moved > staging_rows; 0 with nothing to move)
    asynchronous: bool  # the copies were queued on a side stream (wait() before reading)


def _parse_device(device: Any) -> torch.device:
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError as e:
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>', got {device!r} "
                             f"({e})") from None
    else:
        raise TypeError(f"device must be a str or torch.device, got {type(device).__name__} "
                        f"{device!r}")
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"device must be 'cpu' or a CUDA device, got {str(dev)!r}")
    if not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r} is not available: torch.cuda.is_available() is "
                         f"False (torch {torch.__version__}, CUDA {torch.version.cuda})")
    index = torch.cuda.current_device() if dev.index is None else dev.index
    if not 0 <= index < torch.cuda.device_count():
        raise ValueError(f"device {str(dev)!r} does not exist: {torch.cuda.device_count()} CUDA "
                         "device(s) visible")
    return torch.device("cuda", index)


def _check_weight(w: torch.Tensor, name: str, dtype: torch.dtype | None) -> None:
    if w.layout != torch.strided or w.is_nested:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {w.layout}")
    if w.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {list(w.shape)}")
    if dtype is None:
        if w.dtype not in DTYPES.values():
            raise TypeError(f"{name} must be float32, float16 or bfloat16, got {w.dtype}")
    elif w.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like up_weight, got {w.dtype}")
    if w.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on the CPU or a CUDA device, got {w.device}")


def _host_tensor(value: Any) -> Any:
    """A CUDA tensor (mask or index list) is copied to the host (a synchronizing copy)."""
    if isinstance(value, torch.Tensor) and value.device.type == "cuda":
        return value.cpu()
    return value


class DeviceWeightCache(SingleOwner):
    """Packed block of the active rows on ``device``, updated by moving only the changed rows.

    Args:
        mask: bool [N] on the CPU (a CUDA mask is copied to the host first), the initial active set.
        hidden_size: H, the rows of ``down_weight``.
        gate_weight: [N, H], or None / ``torch.empty(0)`` for an FFN without gate.
        up_weight: [N, H].
        down_weight: [H, N] (stored transposed, returned as a transposed view like WeightCache).
        device: ``"cuda"``, ``"cuda:<i>"`` or ``"cpu"`` (the host backend: same code, synchronous).
        pool: ``"pinned"`` (pools in pinned host memory; plain host memory when device is the CPU)
            or ``"device"`` (pools on the device).
        stream: None/False (copies on the current stream), True (a new side stream) or a
            ``torch.cuda.Stream``; CUDA only.
        hybrid_tau_frac: the core's hybrid rule (default 2: never rebuild).
        staging_rows: rows of the staging buffers (default N: one round per update); an update
            that moves more rows stages them in rounds of this many.

    The weights (float32, float16 or bfloat16, any layout, on the CPU or a CUDA device) are copied
    into the cache's own pools. The getters return views of the live packed block (read-only by
    contract, as for WeightCache). Not thread-safe: a second thread calling an update while one
    runs gets RuntimeError and the cache stays valid.
    """

    def __init__(
        self,
        mask: MaskLike,
        hidden_size: int,
        gate_weight: torch.Tensor | None,
        up_weight: torch.Tensor,
        down_weight: torch.Tensor,
        *,
        device: str | torch.device,
        pool: str = "pinned",
        stream: Any = None,
        hybrid_tau_frac: float | None = None,
        staging_rows: int | None = None,
    ) -> None:
        load_extension()
        dev = _parse_device(device)
        if pool not in POOL_KINDS:
            raise ValueError(f"pool must be 'pinned' or 'device', got {pool!r}")
        side: Any = None
        if stream is not None and stream is not False:
            if dev.type != "cuda":
                raise ValueError(f"stream= needs a CUDA device (device is {dev}); pass stream=None")
            if stream is True:
                side = torch.cuda.Stream(device=dev)
            elif isinstance(stream, torch.cuda.Stream):
                if stream.device != dev:
                    raise ValueError(f"stream is on {stream.device}, the cache on {dev}")
                side = stream
            else:
                raise TypeError(f"stream must be None, True or a torch.cuda.Stream, got "
                                f"{type(stream).__name__}")

        # ---- the weights (checked like the binding checks WeightCache's) ----
        up = _as_tensor(up_weight, "up_weight")
        down = _as_tensor(down_weight, "down_weight")
        hidden = _as_int(hidden_size, "hidden_size")
        _check_weight(up, "up_weight", None)
        dtype = up.dtype
        n = int(up.shape[0])
        if n < 1:
            raise ValueError("up_weight must have at least one row (N >= 1)")
        if hidden < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden}")
        if up.shape[1] != hidden:
            raise ValueError(f"up_weight must have shape [N, hidden_size] = [{n}, {hidden}], got "
                             f"{list(up.shape)}")
        _check_weight(down, "down_weight", dtype)
        if tuple(down.shape) != (hidden, n):
            raise ValueError(f"down_weight must have shape [hidden_size, N] = [{hidden}, {n}], got "
                             f"{list(down.shape)}")
        gate = None
        if gate_weight is not None:
            gate = _as_tensor(gate_weight, "gate_weight")
            if gate.dim() == 1 and gate.shape[0] == 0:  # the seed's "no gate" placeholder
                if not gate.is_floating_point():
                    raise TypeError("gate_weight: an empty gate (no gate) must be a floating "
                                    f"tensor like torch.empty(0), got dtype {gate.dtype}")
                gate = None
            else:
                if gate.layout == torch.strided and gate.dim() != 2:
                    raise ValueError("gate_weight must be 2-D [N, hidden_size], or torch.empty(0) "
                                     f"for no gate, got shape {list(gate.shape)}")
                _check_weight(gate, "gate_weight", dtype)
                if tuple(gate.shape) != (n, hidden):
                    raise ValueError(f"gate_weight must have shape [N, hidden_size] = [{n}, "
                                     f"{hidden}] like up_weight (or be torch.empty(0) for no "
                                     f"gate), got {list(gate.shape)}")
        c_rows = n if staging_rows is None else _as_int(staging_rows, "staging_rows")
        if not 1 <= c_rows <= n:
            raise ValueError(f"staging_rows must be in [1, N] = [1, {n}], got {c_rows}")

        # ---- the bookkeeper: the core over one float16 column per row; it checks mask and tau ----
        self._bk = WeightCache(
            _host_tensor(mask), 1, None, torch.zeros(n, 1, dtype=torch.float16),
            torch.zeros(1, n, dtype=torch.float16), grain=64, par_threshold=n + 1,
            hybrid_tau_frac=DEVICE_TAU if hybrid_tau_frac is None else hybrid_tau_frac,
        )

        self._rows = n
        self._hidden = hidden
        self._gate_cols = 0 if gate is None else hidden
        self._cols = self._gate_cols + hidden
        self._dtype = dtype
        self._device = dev
        self._pool_kind = pool
        self._side = side
        self._cuda = dev.type == "cuda"
        self._staging_rows = c_rows
        self._row_bytes = (self._cols + hidden) * up.element_size()  # one slot, both buffers
        pin = self._cuda  # pinned host memory only makes sense (and only exists) with CUDA
        host = torch.device("cpu")

        # ---- pools (written once) ----
        pool_dev = host if pool == "pinned" else dev
        pool_pin = pin and pool == "pinned"
        self._pool_cat = torch.empty(n, self._cols, dtype=dtype, device=pool_dev,
                                     pin_memory=pool_pin)
        if gate is not None:
            self._pool_cat[:, :hidden].copy_(gate)
        self._pool_cat[:, self._gate_cols:].copy_(up)
        self._pool_down = torch.empty(n, hidden, dtype=dtype, device=pool_dev, pin_memory=pool_pin)
        self._pool_down.copy_(down.t())

        # ---- the packed block and the staging / index buffers (capacity N, allocated once) ----
        self._packed_cat = torch.zeros(n, self._cols, dtype=dtype, device=dev)
        self._packed_down = torch.zeros(n, hidden, dtype=dtype, device=dev)
        self._dev_stage_cat = torch.empty(c_rows, self._cols, dtype=dtype, device=dev)
        self._dev_stage_down = torch.empty(c_rows, hidden, dtype=dtype, device=dev)
        if pool == "pinned":
            self._host_stage_cat = torch.empty(c_rows, self._cols, dtype=dtype, pin_memory=pin)
            self._host_stage_down = torch.empty(c_rows, hidden, dtype=dtype, pin_memory=pin)
        else:
            self._host_stage_cat = self._host_stage_down = None
        # slots [0, W) then rows [W, 2W) of one update; copied to the device in one piece
        self._idx_host = torch.empty(2 * n, dtype=torch.int64, pin_memory=pin)
        self._idx_dev = torch.empty(2 * n, dtype=torch.int64, device=dev)
        self._row_at = torch.empty(n, dtype=torch.int64)  # slot -> row the packed block holds
        self._row_at_np = self._row_at.numpy()
        self._idx_host_np = self._idx_host.numpy()
        self._m = 0
        self._dirty = False  # a failed move: the next update rewrites every slot
        self._lock = threading.Lock()
        if self._cuda:
            self._h2d_event = torch.cuda.Event()  # host buffers may be reused once it completes
            self._ready_event = torch.cuda.Event()  # the packed block is written once it completes
        else:
            self._h2d_event = self._ready_event = None
        self._recorded = False
        if side is not None:
            # buffers written on the side stream: freeing them waits for its queued work
            on_device = [self._packed_cat, self._packed_down, self._dev_stage_cat,
                         self._dev_stage_down, self._idx_dev]
            if pool == "device":
                on_device += [self._pool_cat, self._pool_down]
            for t in on_device:
                t.record_stream(side)
        self._moved = (0, 0)  # (rows, staging rounds) of the last update
        self._move()

    # ---- updates ----
    def update_active_weights(self, mask: MaskLike) -> None:
        """Make the active set equal ``mask`` (bool [N]); moves only the slots whose row changed.

        The mask is checked by the bookkeeper first: a bad mask raises before anything moves.
        """
        self._update("update_active_weights", self._bk.update_active_weights, _host_tensor(mask))

    def update_from_indices(self, added: IndexLike, removed: IndexLike) -> None:
        """Activate ``added`` and deactivate ``removed`` (row ids); errors as WeightCache's."""
        self._update("update_from_indices", self._bk.update_from_indices, _host_tensor(added),
                     _host_tensor(removed))

    def _update(self, method: str, plan: Any, *args: Any) -> None:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError(
                f"DeviceWeightCache.{method}: the cache is being updated by another thread. A "
                "DeviceWeightCache is not thread-safe: use one per thread, or hold a lock around "
                "every call to it.")
        try:
            plan(*args)  # validates; raises with the state unchanged
            self._move()
        finally:
            self._lock.release()

    def _move(self) -> None:
        """Rewrite the slots whose row changed in the bookkeeper's last update."""
        new = self._bk.active_indices().numpy()
        m_old, m_new = (0 if self._dirty else self._m), int(new.shape[0])
        common = min(m_old, m_new)
        slots = np.flatnonzero(new[:common] != self._row_at_np[:common])
        if m_new > m_old:
            slots = np.concatenate([slots, np.arange(m_old, m_new, dtype=np.int64)])
        w = int(slots.shape[0])
        self._moved = (0, 0)
        try:
            if w:
                self._moved = (w, self._copy_rows(new, slots, w))
        except BaseException as e:
            # The slot map follows the bookkeeper (already updated); the block may be partly
            # written: check_invariants says so and the next update rewrites every slot.
            self._dirty = True
            if hasattr(e, "add_note"):
                e.add_note("DeviceWeightCache: the packed block may be partly written; the next "
                           "update rewrites every active slot")
            raise
        finally:
            self._row_at_np[:m_new] = new
            self._m = m_new
        self._dirty = False

    def _copy_rows(self, new: np.ndarray, slots: np.ndarray, w: int) -> int:
        cuda = self._cuda
        if cuda and self._recorded:
            # The previous update's host -> device copies read the host index/staging buffers.
            self._h2d_event.synchronize()
        idx_np = self._idx_host_np
        idx_np[:w] = slots  # slots [0, w), then their rows [w, 2w)
        np.take(new, slots, out=idx_np[w:2 * w])
        idx_host = self._idx_host
        pinned = self._pool_kind == "pinned"
        n_idx = w if pinned else 2 * w  # the device needs the slots (and, for a device pool, rows)
        side = self._side
        if cuda:
            caller = torch.cuda.current_stream(self._device)
            stream = side if side is not None else caller
            ctx: Any = torch.cuda.stream(stream)
        else:
            caller = stream = None
            ctx = contextlib.nullcontext()
        chunk = self._staging_rows
        rounds = 0
        with ctx:
            idx_dev = self._idx_dev
            idx_dev[:n_idx].copy_(idx_host[:n_idx], non_blocking=True)
            if cuda and not pinned:
                self._h2d_event.record(stream)  # the host index buffer may be reused after it
            for c0 in range(0, w, chunk):
                c1 = min(w, c0 + chunk)
                k = c1 - c0
                stage_cat, stage_down = self._dev_stage_cat[:k], self._dev_stage_down[:k]
                if pinned:
                    if cuda and rounds:
                        self._h2d_event.synchronize()  # the last round's copy read host_stage
                    host_cat, host_down = self._host_stage_cat[:k], self._host_stage_down[:k]
                    rows = idx_host[w + c0:w + c1]
                    torch.index_select(self._pool_cat, 0, rows, out=host_cat)
                    torch.index_select(self._pool_down, 0, rows, out=host_down)
                    stage_cat.copy_(host_cat, non_blocking=True)
                    stage_down.copy_(host_down, non_blocking=True)
                    if cuda:
                        self._h2d_event.record(stream)
                else:
                    rows = idx_dev[w + c0:w + c1]
                    torch.index_select(self._pool_cat, 0, rows, out=stage_cat)
                    torch.index_select(self._pool_down, 0, rows, out=stage_down)
                if side is not None and not rounds:
                    # Only the packed block is shared with the caller's work (which may still
                    # read it): the side stream waits for that work just before the first write,
                    # so the staging copies above may overlap it.
                    side.wait_stream(caller)
                dst = idx_dev[c0:c1]
                self._packed_cat.index_copy_(0, dst, stage_cat)
                self._packed_down.index_copy_(0, dst, stage_down)
                rounds += 1
            if cuda:
                self._ready_event.record(stream)
                self._recorded = True
        return rounds

    # ---- synchronisation ----
    @property
    def ready_event(self) -> Any:
        """The CUDA event the last update recorded after its copies (re-recorded by each update);
        None on the CPU or before any update on CUDA."""
        return self._ready_event if self._recorded else None

    def wait(self, stream: Any = None) -> None:
        """Make ``stream`` (default: the current stream) wait for the last update's copies; the
        host does not block. A no-op on the CPU (where updates are synchronous)."""
        if self._recorded:
            (stream or torch.cuda.current_stream(self._device)).wait_event(self._ready_event)

    def synchronize(self) -> None:
        """Block the host until the last update's copies have completed (no-op on the CPU)."""
        if self._recorded:
            self._ready_event.synchronize()

    # ---- getters (same shapes and order as WeightCache's) ----
    def get_concat_weight(self, copy: bool = False, wait: bool = True) -> torch.Tensor:
        """[m, G+U] on the device: the active gate rows' columns, then the up rows' (a live view)."""
        if wait:
            self.wait()
        w = self._packed_cat[:self._m]
        return w.clone() if copy else w

    def get_active_down_weight(self, copy: bool = False, wait: bool = True) -> torch.Tensor:
        """[H, m] on the device: the active columns of down, a transposed view of the packed rows."""
        if wait:
            self.wait()
        w = self._packed_down[:self._m].t()
        return w.clone() if copy else w

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of (concat weight, down weight) that later updates do not change."""
        return self.get_concat_weight(copy=True), self.get_active_down_weight(copy=True)

    def get_num_active(self) -> int:
        return self._m

    @property
    def num_active(self) -> int:
        return self._m

    # ---- introspection ----
    def active_indices(self) -> torch.Tensor:
        """int64 [m] on the CPU: the row id stored at each slot of the packed block."""
        return self._row_at[:self._m].clone()

    def position_map(self) -> torch.Tensor:
        """int64 [N] on the CPU: slot of each row, -1 for inactive rows."""
        return self._bk.position_map()

    @property
    def mask(self) -> torch.Tensor:
        """bool [N] on the CPU: a copy of the current active set."""
        return self._bk.mask

    def last_update_stats(self) -> UpdateStats:
        """A, R, rows moved (per buffer), the core's path and m before/after of the last update.

        ``rows_written`` is the rows this cache moved: the core's W on the paired path, at most m'
        on its rebuild path (only the slots whose row changed are rewritten).
        """
        s = self._bk.last_update_stats()
        return UpdateStats(s.added, s.removed, self._moved[0], s.path, s.m_before, s.m_after)

    def last_update_work(self) -> DeviceUpdateWork:
        """Rows and bytes the last update moved (see :class:`DeviceUpdateWork`)."""
        w, rounds = self._moved
        pinned = self._pool_kind == "pinned"
        return DeviceUpdateWork(
            rows_moved=w,
            bytes_h2d=w * self._row_bytes if pinned else 0,
            bytes_written=w * self._row_bytes,
            index_bytes_h2d=(w if pinned else 2 * w) * 8,
            core_rows_written=int(self._bk.last_update_stats().rows_written),
            chunks=rounds,
            asynchronous=self._side is not None and w > 0,
        )

    def pool_concat_weight(self) -> torch.Tensor:
        """[N, G+U] pool (pinned host or device; read-only: writing to it corrupts the cache)."""
        return self._pool_cat

    def pool_down_weight_t(self) -> torch.Tensor:
        """[N, H] transposed down pool (read-only: writing to it corrupts the cache)."""
        return self._pool_down

    def buffers(self) -> dict[str, torch.Tensor]:
        """Every preallocated buffer by name (for checks that updates allocate none)."""
        out = {"pool_cat": self._pool_cat, "pool_down": self._pool_down,
               "packed_cat": self._packed_cat, "packed_down": self._packed_down,
               "dev_stage_cat": self._dev_stage_cat, "dev_stage_down": self._dev_stage_down,
               "idx_host": self._idx_host, "idx_dev": self._idx_dev, "row_at": self._row_at}
        if self._host_stage_cat is not None:
            out["host_stage_cat"] = self._host_stage_cat
            out["host_stage_down"] = self._host_stage_down
        return out

    def check_invariants(self, chunk_rows: int = 1024) -> None:
        """Bookkeeping and packed rows (bit for bit, on the device); raises RuntimeError naming the
        first bad slot. Blocks the host until the last update's copies are done."""
        self.synchronize()
        self._bk.check_invariants()
        if self._dirty:
            raise RuntimeError("DeviceWeightCache: a failed update left the packed block partly "
                               "written (the next update rewrites it)")
        m = self._m
        expected = self._bk.active_indices()
        if expected.numel() != m or not torch.equal(expected, self._row_at[:m]):
            raise RuntimeError(f"DeviceWeightCache: the slot map ({m} slots) differs from the "
                               f"bookkeeper's ({expected.numel()} slots)")
        bits = _BITS[self._dtype]
        for name, packed, pool in (("gate|up", self._packed_cat, self._pool_cat),
                                   ("down", self._packed_down, self._pool_down)):
            for c0 in range(0, m, chunk_rows):
                c1 = min(m, c0 + chunk_rows)
                rows = self._row_at[c0:c1]
                want = pool.index_select(0, rows.to(pool.device)).to(self._device)
                bad = (packed[c0:c1].view(bits) != want.view(bits)).any(1).nonzero()
                if bad.numel():
                    s = c0 + int(bad[0, 0])
                    raise RuntimeError(
                        f"DeviceWeightCache: packed {name} row at slot {s} differs from pool row "
                        f"{int(self._row_at[s])} (a write into a view returned by a getter?)")

    # ---- settings and description ----
    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def pool(self) -> str:
        """Where the pools live: "pinned" (host) or "device"."""
        return self._pool_kind

    @property
    def stream(self) -> Any:
        """The side stream the copies run on, or None (the current stream)."""
        return self._side

    @property
    def staging_rows(self) -> int:
        return self._staging_rows

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def bookkeeper(self) -> WeightCache:
        """The core cache (over dummy one-column pools) whose slot plan the mover executes."""
        return self._bk

    @property
    def hybrid_tau_frac(self) -> float:
        return self._bk.hybrid_tau_frac

    @hybrid_tau_frac.setter
    def hybrid_tau_frac(self, value: float) -> None:
        self._bk.hybrid_tau_frac = value

    def __repr__(self) -> str:
        return (f"DeviceWeightCache(N={self._rows}, concat_cols={self._cols}, "
                f"hidden={self._hidden}, dtype={self._dtype}, m={self._m}, device={self._device}, "
                f"pool={self._pool_kind!r}, stream={'side' if self._side is not None else None})")
