"""pyperf owns the loop: calibration, warm-ups, several worker processes.

A benchmark CLI describes its measurements as *tasks* (plain dicts with a unique ``name``) and
names a module with a ``make_timer(task, spec)`` function. ``run_tasks`` writes them to a spec
file and runs ``python -m paired_replacement.bench._worker`` as a pyperf master, which spawns
worker processes; each worker builds the task's data lazily (outside the timed interval) and
returns the seconds its ``loops`` iterations took. The raw values come back from pyperf's JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .common import Progress

WORKER_MODULE = "paired_replacement.bench._worker"
# Variables the workers need (pyperf starts them with a minimal environment otherwise).
INHERITED_ENV = ["PAIRED_REPLACEMENT_BUILD_DIR", "PAIRED_REPLACEMENT_HOST", "WEIGHT_CACHE_GRAIN",
                 "WEIGHT_CACHE_PAR_THRESHOLD", "WEIGHT_CACHE_HYBRID_TAU_FRAC", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "PYTHONPATH",
                 "LD_LIBRARY_PATH"]


class LazyTimer:
    """Callable(loops) -> seconds for pyperf; builds its state on the first call, untimed."""

    def __init__(self, setup: Callable[[], Callable[[int], float]]) -> None:
        self._setup = setup
        self._run: Callable[[int], float] | None = None

    def __call__(self, loops: int) -> float:
        if self._run is None:
            self._run = self._setup()
        return self._run(loops)


def run_tasks(module: str, tasks: list[dict], *, pyperf_json: Path, options: dict,
              build_dir: str | None = None, quiet: bool = False, label: str = "bench") -> dict[str, list[float]]:
    """Times every task with pyperf; returns {task name: values in seconds per loop}."""
    names = [t["name"] for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError("task names must be unique")
    pyperf_json = Path(pyperf_json)
    pyperf_json.parent.mkdir(parents=True, exist_ok=True)
    spec_path = pyperf_json.with_suffix(".spec.json")
    spec_path.write_text(json.dumps({"module": module, "build_dir": build_dir, "tasks": tasks},
                                    indent=1))
    if pyperf_json.exists():
        pyperf_json.unlink()
    inherit = [v for v in INHERITED_ENV if v in os.environ]
    cmd = [sys.executable, "-m", WORKER_MODULE, "--spec", str(spec_path), "-o", str(pyperf_json),
           "--processes", str(options["processes"]), "--values", str(options["values"]),
           "--warmups", str(options["warmups"]), "--min-time", str(options["min_time"]),
           "--loops", str(options.get("loops", 0))]  # 0: pyperf calibrates the loop count
    if inherit:
        cmd += ["--inherit-environ", ",".join(inherit)]
    progress = Progress(len(tasks), label, quiet)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # pyperf prints "<name>: Mean +- std dev: ..." per finished task
        tail = (tail + [line])[-40:]
        name = line.split(":", 1)[0].strip()
        if name in names and line.startswith(name + ":") and "WARNING" not in line:
            progress.step(line.strip())
    if proc.wait() != 0:
        raise RuntimeError(f"pyperf run of {module} failed (exit {proc.returncode}):\n" + "".join(tail))
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(pyperf_json))
    return {bench.get_name(): list(bench.get_values()) for bench in suite.get_benchmarks()}
