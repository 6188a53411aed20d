"""``python -m paired_replacement.bench <command> [options]`` — see each command's --help."""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import json
import os
import sys
import time
from pathlib import Path

COMMANDS = {
    "micro": ("paired_replacement.bench.micro", "main", "update cost vs k, every method, same masks"),
    "e2e": ("paired_replacement.bench.e2e", "main", "decode steps of a sparse SwiGLU FFN"),
    "sweep": ("paired_replacement.bench.e2e", "main_sweep", "e2e over m x batch (x hidden)"),
    "autotune": ("paired_replacement.bench.autotune", "main", "search grain x threshold x tau"),
    "perf": ("paired_replacement.bench.perf", "main", "counters of the timed updates only"),
    "hostinfo": ("paired_replacement.bench.hostinfo", "main", "this host's description (JSON)"),
}


#: commands that measure (hostinfo only describes): one at a time per results folder
MEASURING = {"micro", "e2e", "sweep", "autotune", "perf"}
#: the lock file in the folder of --out (results/hosts/<host>/): one benchmark per host
LOCK_NAME = ".bench.lock"
#: exit status when the lock is held by another benchmark
LOCKED_EXIT = 3


class BenchmarkLocked(RuntimeError):
    """Another benchmark holds the host's lock."""


def out_folder(argv: list[str]) -> Path | None:
    """The folder of ``--out PATH`` / ``--out=PATH`` in ``argv`` (None without one)."""
    for i, word in enumerate(argv):
        if word == "--out" and i + 1 < len(argv):
            return Path(argv[i + 1]).parent
        if word.startswith("--out="):
            return Path(word[len("--out="):]).parent
    return None


@contextlib.contextmanager
def host_lock(folder: Path, command: str):
    """Holds an exclusive ``flock`` on ``folder/.bench.lock`` for the benchmark's lifetime.

    Two benchmarks of one host must never overlap: they would disturb each other's timings and
    write the same side files. Snakemake's bench_slot only orders jobs inside one Snakemake
    process; this lock also holds across processes (an orphaned benchmark of a killed run, a
    second Snakemake, a hand-started one). The kernel drops it when the process ends, however it
    ends, so a killed benchmark never leaves a stale lock. Raises BenchmarkLocked naming the
    holder."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except ValueError:
                holder = {}
            who = (f"pid {holder.get('pid', '?')}, {holder.get('command', '?')}, started "
                   f"{holder.get('started', '?')}") if holder else "an unknown process"
            raise BenchmarkLocked(
                f"another benchmark is running on this host ({who}): it holds {path}. Two "
                "benchmarks at once would disturb each other's timings and collide on their "
                "files; wait for it to finish (or stop it), then run again.") from None
        os.ftruncate(fd, 0)
        record = {"pid": os.getpid(), "command": command,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


def usage() -> str:
    lines = ["usage: python -m paired_replacement.bench <command> [options]", "", "commands:"]
    lines += [f"  {name:<9} {doc}" for name, (_, _, doc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] not in COMMANDS:
        print(f"unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[argv[0]]
    folder = out_folder(argv[1:]) if argv[0] in MEASURING else None
    if folder is None:  # hostinfo, or --help: nothing measured
        return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    try:
        with host_lock(folder, " ".join(argv)[:400]):
            return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)
    except BenchmarkLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return LOCKED_EXIT


if __name__ == "__main__":
    sys.exit(main())
