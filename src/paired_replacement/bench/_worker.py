"""One worker process of the interleaved harness (see timing.py): every group, methods in turns.

    python -m paired_replacement.bench._worker --spec SPEC.json --process P --out PART.json
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import load
from .timing import DONE_PREFIX, measure


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="spec written by timing.run_groups")
    parser.add_argument("--process", type=int, required=True, help="index of this worker")
    parser.add_argument("--out", required=True, help="JSON with this worker's values")
    args = parser.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("build_dir"):
        from .._extension import load_extension

        load_extension(spec["build_dir"])
    import torch

    module = importlib.import_module(spec["module"])
    options = spec["options"]
    groups = spec["groups"] if args.process % 2 == 0 else spec["groups"][::-1]
    out_path = Path(args.out)
    done: list[dict] = []
    for group in groups:
        t0 = time.monotonic()
        torch.set_num_threads(int(group["threads"]))
        built = module.make_group(group)
        gate_seconds = 0.0
        if args.process == 0:  # the correctness gate, once per group, before any timing
            g0 = time.monotonic()
            built.check()
            gate_seconds = time.monotonic() - g0
        # One stream per (seed, process, group): the method order differs between rounds,
        # processes and groups, and is reproducible.
        index = spec["groups"].index(group)
        rng = np.random.default_rng([int(options.get("seed", 0)), args.process, index])
        probe = load.LoadProbe()
        methods = measure(built.operations, values=int(options["values"]),
                          warmups=int(options["warmups"]), min_time=float(options["min_time"]),
                          fixed_loops=int(options.get("loops", 0)), rng=rng,
                          before_value=getattr(built, "before_value", None))
        sample = probe.stop()
        info = getattr(built, "info", {})
        del built
        gc.collect()
        entry = {"name": group["name"], "methods": methods, "load": sample,
                 "gate_seconds": gate_seconds, "info": info}
        done.append(entry)
        tmp = out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"groups": done}))
        tmp.replace(out_path)
        print(DONE_PREFIX + json.dumps({"name": group["name"], "load": sample,
                                        "seconds": time.monotonic() - t0}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
