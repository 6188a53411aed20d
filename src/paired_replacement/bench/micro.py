"""micro: the cost of one cache update vs k, for every method, on the same mask sequences.

    python -m paired_replacement.bench micro --out results/micro.csv [--k 16 64 256 ...]

Methods (all fed the same pre-generated masks; mask generation is never timed; every method uses
the configuration's torch threads):

- ``paired``              WeightCache.update_active_weights, hybrid off (tau = 2: never rebuild)
- ``paired_indices``      WeightCache.update_from_indices with the step's precomputed ids
- ``paired_control``      ``paired`` again under another name: the same-code control; its ratio to
                          ``paired`` must contain 1, else the measurement itself is suspect
- ``hybrid``              WeightCache.update_active_weights with the tuned tau (rebuilds on high churn)
- ``torch_delta``         the *same differential update in plain torch*, the strongest baseline a
                          reviewer would write: mask XOR and nonzero, the slots of the removed rows
                          (same slot rules as the cache), index_select(out=) of the added rows into
                          a staging buffer and index_copy_ into the packed blocks
- ``torch_delta_indices`` the same from the step's precomputed ids (no mask scan)
- ``numpy_reference``     the NumPy reference PairedCache.update (a correctness oracle)
- ``index_select``        full rebuild: index_select(out=) of all m' rows from the cache's own pools
                          (gate|up and the transposed down layout) into preallocated buffers
- ``rebuild_floor``       a memcpy of all m' rows with the cache's store policy (non-temporal above
                          its streaming threshold): separates "fewer rows" from "faster rows"
- ``bool_mask``           full rebuild by boolean indexing, pool[mask] (allocates, as naive code
                          does): a naive reference, never in headline numbers
- ``memcpy_floor``        exactly the rows the paired update writes, one memcpy per row
- ``memcpy_floor_nt``     the same rows with non-temporal stores

Timing: the methods of a configuration take turns (timing.py): a round times each once, in a
random order, in several fresh worker processes. Ratios are formed round by round and their
intervals resample processes, then rounds (stats.py).

The correctness gate (first worker, before any timing): every method walks one whole cycle of the
sequence; at every step its active rows must be exactly the mask's and every packed row's sum must
equal its pool row's; at a strided sample of steps (and the last) both blocks are compared with a
plain gather of the original weights element by element. A mismatch aborts the run.

Plausibility: a method cannot write its rows faster than a memcpy of the same rows. Each row
carries ``efficiency_vs_floor`` = floor time / its time (the floor of the rows it writes: the
faster memcpy floor for the differential methods, ``rebuild_floor`` for full rebuilds); a point
above 1.25 is marked ``plausible = false`` and kept out of headline numbers.

Recorded masks (``--pattern trace --trace FILE [FILE ...]``): a real model's masks from
``python -m paired_replacement.model traces`` (``results/traces/<key>.json``), replayed at the
model's own N and hidden size (from the trace's run.json), and at ``--trace-tile T`` times N by
placing the masks of T consecutive layers side by side (``masks.replay_trace``): a larger N from
real masks, not a larger model, and the rows say so (``trace``, ``trace_layer``, ``trace_tile``).
The active count then varies per token (``m`` is its mean, rounded; ``m_mean`` exact), and the
cache keeps its gate unless the trace's policy computes the gate densely (``cache_has_gate``).

Tiers (``--tier dram file``): ``dram`` is everything above (pools and packed block in memory).
``file`` keeps the pool in a pool file (``paired_replacement.pool_file``, written once per shape
next to the CSV and deleted after the run) and the packed block in memory, the setting of LLM in a
flash; its methods (``FILE_METHODS``):

- ``paired``, ``paired_indices``  a cache on the file (``WeightCache.from_pool_file``, tau = 2):
                          an update reads exactly the W records it writes, with direct I/O
- ``full_reload``         the same cache with tau = 0: every update re-reads all m' active records
                          (a full re-pack from the slow tier; the no-packing FFN, which must read
                          every active row every token, moves the same bytes)
- ``disk_floor``          every active record of the step's mask (the full reload's bytes), read by
                          an independent reader (bench.diskread: Linux native AIO from one
                          thread, or Python threads where AIO is unavailable; its own O_DIRECT
                          descriptor; records of consecutive rows read together, as the cache
                          does) at the same queue depth: the disk's random-read throughput at
                          that queue depth (a large batch), and the full reload's floor
- ``disk_update_floor``   exactly the records the paired update reads at each step of the walk
                          (the rows it writes: replayed once, untimed, on a cache of the same
                          masks; the correctness gate's bytes per step match the paired
                          update's), read by the same independent reader at the same queue depth:
                          the disk's time for the paired update's own records. A batch of a few
                          records costs about one read latency, which the big-batch throughput
                          does not show; the AIO engine times it (a few system calls), the thread
                          engine cannot (its own per-call overhead, ~1 ms, would dominate)

A file-tier row's ``efficiency_vs_floor`` is its floor's time over its own (>= 0.8 is the goal:
within 1.25x of the disk), the floor being the disk's time for the same records at the same
queue depth (``floor_of``): ``disk_update_floor`` for ``paired`` and ``paired_indices``,
``disk_floor`` for ``full_reload``. Where that floor was not measured (or ``disk_update_floor``
ran on the thread engine) the other is used, its time scaled by the ratio of the bytes (the time
the disk's throughput allows for the method's bytes: too little for a small update, which waits
about one read latency whatever the throughput). ``floor_method`` names the floor,
``floor_engine`` the independent reader's engine (``linux-aio`` or ``threads``); the big-batch
throughput is ``disk_floor``'s ``read_mbps``. ``speedup_vs_full_reload`` is the ratio to the full
reload next to ``bytes_ratio_vs_full_reload``, ``io_mode`` says whether the page cache was
bypassed (``direct``) or dropped after each read (``buffered+dontneed``). The sequences of the
file tier are not lengthened for the LLC (the disk is the slow tier).

Cache warmth: for uniform/clustered churn the sequence is lengthened until one cycle of the paired
update touches at least twice the last-level cache in distinct bytes; ``cycle_bytes``, ``llc_bytes``
and ``cache_state`` (cold: the cycle touches more than the LLC holds; warm otherwise) say so.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import WeightCache
from ..cache import DTYPES
from ..pool_file import drop_cached_pages, remove_pool_files, write_pool_file
from ..reference import PairedCache
from . import common, diskread, hostinfo, load, masks, stats, timing
from .baselines import TorchDeltaCache

CACHE_METHODS = ("paired", "paired_indices", "paired_control", "hybrid")
DELTA_METHODS = ("torch_delta", "torch_delta_indices")
FLOOR_METHODS = ("memcpy_floor", "memcpy_floor_nt")
REBUILD_METHODS = ("index_select", "rebuild_floor", "bool_mask")
ALL_METHODS = (*CACHE_METHODS, *DELTA_METHODS, "numpy_reference", *REBUILD_METHODS, *FLOOR_METHODS)
TIERS = ("dram", "file")
#: the methods of the file tier (pool in a pool file, packed block in memory)
FILE_METHODS = ("paired", "paired_indices", "full_reload", "disk_floor", "disk_update_floor")
#: the file tier's floors: the disk's time for a method's own records read by an independent
#: reader (disk_update_floor: the paired update's records; disk_floor: all m' active records)
DISK_FLOORS = {"paired": "disk_update_floor", "paired_indices": "disk_update_floor",
               "full_reload": "disk_floor"}
TIER_METHODS = {"dram": ALL_METHODS, "file": FILE_METHODS}
#: what a method is in the study (the ``role`` column)
ROLES = {"paired": "headline", "paired_indices": "headline", "paired_control": "control",
         "hybrid": "policy", "torch_delta": "baseline", "torch_delta_indices": "baseline",
         "numpy_reference": "reference", "index_select": "baseline", "rebuild_floor": "floor",
         "bool_mask": "naive", "memcpy_floor": "floor", "memcpy_floor_nt": "floor",
         "full_reload": "baseline", "disk_floor": "floor", "disk_update_floor": "floor"}
#: baselines every row is compared with, round by round (when measured in the same group)
SPEEDUP_BASELINES = ("torch_delta", "torch_delta_indices", "index_select", "rebuild_floor",
                     "full_reload")
DEFAULT_QUEUE_DEPTH = 16  # reads in flight on the file tier (the reference disk: ~100 MB/s at 32)
NEVER_REBUILD_TAU = 2.0  # rows written <= m', so tau >= 1 disables the hybrid rebuild
# The core's kStreamingMinBytes: an update writing at least this many bytes uses non-temporal
# stores; rebuild_floor follows the same policy (tests check it against build_info).
STREAMING_MIN_BYTES = 8 << 20
PLAUSIBLE_EFFICIENCY = 1.25  # a method faster than 1.25x the memcpy of its own rows is flagged
WARM_CYCLE_LLC_MULTIPLE = 2.0  # lengthen sequences until a cycle touches 2x the LLC
MAX_AUTO_STEPS = 512
EXHAUSTIVE_CHECKS_PER_CYCLE = 4  # full element-by-element checks per gate cycle (plus the last)


# ---------------------------------------------------------------------------------------------
# Data of one configuration (rebuilt identically in every worker from the group)
# ---------------------------------------------------------------------------------------------
def make_weights(task: dict) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(task["seed"])
    n, h, dtype = task["N"], task["hidden"], DTYPES[task["dtype"]]
    gate = torch.randn(n, h, generator=gen).to(dtype) if task["gate"] else None
    up = torch.randn(n, h, generator=gen).to(dtype)
    down = torch.randn(h, n, generator=gen).to(dtype)
    return gate, up, down


def walk(num_masks: int) -> list[int]:
    """Targets of one ping-pong cycle over masks 0..T: 1, 2, ..., T, T-1, ..., 0."""
    t = num_masks - 1
    return list(range(1, t + 1)) + list(range(t - 1, -1, -1))


def transitions(seq: torch.Tensor) -> dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]]:
    """(added ids, removed ids) of every transition of the walk, both directions, ascending."""
    diffs = {}
    for a in range(len(seq) - 1):
        b = a + 1
        on = (seq[b] & ~seq[a]).nonzero().squeeze(1)
        off = (seq[a] & ~seq[b]).nonzero().squeeze(1)
        diffs[(a, b)], diffs[(b, a)] = (on, off), (off, on)
    return diffs


class Shared:
    """What the methods of one group share: the original weights, the masks, and the pools in
    the cache's own layout (gate|up rows interleaved, down transposed, padded rows)."""

    def __init__(self, task: dict, seq: torch.Tensor) -> None:
        self.task, self.seq = task, seq
        self.gate, self.up, self.down = make_weights(task)
        self.full = self.up if self.gate is None else torch.cat([self.gate, self.up], dim=1)
        self._source = WeightCache(seq[0], task["hidden"], self.gate, self.up, self.down)
        self.pool_c = self._source.pool_concat_weight()
        self.pool_d = self._source.pool_down_weight_t()
        self.diffs = transitions(seq)
        # The most rows any mask activates: the capacity of every packed block of the group
        # (allocating N rows would only cost page faults: the study's blocks are ~100 MB each).
        self.capacity = max(1, int(seq.sum(dim=1).max()))
        # Row sums of the pools, for the cheap per-step check of the gate: the same reduction over
        # rows of the same layout gives the same float32 sums for the same values.
        self.rowsum_c = self.pool_c.sum(dim=1)
        self.rowsum_d = self.pool_d.sum(dim=1)

    def block(self, pool: torch.Tensor) -> torch.Tensor:
        """An uninitialised packed block of ``capacity`` rows in ``pool``'s layout (row stride
        and alignment class included: a narrowed copy of the pool's first rows' layout)."""
        return torch.empty_strided((self.capacity, pool.shape[1]), pool.stride(),
                                   dtype=pool.dtype)

    def row_bytes(self) -> int:
        """Bytes of one row in both buffers (gate|up and down^T), without padding."""
        return (self.pool_c.shape[1] + self.pool_d.shape[1]) * self.pool_c.element_size()


