"""micro: the cost of one cache update vs k, for every method, on the same mask sequences.

    python -m paired_replacement.bench micro --out results/micro.csv [--k 16 64 256 ...]

Methods (all fed the same pre-generated masks; mask generation is never timed):

- ``paired``          WeightCache.update_active_weights, hybrid disabled (tau = 2: never rebuild)
- ``paired_indices``  WeightCache.update_from_indices with the step's precomputed added/removed ids
- ``hybrid``          WeightCache.update_active_weights with the tuned tau (rebuilds on high churn)
- ``numpy_reference`` the NumPy reference PairedCache.update
- ``index_select``    full rebuild: index_select(out=) of all m rows from the cache's own pools
                      (gate|up and the transposed down layout) into preallocated buffers
- ``bool_mask``       full rebuild by boolean indexing, pool[mask] (allocates, as naive code does)
- ``memcpy_floor``    exactly the rows the paired update writes, one memcpy per row
- ``memcpy_floor_nt`` the same rows with non-temporal stores; the floor is the faster of the two

Before timing, every method is replayed over the whole sequence and checked against a plain
gather of the original weights (a mismatch aborts). One timed operation is one update; the harness
walks the sequence forwards and back so every timed update is a real step of the sequence.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import WeightCache
from ..cache import DTYPES
from ..reference import PairedCache
from . import common, masks, timing

CACHE_METHODS = ("paired", "paired_indices", "hybrid")
FLOOR_METHODS = ("memcpy_floor", "memcpy_floor_nt")
REBUILD_METHODS = ("index_select", "bool_mask")
ALL_METHODS = (*CACHE_METHODS, "numpy_reference", *REBUILD_METHODS, *FLOOR_METHODS)
NEVER_REBUILD_TAU = 2.0  # rows written <= m', so tau >= 1 disables the hybrid rebuild


# ---------------------------------------------------------------------------------------------
# Data of one configuration (rebuilt identically in every worker from the task)
# ---------------------------------------------------------------------------------------------
def make_weights(task: dict) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(task["seed"])
    n, h, dtype = task["N"], task["hidden"], DTYPES[task["dtype"]]
    gate = torch.randn(n, h, generator=gen).to(dtype) if task["gate"] else None
    up = torch.randn(n, h, generator=gen).to(dtype)
    down = torch.randn(h, n, generator=gen).to(dtype)
    return gate, up, down


def walk(num_masks: int) -> list[int]:
    """Targets of one ping-pong cycle over masks 0..T: 1, 2, ..., T, T-1, ..., 0."""
    t = num_masks - 1
    return list(range(1, t + 1)) + list(range(t - 1, -1, -1))


class Method:
    """One way of bringing the packed weights to mask ``seq[i]``; ``step(i)`` is what is timed."""

    def __init__(self, task: dict, seq: torch.Tensor) -> None:
        self.task, self.seq = task, seq

    def step(self, i: int) -> None:
        raise NotImplementedError

    def result(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(concat [m, G+U], down [H, m], row order [m]) after the last step, for the gate."""
        raise NotImplementedError


class CacheMethod(Method):
    def __init__(self, task, seq, *, tau: float, by_indices: bool = False) -> None:
        super().__init__(task, seq)
        gate, up, down = make_weights(task)
        self.cache = WeightCache(seq[0], task["hidden"], gate, up, down, grain=task["grain"],
                                 par_threshold=task["par_threshold"], hybrid_tau_frac=tau)
        self.current = 0
        self.by_indices = by_indices
        if by_indices:  # ids of every transition (both directions), precomputed
            self.diffs = {}
            for a, b in zip(range(len(seq)), range(1, len(seq))):
                up_ids = (seq[b] & ~seq[a]).nonzero().squeeze(1)
                down_ids = (seq[a] & ~seq[b]).nonzero().squeeze(1)
                self.diffs[(a, b)] = (up_ids, down_ids)
                self.diffs[(b, a)] = (down_ids, up_ids)

    def step(self, i: int) -> None:
        if self.by_indices:
            added, removed = self.diffs[(self.current, i)]
            self.cache.update_from_indices(added, removed)
        else:
            self.cache.update_active_weights(self.seq[i])
        self.current = i

    def result(self):
        return (self.cache.get_concat_weight(), self.cache.get_active_down_weight(),
                self.cache.active_indices())


