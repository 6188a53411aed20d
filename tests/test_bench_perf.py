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
* Everywhere (a host without perf skips the test above, and the project's VMs count software
  events only: hardware events are ``<not supported>``), the hw path also runs against a FAKE
  ``perf`` first on PATH (FAKE_PERF below: a Python script that behaves like
  ``perf stat -x, -o FILE --control=fd:CTL,ACK -D -1 -e EVENTS -- CMD``), which records what it
  was asked and what it received. Checked: the protocol (perf's control pipes are the ones the
  driver writes and reads, counters start disabled, the driver sends exactly enable then disable,
  each acked, after the setup's page faults and around the updates), the detection (probe_hw and
  this file's own _perf_counts), the parser (counts land in the right method/k/event rows, hybrid
  PMU lines are summed, ``<not supported>`` is an empty value) and the failure modes (non-zero
  exit, a bad ack, unreadable output, an uncontrolled run: CounterError naming the cause; the CLI
  falls back as documented and exits 0). These tests need g++ (CI has it) but no counters, and
  never skip (the suite has no CI-only skip guard): without g++ they fail with build_driver's
  "compiler 'g++' not found on PATH".
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from conftest import GXX, IN_CI, needs_gxx  # tests/ is on sys.path
from paired_replacement.bench import common, perf


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
    if GXX is None and not IN_CI:
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