class Method:
    """One way of bringing the packed weights to mask ``seq[i]``; ``step(i)`` is what is timed."""

    def __init__(self, task: dict, shared: Shared) -> None:
        self.task, self.shared, self.seq = task, shared, shared.seq
        self.current = 0

    def step(self, i: int) -> None:
        raise NotImplementedError

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(concat [m, G+U], down [H, m], row order [m]) after the last step, for the gate."""
        raise NotImplementedError

    def rows_written(self) -> int:
        """Rows written per buffer by the last step."""
        raise NotImplementedError

    def bytes_read(self) -> int:
        """Bytes the last step read from the slow tier (0 on the dram tier)."""
        return 0


class CacheMethod(Method):
    """A WeightCache on the shared weights (dram tier) or on the group's pool file (file tier)."""

    def __init__(self, task, shared, *, tau: float, by_indices: bool = False) -> None:
        super().__init__(task, shared)
        settings = {"grain": task["grain"], "par_threshold": task["par_threshold"],
                    "hybrid_tau_frac": tau}
        if task.get("tier", "dram") == "file":
            self.cache = WeightCache.from_pool_file(task["pool_path"], self.seq[0],
                                                    queue_depth=task["queue_depth"], **settings)
        else:
            self.cache = WeightCache(self.seq[0], task["hidden"], shared.gate, shared.up,
                                     shared.down, **settings)
        self.by_indices = by_indices

    def io_mode(self) -> str:
        info = self.cache.tier_info
        if info.tier == "dram":
            return "memory"
        return diskread.DIRECT if info.direct_io else diskread.BUFFERED

    def bytes_read(self) -> int:
        return self.cache.last_update_work().slow_bytes_read

    def step(self, i: int) -> None:
        if self.by_indices:
            added, removed = self.shared.diffs[(self.current, i)]
            self.cache.update_from_indices(added, removed)
        else:
            self.cache.update_active_weights(self.seq[i])
        self.current = i

    def result(self):
        return (self.cache.get_concat_weight(), self.cache.get_active_down_weight(),
                self.cache.active_indices())

    def rows_written(self) -> int:
        return self.cache.last_update_stats().rows_written


