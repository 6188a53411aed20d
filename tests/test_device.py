"""DeviceWeightCache (``paired_replacement.device``) on the host backend, and the GPU check's CPU parts.

The device cache runs the same code on ``device="cpu"`` as on CUDA (synchronously): every update
is checked against
  * plain torch gathers of the ORIGINAL weights in the bookkeeping's slot order (bit for bit);
  * a plain ``WeightCache`` fed the same updates (slot order, block contents, rows written);
and bad input must raise before anything moves. CUDA-only tests are skipped without a GPU; the
whole check on a GPU is ``python -m paired_replacement.gpu_check``.

Run: ``.venv/bin/python -m pytest tests/test_device.py -q``.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from paired_replacement import WeightCache, load_extension
from paired_replacement import gpu_check
from paired_replacement.device import DEVICE_TAU, DeviceUpdateWork, DeviceWeightCache

load_extension()

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
POOLS = ["pinned", "device"]
N, H = 130, 6  # N crosses two 64-bit mask words
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def weights(n=N, hidden=H, dtype=torch.float32, gate=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, hidden, generator=gen).to(dtype) if gate else None
    u = torch.randn(n, hidden, generator=gen).to(dtype)
    d = torch.randn(hidden, n, generator=gen).to(dtype)
    return g, u, d


def bits(t: torch.Tensor) -> torch.Tensor:
    """A copy of the whole buffer's bits (NaN-safe equality)."""
    return t.clone().view({4: torch.int32, 2: torch.int16}[t.element_size()])