# ---------------------------------------------------------------------------------------------
# The hw path against a fake perf (runs everywhere: needs g++, no counters)
# ---------------------------------------------------------------------------------------------
FAKE_PERF = r'''
# A fake `perf`, written by tests/test_bench_perf.py: `perf stat` as bench/perf.py calls it,
#   perf stat -x, [-o FILE] [--control=fd:CTL,ACK] [-D -1] -e EV1,EV2 [--] CMD ARGS...
# Runs CMD with every fd inherited (like perf), reads commands ('enable', 'disable'; newline or NUL
# terminated) on CTL and answers each on ACK the way perf does ("ack\n" plus its NUL, as perf 6.1
# does; it also says "Events enabled"/"Events disabled" on stderr, and so does the fake). Counting
# starts enabled unless -D -1 (--delay=-1) is given; then only enable..disable windows count.
# Measured on the child through /proc: page-faults / minor-faults / faults (minflt) and task-clock
# (CPU time, msec); any other event reports FAKE_PERF_VALUES[event] (default 1000) plus the run's
# number (lines already in the log), so that every run's counts differ. The CSV (perf's -x,
# columns: value,unit,event,run time,percent,metric,metric unit) goes to -o FILE after perf's
# '# started on' line and a blank one, else to stderr. Exit status: the child's.
# Environment: FAKE_PERF_LOG (one JSON line per call: argv, parsed options, the fds it holds,
# the commands received with the child's counters at that moment, the counted totals, what it
# reported), FAKE_PERF_MODE (count | fail: exit 3 on every call | fail-run: exit 3 unless the
# command is `true` (the probe) | bad-ack: answer 'nak' | garbage: unparsable values |
# strip-control: run CMD without its --ctl-fd/--ack-fd), FAKE_PERF_UNSUPPORTED (events reported
# as <not supported>), FAKE_PERF_HYBRID (events reported as cpu_core/EV/u + cpu_atom/EV/u lines).
import fcntl
import json
import os
import select
import subprocess
import sys
import time

MEASURED_FAULTS = ("page-faults", "minor-faults", "faults")


def env_list(name):
    return [e for e in os.environ.get(name, "").split(",") if e]


def usage(msg):
    print(" Error: " + msg + "\n\n Usage: perf stat [<options>] [<command>]", file=sys.stderr)
    sys.exit(129)


def parse(argv):
    if not argv or argv[0] != "stat":
        usage("the fake only knows 'perf stat', got %r" % argv[:1])
    opts = {"sep": None, "out": None, "control": None, "delay": 0, "events": [], "cmd": []}
    i = 1
    while i < len(argv):
        a = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if a == "--":
            opts["cmd"] = argv[i + 1:]
            break
        if a.startswith("-x"):
            opts["sep"] = a[2:] or nxt
            i += 0 if a[2:] else 1
        elif a == "-o":
            opts["out"], i = nxt, i + 1
        elif a.startswith("--control="):
            opts["control"] = a.split("=", 1)[1]
        elif a == "--control":
            opts["control"], i = nxt, i + 1
        elif a in ("-D", "--delay"):
            opts["delay"], i = int(nxt), i + 1
        elif a.startswith("--delay="):
            opts["delay"] = int(a.split("=", 1)[1])
        elif a == "-e":
            opts["events"] += [e for e in nxt.split(",") if e]
            i += 1
        elif a.startswith("-"):
            usage("unknown option " + a)
        else:
            opts["cmd"] = argv[i:]
            break
        i += 1
    if not opts["cmd"]:
        usage("no command to run")
    if opts["sep"] != ",":
        usage("the fake writes -x, CSV only")
    return opts


def open_fds():
    fds = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
            acc = fcntl.fcntl(int(name), fcntl.F_GETFL) & os.O_ACCMODE
        except OSError:
            continue
        fds[name] = [target, {os.O_RDONLY: "r", os.O_WRONLY: "w"}.get(acc, "rw")]
    return fds


def snapshot(pid):
    # (minflt, cpu_ns) of the live child
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    try:
        with open("/proc/%d/schedstat" % pid) as f:
            cpu_ns = int(f.read().split()[0])
    except OSError:
        cpu_ns = (int(rest[11]) + int(rest[12])) * 10**9 // os.sysconf("SC_CLK_TCK")
    return int(rest[7]), cpu_ns


def main():
    argv = sys.argv[1:]
    mode = os.environ.get("FAKE_PERF_MODE", "count")
    log_path = os.environ.get("FAKE_PERF_LOG")
    run_no = 0
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            run_no = sum(1 for _ in f)
    opts = parse(argv)
    entry = {"argv": argv, "opts": opts, "fds": open_fds(), "commands": [], "acks": 0}

    def log():
        if log_path:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    cmd = list(opts["cmd"])
    if mode == "fail" or (mode == "fail-run" and cmd != ["true"]):
        entry["failed"] = True
        log()
        print("fake perf: failing on purpose (perf_event_open: Permission denied)",
              file=sys.stderr)
        sys.exit(3)
    if mode == "strip-control":
        for opt in ("--ctl-fd", "--ack-fd"):
            if opt in cmd:
                j = cmd.index(opt)
                del cmd[j:j + 2]
    ctl = ack = None
    if opts["control"]:
        kind, _, fds = opts["control"].partition(":")
        if kind != "fd":
            usage("the fake only knows --control fd:CTL,ACK")
        ctl, ack = (int(x) for x in fds.split(","))
        os.set_blocking(ctl, False)
    enabled = opts["delay"] != -1
    if not enabled:
        print("Events disabled", file=sys.stderr, flush=True)  # what perf 6.1 says
    child = subprocess.Popen(cmd, close_fds=False)  # the workload gets every fd, as under perf
    pid = child.pid
    start = (0, 0) if enabled else None  # counting from exec
    totals = {"minflt": 0, "cpu_ns": 0}
    windows = 0
    buf = b""

    def handle(command):
        nonlocal enabled, start, windows
        now = snapshot(pid)  # the child is blocked waiting for our ack
        entry["commands"].append({"cmd": command, "minflt": now[0], "cpu_ns": now[1],
                                  "enabled_before": enabled})
        if command == "enable" and not enabled:
            enabled, start = True, now
            print("Events enabled", file=sys.stderr, flush=True)
        elif command == "disable" and enabled:
            totals["minflt"] += now[0] - start[0]
            totals["cpu_ns"] += now[1] - start[1]
            enabled, windows = False, windows + 1
            print("Events disabled", file=sys.stderr, flush=True)
        os.write(ack, b"nak\n\0" if mode == "bad-ack" else b"ack\n\0")
        entry["acks"] += 1

    while True:
        exited = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        if ctl is not None:
            ready, _, _ = select.select([ctl], [], [], 0 if exited else 0.05)
            if ready:
                try:
                    data = os.read(ctl, 4096)
                except BlockingIOError:
                    data = b""
                buf += data
                while True:
                    cuts = [c for c in (buf.find(b"\n"), buf.find(b"\0")) if c >= 0]
                    if not cuts:
                        break
                    line, buf = buf[:min(cuts)], buf[min(cuts) + 1:]
                    if line:
                        handle(line.decode())
                if data:
                    continue
                ctl = None  # end of file: no more commands
        elif not exited:
            time.sleep(0.02)
        if exited:
            break
    _, status, ru = os.wait4(pid, 0)
    rc = os.waitstatus_to_exitcode(status)
    end = (ru.ru_minflt, int((ru.ru_utime + ru.ru_stime) * 1e9))
    if enabled:  # counting until the workload's exit
        totals["minflt"] += end[0] - start[0]
        totals["cpu_ns"] += end[1] - start[1]
        windows += 1
    entry.update(child_exit=rc, child_total={"minflt": end[0], "cpu_ns": end[1]},
                 counted=dict(totals), windows=windows, leftover=buf.decode(errors="replace"),
                 cmd_run=cmd)

    values = json.loads(os.environ.get("FAKE_PERF_VALUES", "{}"))
    unsupported, hybrid = env_list("FAKE_PERF_UNSUPPORTED"), env_list("FAKE_PERF_HYBRID")
    run_ns = totals["cpu_ns"]
    lines, reported = [], {}
    for ev in opts["events"]:
        reported[ev] = None
        if ev in unsupported:
            lines.append("<not supported>,,%s,0,100.00,," % ev)
        elif windows == 0:
            lines.append("<not counted>,,%s,0,0.00,," % ev)
        elif mode == "garbage":
            lines.append("garbage,,%s,%d,100.00,," % (ev, run_ns))
        elif ev == "task-clock":
            reported[ev] = run_ns / 1e6
            lines.append("%.6f,msec,task-clock,%d,100.00,0.999,CPUs utilized"
                         % (run_ns / 1e6, run_ns))
        elif ev in MEASURED_FAULTS:
            reported[ev] = totals["minflt"]
            lines.append("%d,,%s,%d,100.00,0.000,/sec" % (totals["minflt"], ev, run_ns))
        else:
            v = int(values.get(ev, 1000)) + run_no
            reported[ev] = v
            if ev in hybrid:
                lines.append("%d,,cpu_core/%s/u,%d,100.00,," % (v - v // 3, ev, run_ns))
                lines.append("%d,,cpu_atom/%s/u,%d,100.00,," % (v // 3, ev, run_ns))
            else:
                lines.append("%d,,%s,%d,100.00,," % (v, ev, run_ns))
    entry.update(csv=lines, reported=reported)
    text = "# started on Thu Jan  1 00:00:00 1970\n\n" + "\n".join(lines) + "\n"
    if opts["out"]:
        with open(opts["out"], "w") as f:
            f.write(text)
    else:
        sys.stderr.write(text)
    log()
    sys.exit(rc)


main()
'''

