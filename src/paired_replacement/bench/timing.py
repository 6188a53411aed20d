"""Interleaved timing: the methods of one configuration take turns, in several fresh processes.

pyperf times one benchmark at a time, each in its own worker processes; on a shared host the load
drifts between benchmarks, so two methods measured minutes apart see different machines (the same
code once differed 3x that way here). This harness keeps pyperf's discipline -- calibrated loop
counts, discarded warm-ups, values from several fresh processes, pyperf JSON for the raw values --
but measures all methods of a configuration *in alternation*:

* A benchmark CLI describes its work as *groups* (one configuration each: a dict with a unique
  ``name``, the torch ``threads`` and whatever its module needs) and names a module with
  ``make_group(group) -> Group`` (see :class:`Group`).
* ``run_groups`` runs ``--processes`` worker processes one after the other
  (``python -m paired_replacement.bench._worker``). Each worker walks every group (odd workers in
  reverse order, so slow drift hits the groups evenly), builds its methods, and then, per group:
  runs the correctness gate (first worker only), calibrates one loop count per method (the
  smallest power of two whose loop takes ``min_time``), runs ``warmups`` discarded rounds, and then
  ``values`` rounds; a round times every method once, in a fresh random order. A value is seconds
  per operation (loop time / loops).
* Values of the same round are neighbours in time, so ratios between methods are formed round by
  round (paired samples, see :mod:`.stats`), and intervals resample processes first, then rounds.
* Each worker samples the host's load around every group (:mod:`.load`).

The workers stream one line per finished group; the master relays them with an ETA on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from .common import Progress

WORKER_MODULE = "paired_replacement.bench._worker"
DONE_PREFIX = "[group done] "  # a worker's progress line: DONE_PREFIX + JSON
MAX_LOOPS = 1 << 22


class Group(Protocol):
    """What a benchmark module's ``make_group(group)`` returns (one configuration, in a worker)."""

    #: method name -> one timed operation (an update, a decode step); each call advances that
    #: method's own walk through the configuration's sequence.
    operations: dict[str, Callable[[], Any]]
    #: optional: method name -> called, untimed, before each of that method's values (e.g. to put
    #: a shared object into the method's settings). Absent or empty: nothing is called.
    before_value: dict[str, Callable[[], Any]]

    def check(self) -> None:
        """The correctness gate: raise common.CorrectnessError before anything is timed."""


@dataclass
class MethodValues:
    loops: list[int] = field(default_factory=list)  # per process
    values: list[list[float]] = field(default_factory=list)  # per process, per round: s / op
    warmups: list[list[float]] = field(default_factory=list)


@dataclass
class GroupResult:
    name: str
    methods: dict[str, MethodValues] = field(default_factory=dict)
    load: list[dict] = field(default_factory=list)  # per process (see load.LoadProbe)
    gate_seconds: float = 0.0
    info: dict = field(default_factory=dict)  # what the group's worker reported (first process)


def calibrate(op: Callable[[], Any], min_time: float) -> int:
    """Smallest power of two of operations whose run takes at least ``min_time`` seconds."""
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            op()
        if time.perf_counter() - t0 >= min_time or loops >= MAX_LOOPS:
            return loops
        loops *= 2


def time_loops(op: Callable[[], Any], loops: int) -> float:
    """Seconds per operation over ``loops`` back-to-back operations."""
    clock = time.perf_counter
    t0 = clock()
    for _ in range(loops):
        op()
    return (clock() - t0) / loops


def measure(operations: dict[str, Callable[[], Any]], *, values: int, warmups: int,
            min_time: float, fixed_loops: int, rng,
            before_value: dict[str, Callable[[], Any]] | None = None) -> dict[str, dict]:
    """Interleaved rounds over ``operations``; returns {method: {loops, values, warmups}}."""
    names = list(operations)
    before = before_value or {}
    nothing = lambda: None  # noqa: E731
    loops = {}
    for n in names:
        if fixed_loops:
            loops[n] = fixed_loops
        else:
            before.get(n, nothing)()
            loops[n] = calibrate(operations[n], min_time)
    out = {n: {"loops": loops[n], "values": [], "warmups": []} for n in names}
    for round_index in range(warmups + values):
        for i in rng.permutation(len(names)):
            name = names[i]
            before.get(name, nothing)()
            value = time_loops(operations[name], loops[name])
            out[name]["warmups" if round_index < warmups else "values"].append(value)
    return out


