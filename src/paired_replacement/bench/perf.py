"""``perf``: counters of the timed cache updates only (not start-up, data setup or the build).

The workload is ``csrc/tools/perf_driver.cpp``, a standalone single-threaded C++17 program over the
header-only core (no torch, no Python in the counted process). For one configuration it builds
random fp32 weights and a cache, pre-generates a seeded chain of masks (each swaps k active rows for
k inactive ones; the same chain for both methods), then runs U updates: method ``paired`` with
hybrid_tau_frac = 1e9 (every update is paired: k rows written) and ``rebuild`` with tau = 0 (every
update gathers all m rows). The driver is compiled here with ``g++ -std=c++17 -O2`` and *generic*
flags (no -march=native, so valgrind can run it) into a cache folder, reused while the sources,
flags and compiler are unchanged. Before counting, both methods run natively once with the
invariant check on: rows written must be k·U and m·U and the packed blocks must hold the same rows
(order-independent checksum), else the command fails (a wrong answer is never counted).

Counter sources (``--source auto`` tries them in this order; a forced one is used alone):

* ``hw`` — ``perf stat`` with hardware events, when ``perf stat -e instructions true`` reports a
  real count. The counters start disabled (``--delay=-1``); the driver enables them through
  ``--control fd:CTL,ACK`` (it writes ``enable``/``disable`` and waits for perf's ``ack``) right
  around the update loop, so only the updates are counted. Events perf reports as
  ``<not supported>``/``<not counted>`` are rows with source hw and an empty value.
* ``cachegrind`` — valgrind's simulated caches (``--cache-sim=yes``) with a fixed geometry by default
  (FIXED_GEOMETRY: 32 KiB L1s and a 1 MiB LL, smaller than the bytes the counted updates touch at
  the default shape, so last-level misses are real; a 32 MiB LL held everything and counted none)
  so that hosts compare; valgrind would otherwise derive it from the CPUID, which gives odd results
  on some VMs. The command warns when a configuration's updates fit the simulated LL (the CSV's
  ``sim_ll_bytes`` and ``bytes_per_update`` let a reader check). Valgrind 3.19 has no client request to start
  instrumentation late, so each method runs twice with the same seed and the same pre-generated
  chain: once with ``--updates U`` and once with ``--updates 0`` (zero-padded to the same argv
  length), and the counts of the U updates are the difference. The setup is deterministic, so the
  difference is exact for Ir up to a few hundred instructions of output formatting; miss counts
  also carry the updates' effect on the cache state seen by the final checksum. Events: Ir, Dr, Dw,
  D1mr, D1mw, DLmr, DLmw (simulated on the CPU valgrind presents, which lacks AVX-512: glibc's
  memcpy variant may differ from a native run).
* ``unavailable`` — neither works: rows carry the event names of the first source asked for and
  empty values. Lack of counters never fails the command (exit 0, with a warning line).

What is counted: ``paired`` is the cache's paired update (k rows written per buffer); ``rebuild``
is the core's own full gather of all m rows (a memcpy per row, the same copy code as the ``micro``
benchmark's ``rebuild_floor``): the torch-free equivalent of that floor, *not* ``index_select``,
whose ATen kernel a torch-free driver cannot run.

One row per (configuration, method, event) with ``value`` (total over the U updates) and
``per_update``; the meta columns describe the driver (compiler, flags, SIMD level, binary), not
the torch extension; ``threads`` is 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from . import common, hostinfo

HW_EVENTS = ("cycles", "instructions", "cache-references", "cache-misses", "LLC-loads",
             "LLC-load-misses")
CACHEGRIND_EVENTS = ("Ir", "Dr", "Dw", "D1mr", "D1mw", "DLmr", "DLmw")
METHODS = ("paired", "rebuild")
SOURCES = ("hw", "cachegrind")
CXXFLAGS = ("-std=c++17", "-O2")  # generic on purpose: valgrind must be able to run the binary
DRIVER_SOURCE = Path("csrc/tools/perf_driver.cpp")
CORE_HEADER = Path("csrc/paired_replacement/weight_cache.hpp")
INCLUDE_DIR = Path("csrc")


class CounterError(RuntimeError):
    """A counter source could not count this run (the command falls back, it does not fail)."""


def warn(message: str) -> None:
    print(f"perf: warning: {message}", file=sys.stderr, flush=True)


# Simulated caches of a typical server core, identical on every host so cachegrind counts compare
# (valgrind derives odd geometries from some VMs' CPUID, e.g. a 320 MB direct-mapped LL here).
FIXED_GEOMETRY = "--I1=32768,8,64 --D1=32768,8,64 --LL=1048576,16,64"


def simulated_ll_bytes(cachegrind_args: str) -> int:
    """The LL size an --LL=size,assoc,line option sets, or 0 when the geometry is the host's."""
    match = re.search(r"--LL=(\d+),", cachegrind_args or "")
    return int(match.group(1)) if match else 0