class TorchDeltaMethod(Method):
    """The paired update in plain torch (baselines.TorchDeltaCache) over the shared pools."""

    def __init__(self, task, shared, *, by_indices: bool = False) -> None:
        super().__init__(task, shared)
        self.delta = TorchDeltaCache(shared.pool_c, shared.pool_d, self.seq[0],
                                     capacity=shared.capacity)
        self.by_indices = by_indices

    def step(self, i: int) -> None:
        if self.by_indices:
            self.delta.update_from_indices(*self.shared.diffs[(self.current, i)])
        else:
            self.delta.update_from_mask(self.seq[i])
        self.current = i

    def result(self):
        d = self.delta
        return d.concat_weight(), d.down_weight(), d.active_indices()

    def rows_written(self) -> int:
        return self.delta.rows_written


class NumpyReferenceMethod(Method):
    def __init__(self, task, shared) -> None:
        super().__init__(task, shared)
        as_np = (lambda t: t.float().numpy()) if task["dtype"] == "bfloat16" else (lambda t: t.numpy())
        self.masks_np = self.seq.numpy()
        gate = None if shared.gate is None else as_np(shared.gate)
        self.ref = PairedCache(self.masks_np[0], task["hidden"], gate, as_np(shared.up),
                               as_np(shared.down), hybrid_tau_frac=NEVER_REBUILD_TAU)

    def step(self, i: int) -> None:
        self.ref.update(self.masks_np[i])
        self.current = i

    def result(self):
        return (torch.from_numpy(np.array(self.ref.concat_weight())),  # copies: the reference's
                torch.from_numpy(np.array(self.ref.down_weight())),    # views are read-only
                torch.from_numpy(self.ref.active_indices()))

    def rows_written(self) -> int:
        return self.ref.last_update_stats().rows_written


class RebuildMethod(Method):
    """Gathers every active row again from the shared pools: index_select(out=), boolean
    indexing (allocating), or a row-by-row memcpy with the cache's store policy."""

    def __init__(self, task, shared, *, kind: str) -> None:
        super().__init__(task, shared)
        self.kind = kind
        self.indices = [s.nonzero().squeeze(1) for s in self.seq]
        if kind != "bool_mask":  # boolean indexing allocates its own result every step
            self.out_c, self.out_d = shared.block(shared.pool_c), shared.block(shared.pool_d)
        self.slots = torch.arange(shared.capacity)
        lds = (shared.pool_c.stride(0) + shared.pool_d.stride(0)) * shared.pool_c.element_size()
        self.streaming = [i.numel() * lds >= STREAMING_MIN_BYTES for i in self.indices]
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, i: int) -> None:
        pool_c, pool_d = self.shared.pool_c, self.shared.pool_d
        if self.kind == "bool_mask":
            self.last = (pool_c[self.seq[i]], pool_d[self.seq[i]])
        else:
            idx = self.indices[i]
            m = idx.numel()
            if self.kind == "index_select":
                torch.index_select(pool_c, 0, idx, out=self.out_c[:m])
                torch.index_select(pool_d, 0, idx, out=self.out_d[:m])
            else:  # rebuild_floor
                slots, nt = self.slots[:m], self.streaming[i]
                torch.ops.paired.copy_rows(self.out_c, slots, pool_c, idx, nt, True)
                torch.ops.paired.copy_rows(self.out_d, slots, pool_d, idx, nt, True)
        self.current = i

    def result(self):
        idx = self.indices[self.current]
        if self.kind == "bool_mask":
            concat, down_t = self.last if self.last is not None else (
                self.shared.pool_c[self.seq[self.current]], self.shared.pool_d[self.seq[self.current]])
        else:
            concat, down_t = self.out_c[: idx.numel()], self.out_d[: idx.numel()]
        return concat, down_t.t(), idx

    def rows_written(self) -> int:
        return int(self.indices[self.current].numel())


Plan = list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]


def replay_paired_writes(cache: WeightCache, seq: torch.Tensor) -> Plan:
    """Walks ``cache`` (at mask 0, never rebuilding) through one cycle of the walk, untimed;
    returns per step (target mask, slots written, rows written into them, row order after): a
    slot is written when it holds another row than before the step (or is new)."""
    plan: Plan = []
    order = cache.active_indices()
    for target in walk(len(seq)):
        cache.update_active_weights(seq[target])
        new_order = cache.active_indices()
        m_old, m_new = order.numel(), new_order.numel()
        slots = torch.arange(m_new)
        changed = slots >= m_old
        common_len = min(m_old, m_new)
        changed[:common_len] |= new_order[:common_len] != order[:common_len]
        holes = slots[changed].contiguous()
        plan.append((target, holes, new_order[holes].contiguous(), new_order))
        order = new_order
    return plan


def paired_reads(task: dict, seq: torch.Tensor) -> list[tuple[int, list[int]]]:
    """(target mask, pool rows read) per step of one cycle of the walk for the paired update on
    the file tier, which reads the record of every row it writes: the rows of
    :func:`replay_paired_writes`, replayed on a cache of the same masks and settings but one
    column per row (the slots an update fills depend on the masks, not on the weights)."""
    n = seq.shape[1]
    cache = WeightCache(seq[0], 1, None, torch.zeros(n, 1), torch.zeros(1, n),
                        grain=task["grain"], par_threshold=task["par_threshold"],
                        hybrid_tau_frac=NEVER_REBUILD_TAU)
    return [(target, rows.tolist()) for target, _, rows, _ in replay_paired_writes(cache, seq)]


