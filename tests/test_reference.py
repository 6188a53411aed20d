"""Tests for the pure-NumPy paired-replacement reference (paired_replacement.reference).

Run with ``PYTHONPATH=src python -m pytest tests/test_reference.py``.
"""

from __future__ import annotations

import importlib.util
import math
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

try:
    from paired_replacement import reference as ref
except Exception:  # package __init__ may need a not-yet-built extension
    _path = pathlib.Path(__file__).resolve().parents[1] / "src" / "paired_replacement" / "reference.py"
    _spec = importlib.util.spec_from_file_location("_paired_replacement_reference", _path)
    ref = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(ref)

PairedCache = ref.PairedCache
UpdateStats = ref.UpdateStats
baseline_full_rebuild = ref.baseline_full_rebuild
min_writes = ref.min_writes

SETTINGS = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def make_weights(rng, n, g, u, hidden, dtype):
    """Random weights; gate is None when g == 0."""
    gate = rng.standard_normal((n, g)).astype(dtype) if g > 0 else None
    up = rng.standard_normal((n, u)).astype(dtype)
    down = rng.standard_normal((hidden, n)).astype(dtype)
    return gate, up, down


def silu(x):
    return x / (1.0 + np.exp(-x))


def ffn_packed(cache, xg, xu):
    """FFN in float64 from the packed block only."""
    cw = cache.concat_weight().astype(np.float64)
    dw = cache.down_weight().astype(np.float64)
    g = cache.gate_size
    if g > 0:
        h = silu(xg @ cw[:, :g].T) * (xu @ cw[:, g:].T)
    else:
        h = np.maximum(xu @ cw.T, 0.0)
    return h @ dw.T


def ffn_dense(mask, gate, up, down, xg, xu):
    """Dense FFN in float64 from the original weights, restricted to ``mask``."""
    up64 = up.astype(np.float64)
    if gate is not None:
        h = silu(xg @ gate.astype(np.float64).T) * (xu @ up64.T)
    else:
        h = np.maximum(xu @ up64.T, 0.0)
    h = h * mask.astype(np.float64)
    return h @ down.astype(np.float64).T


def snapshot(cache):
    """Everything observable about a cache, as copies."""
    return dict(
        mask=cache.mask,
        active=cache.active_indices(),
        pos=cache.position_map(),
        m=cache.num_active,
        concat=cache.packed_concat.copy(),
        down_t=cache.packed_down_t.copy(),
        row_at=cache.row_at.copy(),
        stats=cache.last_update_stats(),
        tau=cache.hybrid_tau_frac,
    )


def assert_same_snapshot(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], np.ndarray):
            assert a[k].dtype == b[k].dtype, k
            # bit-exact comparison (handles NaN-free float16 too)
            assert np.array_equal(a[k].view(np.uint8), b[k].view(np.uint8)), k
        else:
            assert a[k] == b[k], k


def check_state(cache, mask, gate, up, down, rng):
    """Invariants that must hold after every update."""
    n = up.shape[0]
    active = cache.active_indices()
    m = cache.num_active
    assert active.dtype == np.int64 and active.shape == (m,)
    assert np.array_equal(cache.mask, mask)
    assert m == int(mask.sum())
    assert set(active.tolist()) == set(np.flatnonzero(mask).tolist())
    assert len(set(active.tolist())) == m

    # position map: bijection active rows <-> slots 0..m-1, -1 elsewhere
    pos = cache.position_map()
    assert pos.dtype == np.int64 and pos.shape == (n,)
    assert np.all(pos[~mask] == -1)
    assert sorted(pos[mask].tolist()) == list(range(m))
    assert np.array_equal(pos[active], np.arange(m))

    # packed block equals the ORIGINAL weights gathered in slot order (bit exact)
    if gate is not None:
        expect_concat = np.concatenate([gate, up], axis=1)[active]
    else:
        expect_concat = up[active]
    cw = cache.concat_weight()
    assert cw.shape == (m, cache.gate_size + up.shape[1]) and cw.dtype == up.dtype
    assert np.array_equal(cw, expect_concat)
    dw = cache.down_weight()
    assert dw.shape == (down.shape[0], m) and dw.dtype == down.dtype
    assert np.array_equal(dw, down[:, active])

    # the independent baseline holds the same rows, in ascending order
    b_concat, b_down = baseline_full_rebuild(mask, gate, up, down)
    order = np.argsort(active, kind="stable")
    assert np.array_equal(active[order], np.flatnonzero(mask))
    assert np.array_equal(cw[order], b_concat)
    assert np.array_equal(dw[:, order], b_down)

    # FFN from the packed block equals the dense masked FFN
    xg = rng.standard_normal((3, max(cache.gate_size, 1)))[:, : cache.gate_size]
    xu = rng.standard_normal((3, up.shape[1]))
    y_packed = ffn_packed(cache, xg, xu)
    y_dense = ffn_dense(mask, gate, up, down, xg, xu)
    np.testing.assert_allclose(y_packed, y_dense, rtol=1e-9, atol=1e-9)


