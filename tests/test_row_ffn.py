"""torch.ops.paired.row_ffn: the no-packing sparse FFN, against an independent float64 reference.

``row_ffn(x, concat_rows, down_rows, rows, has_gate)`` computes the SwiGLU (or ReLU) FFN of x
[b, H] straight from the selected rows of a gate|up matrix [R, 2H] (or up [R, H]) and a down^T
matrix [R, H], wherever they are: plain tensors, padded rows, a WeightCache's pools or its packed
block. The reference below gathers the rows with index_select and does the packed FFN in float64.

* Correctness: float32 / float16 / bfloat16, gate on / off, batch 1 and 4, rows None / a random
  subset / empty / with duplicates (a duplicate counts twice, like a packed block holding the row
  twice), padded row strides, 1 and 2 torch threads, and a case large enough that the rows are
  split over tasks (and one whose reduction is split too).
* A WeightCache's pools + active_indices() give the FFN of its packed views.
* Bad input raises TypeError / ValueError / IndexError naming the argument.

Run: ``.venv/bin/python -m pytest tests/test_row_ffn.py -q``.
"""

from __future__ import annotations

import zlib

import pytest
import torch

from paired_replacement import WeightCache, load_extension

load_extension()

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Tolerances. The reference sees exactly the same (low-precision) input values, converted exactly
# to float64, so the kernel's only errors are (1) float32 accumulation of H-term dot products and
# of the per-row contributions, a few 2^-24 relative to the magnitudes summed, far below
# ACC_RTOL = 1e-4 of the reference's RMS; and (2) for float16 / bfloat16, rounding the float32 y
# to the output dtype once: at most half an ulp, u * |y| with u = 2^-11 / 2^-8. OUT_RTOL allows
# 2u, because error (1) can move a value across a rounding boundary. The bound checked is
#     |y - ref| <= OUT_RTOL * |ref| + ACC_RTOL * rms(ref).
ACC_RTOL = 1e-4
OUT_RTOL = {torch.float32: 0.0, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


@pytest.fixture
def threads(request):
    old = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(old)


def reference(x, concat, down, rows, has_gate):
    """The packed FFN in float64 over the gathered rows (rows=None: all of them)."""
    h = x.shape[1]
    xd, c, d = x.double(), concat.double(), down.double()
    if rows is not None:
        c, d = c.index_select(0, rows), d.index_select(0, rows)
    if has_gate:
        g, u = xd @ c[:, :h].T, xd @ c[:, h:].T
        act = g / (1.0 + torch.exp(-g)) * u
    else:
        act = torch.clamp_min(xd @ c.T, 0.0)
    return act @ d


def assert_close(y, ref, dtype):
    assert y.dtype == dtype and y.shape == ref.shape
    err = (y.double() - ref).abs()
    rms = ref.pow(2).mean().sqrt().item() if ref.numel() else 0.0
    bound = OUT_RTOL[dtype] * ref.abs() + ACC_RTOL * rms
    worst = (err - bound).max().item() if ref.numel() else 0.0
    assert worst <= 0.0, (
        f"max |y - ref| = {err.max().item():.3g} exceeds the bound by {worst:.3g} "
        f"(rms(ref) = {rms:.3g}, dtype {dtype})"
    )


def make_rows(r, h, has_gate, dtype, gen, pad=0):
    """concat [r, 2h or h] and down^T [r, h]; with pad > 0, views of wider tensors (row stride >
    columns), like the cache's padded pools."""
    cols = 2 * h if has_gate else h
    # Scaled so that the dot products are O(1): fp16 stays far from overflow.
    concat = (torch.randn(r, cols + pad, generator=gen) / h**0.5).to(dtype)[:, :cols]
    down = (torch.randn(r, h + pad, generator=gen) / h**0.5).to(dtype)[:, :h]
    if pad:
        assert concat.stride(0) == cols + pad and down.stride(0) == h + pad
    return concat, down


def select(kind, r, gen):
    if kind == "all":
        return None
    if kind == "subset":
        return torch.randperm(r, generator=gen)[: r // 3]
    if kind == "empty":
        return torch.zeros(0, dtype=torch.long)
    if kind == "duplicates":
        base = torch.randperm(r, generator=gen)[:40]
        return torch.cat([base, base[:15], base[:3]])[torch.randperm(58, generator=gen)]
    raise AssertionError(kind)


# --------------------------------------------------------------------------------------------
# Correctness
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("pad", [0, 13], ids=["dense", "padded"])
@pytest.mark.parametrize("kind", ["all", "subset", "empty", "duplicates"])
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("has_gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype, has_gate, batch, kind, pad, threads):
    # H = 75 is not a multiple of the kernel's 16 lanes: the tails of the dot products run too.
    r, h = 150, 75
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{has_gate}{batch}{kind}{pad}".encode()))
    concat, down = make_rows(r, h, has_gate, dtype, gen, pad)
    x = torch.randn(batch, h, generator=gen).to(dtype)
    rows = select(kind, r, gen)
    before = (x.clone(), concat.clone(), down.clone())
    y = torch.ops.paired.row_ffn(x, concat, down, rows, has_gate)
    assert_close(y, reference(x, concat, down, rows, has_gate), dtype)
    if kind == "empty":
        assert torch.equal(y, torch.zeros(batch, h, dtype=dtype))
    # the inputs are only read
    assert all(torch.equal(a, b) for a, b in zip(before, (x, concat, down)))


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("kind", ["all", "subset"])
@pytest.mark.parametrize("has_gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_large_case_split_over_tasks(dtype, has_gate, kind, threads):
    # R = 4096 rows of 3 x 512 (gate) values: at least 3 KiB per row, so with 2 threads the rows
    # are split into two tasks (one task needs >= 256 KiB of rows) and the accumulators reduced.
    r, h = 4096, 512
    gen = torch.Generator().manual_seed(7)
    concat, down = make_rows(r, h, has_gate, dtype, gen, pad=16)
    x = torch.randn(4, h, generator=gen).to(dtype)
    rows = select(kind, r, gen)
    y = torch.ops.paired.row_ffn(x, concat, down, rows, has_gate)
    assert_close(y, reference(x, concat, down, rows, has_gate), dtype)


@pytest.mark.parametrize("threads", [2], indirect=True)
def test_large_batch_splits_the_reduction(threads):
    # batch 64 x 2 tasks: the reduction of the accumulators is itself split over the columns.
    r, h = 4096, 512
    gen = torch.Generator().manual_seed(8)
    concat, down = make_rows(r, h, True, torch.float32, gen)
    x = torch.randn(64, h, generator=gen)
    y = torch.ops.paired.row_ffn(x, concat, down, None, True)
    assert_close(y, reference(x, concat, down, None, True), torch.float32)


@pytest.mark.parametrize("threads", [1, 2], indirect=True)
def test_rows_none_is_all_rows_in_order(threads):
    gen = torch.Generator().manual_seed(3)
    concat, down = make_rows(1000, 256, True, torch.float32, gen, pad=16)
    x = torch.randn(2, 256, generator=gen)
    a = torch.ops.paired.row_ffn(x, concat, down, None, True)
    b = torch.ops.paired.row_ffn(x, concat, down, torch.arange(1000), True)
    assert torch.equal(a, b)


def test_a_duplicate_counts_twice():
    gen = torch.Generator().manual_seed(4)
    concat, down = make_rows(20, 32, True, torch.float32, gen)
    x = torch.randn(3, 32, generator=gen)
    once = torch.ops.paired.row_ffn(x, concat, down, torch.tensor([7]), True)
    twice = torch.ops.paired.row_ffn(x, concat, down, torch.tensor([7, 7]), True)
    assert torch.equal(twice, 2 * once)  # a*d + a*d == 2*(a*d) exactly in float


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_empty_shapes(dtype):
    gen = torch.Generator().manual_seed(5)
    concat, down = make_rows(10, 8, True, dtype, gen)
    y = torch.ops.paired.row_ffn(torch.zeros(0, 8, dtype=dtype), concat, down, None, True)
    assert y.shape == (0, 8) and y.dtype == dtype
    none = torch.ops.paired.row_ffn(torch.ones(2, 8, dtype=dtype), concat[:0], down[:0], None, True)
    assert torch.equal(none, torch.zeros(2, 8, dtype=dtype))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_16_bit_value_converts_exactly(dtype):
    # The kernel converts float16 / bfloat16 by their bits (branch-free, vectorizable). One row
    # whose activation is exactly 1 (x = up = e_0, no gate) and whose down row holds all 65536 bit
    # patterns gives y = float(down) rounded back to the dtype: the patterns themselves, except
    # that -0 becomes +0 (the accumulator starts at +0) and NaNs stay NaN (payload aside).
    h = 1 << 16
    down = torch.arange(-(1 << 15), 1 << 15, dtype=torch.int32).to(torch.int16).view(dtype)[None]
    e0 = torch.zeros(1, h, dtype=dtype)
    e0[0, 0] = 1
    y = torch.ops.paired.row_ffn(e0, e0, down, None, False)
    nan = down.isnan()
    assert torch.equal(y.isnan(), nan)
    want = torch.where(down == 0, torch.zeros_like(down), down)
    assert torch.equal(y[~nan].view(torch.int16), want[~nan].view(torch.int16))
    assert torch.equal(y[~nan].double(), down[~nan].double())  # same values as torch's conversion


# --------------------------------------------------------------------------------------------
# On a WeightCache's rows: pools + active_indices == the FFN of the packed block
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("threads", [1, 2], indirect=True)
@pytest.mark.parametrize("has_gate", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_rows_give_the_packed_ffn(dtype, has_gate, threads):
    # H = 150: the pools' rows are padded (float32 gate|up 1200 B -> 1216 B, down 600 B -> 640 B).
    n, h = 700, 150
    gen = torch.Generator().manual_seed(11)
    gate = (torch.randn(n, h, generator=gen) / h**0.5).to(dtype)
    up = (torch.randn(n, h, generator=gen) / h**0.5).to(dtype)
    down = (torch.randn(h, n, generator=gen) / h**0.5).to(dtype)
    mask = torch.rand(n, generator=gen) < 0.4
    cache = WeightCache(mask, h, gate if has_gate else None, up, down, hybrid_tau_frac=1.0)
    for _ in range(3):  # paired updates: the slots are no longer in row order
        cache.update_active_weights(cache.mask ^ (torch.rand(n, generator=gen) < 0.1))
    assert cache.last_update_stats().path == "paired"
    idx = cache.active_indices()
    assert idx.tolist() != sorted(idx.tolist())
    pool_c, pool_d = cache.pool_concat_weight(), cache.pool_down_weight_t()
    if dtype == torch.float32:
        assert pool_c.stride(0) > pool_c.shape[1] and pool_d.stride(0) > pool_d.shape[1]

    x = torch.randn(4, h, generator=gen).to(dtype)
    packed_c, packed_d = cache.get_concat_weight(), cache.get_active_down_weight()  # [m, .], [H, m]
    xd, w = x.double(), packed_c.double()
    if has_gate:
        g, u = xd @ w[:, :h].T, xd @ w[:, h:].T
        act = g / (1.0 + torch.exp(-g)) * u
    else:
        act = torch.clamp_min(xd @ w.T, 0.0)
    packed_ffn = act @ packed_d.double().T

    from_pools = torch.ops.paired.row_ffn(x, pool_c, pool_d, idx, has_gate)
    assert_close(from_pools, packed_ffn, dtype)
    # and from the packed block itself (rows None: the m slots in order)
    from_block = torch.ops.paired.row_ffn(x, packed_c, packed_d.t(), None, has_gate)
    assert_close(from_block, packed_ffn, dtype)
    cache.check_invariants()  # row_ffn only read the pools


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

R, H = 100, 8


def _good():
    gen = torch.Generator().manual_seed(0)
    return dict(x=torch.randn(2, H, generator=gen), concat=torch.randn(R, 2 * H, generator=gen),
                down=torch.randn(R, H, generator=gen), rows=torch.tensor([1, 5, 99]), has_gate=True)


def _with(**changes):
    def make():
        args = _good()
        for key, change in changes.items():
            args[key] = change(args) if callable(change) else change
        return args
    return make


BAD = {
    # dtypes: TypeError
    "x_int": (_with(x=lambda a: a["x"].int()), TypeError, r"x must be float32, float16 or bfloat16"),
    "x_float64": (_with(x=lambda a: a["x"].double()), TypeError, r"x must be float32, float16 or bfloat16"),
    "x_bool": (_with(x=lambda a: a["x"] > 0), TypeError, r"x must be float32"),
    "concat_dtype": (_with(concat=lambda a: a["concat"].half()), TypeError,
                     r"concat_rows must have dtype .* like x"),
    "down_dtype": (_with(down=lambda a: a["down"].bfloat16()), TypeError,
                   r"down_rows must have dtype .* like x"),
    "x_half_rows_float": (_with(x=lambda a: a["x"].half()), TypeError,
                          r"concat_rows must have dtype .* like x"),
    "rows_int32": (_with(rows=lambda a: a["rows"].int()), TypeError, r"rows must have dtype torch.int64"),
    "rows_float": (_with(rows=lambda a: a["rows"].float()), TypeError, r"rows must have dtype torch.int64"),
    # shapes and layouts: ValueError
    "x_1d": (_with(x=lambda a: a["x"][0]), ValueError, r"x must be 2-D"),
    "x_3d": (_with(x=lambda a: a["x"][None]), ValueError, r"x must be 2-D"),
    "x_not_contiguous": (_with(x=lambda a: torch.randn(H, 2).t()), ValueError, r"x must be contiguous"),
    "concat_1d": (_with(concat=lambda a: a["concat"][0]), ValueError, r"concat_rows must be 2-D"),
    "concat_gate_cols": (_with(concat=lambda a: a["concat"][:, :H]), ValueError,
                         r"concat_rows must have 16 columns"),
    "concat_nogate_cols": (_with(has_gate=False), ValueError, r"concat_rows must have 8 columns"),
    "concat_col_stride": (_with(concat=lambda a: torch.randn(R, 4 * H)[:, ::2]), ValueError,
                          r"concat_rows must have contiguous rows \(stride\(1\) == 1\)"),
    "concat_transposed": (_with(concat=lambda a: torch.randn(2 * H, R).t()), ValueError,
                          r"concat_rows must have contiguous rows"),
    "down_1d": (_with(down=lambda a: a["down"][0]), ValueError, r"down_rows must be 2-D"),
    "down_cols": (_with(down=lambda a: torch.randn(R, H + 1)), ValueError, r"down_rows must have 8 columns"),
    "down_rows_count": (_with(down=lambda a: a["down"][:-1]), ValueError,
                        r"down_rows must have R = 100 rows like concat_rows"),
    "down_col_stride": (_with(down=lambda a: torch.randn(R, 2 * H)[:, ::2]), ValueError,
                        r"down_rows must have contiguous rows"),
    "rows_2d": (_with(rows=lambda a: a["rows"][None]), ValueError, r"rows must be 1-D"),
    "rows_not_contiguous": (_with(rows=lambda a: torch.arange(10)[::2]), ValueError, r"rows must be contiguous"),
    # ids: IndexError naming the position and the value
    "rows_too_big": (_with(rows=torch.tensor([0, 3, 100])), IndexError,
                     r"rows\[2\] = 100 is out of range \[0, 100\)"),
    "rows_negative": (_with(rows=torch.tensor([-1, 3])), IndexError,
                      r"rows\[0\] = -1 is out of range \[0, 100\)"),
    "rows_huge": (_with(rows=torch.tensor([5, 2**62])), IndexError, rf"rows\[1\] = {2**62} is out of range"),
    "rows_given_no_rows_exist": (_with(concat=lambda a: a["concat"][:0], down=lambda a: a["down"][:0]),
                                 IndexError, r"rows\[0\] = 1 is out of range \[0, 0\)"),
}


def _call(args):
    return torch.ops.paired.row_ffn(args["x"], args["concat"], args["down"], args["rows"], args["has_gate"])


def test_good_arguments_are_accepted():
    assert _call(_good()).shape == (2, H)


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_the_argument(case):
    make, exc, match = BAD[case]
    with pytest.raises(exc, match=match):
        _call(make())


# The op is registered for the CPU dispatch key (like copy_rows), so a tensor on another device or
# with another layout never reaches the kernel's own checks (check_cpu / check_strided, kept as a
# second line of defence): the dispatcher refuses it first, with NotImplementedError naming the
# backend.
WRONG_BACKEND = {
    "x_meta": (_with(x=lambda a: a["x"].to("meta")), r"Meta"),
    "concat_meta": (_with(concat=lambda a: a["concat"].to("meta")), r"Meta"),
    "concat_sparse": (_with(concat=lambda a: a["concat"].to_sparse()), r"SparseCPU"),
    "down_sparse_csr": (_with(down=lambda a: a["down"].to_sparse_csr()), r"SparseCsrCPU"),
}


@pytest.mark.parametrize("case", sorted(WRONG_BACKEND))
def test_other_devices_and_layouts_are_refused_by_the_dispatcher(case):
    make, match = WRONG_BACKEND[case]
    with pytest.raises(NotImplementedError, match=match):
        _call(make())