class FloorMethod(Method):
    """Copies exactly the (slot, row) pairs the paired update writes at each step, nothing else."""

    def __init__(self, task, shared, *, streaming: bool) -> None:
        super().__init__(task, shared)
        self.dst_c = shared.block(shared.pool_c)  # a packed block of the same layout
        self.dst_d = shared.block(shared.pool_d)
        self.streaming = streaming
        # Replay the paired updates once (untimed) to learn the writes of every step of the walk.
        # Kept per step, not per (from, to) mask: when the active count varies (recorded masks)
        # the slots a mask ends up in depend on the path, so going 2 -> 1 does not restore the
        # order 0 -> 1 made. Later cycles replay the first cycle's writes: a floor of as many rows.
        cache = WeightCache(self.seq[0], task["hidden"], shared.gate, shared.up, shared.down,
                            hybrid_tau_frac=NEVER_REBUILD_TAU)
        m0 = cache.num_active
        self.dst_c[:m0].copy_(cache.get_concat_weight())
        self.dst_d[:m0].copy_(cache.get_active_down_weight().t())
        self.order = cache.active_indices()
        self.plan = replay_paired_writes(cache, self.seq)
        del cache
        self.position = 0

    def step(self, i: int) -> None:
        target, slots, rows, order = self.plan[self.position]
        if target != i:
            raise RuntimeError(f"memcpy floor: step to mask {i}, but the walk goes to {target}")
        torch.ops.paired.copy_rows(self.dst_c, slots, self.shared.pool_c, rows, self.streaming, True)
        torch.ops.paired.copy_rows(self.dst_d, slots, self.shared.pool_d, rows, self.streaming, True)
        self.last_written = int(slots.numel())
        self.position = (self.position + 1) % len(self.plan)
        self.current, self.order = i, order

    def result(self):
        m = self.order.numel()
        return self.dst_c[:m], self.dst_d[:m].t(), self.order

    def rows_written(self) -> int:
        return self.last_written


class DiskFloorMethod(Method):
    """Reads every active record of the step's mask with bench.diskread's independent reader at
    the same queue depth (consecutive ones together, as the cache reads them): the disk's
    throughput on a large batch of random records, and the full reload's floor (the same
    reads)."""

    def __init__(self, task, shared) -> None:
        super().__init__(task, shared)
        self.reader = diskread.RecordReader(task["pool_path"], task["queue_depth"])
        self.rows = [s.nonzero().squeeze(1).tolist() for s in self.seq]
        # the reads of each mask, planned untimed (runs of consecutive rows, as the cache reads)
        self.reads = [self.reader.plan(rows) for rows in self.rows]
        self.last_rows, self.last_bytes = 0, 0

    def step(self, i: int) -> None:
        self.last_bytes = self.reader.read_runs(self.reads[i])
        self.last_rows = len(self.rows[i])
        self.current = i

    def result(self):
        return None  # reads and discards: no packed block to check

    def rows_written(self) -> int:
        return self.last_rows

    def bytes_read(self) -> int:
        return self.last_bytes

    def io_mode(self) -> str:
        return self.reader.io_mode

    def reader_engine(self) -> str:
        return self.reader.engine


class DiskUpdateFloorMethod(DiskFloorMethod):
    """Reads exactly the records the paired update reads at each step of the walk (the rows it
    writes, :func:`paired_reads`; consecutive ones together, as the cache reads them) with
    bench.diskread's independent reader at the same queue depth: the time the disk takes for the
    paired update's own records. A batch this small is timed by the reader's native AIO engine;
    its thread engine would time its own per-call overhead instead, and the paired rows then
    take ``disk_floor`` as their floor (:func:`floor_of`)."""

    def __init__(self, task, shared) -> None:
        Method.__init__(self, task, shared)
        self.reader = diskread.RecordReader(task["pool_path"], task["queue_depth"])
        self.plan = [(target, len(rows), self.reader.plan(rows))
                     for target, rows in paired_reads(task, self.seq)]
        self.last_rows, self.last_bytes = 0, 0
        self.position = 0

    def step(self, i: int) -> None:
        target, rows, reads = self.plan[self.position]
        if target != i:
            raise RuntimeError(f"disk update floor: step to mask {i}, but the walk goes to "
                               f"{target}")
        self.last_bytes = self.reader.read_runs(reads)
        self.last_rows = rows
        self.position = (self.position + 1) % len(self.plan)
        self.current = i


METHODS: dict[str, Callable[[dict, Shared], Method]] = {
    "paired": lambda t, s: CacheMethod(t, s, tau=NEVER_REBUILD_TAU),
    "paired_indices": lambda t, s: CacheMethod(t, s, tau=NEVER_REBUILD_TAU, by_indices=True),
    "paired_control": lambda t, s: CacheMethod(t, s, tau=NEVER_REBUILD_TAU),
    "hybrid": lambda t, s: CacheMethod(t, s, tau=t["hybrid_tau_frac"]),
    "torch_delta": lambda t, s: TorchDeltaMethod(t, s),
    "torch_delta_indices": lambda t, s: TorchDeltaMethod(t, s, by_indices=True),
    "numpy_reference": lambda t, s: NumpyReferenceMethod(t, s),
    "index_select": lambda t, s: RebuildMethod(t, s, kind="index_select"),
    "rebuild_floor": lambda t, s: RebuildMethod(t, s, kind="rebuild_floor"),
    "bool_mask": lambda t, s: RebuildMethod(t, s, kind="bool_mask"),
    "memcpy_floor": lambda t, s: FloorMethod(t, s, streaming=False),
    "memcpy_floor_nt": lambda t, s: FloorMethod(t, s, streaming=True),
    "full_reload": lambda t, s: CacheMethod(t, s, tau=0.0),
    "disk_floor": lambda t, s: DiskFloorMethod(t, s),
    "disk_update_floor": lambda t, s: DiskUpdateFloorMethod(t, s),
}


