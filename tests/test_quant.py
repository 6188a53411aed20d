"""int8 rows with per-row scales (paired_replacement.quant): the quantisation against a NumPy
re-implementation, the quantised cache's packed bytes against the quantised pool rows of its
active_indices() after every update, its FFN against plain torch, the int8 pool file bit for bit,
and bad input."""

from __future__ import annotations

import copy
import pickle
import struct
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from paired_replacement import WeightCache
from paired_replacement.pool_file import (ALIGN, PoolFileError, main, read_header,
                                          read_pool_file, write_pool_file)
from paired_replacement.quant import (QuantizedWeightCache, QuantizedWeights, dequantize_rows,
                                      quantize_ffn, quantize_rows)

# --------------------------------------------------------------------------------------------
# the NumPy reference (independent of the torch code under test)
# --------------------------------------------------------------------------------------------


def np_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-row int8: scale = max|row| / 127 (float32), q = clip(round(row / scale))."""
    w = np.asarray(w, dtype=np.float32)
    scale = (np.abs(w).max(axis=1) / np.float32(127)).astype(np.float32)
    div = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    q = np.clip(np.round(w / div[:, None]), -127, 127).astype(np.int8)
    return q, scale


def np_byte_rows(*segments: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """[R, sum(C + 4)] uint8: each (q, scale) segment as its int8 bytes then its float32 (LE)."""
    parts = []
    for q, scale in segments:
        parts += [q.view(np.uint8), scale.astype("<f4").view(np.uint8).reshape(-1, 4)]
    return np.concatenate(parts, axis=1)


def np_expected_rows(gate, up, down) -> tuple[np.ndarray, np.ndarray]:
    """The pool byte rows the quantised cache must hold: gate|up rows and down^T rows."""
    segs = ([] if gate is None else [np_quantize(gate.float().numpy())])
    segs.append(np_quantize(up.float().numpy()))
    return np_byte_rows(*segs), np_byte_rows(np_quantize(down.float().numpy().T))


def _weights(n=300, h=64, dtype=torch.float32, gate=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, h, generator=gen).to(dtype) if gate else None
    u = torch.randn(n, h, generator=gen).to(dtype)
    d = torch.randn(h, n, generator=gen).to(dtype)
    return g, u, d


def _masks(n, steps, seed=1):
    """Random densities (growth and shrink), plus an empty and a full mask."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.rand(n, generator=gen) < float(d) for d in torch.rand(steps, generator=gen) * 0.9]
    out[steps // 3] = torch.zeros(n, dtype=torch.bool)
    out[2 * steps // 3] = torch.ones(n, dtype=torch.bool)
    return out


def _plain_ffn(x, gate, up, down_t, gated=True):
    """Plain torch SwiGLU (ReLU without gate) over rows: gate/up [m, H], down_t [m, Hd]."""
    pre = x @ up.t()
    act = F.silu(x @ gate.t()) * pre if gated else torch.relu(pre)
    return act @ down_t


# --------------------------------------------------------------------------------------------
# quantisation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_quantize_rows_matches_numpy_and_the_error_bound(dtype):
    gen = torch.Generator().manual_seed(3)
    w = (torch.randn(64, 40, generator=gen) * torch.rand(64, 1, generator=gen) * 10).to(dtype)
    w[5] = 0  # an all-zero row
    w[6] = 0
    w[6, 7] = -3.5  # one nonzero element, negative: it maps to -127
    w[7, :] = torch.linspace(-1, 1, 40).to(dtype)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32
    assert q.shape == (64, 40) and scale.shape == (64,)
    ref_q, ref_scale = np_quantize(w.float().numpy())
    assert np.array_equal(q.numpy(), ref_q)
    assert np.array_equal(scale.numpy().view(np.uint32), ref_scale.view(np.uint32))  # bit exact
    # the bound, in float64: |w - q * s| <= s / 2 (+ float32 rounding of w / s and of q * s)
    w64 = w.double().numpy()
    deq = dequantize_rows(q, scale)
    assert deq.dtype == torch.float32
    err = np.abs(w64 - deq.double().numpy())
    s64 = scale.double().numpy()[:, None]
    assert (err <= s64 * (0.5 + 2e-5)).all(), float((err / np.maximum(s64, 1e-30)).max())
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    nonzero = np.abs(w64).max(axis=1) > 0
    assert (np.abs(q.numpy()).max(axis=1)[nonzero] == 127).all()  # the row max maps to +-127
    assert scale[5] == 0 and not q[5].any() and not deq[5].any()  # zero row: exact zeros
    assert q[6, 7] == -127 and scale[6] == np.float32(3.5) / np.float32(127)
    assert torch.equal(deq[6], w[6].float())


def test_dequantize_rows_matches_numpy():
    gen = torch.Generator().manual_seed(4)
    q = torch.randint(-127, 128, (20, 12), generator=gen, dtype=torch.int8)
    scale = torch.rand(20, generator=gen)
    ref = q.numpy().astype(np.float32) * scale.numpy()[:, None]
    assert np.array_equal(dequantize_rows(q, scale).numpy(), ref)


def test_quantize_ffn_quantizes_down_per_neuron_column():
    g, u, d = _weights(n=30, h=16)
    qw = quantize_ffn(g, u, d)
    assert qw.down.shape == (16, 30) and qw.down_scale.shape == (30,)
    dq, ds = np_quantize(d.numpy().T)  # one scale per column of down = per neuron
    assert np.array_equal(qw.down.numpy(), dq.T) and np.array_equal(qw.down_scale.numpy(), ds)
    gd, ud, dd = qw.dequantize()
    assert np.array_equal(dd.numpy(), (dq.astype(np.float32) * ds[:, None]).T)
    gq, gs = np_quantize(g.numpy())
    assert np.array_equal(gd.numpy(), gq.astype(np.float32) * gs[:, None])
    assert quantize_ffn(None, u, d).gate is None


# --------------------------------------------------------------------------------------------
# the quantised cache: packed bytes = quantised pool rows of active_indices()
# --------------------------------------------------------------------------------------------


def _check_against_reference(cache, concat_ref, down_ref, g, u, d):
    idx = cache.active_indices().numpy()
    concat, down_t = cache.packed_bytes()
    assert concat.dtype == torch.uint8
    assert np.array_equal(concat.numpy(), concat_ref[idx])
    assert np.array_equal(down_t.numpy(), down_ref[idx])
    # and the typed views say the same, through the NumPy quantisation of each tensor
    a = cache.active_weights()
    uq, us = np_quantize(u.float().numpy())
    dq, ds = np_quantize(d.float().numpy().T)
    assert np.array_equal(a.up.numpy(), uq[idx]) and np.array_equal(a.up_scale.numpy(), us[idx])
    assert np.array_equal(a.down_t.numpy(), dq[idx])
    assert np.array_equal(a.down_scale.numpy(), ds[idx])
    if g is None:
        assert a.gate is None and a.gate_scale is None
    else:
        gq, gs = np_quantize(g.float().numpy())
        assert np.array_equal(a.gate.numpy(), gq[idx])
        assert np.array_equal(a.gate_scale.numpy(), gs[idx])


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("tau", [0.0, 0.5, 2.0])
def test_packed_rows_and_scales_follow_active_indices(gate, tau):
    """After mask and index updates (growth, shrink, empty, full, rebuilds at tau = 0), every
    packed row is the quantised pool row of its slot's row id, its scale included; the
    bookkeeping is the float cache's, update for update."""
    g, u, d = _weights(gate=gate)
    concat_ref, down_ref = np_expected_rows(g, u, d)
    masks = _masks(300, 24)
    cache = QuantizedWeightCache(masks[0], 64, g, u, d, hybrid_tau_frac=tau)
    floats = WeightCache(masks[0], 64, g, u, d, hybrid_tau_frac=tau)
    _check_against_reference(cache, concat_ref, down_ref, g, u, d)
    paths, grew, shrank = set(), False, False
    for step, mask in enumerate(masks[1:]):
        if step % 3 == 1:
            added = (mask & ~cache.mask).nonzero().squeeze(1)
            removed = (~mask & cache.mask).nonzero().squeeze(1)
            cache.update_from_indices(added, removed)
            floats.update_from_indices(added, removed)
        else:
            cache.update_active_weights(mask)
            floats.update_active_weights(mask)
        stats = cache.last_update_stats()
        assert stats == floats.last_update_stats()
        assert torch.equal(cache.active_indices(), floats.active_indices())
        assert torch.equal(cache.mask, mask) and cache.num_active == int(mask.sum())
        paths.add(stats.path)
        grew |= stats.m_after > stats.m_before
        shrank |= stats.m_after < stats.m_before
        _check_against_reference(cache, concat_ref, down_ref, g, u, d)
    cache.check_invariants()
    assert grew and shrank
    assert ("rebuild" in paths) == (tau < 1.0)
    assert "paired" in paths or tau == 0.0


def test_pool_views_hold_every_quantised_row():
    g, u, d = _weights(n=40, h=8)
    cache = QuantizedWeightCache(torch.zeros(40, dtype=torch.bool), 8, g, u, d)
    pool = cache.pool_weights()
    gq, gs = np_quantize(g.numpy())
    assert np.array_equal(pool.gate.numpy(), gq) and np.array_equal(pool.gate_scale.numpy(), gs)
    dq, ds = np_quantize(d.numpy().T)
    assert np.array_equal(pool.down_t.numpy(), dq) and np.array_equal(pool.down_scale.numpy(), ds)
    assert cache.num_active == 0 and cache.active_weights().up.shape == (0, 8)


def test_views_alias_the_live_block_and_scale_writes_are_caught():
    """The typed views are views of the packed block (no copy): a later update that reuses a
    slot shows through them, values and scale together; a write into a scale view is reported
    by check_invariants like any other packed byte."""
    g, u, d = _weights(n=50, h=16)
    mask = torch.zeros(50, dtype=torch.bool)
    mask[:10] = True
    cache = QuantizedWeightCache(mask, 16, g, u, d)
    concat, down_t = cache.packed_bytes()
    a = cache.active_weights()
    base = concat.data_ptr()
    assert a.gate.data_ptr() == base and a.gate_scale.data_ptr() == base + 16
    assert a.up.data_ptr() == base + 20 and a.up_scale.data_ptr() == base + 36
    assert a.down_t.data_ptr() == down_t.data_ptr()
    assert a.down_scale.data_ptr() == down_t.data_ptr() + 16
    slot = int(cache.position_map()[3])
    cache.update_from_indices([42], [3])  # row 42 takes row 3's slot
    assert int(cache.position_map()[42]) == slot
    uq, us = np_quantize(u.numpy())
    dq, ds = np_quantize(d.numpy().T)
    assert np.array_equal(a.up[slot].numpy(), uq[42]) and a.up_scale[slot] == us[42]
    assert np.array_equal(a.down_t[slot].numpy(), dq[42]) and a.down_scale[slot] == ds[42]
    cache.check_invariants()
    a.up_scale[slot] = 1.0
    with pytest.raises(RuntimeError, match="slot"):
        cache.check_invariants()


def test_int8_pools_take_about_a_quarter_of_float32():
    n, h = 64, 1024
    g, u, d = _weights(n=n, h=h)
    mask = torch.ones(n, dtype=torch.bool)
    q = QuantizedWeightCache(mask, h, g, u, d)
    f = WeightCache(mask, h, g, u, d)

    def pool_bytes(concat, down_t):  # rows x row stride (padding included)
        return concat.shape[0] * concat.stride(0) * concat.element_size() + \
            down_t.shape[0] * down_t.stride(0) * down_t.element_size()

    qb = pool_bytes(q.torch_object.pool_concat_weight(), q.torch_object.pool_down_weight_t())
    fb = pool_bytes(f.pool_concat_weight(), f.pool_down_weight_t())
    assert qb == n * (2 * (h + 4) + 64 - 8) + n * (h + 4 + 64 - 4)  # rows padded to 64 B
    assert 0.25 < qb / fb < 0.27


# --------------------------------------------------------------------------------------------
# the FFN
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [True, False])
def test_ffn_equals_plain_torch_on_the_dequantised_rows(gate):
    """Tight: the same FFN in plain torch on the dequantised active rows (NumPy dequantisation).
    Loose: within 3 % (relative Frobenius error; about 1 % measured) of the float FFN on the
    unquantised rows."""
    g, u, d = _weights(n=400, h=64, gate=gate, seed=5)
    cache = QuantizedWeightCache(torch.rand(400) < 0.3, 64, g, u, d)
    cache.update_active_weights(torch.rand(400) < 0.4)
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(6))
    idx = cache.active_indices()
    y = cache.ffn(x)
    assert y.shape == (8, 64) and y.dtype == torch.float32

    def deq(w):
        q, s = np_quantize(w)
        return torch.from_numpy(q.astype(np.float32) * s[:, None])

    gd = deq(g.numpy())[idx] if gate else None
    ref = _plain_ffn(x, gd, deq(u.numpy())[idx], deq(d.numpy().T)[idx], gated=gate)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    exact = _plain_ffn(x, g[idx] if gate else None, u[idx], d.t()[idx], gated=gate)
    rel = float((y - exact).norm() / exact.norm())
    assert rel < 0.03, rel
    # dequantized() is the FFN's layouts of the same numbers
    dg, du, dd = cache.dequantized()
    assert torch.equal(du, deq(u.numpy())[idx]) and torch.equal(dd, deq(d.numpy().T)[idx].t())
    assert (dg is None) == (not gate)