class NumpyReferenceMethod(Method):
    def __init__(self, task, seq) -> None:
        super().__init__(task, seq)
        gate, up, down = make_weights(task)
        as_np = (lambda t: t.float().numpy()) if task["dtype"] == "bfloat16" else (lambda t: t.numpy())
        self.masks_np = seq.numpy()
        self.ref = PairedCache(self.masks_np[0], task["hidden"], None if gate is None else as_np(gate),
                               as_np(up), as_np(down), hybrid_tau_frac=NEVER_REBUILD_TAU)

    def step(self, i: int) -> None:
        self.ref.update(self.masks_np[i])

    def result(self):
        return (torch.from_numpy(np.array(self.ref.concat_weight())),  # copies: the reference's
                torch.from_numpy(np.array(self.ref.down_weight())),    # views are read-only
                torch.from_numpy(self.ref.active_indices()))


class RebuildMethod(Method):
    """Gathers every active row again, from the same pool layouts the cache uses."""

    def __init__(self, task, seq, *, boolean: bool) -> None:
        super().__init__(task, seq)
        gate, up, down = make_weights(task)
        # The cache's own pools: gate|up interleaved and down transposed, as fair as it gets.
        cache = WeightCache(seq[0], task["hidden"], gate, up, down)
        self.pool_c, self.pool_d = cache.pool_concat_weight(), cache.pool_down_weight_t()
        self.boolean = boolean
        self.indices = [s.nonzero().squeeze(1) for s in seq]
        self.out_c = torch.empty_like(self.pool_c)  # capacity N rows: m may vary (traces)
        self.out_d = torch.empty_like(self.pool_d)
        self.last: tuple[torch.Tensor, torch.Tensor] | None = None
        self.current = 0

    def step(self, i: int) -> None:
        if self.boolean:
            self.last = (self.pool_c[self.seq[i]], self.pool_d[self.seq[i]])
        else:
            idx = self.indices[i]
            m = idx.numel()
            torch.index_select(self.pool_c, 0, idx, out=self.out_c[:m])
            torch.index_select(self.pool_d, 0, idx, out=self.out_d[:m])
        self.current = i

    def result(self):
        idx = self.indices[self.current]
        if self.boolean:
            concat, down_t = self.last if self.last is not None else (
                self.pool_c[self.seq[self.current]], self.pool_d[self.seq[self.current]])
        else:
            concat, down_t = self.out_c[: idx.numel()], self.out_d[: idx.numel()]
        return concat, down_t.t(), idx


class FloorMethod(Method):
    """Copies exactly the (slot, row) pairs the paired update writes at each step, nothing else."""

    def __init__(self, task, seq, *, streaming: bool) -> None:
        super().__init__(task, seq)
        gate, up, down = make_weights(task)
        cache = WeightCache(seq[0], task["hidden"], gate, up, down, hybrid_tau_frac=NEVER_REBUILD_TAU)
        self.pool_c, self.pool_d = cache.pool_concat_weight(), cache.pool_down_weight_t()
        self.dst_c = self.pool_c.clone()  # a packed block of the same layout and alignment class
        self.dst_d = self.pool_d.clone()
        self.dst_c[: cache.num_active].copy_(cache.get_concat_weight())
        self.dst_d[: cache.num_active].copy_(cache.get_active_down_weight().t())
        self.streaming = streaming
        # Replay the paired updates once (untimed) to learn the writes of every transition.
        self.writes: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        current, order = 0, cache.active_indices()
        for target in walk(len(seq)):
            cache.update_active_weights(seq[target])
            new_order = cache.active_indices()
            m_old, m_new = order.numel(), new_order.numel()
            slots = torch.arange(m_new)
            changed = slots >= m_old
            changed[: min(m_old, m_new)] |= new_order[: min(m_old, m_new)] != order[: min(m_old, m_new)]
            holes = slots[changed].contiguous()
            self.writes[(current, target)] = (holes, new_order[holes].contiguous())
            current, order = target, new_order
        self.current = 0
        self.order = cache.active_indices()

    def step(self, i: int) -> None:
        slots, rows = self.writes[(self.current, i)]
        torch.ops.paired.copy_rows(self.dst_c, slots, self.pool_c, rows, self.streaming, True)
        torch.ops.paired.copy_rows(self.dst_d, slots, self.pool_d, rows, self.streaming, True)
        self.current = i

    def rows_written(self) -> list[int]:
        return [int(w[0].numel()) for w in self.writes.values()]


