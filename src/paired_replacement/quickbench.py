"""Quick, same-run comparison of one cache update against a full gather and a memcpy floor.

    python -m paired_replacement.quickbench [--rows 8192 --active 2048 --hidden 4096 --k 16 64 256 1024]

For each k it pre-generates (seeded, outside the timed region) a chain of masks that each swap k
active rows for k inactive ones, then times, in interleaved rounds on the same data:

- ``paired``      — ``WeightCache.update_active_weights(mask)`` (writes k rows per buffer);
- ``indices``     — ``WeightCache.update_from_indices(added, removed)`` (same k, no mask scan);
- ``index_select``— a full rebuild: ``index_select(out=)`` of all m rows from the cache's own pools
  (gate|up and the transposed down layout), into preallocated outputs;
- ``memcpy``      — ``torch.ops.paired.copy_rows``: one plain memcpy per written row, one thread,
  the same rows and bytes the paired update writes (the physical floor of an O(k) update).

It reports medians over rounds (ms), bytes/s of the row-writing methods and the ratios. This is a
quick check; the statistically careful suite is ``paired_replacement.bench`` (pyperf).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from . import WeightCache
from .bench import masks


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
        out_c = torch.empty(active, pool_c.shape[1])
        out_d = torch.empty(active, pool_d.shape[1])
        idx = [c.nonzero().squeeze(1) for c in chain]
        # The memcpy floor writes the same number of rows to distinct slots of a packed copy.
        dst_c, dst_d = out_c.clone(), out_d.clone()
        dst_slots = torch.randperm(active, generator=gen)[:k].contiguous()
        src_rows = [d[0].contiguous() for d in diffs]
        samples: dict[str, list[float]] = {"paired": [], "indices": [], "index_select": [], "memcpy": []}
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
                torch.ops.paired.copy_rows(dst_c, dst_slots, pool_c, src)
                torch.ops.paired.copy_rows(dst_d, dst_slots, pool_d, src)
                t4 = time.perf_counter()
                if r > 0:  # round 0 warms up
                    samples["paired"].append(t1 - t0)
                    samples["indices"].append(t2 - t1)
                    samples["index_select"].append(t3 - t2)
                    samples["memcpy"].append(t4 - t3)
                written = cache.last_update_stats().rows_written
        assert written == k, f"paired update wrote {written} rows for k={k}"
        assert torch.equal(cache.get_concat_weight(), pool_c.index_select(0, cache.active_indices()))
        row_bytes = pool_c.shape[1] * 4 + pool_d.shape[1] * 4
        med = {name: _median_ms(v) for name, v in samples.items()}
        results.append({
            "k": k,
            **{f"{name}_ms": round(v, 4) for name, v in med.items()},
            "paired_GBps": round(k * row_bytes / med["paired"] / 1e6, 2) if k else 0.0,
            "memcpy_GBps": round(k * row_bytes / med["memcpy"] / 1e6, 2) if k else 0.0,
            "speedup_vs_index_select": round(med["index_select"] / med["paired"], 2),
            "paired_over_memcpy": round(med["memcpy"] / med["paired"], 2) if k else float("nan"),
        })
    return results


def fixed_cost_us(calls: int = 20000) -> dict[str, float]:
    """Per-call cost of an update that changes nothing (k = 0), in a tight loop, in microseconds."""
    n, hidden = 8192, 64
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: n // 4] = True
    cache = WeightCache(mask, hidden, torch.randn(n, hidden), torch.randn(n, hidden),
                        torch.randn(hidden, n))
    empty = torch.empty(0, dtype=torch.int64)
    calls_by_name = {
        "wrapper.update_active_weights": lambda: cache.update_active_weights(mask),
        "torch.classes.update_active_weights": lambda: cache.torch_object.update_active_weights(mask),
        "wrapper.update_from_indices": lambda: cache.update_from_indices(empty, empty),
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
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    rows = run(a.rows, a.active, a.hidden, a.k, a.steps, a.rounds, a.threads, a.seed)
    print(f"N={a.rows} m={a.active} hidden={a.hidden} fp32 gate=on threads={torch.get_num_threads()}")
    cols = list(rows[0])
    print(" ".join(f"{c:>22}" for c in cols))
    for row in rows:
        print(" ".join(f"{row[c]:>22}" for c in cols))
    print(f"fixed cost per call at k=0 (N=8192, tight loop of {20000} calls):")
    for name, us in fixed_cost_us().items():
        print(f"  {name:<40} {us:6.2f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
