"""``python -m paired_replacement.bench <command> [options]`` — see each command's --help."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "micro": ("paired_replacement.bench.micro", "main", "update cost vs k, every method, same masks"),
    "e2e": ("paired_replacement.bench.e2e", "main", "decode steps of a sparse SwiGLU FFN"),
    "sweep": ("paired_replacement.bench.e2e", "main_sweep", "e2e over m x batch (x hidden)"),
    "autotune": ("paired_replacement.bench.autotune", "main", "search grain x threshold x tau"),
    "perf": ("paired_replacement.bench.perf", "main", "counters of the timed updates only"),
    "hostinfo": ("paired_replacement.bench.hostinfo", "main", "this host's description (JSON)"),
}


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
    return int(getattr(importlib.import_module(module), func)(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