METHODS: dict[str, Callable[[dict, torch.Tensor], Method]] = {
    "paired": lambda t, s: CacheMethod(t, s, tau=NEVER_REBUILD_TAU),
    "paired_indices": lambda t, s: CacheMethod(t, s, tau=NEVER_REBUILD_TAU, by_indices=True),
    "hybrid": lambda t, s: CacheMethod(t, s, tau=t["hybrid_tau_frac"]),
    "numpy_reference": lambda t, s: NumpyReferenceMethod(t, s),
    "index_select": lambda t, s: RebuildMethod(t, s, boolean=False),
    "bool_mask": lambda t, s: RebuildMethod(t, s, boolean=True),
    "memcpy_floor": lambda t, s: FloorMethod(t, s, streaming=False),
    "memcpy_floor_nt": lambda t, s: FloorMethod(t, s, streaming=True),
}


# ---------------------------------------------------------------------------------------------
# Timing (runs in pyperf workers) and the correctness gate (runs before timing)
# ---------------------------------------------------------------------------------------------
def make_timer(task: dict, spec: dict) -> timing.LazyTimer:
    def setup() -> Callable[[int], float]:
        torch.set_num_threads(task["threads"])
        seq = torch.load(task["masks_path"])
        method = METHODS[task["method"]](task, seq)
        targets = itertools.cycle(walk(len(seq)))
        import time

        def run(loops: int) -> float:
            step, nxt = method.step, targets.__next__
            t0 = time.perf_counter()
            for _ in range(loops):
                step(nxt())
            return time.perf_counter() - t0

        return run

    return timing.LazyTimer(setup)


def replay_and_check(task: dict, seq: torch.Tensor) -> list[int]:
    """Runs method ``task['method']`` through one cycle, checking every step against a plain gather
    of the original weights; returns rows written per step. Raises common.CorrectnessError."""
    name = task["method"]
    gate, up, down = make_weights(task)
    full = up if gate is None else torch.cat([gate, up], dim=1)
    method = METHODS[name](task, seq)
    rows: list[int] = []
    for target in walk(len(seq)):
        method.step(target)
        if isinstance(method, FloorMethod):
            continue  # checked below against the paired writes it replays
        concat, down_w, order = method.result()
        expected = seq[target].nonzero().squeeze(1)
        common.check_close(name, f"active rows after step to mask {target}", order.sort().values,
                           expected)
        common.check_close(name, f"gate|up block after step to mask {target}", concat.float(),
                           full.index_select(0, order).float())
        common.check_close(name, f"down block after step to mask {target}", down_w.float(),
                           down.index_select(1, order).float())
        if isinstance(method, CacheMethod):
            rows.append(method.cache.last_update_stats().rows_written)
        elif isinstance(method, NumpyReferenceMethod):
            rows.append(method.ref.last_update_stats().rows_written)
        else:
            rows.append(int(expected.numel()))
    if isinstance(method, FloorMethod):
        # After a full cycle the floor's block must equal a paired cache's block at mask 0.
        m = int(seq[0].sum())
        common.check_close(name, "gate|up block after one cycle", method.dst_c[:m].float(),
                           full.index_select(0, method.order).float())
        common.check_close(name, "down block after one cycle", method.dst_d[:m].float(),
                           down.index_select(1, method.order).t().float())
        rows = method.rows_written()
    return rows


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.bench micro",
        description="Time one cache update vs k for every method on the same mask sequences.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    axes = p.add_argument_group("configurations (the cartesian product is measured)")
    axes.add_argument("--rows", type=int, nargs="+", default=[8192], help="N")
    axes.add_argument("--m", type=int, nargs="+", default=[2048], help="active rows")
    axes.add_argument("--k", type=int, nargs="+", default=[0, 16, 64, 256, 1024],
                      help="rows swapped per step (uniform/clustered patterns)")
    axes.add_argument("--hidden", type=int, nargs="+", default=[4096])
    axes.add_argument("--gate", nargs="+", default=["on"], help="on/off")
    axes.add_argument("--dtype", nargs="+", default=["float32"], choices=sorted(DTYPES))
    axes.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    axes.add_argument("--pattern", nargs="+", default=["uniform"], choices=masks.PATTERNS)
    axes.add_argument("--beta", type=float, default=0.9, help="stickiness of the sticky pattern")
    axes.add_argument("--trace", help="mask trace for the trace pattern (.npy/.npz bool [T, N])")
    axes.add_argument("--steps", type=int, default=8, help="masks per sequence after the first")
    p.add_argument("--methods", nargs="+", default=list(ALL_METHODS), choices=ALL_METHODS)
    common.add_common_args(p)
    return p