class World:
    """A DeviceWeightCache on the CPU, a plain WeightCache fed the same updates, the originals."""

    def __init__(self, dtype=torch.float32, pool="pinned", gate_mode="tensor", n=N, hidden=H,
                 seed=0, staging_rows=None, tau=None, init_density=0.4, device="cpu"):
        self.n, self.hidden, self.device = n, hidden, device
        self.rng = np.random.default_rng(seed)
        g, self.up, self.down = weights(n, hidden, dtype, gate_mode == "tensor", seed)
        self.gate = g
        self.originals = [t.clone() for t in (self.up, self.down)]
        gate_arg = {"tensor": g, "none": None, "empty": torch.empty(0, dtype=dtype)}[gate_mode]
        self.full_cat = torch.cat([g, self.up], 1) if g is not None else self.up.clone()
        m0 = torch.from_numpy(self.rng.random(n) < init_density)
        self.cache = DeviceWeightCache(m0, hidden, gate_arg, self.up, self.down, device=device,
                                       pool=pool, staging_rows=staging_rows, hybrid_tau_frac=tau)
        self.plain = WeightCache(m0, hidden, gate_arg, self.up, self.down,
                                 hybrid_tau_frac=DEVICE_TAU if tau is None else tau)
        self.check("init")

    # ---- updates driven on both caches ----
    def masks(self, new: np.ndarray):
        for c in (self.cache, self.plain):
            c.update_active_weights(torch.from_numpy(new.copy()))

    def indices(self, added, removed):
        for c in (self.cache, self.plain):
            c.update_from_indices(np.asarray(added, dtype=np.int64),
                                  np.asarray(removed, dtype=np.int64))

    def random_step(self, step: int) -> str:
        n, rng = self.n, self.rng
        mask = self.cache.mask.numpy()
        r = step % 8
        if r == 0:
            self.masks(np.zeros(n, dtype=bool))
            return "m=0"
        if r == 1:
            self.masks(rng.random(n) < rng.random())  # growth from 0
            return "grow"
        if r == 2:
            self.masks(np.ones(n, dtype=bool))
            return "m=N"
        if r == 3:
            self.masks(rng.random(n) < 0.3)  # shrink
            return "shrink"
        if r in (4, 5):
            new = mask.copy()
            flip = rng.choice(n, size=int(rng.integers(0, n // 6)), replace=False)
            new[flip] = ~new[flip]
            self.masks(new)
            return "churn"
        active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
        a = rng.permutation(inactive)[: int(rng.integers(0, inactive.size + 1))]
        rm = rng.permutation(active)[: int(rng.integers(0, active.size + 1))]
        self.indices(a, rm)
        return "indices"

    # ---- expectations ----
    def check(self, what: str):
        c, p = self.cache, self.plain
        idx = c.active_indices()
        assert torch.equal(idx, p.active_indices()), f"{what}: slot order differs"
        assert torch.equal(c.mask, p.mask), what
        assert torch.equal(c.position_map(), p.position_map()), what
        assert c.num_active == p.num_active == idx.numel(), what
        cat, down = c.get_concat_weight(), c.get_active_down_weight()
        assert cat.device.type == self.device and down.device.type == self.device
        assert cat.shape == (idx.numel(), self.full_cat.shape[1]), what
        assert down.shape == (self.hidden, idx.numel()), what
        # bit for bit against plain torch on the originals, and against WeightCache's block
        assert torch.equal(cat.cpu(), self.full_cat.index_select(0, idx)), f"{what}: gate|up"
        assert torch.equal(down.cpu(), self.down.index_select(1, idx)), f"{what}: down"
        assert torch.equal(cat.cpu(), p.get_concat_weight()), f"{what}: vs WeightCache"
        assert torch.equal(down.cpu(), p.get_active_down_weight()), f"{what}: vs WeightCache"
        ps, st = p.last_update_stats(), c.last_update_stats()
        assert (st.added, st.removed, st.path, st.m_before, st.m_after) == \
            (ps.added, ps.removed, ps.path, ps.m_before, ps.m_after), what
        if ps.path == "paired":
            assert st.rows_written == ps.rows_written, f"{what}: rows moved != core's W"
        else:
            assert st.rows_written <= ps.rows_written, what
        assert c.last_update_work().core_rows_written == ps.rows_written

    def state(self):
        c = self.cache
        b = c.buffers()
        return dict(active=c.active_indices(), mask=c.mask, pos=c.position_map(),
                    stats=c.last_update_stats(), work=c.last_update_work(), m=c.num_active,
                    packed_cat=bits(b["packed_cat"]), packed_down=bits(b["packed_down"]),
                    ptrs={k: v.data_ptr() for k, v in b.items()})

    def assert_unchanged(self, before):
        after = self.state()
        for key in ("active", "mask", "pos", "packed_cat", "packed_down"):
            assert torch.equal(before[key], after[key]), key
        for key in ("stats", "work", "m", "ptrs"):
            assert before[key] == after[key], key
        self.cache.check_invariants()


# --------------------------------------------------------------------------------------------
# equivalence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("gate_mode", ["tensor", "none", "empty"])
def test_random_sequences_match_torch_and_weight_cache(dtype, pool, gate_mode):
    for seed in range(2):
        w = World(dtype, pool, gate_mode, seed=seed)
        for step in range(40):
            what = w.random_step(step)
            w.check(f"seed {seed} step {step} ({what})")
        w.cache.check_invariants()


@pytest.mark.parametrize("staging_rows", [1, 3, 64])
@pytest.mark.parametrize("pool", POOLS)
def test_staging_in_rounds(staging_rows, pool):
    w = World(torch.float16, pool, staging_rows=staging_rows, seed=3)
    assert w.cache.staging_rows == staging_rows
    for step in range(24):
        w.random_step(step)
        w.check(f"step {step}")
        work = w.cache.last_update_work()
        assert work.chunks == -(-work.rows_moved // staging_rows)
    w.cache.check_invariants()


@pytest.mark.parametrize("tau", [0.0, 0.3, 0.5])
def test_rebuild_path_moves_only_changed_slots(tau):
    w = World(torch.float32, "pinned", tau=tau, seed=5)
    assert w.cache.hybrid_tau_frac == tau
    paths = set()
    for step in range(40):
        w.random_step(step)
        w.check(f"step {step}")  # rows moved <= the core's m' on a rebuild
        paths.add(w.plain.last_update_stats().path)
    assert "rebuild" in paths
    # the rows moved are exactly the slots whose row changed
    before = w.cache.active_indices()
    w.masks(w.cache.mask.numpy() ^ (w.rng.random(N) < 0.2))
    after = w.cache.active_indices()
    k = min(before.numel(), after.numel())
    changed = int((before[:k] != after[:k]).sum()) + max(0, after.numel() - before.numel())
    assert w.cache.last_update_stats().rows_written == changed


def test_default_tau_never_rebuilds():
    w = World(seed=7)
    assert w.cache.hybrid_tau_frac == DEVICE_TAU == 2.0
    for step in range(16):
        w.random_step(step)
        assert w.cache.last_update_stats().path in ("paired", "noop")
    w.cache.hybrid_tau_frac = 0.0
    assert w.plain.hybrid_tau_frac != w.cache.hybrid_tau_frac  # only the device cache changed
    w.cache.update_active_weights(torch.from_numpy(w.rng.random(N) < 0.5))
    assert w.cache.last_update_stats().path == "rebuild"


def test_work_counts_bytes():
    for pool in POOLS:
        w = World(torch.float16, pool, seed=11)
        w.masks(w.cache.mask.numpy() ^ (w.rng.random(N) < 0.1))
        work = w.cache.last_update_work()
        assert isinstance(work, DeviceUpdateWork)
        row_bytes = (2 * H + H) * 2  # gate|up row + down row, float16
        assert work.bytes_written == work.rows_moved * row_bytes
        assert work.bytes_h2d == (work.rows_moved * row_bytes if pool == "pinned" else 0)
        assert work.index_bytes_h2d == work.rows_moved * 8 * (1 if pool == "pinned" else 2)
        assert work.chunks == (1 if work.rows_moved else 0)
        assert work.asynchronous is False
        w.masks(w.cache.mask.numpy())  # no change
        assert w.cache.last_update_work().rows_moved == 0
        assert w.cache.last_update_stats().path == "noop"


def test_views_alias_the_live_block_and_snapshot_does_not():
    w = World(seed=2)
    view = w.cache.get_concat_weight()
    snap_cat, snap_down = w.cache.snapshot()
    assert view.data_ptr() == w.cache.buffers()["packed_cat"].data_ptr()
    w.masks(w.cache.mask.numpy() ^ (w.rng.random(N) < 0.2))
    w.check("after")
    m = min(view.shape[0], w.cache.num_active)
    assert torch.equal(view[:m], w.cache.get_concat_weight()[:m])
    assert snap_cat.data_ptr() != view.data_ptr()
    assert get_copy_is_copy(w.cache)


def get_copy_is_copy(cache) -> bool:
    a = cache.get_concat_weight(copy=True)
    b = cache.get_active_down_weight(copy=True)
    return (a.data_ptr() != cache.buffers()["packed_cat"].data_ptr()
            and b.data_ptr() != cache.buffers()["packed_down"].data_ptr())


def test_numpy_mask_and_pool_accessors():
    w = World(seed=4)
    new = w.rng.random(N) < 0.5
    w.cache.update_active_weights(new)  # a numpy bool mask, like WeightCache
    w.plain.update_active_weights(new)
    w.check("numpy mask")
    assert torch.equal(w.cache.pool_concat_weight(), w.full_cat)
    assert torch.equal(w.cache.pool_down_weight_t(), w.down.t())
    assert w.cache.device == torch.device("cpu") and w.cache.pool == "pinned"
    assert w.cache.stream is None and w.cache.ready_event is None
    w.cache.wait()  # no-ops on the host backend
    w.cache.synchronize()
    assert "DeviceWeightCache(N=130" in repr(w.cache)
    # the weights were copied into the cache's own pools
    for t, o in zip((w.up, w.down), w.originals):
        assert torch.equal(t, o)


def test_non_contiguous_weights_are_copied():
    g, u, d = weights(dtype=torch.float32, seed=9)
    mask = torch.from_numpy(np.random.default_rng(0).random(N) < 0.5)
    cache = DeviceWeightCache(mask, H, g.t().contiguous().t(), u, d.t().contiguous().t(),
                              device=torch.device("cpu"), pool="device")
    idx = cache.active_indices()
    assert torch.equal(cache.get_concat_weight(), torch.cat([g, u], 1)[idx])
    assert torch.equal(cache.get_active_down_weight(), d[:, idx])


# --------------------------------------------------------------------------------------------
# no per-update allocation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", POOLS)
def test_buffer_addresses_never_change(pool):
    w = World(torch.bfloat16, pool, seed=8, staging_rows=5)
    ptrs = {k: v.data_ptr() for k, v in w.cache.buffers().items()}
    expected = {"pool_cat", "pool_down", "packed_cat", "packed_down", "dev_stage_cat",
                "dev_stage_down", "idx_host", "idx_dev", "row_at"}
    if pool == "pinned":
        expected |= {"host_stage_cat", "host_stage_down"}
    assert set(ptrs) == expected
    for step in range(32):
        w.random_step(step)
        if w.cache.num_active:  # (an empty view's data_ptr is 0)
            assert w.cache.get_concat_weight().data_ptr() == ptrs["packed_cat"]
            assert w.cache.get_active_down_weight().data_ptr() == ptrs["packed_down"]
        assert {k: v.data_ptr() for k, v in w.cache.buffers().items()} == ptrs, f"step {step}"
    w.check("end")


def test_allocation_check_on_cpu():
    for pool in POOLS:
        rec = gpu_check.allocation_check("cpu", n=200, hidden=8, dtype=torch.float16, pool=pool,
                                         stream=False, updates=20)
        assert rec["ok"] and rec["buffers_moved"] == [] and rec["allocations"] == "none"


# --------------------------------------------------------------------------------------------
# check_invariants
# --------------------------------------------------------------------------------------------


def test_check_invariants_names_the_corrupted_slot():
    w = World(torch.float16, "device", seed=6, init_density=0.6)
    cache = w.cache
    cache.check_invariants()
    slot = cache.num_active // 2
    row = int(cache.active_indices()[slot])
    cache.get_concat_weight()[slot, 0] += 1  # a write into a read-only-by-contract view
    with pytest.raises(RuntimeError, match=rf"gate\|up row at slot {slot} .*pool row {row}\b"):
        cache.check_invariants()
    cache.get_concat_weight()[slot].copy_(w.full_cat[row])
    cache.check_invariants()
    cache.get_active_down_weight()[H - 1, 3] = float("nan")
    with pytest.raises(RuntimeError, match=r"down row at slot 3 "):
        cache.check_invariants()
    # the slot is rewritten only if its row changes: the corruption survives other updates
    active = np.flatnonzero(cache.mask.numpy())
    keep = int(cache.active_indices()[3])
    w.indices([], [r for r in active[:4] if r != keep][:2])
    with pytest.raises(RuntimeError, match=r"down row at slot \d+ "):
        cache.check_invariants()


def test_check_invariants_bit_exact_for_signed_zero():
    g, u, d = weights(seed=1)
    u[:, 0] = 0.0
    mask = torch.ones(N, dtype=torch.bool)
    cache = DeviceWeightCache(mask, H, g, u, d, device="cpu")
    cache.get_concat_weight()[0, H] = -0.0  # equal as a float, not bit for bit
    with pytest.raises(RuntimeError, match="slot 0 "):
        cache.check_invariants()


# --------------------------------------------------------------------------------------------
# bad input: raised before anything moves, state unchanged
# --------------------------------------------------------------------------------------------

BAD_MASKS = [
    (lambda: torch.ones(N + 1, dtype=torch.bool), ValueError, "must have N = 130 entries"),
    (lambda: torch.ones(N - 1, dtype=torch.bool), ValueError, "must have N = 130 entries"),
    (lambda: torch.ones(N, dtype=torch.int64), TypeError, "must have dtype torch.bool"),
    (lambda: torch.ones(N, dtype=torch.float32), TypeError, "must have dtype torch.bool"),
    (lambda: torch.ones(2, N, dtype=torch.bool), ValueError, "must be 1-D"),
    (lambda: np.ones(N, dtype=np.int8), TypeError, "mask must be a bool array"),
    (lambda: [True] * N, TypeError, "mask must be a torch.Tensor or numpy.ndarray"),
]


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("bad", BAD_MASKS, ids=[b[2][:24] + str(i) for i, b in enumerate(BAD_MASKS)])
def test_bad_mask_raises_and_leaves_state(pool, bad):
    make, exc, msg = bad
    w = World(torch.float32, pool, seed=12)
    w.random_step(5)  # a non-trivial, unsorted slot order
    before = w.state()
    with pytest.raises(exc, match=msg):
        w.cache.update_active_weights(make())
    w.assert_unchanged(before)
    w.random_step(4)
    w.check("a valid update after the error")


def test_bad_indices_raise_and_leave_state():
    w = World(torch.float16, "pinned", seed=13)
    w.random_step(5)
    mask = w.cache.mask.numpy()
    a_in, a_out = int(np.flatnonzero(mask)[0]), int(np.flatnonzero(~mask)[0])
    cases = [
        (([N], []), IndexError, r"added\[0\] = 130 is out of range \[0, 130\)"),
        (([-1], []), IndexError, "out of range"),
        (([], [N + 5]), IndexError, r"removed\[0\] = 135 is out of range"),
        (([a_out, a_out], []), ValueError, "duplicate"),
        (([a_in], []), ValueError, "already active"),
        (([], [a_out]), ValueError, "is not active"),
        (([1.0], []), TypeError, "integer row ids"),
        ((np.zeros((2, 1), dtype=np.int64), []), ValueError, "1-D"),
        ((torch.tensor([True]), []), TypeError, "integer row ids"),
        (([a_out], [a_in, N]), IndexError, "out of range"),  # a valid part is not applied either
    ]
    for args, exc, msg in cases:
        before = w.state()
        with pytest.raises(exc, match=msg):
            w.cache.update_from_indices(*args)
        w.assert_unchanged(before)
    w.indices([a_out], [a_in])
    w.check("valid index update")


def _ctor(**over):
    g, u, d = weights(seed=0)
    kw = dict(mask=torch.zeros(N, dtype=torch.bool), hidden_size=H, gate_weight=g, up_weight=u,
              down_weight=d, device="cpu")
    kw.update(over)
    args = [kw.pop(k) for k in ("mask", "hidden_size", "gate_weight", "up_weight", "down_weight")]
    return DeviceWeightCache(*args, **kw)


def test_constructor_accepts_good_input():
    cache = _ctor(mask=torch.ones(N, dtype=torch.bool), pool="device", staging_rows=N)
    assert cache.num_active == N and cache.staging_rows == N
    cache.check_invariants()


@pytest.mark.parametrize("over, exc, msg", [
    (dict(device="cdua"), ValueError, "device must be 'cpu', 'cuda' or 'cuda:<index>', got 'cdua'"),
    (dict(device="gpu"), ValueError, "device must be"),
    (dict(device="meta"), ValueError, "device must be 'cpu' or a CUDA device, got 'meta'"),
    (dict(device=0), TypeError, "device must be a str or torch.device"),
    (dict(pool="gpu"), ValueError, "pool must be 'pinned' or 'device', got 'gpu'"),
    (dict(stream=True), ValueError, "stream= needs a CUDA device"),
    (dict(staging_rows=0), ValueError, r"staging_rows must be in \[1, N\] = \[1, 130\]"),
    (dict(staging_rows=N + 1), ValueError, "staging_rows must be in"),
    (dict(staging_rows=2.0), TypeError, "staging_rows must be an integer"),
    (dict(hidden_size=H + 1), ValueError, r"up_weight must have shape \[N, hidden_size\]"),
    (dict(hidden_size=0), ValueError, "hidden_size must be >= 1"),
    (dict(hidden_size=True), TypeError, "hidden_size must be an integer"),
    (dict(up_weight=torch.zeros(N, H, dtype=torch.int32)), TypeError,
     "up_weight must be float32, float16 or bfloat16"),
    (dict(up_weight=torch.zeros(N, H, 1)), ValueError, "up_weight must be 2-D"),
    (dict(up_weight=torch.zeros(0, H)), ValueError, "at least one row"),
    (dict(up_weight=[[0.0] * H] * N), TypeError, "up_weight must be a torch.Tensor"),
    (dict(down_weight=torch.zeros(H, N - 1)), ValueError,
     r"down_weight must have shape \[hidden_size, N\] = \[6, 130\], got \[6, 129\]"),
    (dict(down_weight=torch.zeros(N, H)), ValueError, "down_weight must have shape"),
    (dict(down_weight=torch.zeros(H, N, dtype=torch.float16)), TypeError,
     "down_weight must have dtype torch.float32 like up_weight"),
    (dict(gate_weight=torch.zeros(N - 1, H)), ValueError,
     r"gate_weight must have shape \[N, hidden_size\] = \[130, 6\]"),
    (dict(gate_weight=torch.zeros(N, H, dtype=torch.bfloat16)), TypeError,
     "gate_weight must have dtype torch.float32"),
    (dict(gate_weight=torch.zeros(N * H)), ValueError, "gate_weight must be 2-D"),
    (dict(gate_weight=torch.empty(0, dtype=torch.int64)), TypeError, "an empty gate"),
    (dict(gate_weight=torch.zeros(N, H).to_sparse()), ValueError, "dense"),
    (dict(mask=torch.zeros(N + 1, dtype=torch.bool)), ValueError, "must have N = 130 entries"),
    (dict(mask=torch.zeros(N, dtype=torch.uint8)), TypeError, "must have dtype torch.bool"),
    (dict(hybrid_tau_frac=-1.0), ValueError, "hybrid_tau_frac must be finite and >= 0"),
    (dict(hybrid_tau_frac="x"), TypeError, "hybrid_tau_frac must be a number"),
])
def test_constructor_bad_input(over, exc, msg):
    with pytest.raises(exc, match=msg):
        _ctor(**over)


@pytest.mark.skipif(CUDA, reason="checks the message without CUDA")
def test_cuda_device_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device 'cuda' is not available: torch.cuda.is_available"):
        _ctor(device="cuda")


def test_copy_and_pickle_refused():
    cache = _ctor()
    for fn in (copy.copy, copy.deepcopy, pickle.dumps):
        with pytest.raises(TypeError, match="DeviceWeightCache cannot be"):
            fn(cache)


# --------------------------------------------------------------------------------------------
# threads and failures
# --------------------------------------------------------------------------------------------


def test_second_updater_is_refused_while_one_moves_rows(monkeypatch):
    w = World(seed=14)
    cache = w.cache
    entered, release = threading.Event(), threading.Event()
    real = cache._copy_rows

    def slow_copy(*args):
        entered.set()
        assert release.wait(10)
        return real(*args)

    monkeypatch.setattr(cache, "_copy_rows", slow_copy)
    target = w.rng.random(N) < 0.5
    errors: list[BaseException] = []

    def first():
        try:
            cache.update_active_weights(torch.from_numpy(target.copy()))
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=first)
    t.start()
    assert entered.wait(10)
    try:
        with pytest.raises(RuntimeError, match="update_from_indices: the cache is being updated "
                                               "by another thread"):
            cache.update_from_indices([], [])
        with pytest.raises(RuntimeError, match="being updated by another thread"):
            cache.update_active_weights(torch.zeros(N, dtype=torch.bool))
    finally:
        release.set()
        t.join(10)
    assert not errors
    monkeypatch.undo()
    w.plain.update_active_weights(torch.from_numpy(target.copy()))
    w.check("after the refused calls")


def test_failed_move_is_reported_and_repaired(monkeypatch):
    w = World(seed=15)
    cache = w.cache

    def broken(*args):
        raise RuntimeError("simulated copy failure")

    monkeypatch.setattr(cache, "_copy_rows", broken)
    new = torch.from_numpy(w.cache.mask.numpy() ^ (w.rng.random(N) < 0.3))
    with pytest.raises(RuntimeError, match="simulated copy failure"):
        cache.update_active_weights(new)
    w.plain.update_active_weights(new)
    # the slot map follows the bookkeeper; the block is known to be stale
    assert torch.equal(cache.active_indices(), w.plain.active_indices())
    with pytest.raises(RuntimeError, match="partly written"):
        cache.check_invariants()
    monkeypatch.undo()
    w.masks(w.cache.mask.numpy() ^ (w.rng.random(N) < 0.1))
    assert cache.last_update_stats().rows_written == cache.num_active  # every slot rewritten
    w.cache.check_invariants()
    w.random_step(4)
    w.check("after repair")


# --------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU; the same checks run in python -m paired_replacement.gpu_check)
# --------------------------------------------------------------------------------------------


@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("stream", [False, True])
def test_cuda_equivalence(dtype, pool, stream):
    rec = gpu_check.check_sequence("cuda", dtype, pool=pool, stream=stream, gate=True, n=N,
                                   hidden=H, steps=40, seed=1)
    assert rec["ok"], rec.get("error")
    rec = gpu_check.check_sequence("cuda", dtype, pool=pool, stream=stream, gate=False, n=N,
                                   hidden=H, steps=20, seed=2, staging_rows=5)
    assert rec["ok"], rec.get("error")


@needs_cuda
@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("stream", [False, True])
def test_cuda_no_row_sized_allocation(pool, stream):
    rec = gpu_check.allocation_check("cuda", n=512, hidden=64, dtype=torch.float16, pool=pool,
                                     stream=stream, updates=30)
    assert rec["ok"], rec


@needs_cuda
def test_cuda_world_and_side_stream_event():
    w = World(torch.float16, "pinned", device="cuda", seed=16)
    for step in range(16):
        w.random_step(step)
        w.check(f"step {step}")
    g, u, d = weights(dtype=torch.float16)
    cache = DeviceWeightCache(torch.ones(N, dtype=torch.bool), H, g, u, d, device="cuda",
                              stream=True)
    assert cache.stream is not None and cache.ready_event is not None
    assert cache.last_update_work().asynchronous
    cache.update_active_weights(torch.zeros(N, dtype=torch.bool).cuda())  # a CUDA mask is fine
    assert cache.num_active == 0
    cache.check_invariants()


# --------------------------------------------------------------------------------------------
# gpu_check's CPU parts
# --------------------------------------------------------------------------------------------


def test_gpu_check_arguments():
    a = gpu_check.parse_args([])
    assert (a.device, a.n, a.m, a.hidden, a.ks, a.dtypes) == \
        ("cuda", 8192, 2048, 4096, [16, 64, 256, 1024], ["float16", "float32"])
    assert a.repeats >= 20 and a.json is None and not a.require_gpu
    a = gpu_check.parse_args(["--ks", "1,2", "--dtypes", "bfloat16", "--json", "x.json",
                              "--device", "cpu", "--require-gpu"])
    assert a.ks == [1, 2] and a.dtypes == ["bfloat16"] and a.json == "x.json" and a.require_gpu
    for bad in (["--m", "9000"], ["--ks", "3000"], ["--ks", "a,b"], ["--dtypes", "int8"],
                ["--repeats", "0"], ["--n", "100", "--m", "90", "--ks", "20"]):
        with pytest.raises(SystemExit) as e:
            gpu_check.parse_args(bad)
        assert e.value.code == 2, bad


def test_gpu_check_without_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "no GPU" in out and "nothing was checked" in out
    assert gpu_check.main(["--require-gpu"]) == gpu_check.EXIT_NO_GPU != 0
    assert "no GPU" in capsys.readouterr().out
    assert gpu_check.no_gpu_reason("cpu") is None


@pytest.mark.skipif(CUDA, reason="the no-GPU path of the module entry point")
def test_gpu_check_module_entry_point_without_gpu():
    r = subprocess.run([sys.executable, "-m", "paired_replacement.gpu_check"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "gpu_check: no GPU" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "paired_replacement.gpu_check", "--require-gpu"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == gpu_check.EXIT_NO_GPU, r.stdout + r.stderr


def test_gpu_check_tiny_cpu_run_writes_json(tmp_path, capsys):
    out = tmp_path / "sub" / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--n", "256", "--m", "64", "--hidden", "16",
                         "--ks", "4,32", "--dtypes", "float16,bfloat16", "--repeats", "3",
                         "--warmup", "1", "--eq-n", "70", "--eq-steps", "12", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "equivalence: 12/12 sequences equal" in text and "gpu_check: ok" in text
    assert "paired_pinned_pool" in text and "full_to_device" in text
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["info"]["device"] == "cpu"
    assert len(report["equivalence"]) == 12 and all(r["ok"] for r in report["equivalence"])
    assert report["allocation"] and all(r["ok"] for r in report["allocation"])
    methods = {"paired_device_pool", "paired_pinned_pool", "index_select_rebuild",
               "full_to_device"}
    rows = report["timings"]
    assert len(rows) == 2 * 2 * len(methods)
    assert {r["method"] for r in rows} == methods
    for r in rows:
        assert r["samples"] == 3 and r["median_ms"] >= 0 and r["clock"] == "perf_counter"
        if r["method"].startswith("paired"):
            assert r["rows_moved"] == r["k"]  # k swaps at constant m: W = k
        else:
            assert r["rows_moved"] == 64
    pinned = next(r for r in rows if r["method"] == "paired_pinned_pool" and r["k"] == 32)
    assert pinned["bytes_h2d"] == 32 * 3 * 16 * 2 + 32 * 8
    assert not list(out.parent.glob("*.tmp"))


def test_gpu_check_reports_a_failed_sequence(monkeypatch):
    def broken(self, *args):
        self._dirty = True  # pretend the block is stale
        raise RuntimeError("boom")

    monkeypatch.setattr(DeviceWeightCache, "_copy_rows", broken)
    rec = gpu_check.check_sequence("cpu", torch.float32, pool="pinned", stream=False, gate=True,
                                   n=40, hidden=4, steps=3, seed=0)
    assert rec["ok"] is False and "boom" in rec["error"]


def test_format_table_and_write_json(tmp_path):
    row = dict(dtype="float16", k=16, method="paired_device_pool", rows_moved=16.0,
               bytes_h2d=256.0, bytes_written=1e6, median_ms=0.05, p10_ms=0.04, p90_ms=0.06,
               host_median_ms=0.03, speedup_vs_to_device=12.5)
    table = gpu_check.format_table([row])
    assert "paired_device_pool" in table and "12.50" in table and "median ms" in table
    path = tmp_path / "r.json"
    gpu_check.write_json(path, {"timings": [row], "dtype": torch.float16})
    assert json.loads(path.read_text())["timings"][0]["k"] == 16