@dataclass(frozen=True)
class Config:
    rows: int
    active: int
    k: int
    hidden: int
    gate: bool
    updates: int
    seed: int

    def driver_args(self, method: str, updates: str | None = None) -> list[str]:
        """Arguments of one driver run; ``updates`` (a string, may be zero-padded) defaults to U.
        The mask chain is always generated for U updates, so setup does not depend on it."""
        return ["--rows", str(self.rows), "--active", str(self.active), "--k", str(self.k),
                "--hidden", str(self.hidden), "--gate", "1" if self.gate else "0",
                "--updates", str(self.updates) if updates is None else updates,
                "--gen-updates", str(self.updates), "--method", method, "--seed", str(self.seed)]

    def expected_rows_written(self, method: str) -> int:
        if self.k == 0:
            return 0
        return self.updates * (self.k if method == "paired" else self.active)

    def label(self) -> str:
        return (f"N={self.rows} m={self.active} k={self.k} H={self.hidden} "
                f"gate={'on' if self.gate else 'off'} updates={self.updates} seed={self.seed}")


# ---------------------------------------------------------------------------------------------
# The driver: compile (cached by source hash) and run natively
# ---------------------------------------------------------------------------------------------
def compiler() -> str:
    return os.environ.get("CXX") or "g++"


def compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, check=True,
                              timeout=60).stdout.splitlines()[0].strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def driver_hash(cxx: str, root: Path = common.REPO_ROOT) -> str:
    """12 hex digits over the driver source, the core header, the flags and the compiler."""
    h = hashlib.sha256()
    for part in ((root / DRIVER_SOURCE).read_bytes(), (root / CORE_HEADER).read_bytes(),
                 " ".join(CXXFLAGS).encode(), cxx.encode(), compiler_version(cxx).encode()):
        h.update(len(part).to_bytes(8, "little") + part)
    return h.hexdigest()[:12]


def build_driver(driver_dir: str | os.PathLike, *, root: Path = common.REPO_ROOT,
                 cxx: str | None = None) -> Path:
    """Path of the compiled driver in ``driver_dir``, compiling it unless a binary with the same
    source hash is already there. Raises FileNotFoundError without the sources or the compiler,
    RuntimeError when the compile fails."""
    cxx = cxx or compiler()
    if shutil.which(cxx) is None:
        raise FileNotFoundError(f"compiler {cxx!r} not found on PATH")
    if not (root / DRIVER_SOURCE).is_file():
        raise FileNotFoundError(f"{root / DRIVER_SOURCE} is missing (the perf driver needs the "
                                "repository's csrc/, i.e. an editable install)")
    driver_dir = Path(driver_dir)
    exe = driver_dir / f"perf_driver-{driver_hash(cxx, root)}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    driver_dir.mkdir(parents=True, exist_ok=True)
    tmp = driver_dir / f".{exe.name}.{os.getpid()}.tmp"
    cmd = [cxx, *CXXFLAGS, "-I", str(root / INCLUDE_DIR), str(root / DRIVER_SOURCE), "-o", str(tmp)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"compiling the perf driver failed: {' '.join(cmd)}\n"
                           f"{proc.stderr[-4000:]}")
    os.replace(tmp, exe)
    return exe


