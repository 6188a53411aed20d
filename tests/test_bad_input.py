"""Bad input: a Python exception naming the argument, and the cache left exactly as it was.

After every rejected call the test checks that mask, active_indices, position_map,
last_update_stats, num_active, the settings and the contents of both views are unchanged, and then
that a valid update still produces the right block (against torch ops on the original weights).

Run: ``.venv/bin/python -m pytest tests/test_bad_input.py -q``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from paired_replacement import WeightCache, load_extension

load_extension()

N, H = 130, 6  # N crosses two 64-bit mask words
G = U = H  # gate and up are [N, hidden_size]


class Ctx:
    """A cache in a non-trivial state (unsorted slots after paired updates) plus its originals."""

    def __init__(self, dtype=torch.float32):
        gen = torch.Generator().manual_seed(1234)
        self.gate = torch.randn(N, G, generator=gen).to(dtype)
        self.up = torch.randn(N, U, generator=gen).to(dtype)
        self.down = torch.randn(H, N, generator=gen).to(dtype)
        self.full = torch.cat([self.gate, self.up], 1)
        self.rng = np.random.default_rng(99)
        mask = torch.from_numpy(self.rng.random(N) < 0.5)
        self.cache = WeightCache(mask, H, self.gate, self.up, self.down, hybrid_tau_frac=1.0)
        self.cache.update_from_indices(self.inactive()[:5][::-1].copy(), self.active()[:3])
        self.cache.update_active_weights(self.cache.mask ^ torch.from_numpy(self.rng.random(N) < 0.1))
        assert self.cache.last_update_stats().path == "paired"
        assert self.cache.active_indices().tolist() != sorted(self.cache.active_indices().tolist())
        self.check_content()

    def active(self) -> np.ndarray:
        return np.flatnonzero(self.cache.mask.numpy())

    def inactive(self) -> np.ndarray:
        return np.flatnonzero(~self.cache.mask.numpy())

    def check_content(self):
        idx = self.cache.active_indices()
        assert set(idx.tolist()) == set(self.active().tolist())
        assert torch.equal(self.cache.get_concat_weight(), self.full.index_select(0, idx))
        assert torch.equal(self.cache.get_active_down_weight(), self.down.index_select(1, idx))
        self.cache.check_invariants()

    def state(self):
        c = self.cache
        return dict(
            mask=c.mask, active=c.active_indices(), pos=c.position_map(), stats=c.last_update_stats(),
            m=c.num_active, concat=c.get_concat_weight(copy=True), down=c.get_active_down_weight(copy=True),
            settings=(c.grain, c.par_threshold, c.hybrid_tau_frac),
            seed_stats=tuple(c.torch_object.last_update_stats()),
        )

    def assert_unchanged(self, before, live_views):
        after = self.state()
        assert after.keys() == before.keys()
        for k in before:
            if isinstance(before[k], torch.Tensor):
                assert before[k].dtype == after[k].dtype and torch.equal(before[k], after[k]), k
            else:
                assert before[k] == after[k], k
        # views taken before the call still show the same (live, unchanged) block
        assert torch.equal(live_views[0], before["concat"])
        assert torch.equal(live_views[1], before["down"])
        self.cache.check_invariants()

    def valid_updates_still_work(self):
        """A mask update and an index update that reuse the rows the bad calls mentioned."""
        c = self.cache
        new = c.mask.numpy() ^ (self.rng.random(N) < 0.2)
        c.update_active_weights(torch.from_numpy(new))
        assert torch.equal(c.mask, torch.from_numpy(new))
        self.check_content()
        added, removed = self.inactive()[:3], self.active()[:3]
        expect = c.mask.clone()
        expect[torch.from_numpy(added)] = True
        expect[torch.from_numpy(removed)] = False
        c.update_from_indices(added.tolist(), torch.from_numpy(removed))
        assert torch.equal(c.mask, expect)
        s = c.last_update_stats()
        assert (s.added, s.removed) == (3, 3) and s.path == "paired"
        self.check_content()


@pytest.fixture
def ctx():
    return Ctx()


def rejected(ctx, call, exc, match):
    """Run a call that must raise `exc` matching `match`; then check nothing changed."""
    before = ctx.state()
    views = (ctx.cache.get_concat_weight(), ctx.cache.get_active_down_weight())
    with pytest.raises(exc, match=match):
        call()
    ctx.assert_unchanged(before, views)
    ctx.valid_updates_still_work()


# --------------------------------------------------------------------------------------------
# update_active_weights: bad masks
# --------------------------------------------------------------------------------------------

BAD_MASKS = {
    "short": (lambda: torch.zeros(N - 1, dtype=torch.bool), ValueError, r"mask must have N = 130"),
    "long": (lambda: torch.ones(N + 1, dtype=torch.bool), ValueError, r"mask must have N = 130"),
    "empty": (lambda: torch.zeros(0, dtype=torch.bool), ValueError, r"mask"),
    "float": (lambda: torch.ones(N), TypeError, r"mask must have dtype torch.bool"),
    "uint8": (lambda: torch.ones(N, dtype=torch.uint8), TypeError, r"mask must have dtype torch.bool"),
    "int64": (lambda: torch.ones(N, dtype=torch.int64), TypeError, r"mask must have dtype torch.bool"),
    "2d_row": (lambda: torch.ones(1, N, dtype=torch.bool), ValueError, r"mask must be 1-D"),
    "2d_col": (lambda: torch.ones(N, 1, dtype=torch.bool), ValueError, r"mask must be 1-D"),
    "0d": (lambda: torch.tensor(True), ValueError, r"mask must be 1-D"),
    "meta": (lambda: torch.ones(N, dtype=torch.bool, device="meta"), ValueError, r"mask must be on the CPU"),
    "sparse": (lambda: torch.ones(N, dtype=torch.bool).to_sparse(), ValueError,
               r"mask must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    "float_empty": (lambda: torch.zeros(0), TypeError, r"mask must have dtype torch.bool"),
}
BAD_NUMPY_MASKS = {
    "np_int": (lambda: np.ones(N, dtype=np.int64), TypeError, r"mask must be a bool array"),
    "np_uint8": (lambda: np.ones(N, dtype=np.uint8), TypeError, r"mask must be a bool array"),
    "np_float": (lambda: np.ones(N, dtype=np.float32), TypeError, r"mask must be a bool array"),
    "np_bool_short": (lambda: np.ones(N - 1, dtype=np.bool_), ValueError, r"mask must have N = 130"),
    "list": (lambda: [True] * N, TypeError, r"mask must be a torch.Tensor or numpy.ndarray"),
    "np_float_empty": (lambda: np.zeros(0), TypeError, r"mask must be a bool array"),
}


@pytest.mark.parametrize("case", list(BAD_MASKS) + list(BAD_NUMPY_MASKS))
def test_bad_mask_update(ctx, case):
    make, exc, match = {**BAD_MASKS, **BAD_NUMPY_MASKS}[case]
    rejected(ctx, lambda: ctx.cache.update_active_weights(make()), exc, match)


@pytest.mark.parametrize("case", list(BAD_MASKS))
def test_bad_mask_update_seed_api(ctx, case):
    make, exc, match = BAD_MASKS[case]
    rejected(ctx, lambda: ctx.cache.torch_object.update_active_weights(make()), exc, match)


# --------------------------------------------------------------------------------------------
# update_from_indices
# --------------------------------------------------------------------------------------------


def _index_cases():
    """name -> (fn(ctx) -> (added, removed), exception, regex)."""
    A = lambda c, k=0: int(c.active()[k])  # noqa: E731  an active row
    I = lambda c, k=0: int(c.inactive()[k])  # noqa: E731,E741  an inactive row
    return {
        "added_out_of_range": (lambda c: ([N], []), IndexError, r"added\[0\] = 130 is out of range"),
        "added_far_out_of_range": (lambda c: (torch.tensor([2**40]), []), IndexError, r"added\[0\]"),
        "removed_out_of_range": (lambda c: ([], [N + 5]), IndexError, r"removed\[0\] = 135 is out of range"),
        "added_negative": (lambda c: ([-1], []), IndexError, r"added\[0\] = -1"),
        "removed_negative": (lambda c: ([], np.array([-3])), IndexError, r"removed\[0\] = -3"),
        "added_duplicate": (lambda c: ([I(c), I(c, 1), I(c)], []), ValueError, r"added\[2\] .*duplicate"),
        "removed_duplicate": (lambda c: ([], [A(c), A(c)]), ValueError, r"removed\[1\] .*duplicate"),
        "added_already_active": (lambda c: ([A(c)], []), ValueError, r"added\[0\] .*already active"),
        "removed_not_active": (lambda c: ([], [I(c)]), ValueError, r"removed\[0\] .*not active"),
        "same_active_id_in_both": (lambda c: ([A(c)], [A(c)]), ValueError, r"added\[0\] .*already active"),
        "same_inactive_id_in_both": (lambda c: ([I(c)], [I(c)]), ValueError, r"removed\[0\] .*not active"),
        "float_tensor": (lambda c: (torch.tensor([1.0]), []), TypeError, r"added must hold integer"),
        "float_tensor_removed": (lambda c: ([], torch.tensor([float(A(c))])), TypeError, r"removed must hold integer"),
        "bool_tensor": (lambda c: (torch.tensor([True, False]), []), TypeError, r"added must hold integer"),
        "bool_list": (lambda c: ([], [True]), TypeError, r"removed must hold integer"),
        "2d_tensor": (lambda c: (torch.tensor([[I(c)]]), []), ValueError, r"added must be 1-D"),
        "2d_numpy_removed": (lambda c: ([], np.array([[A(c)], [A(c, 1)]])), ValueError, r"removed must be 1-D"),
        "0d_tensor": (lambda c: (torch.tensor(I(c)), []), ValueError, r"added must be 1-D"),
        "float_list": (lambda c: ([1.0, 2.0], []), TypeError, r"added must hold integer"),
        "float_numpy": (lambda c: (np.array([1.5]), []), TypeError, r"added must hold integer"),
        "complex_tensor": (lambda c: (torch.tensor([1 + 0j]), []), TypeError, r"added must hold integer"),
        "meta_tensor": (lambda c: (torch.tensor([I(c)], device="meta"), []), ValueError, r"added must be on the CPU"),
        # failures in the middle of a list, after valid ids (and with a valid other list)
        "mid_out_of_range": (lambda c: ([I(c), I(c, 1), N], [A(c)]), IndexError, r"added\[2\] = 130"),
        "mid_negative_int32": (lambda c: (torch.tensor([I(c), -1], dtype=torch.int32), []), IndexError,
                               r"added\[1\] = -1"),
        "mid_duplicate": (lambda c: (np.array([I(c), I(c, 1), I(c, 2), I(c, 1)]), []), ValueError,
                          r"added\[3\] .*duplicate"),
        "mid_already_active": (lambda c: ([I(c), I(c, 1), A(c)], [A(c, 1)]), ValueError,
                               r"added\[2\] .*already active"),
        "removed_fails_after_valid_added": (lambda c: ([I(c), I(c, 1)], [A(c), A(c, 1), I(c, 2)]),
                                            ValueError, r"removed\[2\] .*not active"),
        "removed_dup_after_valid_added": (lambda c: ([I(c), I(c, 1)], [A(c), A(c, 1), A(c)]),
                                          ValueError, r"removed\[2\] .*duplicate"),
        "removed_oob_after_valid_added": (lambda c: ([I(c)], torch.tensor([A(c), N])), IndexError,
                                          r"removed\[1\] = 130"),
        # ids that do not fit int64 keep their real value in the message (no wrap to negative)
        "uint64_numpy_2_63": (lambda c: (np.array([2**63], dtype=np.uint64), []), IndexError,
                              r"added\[0\] = 9223372036854775808 is out of range \[0, 130\)"),
        "uint64_tensor_max": (lambda c: (torch.tensor([I(c), 2**64 - 1], dtype=torch.uint64), []),
                              IndexError, r"added\[1\] = 18446744073709551615 is out of range"),
        "python_int_beyond_64_bits": (lambda c: ([], [A(c), 2**70]), IndexError,
                                      r"removed\[1\] = 1180591620717411303424 is out of range"),
        # an empty float array is refused like a non-empty one, from NumPy and torch alike
        "empty_float_numpy": (lambda c: (np.zeros(0, dtype=np.float32), []), TypeError,
                              r"added must hold integer row ids, got dtype float32"),
        "empty_float_tensor": (lambda c: ([], torch.zeros(0, dtype=torch.float64)), TypeError,
                               r"removed must hold integer row ids, got dtype torch.float64"),
        "sparse_int64_tensor": (lambda c: (torch.tensor([I(c)]).to_sparse(), []), ValueError,
                                r"added must be a dense \(strided\) tensor"),
        "sparse_int32_tensor": (lambda c: ([], torch.tensor([A(c)], dtype=torch.int32).to_sparse()),
                                ValueError, r"removed must be a dense \(strided\) tensor"),
    }


INDEX_CASES = _index_cases()


@pytest.mark.parametrize("case", list(INDEX_CASES))
def test_bad_indices(ctx, case):
    make, exc, match = INDEX_CASES[case]
    added, removed = make(ctx)
    rejected(ctx, lambda: ctx.cache.update_from_indices(added, removed), exc, match)


SEED_INDEX_CASES = {
    "int32": (lambda c: (torch.tensor([int(c.inactive()[0])], dtype=torch.int32), torch.zeros(0, dtype=torch.long)),
              TypeError, r"added must have dtype torch.int64"),
    "float": (lambda c: (torch.zeros(0, dtype=torch.long), torch.tensor([1.0])),
              TypeError, r"removed must have dtype torch.int64"),
    "non_contiguous": (lambda c: (torch.from_numpy(c.inactive()[:4].copy())[::2], torch.zeros(0, dtype=torch.long)),
                       ValueError, r"added must be contiguous"),
    "2d": (lambda c: (torch.zeros(0, dtype=torch.long), torch.from_numpy(c.active()[:2].copy()).view(1, 2)),
           ValueError, r"removed must be 1-D"),
    "meta": (lambda c: (torch.tensor([0], device="meta"), torch.zeros(0, dtype=torch.long)),
             ValueError, r"added must be on the CPU"),
    "out_of_range": (lambda c: (torch.tensor([int(c.inactive()[0]), N]), torch.zeros(0, dtype=torch.long)),
                     IndexError, r"added\[1\]"),
    "sparse": (lambda c: (torch.zeros(0, dtype=torch.long), torch.tensor([int(c.active()[0])]).to_sparse()),
               ValueError, r"removed must be a dense \(strided\) tensor"),
}


@pytest.mark.parametrize("case", list(SEED_INDEX_CASES))
def test_bad_indices_seed_api(ctx, case):
    make, exc, match = SEED_INDEX_CASES[case]
    added, removed = make(ctx)
    rejected(ctx, lambda: ctx.cache.torch_object.update_from_indices(added, removed), exc, match)


def test_many_rejections_in_a_row_then_valid(ctx):
    """All rejections back to back (the 'seen' scratch must stay clean), then valid updates."""
    before = ctx.state()
    views = (ctx.cache.get_concat_weight(), ctx.cache.get_active_down_weight())
    for name, (make, exc, match) in INDEX_CASES.items():
        added, removed = make(ctx)
        with pytest.raises(exc, match=match):
            ctx.cache.update_from_indices(added, removed)
    ctx.assert_unchanged(before, views)
    # every currently inactive row can be added in one go, every active one removed
    ina, act = ctx.inactive(), ctx.active()
    ctx.cache.update_from_indices(ina, act)
    assert torch.equal(ctx.cache.mask, torch.from_numpy(np.isin(np.arange(N), ina)))
    ctx.check_content()
    ctx.valid_updates_still_work()


# --------------------------------------------------------------------------------------------
# setters
# --------------------------------------------------------------------------------------------

BAD_SETTINGS = [("grain", 0), ("grain", -1), ("par_threshold", -1), ("par_threshold", -100),
                ("hybrid_tau_frac", float("nan")), ("hybrid_tau_frac", -0.5),
                ("hybrid_tau_frac", float("inf")), ("hybrid_tau_frac", float("-inf"))]


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_bad_setting(ctx, name, value):
    rejected(ctx, lambda: setattr(ctx.cache, name, value), ValueError, name)
    rejected(ctx, lambda: getattr(ctx.cache.torch_object, "set_" + name)(value), ValueError, name)


@pytest.mark.parametrize("name,value", BAD_SETTINGS)
def test_bad_setting_as_constructor_keyword(ctx, name, value):
    with pytest.raises(ValueError, match=name):
        WeightCache(torch.ones(N, dtype=torch.bool), H, ctx.gate, ctx.up, ctx.down, **{name: value})


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------


def _t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype)


GOOD_MASK = lambda: torch.rand(N) < 0.5  # noqa: E731

# name -> (fn() -> (mask, hidden, gate, up, down), exception, regex)
BAD_CONSTRUCTION = {
    "gate_rows": (lambda: (GOOD_MASK(), H, _t(N + 1, G), _t(N, U), _t(H, N)), ValueError, r"gate_weight must have shape \[N, hidden_size\] = \[130, 6\].*got \[131, 6\]"),
    "gate_rows_fewer": (lambda: (GOOD_MASK(), H, _t(N - 1, G), _t(N, U), _t(H, N)), ValueError, r"gate_weight"),
    "down_cols": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U), _t(H, N + 1)), ValueError, r"down_weight must have shape"),
    "down_transposed_shape": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U), _t(N, H)), ValueError, r"down_weight"),
    "hidden_mismatch": (lambda: (GOOD_MASK(), H + 1, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"hidden_size"),
    "hidden_zero": (lambda: (GOOD_MASK(), 0, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"hidden_size must be >= 1"),
    "hidden_negative": (lambda: (GOOD_MASK(), -2, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"hidden_size"),
    "up_non_contiguous": (lambda: (GOOD_MASK(), H, _t(N, G), _t(U, N).t(), _t(H, N)), ValueError, r"up_weight must be contiguous"),
    "gate_non_contiguous": (lambda: (GOOD_MASK(), H, _t(G, N).t(), _t(N, U), _t(H, N)), ValueError, r"gate_weight must be contiguous"),
    "down_non_contiguous": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U), _t(N, H).t()), ValueError, r"down_weight must be contiguous"),
    "up_strided_rows": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, 2 * U)[:, ::2], _t(H, N)), ValueError, r"up_weight must be contiguous"),
    "gate_dtype": (lambda: (GOOD_MASK(), H, _t(N, G, dtype=torch.float16), _t(N, U), _t(H, N)), TypeError, r"gate_weight must have dtype"),
    "down_dtype": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U), _t(H, N, dtype=torch.bfloat16)), TypeError, r"down_weight must have dtype"),
    "int32_weights": (lambda: (GOOD_MASK(), H, _t(N, G).int(), _t(N, U).int(), _t(H, N).int()), TypeError, r"up_weight must be float32"),
    "int32_gate_only": (lambda: (GOOD_MASK(), H, _t(N, G).int(), _t(N, U), _t(H, N)), TypeError, r"gate_weight must have dtype"),
    "float64_weights": (lambda: (GOOD_MASK(), H, _t(N, G).double(), _t(N, U).double(), _t(H, N).double()), TypeError, r"up_weight must be float32"),
    "up_1d": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N), _t(H, N)), ValueError, r"up_weight must be 2-D"),
    "gate_1d": (lambda: (GOOD_MASK(), H, _t(N), _t(N, U), _t(H, N)), ValueError, r"gate_weight must be 2-D"),
    "down_1d": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U), _t(N)), ValueError, r"down_weight must be 2-D"),
    "up_3d": (lambda: (GOOD_MASK(), H, _t(N, G), _t(N, U, 1), _t(H, N)), ValueError, r"up_weight must be 2-D"),
    "no_rows": (lambda: (torch.zeros(0, dtype=torch.bool), H, None, _t(0, U), _t(H, 0)), ValueError, r"up_weight must have at least one row"),
    "no_up_columns": (lambda: (GOOD_MASK(), H, None, _t(N, 0), _t(H, N)), ValueError, r"up_weight must have shape \[N, hidden_size\]"),
    # gate and up have hidden_size columns (the FFN's input width)
    "up_cols_not_hidden": (lambda: (GOOD_MASK(), H, _t(N, H), _t(N, H + 1), _t(H, N)), ValueError,
                           r"up_weight must have shape \[N, hidden_size\] = \[130, 6\], got \[130, 7\]"),
    "gate_cols_not_hidden": (lambda: (GOOD_MASK(), H, _t(N, H - 1), _t(N, H), _t(H, N)), ValueError,
                             r"gate_weight must have shape \[N, hidden_size\] = \[130, 6\]"),
    # "no gate" is has_gate=False or torch.empty(0); other empty shapes are mistakes
    "gate_empty_0_by_7": (lambda: (GOOD_MASK(), H, _t(0, 7), _t(N, H), _t(H, N)), ValueError,
                          r"gate_weight must have shape \[N, hidden_size\].*got \[0, 7\]"),
    "gate_empty_n_plus_3_by_0": (lambda: (GOOD_MASK(), H, _t(N + 3, 0), _t(N, H), _t(H, N)), ValueError,
                                 r"gate_weight must have shape.*got \[133, 0\]"),
    "gate_empty_2d_0_by_0": (lambda: (GOOD_MASK(), H, _t(0, 0), _t(N, H), _t(H, N)), ValueError,
                             r"gate_weight must have shape"),
    "gate_empty_int64": (lambda: (GOOD_MASK(), H, torch.empty(0, dtype=torch.int64), _t(N, H), _t(H, N)),
                         TypeError, r"gate_weight: an empty gate \(no gate\) must be a floating tensor"),
    "gate_empty_bool": (lambda: (GOOD_MASK(), H, torch.empty(0, dtype=torch.bool), _t(N, H), _t(H, N)),
                        TypeError, r"gate_weight: an empty gate"),
    # sparse (non-strided) tensors are named, not "Cannot access data pointer"
    "up_sparse": (lambda: (GOOD_MASK(), H, None, _t(N, H).to_sparse(), _t(H, N)), ValueError,
                  r"up_weight must be a dense \(strided\) tensor, got layout torch.sparse_coo"),
    "down_sparse": (lambda: (GOOD_MASK(), H, None, _t(N, H), _t(H, N).to_sparse()), ValueError,
                    r"down_weight must be a dense \(strided\) tensor"),
    "gate_sparse": (lambda: (GOOD_MASK(), H, _t(N, H).to_sparse(), _t(N, H), _t(H, N)), ValueError,
                    r"gate_weight must be a dense \(strided\) tensor"),
    "gate_sparse_csr": (lambda: (GOOD_MASK(), H, _t(N, H).to_sparse_csr(), _t(N, H), _t(H, N)), ValueError,  # noqa: E501
                        r"gate_weight must be a dense \(strided\) tensor, got layout torch.sparse_csr"),
    "mask_sparse": (lambda: (GOOD_MASK().to_sparse(), H, None, _t(N, H), _t(H, N)), ValueError,
                    r"mask must be a dense \(strided\) tensor"),
    "up_meta": (lambda: (GOOD_MASK(), H, None, torch.empty(N, U, device="meta"), _t(H, N)), ValueError, r"up_weight must be on the CPU"),
    "down_meta": (lambda: (GOOD_MASK(), H, None, _t(N, U), torch.empty(H, N, device="meta")), ValueError, r"down_weight must be on the CPU"),
    "mask_short": (lambda: (torch.ones(N - 1, dtype=torch.bool), H, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"mask must have N = 130"),
    "mask_float": (lambda: (torch.ones(N), H, _t(N, G), _t(N, U), _t(H, N)), TypeError, r"mask must have dtype torch.bool"),
    "mask_uint8": (lambda: (torch.ones(N, dtype=torch.uint8), H, _t(N, G), _t(N, U), _t(H, N)), TypeError, r"mask must have dtype torch.bool"),
    "mask_2d": (lambda: (torch.ones(2, N, dtype=torch.bool), H, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"mask must be 1-D"),
    "mask_meta": (lambda: (torch.ones(N, dtype=torch.bool, device="meta"), H, _t(N, G), _t(N, U), _t(H, N)), ValueError, r"mask must be on the CPU"),
}
WRAPPER_ONLY_CONSTRUCTION = {
    "mask_numpy_int": (lambda: (np.ones(N, dtype=np.int32), H, _t(N, G), _t(N, U), _t(H, N)), TypeError, r"mask must be a bool array"),
    "mask_list": (lambda: ([True] * N, H, _t(N, G), _t(N, U), _t(H, N)), TypeError, r"mask must be a torch.Tensor"),
}


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTION) + list(WRAPPER_ONLY_CONSTRUCTION))
def test_bad_construction(case):
    make, exc, match = {**BAD_CONSTRUCTION, **WRAPPER_ONLY_CONSTRUCTION}[case]
    args = make()
    copies = [a.clone() if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a for a in args]
    with pytest.raises(exc, match=match):
        WeightCache(*args)
    for a, b in zip(args, copies):  # inputs are never written
        if isinstance(a, torch.Tensor) and a.device.type == "cpu":
            assert torch.equal(a.to_dense(), b.to_dense())


@pytest.mark.parametrize("case", list(BAD_CONSTRUCTION))
def test_bad_construction_seed_api(case):
    make, exc, match = BAD_CONSTRUCTION[case]
    mask, hidden, gate, up, down = make()
    if gate is None:
        gate = torch.empty(0, dtype=up.dtype)
    with pytest.raises(exc, match=match):
        torch.classes.paired.WeightCache(mask, hidden, gate, up, down)


def test_no_gate_ignores_a_bad_gate_only_with_has_gate_false():
    """has_gate=False ignores the gate argument (seed semantics); an empty gate means no gate."""
    up, down = _t(N, U), _t(H, N)
    mask = GOOD_MASK()
    bad_gate = _t(G, N).t()  # wrong rows, non-contiguous: checked only when used
    c = torch.classes.paired.WeightCache(mask, H, bad_gate, up, down, False)
    assert c.get_concat_weight().shape == (int(mask.sum()), U)
    with pytest.raises(ValueError, match="gate_weight"):
        torch.classes.paired.WeightCache(mask, H, bad_gate, up, down, True)
    w = WeightCache(mask, H, torch.empty(0, dtype=torch.float32), up, down)
    assert torch.equal(w.get_concat_weight(), up.index_select(0, w.active_indices()))


# --------------------------------------------------------------------------------------------
# findings beyond the brief's list (wrapper input coercion)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scalar", [int, np.int64])
def test_scalar_index_is_rejected_like_a_0d_tensor(ctx, scalar):
    row = scalar(ctx.inactive()[0])
    rejected(ctx, lambda: ctx.cache.update_from_indices(row, []), ValueError, r"added must be 1-D")


@pytest.mark.parametrize("kwargs,name", [
    (dict(hidden_size=H + 0.7), "hidden_size"),
    (dict(grain=1.5), "grain"),
    (dict(par_threshold=0.5), "par_threshold"),
    (dict(hybrid_tau_frac=True), "hybrid_tau_frac"),
    (dict(hybrid_tau_frac="0.3"), "hybrid_tau_frac"),
])
def test_non_integral_or_non_numeric_arguments_are_rejected(kwargs, name):
    args = dict(mask=GOOD_MASK(), hidden_size=H, gate_weight=_t(N, G), up_weight=_t(N, U), down_weight=_t(H, N))
    args.update(kwargs)
    with pytest.raises((TypeError, ValueError), match=name):
        WeightCache(**args)


def test_reversed_numpy_bool_mask_is_accepted(ctx):
    mask = ctx.cache.mask.numpy().copy()
    mask[ctx.inactive()[0]] = True
    rev = mask[::-1].copy()[::-1]  # same values, negative stride
    assert rev.strides[0] < 0
    ctx.cache.update_active_weights(rev)
    assert torch.equal(ctx.cache.mask, torch.from_numpy(mask))


@pytest.mark.parametrize("name", ["grain", "par_threshold"])
def test_setting_outside_int64_names_the_setting(ctx, name):
    rejected(ctx, lambda: setattr(ctx.cache, name, 2**63), (ValueError, OverflowError), name)
