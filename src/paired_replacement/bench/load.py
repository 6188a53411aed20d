"""How busy the host was while something was measured (the machines here are shared).

A :class:`LoadProbe` is started before a measurement and stopped after it. It reports the 1-minute
load average at both ends and, over the interval, the CPU time that *other* processes used
(``others_busy_cores``: busy CPU time of the whole host from /proc/stat minus this process's own
CPU time, divided by the wall time) and the share of time the hypervisor stole from this VM. The
load average lags by a minute and counts our own threads; the difference of CPU times does not,
so it is what decides ``busy``. Linux only: elsewhere the numbers are NaN and ``busy`` is False.
"""

from __future__ import annotations

import math
import os
import time

# A measurement is flagged when other processes used more than this many cores on average, or
# when the hypervisor stole more than this share of the CPU time.
BUSY_OTHER_CORES = 0.25
BUSY_STEAL_PERCENT = 5.0


def _proc_stat() -> tuple[float, float, float] | None:
    """(busy, steal, total) CPU seconds of the whole host since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq = fields[:7]
    steal = fields[7] if len(fields) > 7 else 0.0
    busy = user + nice + system + irq + softirq
    total = busy + idle + iowait + steal
    return busy / tick, steal / tick, total / tick


def _loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return math.nan


class LoadProbe:
    """Started on construction; :meth:`stop` returns the sample of the interval."""

    def __init__(self) -> None:
        self.load_before = _loadavg()
        self.stat_before = _proc_stat()
        self.own_before = _own_cpu()
        self.wall_before = time.monotonic()

    def stop(self) -> dict:
        stat, own, wall = _proc_stat(), _own_cpu(), time.monotonic()
        sample = {"load_before": self.load_before, "load_after": _loadavg(),
                  "others_busy_cores": math.nan, "steal_percent": math.nan, "busy": False}
        if stat is not None and self.stat_before is not None and wall > self.wall_before:
            d_busy = stat[0] - self.stat_before[0]
            d_steal = stat[1] - self.stat_before[1]
            d_total = stat[2] - self.stat_before[2]
            others = max(0.0, d_busy - (own - self.own_before)) / (wall - self.wall_before)
            steal = 100.0 * d_steal / d_total if d_total > 0 else 0.0
            sample.update(others_busy_cores=others, steal_percent=steal,
                          busy=bool(others > BUSY_OTHER_CORES or steal > BUSY_STEAL_PERCENT))
        return sample


def _own_cpu() -> float:
    """CPU seconds of this process, all threads (user + system)."""
    t = os.times()
    return t.user + t.system


def combine(samples: list[dict]) -> dict:
    """One row's load columns from the samples of several processes: the worst of each."""
    def worst(key: str, pick=max) -> float:
        values = [s[key] for s in samples if not math.isnan(s[key])]
        return pick(values) if values else math.nan

    return {"load_before": worst("load_before"), "load_after": worst("load_after"),
            "others_busy_cores": worst("others_busy_cores"),
            "steal_percent": worst("steal_percent"),
            "busy": any(s["busy"] for s in samples)}
