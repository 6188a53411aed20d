"""Property tests of the C++ cache (``paired_replacement.WeightCache``) against independent references.

Every update is checked against
  * plain torch ops on the ORIGINAL weights (bit for bit), gathered in the cache's slot order;
  * the NumPy reference ``PairedCache`` driven by the same sequence (row order, stats, packed rows);
  * a float64 SwiGLU (or ReLU, without gate) FFN: packed views vs dense with inactive neurons zeroed;
  * the seed API ``torch.classes.paired.WeightCache`` driven alongside.

Run: ``.venv/bin/python -m pytest tests/test_weight_cache.py -q``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from paired_replacement import PairedCache, WeightCache, load_extension
from conftest import padded_ld  # tests/ is on sys.path

load_extension()

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
TAUS = [0.0, 0.5, 1.0, 2.0]
# N values crossing the 64-bit mask-word boundaries, plus random ones.
N_STRATEGY = st.one_of(
    st.sampled_from([1, 2, 63, 64, 65, 127, 128, 129, 191, 192, 193, 200]),
    st.integers(1, 200),
)


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    """Run the whole module with two intra-op threads so the parallel copy path really splits."""
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# --------------------------------------------------------------------------------------------
# problem construction
# --------------------------------------------------------------------------------------------


@st.composite
def problems(draw, max_n=200):
    """Shape, dtype, gate mode and settings of one cache."""
    n = draw(N_STRATEGY.filter(lambda v: v <= max_n))
    dtype = draw(st.sampled_from(DTYPES))
    es = torch.empty(0, dtype=dtype).element_size()
    big = 520 // es  # a row of >= 512 bytes: padded stride
    # gate and up are [N, hidden] like down is [hidden, N] (the binding insists on it)
    width = draw(st.integers(0, 4))
    if width == 0:
        hidden = draw(st.sampled_from([big, big + 2]))  # every row padded
    elif width == 1:
        hidden = draw(st.sampled_from([big // 2, big // 2 + 1, big // 2 + 3]))  # gate|up rows padded
    else:
        hidden = draw(st.integers(1, 40))
    gate_mode = draw(st.sampled_from(["tensor", "none", "empty"]))
    g = hidden if gate_mode == "tensor" else 0
    u = hidden
    tau = draw(st.sampled_from(TAUS))
    grain = draw(st.sampled_from([1, 2, 3, 7, 64]))
    par_threshold = draw(st.sampled_from([0, 1, 2, 5, 64]))
    seed = draw(st.integers(0, 2**32 - 1))
    return dict(n=n, dtype=dtype, hidden=hidden, gate_mode=gate_mode, g=g, u=u, tau=tau,
                grain=grain, par_threshold=par_threshold, seed=seed)


class World:
    """The original weights, the cache under test, the seed object and the NumPy reference."""

    def __init__(self, p, init_mask: np.ndarray):
        self.p = p
        n, dtype = p["n"], p["dtype"]
        gen = torch.Generator().manual_seed(p["seed"])
        self.rng = np.random.default_rng(p["seed"])
        # Originals. Kept untouched; every expectation is computed from these.
        self.gate = torch.randn(n, max(p["g"], 1), generator=gen).to(dtype)[:, : p["g"]].contiguous()
        self.up = torch.randn(n, p["u"], generator=gen).to(dtype)
        self.down = torch.randn(p["hidden"], n, generator=gen).to(dtype)
        self.originals = [t.clone() for t in (self.gate, self.up, self.down)]
        self.has_gate = p["gate_mode"] == "tensor"
        self.G = p["g"] if self.has_gate else 0
        if self.has_gate:
            self.full_concat = torch.cat([self.gate, self.up], 1)
        else:
            self.full_concat = self.up

        gate_arg = {"tensor": self.gate, "none": None, "empty": torch.empty(0, dtype=dtype)}[p["gate_mode"]]
        self.cache = WeightCache(
            torch.from_numpy(init_mask.copy()), p["hidden"], gate_arg, self.up, self.down,
            grain=p["grain"], par_threshold=p["par_threshold"], hybrid_tau_frac=p["tau"],
        )
        # Seed API, same inputs: 5 args (gate or empty gate), or 6 with has_gate=False and a real
        # gate tensor that must be ignored.
        Seed = torch.classes.paired.WeightCache
        m0 = torch.from_numpy(init_mask.copy())
        if p["gate_mode"] == "tensor":
            self.seed = Seed(m0, p["hidden"], self.gate, self.up, self.down)
        elif p["gate_mode"] == "empty":
            self.seed = Seed(m0, p["hidden"], torch.empty(0, dtype=dtype), self.up, self.down)
        else:
            decoy = torch.randn(n, 3).to(dtype)
            self.seed = Seed(m0, p["hidden"], decoy, self.up, self.down, False)
        self.seed.set_grain(p["grain"])
        self.seed.set_par_threshold(p["par_threshold"])
        self.seed.set_hybrid_tau_frac(p["tau"])

        # NumPy reference. bf16 has no NumPy dtype: float32 arrays of the same values (exact).
        def np_of(t):
            return (t.float() if dtype == torch.bfloat16 else t).numpy()

        self.ref = PairedCache(
            init_mask.copy(), p["hidden"], np_of(self.gate) if self.has_gate else None,
            np_of(self.up), np_of(self.down), hybrid_tau_frac=p["tau"],
        )
        self.mask = init_mask.copy()
        self.check()

    # ---- updates (the same update is applied to all three) ----
    def update_mask(self, new_mask: np.ndarray, form: str = "tensor"):
        new_mask = np.asarray(new_mask, dtype=np.bool_)
        if form == "numpy":
            arg = new_mask.copy()
        elif form == "strided":
            big = torch.zeros(2 * len(new_mask) + 1, dtype=torch.bool)
            big[1::2] = torch.from_numpy(new_mask.copy())
            arg = big[1::2]  # stride 2, storage offset 1
            assert arg.stride(0) == 2 and arg.storage_offset() == 1
        else:
            arg = torch.from_numpy(new_mask.copy())
        self.cache.update_active_weights(arg)
        self.seed.update_active_weights(torch.from_numpy(new_mask.copy()))
        self.ref.update(new_mask)
        self.mask = new_mask.copy()
        self.check()

    def update_indices(self, added, removed, form: str = "list"):
        added = np.asarray(added, dtype=np.int64)
        removed = np.asarray(removed, dtype=np.int64)

        def conv(a):
            if form == "list":
                return [int(v) for v in a]
            if form == "numpy":
                return a.copy()
            if form == "int32":
                return torch.from_numpy(a.astype(np.int32))
            return torch.from_numpy(a.copy())

        self.cache.update_from_indices(conv(added), conv(removed))
        self.seed.update_from_indices(torch.from_numpy(added.copy()), torch.from_numpy(removed.copy()))
        self.ref.update_from_indices(added, removed)
        self.mask[removed] = False
        self.mask[added] = True
        self.check()

    # ---- the checks ----
    def check(self, ffn: bool = True):
        c, p = self.cache, self.p
        n, dtype, hidden = p["n"], p["dtype"], p["hidden"]
        mask_t = torch.from_numpy(self.mask.copy())
        m = int(self.mask.sum())
        idx = c.active_indices()
        assert idx.dtype == torch.int64 and idx.shape == (m,)
        assert c.num_active == m == c.get_num_active()
        assert torch.equal(c.mask, mask_t)
        assert set(idx.tolist()) == set(np.flatnonzero(self.mask).tolist())
        assert len(set(idx.tolist())) == m

        # position map: bijection active rows <-> slots 0..m-1, -1 elsewhere
        pos = c.position_map()
        assert pos.dtype == torch.int64 and pos.shape == (n,)
        assert torch.equal(pos[idx], torch.arange(m))
        assert bool((pos[~mask_t] == -1).all())
        assert sorted(pos[mask_t].tolist()) == list(range(m))

        # views equal the ORIGINAL weights gathered in slot order, bit for bit
        cw = c.get_concat_weight()
        dw = c.get_active_down_weight()
        assert cw.dtype == dtype and dw.dtype == dtype
        assert cw.shape == (m, self.G + p["u"]) and dw.shape == (hidden, m)
        assert torch.equal(cw, self.full_concat.index_select(0, idx))
        assert torch.equal(dw, self.down.index_select(1, idx))
        # strides: row-major packed rows, padded when a row is >= 512 bytes
        es = cw.element_size()
        assert cw.stride() == (padded_ld(cw.shape[1], es), 1)
        assert dw.stride() == (1, padded_ld(hidden, es))

        # same row order and stats as the NumPy reference
        assert idx.tolist() == self.ref.active_indices().tolist()
        assert torch.equal(pos, torch.from_numpy(self.ref.position_map()))
        st_ = c.last_update_stats()
        assert st_ == self.ref.last_update_stats()
        # packed rows equal the reference's (bf16 -> float32 is exact)
        rc = torch.from_numpy(self.ref.concat_weight().copy())
        rd = torch.from_numpy(np.ascontiguousarray(self.ref.down_weight().copy()))
        if dtype == torch.bfloat16:
            assert torch.equal(cw.float(), rc) and torch.equal(dw.float(), rd)
        else:
            assert torch.equal(cw, rc) and torch.equal(dw, rd)

        # seed API object gives the same results
        s = self.seed
        assert torch.equal(s.active_indices(), idx)
        assert torch.equal(s.get_concat_weight(), cw)
        assert torch.equal(s.get_active_down_weight(), dw)
        assert tuple(s.last_update_stats()) == (
            st_.added, st_.removed, st_.rows_written, st_.path, st_.m_before, st_.m_after)
        assert s.get_num_active() == m

        if ffn:
            self.check_ffn(cw, dw, mask_t)
        c.check_invariants()
        # the originals were never written
        for t, o in zip((self.gate, self.up, self.down), self.originals):
            assert torch.equal(t, o)

    def check_ffn(self, cw, dw, mask_t):
        g, u = self.G, self.p["u"]
        x_g = torch.from_numpy(self.rng.standard_normal((3, max(g, 1))))[:, :g]
        x_u = torch.from_numpy(self.rng.standard_normal((3, u)))
        cw64, dw64 = cw.double(), dw.double()
        up64, down64 = self.up.double(), self.down.double()
        keep = mask_t.double()
        if self.has_gate:
            h_packed = torch.nn.functional.silu(x_g @ cw64[:, :g].T) * (x_u @ cw64[:, g:].T)
            h_dense = torch.nn.functional.silu(x_g @ self.gate.double().T) * (x_u @ up64.T)
        else:
            h_packed = torch.relu(x_u @ cw64.T)
            h_dense = torch.relu(x_u @ up64.T)
        y_packed = h_packed @ dw64.T
        y_dense = (h_dense * keep) @ down64.T
        torch.testing.assert_close(y_packed, y_dense, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# operations
# --------------------------------------------------------------------------------------------

OPS = ["small", "large", "empty", "full", "same", "swap", "random",
       "idx_small", "idx_large", "idx_empty", "idx_swap"]
MASK_FORMS = ["tensor", "tensor", "numpy", "strided"]
INDEX_FORMS = ["list", "numpy", "int64", "int32"]


def apply_op(w: World, op: str, rng: np.random.Generator, mask_form: str, index_form: str):
    n = w.p["n"]
    cur = w.mask
    if op == "small":
        new = cur.copy()
        flip = rng.choice(n, size=min(n, int(rng.integers(1, 4))), replace=False)
        new[flip] = ~new[flip]
        w.update_mask(new, mask_form)
    elif op == "large":
        new = cur ^ (rng.random(n) < 0.5)
        w.update_mask(new, mask_form)
    elif op == "empty":
        w.update_mask(np.zeros(n, np.bool_), mask_form)
    elif op == "full":
        w.update_mask(np.ones(n, np.bool_), mask_form)
    elif op == "same":
        w.update_mask(cur.copy(), mask_form)
        assert w.cache.last_update_stats().path == "noop"
    elif op == "swap":
        w.update_mask(~cur, mask_form)
    elif op == "random":
        w.update_mask(rng.random(n) < rng.random(), mask_form)
    elif op.startswith("idx"):
        active = rng.permutation(np.flatnonzero(cur))
        inactive = rng.permutation(np.flatnonzero(~cur))
        if op == "idx_small":
            a = inactive[: int(rng.integers(0, 4))]
            r = active[: int(rng.integers(0, 4))]
        elif op == "idx_large":
            a = inactive[: int(rng.integers(0, len(inactive) + 1))]
            r = active[: int(rng.integers(0, len(active) + 1))]
        elif op == "idx_swap":
            a, r = inactive, active
        else:
            a = r = np.zeros(0, np.int64)
        w.update_indices(a, r, index_form)
    else:  # pragma: no cover
        raise AssertionError(op)


# --------------------------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------------------------


@settings(max_examples=100, **SETTINGS)
@given(p=problems(), data=st.data())
def test_random_update_sequences(p, data):
    rng = np.random.default_rng(p["seed"] ^ 0x5EED)
    init = data.draw(st.sampled_from(["random", "empty", "full"]), label="init")
    n = p["n"]
    mask0 = {"random": rng.random(n) < rng.random(), "empty": np.zeros(n, np.bool_),
             "full": np.ones(n, np.bool_)}[init]
    w = World(p, mask0)
    ops = data.draw(st.lists(st.tuples(st.sampled_from(OPS), st.sampled_from(MASK_FORMS),
                                       st.sampled_from(INDEX_FORMS)), min_size=1, max_size=12),
                    label="ops")
    for op, mask_form, index_form in ops:
        apply_op(w, op, rng, mask_form, index_form)


@settings(max_examples=12, **SETTINGS)
@given(p=problems(), use_indices=st.sampled_from(["mask", "indices", "alternate"]))
@example(p=dict(n=200, dtype=torch.float32, hidden=130, gate_mode="tensor", g=130, u=130, tau=0.5,
                grain=2, par_threshold=0, seed=11), use_indices="alternate")
@example(p=dict(n=129, dtype=torch.bfloat16, hidden=5, gate_mode="none", g=0, u=5, tau=0.0,
                grain=1, par_threshold=1, seed=12), use_indices="mask")
def test_grow_one_by_one_then_shrink_back(p, use_indices):
    """0 -> N one row at a time (random order), then back to 0; every step checked."""
    n = p["n"]
    rng = np.random.default_rng(p["seed"])
    w = World(p, np.zeros(n, np.bool_))
    order = rng.permutation(n)
    forms = INDEX_FORMS
    for step, r in enumerate(order):
        by_idx = use_indices == "indices" or (use_indices == "alternate" and step % 2)
        if by_idx:
            w.update_indices([r], [], forms[step % 4])
        else:
            new = w.mask.copy()
            new[r] = True
            w.update_mask(new, MASK_FORMS[step % 4])
        w.check(ffn=step % 16 == 0)
    assert w.cache.num_active == n
    for step, r in enumerate(rng.permutation(n)):
        by_idx = use_indices == "indices" or (use_indices == "alternate" and step % 2)
        if by_idx:
            w.update_indices([], [r], forms[step % 4])
        else:
            new = w.mask.copy()
            new[r] = False
            w.update_mask(new, MASK_FORMS[step % 4])
    assert w.cache.num_active == 0
    assert w.cache.get_concat_weight().shape[0] == 0


@settings(max_examples=25, **SETTINGS)
@given(p=problems(), data=st.data())
def test_settings_changed_between_updates(p, data):
    """Changing grain / par_threshold / tau between updates on a live cache keeps it consistent."""
    rng = np.random.default_rng(p["seed"])
    n = p["n"]
    w = World(p, rng.random(n) < 0.5)
    for _ in range(data.draw(st.integers(1, 6), label="steps")):
        tau = data.draw(st.sampled_from(TAUS))
        w.cache.hybrid_tau_frac = tau
        w.seed.set_hybrid_tau_frac(tau)
        w.ref.hybrid_tau_frac = tau
        w.cache.grain = data.draw(st.sampled_from([1, 2, 64]))
        w.cache.par_threshold = data.draw(st.sampled_from([0, 1, 64]))
        assert w.cache.hybrid_tau_frac == tau
        apply_op(w, data.draw(st.sampled_from(OPS)), rng, "tensor", "int64")


def test_parallel_path_really_used_with_two_threads():
    """Large updates with grain 1 / par_threshold 0 on two threads, padded rows, all dtypes."""
    for dtype in DTYPES:
        p = dict(n=200, dtype=dtype, hidden=300, gate_mode="tensor", g=300, u=300, tau=1.0,
                 grain=1, par_threshold=0, seed=7)
        rng = np.random.default_rng(1)
        w = World(p, rng.random(200) < 0.5)
        assert torch.get_num_threads() == 2
        for _ in range(4):
            apply_op(w, "swap", rng, "tensor", "list")
            apply_op(w, "idx_large", rng, "tensor", "int32")
            apply_op(w, "large", rng, "numpy", "list")


def test_streaming_store_path():
    """An update writing >= 8 MiB takes the non-temporal-store path; contents must still match."""
    # 4096- and 2048-byte rows (64-byte multiples): 2100 rows * 6 KiB > 8 MiB.
    p = dict(n=2100, dtype=torch.float32, hidden=512, gate_mode="tensor", g=512, u=512, tau=1.0,
             grain=64, par_threshold=64, seed=3)
    rng = np.random.default_rng(3)
    w = World(p, np.zeros(2100, np.bool_))
    w.update_mask(np.ones(2100, np.bool_))           # 2100 growth rows (paired, W = 2100)
    assert w.cache.last_update_stats().rows_written == 2100
    w.update_mask(rng.random(2100) < 0.5)              # shrink: paired fill from the tail
    w.cache.hybrid_tau_frac = 0.0
    w.ref.hybrid_tau_frac = 0.0
    w.seed.set_hybrid_tau_frac(0.0)
    w.update_mask(np.ones(2100, np.bool_))             # rebuild of 2100 rows
    assert w.cache.last_update_stats().path == "rebuild"


def test_stride_zero_and_offset_masks():
    """Expanded (stride 0) all-on / all-off masks and a mask at a storage offset."""
    p = dict(n=150, dtype=torch.float16, hidden=7, gate_mode="tensor", g=7, u=7, tau=0.5,
             grain=4, par_threshold=0, seed=21)
    w = World(p, np.zeros(150, np.bool_))
    for value in (True, False, True):
        expanded = torch.tensor([value]).expand(150)
        assert expanded.stride(0) == 0
        w.cache.update_active_weights(expanded)
        w.seed.update_active_weights(expanded)
        w.ref.update(np.full(150, value))
        w.mask = np.full(150, value)
        w.check()
    rng = np.random.default_rng(0)
    for _ in range(5):
        new = rng.random(150) < 0.5
        buf = torch.zeros(300, dtype=torch.bool)
        buf[7:157] = torch.from_numpy(new)
        w.cache.update_active_weights(buf[7:157])
        w.seed.update_active_weights(buf[7:157])
        w.ref.update(new)
        w.mask = new
        w.check()


_RESIDENT_PROBE = r"""
import sys, torch
from paired_replacement import WeightCache

