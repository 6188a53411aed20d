"""torch.ops.paired.copy_rows: the benchmarks' row-copy floor, against plain torch indexing.

``copy_rows(Tensor(a!) dst, Tensor dst_rows, Tensor src, Tensor src_rows, bool streaming=False,
bool parallel=False) -> ()`` (csrc/binding/weight_cache_torch.cpp) does
``dst[dst_rows[i]] = src[src_rows[i]]`` for every i, one row copy at a time: memcpy, or with
``streaming`` the core's non-temporal copy where a row is a whole number of 64-byte lines at
64-byte aligned addresses (memcpy otherwise); ``parallel`` splits the rows over ATen's pool.

* Correctness: streaming x parallel x float32 / float16 / bfloat16 / float64 (the op has no dtype
  check: it copies element_size() * columns bytes) x shapes: one column, exactly one cache line,
  several lines (the streaming path), rows wider than a line that are not a whole number of lines,
  padded row strides (aligned and not) of dst, src or both, empty index lists, all rows.
  Expected: ``dst[dst_rows] = src[src_rows]`` with plain torch; every other row of dst, and the
  padding columns of a padded dst, stay as they were; src is not written.
* Bad input: every TORCH_CHECK of the op raises its exception type (TypeError / ValueError /
  IndexError) with a message naming the argument, and dst is unchanged after the refused call
  (all checks run before the first copy). Tensors on another device or with another layout are
  refused by the dispatcher (the op is registered for the CPU key only), so the kernel's own
  check_cpu / check_strided are a second line of defence that Python cannot reach.
* torch.library.opcheck on the op (see test_opcheck for what its fake-tensor tests exercise).

Run: ``.venv/bin/python -m pytest tests/test_copy_rows.py -q``.
"""

from __future__ import annotations

import pytest
import torch

from paired_replacement import load_extension

load_extension()

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
LINE = 64  # bytes in a cache line; the streaming path needs whole, 64-byte aligned lines


def copy_rows(dst, dst_rows, src, src_rows, streaming=False, parallel=False):
    """The op under test (one place to point at another implementation)."""
    return torch.ops.paired.copy_rows(dst, dst_rows, src, src_rows, streaming, parallel)


def _matrix(rows, cols, ld, dtype, gen):
    """A [rows, cols] tensor of distinct random values with leading dimension ``ld`` (>= cols):
    a column slice of a [rows, ld] base when padded. Returns (tensor, base)."""
    base = torch.randn(rows, ld, generator=gen, dtype=torch.float64).to(dtype)
    return base[:, :cols], base


# name: (columns in bytes, dst leading dimension in bytes or None, src leading dimension or None).
# Byte sizes are divided by the element size; every size below divides by 8 (float64).
SHAPES = {
    "one_column": (None, None, None),  # 1 column, whatever the dtype
    "one_line": (LINE, None, None),  # exactly one 64-byte line: streaming-eligible
    "three_lines": (3 * LINE, None, None),  # wider than a line, whole lines: streaming
    "wider_than_a_line_ragged": (200, None, None),  # 3 lines + 8 bytes: memcpy even if streaming
    "padded_dst_aligned": (2 * LINE, 4 * LINE, None),  # row stride a multiple of 64 bytes
    "padded_src_aligned": (2 * LINE, None, 3 * LINE),
    "padded_both_unaligned": (2 * LINE, 2 * LINE + 24, 2 * LINE + 40),  # rows off the lines
    "padded_ragged": (104, 160, 136),
}
STREAMING_ELIGIBLE = ("one_line", "three_lines", "padded_dst_aligned", "padded_src_aligned")


def _cols(nbytes, dtype):
    es = torch.empty((), dtype=dtype).element_size()
    return 1 if nbytes is None else nbytes // es