def checked_update(cache, gate, up, down, rng, *, new_mask=None, added=None, removed=None):
    """Run one update (by mask or by indices) and check everything about it."""
    old_mask = cache.mask
    old_pos = cache.position_map()
    old_m = cache.num_active
    old_row_at = cache.row_at.copy()
    tau = cache.hybrid_tau_frac
    if new_mask is not None:
        added_l = np.flatnonzero(new_mask & ~old_mask)
        removed_l = np.flatnonzero(old_mask & ~new_mask)
        stats = cache.update(new_mask)
    else:
        added_l, removed_l = list(added), list(removed)
        new_mask = old_mask.copy()
        new_mask[np.asarray(removed_l, dtype=np.int64)] = False
        new_mask[np.asarray(added_l, dtype=np.int64)] = True
        stats = cache.update_from_indices(added, removed)

    a, r = len(added_l), len(removed_l)
    m_new = old_m - r + a
    assert isinstance(stats, UpdateStats)
    assert stats is cache.last_update_stats()
    assert (stats.added, stats.removed, stats.m_before, stats.m_after) == (a, r, old_m, m_new)
    assert cache.num_active == m_new

    w = min_writes(old_pos, old_m, added_l, removed_l)
    # independent recomputation of h from the old slots
    h = int(np.sum(old_pos[np.asarray(removed_l, dtype=np.int64)] < m_new)) if r else 0
    assert w == max(a, h)
    if a == 0 and r == 0:
        assert stats.path == "noop" and stats.rows_written == 0
    elif w > tau * m_new:
        assert stats.path == "rebuild"
        assert stats.rows_written == m_new
        # a rebuild leaves the block sorted ascending
        assert np.array_equal(cache.active_indices(), np.flatnonzero(new_mask))
    else:
        assert stats.path == "paired"
        assert stats.rows_written == w
        assert stats.rows_written <= max(a, r)
        # kept rows whose slot is inside the new prefix never move
        pos = cache.position_map()
        kept = np.flatnonzero(old_mask & new_mask)
        stay = kept[old_pos[kept] < m_new]
        assert np.array_equal(pos[stay], old_pos[stay])
        # exact layout: holes (removed slots < m' in removed order, then growth
        # slots) receive fillers (added in order, then kept tail rows by slot)
        removed_arr = np.asarray(removed_l, dtype=np.int64)
        holes = [s for s in old_pos[removed_arr].tolist() if s < m_new]
        holes += list(range(old_m, m_new))
        tail = old_row_at[m_new:old_m]
        fillers = [int(x) for x in added_l] + [int(x) for x in tail if new_mask[x]]
        expect = np.where(np.arange(m_new) < old_m, old_row_at[:m_new], -1)
        expect[np.asarray(holes, dtype=np.int64)] = np.asarray(fillers, dtype=np.int64)
        assert np.array_equal(cache.active_indices(), expect)
        # at most rows_written slots of the new prefix changed occupant
        prefix_old = np.where(np.arange(m_new) < old_m, old_row_at[:m_new], -2)
        changed = int(np.sum(cache.row_at[:m_new] != prefix_old))
        assert changed <= stats.rows_written
    check_state(cache, new_mask, gate, up, down, rng)
    return stats


def random_valid_indices(rng, mask):
    """Random valid added/removed lists (random order, random sizes)."""
    on = np.flatnonzero(mask)
    off = np.flatnonzero(~mask)
    k_add = int(rng.integers(0, off.size + 1))
    k_rem = int(rng.integers(0, on.size + 1))
    added = rng.permutation(off)[:k_add]
    removed = rng.permutation(on)[:k_rem]
    return added, removed


