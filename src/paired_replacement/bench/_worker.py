"""pyperf entry point of every benchmark (master and workers alike): see timing.py."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pyperf


def _pass_spec(cmd: list[str], args) -> None:
    cmd.extend(["--spec", args.spec])


def main() -> None:
    runner = pyperf.Runner(program_args=("-m", "paired_replacement.bench._worker"),
                           add_cmdline_args=_pass_spec)
    runner.argparser.add_argument("--spec", required=True, help="task spec written by run_tasks")
    args = runner.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("build_dir"):
        from .._extension import load_extension

        load_extension(spec["build_dir"])
    module = importlib.import_module(spec["module"])
    for task in spec["tasks"]:
        # inner_loops: a task whose one loop runs several operations (e.g. a pass of decode
        # steps) declares them, so pyperf's values are per operation.
        runner.bench_time_func(task["name"], module.make_timer(task, spec),
                               inner_loops=task.get("inner_loops"))


if __name__ == "__main__":
    main()