def _case(shape, dtype, k, seed):
    """dst [40, cols] (maybe padded), src [50, cols] (maybe padded), k distinct dst slots and k
    src rows (with repeats: a source row may be copied to several slots)."""
    gen = torch.Generator().manual_seed(seed)
    col_b, dst_ld_b, src_ld_b = SHAPES[shape]
    cols = _cols(col_b, dtype)
    dst_ld = cols if dst_ld_b is None else _cols(dst_ld_b, dtype)
    src_ld = cols if src_ld_b is None else _cols(src_ld_b, dtype)
    dst, dst_base = _matrix(40, cols, dst_ld, dtype, gen)
    src, src_base = _matrix(50, cols, src_ld, dtype, gen)
    slots = torch.randperm(40, generator=gen)[:k]
    rows = torch.randint(0, 50, (k,), generator=gen)
    return dst, dst_base, src, src_base, slots, rows


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("streaming", [False, True], ids=["memcpy", "streaming"])
@pytest.mark.parametrize("k", [0, 17, 40], ids=["empty", "some", "all"])
def test_matches_plain_torch_indexing(k, streaming, parallel, dtype, shape):
    dst, dst_base, src, src_base, slots, rows = _case(shape, dtype, k, seed=k * 7 + len(shape))
    es = dst.element_size()
    if shape == "one_column":
        assert dst.stride() == (1, 1)
    elif shape.startswith("padded"):
        assert (dst.stride(0) != dst.size(1)) or (src.stride(0) != src.size(1))
    if shape in STREAMING_ELIGIBLE:  # every row a whole number of lines at a line boundary
        assert dst.size(1) * es % LINE == 0
        for t in (dst, src):
            assert t.data_ptr() % LINE == 0 and t.stride(0) * es % LINE == 0
    expected_base = dst_base.clone()
    expected_base[:, : dst.size(1)][slots] = src[rows]  # plain torch; leaves the padding alone
    src_before = src_base.clone()

    assert copy_rows(dst, slots, src, rows, streaming, parallel) is None

    # The named rows hold their source rows, every other row and the padding are untouched
    # (compared on the whole base buffer, bit for bit), and src was only read.
    assert torch.equal(dst_base, expected_base)
    assert torch.equal(dst[slots], src[rows])
    assert torch.equal(src_base, src_before)


def test_defaults_and_keywords():
    """streaming and parallel default to False and may be passed by name."""
    gen = torch.Generator().manual_seed(0)
    src = torch.randn(8, 16, generator=gen)
    slots, rows = torch.tensor([3, 0]), torch.tensor([7, 7])
    for kwargs in ({}, {"streaming": True}, {"parallel": True},
                   {"parallel": True, "streaming": True}):
        dst = torch.zeros(5, 16)
        torch.ops.paired.copy_rows(dst, slots, src, rows, **kwargs)
        expected = torch.zeros(5, 16)
        expected[slots] = src[rows]
        assert torch.equal(dst, expected), kwargs


def test_many_rows_over_threads():
    """Enough rows that at::parallel_for hands them to several threads (grain 1), streaming and not;
    the result does not depend on the thread count."""
    gen = torch.Generator().manual_seed(1)
    src = torch.randn(3000, 96, generator=gen)
    slots = torch.randperm(2500, generator=gen)[:2000]
    rows = torch.randint(0, 3000, (2000,), generator=gen)
    expected = torch.zeros(2500, 96)
    expected[slots] = src[rows]
    old = torch.get_num_threads()
    try:
        for threads in sorted({1, 2, max(2, old)}):
            torch.set_num_threads(threads)
            for streaming in (False, True):
                dst = torch.zeros(2500, 96)
                copy_rows(dst, slots, src, rows, streaming, True)
                assert torch.equal(dst, expected), (threads, streaming)
    finally:
        torch.set_num_threads(old)


# ---------------------------------------------------------------------------------------------
# Bad input: exception type, a message naming what is wrong, dst unchanged
# ---------------------------------------------------------------------------------------------
def _good():
    gen = torch.Generator().manual_seed(2)
    return {"dst": torch.randn(6, 16, generator=gen), "dst_rows": torch.tensor([0, 2, 5]),
            "src": torch.randn(9, 16, generator=gen), "src_rows": torch.tensor([8, 1, 1])}


def _with(**changes):
    def make():
        args = _good()
        for name, change in changes.items():
            args[name] = change(args) if callable(change) else change
        return args
    return make


def _wide(rows, cols):
    """[rows, cols] float32 with stride(1) == 2 (every other column of a wider tensor)."""
    return torch.randn(rows, 2 * cols)[:, ::2]