def test_ffn_of_no_active_row_is_zero_and_keeps_the_input_dtype():
    g, u, d = _weights(n=20, h=8)
    cache = QuantizedWeightCache(torch.zeros(20, dtype=torch.bool), 8, g, u, d)
    assert torch.equal(cache.ffn(torch.randn(3, 8)), torch.zeros(3, 8))
    cache.update_active_weights(torch.ones(20, dtype=torch.bool))
    x = torch.randn(3, 8)
    y16 = cache.ffn(x.to(torch.bfloat16))
    assert y16.dtype == torch.bfloat16
    want = cache.ffn(x.to(torch.bfloat16).float()).bfloat16()
    assert torch.equal(y16, want)


# --------------------------------------------------------------------------------------------
# the int8 pool file
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_pool_file_round_trip_is_bit_exact(tmp_path, gate, dtype):
    g, u, d = _weights(n=96, h=40, gate=gate, dtype=dtype)
    header = write_pool_file(tmp_path / "q.pool", g, u, d, dtype=torch.int8)
    assert header.dtype == torch.int8 and header.row_scale_bytes == 4
    assert (header.gate_cols, header.up_cols, header.hidden) == (40 if gate else 0, 40, 40)
    assert header.concat_bytes == (44 if gate else 0) + 44 and header.down_bytes == 44
    assert header.record_bytes % ALIGN == 0
    assert (tmp_path / "q.pool").stat().st_size == header.header_bytes + 96 * header.record_bytes
    assert read_header(tmp_path / "q.pool") == header
    qw = read_pool_file(tmp_path / "q.pool")
    assert isinstance(qw, QuantizedWeights)
    uq, us = np_quantize(u.float().numpy())
    dq, ds = np_quantize(d.float().numpy().T)
    assert np.array_equal(qw.up.numpy(), uq) and np.array_equal(qw.up_scale.numpy(), us)
    assert np.array_equal(qw.down.numpy(), dq.T) and np.array_equal(qw.down_scale.numpy(), ds)
    if gate:
        gq, gs = np_quantize(g.float().numpy())
        assert np.array_equal(qw.gate.numpy(), gq) and np.array_equal(qw.gate_scale.numpy(), gs)
    else:
        assert qw.gate is None and qw.gate_scale is None
    # the record bytes themselves: [gate q | scale | up q | scale] at 0, [down q | scale] after
    raw = np.fromfile(tmp_path / "q.pool", dtype=np.uint8)[header.header_bytes:]
    records = raw.reshape(96, header.record_bytes)
    concat_ref, down_ref = np_expected_rows(g, u, d)
    assert np.array_equal(records[:, :header.concat_bytes], concat_ref)
    assert np.array_equal(records[:, header.down_offset:header.down_offset + 44], down_ref)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("tau", [2.0, 0.0])
