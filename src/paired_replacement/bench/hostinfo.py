"""Host description: who measured a result, on what.

``host_id()`` names the host in every CSV row and in ``results/hosts/<host>/``: the short hostname
plus six hex digits of a hash of what tells machines apart (``machine_key()``), e.g. ``vm-3f2a1c``,
so that two generic machines both called "vm" never share a folder; ``host_label()`` is the
human name (the short hostname) shown next to it. Set ``PAIRED_REPLACEMENT_HOST`` to choose the id
(e.g. one id per node type on a cluster).
``host_info()`` is the JSON the ``hostinfo`` CLI writes; ``fingerprint()`` is what autotune results
are tied to (a JSON from another host is refused).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

HOST_ENV = "PAIRED_REPLACEMENT_HOST"
_SYS_CPU = Path("/sys/devices/system/cpu")


#: files that hold an id of this OS installation (systemd / D-Bus machine id)
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_SYS_NET = Path("/sys/class/net")


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def host_label() -> str:
    """The human name of this machine: its short hostname (not unique: many VMs are "vm")."""
    return _safe(socket.gethostname().split(".")[0] or "unknown-host")


def machine_key() -> str:
    """What tells this machine apart, stable across reboots: the OS installation's machine id,
    the MAC addresses of the physical network interfaces and the full hostname. Two clones of
    one VM image with equal hostnames, machine ids and MACs cannot be told apart: give them ids
    with PAIRED_REPLACEMENT_HOST."""
    parts = [socket.gethostname()]
    for name in MACHINE_ID_FILES:
        try:
            parts.append(Path(name).read_text().strip())
            break
        except OSError:
            continue
    try:
        for nic in sorted(_SYS_NET.iterdir()):
            if (nic / "device").exists():  # physical (or paravirtual) devices only
                parts.append((nic / "address").read_text().strip())
    except OSError:
        pass
    return "\n".join(parts)


def host_id() -> str:
    """Filesystem-safe host id ([A-Za-z0-9_.-]): PAIRED_REPLACEMENT_HOST when set, else
    ``<short hostname>-<6 hex digits of machine_key()>``."""
    chosen = os.environ.get(HOST_ENV)
    if chosen:
        return _safe(chosen)
    digest = hashlib.sha256(machine_key().encode()).hexdigest()[:6]
    return f"{host_label()}-{digest}"


def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                key, value = (part.strip() for part in line.split(":", 1))
                info.setdefault(key, value)  # first processor only
    except OSError:
        pass
    return info


def cpu_model() -> str:
    info = _cpuinfo()
    return info.get("model name") or info.get("Model") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """The SIMD-relevant ISA flags of this CPU (the full list is long and mostly irrelevant)."""
    info = _cpuinfo()
    flags = set((info.get("flags") or info.get("Features") or "").split())
    keep = re.compile(r"^(sse\d.*|ssse3|avx.*|fma|bmi\d|amx.*|asimd.*|sve.*|neon|erms|fsrm)$")
    return sorted(f for f in flags if keep.match(f))


def caches() -> list[dict]:
    """Cache levels of CPU 0 from sysfs: level, type, size, shared_cpu_list."""
    out = []
    for index in sorted(_SYS_CPU.glob("cpu0/cache/index*")):
        def read(name: str) -> str:
            try:
                return (index / name).read_text().strip()
            except OSError:
                return ""
        out.append({"level": read("level"), "type": read("type"), "size": read("size"),
                    "shared_cpu_list": read("shared_cpu_list")})
    return out


def _size_bytes(text: str) -> int:
    """'32768K' / '1M' / '512' (sysfs cache sizes) -> bytes; 0 when unreadable."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text or "")
    if not match:
        return 0
    return int(match.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match.group(2)]


def llc_bytes() -> int:
    """Size of the last-level cache CPU 0 sees (the highest level holding data), or 0 unknown."""
    levels = [(int(c["level"]), _size_bytes(c["size"])) for c in caches()
              if c["level"].isdigit() and c["type"] in ("Unified", "Data")]
    return max(levels)[1] if levels else 0


def governor() -> str:
    try:
        return (_SYS_CPU / "cpu0/cpufreq/scaling_governor").read_text().strip()
    except OSError:
        return "unreadable"


def memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return float("nan")


def compiler_version() -> str:
    cxx = os.environ.get("CXX", "c++")
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True,
                              check=True).stdout.splitlines()[0].strip()
    except (OSError, subprocess.CalledProcessError, IndexError):
        return "unknown"


def fingerprint() -> dict:
    """What must match for a tuned configuration to carry over: the host and its CPU."""
    return {"host_id": host_id(), "cpu_model": cpu_model(), "logical_cpus": os.cpu_count(),
            "machine": platform.machine()}


def host_info() -> dict:
    import torch

    return {
        **fingerprint(),
        "host_label": host_label(),
        "hostname": socket.gethostname(),
        "physical_cores": _physical_cores(),
        "isa_flags": isa_flags(),
        "caches": caches(),
        "memory_gib": memory_gib(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "governor": governor(),
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "compiler": compiler_version(),
    }


def _thread_cpu_clock(tid: int) -> int:
    # Linux's clock id of another thread's CPU clock (MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)):
    # read with clock_gettime it includes the running slice, unlike /proc's schedstat.
    return (~tid << 3) | 6


def thread_cpu_ns() -> dict[str, int]:
    """CPU time used so far by each thread of this process, in ns, by thread id.

    The way to verify that work ran in parallel: take it before and after, and compare the
    per-thread differences. Reads each thread's CPU clock (exact to the ns), falling back to
    /proc/self/task/*/schedstat (updated at scheduler ticks). Linux only; {} elsewhere.
    """
    out: dict[str, int] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            out[tid] = time.clock_gettime_ns(_thread_cpu_clock(int(tid)))
        except (OSError, OverflowError, AttributeError):
            try:
                with open(f"/proc/self/task/{tid}/schedstat") as f:
                    out[tid] = int(f.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # the thread ended meanwhile
    return out


def _physical_cores() -> int | None:
    info = Path("/proc/cpuinfo")
    try:
        pairs = set(re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)",
                               info.read_text(), flags=re.S))
    except OSError:
        return None
    return len(pairs) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paired_replacement.bench hostinfo",
                                     description="Write this host's description as JSON.")
    parser.add_argument("--out", help="output JSON (default: stdout)")
    args = parser.parse_args(argv)
    text = json.dumps(host_info(), indent=2) + "\n"
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