# The default shape of the CLI: setup touches ~6 MB of fresh memory (thousands of page faults
# without transparent huge pages), the updates none.
DEFAULT_CFG = perf.Config(rows=2048, active=512, k=64, hidden=256, gate=True, updates=20, seed=0)
TINY_CFG = perf.Config(rows=256, active=64, k=8, hidden=32, gate=True, updates=5, seed=3)


class FakePerf:
    """A fake ``perf`` (and optionally a broken ``valgrind``) first on PATH, for this test."""

    def __init__(self, bin_dir: Path, monkeypatch: pytest.MonkeyPatch):
        self.bin_dir, self.monkeypatch = bin_dir, monkeypatch
        self.log = bin_dir / "fake_perf.log"
        script = bin_dir / "fake_perf.py"
        script.write_text(FAKE_PERF)
        self._wrapper("perf", f'exec "{sys.executable}" "{script}" "$@"')
        monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        monkeypatch.setenv("FAKE_PERF_LOG", str(self.log))
        for name in ("FAKE_PERF_MODE", "FAKE_PERF_UNSUPPORTED", "FAKE_PERF_HYBRID",
                     "FAKE_PERF_VALUES"):
            monkeypatch.delenv(name, raising=False)

    def _wrapper(self, name: str, body: str) -> None:
        exe = self.bin_dir / name
        exe.write_text(f"#!/bin/sh\n{body}\n")
        exe.chmod(0o755)

    def set(self, mode: str = "count", unsupported=(), hybrid=(), values=None) -> None:
        self.monkeypatch.setenv("FAKE_PERF_MODE", mode)
        self.monkeypatch.setenv("FAKE_PERF_UNSUPPORTED", ",".join(unsupported))
        self.monkeypatch.setenv("FAKE_PERF_HYBRID", ",".join(hybrid))
        self.monkeypatch.setenv("FAKE_PERF_VALUES", json.dumps(values or {}))

    def break_valgrind(self) -> None:
        """A valgrind whose --version fails: source cachegrind unavailable, whatever the host."""
        self._wrapper("valgrind", 'echo "fake valgrind: broken" >&2; exit 1')

    def entries(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def fake_perf(tmp_path, monkeypatch) -> FakePerf:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    fake = FakePerf(bin_dir, monkeypatch)
    assert shutil.which("perf") == str(bin_dir / "perf")
    return fake


@pytest.fixture(scope="module")
def built_driver(driver_dir):
    """The driver for the fake-perf tests, built without a skip: they need no counters, only a
    C++ compiler, which CI has; a missing one fails them (build_driver's FileNotFoundError names
    the compiler) instead of skipping tests CI is meant to run."""
    return perf.build_driver(driver_dir)


def _opt_value(cmd: list[str], opt: str) -> str:
    return cmd[cmd.index(opt) + 1]


@pytest.mark.parametrize("mode,unsupported,events,probe_event,reason", [
    ("count", (), perf.HW_EVENTS, "instructions", None),
    ("count", (), ("task-clock", "page-faults"), "task-clock", None),
    ("count", ("instructions",), perf.HW_EVENTS, "instructions",
     r"perf stat -e instructions reports no count \(<not supported>"),
    ("garbage", (), perf.HW_EVENTS, "instructions", r"reports no count"),
    ("fail", (), perf.HW_EVENTS, "instructions",
     r"perf stat -e instructions failed: fake perf: failing on purpose \(perf_event_open: "
     r"Permission denied\)"),
], ids=["counts", "software_event_probe", "not_supported", "unparsable", "exit_3"])
def test_fake_perf_hw_detection(fake_perf, mode, unsupported, events, probe_event, reason):
    """probe_hw (and this file's own _perf_counts, which gates the real-perf test) against the
    fake: a real count means hw is usable; <not supported>, an unparsable value or a failing perf
    give the reason, naming the probe event."""
    fake_perf.set(mode, unsupported=unsupported)
    got = perf.probe_hw(events)
    if reason is None:
        assert got is None
    else:
        assert got is not None and re.search(reason, got), got
    probe = fake_perf.entries()[0]
    assert probe["argv"] == ["stat", "-x,", "-e", probe_event, "true"]
    assert _perf_counts(probe_event) is (reason is None)


@pytest.mark.parametrize("method", perf.METHODS)
def test_fake_perf_control_protocol(fake_perf, built_driver, method):
    """count_hw's command line and the driver's side of the protocol, as the fake perf saw them:
    perf reads the pipe the driver writes and answers on the pipe the driver reads, counters
    start disabled (-D -1), the driver sends exactly enable then disable and gets each acked, the
    setup's page faults come before enable and the counted window has almost none; the parsed
    counts are the fake's (hybrid PMU lines summed); the summary is the controlled run's."""
    events = ("task-clock", "page-faults", "instructions", "cycles")
    fake_perf.set(values={"instructions": 123_456_789, "cycles": 987_654_321}, hybrid=("cycles",))
    counts, summary = perf.count_hw(built_driver, DEFAULT_CFG, method, events)

    [run] = fake_perf.entries()
    opts, cmd = run["opts"], run["opts"]["cmd"]
    assert opts["sep"] == "," and opts["out"] and opts["events"] == list(events)
    assert opts["delay"] == -1, "counters must start disabled (perf stat -D -1)"
    assert cmd[0] == str(built_driver) and _opt_value(cmd, "--method") == method
    assert run["cmd_run"] == cmd
    # --control=fd:CTL,ACK: perf's CTL is the read end of the pipe whose write end the driver got
    # as --ctl-fd; perf's ACK the write end of the pipe the driver reads as --ack-fd.
    kind, _, pair = opts["control"].partition(":")
    assert kind == "fd"
    ctl, ack = pair.split(",")
    fds = run["fds"]
    drv_ctl, drv_ack = _opt_value(cmd, "--ctl-fd"), _opt_value(cmd, "--ack-fd")
    assert fds[ctl][0].startswith("pipe:") and fds[ack][0].startswith("pipe:")
    assert fds[ctl] == [fds[drv_ctl][0], "r"] and fds[drv_ctl][1] == "w"
    assert fds[ack] == [fds[drv_ack][0], "w"] and fds[drv_ack][1] == "r"
    assert fds[ctl][0] != fds[ack][0]
    # The driver's side: enable, disable, each acked, nothing else left on the pipe.
    assert [(c["cmd"], c["enabled_before"]) for c in run["commands"]] == [
        ("enable", False), ("disable", True)]
    assert run["acks"] == 2 and run["windows"] == 1 and run["leftover"] == ""
    assert run["child_exit"] == 0
    # Setup (weights, cache, mask chain) faulted its memory in before enable; the window did not.
    enable, disable = run["commands"]
    total_faults = run["child_total"]["minflt"]
    assert total_faults - enable["minflt"] < 50, run  # all but a few before enable
    assert run["counted"]["minflt"] == disable["minflt"] - enable["minflt"] < 50, run
    assert run["counted"]["cpu_ns"] > 0
    # The parser's view of the fake's CSV.
    assert counts == {"task-clock": pytest.approx(run["counted"]["cpu_ns"] / 1e6, abs=1e-6),
                      "page-faults": float(run["counted"]["minflt"]),
                      "instructions": 123_456_789.0, "cycles": 987_654_321.0}
    assert run["reported"]["cycles"] == 987_654_321 and len(run["csv"]) == 5  # cycles: 2 lines
    assert summary["controlled"] is True and summary["method"] == method
    assert summary["rows_written"] == DEFAULT_CFG.expected_rows_written(method)


def test_fake_perf_window_holds_the_updates(fake_perf, built_driver):
    """The driver sends enable right before the updates and disable right after: the counted CPU
    time grows with the number of updates (1 -> 100 paired updates: 10-30x here), which neither a
    window around the setup nor an empty window next to the loop would do. Generous bounds: the
    counts are CPU time (only while on a CPU), so a busy machine slows both runs alike."""
    fake_perf.set()
    window_ms = {}
    for updates in (1, 100):
        cfg = perf.Config(rows=2048, active=512, k=64, hidden=256, gate=True, updates=updates,
                          seed=0)
        counts, summary = perf.count_hw(built_driver, cfg, "paired", ("task-clock",))
        assert summary["rows_written"] == 64 * updates
        window_ms[updates] = counts["task-clock"]
    assert window_ms[100] > 4 * window_ms[1], window_ms
    assert window_ms[100] > 0.2, window_ms  # 100 updates of 64 rows x 3 KiB: not an empty window


@pytest.mark.parametrize("mode,match", [
    ("fail-run", r"perf stat run failed \(exit 3\): fake perf: failing on purpose"),
    ("bad-ack", r"(?s)perf stat run failed \(exit 1\):.*unexpected reply on --ack-fd: 'nak"),
    ("garbage", r"unreadable perf stat output \(could not convert string to float: 'garbage'\)"),
    ("strip-control", r"the driver did not run under the control protocol"),
], ids=["exit_3", "bad_ack", "garbage", "uncontrolled"])
def test_fake_perf_failures_raise_counter_error(fake_perf, built_driver, mode, match):
    """A perf that fails, a wrong ack (the driver refuses it and exits 1), unparsable counts and
    a run without the control protocol (nothing enabled: <not counted>) are a CounterError naming
    the cause (the CLI then falls back), never counts."""
    fake_perf.set(mode)
    with pytest.raises(perf.CounterError, match=match):
        perf.count_hw(built_driver, TINY_CFG, "paired", ("task-clock", "instructions"))
    [run] = fake_perf.entries()
    if mode == "strip-control":
        assert run["commands"] == [] and "--ctl-fd" not in run["cmd_run"]
        assert run["csv"][0].startswith("<not counted>,")


HW_VALUES = {"cycles": 10_000_000, "instructions": 20_000_000, "cache-references": 300_000,
             "cache-misses": 40_000}


def test_fake_perf_cli_rows(fake_perf, built_driver, driver_dir, tmp_path):
    """The CLI with --source auto and the fake: detection picks hw, one probe then one perf stat
    run per (k, method) in order, and every CSV row holds the count the fake reported for that
    run and event (distinct per run); hybrid lines are summed; <not supported> events are rows
    with source hw and an empty value."""
    assert built_driver.parent == driver_dir
    fake_perf.set(values=HW_VALUES, unsupported=("LLC-loads", "LLC-load-misses"),
                  hybrid=("cycles", "instructions"))
    out = tmp_path / "fake_hw.csv"
    proc = run_cli(*TINY, "--k", "4", "8", "--out", str(out), "--driver-dir", str(driver_dir),
                   "--quiet")
    assert proc.returncode == 0, proc.stderr
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"hw"}, proc.stderr
    assert set(frame["event"]) == set(perf.HW_EVENTS)
    assert len(frame) == 2 * 2 * len(perf.HW_EVENTS)

    probe, *runs = fake_perf.entries()
    assert probe["opts"]["cmd"] == ["true"]
    assert [(_opt_value(r["opts"]["cmd"], "--k"), _opt_value(r["opts"]["cmd"], "--method"))
            for r in runs] == [("4", "paired"), ("4", "rebuild"), ("8", "paired"), ("8", "rebuild")]
    values = frame.set_index(["k", "method", "event"])["value"]
    per_update = frame.set_index(["k", "method", "event"])["per_update"]
    for run in runs:
        assert run["opts"]["delay"] == -1
        assert [c["cmd"] for c in run["commands"]] == ["enable", "disable"]
        k, method = int(_opt_value(run["opts"]["cmd"], "--k")), _opt_value(run["opts"]["cmd"],
                                                                           "--method")
        for event in perf.HW_EVENTS:
            reported = run["reported"][event]
            if event.startswith("LLC-"):
                assert reported is None and math.isnan(values[(k, method, event)])
                assert math.isnan(per_update[(k, method, event)])
            else:
                assert values[(k, method, event)] == reported, (k, method, event)
                assert per_update[(k, method, event)] == pytest.approx(reported / 5)