def test_file_backed_quantised_cache_equals_the_in_memory_one(tmp_path, gate, tau):
    g, u, d = _weights(n=200, h=48, gate=gate, seed=7)
    header = write_pool_file(tmp_path / "q.pool", g, u, d, dtype=torch.int8)
    concat_ref, down_ref = np_expected_rows(g, u, d)
    masks = _masks(200, 18, seed=8)
    memory = QuantizedWeightCache(masks[0], 48, g, u, d, hybrid_tau_frac=tau)
    tiered = QuantizedWeightCache.from_pool_file(tmp_path / "q.pool", masks[0], queue_depth=4,
                                                 hybrid_tau_frac=tau)
    assert (tiered.gate_cols, tiered.up_cols, tiered.hidden) == (memory.gate_cols, 48, 48)
    info = tiered.tier_info
    assert info.tier == "file" and info.queue_depth == 4 and memory.tier_info.tier == "dram"
    assert info.bytes_read == int(masks[0].sum()) * header.record_bytes
    for step, mask in enumerate(masks[1:]):
        if step % 3 == 2:
            added = (mask & ~tiered.mask).nonzero().squeeze(1)
            removed = (~mask & tiered.mask).nonzero().squeeze(1)
            memory.update_from_indices(added, removed)
            tiered.update_from_indices(added, removed)
        else:
            memory.update_active_weights(mask)
            tiered.update_active_weights(mask)
        stats = tiered.last_update_stats()
        assert stats == memory.last_update_stats()
        assert torch.equal(tiered.active_indices(), memory.active_indices())
        for a, b in zip(tiered.packed_bytes(), memory.packed_bytes()):
            assert torch.equal(a, b)
        _check_against_reference(tiered, concat_ref, down_ref, g, u, d)
        assert tiered.last_update_work().slow_bytes_read == stats.rows_written * header.record_bytes
        assert memory.last_update_work().slow_bytes_read == 0
    tiered.check_invariants()
    x = torch.randn(4, 48)
    assert torch.equal(tiered.ffn(x), memory.ffn(x))
    with pytest.raises(RuntimeError, match="on disk"):
        tiered.pool_weights()
    assert "pool file" in repr(tiered)