def configurations(args: argparse.Namespace, tuning: common.Tuning) -> list[dict]:
    configs = []
    for n, m, hidden, gate, dtype, threads, pattern in itertools.product(
            args.rows, args.m, args.hidden, common.parse_bool_list(args.gate), args.dtype,
            args.threads, args.pattern):
        ks = args.k if pattern in ("uniform", "clustered") else [-1]
        for k in ks:
            configs.append({"N": n, "m": m, "k_target": k, "hidden": hidden, "gate": gate,
                            "dtype": dtype, "threads": threads, "pattern": pattern,
                            "steps": args.steps, "beta": args.beta if pattern == "sticky" else None,
                            "trace": args.trace if pattern == "trace" else None,
                            "seed": args.seed, "grain": tuning.grain,
                            "par_threshold": tuning.par_threshold,
                            "hybrid_tau_frac": tuning.hybrid_tau_frac})
    return configs


def validate_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for n, m in itertools.product(args.rows, args.m):
        if not 0 <= m <= n:
            p.error(f"--m {m} must be in [0, --rows {n}]")
    for m, k in itertools.product(args.m, args.k):
        if k < 0 or (k > m and "uniform" in args.pattern):
            p.error(f"--k {k} must be in [0, --m {m}] (k rows of the m active ones are swapped)")
    for n, m, k in itertools.product(args.rows, args.m, args.k):
        if k > n - m and set(args.pattern) & {"uniform", "clustered"}:
            p.error(f"--k {k} exceeds the {n - m} inactive rows of --rows {n} --m {m}")
    if min(args.hidden) < 1 or min(args.threads) < 1 or args.steps < 1:
        p.error("--hidden, --threads and --steps must be >= 1")
    if "trace" in args.pattern and not args.trace:
        p.error("--pattern trace needs --trace FILE")
    if not 0.0 <= args.beta < 1.0:
        p.error(f"--beta must be in [0, 1), got {args.beta}")
    try:
        common.parse_bool_list(args.gate)
    except argparse.ArgumentTypeError as exc:
        p.error(f"--gate: {exc}")


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    validate_args(p, args)
    if args.build_dir:
        from .._extension import load_extension

        load_extension(args.build_dir)
    shape = {"N": args.rows[0], "m": args.m[0], "hidden": args.hidden[0]}
    tuning = common.resolve_tuning(args, shape)
    out = Path(args.out)
    mask_dir = out.with_name(out.stem + ".masks")
    mask_dir.mkdir(parents=True, exist_ok=True)
    meta = common.run_metadata()

    configs = configurations(args, tuning)
    tasks, by_config = [], []
    for config in configs:
        chash = common.config_hash(config)
        seq = masks.make_sequence(config["pattern"], n=config["N"], m=config["m"],
                                  k=max(config["k_target"], 0), steps=config["steps"],
                                  seed=config["seed"], beta=args.beta, trace=config["trace"])
        masks_path = mask_dir / f"{chash}.pt"
        torch.save(seq, masks_path)
        k_mean = float(masks.churn(seq).float().mean())
        rows_by_method = {}
        for method in args.methods:
            task = {**config, "method": method, "masks_path": str(masks_path),
                    "name": f"{method}/{chash}"}
            rows_by_method[method] = replay_and_check(task, seq)  # the correctness gate
            tasks.append(task)
        by_config.append((config, chash, k_mean, rows_by_method))

    pyperf_json = out.with_suffix(".pyperf.json")
    values = timing.run_tasks(__name__, tasks, pyperf_json=pyperf_json,
                              options=common.timing_options(args), build_dir=args.build_dir,
                              quiet=args.quiet, label="micro")
    rows = []
    for config, chash, k_mean, rows_by_method in by_config:
        stats = {m: common.summarize(values[f"{m}/{chash}"], seed=args.seed) for m in rows_by_method}
        elem = torch.tensor([], dtype=DTYPES[config["dtype"]]).element_size()
        row_bytes = elem * config["hidden"] * (3 if config["gate"] else 2)
        floor = min((stats[m]["median_s"] for m in FLOOR_METHODS if m in stats), default=math.nan)
        base = stats.get("index_select", {}).get("median_s", math.nan)
        for method, written in rows_by_method.items():
            s = stats[method]
            rows_written = float(np.mean(written))
            bytes_moved = rows_written * row_bytes
            writes_rows = method not in REBUILD_METHODS
            rows.append({
                **meta, "threads": config["threads"], "config_hash": chash, "benchmark": "micro",
                "method": method, "N": config["N"], "m": config["m"], "k_target": config["k_target"],
                "k_mean": k_mean, "hidden": config["hidden"], "gate": config["gate"],
                "dtype": config["dtype"], "pattern": config["pattern"], "steps": config["steps"],
                "rows_written_mean": rows_written, "bytes_moved_mean": bytes_moved,
                **s, "pyperf_json": pyperf_json.name,
                "gbps": bytes_moved / s["median_s"] / 1e9,
                "speedup_vs_index_select": base / s["median_s"],
                "efficiency_vs_floor": floor / s["median_s"] if writes_rows and rows_written else math.nan,
                **tuning.columns(),
            })
    common.write_csv(rows, out, "micro")
    if not args.quiet:
        print_goals(rows)
    return 0