# ---------------------------------------------------------------------------------------------
# The group of one configuration (in a worker) and the correctness gate
# ---------------------------------------------------------------------------------------------
class MicroGroup:
    """All methods of one configuration, built at mask 0; see timing.Group."""

    def __init__(self, group: dict) -> None:
        seq = torch.load(group["masks_path"])
        self.group, self.shared = group, Shared(group, seq)
        self.methods = {name: METHODS[name](group, self.shared) for name in group["methods"]}
        self.operations = {name: self._operation(m) for name, m in self.methods.items()}
        self.info: dict = {}

    @staticmethod
    def _operation(method: Method) -> Callable[[], None]:
        targets = itertools.cycle(walk(len(method.seq))).__next__
        step = method.step
        return lambda: step(targets())

    def check(self) -> None:
        """Every method through one cycle (see the module doc); records rows written per step."""
        rows, read = {}, {}
        for name, method in self.methods.items():
            rows[name], read[name] = check_method(name, method, self.shared)
        for name in ("paired", "paired_indices"):  # the update floor reads the paired records
            if name in read and "disk_update_floor" in read \
                    and read[name] != read["disk_update_floor"]:
                raise common.CorrectnessError(
                    f"disk_update_floor read {read['disk_update_floor']} bytes per step of the "
                    f"walk, {name} {read[name]}: the floor does not read the update's records")
        modes = {getattr(m, "io_mode", lambda: "memory")() for m in self.methods.values()}
        engines = {name: m.reader_engine() for name, m in self.methods.items()
                   if hasattr(m, "reader_engine")}
        self.info = {"rows_written": rows, "bytes_read": read, "io_mode": "/".join(sorted(modes)),
                     "reader_engine": engines}


def check_method(name: str, method: Method, shared: Shared) -> tuple[list[int], list[int]]:
    """Walks ``method`` through one whole cycle from its current mask (0), checking each step;
    returns the rows written and the bytes read from the slow tier per step. Raises
    common.CorrectnessError. A method without a packed block (the disk floors) is only walked."""
    targets = walk(len(shared.seq))
    every = max(1, len(targets) // EXHAUSTIVE_CHECKS_PER_CYCLE)
    written, read = [], []
    for step, target in enumerate(targets):
        method.step(target)
        written.append(method.rows_written())
        read.append(method.bytes_read())
        result = method.result()
        if result is None:
            continue
        concat, down_w, order = result
        what = f"after the step to mask {target}"
        expected = shared.seq[target].nonzero().squeeze(1)
        common.check_close(name, f"active rows {what}", order.sort().values, expected)
        if step % every == every - 1 or step == len(targets) - 1:
            common.check_close(name, f"gate|up block {what}", concat,
                               shared.full.index_select(0, order))
            common.check_close(name, f"down block {what}", down_w, shared.down.index_select(1, order))
        else:  # every packed row sums like the pool row it must hold (O(block) reads, no gather)
            common.check_close(name, f"gate|up row sums {what}", concat.sum(dim=1),
                               shared.rowsum_c[order], exact=False, rtol=1e-5, atol=1e-5)
            common.check_close(name, f"down column sums {what}", down_w.t().sum(dim=1),
                               shared.rowsum_d[order], exact=False, rtol=1e-5, atol=1e-5)
    return written, read


def make_group(group: dict) -> MicroGroup:
    return MicroGroup(group)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.bench micro",
        description="Time one cache update vs k for every method on the same mask sequences.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    axes = p.add_argument_group("configurations (the cartesian product is measured)")
    axes.add_argument("--rows", type=int, nargs="+", default=[8192], help="N")
    axes.add_argument("--m", type=int, nargs="+", default=[2048], help="active rows")
    axes.add_argument("--k", type=int, nargs="+", default=[0, 16, 64, 256, 1024],
                      help="rows swapped per step (uniform/clustered patterns)")
    axes.add_argument("--hidden", type=int, nargs="+", default=None,
                      help="hidden sizes (default 4096; trace: the model's, from its run.json)")
    axes.add_argument("--gate", nargs="+", default=None,
                      help="on/off (default on; trace: as the trace's policy caches it)")
    axes.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES))
    axes.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    axes.add_argument("--pattern", nargs="+", default=["uniform"], choices=masks.PATTERNS)
    axes.add_argument("--beta", type=float, default=0.9, help="stickiness of the sticky pattern")
    axes.add_argument("--trace", nargs="+", default=[], metavar="FILE",
                      help="recorded masks for the trace pattern: traces' .json "
                      "(results/traces/<key>.json), or a bool .npy/.npz [T, N]")
    axes.add_argument("--trace-layer", type=int, default=0,
                      help="trace: the (first) layer replayed")
    axes.add_argument("--trace-tile", type=int, nargs="+", default=[1],
                      help="trace: T consecutive layers side by side (N = T x the trace's N; "
                      "wraps around after the last layer)")
    axes.add_argument("--steps", type=int, default=8,
                      help="masks per sequence after the first (uniform/clustered: at least; "
                      "lengthened until a cycle touches 2x the last-level cache, see --warm; "
                      "trace: the first steps + 1 tokens, or all if fewer)")
    axes.add_argument("--warm", action="store_true",
                      help="keep --steps as given (a cycle may fit the last-level cache: warm)")
    axes.add_argument("--tier", nargs="+", default=["dram"], choices=TIERS,
                      help="where the pool lives: dram (in memory) or file (a pool file read with "
                           "direct I/O; the packed block stays in memory)")
    p.add_argument("--methods", nargs="+", default=None,
                   choices=sorted(set(ALL_METHODS) | set(FILE_METHODS)),
                   help="methods (default: every method of each tier; with --tier file only "
                        f"{', '.join(FILE_METHODS)} apply)")
    p.add_argument("--queue-depth", type=int, default=DEFAULT_QUEUE_DEPTH,
                   help="file tier: reads in flight (the cache's reader threads and the disk "
                        "floors' requests)")
    p.add_argument("--pool-dir", default=None,
                   help="file tier: where the pool files are written (default: next to --out, "
                        "<out>.pools/); deleted after the run unless --keep-pools")
    p.add_argument("--keep-pools", action="store_true", help="keep the file tier's pool files")
    common.add_common_args(p)
    return p


def tier_methods(args: argparse.Namespace, tier: str) -> list[str]:
    """The methods measured on ``tier``: --methods restricted to the tier's, in order."""
    if args.methods is None:
        return list(TIER_METHODS[tier])
    return [m for m in args.methods if m in TIER_METHODS[tier]]


def sequence_steps(config: dict, row_bytes: int, llc: int, warm: bool) -> int:
    """Steps of the sequence: --steps, lengthened (uniform/clustered churn, unless --warm) until
    one cycle of the paired update touches WARM_CYCLE_LLC_MULTIPLE x the LLC: each forward step
    reads k new pool rows and writes k slots."""
    steps, k = config["steps"], config["k_target"]
    if (warm or k <= 0 or config["pattern"] not in ("uniform", "clustered") or llc <= 0
            or config.get("tier", "dram") != "dram"):
        return steps
    per_step = 2 * k * row_bytes
    needed = math.ceil(WARM_CYCLE_LLC_MULTIPLE * llc / per_step)
    return int(min(max(steps, needed), MAX_AUTO_STEPS))


