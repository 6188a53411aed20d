"""GPU check of the device-resident cache: ``python -m paired_replacement.gpu_check``.

One command, a few minutes on a CUDA machine:

1. loads the compiled ops (builds them for this host into ``--build-dir`` first when the package's
   extension is not built, with :func:`paired_replacement.hostbuild.build`);
2. equivalence: :class:`~paired_replacement.device.DeviceWeightCache` on the GPU (pinned and device
   pools, with and without a side stream, staged in rounds, float32/float16/bfloat16) against plain
   torch gathers of the original weights and a plain WeightCache fed the same masks, after every
   update of random mask and index sequences;
3. allocations: ``torch.cuda.memory_stats`` (and the pinned host allocator's stats) across a run
   of updates -- an update must allocate no row-sized memory -- and every buffer's address;
4. timings with CUDA events (median of ``--repeats`` updates after ``--warmup``), N=8192, m=2048,
   hidden 4096, float16 and float32, k in {16, 64, 256, 1024} rows swapped per update: the paired
   update with the pool on the device, with the pool in pinned host memory (current stream and a
   side stream), an on-device ``index_select`` rebuild of the whole block, and a full
   ``.to(device)`` of the active block from host memory; a table with ms and bytes moved, JSON
   with ``--json PATH``.

Without CUDA it prints a "no GPU" line and exits 0 (3 with ``--require-gpu``). ``--device cpu``
runs the same checks and timings on the host backend (what the CPU tests use, on tiny shapes).
Exit status 1: a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

EXIT_FAILED = 1
EXIT_NO_GPU = 3
DTYPE_NAMES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


# --------------------------------------------------------------------------------------------
# arguments, environment
# --------------------------------------------------------------------------------------------


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _dtype_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in names if v not in DTYPE_NAMES]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"dtypes must be among {sorted(DTYPE_NAMES)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paired_replacement.gpu_check",
        description="Equivalence, allocation and timing check of DeviceWeightCache on a CUDA GPU.")
    p.add_argument("--device", default="cuda",
                   help="cuda (default), cuda:<i>, or cpu (the host backend: for tests)")
    p.add_argument("--require-gpu", action="store_true",
                   help=f"exit {EXIT_NO_GPU} instead of 0 when there is no CUDA device")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--build-dir", default="build/gpu_check",
                   help="where to build the ops if the package's extension is not built")
    p.add_argument("--n", type=int, default=8192, help="neurons N (timing)")
    p.add_argument("--m", type=int, default=2048, help="active neurons m (timing)")
    p.add_argument("--hidden", type=int, default=4096, help="hidden size (timing)")
    p.add_argument("--ks", type=_int_list, default=[16, 64, 256, 1024],
                   help="rows swapped per update (timing), comma-separated")
    p.add_argument("--dtypes", type=_dtype_list, default=["float16", "float32"],
                   help="timing dtypes, comma-separated")
    p.add_argument("--repeats", type=int, default=30, help="timed updates per point (median)")
    p.add_argument("--warmup", type=int, default=5, help="untimed updates before them")
    p.add_argument("--eq-n", type=int, default=300, help="N of the equivalence sequences")
    p.add_argument("--eq-hidden", type=int, default=24, help="hidden of the equivalence sequences")
    p.add_argument("--eq-steps", type=int, default=40, help="updates per equivalence sequence")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-equivalence", action="store_true")
    p.add_argument("--skip-timing", action="store_true")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.m <= args.n:
        parser.error(f"--m must be in [1, --n], got m={args.m}, n={args.n}")
    if args.hidden < 1 or args.eq_hidden < 1 or args.eq_n < 2 or args.eq_steps < 1:
        parser.error("--hidden, --eq-hidden must be >= 1, --eq-n >= 2, --eq-steps >= 1")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be >= 1 and --warmup >= 0")
    bad = [k for k in args.ks if k > min(args.m, args.n - args.m)]
    if bad:
        parser.error(f"--ks {bad}: k rows swapped must be <= min(m, n - m) = "
                     f"{min(args.m, args.n - args.m)}")
    return args


def no_gpu_reason(device: str) -> str | None:
    """Why ``device`` cannot be used for the GPU check, or None when it can."""
    if not device.startswith("cuda"):
        return None
    if not torch.cuda.is_available():
        return (f"torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda or 'none'})")
    return None


def ensure_extension(build_dir: str) -> str:
    """Loads the ops: the build in ``build_dir`` when there is one (the pipeline passes the
    host's build), else the package's own; builds them for this host into ``build_dir`` when
    neither is there."""
    from ._extension import load_extension

    if (Path(build_dir) / "manifest.json").is_file():
        return str(load_extension(build_dir))
    try:
        return str(load_extension())
    except (ImportError, FileNotFoundError) as e:
        print(f"gpu_check: the extension is not loadable ({e}); building it into {build_dir}",
              flush=True)
    from .hostbuild import build

    build(build_dir)
    return str(load_extension(build_dir))


# --------------------------------------------------------------------------------------------
# equivalence
# --------------------------------------------------------------------------------------------


def make_weights(n: int, hidden: int, dtype: torch.dtype, gate: bool, seed: int):
    """(gate or None, up, down) on the CPU, random normal, in ``dtype``."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, hidden, generator=gen).to(dtype) if gate else None
    u = torch.randn(n, hidden, generator=gen).to(dtype)
    d = torch.randn(hidden, n, generator=gen).to(dtype)
    return g, u, d


def random_updates(n: int, steps: int, rng: np.random.Generator):
    """A mixed sequence: ("mask", bool[N]) or ("indices", added, removed) given the current mask
    (returned as callables of the current mask so that index updates stay valid)."""
    kinds = []
    for i in range(steps):
        r = rng.random()
        if i % 10 == 3:
            kinds.append(("density", 0.0))  # m = 0
        elif i % 10 == 7:
            kinds.append(("density", 1.0))  # m = N
        elif r < 0.3:
            kinds.append(("density", float(rng.random())))  # growth / shrink
        elif r < 0.7:
            kinds.append(("flip", int(rng.integers(0, max(2, n // 8)))))  # small churn
        else:
            kinds.append(("indices", int(rng.integers(0, max(2, n // 8)))))
    return kinds


def _apply(cache_list, kind, rng, n):
    mask = cache_list[0].mask.numpy()
    if kind[0] == "density":
        new = rng.random(n) < kind[1]
        for c in cache_list:
            c.update_active_weights(torch.from_numpy(new.copy()))
    elif kind[0] == "flip":
        new = mask.copy()
        flip = rng.choice(n, size=min(kind[1], n), replace=False)
        new[flip] = ~new[flip]
        for c in cache_list:
            c.update_active_weights(torch.from_numpy(new.copy()))
    else:
        active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
        added = rng.permutation(inactive)[: min(kind[1], inactive.size)]
        removed = rng.permutation(active)[: min(kind[1], active.size)]
        for c in cache_list:
            c.update_from_indices(torch.from_numpy(added.copy()), torch.from_numpy(removed.copy()))


def check_sequence(device: str, dtype: torch.dtype, *, pool: str, stream: bool, gate: bool,
                   n: int, hidden: int, steps: int, seed: int,
                   staging_rows: int | None = None) -> dict[str, Any]:
    """One random sequence: after every update the device block equals plain torch gathers of the
    original weights in the bookkeeping's slot order, the slot order equals a plain WeightCache's
    fed the same updates, and the rows moved equal its rows written (paired path). Returns a
    record with ``ok`` and, on failure, ``error``."""
    from .cache import WeightCache
    from .device import DeviceWeightCache

    rng = np.random.default_rng(seed)
    g, u, d = make_weights(n, hidden, dtype, gate, seed)
    full_cat = (torch.cat([g, u], 1) if gate else u).to(device)
    down_dev = d.to(device)
    record: dict[str, Any] = dict(device=device, dtype=str(dtype).replace("torch.", ""), pool=pool,
                                  stream=stream, gate=gate, n=n, hidden=hidden, steps=steps,
                                  seed=seed, staging_rows=staging_rows, ok=False, rows_moved=0)
    try:
        m0 = torch.from_numpy(rng.random(n) < 0.4)
        cache = DeviceWeightCache(m0, hidden, g, u, d, device=device, pool=pool,
                                  stream=True if stream else None, staging_rows=staging_rows)
        plain = WeightCache(m0, hidden, g, u, d, hybrid_tau_frac=cache.hybrid_tau_frac)
        for step, kind in enumerate([("start",)] + random_updates(n, steps, rng)):
            if kind[0] != "start":
                _apply([cache, plain], kind, rng, n)
            idx = cache.active_indices()
            if not torch.equal(idx, plain.active_indices()):
                raise AssertionError(f"step {step} {kind}: slot order differs from WeightCache's")
            ps, st = plain.last_update_stats(), cache.last_update_stats()
            if kind[0] != "start" and ps.path == "paired" and st.rows_written != ps.rows_written:
                raise AssertionError(f"step {step} {kind}: moved {st.rows_written} rows, the core "
                                     f"wrote {ps.rows_written}")
            record["rows_moved"] += st.rows_written
            idx_dev = idx.to(device)
            cat, down = cache.get_concat_weight(), cache.get_active_down_weight()
            if not torch.equal(cat, full_cat.index_select(0, idx_dev)):
                raise AssertionError(f"step {step} {kind}: gate|up block differs from the gather")
            if not torch.equal(down, down_dev.index_select(1, idx_dev)):
                raise AssertionError(f"step {step} {kind}: down block differs from the gather")
            if not torch.equal(cat.cpu(), plain.get_concat_weight()):
                raise AssertionError(f"step {step} {kind}: block differs from WeightCache's")
            if step % 10 == 0:
                cache.check_invariants()
        cache.check_invariants()
        record["ok"] = True
    except Exception as e:  # reported, not raised: the run goes on to the other checks
        record["error"] = f"{type(e).__name__}: {e}"
    return record


def run_equivalence(device: str, *, n: int, hidden: int, steps: int, seed: int) -> list[dict]:
    cuda = device.startswith("cuda")
    out = []
    i = 0
    for dtype in DTYPE_NAMES.values():
        for pool in ("pinned", "device"):
            for stream in ((False, True) if cuda else (False,)):
                for gate, staging in ((True, None), (False, 7)):
                    out.append(check_sequence(device, dtype, pool=pool, stream=stream, gate=gate,
                                              n=n, hidden=hidden, steps=steps, seed=seed + i,
                                              staging_rows=staging))
                    i += 1
    return out


# --------------------------------------------------------------------------------------------
# allocations
# --------------------------------------------------------------------------------------------


def churn_masks(n: int, m: int, k: int, count: int, seed: int) -> list[torch.Tensor]:
    """``count`` masks of exactly m active rows; each swaps k active rows for k inactive ones."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=m, replace=False)] = True
    out = [torch.from_numpy(mask.copy())]
    for _ in range(count - 1):
        active, inactive = np.flatnonzero(mask), np.flatnonzero(~mask)
        mask[rng.choice(active, size=k, replace=False)] = False
        mask[rng.choice(inactive, size=k, replace=False)] = True
        out.append(torch.from_numpy(mask.copy()))
    return out


def _cuda_counters(device: str) -> dict[str, int]:
    torch.cuda.synchronize(device)
    s = torch.cuda.memory_stats(device)
    out = {"device_allocations": int(s.get("allocation.all.allocated", 0)),
           "device_bytes": int(s.get("allocated_bytes.all.allocated", 0))}
    try:
        h = torch.cuda.host_memory_stats()
        out["host_pinned_requests"] = int(h.get("active_requests.allocated", 0))
    except (AttributeError, RuntimeError):
        pass
    return out


def allocation_check(device: str, *, n: int, hidden: int, dtype: torch.dtype, pool: str,
                     stream: bool, updates: int = 60, seed: int = 0) -> dict[str, Any]:
    """Runs ``updates`` updates (masks and index lists) after a warm-up; records every buffer's
    address before and after, and on CUDA the allocator counters. ``ok`` is False when an address
    changed or, on CUDA, the updates allocated row-sized device memory."""
    from .device import DeviceWeightCache

    cuda = device.startswith("cuda")
    g, u, d = make_weights(n, hidden, dtype, True, seed)
    m = max(1, n // 4)
    masks = churn_masks(n, m, max(1, m // 8), updates + 5, seed)
    cache = DeviceWeightCache(masks[0], hidden, g, u, d, device=device, pool=pool,
                              stream=True if stream else None)
    row_bytes = (2 * hidden + hidden) * g.element_size()
    for mask in masks[1:5]:
        cache.update_active_weights(mask)
    ptrs = {k: v.data_ptr() for k, v in cache.buffers().items()}
    before = _cuda_counters(device) if cuda else {}
    rng = np.random.default_rng(seed)
    for i, mask in enumerate(masks[5:]):
        if i % 3 == 2:
            cur = cache.mask.numpy()
            a = rng.permutation(np.flatnonzero(~cur))[:3]
            r = rng.permutation(np.flatnonzero(cur))[:3]
            cache.update_from_indices(torch.from_numpy(a), torch.from_numpy(r))
        else:
            cache.update_active_weights(mask)
    after = _cuda_counters(device) if cuda else {}
    moved = [k for k, v in cache.buffers().items() if v.data_ptr() != ptrs[k]]
    rec: dict[str, Any] = dict(device=device, dtype=str(dtype).replace("torch.", ""), pool=pool,
                               stream=stream, updates=updates, row_bytes=row_bytes,
                               buffers_moved=moved)
    verdict = "none"
    if cuda:
        delta = {k: after[k] - before[k] for k in after}
        rec.update({f"delta_{k}": v for k, v in delta.items()})
        if delta.get("host_pinned_requests", 0) > 0:
            verdict = "pinned"  # pinned host memory handed out during the updates
        elif delta["device_bytes"] >= row_bytes:
            verdict = "row-sized"  # the updates allocated at least one row's worth in all
        elif delta["device_allocations"] > 0:
            verdict = "small"  # index-sized temporaries inside torch ops, below one row in all
    rec["allocations"] = verdict
    rec["ok"] = not moved and verdict in ("none", "small")
    return rec


# --------------------------------------------------------------------------------------------
# timings
# --------------------------------------------------------------------------------------------


class _Timer:
    """Milliseconds of one call: CUDA events on a CUDA device (the GPU idle before), else wall."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.device = device
        if self.cuda:
            self.start = torch.cuda.Event(enable_timing=True)
            self.end = torch.cuda.Event(enable_timing=True)

    def __call__(self, fn) -> tuple[float, float]:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            self.start.record()
            fn()
            self.end.record()
            host = (time.perf_counter() - t0) * 1e3
            self.end.synchronize()
            return self.start.elapsed_time(self.end), host
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms


def time_dtype(device: str, *, n: int, m: int, hidden: int, dtype: torch.dtype, ks: list[int],
               repeats: int, warmup: int, seed: int) -> list[dict[str, Any]]:
    """Timings of every method for each k (the methods take turns on each mask)."""
    from .device import DeviceWeightCache

    cuda = device.startswith("cuda")
    g, u, d = make_weights(n, hidden, dtype, True, seed)
    es = g.element_size()
    row_bytes = 3 * hidden * es  # gate|up row + down row
    first = churn_masks(n, m, 0, 1, seed)[0]
    resident = DeviceWeightCache(first, hidden, g, u, d, device=device, pool="device")
    offloaded = DeviceWeightCache(first, hidden, g, u, d, device=device, pool="pinned")
    caches = {"paired_device_pool": resident, "paired_pinned_pool": offloaded}
    if cuda:
        caches["paired_pinned_pool_stream"] = DeviceWeightCache(
            first, hidden, g, u, d, device=device, pool="pinned", stream=True)
    host_cat = offloaded.pool_concat_weight()
    host_down = offloaded.pool_down_weight_t()
    dev_cat, dev_down = resident.pool_concat_weight(), resident.pool_down_weight_t()
    del g, u, d
    # the rebuild's buffers: indices (pinned on CUDA) and the output block, allocated once
    idx_host = torch.empty(n, dtype=torch.int64, pin_memory=cuda)
    idx_dev = torch.empty(n, dtype=torch.int64, device=device)
    out_cat = torch.empty(m, dev_cat.shape[1], dtype=dtype, device=device)
    out_down = torch.empty(m, hidden, dtype=dtype, device=device)

    def rebuild(mask: torch.Tensor) -> None:
        idx = mask.nonzero().view(-1)
        k = idx.numel()
        idx_host[:k].copy_(idx)
        idx_dev[:k].copy_(idx_host[:k], non_blocking=True)
        torch.index_select(dev_cat, 0, idx_dev[:k], out=out_cat[:k])
        torch.index_select(dev_down, 0, idx_dev[:k], out=out_down[:k])

    timer = _Timer(device)
    rows: list[dict[str, Any]] = []
    for k in ks:
        masks = churn_masks(n, m, k, warmup + repeats + 1, seed + k)
        for c in caches.values():
            c.update_active_weights(masks[0])
        samples: dict[str, list[tuple[float, float]]] = {
            name: [] for name in [*caches, "index_select_rebuild", "full_to_device"]}
        moved: dict[str, list[tuple[int, int, int]]] = {name: [] for name in caches}
        for i, mask in enumerate(masks[1:]):
            idx = mask.nonzero().view(-1)
            block = (host_cat.index_select(0, idx), host_down.index_select(0, idx))  # pageable
            timed = {
                **{name: (lambda c=c: (c.update_active_weights(mask), c.wait()))
                   for name, c in caches.items()},
                "index_select_rebuild": lambda: rebuild(mask),
                "full_to_device": lambda: (block[0].to(device, copy=True),
                                   block[1].to(device, copy=True)),
            }
            for name, fn in timed.items():
                t = timer(fn)
                if i >= warmup:
                    samples[name].append(t)
                    if name in caches:
                        w = caches[name].last_update_work()
                        moved[name].append((w.rows_moved, w.bytes_h2d + w.index_bytes_h2d,
                                            w.bytes_written))
        for name, ts in samples.items():
            if name in moved:
                r = float(np.mean([x[0] for x in moved[name]]))
                h2d = float(np.mean([x[1] for x in moved[name]]))
                written = float(np.mean([x[2] for x in moved[name]]))
            elif name == "index_select_rebuild":
                r, h2d, written = float(m), float(m * 8), float(m * row_bytes)
            else:
                r, h2d, written = float(m), float(m * row_bytes), float(m * row_bytes)
            ms = [x[0] for x in ts]
            rows.append(dict(
                dtype=str(dtype).replace("torch.", ""), n=n, m=m, hidden=hidden, k=k, method=name,
                rows_moved=r, bytes_h2d=h2d, bytes_written=written,
                median_ms=statistics.median(ms), p10_ms=float(np.percentile(ms, 10)),
                p90_ms=float(np.percentile(ms, 90)),
                host_median_ms=statistics.median(x[1] for x in ts), samples=len(ms),
                clock="cuda_event" if cuda else "perf_counter"))
        base = next(r["median_ms"] for r in rows[-len(samples):] if r["method"] == "full_to_device")
        for r in rows[-len(samples):]:
            r["speedup_vs_to_device"] = base / r["median_ms"] if r["median_ms"] > 0 else None
    for c in caches.values():
        c.check_invariants()
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'dtype':<9}{'k':>6}  {'method':<27}{'rows':>8}{'H2D MB':>10}{'written MB':>12}"
            f"{'median ms':>11}{'p10':>9}{'p90':>9}{'host ms':>9}{'x .to':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        sp = r.get("speedup_vs_to_device")
        lines.append(
            f"{r['dtype']:<9}{r['k']:>6}  {r['method']:<27}{r['rows_moved']:>8.0f}"
            f"{r['bytes_h2d'] / 1e6:>10.3f}{r['bytes_written'] / 1e6:>12.3f}{r['median_ms']:>11.4f}"
            f"{r['p10_ms']:>9.4f}{r['p90_ms']:>9.4f}{r['host_median_ms']:>9.4f}"
            f"{(f'{sp:.2f}' if sp else '-'):>8}")
    return "\n".join(lines)


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _device_info(device: str) -> dict[str, Any]:
    info: dict[str, Any] = {"device": device, "torch": torch.__version__,
                            "cuda": torch.version.cuda, "python": platform.python_version(),
                            "host": platform.node()}
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    return info


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = no_gpu_reason(args.device)
    if reason is not None:
        print(f"gpu_check: no GPU: {reason}; nothing was checked. Run it on a machine with a CUDA "
              "GPU (or with --device cpu for the host backend).")
        return EXIT_NO_GPU if args.require_gpu else 0
    device = args.device
    t_start = time.perf_counter()
    library = ensure_extension(args.build_dir)
    info = _device_info(device)
    print(f"gpu_check: {info.get('gpu', device)}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), ops from {library}", flush=True)
    report: dict[str, Any] = {"tool": "paired_replacement.gpu_check", "info": info,
                              "library": library,
                              "args": {k: v for k, v in vars(args).items()},
                              "equivalence": [], "allocation": [], "timings": []}
    ok = True
    if not args.skip_equivalence:
        eq = run_equivalence(device, n=args.eq_n, hidden=args.eq_hidden, steps=args.eq_steps,
                             seed=args.seed)
        report["equivalence"] = eq
        bad = [r for r in eq if not r["ok"]]
        print(f"equivalence: {len(eq) - len(bad)}/{len(eq)} sequences equal (dtypes x pools x "
              f"streams x gate/staging, {args.eq_steps} updates each)", flush=True)
        for r in bad:
            print(f"  FAILED {r['dtype']} pool={r['pool']} stream={r['stream']} gate={r['gate']}: "
                  f"{r['error']}")
        ok &= not bad
        alloc = []
        for pool in ("pinned", "device"):
            for stream in ((False, True) if device.startswith("cuda") else (False,)):
                alloc.append(allocation_check(device, n=max(args.eq_n, 512), hidden=64,
                                              dtype=torch.float16, pool=pool, stream=stream,
                                              seed=args.seed))
        report["allocation"] = alloc
        for r in alloc:
            extra = ", ".join(f"{k[6:]} +{v}" for k, v in r.items() if k.startswith("delta_"))
            print(f"allocations: pool={r['pool']} stream={r['stream']}: {r['allocations']}"
                  f"{' (' + extra + ')' if extra else ''} over {r['updates']} updates; buffers "
                  f"{'moved: ' + str(r['buffers_moved']) if r['buffers_moved'] else 'fixed'}"
                  f" -> {'ok' if r['ok'] else 'FAILED'}", flush=True)
        ok &= all(r["ok"] for r in alloc)
    if not args.skip_timing:
        for name in args.dtypes:
            rows = time_dtype(device, n=args.n, m=args.m, hidden=args.hidden,
                              dtype=DTYPE_NAMES[name], ks=args.ks, repeats=args.repeats,
                              warmup=args.warmup, seed=args.seed)
            report["timings"].extend(rows)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                if hasattr(torch._C, "_host_emptyCache"):  # the pinned blocks of this dtype
                    torch._C._host_emptyCache()
        clock = "CUDA events" if device.startswith("cuda") else "wall clock"
        print(f"\ntimings ({clock}, median of {args.repeats} updates after {args.warmup}; N={args.n}, "
              f"m={args.m}, hidden={args.hidden}, k rows swapped per update):")
        print(format_table(report["timings"]))
    report["ok"] = bool(ok)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    if args.json:
        write_json(args.json, report)
        print(f"wrote {args.json}")
    print(f"gpu_check: {'ok' if ok else 'FAILED'} ({report['seconds']} s)")
    return 0 if ok else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