@pytest.mark.parametrize("source,mode,unsupported,messages", [
    ("hw", "fail-run", (), [r"warning: source hw failed \(perf stat run failed \(exit 3\)",
                            r"warning: no counter source available"]),
    ("auto", "fail-run", (), [r"warning: source hw failed \(perf stat run failed \(exit 3\)",
                              r"warning: source cachegrind unavailable: valgrind --version "
                              r"failed: fake valgrind: broken"]),
    ("auto", "fail", (), [r"source hw unavailable: perf stat -e instructions failed",
                          r"warning: no counter source available"]),
    ("auto", "count", ("instructions",), [r"source hw unavailable: perf stat -e instructions "
                                          r"reports no count \(<not supported>",
                                          r"warning: no counter source available"]),
], ids=["forced_hw_run_fails", "auto_run_fails", "auto_probe_fails", "auto_not_supported"])
def test_fake_perf_cli_falls_back(fake_perf, built_driver, driver_dir, tmp_path, capsys, source,
                                  mode, unsupported, messages):
    """The documented fallback: a perf that cannot count (probe) or fails a run is a warning, the
    next source is tried (cachegrind, here a broken valgrind), and the rows are marked
    unavailable with the hw event names and empty values; exit 0. (In-process: the fake and the
    driver are subprocesses anyway, and a second torch import would cost seconds per case.)"""
    fake_perf.set(mode, unsupported=unsupported)
    fake_perf.break_valgrind()
    out = tmp_path / "fallback.csv"
    assert perf.main([*TINY, "--k", "8", "--source", source, "--out", str(out), "--driver-dir",
                      str(driver_dir)]) == 0
    stderr = capsys.readouterr().err
    for message in messages:
        assert re.search(message, stderr), (message, stderr)
    frame = common.validate_csv(out, "perf")
    assert set(frame["source"]) == {"unavailable"}
    assert set(frame["event"]) == set(perf.HW_EVENTS)
    assert frame["value"].isna().all() and frame["per_update"].isna().all()