def cycle_bytes(seq: torch.Tensor, row_bytes: int) -> int:
    """Distinct bytes one cycle of the paired update touches: every pool row that enters the
    active set at some step is read, and about as many slots are written."""
    changed = seq.any(dim=0) & ~seq.all(dim=0)
    return int(2 * int(changed.sum()) * row_bytes)


SYNTHETIC_HIDDEN, SYNTHETIC_GATE = [4096], ["on"]  # --hidden / --gate when not given


def trace_replays(args: argparse.Namespace) -> dict[tuple[str, int], masks.TraceReplay]:
    """Every (--trace file, --trace-tile) of the trace pattern, loaded; raises ValueError."""
    if "trace" not in args.pattern:
        return {}
    return {(path, tile): masks.replay_trace(path, layer=args.trace_layer, tile=tile,
                                             steps=args.steps)
            for path in args.trace for tile in args.trace_tile}


def configurations(args: argparse.Namespace, tunings: dict[int, common.Tuning],
                   replays: dict[tuple[str, int], masks.TraceReplay] | None = None) -> list[dict]:
    """The cartesian product of the axes: rows x m x k for the synthetic patterns, trace file x
    tile for the trace pattern (whose N, m and steps come from the replayed masks, and hidden
    and gate from the trace unless --hidden / --gate are given)."""
    configs = []
    gates = common.parse_bool_list(args.gate or SYNTHETIC_GATE)
    synthetic = [p for p in args.pattern if p != "trace"]
    tiers = getattr(args, "tier", None) or ["dram"]
    for tier, n, m, hidden, gate, dtype, threads, pattern in itertools.product(
            tiers, args.rows, args.m, args.hidden or SYNTHETIC_HIDDEN, gates, args.dtype,
            args.threads, synthetic):
        ks = args.k if pattern in ("uniform", "clustered") else [-1]
        tuning = tunings[threads]
        file_tier = {} if tier == "dram" else {
            "tier": tier, "queue_depth": getattr(args, "queue_depth", DEFAULT_QUEUE_DEPTH)}
        for k in ks:
            configs.append({**file_tier, "N": n, "m": m, "k_target": k, "hidden": hidden,
                            "gate": gate, "dtype": dtype, "threads": threads, "pattern": pattern,
                            "steps": args.steps, "beta": args.beta if pattern == "sticky" else None,
                            "trace": None,
                            "seed": args.seed, "grain": tuning.grain,
                            "par_threshold": tuning.par_threshold,
                            "hybrid_tau_frac": tuning.hybrid_tau_frac, "warm": args.warm})
    for (path, tile), replay in (replays or {}).items():
        hiddens = args.hidden or [replay.hidden]
        trace_gates = gates if args.gate else [
            True if replay.cache_has_gate is None else replay.cache_has_gate]
        for hidden, gate, dtype, threads in itertools.product(hiddens, trace_gates, args.dtype,
                                                              args.threads):
            tuning = tunings[threads]
            configs.append({"N": int(replay.seq.shape[1]),
                            "m": int(round(float(replay.seq.sum(dim=1).float().mean()))),
                            "k_target": -1, "hidden": hidden, "gate": gate, "dtype": dtype,
                            "threads": threads, "pattern": "trace",
                            "steps": int(replay.seq.shape[0]) - 1, "beta": None, "trace": path,
                            "trace_key": replay.key, "trace_layer": replay.layer,
                            "trace_tile": replay.tile, "seed": args.seed, "grain": tuning.grain,
                            "par_threshold": tuning.par_threshold,
                            "hybrid_tau_frac": tuning.hybrid_tau_frac, "warm": args.warm})
    return configs


def validate_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for n, m in itertools.product(args.rows, args.m):
        if not 0 <= m <= n:
            p.error(f"--m {m} must be in [0, --rows {n}]")
    for m, k in itertools.product(args.m, args.k):
        if k < 0 or (k > m and "uniform" in args.pattern):
            p.error(f"--k {k} must be in [0, --m {m}] (k rows of the m active ones are swapped)")
    for n, m, k in itertools.product(args.rows, args.m, args.k):
        if k > n - m and set(args.pattern) & {"uniform", "clustered"}:
            p.error(f"--k {k} exceeds the {n - m} inactive rows of --rows {n} --m {m}")
    if min(args.hidden or [1]) < 1 or min(args.threads) < 1 or args.steps < 1:
        p.error("--hidden, --threads and --steps must be >= 1")
    if args.queue_depth < 1:
        p.error(f"--queue-depth must be >= 1, got {args.queue_depth}")
    if "file" in args.tier and "trace" in args.pattern:
        p.error("--tier file measures synthetic patterns (uniform/clustered/sticky), not --pattern "
                "trace")
    for tier in args.tier:
        if not tier_methods(args, tier):
            p.error(f"--methods {' '.join(args.methods)}: none applies to --tier {tier} "
                    f"(its methods: {', '.join(TIER_METHODS[tier])})")
    if "trace" in args.pattern and not args.trace:
        p.error("--pattern trace needs --trace FILE")
    if args.trace and "trace" not in args.pattern:
        p.error("--trace is only read by --pattern trace")
    if min(args.trace_tile) < 1:
        p.error(f"--trace-tile must be >= 1, got {min(args.trace_tile)}")
    if args.trace_layer < 0:
        p.error(f"--trace-layer must be >= 0, got {args.trace_layer}")
    if not 0.0 <= args.beta < 1.0:
        p.error(f"--beta must be in [0, 1), got {args.beta}")
    try:
        common.parse_bool_list(args.gate or SYNTHETIC_GATE)
    except argparse.ArgumentTypeError as exc:
        p.error(f"--gate: {exc}")


def load_replays(p: argparse.ArgumentParser, args: argparse.Namespace):
    """trace_replays, with a bad file or argument (and a trace without a recorded hidden size
    when --hidden is not given) as a usage error naming it."""
    try:
        replays = trace_replays(args)
    except ValueError as exc:
        p.error(str(exc))
    for (path, _), replay in replays.items():
        if replay.hidden is None and not args.hidden:
            p.error(f"--trace {path} records no hidden size (no run.json with the model next to "
                    "it): give --hidden")
    return replays