def test_cli_writes_int8_pool_files(tmp_path, capsys):
    g, u, d = _weights(n=32, h=16)
    torch.save({"gate": g, "up": u, "down": d}, tmp_path / "w.pt")
    assert main(["write", "--weights", str(tmp_path / "w.pt"), "--dtype", "int8", "--out",
                 str(tmp_path / "a.pool")]) == 0
    qw = read_pool_file(tmp_path / "a.pool")
    for got, want in zip(qw, quantize_ffn(g, u, d)):
        assert torch.equal(got, want)
    assert main(["write", "--random", "64", "24", "--no-gate", "--dtype", "int8", "--out",
                 str(tmp_path / "r.pool")]) == 0
    assert main(["info", str(tmp_path / "r.pool")]) == 0
    out = capsys.readouterr().out
    assert "N=64 gate=0 up=24 hidden=24 dtype=int8 + a float32 scale per row" in out
    gen = torch.Generator().manual_seed(0)  # --random's weights, quantised
    up = torch.randn(64, 24, generator=gen)
    assert torch.equal(read_pool_file(tmp_path / "r.pool").up, quantize_rows(up)[0])
    # without --dtype the weights keep theirs (float32 here)
    assert main(["write", "--weights", str(tmp_path / "w.pt"),
                 "--out", str(tmp_path / "f.pool")]) == 0
    assert read_header(tmp_path / "f.pool").dtype == torch.float32
    assert main(["write", "--random", "8", "6", "--dtype", "int8", "--out",
                 str(tmp_path / "bad.pool")]) == 1
    assert "gate columns = 6 is not a multiple of 4" in capsys.readouterr().err
    assert not (tmp_path / "bad.pool").exists()


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def _reheader(data: bytes, **fields) -> bytes:
    """The file with header fields replaced and the CRC recomputed (a consistent lie)."""
    names = ["magic", "version", "header_bytes", "rows", "gate_cols", "up_cols", "hidden",
             "elem_size", "dtype_code", "record_bytes", "concat_offset", "down_offset"]
    fmt = struct.Struct("<8sIIqqqqIIQQQ")
    values = dict(zip(names, fmt.unpack(data[:80])))
    values.update(fields)
    packed = fmt.pack(*(values[k] for k in names))
    return packed + struct.pack("<I", zlib.crc32(packed)) + data[84:]