# case: (arguments, exception type, message pattern). One case per TORCH_CHECK of the op, in the
# order the op checks (check_index_list on both lists, then dst/src, lengths, ranges).
BAD = {
    "dst_rows_int32": (_with(dst_rows=torch.tensor([0, 2, 5], dtype=torch.int32)), TypeError,
                       r"dst_rows must have dtype torch\.int64, got Int"),
    "dst_rows_float": (_with(dst_rows=torch.tensor([0.0, 2.0, 5.0])), TypeError,
                       r"dst_rows must have dtype torch\.int64, got Float"),
    "src_rows_bool": (_with(src_rows=torch.tensor([True, False, True])), TypeError,
                      r"src_rows must have dtype torch\.int64, got Bool"),
    "dst_rows_2d": (_with(dst_rows=torch.tensor([[0, 2, 5]])), ValueError,
                    r"dst_rows must be 1-D, got shape \[1, 3\]"),
    "src_rows_0d": (_with(src_rows=torch.tensor(8)), ValueError,
                    r"src_rows must be 1-D, got shape \[\]"),
    "dst_rows_strided": (_with(dst_rows=torch.tensor([0, 9, 2, 9, 5, 9])[::2]), ValueError,
                         r"dst_rows must be contiguous"),
    "src_rows_strided": (_with(src_rows=torch.tensor([8, 0, 1, 0, 1, 0])[::2]), ValueError,
                         r"src_rows must be contiguous"),
    "dst_1d": (_with(dst=torch.zeros(16)), ValueError, r"dst must be 2-D, got 1-D"),
    "src_3d": (_with(src=torch.zeros(9, 16, 1)), ValueError, r"src must be 2-D, got 3-D"),
    "columns_differ": (_with(src=torch.zeros(9, 15)), ValueError,
                       r"same number of columns \(dst \[\d+, 16\], src \[9, 15\]\)"),
    "dtypes_differ": (_with(src=lambda a: a["src"].double()), TypeError,
                      r"dst and src must share a dtype \(dst Float, src Double\)"),
    "dtypes_differ_same_size": (_with(src=lambda a: a["src"].to(torch.int32)), TypeError,
                                r"dst and src must share a dtype"),
    "dst_column_stride": (_with(dst=lambda a: _wide(6, 16)), ValueError,
                          r"dst rows must be contiguous \(column stride 2\)"),
    "src_transposed": (_with(src=lambda a: torch.randn(16, 9).T), ValueError,
                       r"src rows must be contiguous \(column stride 9\)"),
    "lengths_differ": (_with(src_rows=torch.tensor([8, 1])), ValueError,
                       r"dst_rows and src_rows differ in length \(3 and 2\)"),
    "dst_rows_past_the_end": (_with(dst_rows=torch.tensor([0, 2, 6])), IndexError,
                              r"dst_rows\[2\] = 6 out of range \[0, 6\)"),
    "dst_rows_negative": (_with(dst_rows=torch.tensor([0, 2, -1])), IndexError,
                          r"dst_rows\[2\] = -1 out of range"),
    "src_rows_past_the_end": (_with(src_rows=torch.tensor([8, 1, 9])), IndexError,
                              r"src_rows\[2\] = 9 out of range \[0, 9\)"),
    "src_rows_negative": (_with(src_rows=torch.tensor([8, 1, -9])), IndexError,
                          r"src_rows\[2\] = -9 out of range"),
    "src_rows_huge": (_with(src_rows=torch.tensor([8, 1, 2**62])), IndexError,
                      r"src_rows\[2\] = 4611686018427387904 out of range"),
    # Only the last index is bad: a kernel that checked while copying would already have
    # written rows 0 and 1 (dst unchanged is checked below).
    "dst_rows_bad_last_of_many": (_with(dst_rows=torch.tensor([1, 3, 40]),
                                        src_rows=torch.tensor([0, 4, 2])), IndexError,
                                  r"dst_rows\[2\] = 40 out of range \[0, 6\)"),
}


def test_good_arguments_are_accepted():
    args = _good()
    copy_rows(args["dst"], args["dst_rows"], args["src"], args["src_rows"])
    assert torch.equal(args["dst"][args["dst_rows"]], args["src"][args["src_rows"]])


