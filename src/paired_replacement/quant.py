"""int8 rows with per-row scales: a quantised weight cache whose scales move with their rows.

Symmetric per-row quantisation (:func:`quantize_rows`): a row ``w`` gets the float32 scale
``s = max|w| / 127`` and the int8 values ``q = clamp(round(w / s), -127, 127)`` (round half to
even), so ``|w - q * s| <= s / 2`` element by element. A row whose ``max|w|`` is 0 (or so small
that ``max|w| / 127`` underflows to 0 in float32) gets ``s = 0`` and ``q = 0``: it dequantises to
exact zeros. Non-finite weights are refused (ValueError naming the tensor and the element).

The neuron's three rows -- its gate row, its up row and its column of down (a row of down^T) --
are quantised separately, each with its own scale, and each is stored as its int8 values
followed by the 4 bytes of its float32 scale, in the same row. The C++ core (which copies rows of
bytes and never looks inside them) then sees byte rows

    gate|up: [gate q (G) | gate scale | up q (U) | up scale]    (no gate: [up q | up scale])
    down^T:  [down q (H) | down scale]

and moves a scale by the very copy that moves its values: the two cannot get out of step. G, U
and H must be multiples of 4, so that every scale is 4-byte aligned in the packed block and the
views below are plain strided float32 views (no copy).

:class:`QuantizedWeightCache` has the API of :class:`~paired_replacement.cache.WeightCache`
(updates, introspection, settings, the file tier); its getters return typed views of the live
packed block (:class:`QuantizedRows`), and :meth:`QuantizedWeightCache.ffn` computes the sparse
FFN of the active rows, dequantising on the fly. Its pools and packed block take ``H + 4`` bytes
per row instead of ``4 H`` (float32): about a quarter.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

from ._extension import load_extension
from .cache import (FILE_TIER_TAU, IndexLike, MaskLike, SingleOwner, TierInfo, UpdateWork,
                    WeightCache, _as_float, _as_int, _as_mask, _as_tensor)
from .reference import UpdateStats

#: bytes of the float32 scale stored after each int8 row
SCALE_BYTES = 4
#: largest |q|: the symmetric range [-127, 127] (-128 is never used)
QMAX = 127
#: weight dtypes the quantised cache takes (quantize_rows also takes float64)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _check_float_matrix(w: Any, name: str, dtypes=FLOAT_DTYPES + (torch.float64,)) -> torch.Tensor:
    w = _as_tensor(w, name)
    if w.dtype not in dtypes:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{name} must be {allowed}, got {w.dtype}")
    if w.layout != torch.strided:
        raise ValueError(f"{name} must be a dense (strided) tensor, got layout {w.layout}")
    if w.dim() != 2:
        raise ValueError(f"{name} must be 2-D, got shape {tuple(w.shape)}")
    return w


def _check_finite(w: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(w)
    if bool(bad.any()):
        r, c = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has a non-finite value ({float(w[r, c])}) at [{r}, {c}]: "
                         f"int8 quantisation needs finite weights")


def quantize_rows(w: torch.Tensor, name: str = "w") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8 quantisation of ``w`` [R, C] (float32/16, bfloat16 or float64).

    Returns ``(q, scale)``: int8 [R, C] and float32 [R] with ``scale = max|row| / 127`` and
    ``q = clamp(round(row / scale), -127, 127)``, computed in float32 (0 and 0 for an all-zero
    row). Raises TypeError for another dtype and ValueError, naming ``name``, for a non-finite
    value or a shape that is not [R, C >= 1].
    """
    w = _check_float_matrix(w, name)
    if w.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(w.shape)}")
    _check_finite(w, name)
    w32 = w.to(torch.float32)
    scale = w32.abs().amax(dim=1) / QMAX
    divisor = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w32 / divisor[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """float32 [R, C] ``q * scale[:, None]`` of int8 ``q`` [R, C] and float32 ``scale`` [R]."""
    q = _as_tensor(q, "q")
    scale = _as_tensor(scale, "scale")
    if q.dtype != torch.int8:
        raise TypeError(f"q must have dtype torch.int8, got {q.dtype}")
    if scale.dtype != torch.float32:
        raise TypeError(f"scale must have dtype torch.float32, got {scale.dtype}")
    if q.dim() != 2 or scale.dim() != 1 or scale.shape[0] != q.shape[0]:
        raise ValueError(f"q must be [R, C] and scale [R], got {tuple(q.shape)} and "
                         f"{tuple(scale.shape)}")
    return q.to(torch.float32) * scale[:, None]


def pack_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """uint8 [R, C + 4]: each int8 row of ``q`` [R, C] followed by the bytes of its float32
    ``scale`` (little-endian, as the hosts this targets and the pool file format are)."""
    rows = q.shape[0]
    scale_bytes = scale.to(torch.float32).contiguous().view(torch.uint8).view(rows, SCALE_BYTES)
    return torch.cat([q.view(torch.uint8), scale_bytes], dim=1)


def unpack_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 [R, C], float32 [R]) copies of byte rows [R, C + 4] made by :func:`pack_rows`."""
    q = rows[:, :-SCALE_BYTES].contiguous().view(torch.int8)
    scale = rows[:, -SCALE_BYTES:].contiguous().view(torch.float32).reshape(rows.shape[0])
    return q, scale


class QuantizedWeights(NamedTuple):
    """An FFN's weights quantised per neuron, in the float layouts: gate [N, G] (or None), up
    [N, U], down [H, N] int8, each with one float32 scale per neuron ([N]; for down, one per
    column: the neuron's down^T row)."""

    gate: torch.Tensor | None
    gate_scale: torch.Tensor | None
    up: torch.Tensor
    up_scale: torch.Tensor
    down: torch.Tensor
    down_scale: torch.Tensor

    def dequantize(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """float32 (gate [N, G] or None, up [N, U], down [H, N])."""
        gate = None if self.gate is None else dequantize_rows(self.gate, self.gate_scale)
        return (gate, dequantize_rows(self.up, self.up_scale),
                dequantize_rows(self.down.t(), self.down_scale).t())


def quantize_ffn(gate: torch.Tensor | None, up: torch.Tensor,
                 down: torch.Tensor) -> QuantizedWeights:
    """:func:`quantize_rows` of the gate rows, the up rows and the down columns (one scale per
    neuron each). Shapes are not cross-checked here (the callers do)."""
    gq, gs = (None, None) if gate is None else quantize_rows(gate, "gate_weight")
    uq, us = quantize_rows(up, "up_weight")
    down = _check_float_matrix(down, "down_weight")
    if down.shape[0] < 1:
        raise ValueError(f"down_weight must have at least one row, got shape {tuple(down.shape)}")
    _check_finite(down, "down_weight")  # here, so that the message has down's indices
    dq, ds = quantize_rows(down.t(), "down_weight")
    return QuantizedWeights(gq, gs, uq, us, dq.t().contiguous(), ds)


class QuantizedRows(NamedTuple):
    """Typed views of rows of a :class:`QuantizedWeightCache` (the packed block or the pool):
    int8 values and float32 scales, one row per slot; no copy."""

    gate: torch.Tensor | None  # int8 [m, G] (None without gate)
    gate_scale: torch.Tensor | None  # float32 [m]
    up: torch.Tensor  # int8 [m, U]
    up_scale: torch.Tensor  # float32 [m]
    down_t: torch.Tensor  # int8 [m, H]: rows of down^T (the active columns of down)
    down_scale: torch.Tensor  # float32 [m]

    def dequantize(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """float32 copies (gate [m, G] or None, up [m, U], down [H, m]): the FFN's layouts."""
        gate = None if self.gate is None else dequantize_rows(self.gate, self.gate_scale)
        return (gate, dequantize_rows(self.up, self.up_scale),
                dequantize_rows(self.down_t, self.down_scale).t())


def _byte_rows_of(q: QuantizedWeights) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The binding's from_byte_rows arguments: gate|up byte rows and down [H + 4, N]."""
    gate = (torch.empty(0, dtype=torch.uint8) if q.gate is None
            else pack_rows(q.gate, q.gate_scale))
    down = pack_rows(q.down.t(), q.down_scale).t().contiguous()
    return gate, pack_rows(q.up, q.up_scale), down


class QuantizedWeightCache(SingleOwner):
    """A :class:`~paired_replacement.cache.WeightCache` of int8 rows with per-row float32 scales.

    Args:
        mask: bool [N], the initial active set.
        hidden_size: H, a multiple of 4.
        gate_weight: float [N, H], or None / ``torch.empty(0)`` for an FFN without gate.
        up_weight: float [N, H].
        down_weight: float [H, N].
        grain, par_threshold, hybrid_tau_frac: as for WeightCache.

    The weights (float32, float16 or bfloat16, finite, on the CPU) are quantised at construction
    (:func:`quantize_ffn`; the float tensors are not kept). Each pool and packed row is the int8
    row followed by its float32 scale (see the module docstring), so the cache holds
    ``3 (H + 4)`` bytes per neuron and copy (pool and packed block), about a quarter of a float32
    cache's ``12 H`` (plus the row padding of rows of 512 bytes or more, as in WeightCache).

    Updates, introspection (``active_indices``, ``last_update_stats``, ...), settings,
    ``check_invariants`` and the file tier (:meth:`from_pool_file`) are the WeightCache's, with
    the same rules. :meth:`active_weights` returns views of the live packed block, typed
    (:class:`QuantizedRows`: int8 values, float32 scales; read-only by contract, fixed shape --
    take new ones after an update that changes ``num_active``). :meth:`ffn` computes the FFN of
    the active rows, dequantising.
    """

    _COPY_HINT = "build a new one from the weights, or copy the views of active_weights()"

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
        hidden = _as_int(hidden_size, "hidden_size")
        up = _check_float_matrix(up_weight, "up_weight", FLOAT_DTYPES)
        down = _check_float_matrix(down_weight, "down_weight", FLOAT_DTYPES)
        gate = None
        if gate_weight is not None:
            g = _as_tensor(gate_weight, "gate_weight")
            if not (g.dim() == 1 and g.shape[0] == 0):  # torch.empty(0): no gate
                gate = _check_float_matrix(g, "gate_weight", FLOAT_DTYPES)
        n = up.shape[0]
        if n < 1:
            raise ValueError("up_weight must have at least one row (N >= 1)")
        if hidden < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden}")
        if hidden % SCALE_BYTES:
            raise ValueError(f"hidden_size = {hidden} is not a multiple of 4: the int8 rows keep "
                             f"their float32 scales 4-byte aligned")
        for name, t, want in (("up_weight", up, (n, hidden)), ("gate_weight", gate, (n, hidden)),
                              ("down_weight", down, (hidden, n))):
            if t is not None and tuple(t.shape) != want:
                layout = "[hidden_size, N]" if name == "down_weight" else "[N, hidden_size]"
                raise ValueError(f"{name} must have shape {layout} = {list(want)}, got "
                                 f"{list(t.shape)}")
            if t is not None and t.device.type != "cpu":
                raise ValueError(f"{name} must be on the CPU, got {t.device}")
        gate_rows, up_rows, down_rows = _byte_rows_of(quantize_ffn(gate, up, down))
        cache = torch.classes.paired.WeightCache.from_byte_rows(
            _as_mask(mask), gate_rows, up_rows, down_rows,
            None if grain is None else _as_int(grain, "grain"),
            None if par_threshold is None else _as_int(par_threshold, "par_threshold"),
            None if hybrid_tau_frac is None else _as_float(hybrid_tau_frac, "hybrid_tau_frac"),
        )
        self._init(cache, 0 if gate is None else hidden, hidden, hidden)

    def _init(self, cache: Any, gate_cols: int, up_cols: int, hidden: int) -> None:
        self._cache = cache
        self._base = WeightCache.__new__(WeightCache)  # the shared wrapper logic, on byte rows
        self._base._cache = cache
        self._base._bind(int(cache.position_map().shape[0]))
        self._g, self._u, self._h = gate_cols, up_cols, hidden
        self._gate_bytes = gate_cols + SCALE_BYTES if gate_cols else 0

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
    ) -> "QuantizedWeightCache":
        """A cache on an int8 pool file (``write_pool_file(..., dtype=torch.int8)``): as
        :meth:`WeightCache.from_pool_file` (direct I/O, ``queue_depth`` reads in flight, only
        the packed rows in memory, ``hybrid_tau_frac`` 2 unless given), each record read once
        with its rows' scales. A float pool file raises ValueError (open it with WeightCache).
        """
        from .pool_file import read_header  # pool_file imports this module

        load_extension()
        cache = torch.classes.paired.WeightCache.from_int8_pool_file(
            os.fspath(path), _as_mask(mask), _as_int(queue_depth, "queue_depth"),
            None if grain is None else _as_int(grain, "grain"),
            None if par_threshold is None else _as_int(par_threshold, "par_threshold"),
            FILE_TIER_TAU if hybrid_tau_frac is None else _as_float(hybrid_tau_frac,
                                                                    "hybrid_tau_frac"),
        )
        header = read_header(path)  # the logical G, U, H (the C++ side checked it already)
        if (header.dtype != torch.int8
                or cache.get_concat_weight().shape[1] != header.concat_bytes
                or cache.get_active_down_weight().shape[0] != header.down_bytes):
            raise RuntimeError(f"pool file {path}: changed while it was being opened")
        self = cls.__new__(cls)
        self._init(cache, header.gate_cols, header.up_cols, header.hidden)
        return self

    # ---- shape ----
    @property
    def rows(self) -> int:
        """N."""
        return self._base._rows

    @property
    def gate_cols(self) -> int:
        """G (0: no gate)."""
        return self._g

    @property
    def up_cols(self) -> int:
        """U: the FFN's input width."""
        return self._u

    @property
    def hidden(self) -> int:
        """H: the FFN's output width (elements of a down^T row)."""
        return self._h

    @property
    def has_gate(self) -> bool:
        return self._g > 0

    # ---- updates (the WeightCache's) ----
    def update_active_weights(self, mask: MaskLike) -> None:
        """Make the active set equal ``mask`` (bool [N]); see WeightCache.update_active_weights."""
        self._base.update_active_weights(mask)

    def update_from_indices(self, added: IndexLike, removed: IndexLike) -> None:
        """Activate ``added``, deactivate ``removed``; see WeightCache.update_from_indices."""
        self._base.update_from_indices(added, removed)

    # ---- views ----
    def _split(self, concat: torch.Tensor, down_t: torch.Tensor) -> QuantizedRows:
        g, u, h, gb = self._g, self._u, self._h, self._gate_bytes

        def scale(rows: torch.Tensor, at: int) -> torch.Tensor:
            return rows[:, at:at + SCALE_BYTES].view(torch.float32).squeeze(1)

        return QuantizedRows(
            concat[:, :g].view(torch.int8) if g else None, scale(concat, g) if g else None,
            concat[:, gb:gb + u].view(torch.int8), scale(concat, gb + u),
            down_t[:, :h].view(torch.int8), scale(down_t, h))

    def packed_bytes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Live uint8 views of the packed block as the core holds it: gate|up rows [m, (G + 4)
        + (U + 4)] and down^T rows [m, H + 4], each segment's scale after its values."""
        return self._cache.get_concat_weight(), self._cache.get_active_down_weight().t()

    def active_weights(self) -> QuantizedRows:
        """Typed live views of the active rows (slot order = :meth:`active_indices`): int8
        gate [m, G], up [m, U], down^T [m, H] and their float32 scales [m]. No copy."""
        return self._split(*self.packed_bytes())

    def pool_weights(self) -> QuantizedRows:
        """Typed views of all N pool rows (in memory only: a cache on a pool file raises)."""
        return self._split(self._cache.pool_concat_weight(), self._cache.pool_down_weight_t())

    def dequantized(self) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """float32 copies of the active rows: (gate [m, G] or None, up [m, U], down [H, m])."""
        return self.active_weights().dequantize()

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        """The FFN of ``x`` [T, U] over the active rows, dequantising on the fly, in float32:
        ``y = (silu((x Wg^T) * sg) * ((x Wu^T) * su)) @ (Wd^T * sd)`` with a gate, ``relu((x
        Wu^T) * su) @ (Wd^T * sd)`` without (as ``torch.ops.paired.row_ffn``); W* are the int8
        rows and s* their scales [m]. Returns [T, H] in x's dtype (float32/16, bfloat16)."""
        x = _as_tensor(x, "x")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"x must be float32, float16 or bfloat16, got {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self._u:
            raise ValueError(f"x must be 2-D [T, {self._u}], got shape {tuple(x.shape)}")
        if x.device.type != "cpu":
            raise ValueError(f"x must be on the CPU, got {x.device}")
        a = self.active_weights()
        xf = x.to(torch.float32)
        act = (xf @ a.up.to(torch.float32).t()) * a.up_scale
        if a.gate is not None:
            act = torch.nn.functional.silu((xf @ a.gate.to(torch.float32).t()) * a.gate_scale) * act
        else:
            act = torch.relu(act)
        y = (act * a.down_scale) @ a.down_t.to(torch.float32)
        return y.to(x.dtype)

    # ---- introspection (the WeightCache's) ----
    def get_num_active(self) -> int:
        return self._base.get_num_active()

    @property
    def num_active(self) -> int:
        return self._base.get_num_active()

    def active_indices(self) -> torch.Tensor:
        """int64 [m]: the row id stored at each slot of the packed block."""
        return self._base.active_indices()

    def position_map(self) -> torch.Tensor:
        """int64 [N]: slot of each row, -1 for inactive rows."""
        return self._base.position_map()

    @property
    def mask(self) -> torch.Tensor:
        """bool [N]: a copy of the current active set."""
        return self._base.mask

    def last_update_stats(self) -> UpdateStats:
        return self._base.last_update_stats()

    def last_update_work(self) -> UpdateWork:
        return self._base.last_update_work()

    def check_invariants(self) -> None:
        """The core's self-check: every packed byte row (values and scale) equals its pool
        row; raises RuntimeError."""
        self._base.check_invariants()

    @property
    def tier_info(self) -> TierInfo:
        return self._base.tier_info

    # ---- settings (the WeightCache's) ----
    @property
    def grain(self) -> int:
        return self._base.grain

    @grain.setter
    def grain(self, value: int) -> None:
        self._base.grain = value

    @property
    def par_threshold(self) -> int:
        return self._base.par_threshold

    @par_threshold.setter
    def par_threshold(self, value: int) -> None:
        self._base.par_threshold = value

    @property
    def hybrid_tau_frac(self) -> float:
        return self._base.hybrid_tau_frac

    @hybrid_tau_frac.setter
    def hybrid_tau_frac(self, value: float) -> None:
        self._base.hybrid_tau_frac = value

    @property
    def torch_object(self) -> Any:
        """The underlying ``torch.classes.paired.WeightCache`` (of uint8 byte rows)."""
        return self._cache

    def __repr__(self) -> str:
        tier = self.tier_info
        where = "" if tier.tier == "dram" else f", pool file {tier.path!r}"
        return (f"QuantizedWeightCache(N={self.rows}, gate={self._g}, up={self._u}, "
                f"hidden={self._h}, int8 + float32 row scales, m={self.num_active}{where})")
