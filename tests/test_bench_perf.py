"""The ``perf`` benchmark: the C++ driver, the counter sources and the CLI (``bench perf``).

* The driver (``csrc/tools/perf_driver.cpp``) compiles with generic flags, writes k rows per paired
  update and m per rebuild, ends with the same packed rows for both methods, and builds the same
  state whether or not the updates run (``--updates 0``).
* The CLI on a tiny configuration writes rows that validate against the ``perf`` schema, marked
  with the source this machine offers (hw when ``perf stat`` counts instructions, else cachegrind
  when valgrind is on PATH, else unavailable); a paired update costs fewer instructions than a
  rebuild when k << m.
* No counters (``--source none``, or a PATH without perf and valgrind) still exits 0 with rows
  marked unavailable.
* Where ``perf`` runs at all, the hw path (control fds, counters start disabled) is exercised
  with software events: page faults of the weight setup must not be counted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from paired_replacement.bench import common, perf

GXX = shutil.which(os.environ.get("CXX") or "g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="no C++ compiler on PATH")

TINY = ["--rows", "256", "--active", "64", "--hidden", "32", "--updates", "5", "--seed", "3"]


def _perf_counts(event: str) -> bool:
    """True when ``perf stat -e event true`` reports a number (independent of perf.py)."""
    exe = shutil.which("perf")
    if exe is None:
        return False
    try:
        proc = subprocess.run([exe, "stat", "-x,", "-e", event, "true"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and any(
        line.split(",")[0].replace(".", "", 1).isdigit() and event in line
        for line in proc.stderr.splitlines())


def machine_source() -> str:
    if _perf_counts("instructions"):
        return "hw"
    if shutil.which("valgrind"):
        return "cachegrind"
    return "unavailable"


@pytest.fixture(scope="module")
def driver_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("perf_driver")


@pytest.fixture(scope="module")
def driver(driver_dir):
    if GXX is None:
        pytest.skip("no C++ compiler on PATH")
    return perf.build_driver(driver_dir)


def run_driver(driver, *args: str) -> dict:
    proc = subprocess.run([str(driver), *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "paired_replacement.bench", "perf", *args],
                          capture_output=True, text=True, timeout=120, env=env)


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
@needs_gxx
@pytest.mark.parametrize("gate", ["1", "0"])
def test_driver_rows_written(driver, gate):
    n, m, k, h, u = 256, 64, 8, 32, 6
    args = ["--rows", str(n), "--active", str(m), "--k", str(k), "--hidden", str(h),
            "--gate", gate, "--updates", str(u), "--seed", "7", "--check"]
    paired = run_driver(driver, *args, "--method", "paired")
    rebuild = run_driver(driver, *args, "--method", "rebuild")
    assert paired["rows_written"] == k * u
    assert rebuild["rows_written"] == m * u
    assert paired["paths"] == {"paired": u, "rebuild": 0, "noop": 0}
    assert rebuild["paths"] == {"paired": 0, "rebuild": u, "noop": 0}
    assert paired["m_final"] == rebuild["m_final"] == m
    # Same rows in both packed blocks (order-independent checksum), after the invariant check.
    assert paired["checksum"] == rebuild["checksum"]
    assert paired["checked"] and not paired["controlled"]
    assert paired["threads"] == 1 and paired["dtype"] == "float32"
    # Setup only: nothing written, the initial block (different rows than after the updates).
    setup = run_driver(driver, *args[:-1], "--updates", "00", "--gen-updates", str(u),
                       "--method", "paired")
    assert setup["updates"] == 0 and setup["rows_written"] == 0
    assert setup["checksum"] != paired["checksum"]


@needs_gxx
def test_driver_bad_arguments(driver):
    for bad in (["--k", "100", "--rows", "128", "--active", "64"], ["--method", "hybrid"],
                ["--updates", "-1"], ["--ctl-fd", "3"], ["--bogus", "1"]):
        proc = subprocess.run([str(driver), *bad], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "usage" in proc.stderr


@needs_gxx
def test_driver_binary_is_reused(driver, driver_dir):
    mtime = driver.stat().st_mtime_ns
    again = perf.build_driver(driver_dir)
    assert again == driver and again.stat().st_mtime_ns == mtime


# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------
def test_parse_perf_csv():
    text = ("# started on today\n\n"
            "123,,cpu_core/instructions/u,1000,100.00,,\n"
            "7,,cpu_atom/instructions/u,1000,100.00,,\n"
            "<not supported>,,LLC-loads,0,100.00,,\n"
            "5.5,msec,task-clock,5500,100.00,0.9,CPUs utilized\n"
            "42,,cycles:u,1000,100.00,,\n")
    got = perf.parse_perf_csv(text, ["instructions", "LLC-loads", "task-clock", "cycles",
                                     "cache-misses"])
    assert got == {"instructions": 130.0, "LLC-loads": None, "task-clock": 5.5, "cycles": 42.0,
                   "cache-misses": None}


def test_parse_cachegrind_out():
    text = ("desc: I1 cache: 32768 B, 64 B, 8-way associative\ncmd: ./x\n"
            "events: Ir I1mr ILmr Dr D1mr DLmr Dw D1mw DLmw\nfl=a.c\nfn=main\n1 2 3\n"
            "summary: 100 1 1 40 4 2 30 3 1\n")
    got = perf.parse_cachegrind_out(text)
    assert got["Ir"] == 100 and got["Dr"] == 40 and got["DLmw"] == 1 and got["D1mw"] == 3


# ---------------------------------------------------------------------------------------------
# The CLI
# ---------------------------------------------------------------------------------------------
@needs_gxx
def test_default_geometry_simulates_an_llc_smaller_than_the_default_workload():
    """With a 32 MiB LL everything fit and no last-level miss was ever counted: the default LL
    must be smaller than what the default configuration's updates touch."""
    ll = perf.simulated_ll_bytes(perf.FIXED_GEOMETRY)
    assert ll == 1 << 20
    assert perf.simulated_ll_bytes("--I1=32768,8,64") == 0
    args = perf.parse_args(["--out", "x.csv"])
    for k in (16, 64, 256):  # config/config.yaml's perf.k
        cfg = perf.Config(args.rows, args.active, k, args.hidden, args.gate, args.updates, 0)
        for method in perf.METHODS:
            assert perf.bytes_per_update(cfg, method) * cfg.updates > ll, (k, method)