def parse_driver_json(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if not lines:
        raise ValueError(f"the perf driver printed no JSON summary (stdout: {stdout[-500:]!r})")
    return json.loads(lines[-1])


def run_driver(driver: Path, args: list[str]) -> dict:
    """Runs the driver natively; returns its JSON summary. Raises RuntimeError when it fails."""
    proc = subprocess.run([str(driver), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"perf driver failed (exit {proc.returncode}): {driver} "
                           f"{' '.join(args)}\n"
                           f"{proc.stderr[-4000:]}")
    return parse_driver_json(proc.stdout)


def validate_config(driver: Path, cfg: Config) -> dict[str, dict]:
    """The correctness gate: both methods, natively, with the invariant check on."""
    summaries = {m: run_driver(driver, cfg.driver_args(m) + ["--check"]) for m in METHODS}
    for method, s in summaries.items():
        want = cfg.expected_rows_written(method)
        if s["rows_written"] != want:
            raise common.CorrectnessError(f"{method}: wrote {s['rows_written']} rows over "
                                          f"{cfg.updates} updates, expected {want} ({cfg.label()})")
    if summaries["paired"]["checksum"] != summaries["rebuild"]["checksum"]:
        raise common.CorrectnessError(f"paired and rebuild packed blocks differ ({cfg.label()}); "
                                      "refusing to count a wrong answer")
    return summaries


# ---------------------------------------------------------------------------------------------
# Source hw: perf stat with a control pipe
# ---------------------------------------------------------------------------------------------
_NOT_COUNTED = ("<not supported>", "<not counted>")


def _base_event(name: str) -> str:
    """'cpu_core/cycles/u' -> 'cycles', 'cycles:u' -> 'cycles'."""
    name = name.strip()
    match = re.fullmatch(r"[^/]+/([^/]+)/[a-zA-Z]*", name)
    if match:
        name = match.group(1)
    return name.split(":", 1)[0]


def parse_perf_csv(text: str, events: tuple[str, ...] | list[str]) -> dict[str, float | None]:
    """Counts of ``events`` from ``perf stat -x,`` output; None where not supported/counted.
    Lines of one event on several PMUs (hybrid CPUs: cpu_core/..., cpu_atom/...) are summed."""
    counts: dict[str, float | None] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(",")
        if len(fields) < 3:
            continue
        event = _base_event(fields[2])
        if event not in events:
            continue
        raw = fields[0].strip()
        try:
            value = float(raw)
        except ValueError:
            if raw in _NOT_COUNTED or raw.startswith("<"):
                counts.setdefault(event, None)
                continue
            raise
        counts[event] = (counts.get(event) or 0.0) + value
    return {e: counts.get(e) for e in events}


def probe_hw(events: tuple[str, ...] | list[str]) -> str | None:
    """None when ``perf stat -e <probe event> true`` reports a real count, else the reason.
    The probe event is 'instructions' for the default events, else the first one of ``events``
    (so ``--hw-events task-clock,...`` exercises the hw path on a host without a PMU)."""
    perf = shutil.which("perf")
    if perf is None:
        return "perf is not on PATH"
    probe = "instructions" if tuple(events) == HW_EVENTS else events[0]
    try:
        proc = subprocess.run([perf, "stat", "-x,", "-e", probe, "true"], capture_output=True,
                              text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"perf stat failed to run ({exc})"
    if proc.returncode != 0:
        return f"perf stat -e {probe} failed: {proc.stderr.strip()[-300:]}"
    try:
        value = parse_perf_csv(proc.stderr, [probe])[probe]
    except ValueError:
        value = None
    if value is None:
        return f"perf stat -e {probe} reports no count (<not supported>: no PMU access here)"
    return None


def count_hw(driver: Path, cfg: Config, method: str, events: tuple[str, ...]) -> tuple[dict, dict]:
    """Counts of ``events`` over the U updates of one method, and the driver's JSON summary."""
    perf = shutil.which("perf")
    if perf is None:
        raise CounterError("perf is not on PATH")
    with tempfile.TemporaryDirectory(prefix="perf-stat-") as tmp:
        stat_file = Path(tmp) / "stat.csv"
        ctl_r, ctl_w = os.pipe()  # driver writes enable/disable -> perf reads
        ack_r, ack_w = os.pipe()  # perf writes ack -> driver reads
        fds = (ctl_r, ctl_w, ack_r, ack_w)
        cmd = [perf, "stat", "-x,", "-o", str(stat_file), f"--control=fd:{ctl_r},{ack_w}",
               "-D", "-1", "-e", ",".join(events), "--", str(driver), *cfg.driver_args(method),
               "--ctl-fd", str(ctl_w), "--ack-fd", str(ack_r)]
        try:
            proc = subprocess.Popen(cmd, pass_fds=fds, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        except OSError as exc:
            raise CounterError(f"could not start perf stat ({exc})") from exc
        finally:
            for fd in fds:  # only perf and the driver keep the pipe ends
                os.close(fd)
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise CounterError(f"perf stat run failed (exit {proc.returncode}): "
                               f"{stderr.strip()[-1500:]}")
        try:
            summary = parse_driver_json(stdout)
            counts = parse_perf_csv(stat_file.read_text(), events)
        except (OSError, ValueError) as exc:
            raise CounterError(f"unreadable perf stat output ({exc})") from exc
    if not summary.get("controlled"):
        raise CounterError("the driver did not run under the control protocol")
    return counts, summary


# ---------------------------------------------------------------------------------------------
# Source cachegrind: two runs, subtract
# ---------------------------------------------------------------------------------------------
def parse_cachegrind_out(text: str) -> dict[str, int]:
    """Totals from a cachegrind out file ('events:' names, 'summary:' (or 'totals:') counts)."""
    names: list[str] | None = None
    totals: list[int] | None = None
    for line in text.splitlines():
        if line.startswith("events:"):
            names = line.split(":", 1)[1].split()
        elif line.startswith(("summary:", "totals:")):
            totals = [int(x) for x in line.split(":", 1)[1].split()]
    if not names or totals is None:
        raise ValueError("no 'events:'/'summary:' lines in the cachegrind output")
    totals += [0] * (len(names) - len(totals))  # trailing zero counts may be omitted
    return dict(zip(names, totals))


def probe_cachegrind() -> str | None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return "valgrind is not on PATH"
    try:
        proc = subprocess.run([valgrind, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"valgrind failed to run ({exc})"
    if proc.returncode != 0:
        return f"valgrind --version failed: {proc.stderr.strip()[-300:]}"
    return None


def _cachegrind_run(driver: Path, args: list[str], extra: list[str]) -> tuple[dict, dict]:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise CounterError("valgrind is not on PATH")
    with tempfile.TemporaryDirectory(prefix="cachegrind-") as tmp:
        out_file = Path(tmp) / "cachegrind.out"
        cmd = [valgrind, "--tool=cachegrind", "--cache-sim=yes",
               f"--cachegrind-out-file={out_file}", *extra, str(driver), *args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise CounterError(f"valgrind run failed (exit {proc.returncode}): "
                               f"{proc.stderr.strip()[-1500:]}")
        try:
            return parse_cachegrind_out(out_file.read_text()), parse_driver_json(proc.stdout)
        except (OSError, ValueError) as exc:
            raise CounterError(f"unreadable cachegrind output ({exc})") from exc


def count_cachegrind(driver: Path, cfg: Config, extra: list[str],
                     pool: ThreadPoolExecutor) -> dict[str, tuple[dict, dict]]:
    """Counts over the U updates of each method: (run with U updates) - (run with 0 updates);
    the four valgrind runs go to ``pool`` together. Returns {method: (counts, driver summary)}."""
    zero = "0" * len(str(cfg.updates))  # same argv length: same stack layout, same parse cost
    futures = {(m, u): pool.submit(_cachegrind_run, driver, cfg.driver_args(m, u), extra)
               for m in METHODS for u in (None, zero)}
    done = {key: f.result() for key, f in futures.items()}
    out = {}
    for method in METHODS:
        (with_updates, summary), (setup_only, _) = done[(method, None)], done[(method, zero)]
        missing = [e for e in CACHEGRIND_EVENTS if e not in with_updates]
        if missing:
            raise CounterError(f"cachegrind output lacks events {missing}")
        diff = {e: float(with_updates[e] - setup_only.get(e, 0)) for e in CACHEGRIND_EVENTS}
        out[method] = (diff, summary)
    return out


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.bench perf",
        description="Hardware (perf stat) or simulated (cachegrind) counters of the cache updates "
                    "only, for a paired update (tau=1e9) and a full rebuild (tau=0). The counted "
                    "program is a single-threaded C++ driver (threads column = 1) compiled with "
                    "generic flags; see the module docstring for how setup is excluded.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    shape = p.add_argument_group("configuration (defaults sized for valgrind on 2 cores)")
    shape.add_argument("--rows", type=int, default=2048, help="N, neurons")
    shape.add_argument("--active", type=int, default=512, help="m, active rows")
    shape.add_argument("--k", type=int, nargs="+", default=[64],
                       help="rows swapped per update; several values give one configuration each")
    shape.add_argument("--hidden", type=int, default=256, help="H, hidden size")
    shape.add_argument("--gate", default="on", help="on|off: whether the FFN has a gate matrix")
    shape.add_argument("--updates", type=int, default=20, help="U, updates counted per method")
    shape.add_argument("--seed", type=int, default=0, help="seed of the weights and mask chain")
    src = p.add_argument_group("counters")
    src.add_argument("--source", choices=("auto", "hw", "cachegrind", "none"), default="auto",
                     help="auto: hw if perf counts, else cachegrind, else unavailable; none: "
                          "write 'unavailable' rows without counting")
    src.add_argument("--hw-events", default=",".join(HW_EVENTS),
                     help="perf stat events of source hw (comma-separated)")
    src.add_argument("--cachegrind-args", default=FIXED_GEOMETRY,
                     help="valgrind options; the default fixes the simulated geometry (32 KiB "
                          "8-way L1s, 1 MiB 16-way LL: below the bytes the updates touch) so "
                          "hosts compare; pass "
                          "--cachegrind-args='' for the host-derived one (with '=': the value "
                          "starts with --)")
    src.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                     help="concurrent valgrind runs (simulated counts do not depend on it; perf "
                          "stat runs are always sequential)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="CSV to write (schema 'perf')")
    out.add_argument("--driver-dir", help="where the compiled driver is cached "
                                          "(default: perf_driver/ next to --out)")
    out.add_argument("--quiet", action="store_true", help="no progress lines and no table")
    args = p.parse_args(argv)
    try:
        args.gate = common.parse_bool_list([args.gate])[0]
    except argparse.ArgumentTypeError as exc:
        p.error(f"--gate: {exc}")
    args.hw_events = tuple(e.strip() for e in args.hw_events.split(",") if e.strip())
    if not args.hw_events:
        p.error("--hw-events: no events")
    for name in ("rows", "hidden", "updates", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.active <= args.rows:
        p.error("--active must be in [0, rows]")
    for k in args.k:
        if not 0 <= k <= min(args.active, args.rows - args.active):
            p.error(f"--k {k} must be in [0, min(active, rows - active)]")
    return args


def bytes_per_update(cfg: Config, method: str) -> int:
    """Bytes one counted update reads and writes: k (paired) or m (rebuild) rows of gate|up and
    down^T, read from the pool and written to the packed block (float32)."""
    rows = cfg.k if method == "paired" else cfg.active
    return 2 * rows * (3 if cfg.gate else 2) * cfg.hidden * 4


def _row(meta: dict, cfg: Config, method: str, source: str, event: str,
         value: float | None, sim_ll: int) -> dict:
    config = {"benchmark": "perf", **asdict(cfg), "dtype": "float32", "source": source}
    return {**meta, "threads": 1, "config_hash": common.config_hash(config), "benchmark": "perf",
            "method": method, "N": cfg.rows, "m": cfg.active, "k": cfg.k, "hidden": cfg.hidden,
            "gate": cfg.gate, "dtype": "float32", "updates": cfg.updates, "source": source, "event": event,
            "value": value, "per_update": None if value is None else value / cfg.updates,
            "sim_ll_bytes": sim_ll if source == "cachegrind" else 0,
            "bytes_per_update": bytes_per_update(cfg, method)}


def _metadata(driver: Path | None, simd: str | None, cxx: str) -> dict:
    """common.run_metadata(), with the build columns describing the counted driver instead of the
    torch extension (falls back to the host columns alone when the extension cannot load)."""
    try:
        meta = common.run_metadata()
    except Exception as exc:  # noqa: BLE001 - the perf command does not need the extension
        warn(f"run metadata without the torch extension ({exc})")
        try:
            from importlib.metadata import version
            torch_version = version("torch")
        except Exception:  # noqa: BLE001
            torch_version = "unknown"
        import time
        meta = {"host_id": hostinfo.host_id(), "cpu_model": hostinfo.cpu_model(),
                "torch_version": torch_version, "git_commit": common.git_commit(),
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if simd is None:
        machine = platform.machine().lower()
        simd = "sse2" if machine in ("x86_64", "amd64") else "portable"
    meta.update({"compiler": compiler_version(cxx), "build_flags": ",".join(CXXFLAGS),
                 "simd": simd, "build_source": str(driver) if driver else "not built"})
    return meta


def _fmt(v: float | None) -> str:
    if v is None or v != v:
        return "n/a"
    return f"{v:,.1f}" if abs(v) >= 100 else f"{v:.4g}"


def print_table(rows: list[dict]) -> None:
    """Per configuration: per-update counts of both methods and their ratio, one line per event."""
    configs: dict[str, list[dict]] = {}
    for r in rows:
        configs.setdefault(r["config_hash"], []).append(r)
    for group in configs.values():
        first = group[0]
        print(f"\nperf  N={first['N']} m={first['m']} k={first['k']} H={first['hidden']} "
              f"updates={first['updates']}  source={first['source']}")
        per = {(r["method"], r["event"]): r["per_update"] for r in group}
        events = list(dict.fromkeys(r["event"] for r in group))
        print(f"  {'event':<18}{'paired/update':>16}{'rebuild/update':>16}{'paired/rebuild':>16}")
        for e in events:
            a, b = per.get(("paired", e)), per.get(("rebuild", e))
            ratio = "n/a" if a is None or b in (None, 0) else f"{a / b:.3f}"
            print(f"  {e:<18}{_fmt(a):>16}{_fmt(b):>16}{ratio:>16}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [Config(args.rows, args.active, k, args.hidden, args.gate, args.updates, args.seed)
               for k in args.k]
    candidates = {"auto": ["hw", "cachegrind"], "hw": ["hw"], "cachegrind": ["cachegrind"],
                  "none": []}[args.source]
    fallback_events = CACHEGRIND_EVENTS if args.source == "cachegrind" else args.hw_events
    cxx = compiler()

    def say(msg: str) -> None:
        if not args.quiet:
            print(f"perf: {msg}", file=sys.stderr, flush=True)

    # Which sources can count here at all (probes are cheap; a failing real run also falls back).
    usable = []
    for source in candidates:
        reason = probe_hw(args.hw_events) if source == "hw" else probe_cachegrind()
        if reason is None:
            usable.append(source)
        else:
            (warn if args.source != "auto" or source == candidates[-1] else say)(
                f"source {source} unavailable: {reason}")

    driver: Path | None = None
    if usable:
        driver_dir = (Path(args.driver_dir) if args.driver_dir
                      else Path(args.out).resolve().parent / "perf_driver")
        try:
            driver = build_driver(driver_dir, cxx=cxx)
        except FileNotFoundError as exc:
            warn(f"cannot build the perf driver ({exc}); no counters")
            usable = []
        else:
            say(f"driver {driver}")

    rows: list[dict] = []
    simd = None
    pending: list[tuple[Config, str, str, dict | None]] = []  # (cfg, method, source, counts)
    extra = shlex.split(args.cachegrind_args)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for cfg in configs:
            if driver is not None:
                summaries = validate_config(driver, cfg)
                simd = summaries["paired"].get("simd", simd)
            results: dict[str, tuple[str, dict | None]] = {}
            while usable and not results:
                source = usable[0]
                try:
                    if source == "hw":  # sequential: concurrent runs would disturb the counts
                        counted = {m: count_hw(driver, cfg, m, args.hw_events) for m in METHODS}
                    else:
                        counted = count_cachegrind(driver, cfg, extra, pool)
                    for method, (_, summary) in counted.items():
                        if summary["rows_written"] != cfg.expected_rows_written(method):
                            raise common.CorrectnessError(
                                f"{method} under {source} wrote {summary['rows_written']} rows, "
                                f"expected {cfg.expected_rows_written(method)} ({cfg.label()})")
                    results = {m: (source, c) for m, (c, _) in counted.items()}
                except CounterError as exc:
                    warn(f"source {source} failed ({exc}); trying the next one")
                    usable.pop(0)
                    results = {}
            if not results:
                results = {m: ("unavailable", None) for m in METHODS}
            for method in METHODS:
                source, counts = results[method]
                pending.append((cfg, method, source, counts))
            say(f"counted {cfg.label()}: source {results['paired'][0]}")

    if args.source == "none":
        warn("--source none: rows are marked 'unavailable' with empty values")
    elif all(src == "unavailable" for _, _, src, _ in pending):
        warn("no counter source available here: rows are marked 'unavailable' with empty values")
    meta = _metadata(driver, simd, cxx)
    sim_ll = simulated_ll_bytes(args.cachegrind_args)
    for cfg, method, source, counts in pending:
        if source == "cachegrind" and sim_ll and bytes_per_update(cfg, method) * cfg.updates <= sim_ll:
            warn(f"{method} {cfg.label()}: its {cfg.updates} updates touch at most "
                 f"{bytes_per_update(cfg, method) * cfg.updates} bytes, which fit the simulated "
                 f"{sim_ll}-byte LL: its last-level misses say little")
        events = fallback_events if counts is None else list(counts)
        for event in events:
            rows.append(_row(meta, cfg, method, source, event,
                             None if counts is None else counts[event], sim_ll))
    common.write_csv(rows, args.out, "perf")
    if not args.quiet:
        print_table(rows)
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