def test_damaged_int8_headers_name_the_file_and_the_field(tmp_path):
    g, u, d = _weights(n=40, h=16)
    path = tmp_path / "q.pool"
    write_pool_file(path, g, u, d, dtype=torch.int8)
    good = path.read_bytes()
    mask = torch.zeros(40, dtype=torch.bool)
    cases = {  # what -> (bytes, the Python reader's message, the C++ reader's message)
        "crc": (good[:30] + bytes([good[30] ^ 1]) + good[31:], "damaged header", "damaged header"),
        "up_cols": (_reheader(good, up_cols=6), "up_cols 6 is not a multiple of 4",
                    "up_cols 6 is not a multiple of 4"),
        "hidden": (_reheader(good, hidden=18), "hidden 18 is not a multiple of 4",
                   "hidden 18 is not a multiple of 4"),
        "elem_size": (_reheader(good, elem_size=2), "element size 2 for torch.int8",
                      "dtype code 5 .* needs elem_size 1, got 2"),
        "layout": (_reheader(good, hidden=4096), "inconsistent record layout",
                   "inconsistent record layout"),
    }
    for what, (data, py_msg, cpp_msg) in cases.items():
        path.write_bytes(data)
        with pytest.raises(PoolFileError, match=f"pool file .*q.pool: {py_msg}"):
            read_header(path)
        with pytest.raises(PoolFileError, match=py_msg):
            read_pool_file(path)
        with pytest.raises(RuntimeError, match=f"pool file .*q.pool: {cpp_msg}"):
            QuantizedWeightCache.from_pool_file(path, mask)
    path.write_bytes(good)
    QuantizedWeightCache.from_pool_file(path, mask).check_invariants()


