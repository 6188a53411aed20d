"""autotune: search WEIGHT_CACHE_GRAIN x PAR_THRESHOLD x HYBRID_TAU_FRAC (x threads) on this host.

    python -m paired_replacement.bench autotune --out results/hosts/H/autotune.json

Every candidate times the hybrid cache update (update_active_weights with the candidate's tau,
grain and threshold) on one shared mask sequence whose steps mix the churn levels of --k-list; the
winner is the candidate with the lowest median. The JSON holds this host's fingerprint, the shape,
the workload, every candidate's statistics and the winner; benchmarks take the winner from it with
--autotune-json (refusing a JSON from another host). --csv also writes the candidates as a table.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from . import common, hostinfo, masks, micro, timing


def make_timer(task: dict, spec: dict) -> timing.LazyTimer:
    return micro.make_timer({**task, "method": "hybrid"}, spec)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.bench autotune",
        description="Search grain x par_threshold x hybrid_tau_frac (x threads) on this host and "
                    "write the winner as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    shape = p.add_argument_group("shape and workload")
    shape.add_argument("--rows", type=int, default=8192, help="N")
    shape.add_argument("--m", type=int, default=2048)
    shape.add_argument("--hidden", type=int, default=4096)
    shape.add_argument("--gate", default="on", help="on/off")
    shape.add_argument("--dtype", default="float32", choices=sorted(micro.DTYPES))
    shape.add_argument("--k-list", type=int, nargs="+", default=[16, 64, 256, 1024],
                       help="churn levels mixed in the timed mask sequence")
    shape.add_argument("--steps", type=int, default=8)
    grid = p.add_argument_group("search grid")
    grid.add_argument("--grains", type=int, nargs="+", default=[16, 64, 256])
    grid.add_argument("--par-thresholds", type=int, nargs="+", default=[16, 64, 256])
    grid.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    grid.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--csv", help="also write every candidate as a CSV (autotune schema)")
    common.add_common_args(p, tuning=False)
    return p


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not 0 <= args.m <= args.rows or max(args.k_list) > min(args.m, args.rows - args.m):
        p.error("need 0 <= --m <= --rows and every --k-list value <= min(m, rows - m)")
    if min(args.grains) < 1 or min(args.par_thresholds) < 0 or min(args.taus) < 0 \
            or min(args.threads) < 1:
        p.error("--grains and --threads must be >= 1, --par-thresholds and --taus >= 0")
    try:
        gate = common.parse_bool_list([args.gate])[0]
    except argparse.ArgumentTypeError as exc:
        p.error(f"--gate: {exc}")
    if args.build_dir:
        from .._extension import load_extension

        load_extension(args.build_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    seq = masks.mixed(args.rows, args.m, args.k_list, args.steps, args.seed)
    masks_path = out.with_suffix(".masks.pt")
    torch.save(seq, masks_path)
    shape = {"N": args.rows, "m": args.m, "hidden": args.hidden}
    base = {"N": args.rows, "m": args.m, "hidden": args.hidden, "gate": gate, "dtype": args.dtype,
            "seed": args.seed, "masks_path": str(masks_path), "k_target": -1, "pattern": "mixed"}
    tasks = []
    for grain, threshold, tau, threads in itertools.product(args.grains, args.par_thresholds,
                                                            args.taus, args.threads):
        cand = {"grain": grain, "par_threshold": threshold, "hybrid_tau_frac": tau, "threads": threads}
        tasks.append({**base, **cand, "name": f"g{grain}-p{threshold}-t{tau}-n{threads}"})
    # The correctness gate: one candidate replayed against a plain gather (the others differ only
    # in parallel split and rebuild choice, which the library's own tests cover exhaustively).
    micro.replay_and_check({**tasks[0], "method": "hybrid"}, seq)

    pyperf_json = out.with_suffix(".pyperf.json")
    values = timing.run_tasks(__name__, tasks, pyperf_json=pyperf_json,
                              options=common.timing_options(args), build_dir=args.build_dir,
                              quiet=args.quiet, label="autotune")
    candidates = []
    for task in tasks:
        stats = common.summarize(values[task["name"]], seed=args.seed)
        candidates.append({k: task[k] for k in ("grain", "par_threshold", "hybrid_tau_frac",
                                                 "threads")} | stats)
    winner = min(candidates, key=lambda c: c["median_s"])
    result = {"host": hostinfo.fingerprint(), "shape": shape, "gate": gate, "dtype": args.dtype,
              "k_list": args.k_list, "steps": args.steps, "seed": args.seed,
              "winner": winner, "candidates": candidates, "pyperf_json": pyperf_json.name,
              "git_commit": common.git_commit(),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(out)
    if args.csv:
        write_candidates_csv(result, args.csv)
    if not args.quiet:
        print(f"winner: grain={winner['grain']} par_threshold={winner['par_threshold']} "
              f"hybrid_tau_frac={winner['hybrid_tau_frac']} threads={winner['threads']} "
              f"median {winner['median_s'] * 1e3:.3f} ms/update -> {out}")
    return 0


def write_candidates_csv(result: dict, path: str | Path) -> None:
    """The candidates of an autotune JSON as rows of the autotune schema."""
    meta = common.run_metadata()
    winner = result["winner"]
    rows = []
    for c in result["candidates"]:
        config = {"shape": result["shape"], "k_list": result["k_list"], **{
            k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac", "threads")}}
        rows.append({**meta, "host_id": result["host"]["host_id"],
                     "cpu_model": result["host"]["cpu_model"], "threads": c["threads"],
                     "config_hash": common.config_hash(config), "benchmark": "autotune",
                     "N": result["shape"]["N"], "m": result["shape"]["m"],
                     "hidden": result["shape"]["hidden"],
                     "k_list": " ".join(map(str, result["k_list"])),
                     **{k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac")},
                     **{k: c[k] for k in ("n_values", "median_s", "iqr_s", "ci95_low_s",
                                          "ci95_high_s", "mean_s", "stdev_s")},
                     "pyperf_json": result["pyperf_json"], "is_winner": c is winner or c == winner})
    common.write_csv(rows, path, "autotune")