def run_groups(module: str, groups: list[dict], *, pyperf_json: Path, options: dict,
               build_dir: str | None = None, quiet: bool = False,
               label: str = "bench") -> dict[str, GroupResult]:
    """Times every group in ``options['processes']`` worker processes; see the module doc."""
    names = [g["name"] for g in groups]
    if len(set(names)) != len(names):
        raise ValueError("group names must be unique")
    pyperf_json = Path(pyperf_json)
    pyperf_json.parent.mkdir(parents=True, exist_ok=True)
    spec_path = pyperf_json.with_suffix(".spec.json")
    spec_path.write_text(json.dumps({"module": module, "build_dir": build_dir, "groups": groups,
                                     "options": options}, indent=1))
    processes = int(options["processes"])
    progress = Progress(len(groups) * processes, label, quiet)
    results = {name: GroupResult(name) for name in names}
    for process in range(processes):
        part = pyperf_json.with_suffix(f".process{process}.json")
        part.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", WORKER_MODULE, "--spec", str(spec_path), "--process",
               str(process), "--out", str(part)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=os.environ.copy())
        tail: list[str] = []
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line])[-40:]
            if line.startswith(DONE_PREFIX):
                done = json.loads(line[len(DONE_PREFIX):])
                load = done["load"]
                busy = " HOST BUSY" if load["busy"] else ""
                progress.step(f"{done['name']} (process {process + 1}/{processes}, "
                              f"{done['seconds']:.1f} s, others used {load['others_busy_cores']:.2f}"
                              f" cores, steal {load['steal_percent']:.1f}%{busy})")
                if load["busy"]:
                    print(f"[{label}] warning: the host was busy while {done['name']} was measured "
                          f"(other processes used {load['others_busy_cores']:.2f} cores, steal "
                          f"{load['steal_percent']:.1f}%); its rows are flagged", file=sys.stderr,
                          flush=True)
            elif not quiet and line.strip():
                print(f"[{label} worker {process}] {line.rstrip()}", file=sys.stderr, flush=True)
        if proc.wait() != 0:
            raise RuntimeError(f"worker {process} of {module} failed (exit {proc.returncode}):\n"
                               + "".join(tail))
        for entry in json.loads(part.read_text())["groups"]:
            result = results[entry["name"]]
            for name, got in entry["methods"].items():
                mv = result.methods.setdefault(name, MethodValues())
                mv.loops.append(got["loops"])
                mv.values.append(got["values"])
                mv.warmups.append(got["warmups"])
            result.load.append(entry["load"])
            result.gate_seconds += entry.get("gate_seconds", 0.0)
            if process == 0:
                result.info = entry.get("info", {})
        part.unlink()
    write_pyperf_json(results, pyperf_json)
    return results


def write_pyperf_json(results: dict[str, GroupResult], path: Path) -> None:
    """The raw values as a pyperf suite: benchmark ``<method>/<group>``, one run per process."""
    import pyperf

    benchmarks = []
    for group in results.values():
        for method, mv in group.methods.items():
            runs = [pyperf.Run(values, warmups=[(loops, w) for w in warmups],
                               metadata={"name": f"{method}/{group.name}", "loops": loops,
                                         "unit": "second"}, collect_metadata=False)
                    for loops, values, warmups in zip(mv.loops, mv.values, mv.warmups)]
            benchmarks.append(pyperf.Benchmark(runs))
    tmp = path.with_suffix(".tmp")
    pyperf.BenchmarkSuite(benchmarks).dump(str(tmp), replace=True)
    tmp.replace(path)