def test_cli_tiny_config(tmp_path, driver, driver_dir):
    out = tmp_path / "perf.csv"
    proc = run_cli(*TINY, "--k", "4", "8", "--out", str(out), "--driver-dir", str(driver_dir),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    frame = common.validate_csv(out, "perf")
    expected = machine_source()
    assert set(frame["source"]) == {expected}, proc.stderr
    assert set(frame["method"]) == {"paired", "rebuild"}
    assert sorted(set(frame["k"])) == [4, 8]
    assert frame["config_hash"].nunique() == 2  # one configuration per k
    assert set(frame["threads"]) == {1} and set(frame["dtype"]) == {"float32"}
    assert set(frame["updates"]) == {5} and set(frame["N"]) == {256} and set(frame["m"]) == {64}
    if expected == "unavailable":
        assert frame["value"].isna().all() and frame["per_update"].isna().all()
        return
    # Driver build recorded, not the torch extension's.
    assert set(frame["build_flags"]) == {",".join(perf.CXXFLAGS)}
    assert set(frame["build_source"]) == {str(driver)}
    event = "Ir" if expected == "cachegrind" else "instructions"
    if expected == "cachegrind":
        assert set(frame["event"]) == set(perf.CACHEGRIND_EVENTS)
        assert frame["value"].notna().all()
        assert set(frame["sim_ll_bytes"]) == {1 << 20}  # the fixed geometry's LL
    else:
        assert set(frame["sim_ll_bytes"]) == {0}
    rows_moved = frame["k"].where(frame["method"] == "paired", frame["m"])
    assert (frame["bytes_per_update"] == 2 * rows_moved * 3 * frame["hidden"] * 4).all()
    per = frame[frame["event"] == event].set_index(["k", "method"])["per_update"]
    for k in (4, 8):
        assert 0 < per[(k, "paired")] < per[(k, "rebuild")], per
    rows = frame[frame["event"] == event]
    assert all(math.isclose(v / 5, p) for v, p in zip(rows["value"], rows["per_update"]))


@pytest.mark.skipif(shutil.which("valgrind") is None or GXX is None,
                    reason="needs valgrind and a C++ compiler")
def test_cachegrind_counts_scale_with_updates(driver):
    """Setup is subtracted: doubling the updates doubles the counted instructions (within a few
    percent: later updates swap other rows), instead of adding a constant setup share."""
    irs = {}
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for u in (4, 8):
            cfg = perf.Config(rows=256, active=64, k=8, hidden=32, gate=True, updates=u, seed=3)
            counts = perf.count_cachegrind(driver, cfg, [], pool)
            assert counts["paired"][1]["rows_written"] == 8 * u
            assert counts["rebuild"][1]["rows_written"] == 64 * u
            irs[u] = counts["paired"][0]["Ir"]
    assert irs[8] == pytest.approx(2 * irs[4], rel=0.05), irs


def test_cli_source_none(tmp_path):
    out = tmp_path / "none.csv"
    proc = run_cli(*TINY, "--k", "8", "--source", "none", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"unavailable"}
    assert frame["value"].isna().all() and frame["per_update"].isna().all()
    assert set(frame["event"]) == set(perf.HW_EVENTS)
    assert len(frame) == 2 * len(perf.HW_EVENTS)


def test_cli_machine_without_counters(tmp_path, monkeypatch):
    """PATH without perf, valgrind (or anything else): still exit 0, rows marked unavailable."""
    empty = tmp_path / "bin"
    empty.mkdir()
    out = tmp_path / "auto.csv"
    proc = run_cli(*TINY, "--k", "8", "--out", str(out), env={**os.environ, "PATH": str(empty)})
    assert proc.returncode == 0, proc.stderr
    assert "warning" in proc.stderr and "not on PATH" in proc.stderr
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"unavailable"}
    assert set(frame["event"]) == set(perf.HW_EVENTS)
    assert frame["value"].isna().all()
    # Forcing a source that is missing is no error either (in-process: no second torch import).
    monkeypatch.setenv("PATH", str(empty))
    out = tmp_path / "cachegrind.csv"
    assert perf.main([*TINY, "--k", "8", "--source", "cachegrind", "--out", str(out),
                      "--quiet"]) == 0
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"unavailable"}
    assert set(frame["event"]) == set(perf.CACHEGRIND_EVENTS)
    assert frame["value"].isna().all()


@pytest.mark.skipif(not _perf_counts("task-clock") or GXX is None,
                    reason="perf stat cannot count software events here")
def test_hw_path_counts_only_the_updates(tmp_path, driver_dir):
    """The control protocol: with the default shape, setup touches ~6 MB of fresh memory (about
    1,500 page faults); the counted region, after it, must see almost none."""
    out = tmp_path / "hw.csv"
    proc = run_cli("--k", "64", "--source", "hw", "--hw-events",
                   "task-clock,page-faults,instructions", "--out", str(out), "--driver-dir",
                   str(driver_dir), "--quiet")
    assert proc.returncode == 0, proc.stderr
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"hw"}
    values = frame.set_index(["method", "event"])["value"]
    for method in ("paired", "rebuild"):
        assert values[(method, "task-clock")] > 0
        assert values[(method, "page-faults")] < 50, values
    if not _perf_counts("instructions"):  # <not supported> is a row with an empty value
        assert math.isnan(values[("paired", "instructions")])