@pytest.mark.parametrize("parallel", [False, True], ids=["serial", "parallel"])
@pytest.mark.parametrize("streaming", [False, True], ids=["memcpy", "streaming"])
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_refused_and_dst_unchanged(case, streaming, parallel):
    make, exc, match = BAD[case]
    args = make()
    dst_before = args["dst"].clone()
    src_before = args["src"].clone()
    with pytest.raises(exc, match=match):
        copy_rows(args["dst"], args["dst_rows"], args["src"], args["src_rows"], streaming, parallel)
    assert torch.equal(args["dst"], dst_before)
    assert torch.equal(args["src"], src_before)


# The op is registered for the CPU dispatch key only, so a tensor on another device or with
# another layout never reaches the kernel's check_cpu / check_strided: the dispatcher refuses it
# first, with NotImplementedError naming the backend (as for row_ffn, tests/test_row_ffn.py).
WRONG_BACKEND = {
    "dst_meta": (_with(dst=lambda a: a["dst"].to("meta")), r"Meta"),
    "src_meta": (_with(src=lambda a: a["src"].to("meta")), r"Meta"),
    "src_sparse": (_with(src=lambda a: a["src"].to_sparse()), r"SparseCPU"),
    "src_rows_sparse": (_with(src_rows=lambda a: a["src_rows"].to_sparse()), r"SparseCPU"),
}


@pytest.mark.parametrize("case", sorted(WRONG_BACKEND))
def test_other_devices_and_layouts_are_refused_by_the_dispatcher(case):
    make, match = WRONG_BACKEND[case]
    args = make()
    dst_before = args["dst"].clone()
    with pytest.raises(NotImplementedError, match=match):
        copy_rows(args["dst"], args["dst_rows"], args["src"], args["src_rows"])
    if args["dst"].device.type == "cpu":
        assert torch.equal(args["dst"], dst_before)


# ---------------------------------------------------------------------------------------------
# torch.library.opcheck
# ---------------------------------------------------------------------------------------------
def _opcheck_args(streaming, parallel, dtype, k, padded):
    gen = torch.Generator().manual_seed(3)
    ld = 48 if padded else 32
    dst = torch.randn(10, ld, generator=gen).to(dtype)[:, :32]
    src = torch.randn(12, 32, generator=gen).to(dtype)
    slots = torch.randperm(10, generator=gen)[:k]
    rows = torch.randint(0, 12, (k,), generator=gen)
    return (dst, slots, src, rows, streaming, parallel)


@pytest.mark.parametrize("streaming,parallel,dtype,padded", [
    (False, False, torch.float32, False),
    (True, True, torch.float32, False),
    (True, False, torch.bfloat16, True),
    (False, True, torch.float64, True),
], ids=["memcpy_f32", "streaming_parallel_f32", "streaming_bf16_padded", "parallel_f64_padded"])
def test_opcheck(streaming, parallel, dtype, padded):
    """All four of opcheck's default tests pass on torch 2.13:

    * test_schema: only dst, declared ``Tensor(a!)``, is written; dst_rows, src and src_rows are
      read only (a mutation of them, or a schema without the ``!``, fails this test).
    * test_autograd_registration: no input requires grad, so nothing to register.
    * test_faketensor / test_aot_dispatch_dynamic: the op has no fake (Meta) kernel of its own
      (``_dispatch_has_kernel_for_dispatch_key(..., "Meta")`` is False), but it mutates an input
      and returns nothing, so torch generates the trivial fake impl for it
      (torch._library.utils.can_generate_trivial_fake_impl). Under FakeTensorMode / torch.compile
      the op's input checks therefore do not run at trace time, only when the real kernel runs.
    """
    op = torch.ops.paired.copy_rows.default
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), "Meta")
    assert torch._library.utils.can_generate_trivial_fake_impl(op)
    args = _opcheck_args(streaming, parallel, dtype, k=6, padded=padded)
    result = torch.library.opcheck(op, args, raise_exception=False)
    assert result == {name: "SUCCESS" for name in ("test_schema", "test_autograd_registration",
                                                   "test_faketensor",
                                                   "test_aot_dispatch_dynamic")}, result


def test_opcheck_schema_with_empty_index_lists():
    """With empty index lists nothing is written; the schema test still holds (declaring dst
    mutable does not require every call to write it)."""
    op = torch.ops.paired.copy_rows.default
    args = _opcheck_args(False, False, torch.float32, k=0, padded=False)
    torch.library.opcheck(op, args, test_utils=("test_schema",))