def rss_kib():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))

n, h, m = 8192, 1024, int(sys.argv[1])
gate, up, down = torch.randn(n, h), torch.randn(n, h), torch.randn(h, n)
mask = torch.zeros(n, dtype=torch.bool)
mask[:m] = True
before = rss_kib()
cache = WeightCache(mask, h, gate, up, down)
built = rss_kib()
mask[: n // 2] = True
cache.update_active_weights(mask)
grown = rss_kib()
ok = torch.equal(cache.get_concat_weight(), torch.cat([gate, up], 1)[cache.active_indices()])
print(before, built, grown, int(ok))
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_packed_block_is_resident_only_for_the_slots_used():
    """A cache costs its pools plus the packed rows it has used, not N packed rows: with m = 64
    of N = 8192 the packed block (as large as the pools) adds almost nothing, and growing to
    m = N/2 adds about half of it. (Run in a fresh process: RSS is per process.)"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _RESIDENT_PROBE, "64"], capture_output=True,
                         text=True, check=True).stdout.split()
    before, built, grown, ok = map(int, out)
    pools_kib = 8192 * (2 * 1024 + 1024) * 4 // 1024  # gate|up and down^T rows, fp32
    assert ok == 1
    assert built - before < 1.15 * pools_kib, (before, built, pools_kib)  # eager: 2x pools
    assert built - before > 0.9 * pools_kib  # the pools themselves are resident
    half = grown - built
    assert 0.35 * pools_kib < half < 0.65 * pools_kib, (half, pools_kib)