# --------------------------------------------------------------------------
# property tests
# --------------------------------------------------------------------------

OPS = ["small", "large", "empty", "full", "same", "swap", "indices", "indices_list", "tau"]


@SETTINGS
@given(
    n=st.integers(1, 64),
    g=st.integers(0, 5),
    u=st.integers(1, 5),
    hidden=st.integers(1, 5),
    dtype=st.sampled_from([np.float32, np.float16]),
    tau=st.sampled_from([0.0, 0.5, 2.0, 0.1, 1.0]) | st.floats(0.0, 3.0),
    init_p=st.sampled_from([0.0, 0.3, 0.7, 1.0]),
    ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=12),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_update_sequences(n, g, u, hidden, dtype, tau, init_p, ops, seed):
    rng = np.random.default_rng(seed)
    gate, up, down = make_weights(rng, n, g, u, hidden, dtype)
    mask = rng.random(n) < init_p
    cache = PairedCache(mask, hidden, gate, up, down, hybrid_tau_frac=tau)
    m0 = int(mask.sum())
    assert cache.last_update_stats() == UpdateStats(m0, 0, m0, "rebuild", 0, m0)
    assert np.array_equal(cache.active_indices(), np.flatnonzero(mask))
    check_state(cache, mask, gate, up, down, rng)

    for op in ops:
        cur = cache.mask
        if op == "tau":
            cache.hybrid_tau_frac = float(rng.choice([0.0, 0.5, 2.0, rng.random()]))
            continue
        if op in ("indices", "indices_list"):
            added, removed = random_valid_indices(rng, cur)
            if op == "indices_list":
                added, removed = added.tolist(), removed.tolist()
            checked_update(cache, gate, up, down, rng, added=added, removed=removed)
            continue
        if op == "small":
            flip = rng.random(n) < 0.05
            flip[rng.integers(n)] = True
            new = cur ^ flip
        elif op == "large":
            new = rng.random(n) < rng.random()
        elif op == "empty":
            new = np.zeros(n, dtype=bool)
        elif op == "full":
            new = np.ones(n, dtype=bool)
        elif op == "same":
            new = cur.copy()
        else:  # swap
            new = ~cur
        checked_update(cache, gate, up, down, rng, new_mask=new)