def test_each_cache_class_refuses_the_other_pool_file(tmp_path):
    g, u, d = _weights(n=40, h=16)
    write_pool_file(tmp_path / "q.pool", g, u, d, dtype=torch.int8)
    write_pool_file(tmp_path / "f.pool", g, u, d)
    mask = torch.zeros(40, dtype=torch.bool)
    with pytest.raises(ValueError, match="q.pool: dtype code 5 is int8 .*QuantizedWeightCache"):
        WeightCache.from_pool_file(tmp_path / "q.pool", mask)
    with pytest.raises(ValueError, match="f.pool: dtype code 1 is not int8 .*WeightCache"):
        QuantizedWeightCache.from_pool_file(tmp_path / "f.pool", mask)


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy, pickle.dumps])
def test_copy_deepcopy_and_pickle_are_refused_naming_the_class(how):
    g, u, d = _weights(n=40, h=16)
    cache = QuantizedWeightCache(torch.rand(40) < 0.5, 16, g, u, d)
    before = cache.active_indices().clone()
    with pytest.raises(TypeError, match="a QuantizedWeightCache cannot be (copied|deep-copied|pickled)"):
        how(cache)
    assert torch.equal(cache.active_indices(), before)
    cache.check_invariants()


def _good(n=24, h=8):
    g, u, d = _weights(n=n, h=h)
    return {"mask": torch.rand(n) < 0.5, "hidden": h, "gate": g, "up": u, "down": d}


