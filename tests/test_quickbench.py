"""The quick benchmark runs and its numbers are consistent (no timing is asserted)."""

import math

from paired_replacement import quickbench


def test_quickbench_tiny_run_reports_every_method():
    rows = quickbench.run(rows=256, active=64, hidden=32, ks=[0, 4, 16], steps=3, rounds=2,
                          threads=1, seed=1)
    assert [r["k"] for r in rows] == [0, 4, 16]
    for r in rows:
        for method in ("paired", "indices", "index_select", "memcpy"):
            assert r[f"{method}_ms"] > 0
        assert r["speedup_vs_index_select"] == round(r["index_select_ms"] / r["paired_ms"], 2) or \
            math.isclose(r["speedup_vs_index_select"], r["index_select_ms"] / r["paired_ms"], rel_tol=0.05)
    assert rows[0]["paired_GBps"] == 0.0


def test_thread_split_names_each_busy_thread():
    split = quickbench.thread_split(rows=1024, active=256, hidden=512, threads=1, repeats=4)
    assert set(split) == {"paired", "index_select"}
    for shares in split.values():
        assert shares and abs(sum(shares) - 100) <= 2.5  # the busy threads' shares add up


def test_fixed_cost_measures_wrapper_and_raw_calls():
    costs = quickbench.fixed_cost_us(calls=200)
    assert {"wrapper.update_from_indices k=0", "torch.classes.update_from_indices k=0",
            "wrapper.update_from_indices k=64", "torch.classes.update_from_indices k=64"} <= set(costs)
    assert all(v > 0 for v in costs.values())