@SETTINGS
@given(
    n=st.integers(1, 64),
    g=st.integers(0, 5),
    u=st.integers(1, 5),
    hidden=st.integers(1, 5),
    dtype=st.sampled_from([np.float32, np.float16]),
    tau=st.sampled_from([0.0, 0.5, 2.0]),
    step=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_grow_then_shrink(n, g, u, hidden, dtype, tau, step, seed):
    """Grow 0 -> N and shrink back to 0, in random chunks via both entry points."""
    rng = np.random.default_rng(seed)
    gate, up, down = make_weights(rng, n, g, u, hidden, dtype)
    cache = PairedCache(np.zeros(n, dtype=bool), hidden, gate, up, down, hybrid_tau_frac=tau)
    assert cache.num_active == 0
    assert cache.concat_weight().shape == (0, g + u)
    assert cache.down_weight().shape == (hidden, 0)
    check_state(cache, np.zeros(n, dtype=bool), gate, up, down, rng)
    order = rng.permutation(n)
    for i in range(0, n, step):
        checked_update(cache, gate, up, down, rng, added=order[i:i + step], removed=[])
    assert cache.num_active == n
    for i in range(0, n, step):
        new = cache.mask
        new[order[i:i + step]] = False
        checked_update(cache, gate, up, down, rng, new_mask=new)
    assert cache.num_active == 0
    # and grow again in one shot
    checked_update(cache, gate, up, down, rng, new_mask=np.ones(n, dtype=bool))
    assert cache.num_active == n


# --------------------------------------------------------------------------
# exact slot assignments (the C++ port is compared row order for row order)
# --------------------------------------------------------------------------


def _small_cache(mask_rows, n=8, tau=10.0):
    rng = np.random.default_rng(0)
    gate, up, down = make_weights(rng, n, 2, 3, 4, np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[list(mask_rows)] = True
    return PairedCache(mask, 4, gate, up, down, hybrid_tau_frac=tau), (gate, up, down)


@pytest.mark.parametrize(
    "added, removed, expect_rows, expect_written",
    [
        # same size: holes in removed order get additions in added order
        ([7, 6], [4, 1], [0, 6, 2, 3, 7, 5], 2),
        # shrink only: hole at slot 0 gets the stranded tail row 4; row 5's slot is dropped
        ([], [0, 5], [4, 1, 2, 3], 1),
        # tail-only removal: no writes at all
        ([], [5, 4], [0, 1, 2, 3], 0),
        # grow only
        ([7], [], [0, 1, 2, 3, 4, 5, 7], 1),
        # grow with a removal: hole 2 then growth slot 6
        ([6, 7], [2], [0, 1, 6, 3, 4, 5, 7], 2),
        # shrink with an addition: holes [1, 3]; fillers [6, then tail row 4]
        ([6], [5, 1, 3], [0, 6, 2, 4], 2),
        # two stranded tail rows fill the holes in slot order
        ([], [0, 1], [4, 5, 2, 3], 2),
        ([7], [2, 0, 1], [4, 5, 7, 3], 3),
        # removal order decides hole order
        ([6], [3, 1, 5], [0, 4, 2, 6], 2),
    ],
)
def test_exact_paired_assignments(added, removed, expect_rows, expect_written):
    cache, (gate, up, down) = _small_cache(range(6))
    stats = cache.update_from_indices(added, removed)
    assert stats.path == ("paired" if added or removed else "noop")
    assert stats.rows_written == expect_written
    assert cache.active_indices().tolist() == expect_rows
    check_state(cache, cache.mask, gate, up, down, np.random.default_rng(1))


def test_update_uses_ascending_order():
    cache, _ = _small_cache(range(6))
    new = cache.mask
    new[[4, 1]] = False
    new[[7, 6]] = True
    stats = cache.update(new)
    # removed ascending [1, 4] -> holes [1, 4]; added ascending [6, 7]
    assert cache.active_indices().tolist() == [0, 6, 2, 3, 7, 5]
    assert stats == UpdateStats(2, 2, 2, "paired", 6, 6)


def test_hybrid_threshold_boundary():
    # W = 2, m' = 4: rebuild iff 2 > tau * 4; equality stays paired
    cache, _ = _small_cache(range(6), tau=0.5)
    assert cache.update_from_indices([6], [5, 1, 3]).path == "paired"
    cache, _ = _small_cache(range(6), tau=0.49)
    stats = cache.update_from_indices([6], [5, 1, 3])
    assert stats == UpdateStats(1, 3, 4, "rebuild", 6, 4)
    assert cache.active_indices().tolist() == [0, 2, 4, 6]
    # W = 2, m' = 6: rebuild iff 2 > tau * 6
    cache, _ = _small_cache(range(6), tau=0.3)  # 2 > 1.8 -> rebuild, ascending
    stats = cache.update_from_indices([7, 6], [4, 1])
    assert stats == UpdateStats(2, 2, 6, "rebuild", 6, 6)
    assert cache.active_indices().tolist() == [0, 2, 3, 5, 6, 7]
    # tau = 0 rebuilds whenever anything is written, but a write-free update stays paired
    cache, _ = _small_cache(range(6), tau=0.0)
    assert cache.update_from_indices([], [5]).path == "paired"
    assert cache.update_from_indices([5], []).path == "rebuild"
    # shrinking to empty never rebuilds (W = 0)
    stats = cache.update(np.zeros(8, dtype=bool))
    assert stats == UpdateStats(0, 6, 0, "paired", 6, 0)


def test_noop_and_empty_lists():
    cache, _ = _small_cache([1, 3])
    before = snapshot(cache)
    stats = cache.update_from_indices([], np.array([], dtype=np.int64))
    assert stats == UpdateStats(0, 0, 0, "noop", 2, 2)
    stats = cache.update(cache.mask)
    assert stats == UpdateStats(0, 0, 0, "noop", 2, 2)
    after = snapshot(cache)
    before.pop("stats"), after.pop("stats")
    assert_same_snapshot(before, after)


def test_min_writes_formula():
    slot_of = np.array([0, 1, 2, 3, 4, 5, -1, -1])
    assert min_writes(slot_of, 6, [7, 6], [4, 1]) == 2
    assert min_writes(slot_of, 6, [], [0, 5]) == 1
    assert min_writes(slot_of, 6, [], [5, 4]) == 0
    assert min_writes(slot_of, 6, [6], [5, 1, 3]) == 2
    assert min_writes(slot_of, 6, [6, 7], []) == 2


def test_views_and_copies_do_not_alias_state():
    cache, (gate, up, down) = _small_cache([0, 2, 5])
    cache.active_indices()[:] = 7
    cache.position_map()[:] = 7
    cache.mask[:] = True
    with pytest.raises(ValueError):
        cache.concat_weight()[0, 0] = 1.0
    with pytest.raises(ValueError):
        cache.down_weight()[0, 0] = 1.0
    # the pools are copies of the caller's weights
    up[:] = 0.0
    down[:] = 0.0
    gate[:] = 0.0
    assert cache.active_indices().tolist() == [0, 2, 5]
    assert cache.mask.tolist() == [True, False, True, False, False, True, False, False]
    assert np.all(cache.concat_weight() != 0.0)


def test_no_gate_variants_and_dtypes():
    rng = np.random.default_rng(3)
    n = 10
    up = rng.standard_normal((n, 3)).astype(np.float16)
    down = rng.standard_normal((2, n)).astype(np.float16)
    mask = rng.random(n) < 0.5
    for gate in (None, np.zeros((n, 0), np.float16), np.zeros((0,), np.float16)):
        cache = PairedCache(mask, 2, gate, up, down)
        assert cache.gate_size == 0 and not cache.has_gate
        check_state(cache, mask, None, up, down, rng)
    # F-ordered down still gives a contiguous private pool
    down_f = np.asfortranarray(down)
    cache = PairedCache(mask, 2, None, up, down_f)
    assert cache.pool_down_t.flags.c_contiguous
    down_f[:] = 0
    check_state(cache, mask, None, up, down, rng)


# --------------------------------------------------------------------------
# bad inputs: right exception, message names the argument, state unchanged
# --------------------------------------------------------------------------


def _busy_cache():
    """A cache whose slot order is no longer sorted (paired updates happened)."""
    rng = np.random.default_rng(11)
    n = 12
    gate, up, down = make_weights(rng, n, 3, 2, 4, np.float32)
    mask = np.zeros(n, dtype=bool)
    mask[:8] = True
    cache = PairedCache(mask, 4, gate, up, down, hybrid_tau_frac=2.0)
    cache.update_from_indices([10, 9], [1, 6, 7])
    cache.update_from_indices([11], [0])
    assert cache.active_indices().tolist() != sorted(cache.active_indices().tolist())
    return cache


# active rows of _busy_cache(): {2, 3, 4, 5, 9, 10, 11}; inactive: {0, 1, 6, 7, 8}
BAD_CALLS = [
    ("mask float", lambda c: c.update(np.ones(12, dtype=np.float32)), TypeError, r"mask.*float32"),
    ("mask int", lambda c: c.update(np.ones(12, dtype=np.int64)), TypeError, r"mask.*int64"),
    ("mask 2-D", lambda c: c.update(np.ones((12, 1), dtype=bool)), ValueError, r"mask"),
    ("mask 0-D", lambda c: c.update(np.bool_(True)), ValueError, r"mask"),
    ("mask short", lambda c: c.update(np.ones(11, dtype=bool)), ValueError, r"mask"),
    ("mask long", lambda c: c.update(np.ones(13, dtype=bool)), ValueError, r"mask"),
    ("added high", lambda c: c.update_from_indices([8, 12], []), IndexError, r"added.*12"),
    ("added negative", lambda c: c.update_from_indices([-1], []), IndexError, r"added.*-1"),
    ("removed high", lambda c: c.update_from_indices([], [2, 99]), IndexError, r"removed.*99"),
    ("removed negative", lambda c: c.update_from_indices([8], [-3]), IndexError, r"removed.*-3"),
    ("added dup", lambda c: c.update_from_indices([8, 0, 8], []), ValueError, r"added.*8"),
    ("removed dup", lambda c: c.update_from_indices([], [2, 2]), ValueError, r"removed.*2"),
    ("added active", lambda c: c.update_from_indices([0, 9], []), ValueError, r"added.*9"),
    ("removed inactive", lambda c: c.update_from_indices([], [3, 1]), ValueError, r"removed.*1"),
    ("overlap active", lambda c: c.update_from_indices([3], [3]), ValueError, r"added.*3"),
    ("overlap inactive", lambda c: c.update_from_indices([0], [0]), ValueError, r"removed.*0"),
    ("added float array", lambda c: c.update_from_indices(np.array([0.0]), []), TypeError, r"added.*float"),
    ("removed float list", lambda c: c.update_from_indices([], [2.0, 3.0]), TypeError, r"removed.*float"),
    ("added bool array", lambda c: c.update_from_indices(np.array([True, False]), []), TypeError, r"added.*bool"),
    ("removed bool list", lambda c: c.update_from_indices([], [True]), TypeError, r"removed.*bool"),
    ("added str", lambda c: c.update_from_indices(["0"], []), TypeError, r"added"),
    ("added 2-D", lambda c: c.update_from_indices(np.array([[0, 1]]), []), ValueError, r"added"),
    ("removed 2-D", lambda c: c.update_from_indices([], np.array([[2], [3]])), ValueError, r"removed"),
    ("added ok, removed bad", lambda c: c.update_from_indices([0, 1], [2, 100]), IndexError, r"removed.*100"),
    ("tau negative", lambda c: setattr(c, "hybrid_tau_frac", -0.1), ValueError, r"hybrid_tau_frac"),
    ("tau nan", lambda c: setattr(c, "hybrid_tau_frac", math.nan), ValueError, r"hybrid_tau_frac"),
    ("tau inf", lambda c: setattr(c, "hybrid_tau_frac", math.inf), ValueError, r"hybrid_tau_frac"),
    ("tau str", lambda c: setattr(c, "hybrid_tau_frac", "0.5"), ValueError, r"hybrid_tau_frac"),
    ("tau None", lambda c: setattr(c, "hybrid_tau_frac", None), ValueError, r"hybrid_tau_frac"),
]


@pytest.mark.parametrize("name, call, exc, match", BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_inputs_leave_state_unchanged(name, call, exc, match):
    cache = _busy_cache()
    before = snapshot(cache)
    with pytest.raises(exc, match=match):
        call(cache)
    assert_same_snapshot(before, snapshot(cache))
    # the cache still works afterwards
    rng = np.random.default_rng(5)
    gate = cache.pool_concat[:, :3].copy()
    up = cache.pool_concat[:, 3:].copy()
    down = cache.pool_down_t.T.copy()
    checked_update(cache, gate, up, down, rng, added=[8, 0], removed=[11, 2])


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), kind=st.sampled_from(
    ["oob_added", "oob_removed", "dup_added", "dup_removed", "active_added",
     "inactive_removed", "float", "bool", "mask_len", "mask_dtype"]))
def test_bad_inputs_random_state(seed, n, kind):
    rng = np.random.default_rng(seed)
    gate, up, down = make_weights(rng, n, 2, 2, 3, np.float32)
    cache = PairedCache(rng.random(n) < 0.5, 3, gate, up, down, hybrid_tau_frac=rng.random() * 2)
    for _ in range(3):
        a, r = random_valid_indices(rng, cache.mask)
        cache.update_from_indices(a, r)
    mask = cache.mask
    on, off = np.flatnonzero(mask), np.flatnonzero(~mask)
    a, r = random_valid_indices(rng, mask)
    a, r = list(a), list(r)
    if kind == "oob_added":
        bad = int(rng.choice([n, n + 5, -1, -n - 1]))
        a.insert(int(rng.integers(len(a) + 1)), bad)
        call, exc, match = (lambda: cache.update_from_indices(a, r)), IndexError, rf"added.*{bad}"
    elif kind == "oob_removed":
        bad = int(rng.choice([n, n + 5, -1, -n - 1]))
        r.insert(int(rng.integers(len(r) + 1)), bad)
        call, exc, match = (lambda: cache.update_from_indices(a, r)), IndexError, rf"removed.*{bad}"
    elif kind == "dup_added" and off.size:
        a = list(off) + [off[0]]
        call, exc, match = (lambda: cache.update_from_indices(a, r)), ValueError, r"added"
    elif kind == "dup_removed" and on.size:
        r = list(on) + [on[-1]]
        call, exc, match = (lambda: cache.update_from_indices(a, r)), ValueError, r"removed"
    elif kind == "active_added" and on.size:
        a.append(int(rng.choice(on)))
        call, exc, match = (lambda: cache.update_from_indices(a, r)), ValueError, r"added"
    elif kind == "inactive_removed" and off.size:
        r.append(int(rng.choice(off)))
        call, exc, match = (lambda: cache.update_from_indices(a, r)), ValueError, r"removed"
    elif kind == "float":
        call, exc, match = (lambda: cache.update_from_indices(np.array(a + [0], dtype=float), r)), TypeError, r"added"
    elif kind == "bool":
        call, exc, match = (lambda: cache.update_from_indices(a, np.ones(2, dtype=bool))), TypeError, r"removed"
    elif kind == "mask_len":
        call, exc, match = (lambda: cache.update(np.ones(n + 1, dtype=bool))), ValueError, r"mask"
    else:
        call, exc, match = (lambda: cache.update(mask.astype(np.uint8))), TypeError, r"mask.*uint8"
    before = snapshot(cache)
    with pytest.raises(exc, match=match):
        call()
    assert_same_snapshot(before, snapshot(cache))


def _ok_weights(n=6, g=2, u=3, hidden=4, dtype=np.float32):
    return make_weights(np.random.default_rng(2), n, g, u, hidden, dtype)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(mask=np.ones(6, dtype=np.float32)), TypeError, r"mask.*float32"),
        (dict(mask=np.ones(6, dtype=np.int8)), TypeError, r"mask.*int8"),
        (dict(mask=np.ones(5, dtype=bool)), ValueError, r"mask"),
        (dict(mask=np.ones((6, 1), dtype=bool)), ValueError, r"mask"),
        (dict(up=np.ones(6, dtype=np.float32)), ValueError, r"up"),
        (dict(up=np.ones((6, 3), dtype=np.int32)), TypeError, r"up"),
        (dict(down=np.ones((4, 5), dtype=np.float32)), ValueError, r"down"),
        (dict(down=np.ones((4, 6, 1), dtype=np.float32)), ValueError, r"down"),
        (dict(down=np.ones((4, 6), dtype=np.float64)), TypeError, r"down"),
        (dict(gate=np.ones((5, 2), dtype=np.float32)), ValueError, r"gate"),
        (dict(gate=np.ones((6,), dtype=np.float32)), ValueError, r"gate"),
        (dict(gate=np.ones((6, 2), dtype=np.float16)), TypeError, r"gate"),
        (dict(hidden_size=5), ValueError, r"hidden_size"),
        (dict(hidden_size=4.0), TypeError, r"hidden_size"),
        (dict(hybrid_tau_frac=-1.0), ValueError, r"hybrid_tau_frac"),
        (dict(hybrid_tau_frac=math.nan), ValueError, r"hybrid_tau_frac"),
        (dict(hybrid_tau_frac=math.inf), ValueError, r"hybrid_tau_frac"),
        (dict(hybrid_tau_frac="x"), ValueError, r"hybrid_tau_frac"),
    ],
)
def test_constructor_validation(kwargs, exc, match):
    gate, up, down = _ok_weights()
    args = dict(mask=np.ones(6, dtype=bool), hidden_size=4, gate=gate, up=up, down=down)
    tau = kwargs.pop("hybrid_tau_frac", 0.5)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        PairedCache(args["mask"], args["hidden_size"], args["gate"], args["up"], args["down"],
                    hybrid_tau_frac=tau)


def test_constructor_accepts_edge_masks_and_int_tau():
    gate, up, down = _ok_weights()
    for mask in (np.zeros(6, dtype=bool), np.ones(6, dtype=bool)):
        cache = PairedCache(mask, 4, gate, up, down, hybrid_tau_frac=1)
        assert cache.hybrid_tau_frac == 1.0
        check_state(cache, mask, gate, up, down, np.random.default_rng(0))
    assert cache.last_update_stats() == UpdateStats(6, 0, 6, "rebuild", 0, 6)