def _with(**change):
    """Constructor arguments: the good ones with ``change[name](good[name])`` applied."""
    def make():
        args = _good()
        for name, fn in change.items():
            args[name] = fn(args[name])
        return tuple(args.values())
    return make


def _nan_at(r, c, value=float("nan")):
    def put(t):
        t = t.clone()
        t[r, c] = value
        return t
    return put


# name -> (fn() -> constructor args, exception, regex)
BAD_QUANTISED = {
    "hidden_6": (lambda: (torch.ones(24, dtype=torch.bool), 6, *_weights(n=24, h=6)), ValueError,
                 r"hidden_size = 6 is not a multiple of 4"),
    "nan_gate": (_with(gate=_nan_at(3, 5)), ValueError,
                 r"gate_weight has a non-finite value \(nan\) at \[3, 5\]"),
    "inf_up": (_with(up=_nan_at(0, 7, float("inf"))), ValueError,
               r"up_weight has a non-finite value \(inf\) at \[0, 7\]"),
    "ninf_down": (_with(down=_nan_at(2, 20, -float("inf"))), ValueError,
                  r"down_weight has a non-finite value \(-inf\) at \[2, 20\]"),
    "int32": (_with(gate=torch.Tensor.int, up=torch.Tensor.int, down=torch.Tensor.int), TypeError,
              r"up_weight must be float32, float16, bfloat16, got torch.int32"),
    "float64_down": (_with(down=torch.Tensor.double), TypeError,
                     r"down_weight must be float32, float16, bfloat16"),
    "int8_gate": (_with(gate=lambda g: g.to(torch.int8)), TypeError,
                  r"gate_weight must be float32"),
    "gate_shape": (_with(gate=lambda g: g[:, :4]), ValueError,
                   r"gate_weight must have shape \[N, hidden_size\] = \[24, 8\], got \[24, 4\]"),
    "down_shape": (_with(down=lambda d: d.t().contiguous()), ValueError,
                   r"down_weight must have shape \[hidden_size, N\] = \[8, 24\]"),
    "up_1d": (_with(up=lambda u: u[0]), ValueError, r"up_weight must be 2-D"),
    "mask_uint8": (_with(mask=lambda m: m.to(torch.uint8)), TypeError,
                   r"mask must have dtype torch.bool"),
    "mask_short": (_with(mask=lambda m: m[1:]), ValueError, r"mask must have N = 24 entries"),
    "not_a_tensor": (_with(up=torch.Tensor.tolist), TypeError, r"up_weight must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_QUANTISED))
def test_bad_quantised_construction(case):
    make, exc, match = BAD_QUANTISED[case]
    args = make()
    copies = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    with pytest.raises(exc, match=match):
        QuantizedWeightCache(*args)
    for a, b in zip(args, copies):  # inputs are never written
        if isinstance(a, torch.Tensor):
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))  # NaN-safe: the bits


def test_quantised_cache_without_gate_takes_none_or_empty():
    m, h, _, u, d = _with()()
    a = QuantizedWeightCache(m, h, None, u, d)
    b = QuantizedWeightCache(m, h, torch.empty(0), u, d)
    assert not a.has_gate and not b.has_gate and a.gate_cols == 0
    assert torch.equal(a.packed_bytes()[0], b.packed_bytes()[0])
    assert a.packed_bytes()[0].shape[1] == h + 4