def floor_of(method: str, results: dict, tier: str = "dram",
             engines: dict[str, str] | None = None) -> str | None:
    """The floor method whose time bounds ``method``'s from below, if measured in the group.

    File tier: the independent reader's time for the same records (``DISK_FLOORS``: paired and
    paired_indices -> disk_update_floor, full_reload -> disk_floor); where that one was not
    measured, the other (its time scaled by the bytes in :func:`group_rows`). A
    disk_update_floor read by the thread engine (``engines``: the group's reader engines) timed
    the reader's per-call overhead, not the disk, and is no floor. The floors have none."""
    if tier == "file":
        own = DISK_FLOORS.get(method)
        if own is None:
            return None
        usable = [f for f in (own, *(f for f in DISK_FLOORS.values() if f != own))
                  if f in results and not (f == "disk_update_floor"
                                           and (engines or {}).get(f) == diskread.THREADS)]
        return usable[0] if usable else None
    if method in REBUILD_METHODS:
        return "rebuild_floor" if "rebuild_floor" in results else None
    floors = {f: np.median(np.concatenate([np.asarray(v) for v in results[f].values]))
              for f in FLOOR_METHODS if f in results}
    return min(floors, key=floors.get) if floors else None


def group_rows(config: dict, result: timing.GroupResult, meta: dict, tuning: common.Tuning,
               pyperf_name: str, seed: int) -> list[dict]:
    """The CSV rows of one measured configuration."""
    methods = result.methods
    values = {name: mv.values for name, mv in methods.items()}
    written = result.info["rows_written"]
    read = result.info.get("bytes_read", {})
    tier = config.get("tier", "dram")
    row_bytes = config["row_bytes"]
    load_columns = load.combine(result.load)
    engines = result.info.get("reader_engine", {})
    rows = []
    for method in methods:
        s = stats.summary(values[method], seed=seed)
        rows_written = float(np.mean(written[method])) if written.get(method) else math.nan
        bytes_moved = rows_written * row_bytes
        speedups = {}
        for base in SPEEDUP_BASELINES:
            ratio = stats.ratio_interval(values[base], values[method], seed=seed) \
                if base in values else None
            speedups.update(stats.ratio_columns(f"speedup_vs_{base}", ratio))
        read_mean = float(np.mean(read[method])) if read.get(method) else 0.0
        floor = floor_of(method, methods, tier, engines)
        efficiency = stats.ratio_interval(values[floor], values[method], seed=seed) \
            if floor and rows_written else None
        if efficiency is not None and tier == "file":
            # the floor's time for its bytes, scaled to this method's bytes (1 when the floor
            # read the same records: disk_update_floor for paired, disk_floor for full_reload)
            floor_read = float(np.mean(read[floor])) if read.get(floor) else 0.0
            scale = read_mean / floor_read if floor_read else math.nan
            efficiency = tuple(x * scale for x in efficiency)
        full_read = float(np.mean(read["full_reload"])) if read.get("full_reload") else 0.0
        control = stats.ratio_interval(values["paired_control"], values[method], seed=seed) \
            if method == "paired" and "paired_control" in values else None
        plausible = (efficiency is None or math.isnan(efficiency[0])
                     or efficiency[0] <= PLAUSIBLE_EFFICIENCY)
        rows.append({
            **meta, "threads": config["threads"], "config_hash": config["hash"],
            "benchmark": "micro", "method": method, "role": ROLES[method], "N": config["N"],
            "m": config["m"], "k_target": config["k_target"], "k_mean": config["k_mean"],
            "hidden": config["hidden"], "gate": config["gate"], "dtype": config["dtype"],
            "pattern": config["pattern"], "steps": config["steps"],
            "trace": config.get("trace_key", ""), "trace_layer": config.get("trace_layer", 0),
            "trace_tile": config.get("trace_tile", 0), "m_mean": config["m_mean"],
            "tier": tier, "io_mode": result.info.get("io_mode", "memory"),
            "queue_depth": config.get("queue_depth", 0),
            "slow_bytes_read_mean": read_mean,
            "read_mbps": read_mean / s["median_s"] / 1e6 if read_mean else 0.0,
            "bytes_ratio_vs_full_reload": (full_read / read_mean if full_read and read_mean
                                           else math.nan),
            "rows_written_mean": rows_written, "bytes_moved_mean": bytes_moved,
            **s, "pyperf_json": pyperf_name,
            "gbps": bytes_moved / s["median_s"] / 1e9,
            **speedups,
            "floor_method": floor or "none",
            "floor_engine": engines.get(method if method in DISK_FLOORS.values() else floor, "")
            if tier == "file" else "",
            **stats.ratio_columns("efficiency_vs_floor", efficiency),
            "plausible": plausible,
            **stats.ratio_columns("control_ratio", control),
            "cycle_bytes": config["cycle_bytes"], "llc_bytes": config["llc_bytes"],
            "cache_state": config["cache_state"],
            **load_columns,
            **tuning.columns(),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    validate_args(p, args)
    replays = load_replays(p, args)
    if args.build_dir:
        from .._extension import load_extension

        load_extension(args.build_dir)
    shape = {"N": args.rows[0], "m": args.m[0], "hidden": (args.hidden or SYNTHETIC_HIDDEN)[0]}
    if args.pattern == ["trace"]:  # the shape autotune is compared with: the first trace's
        first = configurations(args, {t: common.Tuning() for t in args.threads}, replays)[0]
        shape = {key: first[key] for key in shape}
    tunings = {t: common.resolve_tuning(args, shape, threads=t) for t in args.threads}
    out = Path(args.out)
    mask_dir = out.with_name(out.stem + ".masks")
    mask_dir.mkdir(parents=True, exist_ok=True)
    pool_dir = Path(args.pool_dir) if args.pool_dir else out.with_name(out.stem + ".pools")
    try:
        return _run(args, out, mask_dir, pool_dir, tunings, replays)
    finally:
        if not args.keep_pools:
            remove_pool_files(pool_dir)


def pool_file_for(config: dict, pool_dir: Path) -> Path:
    """The group's pool file (one per weight shape and seed, shared by its k), written once from
    the same weights the workers build (make_weights), its pages dropped from the page cache."""
    key = common.config_hash({f: config[f] for f in ("N", "hidden", "gate", "dtype", "seed")})
    path = pool_dir / f"{key}.pool"
    if not path.exists():
        pool_dir.mkdir(parents=True, exist_ok=True)
        write_pool_file(path, *make_weights(config))
        drop_cached_pages(path)
    return path


def _run(args, out: Path, mask_dir: Path, pool_dir: Path, tunings: dict, replays: dict) -> int:
    meta = common.run_metadata()
    llc = hostinfo.llc_bytes()
    groups, configs = [], []
    for config in configurations(args, tunings, replays):
        elem = torch.tensor([], dtype=DTYPES[config["dtype"]]).element_size()
        row_bytes = elem * config["hidden"] * (3 if config["gate"] else 2)
        steps = sequence_steps(config, row_bytes, llc, args.warm)
        config = {**config, "steps": steps}
        chash = common.config_hash(config)
        if config["pattern"] == "trace":
            seq = replays[(config["trace"], config["trace_tile"])].seq
        else:
            seq = masks.make_sequence(config["pattern"], n=config["N"], m=config["m"],
                                      k=max(config["k_target"], 0), steps=steps,
                                      seed=config["seed"], beta=args.beta)
        masks_path = mask_dir / f"{chash}.pt"
        torch.save(seq, masks_path)
        touched = cycle_bytes(seq, row_bytes)
        state = "none" if touched == 0 else ("cold" if llc and touched > llc else "warm")
        configs.append({**config, "hash": chash, "row_bytes": row_bytes,
                        "k_mean": float(masks.churn(seq).float().mean()), "cycle_bytes": touched,
                        "m_mean": float(seq.sum(dim=1).float().mean()),
                        "llc_bytes": llc, "cache_state": state})
        tier = config.get("tier", "dram")
        if tier == "file":
            config["pool_path"] = str(pool_file_for(config, pool_dir))
            configs[-1]["pool_path"] = config["pool_path"]
        groups.append({**config, "name": chash, "methods": tier_methods(args, tier),
                       "masks_path": str(masks_path)})

    pyperf_json = out.with_suffix(".pyperf.json")
    results = timing.run_groups(__name__, groups, pyperf_json=pyperf_json,
                                options=common.timing_options(args), build_dir=args.build_dir,
                                quiet=args.quiet,
                                label="micro_trace" if args.pattern == ["trace"] else
                                "micro_file" if args.tier == ["file"] else "micro")
    rows = []
    for config in configs:
        rows += group_rows(config, results[config["hash"]], meta, tunings[config["threads"]],
                           pyperf_json.name, args.seed)
    common.write_csv(rows, out, "micro")
    if not args.quiet:
        print_goals(rows)
    return 0


def print_goals(rows: list[dict]) -> None:
    """The issue's performance goals as ratios measured in this run (reported, never asserted)."""
    by = {(r["config_hash"], r["method"]): r for r in rows}
    print("\nthreads k      paired vs torch_delta (>=3 @k<=256)   paired/floor (>=0.8 @k>=64)   "
          "vs index_select [bytes bound]   hybrid vs best rebuild (>=0.95)   control   flags")
    for (chash, method), r in by.items():
        if method != "paired" or r["tier"] != "dram":
            continue
        k = r["k_target"]
        delta = r["speedup_vs_torch_delta"]
        eff = r["efficiency_vs_floor"]
        sp = r["speedup_vs_index_select"]
        bound = r["m"] / r["rows_written_mean"] if r["rows_written_mean"] else math.inf
        # hybrid vs the best rebuild = the smaller of its speedups over the two rebuilds
        hybrid = by.get((chash, "hybrid")) or {}
        hy = min((x for x in (hybrid.get("speedup_vs_index_select", math.nan),
                              hybrid.get("speedup_vs_rebuild_floor", math.nan))
                  if not math.isnan(x)), default=math.nan)
        ctl = (r["control_ratio_ci95_low"] <= 1.0 <= r["control_ratio_ci95_high"]
               if not math.isnan(r["control_ratio"]) else None)
        flags = ",".join(f for f, on in (("implausible", not r["plausible"]), ("busy", r["busy"]))
                         if on) or "-"
        print(f"{r['threads']:<7} {k:<6} {delta:7.2f} [{r['speedup_vs_torch_delta_ci95_low']:.2f}, "
              f"{r['speedup_vs_torch_delta_ci95_high']:.2f}] "
              f"{'ok' if not (0 < k <= 256) or delta >= 3 else 'MISS':<4}        "
              f"{eff:6.2f} {'ok' if not k >= 64 or eff >= 0.8 else 'MISS':<4}                "
              f"{sp:8.2f} [{bound:7.1f}]                  {hy:6.2f} "
              f"{'ok' if math.isnan(hy) or hy >= 0.95 else 'MISS':<4}                     "
              f"{'-' if ctl is None else ('agrees' if ctl else 'DISAGREES'):<9} {flags}  "
              f"[{r['pattern']}, N={r['N']}, m={r['m']}, hidden={r['hidden']}, {r['dtype']}"
              + (f", {r['trace']} from layer {r['trace_layer']} x{r['trace_tile']} layers"
                 if r["trace"] else "") + "]")
    file_rows = [r for r in rows if r["tier"] == "file" and r["method"] == "paired"]
    if file_rows:
        print("\nfile tier: threads k      paired ms   MB read  MB/s    vs full_reload "
              "(>= 0.8 x bytes ratio)   vs its floor (>= 0.8) [floor, reader]          "
              "disk MB/s   io")
    for r in file_rows:
        sp, ratio = r["speedup_vs_full_reload"], r["bytes_ratio_vs_full_reload"]
        eff = r["efficiency_vs_floor"]
        sp_ok = math.isnan(sp) or math.isnan(ratio) or sp >= 0.8 * ratio
        eff_ok = math.isnan(eff) or eff >= 0.8
        big = by.get((r["config_hash"], "disk_floor"))  # the disk's big-batch throughput
        floor = f"[{r['floor_method']}, {r['floor_engine'] or '-'}]"
        print(f"           {r['threads']:<7} {r['k_target']:<6} {r['median_s'] * 1e3:9.2f} "
              f"{r['slow_bytes_read_mean'] / 1e6:8.1f} {r['read_mbps']:6.0f}  {sp:7.2f} "
              f"[{r['speedup_vs_full_reload_ci95_low']:.2f}, "
              f"{r['speedup_vs_full_reload_ci95_high']:.2f}] (bytes {ratio:6.1f}) "
              f"{'ok' if sp_ok else 'MISS':<4}   {eff:6.2f} {'ok' if eff_ok else 'MISS':<4} "
              f"{floor:<32} {big['read_mbps'] if big else math.nan:7.0f}     "
              f"{r['io_mode']} qd {r['queue_depth']}  [N={r['N']}, m={r['m']}, "
              f"hidden={r['hidden']}, {r['dtype']}]")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
