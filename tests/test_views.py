"""Zero-copy views, their lifetime, settings from the environment, and the hybrid rebuild path.

Run: ``.venv/bin/python -m pytest tests/test_views.py -q``.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from paired_replacement import PairedCache, WeightCache, load_extension
from conftest import padded_ld  # tests/ is on sys.path

load_extension()

ENV_GRAIN = "WEIGHT_CACHE_GRAIN"
ENV_PAR = "WEIGHT_CACHE_PAR_THRESHOLD"
ENV_TAU = "WEIGHT_CACHE_HYBRID_TAU_FRAC"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    """No WEIGHT_CACHE_* variable leaks into (or out of) a test."""
    for name in (ENV_GRAIN, ENV_PAR, ENV_TAU):
        monkeypatch.delenv(name, raising=False)


def make(n=100, hidden=12, gate=True, dtype=torch.float32, seed=0, density=0.4, mask=None, **kw):
    """A cache of an FFN with gate/up [n, hidden] and down [hidden, n], plus its expectations."""
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(n, hidden, generator=gen).to(dtype) if gate else None
    up = torch.randn(n, hidden, generator=gen).to(dtype)
    down = torch.randn(hidden, n, generator=gen).to(dtype)
    if mask is None:
        mask = torch.rand(n, generator=gen) < density
    cache = WeightCache(mask.clone(), hidden, gate, up, down, **kw)
    full = torch.cat([gate, up], 1) if gate is not None else up
    return cache, full, down


def expected(cache, full, down):
    idx = cache.active_indices()
    return full.index_select(0, idx), down.index_select(1, idx)


def assert_content(cache, full, down):
    ec, ed = expected(cache, full, down)
    assert torch.equal(cache.get_concat_weight(), ec)
    assert torch.equal(cache.get_active_down_weight(), ed)
    cache.check_invariants()


def swap_some(cache, rng, k):
    """Mask with k active rows swapped for k inactive ones (m unchanged)."""
    mask = cache.mask.numpy().copy()
    act = rng.permutation(np.flatnonzero(mask))[:k]
    ina = rng.permutation(np.flatnonzero(~mask))[:k]
    k = min(len(act), len(ina))
    mask[act[:k]] = False
    mask[ina[:k]] = True
    return torch.from_numpy(mask)


# --------------------------------------------------------------------------------------------
# zero copy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden,gate,dtype", [(12, True, torch.float32), (130, True, torch.float32),
                                               (300, False, torch.float16), (9, True, torch.bfloat16)])
def test_getters_are_views_of_the_packed_block(hidden, gate, dtype):
    cache, full, down = make(hidden=hidden, gate=gate, dtype=dtype)
    c1, d1 = cache.get_concat_weight(), cache.get_active_down_weight()
    es = c1.element_size()
    # pool calls in between do not move or copy the packed block
    pool_c, pool_d = cache.pool_concat_weight(), cache.pool_down_weight_t()
    c2, d2 = cache.get_concat_weight(), cache.get_active_down_weight()
    assert c1.data_ptr() == c2.data_ptr() and d1.data_ptr() == d2.data_ptr()
    assert c1.untyped_storage().data_ptr() == c2.untyped_storage().data_ptr()
    assert d1.untyped_storage().data_ptr() == d2.untyped_storage().data_ptr()
    # packed block and pools are distinct buffers
    ptrs = {c1.untyped_storage().data_ptr(), d1.untyped_storage().data_ptr(),
            pool_c.untyped_storage().data_ptr(), pool_d.untyped_storage().data_ptr()}
    assert len(ptrs) == 4
    # the views start at the block (slot 0) and the block is 64-byte aligned
    assert c1.data_ptr() == c1.untyped_storage().data_ptr()
    assert d1.data_ptr() == d1.untyped_storage().data_ptr()
    assert c1.data_ptr() % 64 == 0 and d1.data_ptr() % 64 == 0
    # concat: row-major rows; down: the transpose of a row-major [m, ld] block
    concat_cols = full.shape[1]  # gate|up columns: 2 * hidden, or hidden without gate
    ldc, ldd = padded_ld(concat_cols, es), padded_ld(hidden, es)
    assert c1.stride() == (ldc, 1)
    assert d1.stride() == (1, ldd)
    assert d1.t().stride() == (ldd, 1)
    # the storage holds the whole capacity-N block (no copy of the m live rows)
    assert c1.untyped_storage().nbytes() >= ((full.shape[0] - 1) * ldc + concat_cols) * es
    # padding bytes of the packed rows (and of the pools) are zero, the live part is the data
    m = min(c1.shape[0], full.shape[0] - 1)  # the storage ends at the last row's last element
    for view, cols, ld in ((c1, concat_cols, ldc), (d1.t(), hidden, ldd)):
        padded = torch.as_strided(view, (m, ld), (ld, 1))
        assert torch.equal(padded[:, :cols], view[:m])
        assert bool((padded[:, cols:] == 0).all())
    for pool, cols, ld in ((pool_c, concat_cols, ldc), (pool_d, hidden, ldd)):
        padded = torch.as_strided(pool, (pool.shape[0] - 1, ld), (ld, 1))
        assert bool((padded[:, cols:] == 0).all())
    # pools equal the originals (gate|up rows, down transposed)
    assert torch.equal(pool_c, full)
    assert torch.equal(pool_d, down.t())
    # the views really read the packed rows through those strides
    assert torch.equal(c1, expected(cache, full, down)[0])
    assert torch.equal(d1, expected(cache, full, down)[1])
    # the block base is stable across updates that keep m, and across updates that change it
    rng = np.random.default_rng(0)
    base_c, base_d = c1.data_ptr(), d1.data_ptr()
    for _ in range(5):
        m = cache.num_active
        cache.update_active_weights(swap_some(cache, rng, 3))
        assert cache.num_active == m
        assert cache.get_concat_weight().data_ptr() == base_c
        assert cache.get_active_down_weight().data_ptr() == base_d
        assert_content(cache, full, down)
    cache.update_active_weights(torch.rand(full.shape[0]) < 0.8)
    assert cache.get_concat_weight().untyped_storage().data_ptr() == base_c
    assert cache.get_active_down_weight().untyped_storage().data_ptr() == base_d
    assert_content(cache, full, down)


def test_view_taken_before_an_update_aliases_the_live_block():
    rng = np.random.default_rng(1)
    cache, full, down = make(n=150, density=0.5, hybrid_tau_frac=1.0)
    for _ in range(10):
        old_c, old_d = cache.get_concat_weight(), cache.get_active_down_weight()
        before_c = old_c.clone()
        old_idx = cache.active_indices()
        cache.update_active_weights(swap_some(cache, rng, 4))  # same m
        new_idx = cache.active_indices()
        changed = (new_idx != old_idx).nonzero().flatten()
        assert len(changed) > 0
        # the old view now shows the new rows, in the changed slots too
        ec, ed = expected(cache, full, down)
        assert torch.equal(old_c, ec) and torch.equal(old_d, ed)
        assert not torch.equal(old_c[changed], before_c[changed])
    # m shrinks / grows: the old view's rows are the first slots of the new layout
    old_c, old_d = cache.get_concat_weight(), cache.get_active_down_weight()
    m_old = old_c.shape[0]
    active = np.flatnonzero(cache.mask.numpy())
    cache.update_from_indices([], rng.permutation(active)[: m_old // 2])
    m_new = cache.num_active
    ec, ed = expected(cache, full, down)
    assert torch.equal(old_c[:m_new], ec) and torch.equal(old_d[:, :m_new], ed)
    old_c, old_d = cache.get_concat_weight(), cache.get_active_down_weight()
    cache.update_active_weights(torch.ones(150, dtype=torch.bool))
    ec, ed = expected(cache, full, down)
    assert torch.equal(old_c, ec[:m_new]) and torch.equal(old_d, ed[:, :m_new])


def test_copy_and_snapshot_do_not_change_after_updates():
    rng = np.random.default_rng(2)
    cache, full, down = make(n=120, density=0.5)
    for _ in range(5):
        cc, cd = cache.get_concat_weight(copy=True), cache.get_active_down_weight(copy=True)
        sc, sd = cache.snapshot()
        ec, ed = expected(cache, full, down)
        live = cache.get_concat_weight()
        for t in (cc, cd, sc, sd):
            assert t.untyped_storage().data_ptr() != live.untyped_storage().data_ptr()
        for _ in range(3):
            cache.update_active_weights(swap_some(cache, rng, 10))
            cache.update_active_weights(torch.from_numpy(rng.random(120) < 0.5))
        assert torch.equal(cc, ec) and torch.equal(cd, ed)
        assert torch.equal(sc, ec) and torch.equal(sd, ed)
        assert_content(cache, full, down)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_views_outlive_the_cache(dtype):
    """del cache; gc.collect(); junk allocations of the same size: the views still hold the data."""
    rng = np.random.default_rng(3)
    n, hidden = 256, 32
    g = u = hidden
    for it in range(25):
        cache, full, down = make(n=n, hidden=hidden, dtype=dtype, seed=it, density=0.6)
        cache.update_active_weights(torch.from_numpy(rng.random(n) < 0.5))
        c, d = cache.get_concat_weight(), cache.get_active_down_weight()
        pc = cache.pool_concat_weight()
        keep_c, keep_d, keep_pc = c.clone(), d.clone(), pc.clone()
        ec, ed = expected(cache, full, down)
        assert torch.equal(keep_c, ec) and torch.equal(keep_d, ed)
        torch_obj = cache.torch_object
        del cache, torch_obj
        gc.collect()
        # likely to reuse freed blocks of the packed buffers' size, and scribble over them
        junk = [torch.full((n, s), float("nan"), dtype=dtype) for s in (g + u, hidden) for _ in range(4)]
        junk += [torch.full((n * (g + u + hidden),), -7.0, dtype=dtype) for _ in range(2)]
        assert torch.equal(c, keep_c), it
        assert torch.equal(d, keep_d), it
        assert torch.equal(pc, keep_pc), it
        del junk, c, pc
        junk = [torch.full((n, hidden), 3.0, dtype=dtype) for _ in range(4)]
        assert torch.equal(d, keep_d), it  # the down view alone keeps its buffer
        del junk, d


def test_all_off_initial_mask_then_update():
    n, hidden = 70, 6
    g = u = hidden
    cache, full, down = make(n=n, hidden=hidden, mask=torch.zeros(n, dtype=torch.bool))
    assert cache.num_active == 0
    assert cache.get_concat_weight().shape == (0, g + u)
    assert cache.get_active_down_weight().shape == (hidden, 0)
    assert cache.active_indices().shape == (0,)
    assert bool((cache.position_map() == -1).all())
    s = cache.last_update_stats()
    assert (s.added, s.removed, s.rows_written, s.m_before, s.m_after) == (0, 0, 0, 0, 0)
    cache.check_invariants()
    # a no-gate cache with an all-off mask
    nogate, full_ng, down_ng = make(n=n, hidden=hidden, gate=False, mask=torch.zeros(n, dtype=torch.bool),
                                    hybrid_tau_frac=1.0)
    assert nogate.get_concat_weight().shape == (0, u)
    # usable at once
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[0, 5, 63, 64, 69]] = True
    cache.update_active_weights(mask)
    nogate.update_from_indices([69, 0, 64], [])
    assert cache.num_active == 5 and nogate.num_active == 3
    assert_content(cache, full, down)
    assert_content(nogate, full_ng, down_ng)
    # growth slots receive the added rows in caller order (paired path at tau = 1)
    assert nogate.active_indices().tolist() == [69, 0, 64]
    assert nogate.last_update_stats().path == "paired"
    # default tau 0.5: 5 writes > 0.5 * 5 -> rebuild, ascending
    assert cache.active_indices().tolist() == [0, 5, 63, 64, 69]
    assert cache.last_update_stats().path == "rebuild"
    cache.update_from_indices([], [5, 63])
    assert_content(cache, full, down)


# --------------------------------------------------------------------------------------------
# settings from the environment and from keywords
# --------------------------------------------------------------------------------------------


def test_defaults_without_environment():
    cache, _, _ = make()
    assert (cache.grain, cache.par_threshold, cache.hybrid_tau_frac) == (64, 64, 0.5)


def test_environment_read_at_construction(monkeypatch):
    monkeypatch.setenv(ENV_GRAIN, "7")
    monkeypatch.setenv(ENV_PAR, "0")
    monkeypatch.setenv(ENV_TAU, "0.25")
    cache, full, down = make()
    assert (cache.grain, cache.par_threshold, cache.hybrid_tau_frac) == (7, 0, 0.25)
    # changing the environment later does not touch the existing cache ...
    monkeypatch.setenv(ENV_GRAIN, "3")
    monkeypatch.setenv(ENV_PAR, "11")
    monkeypatch.setenv(ENV_TAU, "2")
    cache.update_active_weights(torch.rand(100) < 0.5)
    assert (cache.grain, cache.par_threshold, cache.hybrid_tau_frac) == (7, 0, 0.25)
    assert_content(cache, full, down)
    # ... but a new one reads the new values
    other, _, _ = make()
    assert (other.grain, other.par_threshold, other.hybrid_tau_frac) == (3, 11, 2.0)
    monkeypatch.delenv(ENV_GRAIN)
    monkeypatch.delenv(ENV_PAR)
    monkeypatch.delenv(ENV_TAU)
    third, _, _ = make()
    assert (third.grain, third.par_threshold, third.hybrid_tau_frac) == (64, 64, 0.5)
    assert (other.grain, other.par_threshold, other.hybrid_tau_frac) == (3, 11, 2.0)


def test_keyword_overrides_beat_environment(monkeypatch):
    monkeypatch.setenv(ENV_GRAIN, "7")
    monkeypatch.setenv(ENV_PAR, "9")
    monkeypatch.setenv(ENV_TAU, "0.25")
    cache, full, down = make(grain=2, par_threshold=1, hybrid_tau_frac=1.5)
    assert (cache.grain, cache.par_threshold, cache.hybrid_tau_frac) == (2, 1, 1.5)
    only_grain, _, _ = make(grain=5)
    assert (only_grain.grain, only_grain.par_threshold, only_grain.hybrid_tau_frac) == (5, 9, 0.25)
    cache.grain, cache.par_threshold, cache.hybrid_tau_frac = 1, 0, 0.0
    assert (cache.grain, cache.par_threshold, cache.hybrid_tau_frac) == (1, 0, 0.0)
    cache.update_active_weights(torch.rand(100) < 0.5)
    assert_content(cache, full, down)


# Values that do not parse: the message names the variable.
UNPARSABLE = [(ENV_GRAIN, "abc"), (ENV_GRAIN, "1.5"), (ENV_GRAIN, ""), (ENV_GRAIN, "4x"),
              (ENV_GRAIN, "99999999999999999999999"), (ENV_PAR, "abc"), (ENV_PAR, "2.0"),
              (ENV_TAU, "abc"), (ENV_TAU, "0.5x"), (ENV_TAU, "")]
# Values that parse but are out of range.
OUT_OF_RANGE = [(ENV_GRAIN, "0"), (ENV_GRAIN, "-3"), (ENV_PAR, "-1"), (ENV_TAU, "nan"),
                (ENV_TAU, "inf"), (ENV_TAU, "-0.5")]
FIELD = {ENV_GRAIN: "grain", ENV_PAR: "par_threshold", ENV_TAU: "hybrid_tau_frac"}


@pytest.mark.parametrize("name,value", UNPARSABLE)
def test_unparsable_environment_value_raises_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        make()
    # and also through the seed API
    with pytest.raises(ValueError, match=name):
        torch.classes.paired.WeightCache(torch.ones(3, dtype=torch.bool), 2, torch.randn(3, 2),
                                         torch.randn(3, 2), torch.randn(2, 3))


@pytest.mark.parametrize("name,value", OUT_OF_RANGE)
def test_out_of_range_environment_value_raises(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"(?i)WEIGHT_CACHE_.*{FIELD[name]}"):
        make()


@pytest.mark.parametrize("name,value", OUT_OF_RANGE)
def test_out_of_range_environment_value_names_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=name):
        make()


@pytest.mark.parametrize("text", ["16", " 16", "16 ", "\t16\n", "+16"])
def test_environment_integer_is_read_the_same_with_or_without_surrounding_space(monkeypatch, text):
    monkeypatch.setenv(ENV_GRAIN, text)
    monkeypatch.setenv(ENV_TAU, text.replace("16", "0.25"))
    cache, _, _ = make()
    assert (cache.grain, cache.hybrid_tau_frac) == (16, 0.25)


@pytest.mark.parametrize("name,value", [(ENV_GRAIN, "0x10"), (ENV_GRAIN, "1 6"), (ENV_TAU, "0x1p-2"),
                                        (ENV_TAU, "1e400"), (ENV_TAU, "infinity"), (ENV_PAR, " ")])
def test_environment_accepts_plain_decimal_numbers_only(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"environment variable {name} must be"):
        make()


@pytest.mark.parametrize("name", [ENV_GRAIN, ENV_PAR, ENV_TAU])
def test_explicit_setting_wins_over_a_malformed_variable(monkeypatch, name):
    """The keyword is taken as given and its variable is never read; the others still are."""
    monkeypatch.setenv(name, "not a number")
    keyword = FIELD[name]
    value = {"grain": 8, "par_threshold": 3, "hybrid_tau_frac": 0.75}[keyword]
    cache, full, down = make(**{keyword: value})
    assert getattr(cache, keyword) == value
    cache.update_active_weights(torch.rand(100) < 0.5)
    assert_content(cache, full, down)
    # the seed API takes the same keywords
    n, hidden = 5, 3
    seed = torch.classes.paired.WeightCache(torch.ones(n, dtype=torch.bool), hidden, torch.randn(n, hidden),
                                            torch.randn(n, hidden), torch.randn(hidden, n), **{keyword: value})
    assert getattr(seed, keyword)() == value
    with pytest.raises(ValueError, match=name):  # without the keyword the variable is read
        make()
    other = next(v for v in (ENV_GRAIN, ENV_PAR, ENV_TAU) if v != name)
    monkeypatch.setenv(other, "junk")  # a malformed variable of another setting still counts
    with pytest.raises(ValueError, match=other):
        make(**{keyword: value})


def test_write_into_a_view_is_reported_by_check_invariants():
    """The views are read-only by contract; a write stays in the block and the self-check names it."""
    cache, full, down = make(n=80, density=0.5)
    cache.check_invariants()
    view = cache.get_concat_weight()
    original = view[3, 0].item()
    view[3, 0] = original + 1.0
    with pytest.raises(RuntimeError, match="I4 .*packed slot 3"):
        cache.check_invariants()
    view[3, 0] = original
    cache.check_invariants()
    cache.get_active_down_weight()[5, 7] = 42.0  # column 7 of [hidden, m] is packed slot 7
    with pytest.raises(RuntimeError, match="packed slot 7"):
        cache.check_invariants()


def test_environment_problem_does_not_affect_existing_cache(monkeypatch):
    cache, full, down = make(grain=3)
    monkeypatch.setenv(ENV_GRAIN, "abc")
    with pytest.raises(ValueError, match=ENV_GRAIN):
        make()
    assert cache.grain == 3
    cache.update_active_weights(torch.rand(100) < 0.5)
    assert_content(cache, full, down)


# --------------------------------------------------------------------------------------------
# hybrid rebuild path
# --------------------------------------------------------------------------------------------


def _check_against_reference(cache, ref, full, down):
    assert cache.active_indices().tolist() == ref.active_indices().tolist()
    assert cache.last_update_stats() == ref.last_update_stats()
    assert torch.equal(cache.mask, torch.from_numpy(ref.mask))
    assert_content(cache, full, down)


def test_tau_zero_rebuilds_then_paired_updates_stay_consistent():
    """The seed's hybrid went stale after a rebuild: paired updates after a rebuild must see it."""
    rng = np.random.default_rng(5)
    n = 130
    mask0 = torch.from_numpy(rng.random(n) < 0.5)
    cache, full, down = make(n=n, mask=mask0, hybrid_tau_frac=0.0, par_threshold=1, grain=2)
    ref = PairedCache(mask0.numpy().copy(), 12, full[:, :12].numpy(), full[:, 12:].numpy(),
                      down.numpy(), hybrid_tau_frac=0.0)
    paths = []
    for step in range(60):
        tau = [0.0, 1.0, 1.0, 0.0, 2.0, 0.5][step % 6]
        cache.hybrid_tau_frac = tau
        ref.hybrid_tau_frac = tau
        m_before = cache.num_active
        pos_before = cache.position_map()
        if step % 3 == 0:
            new = cache.mask.numpy() ^ (rng.random(n) < 0.2)
            cache.update_active_weights(torch.from_numpy(new))
            ref.update(new)
        else:
            mask = cache.mask.numpy()
            a = rng.permutation(np.flatnonzero(~mask))[: rng.integers(0, 6)]
            r = rng.permutation(np.flatnonzero(mask))[: rng.integers(0, 6)]
            cache.update_from_indices(a, r)
            ref.update_from_indices(a, r)
        s = cache.last_update_stats()
        paths.append(s.path)
        _check_against_reference(cache, ref, full, down)
        m_new = cache.num_active
        if s.path == "rebuild":
            assert tau < 1.0
            assert s.rows_written == m_new
            assert cache.active_indices().tolist() == sorted(cache.active_indices().tolist())
        elif tau == 0.0 and s.path == "paired":
            # tau = 0 takes the paired path only when nothing has to be written (pure tail removal)
            assert s.rows_written == 0
            kept = np.flatnonzero(cache.mask.numpy())
            assert torch.equal(cache.position_map()[kept], pos_before[kept])
        if tau >= 1.0:
            assert s.path != "rebuild"
        assert (s.m_before, s.m_after) == (m_before, m_new)
    assert "rebuild" in paths and "paired" in paths