def test_bad_int8_pool_file_writes():
    g, u, d = _weights(n=16, h=8)
    with pytest.raises(ValueError, match=r"up columns = 6 is not a multiple of 4"):
        write_pool_file("/nonexistent/never.pool", None, u[:, :6], d[:6], dtype=torch.int8)
    with pytest.raises(ValueError, match=r"hidden \(down rows\) = 6 is not a multiple of 4"):
        write_pool_file("/nonexistent/never.pool", g, u, d[:6], dtype=torch.int8)
    with pytest.raises(ValueError, match=r"down_weight has a non-finite value \(nan\) at \[1, 2\]"):
        write_pool_file("/nonexistent/never.pool", g, u, _nan_at(1, 2)(d), dtype=torch.int8)
    with pytest.raises(TypeError, match=r"dtype must be None, float32"):
        write_pool_file("/nonexistent/never.pool", g, u, d, dtype=torch.int16)


def test_bad_quantize_and_dequantize_calls():
    with pytest.raises(TypeError,
                       match=r"w must be float32, float16, bfloat16, float64, got torch.int64"):
        quantize_rows(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"w must be 2-D"):
        quantize_rows(torch.ones(3))
    with pytest.raises(ValueError, match=r"w must have at least one column"):
        quantize_rows(torch.ones(3, 0))
    with pytest.raises(ValueError, match=r"w has a non-finite value \(nan\) at \[1, 0\]"):
        quantize_rows(torch.tensor([[1.0], [float("nan")]]))
    with pytest.raises(TypeError, match=r"q must have dtype torch.int8"):
        dequantize_rows(torch.ones(2, 3), torch.ones(2))
    with pytest.raises(TypeError, match=r"scale must have dtype torch.float32"):
        dequantize_rows(torch.ones(2, 3, dtype=torch.int8), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"q must be \[R, C\] and scale \[R\]"):
        dequantize_rows(torch.ones(2, 3, dtype=torch.int8), torch.ones(3))


def test_bad_ffn_input():
    cache = QuantizedWeightCache(*_with()())
    with pytest.raises(ValueError, match=r"x must be 2-D \[T, 8\], got shape \(3, 7\)"):
        cache.ffn(torch.randn(3, 7))
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, got torch.int64"):
        cache.ffn(torch.ones(3, 8, dtype=torch.int64))


def test_byte_rows_binding_checks_its_arguments():
    byte_rows = torch.classes.paired.WeightCache.from_byte_rows
    n = 10
    mask = torch.zeros(n, dtype=torch.bool)
    g = torch.zeros(n, 12, dtype=torch.uint8)
    u = torch.zeros(n, 8, dtype=torch.uint8)
    d = torch.zeros(20, n, dtype=torch.uint8)
    with pytest.raises(TypeError, match=r"gate_bytes must have dtype torch.uint8"):
        byte_rows(mask, g.float(), u, d, None, None, None)
    with pytest.raises(TypeError, match=r"up_bytes must have dtype torch.uint8"):
        byte_rows(mask, g, u.to(torch.int8), d, None, None, None)
    with pytest.raises(ValueError, match=r"down_bytes must have shape \[Hb, N\] with N = 10"):
        byte_rows(mask, g, u, torch.zeros(20, 9, dtype=torch.uint8), None, None, None)
    with pytest.raises(ValueError, match=r"gate_bytes must have shape \[N, Gb\]"):
        byte_rows(mask, g[:9], u, d, None, None, None)
    with pytest.raises(ValueError, match=r"up_bytes must be contiguous"):
        byte_rows(mask, g, torch.zeros(8, n, dtype=torch.uint8).t(), d, None, None, None)
    # the float constructor still refuses byte weights, with its own message
    with pytest.raises(TypeError, match=r"up_weight must be float32, float16 or bfloat16"):
        torch.classes.paired.WeightCache(mask, 8, u, u, torch.zeros(8, n, dtype=torch.uint8))
