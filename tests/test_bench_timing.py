"""The interleaved harness, the statistics and the load probe, on synthetic data and real
processes (nothing here asserts how fast anything is)."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from paired_replacement.bench import load, stats, timing


# ---------------------------------------------------------------------------------------------
# measure(): every method once per round, in a fresh random order
# ---------------------------------------------------------------------------------------------
def test_rounds_interleave_every_method_once_in_a_random_order():
    calls: list[str] = []
    ops = {name: (lambda n=name: calls.append(n)) for name in "abcd"}
    out = timing.measure(ops, values=30, warmups=2, min_time=0.0, fixed_loops=3,
                         rng=np.random.default_rng(0))
    assert set(out) == set("abcd")
    for name, got in out.items():
        assert got["loops"] == 3 and len(got["values"]) == 30 and len(got["warmups"]) == 2
        assert all(v > 0 for v in got["values"])
    rounds = [calls[i:i + 12] for i in range(0, len(calls), 12)]  # 4 methods x 3 loops
    assert len(rounds) == 32
    orders = set()
    for r in rounds:
        per_method = [r[i * 3:(i + 1) * 3] for i in range(4)]
        assert all(len(set(block)) == 1 for block in per_method)  # a value is one method's loops
        order = tuple(block[0] for block in per_method)
        assert sorted(order) == list("abcd")  # each method exactly once per round
        orders.add(order)
    assert len(orders) > 5  # the order changes between rounds


def test_before_value_runs_untimed_before_each_of_its_methods_values():
    log: list[str] = []
    ops = {"x": lambda: log.append("op x"), "y": lambda: log.append("op y")}
    before = {"x": lambda: log.append("set x")}
    timing.measure(ops, values=2, warmups=0, min_time=0.0, fixed_loops=2,
                   rng=np.random.default_rng(1), before_value=before)
    assert log.count("set x") == 2  # once per value (no calibration with fixed loops)
    for i, entry in enumerate(log):
        if entry == "set x":
            assert log[i + 1] == "op x"


def test_calibration_reaches_min_time_with_a_power_of_two():
    def op():
        time.sleep(0.001)

    loops = timing.calibrate(op, 0.02)
    assert loops & (loops - 1) == 0 and 8 <= loops <= 32


# ---------------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------------
def test_hierarchical_bootstrap_median_and_interval():
    rng = np.random.default_rng(5)
    blocks = [rng.normal(10, 1, 8) for _ in range(4)]
    point, low, high = stats.hierarchical_bootstrap(blocks, seed=1)
    assert point == float(np.median(np.concatenate(blocks)))
    assert low <= point <= high
    assert stats.hierarchical_bootstrap(blocks, seed=1) == (point, low, high)  # seeded
    with pytest.raises(ValueError, match="no values"):
        stats.hierarchical_bootstrap([[]])


def test_processes_that_disagree_widen_the_interval():
    """Values of one process are not independent draws: when processes sit at different levels,
    resampling processes gives a wider interval than treating all values as independent."""
    rng = np.random.default_rng(7)
    blocks = [rng.normal(level, 0.05, 10) for level in (10.0, 11.0, 12.0)]
    _, lo_h, hi_h = stats.hierarchical_bootstrap(blocks, seed=0)
    _, lo_i, hi_i = stats.hierarchical_bootstrap([np.concatenate(blocks)], seed=0)
    assert hi_h - lo_h > 1.5 * (hi_i - lo_i)


def test_unequal_process_lengths_take_the_general_path():
    blocks = [[1.0, 2.0, 3.0], [2.0, 2.5], [3.0]]
    point, low, high = stats.hierarchical_bootstrap(blocks, seed=2)
    assert point == 2.25 and 1.0 <= low <= point <= high <= 3.0


def test_paired_ratios_cancel_drift_that_hits_both_methods():
    """A shared slow drift (load) moves both methods' values; their round-by-round ratio stays
    put, so its interval is narrow where the medians' own intervals are wide."""
    drift = np.linspace(1.0, 3.0, 12)
    base = [list(2.0 * drift), list(2.0 * drift[::-1])]
    fast = [list(1.0 * drift), list(1.0 * drift[::-1])]
    ratio, low, high = stats.ratio_interval(base, fast, seed=0)
    assert ratio == pytest.approx(2.0) and high - low < 1e-9
    _, lo_b, hi_b = stats.hierarchical_bootstrap(base, seed=0)
    assert hi_b - lo_b > 0.5  # the baseline's own median is very uncertain
    with pytest.raises(ValueError, match="equal rounds"):
        stats.paired_ratios([[1.0, 2.0]], [[1.0]])


def test_summary_columns():
    s = stats.summary([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], seed=0)
    assert s["n_processes"] == 2 and s["n_values"] == 6
    assert s["median_s"] == 3.5 and s["mean_s"] == 3.5
    assert s["iqr_s"] == pytest.approx(2.5)
    assert s["ci95_low_s"] <= 3.5 <= s["ci95_high_s"]
    assert stats.relative_half_width(2.0, 1.8, 2.2) == pytest.approx(0.1)


# ---------------------------------------------------------------------------------------------
# Load probe
# ---------------------------------------------------------------------------------------------
def test_load_probe_sees_another_process_spinning():
    spinner = subprocess.Popen([sys.executable, "-c",
                                "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    try:
        time.sleep(0.2)
        probe = load.LoadProbe()
        time.sleep(1.0)
        sample = probe.stop()
    finally:
        spinner.wait(timeout=10)
    assert sample["others_busy_cores"] > 0.5
    assert sample["busy"]
    assert sample["load_before"] >= 0 and sample["steal_percent"] >= 0


def test_own_cpu_time_is_subtracted_from_the_hosts(monkeypatch):
    """others = (host busy CPU seconds - our own CPU seconds) / wall seconds; steal in %."""
    stat = iter([(100.0, 1.0, 400.0), (102.5, 1.2, 404.0)])  # busy, steal, total (seconds)
    own = iter([10.0, 11.5])
    wall = iter([50.0, 51.0])
    monkeypatch.setattr(load, "_proc_stat", lambda: next(stat))
    monkeypatch.setattr(load, "_own_cpu", lambda: next(own))
    monkeypatch.setattr(load.time, "monotonic", lambda: next(wall))
    monkeypatch.setattr(load, "_loadavg", lambda: 0.5)
    sample = load.LoadProbe().stop()
    assert sample["others_busy_cores"] == pytest.approx(1.0)  # 2.5 host - 1.5 ours over 1 s
    assert sample["steal_percent"] == pytest.approx(5.0)  # 0.2 of 4.0 s
    assert sample["busy"]


def test_combine_takes_the_worst_of_the_processes():
    quiet = {"load_before": 0.1, "load_after": 0.2, "others_busy_cores": 0.0, "steal_percent": 0.0,
             "busy": False}
    noisy = {"load_before": 1.5, "load_after": 0.9, "others_busy_cores": 0.8, "steal_percent": 1.0,
             "busy": True}
    out = load.combine([quiet, noisy])
    assert out == {"load_before": 1.5, "load_after": 0.9, "others_busy_cores": 0.8,
                   "steal_percent": 1.0, "busy": True}
