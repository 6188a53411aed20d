"""Quick, same-run comparison of one cache update against a full gather and a memcpy floor.

    python -m paired_replacement.quickbench [--rows 8192 --active 2048 --hidden 4096
                                             --k 16 64 256 1024 --threads 1 2]

For each thread count (all in this one process, so every method sees the same host state) and
each k it pre-generates (seeded, outside the timed region) a chain of masks that each swap k
active rows for k inactive ones, then times, in interleaved rounds on the same data and with the
same torch threads:

- ``paired``      — ``WeightCache.update_active_weights(mask)`` (writes k rows per buffer);
- ``indices``     — ``WeightCache.update_from_indices(added, removed)`` (same k, no mask scan);
- ``index_select``— a full rebuild: ``index_select(out=)`` of all m rows from the cache's own pools
  (gate|up and the transposed down layout), into preallocated outputs;
- ``memcpy`` / ``memcpy_nt`` — ``torch.ops.paired.copy_rows``: one copy per written row (plain
  memcpy / non-temporal stores), split over the same threads as the cache, the same rows and bytes
  the paired update writes into a block of the same layout: the faster of the two is the physical
  floor of an O(k) update (``paired_over_floor`` clearly above 1 would be a measurement error
  where rows are large; at tiny shapes the floor's two op calls cost more than its copies).

It reports medians over rounds (ms), bytes/s of the row-writing methods and the ratios; then how
a large update's CPU time splits over the process's threads (the proof that the copies run in
parallel, measured rather than assumed); then the fixed cost of a call that changes nothing.
This is a quick check; the statistically careful suite is ``paired_replacement.bench`` (pyperf).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from . import WeightCache
from .bench import masks
from .bench.hostinfo import thread_cpu_ns


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def run(rows: int, active: int, hidden: int, ks: list[int], steps: int, rounds: int,
        threads: int | None, seed: int) -> list[dict]:
    if threads is not None:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    gate = torch.randn(rows, hidden, generator=gen)
    up = torch.randn(rows, hidden, generator=gen)
    down = torch.randn(hidden, rows, generator=gen)
    results = []
    for k in ks:
        chain = list(masks.uniform(rows, active, k, steps, seed + k))
        diffs = [((b & ~a).nonzero().squeeze(1), (a & ~b).nonzero().squeeze(1))
                 for a, b in zip(chain, chain[1:])]
        cache = WeightCache(chain[0], hidden, gate, up, down, hybrid_tau_frac=2.0)  # never rebuild
        by_index = WeightCache(chain[0], hidden, gate, up, down, hybrid_tau_frac=2.0)
        pool_c, pool_d = cache.pool_concat_weight(), cache.pool_down_weight_t()
        # Outputs in the pools' layout (padded, 64-byte aligned rows), like the cache's block.
        out_c = torch.empty_strided((active, pool_c.shape[1]), pool_c.stride())
        out_d = torch.empty_strided((active, pool_d.shape[1]), pool_d.stride())
        idx = [c.nonzero().squeeze(1) for c in chain]
        # The memcpy floor writes the same number of rows to distinct slots of a packed copy.
        dst_c, dst_d = out_c.clone(), out_d.clone()
        dst_slots = torch.randperm(active, generator=gen)[:k].contiguous()
        src_rows = [d[0].contiguous() for d in diffs]
        samples: dict[str, list[float]] = {"paired": [], "indices": [], "index_select": [],
                                           "memcpy": [], "memcpy_nt": []}
        parallel = torch.get_num_threads() > 1
        written = 0
        for r in range(rounds):
            forward = r % 2 == 0  # walk the chain forwards, then back, so every step is a real change
            order = range(1, len(chain)) if forward else range(len(chain) - 2, -1, -1)
            for i in order:
                t0 = time.perf_counter()
                cache.update_active_weights(chain[i])
                t1 = time.perf_counter()
                added, removed = diffs[i - 1] if forward else diffs[i][::-1]
                by_index.update_from_indices(added, removed)
                t2 = time.perf_counter()
                torch.index_select(pool_c, 0, idx[i], out=out_c)
                torch.index_select(pool_d, 0, idx[i], out=out_d)
                t3 = time.perf_counter()
                src = src_rows[i - 1] if forward else src_rows[i]
                torch.ops.paired.copy_rows(dst_c, dst_slots, pool_c, src, parallel=parallel)
                torch.ops.paired.copy_rows(dst_d, dst_slots, pool_d, src, parallel=parallel)
                t4 = time.perf_counter()
                torch.ops.paired.copy_rows(dst_c, dst_slots, pool_c, src, True, parallel)
                torch.ops.paired.copy_rows(dst_d, dst_slots, pool_d, src, True, parallel)
                t5 = time.perf_counter()
                if r > 0:  # round 0 warms up
                    samples["paired"].append(t1 - t0)
                    samples["indices"].append(t2 - t1)
                    samples["index_select"].append(t3 - t2)
                    samples["memcpy"].append(t4 - t3)
                    samples["memcpy_nt"].append(t5 - t4)
                written = cache.last_update_stats().rows_written
        assert written == k, f"paired update wrote {written} rows for k={k}"
        assert torch.equal(cache.get_concat_weight(), pool_c.index_select(0, cache.active_indices()))
        row_bytes = pool_c.shape[1] * 4 + pool_d.shape[1] * 4
        med = {name: _median_ms(v) for name, v in samples.items()}
        floor = min(med["memcpy"], med["memcpy_nt"])  # the faster store policy
        results.append({
            "threads": torch.get_num_threads(),
            "k": k,
            **{f"{name}_ms": round(v, 4) for name, v in med.items()},
            "paired_GBps": round(k * row_bytes / med["paired"] / 1e6, 2) if k else 0.0,
            "floor_GBps": round(k * row_bytes / floor / 1e6, 2) if k else 0.0,
            "speedup_vs_index_select": round(med["index_select"] / med["paired"], 2),
            "paired_over_floor": round(floor / med["paired"], 2) if k else float("nan"),
        })
    return results


def thread_split(rows: int, active: int, hidden: int, threads: int, repeats: int = 6,
                 seed: int = 0) -> dict[str, list[float]]:
    """Share of each busy thread in the CPU time of large updates (m/2 rows swapped), per method.

    With torch's threads really at work, the paired update's copies and index_select both spread
    over ``threads`` threads; a library built without the parallel backend shows one.
    """
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    gate, up = torch.randn(rows, hidden, generator=gen), torch.randn(rows, hidden, generator=gen)
    down = torch.randn(hidden, rows, generator=gen)
    a, b = list(masks.uniform(rows, active, active // 2, 1, seed))  # one transition: 2 masks
    cache = WeightCache(a, hidden, gate, up, down, hybrid_tau_frac=2.0)
    pool_c = cache.pool_concat_weight()
    out_c = torch.empty(active, pool_c.shape[1])
    idx = [a.nonzero().squeeze(1), b.nonzero().squeeze(1)]

    def shares(step) -> list[float]:
        step(0)  # warm-up
        before = thread_cpu_ns()
        for i in range(repeats):
            step(i)
        after = thread_cpu_ns()
        used = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
        total = sum(used)
        return [round(100 * u / total, 1) for u in used if u > 0.02 * total]

    return {
        "paired": shares(lambda i: cache.update_active_weights(b if i % 2 == 0 else a)),
        "index_select": shares(lambda i: torch.index_select(pool_c, 0, idx[i % 2], out=out_c)),
    }


def fixed_cost_us(calls: int = 20000) -> dict[str, float]:
    """Per-call cost in microseconds, in a tight loop: updates that change nothing (k = 0) through
    the wrapper and through the raw ``torch.classes`` object, and an index update of k = 64 rows
    of 64 floats both ways (the wrapper's overhead is the difference)."""
    n, hidden = 8192, 64
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: n // 4] = True
    cache = WeightCache(mask, hidden, torch.randn(n, hidden), torch.randn(n, hidden),
                        torch.randn(hidden, n), hybrid_tau_frac=2.0)
    raw = cache.torch_object
    empty = torch.empty(0, dtype=torch.int64)
    on, off = torch.arange(n // 4, n // 4 + 64), torch.arange(0, 64)  # swap 64 rows, then back
    swaps = [(on, off), (off, on)]
    state = [0]

    def k64(update):
        def call():
            update(*swaps[state[0] % 2])
            state[0] += 1
        return call

    calls_by_name = {
        "wrapper.update_active_weights k=0": lambda: cache.update_active_weights(mask),
        "torch.classes.update_active_weights k=0": lambda: raw.update_active_weights(mask),
        "wrapper.update_from_indices k=0": lambda: cache.update_from_indices(empty, empty),
        "torch.classes.update_from_indices k=0": lambda: raw.update_from_indices(empty, empty),
        "wrapper.update_from_indices k=64": k64(cache.update_from_indices),
        "torch.classes.update_from_indices k=64": k64(lambda a, r: raw.update_from_indices(a, r)),
    }
    out = {}
    for name, call in calls_by_name.items():
        for _ in range(calls // 10):  # warm-up
            call()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        out[name] = (time.perf_counter() - t0) / calls * 1e6
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=8192, help="N")
    p.add_argument("--active", type=int, default=2048, help="m")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--k", type=int, nargs="+", default=[0, 16, 64, 256, 1024])
    p.add_argument("--steps", type=int, default=8, help="masks per chain")
    p.add_argument("--rounds", type=int, default=7, help="passes over the chain (first is warm-up)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="torch thread counts, measured one after the other in this process")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    print(f"N={a.rows} m={a.active} hidden={a.hidden} fp32 gate=on; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for threads in a.threads:
        rows = run(a.rows, a.active, a.hidden, a.k, a.steps, a.rounds, threads, a.seed)
        cols = list(rows[0])
        print(" ".join(f"{c:>22}" for c in cols))
        for row in rows:
            print(" ".join(f"{row[c]:>22}" for c in cols))
    print("CPU time of large updates (m/2 rows swapped) by thread, % of the process's total:")
    for threads in a.threads:
        split = thread_split(a.rows, a.active, a.hidden, threads, seed=a.seed)
        print(f"  threads={threads}: " + "; ".join(f"{name} {split[name]}" for name in split))
    torch.set_num_threads(min(a.threads))
    print(f"fixed cost per call (N=8192, tight loop of 20000 calls, {torch.get_num_threads()} thread):")
    for name, us in fixed_cost_us().items():
        print(f"  {name:<45} {us:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