@pytest.mark.parametrize("tau", [1.0, 2.0, 1e9])
def test_tau_at_least_one_never_rebuilds(tau):
    rng = np.random.default_rng(6)
    n = 100
    cache, full, down = make(n=n, hybrid_tau_frac=tau, mask=torch.zeros(n, dtype=torch.bool))
    masks = [torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]
    masks += [torch.from_numpy(rng.random(n) < rng.random()) for _ in range(20)]
    masks += [torch.ones(n, dtype=torch.bool)]
    for mk in masks:
        for new in (mk, ~mk):
            cache.update_active_weights(new)
            s = cache.last_update_stats()
            assert s.path in ("paired", "noop")
            assert s.rows_written <= max(s.added, s.removed)
            assert_content(cache, full, down)
    cache.update_from_indices([], np.flatnonzero(cache.mask.numpy()))
    cache.update_from_indices(rng.permutation(n), [])
    assert cache.last_update_stats().path == "paired"
    assert cache.last_update_stats().rows_written == n
    assert_content(cache, full, down)


# --------------------------------------------------------------------------------------------
# aliasing hazard: every getter call must hand out a fresh view
# --------------------------------------------------------------------------------------------


def test_in_place_metadata_change_on_a_view_does_not_leak_into_the_cache():
    cache, full, down = make()
    m = cache.num_active
    w = cache.get_concat_weight()
    d = cache.get_active_down_weight()
    w.t_()  # legal on a view the caller owns
    d.unsqueeze_(0)
    assert cache.get_concat_weight().shape == (m, full.shape[1])
    assert cache.get_active_down_weight().shape == (down.shape[0], m)
    assert torch.equal(cache.get_concat_weight(copy=True), expected(cache, full, down)[0])
