"""autotune: search the cache's settings on this host, then check the winner on held-out masks.

    python -m paired_replacement.bench autotune --out results/hosts/H/autotune.json [--csv ...]

Only knobs that change what runs are searched: per thread count, ``hybrid_tau_frac`` always, and
``grain`` x ``par_threshold`` only where there is more than one thread (with one thread the copies
run on the caller whatever their values). The timed workload is the hybrid cache update
(update_active_weights) over a mask sequence whose steps mix the churn levels of --k-list; the
default mix and tau grid cross the rebuild threshold (at m = 2048, tau 0.25 rebuilds at k = 1024
and 1536, tau 0.5 and 0.75 at 1536 only, tau 1 never), so tau decides real work.

Two phases, each with the interleaved harness (timing.py: candidates take turns, round by round,
in several fresh processes; one value is one whole cycle of the sequence, reported per update):

1. *tune*: every candidate on masks generated from ``seed + TUNE_SEED_OFFSET``; the winner per
   thread count is the lowest median.
2. *held out*: the winner and the defaults (grain 64, par_threshold 64, tau 0.5) on masks from
   ``seed`` -- the masks the benchmarks report -- so the gain is not measured on the data it was
   chosen on. The JSON and CSV give the gain (defaults / winner) with its interval; when the
   interval contains 1 the gain is within noise, and the JSON says so.

The JSON holds this host's fingerprint, the shape, the workload, every candidate's statistics, the
winners per thread count and the held-out result; benchmarks take the winner for their thread
count from it with --autotune-json (refusing a JSON from another host).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import torch

from .. import WeightCache
from . import common, hostinfo, load, masks, micro, stats, timing

TUNE_SEED_OFFSET = 1_000_003  # the tuning masks' seed, far from any reported seed
DEFAULTS = common.Tuning()


def candidate_name(grain: int, par_threshold: int, tau: float, threads: int) -> str:
    return f"g{grain}-p{par_threshold}-t{tau:g}-n{threads}"


class TuneGroup:
    """One cache walked through the whole sequence per operation; each candidate's settings are
    put in place (untimed) before each of its values. See timing.Group."""

    def __init__(self, group: dict) -> None:
        self.seq = torch.load(group["masks_path"])
        gate, up, down = micro.make_weights(group)
        self.full = up if gate is None else torch.cat([gate, up], dim=1)
        self.down = down
        self.cache = WeightCache(self.seq[0], group["hidden"], gate, up, down)
        self.cycle = micro.walk(len(self.seq))
        self.candidates = {c["name"]: c for c in group["candidates"]}
        self.operations = {name: self._cycle for name in self.candidates}
        self.before_value = {name: (lambda c=c: self._apply(c)) for name, c in self.candidates.items()}

    def _apply(self, c: dict) -> None:
        self.cache.grain = c["grain"]
        self.cache.par_threshold = c["par_threshold"]
        self.cache.hybrid_tau_frac = c["hybrid_tau_frac"]

    def _cycle(self) -> None:
        update, seq = self.cache.update_active_weights, self.seq
        for t in self.cycle:
            update(seq[t])

    def check(self) -> None:
        """Each distinct tau (the only setting that changes the result's layout) through one
        cycle: active rows every step, the blocks element by element at the end."""
        for tau in sorted({c["hybrid_tau_frac"] for c in self.candidates.values()}):
            self.cache.hybrid_tau_frac = tau
            for t in self.cycle:
                self.cache.update_active_weights(self.seq[t])
                order = self.cache.active_indices()
                common.check_close("hybrid", f"active rows at tau {tau}, mask {t}",
                                   order.sort().values, self.seq[t].nonzero().squeeze(1))
            common.check_close("hybrid", f"gate|up block after a cycle at tau {tau}",
                               self.cache.get_concat_weight(), self.full.index_select(0, order))
            common.check_close("hybrid", f"down block after a cycle at tau {tau}",
                               self.cache.get_active_down_weight(), self.down.index_select(1, order))


def make_group(group: dict) -> TuneGroup:
    return TuneGroup(group)


def candidates_for(args: argparse.Namespace, threads: int) -> list[dict]:
    """The settings that change what runs at ``threads``."""
    if threads == 1:
        grid = [(DEFAULTS.grain, DEFAULTS.par_threshold, tau) for tau in args.taus]
    else:
        grid = list(itertools.product(args.grains, args.par_thresholds, args.taus))
    return [{"grain": g, "par_threshold": p, "hybrid_tau_frac": tau, "threads": threads,
             "name": candidate_name(g, p, tau, threads)} for g, p, tau in grid]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.bench autotune",
        description="Search grain x par_threshold x hybrid_tau_frac per thread count on this host, "
                    "check the winner on held-out masks, and write both as JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    shape = p.add_argument_group("shape and workload")
    shape.add_argument("--rows", type=int, default=8192, help="N")
    shape.add_argument("--m", type=int, default=2048)
    shape.add_argument("--hidden", type=int, default=4096)
    shape.add_argument("--gate", default="on", help="on/off")
    shape.add_argument("--dtype", default="float32", choices=sorted(micro.DTYPES))
    shape.add_argument("--k-list", type=int, nargs="+", default=[16, 64, 256, 1024, 1536],
                       help="churn levels mixed in the timed mask sequence (cross tau * m)")
    shape.add_argument("--steps", type=int, default=10, help="masks after the first (>= k-list)")
    grid = p.add_argument_group("search grid")
    grid.add_argument("--grains", type=int, nargs="+", default=[16, 64, 256])
    grid.add_argument("--par-thresholds", type=int, nargs="+", default=[16, 64, 256])
    grid.add_argument("--taus", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    grid.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    p.add_argument("--csv", help="also write every candidate and the held-out check as a CSV")
    common.add_common_args(p, tuning=False)
    return p


def _groups(args, gate: bool, seed: int, masks_path: Path, which: dict[int, list[dict]]) -> list[dict]:
    base = {"N": args.rows, "m": args.m, "hidden": args.hidden, "gate": gate, "dtype": args.dtype,
            "seed": seed, "masks_path": str(masks_path)}
    return [{**base, "threads": t, "candidates": cands, "name": f"n{t}-seed{seed}"}
            for t, cands in which.items()]


def _per_update(result: timing.GroupResult, name: str, updates: int) -> list[list[float]]:
    return [[v / updates for v in process] for process in result.methods[name].values]


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if not 0 <= args.m <= args.rows or max(args.k_list) > min(args.m, args.rows - args.m):
        p.error("need 0 <= --m <= --rows and every --k-list value <= min(m, rows - m)")
    if min(args.grains) < 1 or min(args.par_thresholds) < 0 or min(args.taus) < 0 \
            or min(args.threads) < 1 or args.steps < 1:
        p.error("--grains, --threads and --steps must be >= 1, --par-thresholds and --taus >= 0")
    try:
        gate = common.parse_bool_list([args.gate])[0]
    except argparse.ArgumentTypeError as exc:
        p.error(f"--gate: {exc}")
    if args.build_dir:
        from .._extension import load_extension

        load_extension(args.build_dir)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tune_seed = args.seed + TUNE_SEED_OFFSET
    paths = {}
    for phase, seed in (("tune", tune_seed), ("held_out", args.seed)):
        paths[phase] = out.with_suffix(f".{phase}.masks.pt")
        torch.save(masks.mixed(args.rows, args.m, args.k_list, args.steps, seed), paths[phase])
    updates = len(micro.walk(args.steps + 1))
    options = common.timing_options(args)
    threads = list(dict.fromkeys(args.threads))

    # Phase 1: tune.
    tune_json = out.with_suffix(".tune.pyperf.json")
    cands = {t: candidates_for(args, t) for t in threads}
    tuned = timing.run_groups(__name__, _groups(args, gate, tune_seed, paths["tune"], cands),
                              pyperf_json=tune_json, options=options, build_dir=args.build_dir,
                              quiet=args.quiet, label="autotune")
    candidates, winners = [], {}
    for t in threads:
        result = tuned[f"n{t}-seed{tune_seed}"]
        rows = []
        for c in cands[t]:
            s = stats.summary(_per_update(result, c["name"], updates), seed=args.seed)
            rows.append({k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac", "threads")}
                        | s | {"phase": "tune", **load.combine(result.load)})
        winner = min(rows, key=lambda r: r["median_s"])
        winner["is_winner"] = True
        for r in rows:
            r.setdefault("is_winner", False)
        winners[str(t)] = {k: winner[k] for k in ("grain", "par_threshold", "hybrid_tau_frac",
                                                   "median_s")}
        candidates += rows

    # Phase 2: the winner against the defaults on the reported (held-out) masks.
    held_json = out.with_suffix(".held_out.pyperf.json")
    pairs = {}
    for t in threads:
        w = winners[str(t)]
        win = {"grain": w["grain"], "par_threshold": w["par_threshold"],
               "hybrid_tau_frac": w["hybrid_tau_frac"], "threads": t, "name": "winner"}
        default = {"grain": DEFAULTS.grain, "par_threshold": DEFAULTS.par_threshold,
                   "hybrid_tau_frac": DEFAULTS.hybrid_tau_frac, "threads": t, "name": "default"}
        pairs[t] = [win, default]
    held = timing.run_groups(__name__, _groups(args, gate, args.seed, paths["held_out"], pairs),
                             pyperf_json=held_json, options=options, build_dir=args.build_dir,
                             quiet=args.quiet, label="autotune held-out")
    held_out = {}
    for t in threads:
        result = held[f"n{t}-seed{args.seed}"]
        win_v = _per_update(result, "winner", updates)
        def_v = _per_update(result, "default", updates)
        gain, low, high = stats.ratio_interval(def_v, win_v, seed=args.seed)
        held_out[str(t)] = {"gain_vs_default": gain, "gain_ci95_low": low, "gain_ci95_high": high,
                            "within_noise": bool(low <= 1.0 <= high),
                            "winner_median_s": stats.summary(win_v)["median_s"],
                            "default_median_s": stats.summary(def_v)["median_s"],
                            **load.combine(result.load)}
        for name, vals in (("winner", win_v), ("default", def_v)):
            c = next(x for x in pairs[t] if x["name"] == name)
            candidates.append({k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac",
                                                 "threads")}
                              | stats.summary(vals, seed=args.seed)
                              | {"phase": f"held_out_{name}", "is_winner": False,
                                 **load.combine(result.load)})

    result_json = {"host": hostinfo.fingerprint(), "shape": {"N": args.rows, "m": args.m,
                                                            "hidden": args.hidden},
                   "gate": gate, "dtype": args.dtype, "k_list": args.k_list, "steps": args.steps,
                   "seed": args.seed, "tune_seed": tune_seed, "updates_per_cycle": updates,
                   "winners": winners, "held_out": held_out, "candidates": candidates,
                   "pyperf_json": [tune_json.name, held_json.name],
                   "git_commit": common.git_commit(),
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result_json, indent=2) + "\n")
    tmp.replace(out)
    if args.csv:
        write_candidates_csv(result_json, args.csv)
    if not args.quiet:
        for t in threads:
            w, h = winners[str(t)], held_out[str(t)]
            verdict = "within noise" if h["within_noise"] else "a real difference"
            print(f"threads={t}: winner grain={w['grain']} par_threshold={w['par_threshold']} "
                  f"hybrid_tau_frac={w['hybrid_tau_frac']:g} ({w['median_s'] * 1e3:.3f} ms/update "
                  f"on the tuning masks); on held-out masks defaults/winner = "
                  f"{h['gain_vs_default']:.3f} [{h['gain_ci95_low']:.3f}, {h['gain_ci95_high']:.3f}]"
                  f" ({verdict})")
        print(f"-> {out}")
    return 0


def write_candidates_csv(result: dict, path: str | Path) -> None:
    """The candidates and the held-out pair of an autotune JSON as rows of the autotune schema."""
    meta = common.run_metadata()
    rows = []
    for c in result["candidates"]:
        threads = c["threads"]
        held = result["held_out"].get(str(threads), {})
        config = {"shape": result["shape"], "k_list": result["k_list"], "phase": c["phase"], **{
            k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac", "threads")}}
        on_held_winner = c["phase"] == "held_out_winner"
        rows.append({**meta, "host_id": result["host"]["host_id"],
                     "cpu_model": result["host"]["cpu_model"], "threads": threads,
                     "config_hash": common.config_hash(config), "benchmark": "autotune",
                     "phase": c["phase"], "N": result["shape"]["N"], "m": result["shape"]["m"],
                     "hidden": result["shape"]["hidden"],
                     "k_list": " ".join(map(str, result["k_list"])),
                     **{k: c[k] for k in ("grain", "par_threshold", "hybrid_tau_frac")},
                     **{k: c[k] for k in ("n_processes", "n_values", "median_s", "iqr_s",
                                          "ci95_low_s", "ci95_high_s", "mean_s", "stdev_s")},
                     "pyperf_json": " ".join(result["pyperf_json"]),
                     "is_winner": c["is_winner"],
                     "gain_vs_default": held.get("gain_vs_default") if on_held_winner else None,
                     "gain_ci95_low": held.get("gain_ci95_low") if on_held_winner else None,
                     "gain_ci95_high": held.get("gain_ci95_high") if on_held_winner else None,
                     **{k: c[k] for k in ("load_before", "load_after", "others_busy_cores",
                                          "steal_percent", "busy")}})
    common.write_csv(rows, path, "autotune")