def print_goals(rows: list[dict]) -> None:
    """The issue's performance goals as ratios measured in this run (reported, never asserted)."""
    by = {(r["config_hash"], r["method"]): r for r in rows}
    print("\nk      paired/floor (>=0.8 @k>=64)   speedup vs index_select (goal 0.8*m/W @k<=m/4)"
          "   hybrid vs index_select (>=0.95)")
    for (chash, method), r in by.items():
        if method != "paired":
            continue
        hybrid = by.get((chash, "hybrid"))
        eff, sp = r["efficiency_vs_floor"], r["speedup_vs_index_select"]
        goal = 0.8 * r["m"] / r["rows_written_mean"] if r["rows_written_mean"] else math.inf
        k = r["k_target"]
        eff_ok = "ok" if not (k >= 64) or eff >= 0.8 else "MISS"
        sp_ok = "ok" if not (0 < k <= r["m"] / 4) or sp >= goal else "MISS"
        hy = hybrid["speedup_vs_index_select"] if hybrid else math.nan
        hy_ok = "ok" if hybrid is None or hy >= 0.95 else "MISS"
        print(f"{k:<6} {eff:8.2f} {eff_ok:<4}                    {sp:8.2f} (goal {goal:7.2f}) "
              f"{sp_ok:<4}                   {hy:8.2f} {hy_ok}   [{r['pattern']}, N={r['N']}, "
              f"m={r['m']}, hidden={r['hidden']}, {r['dtype']}, threads={r['threads']}]")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
