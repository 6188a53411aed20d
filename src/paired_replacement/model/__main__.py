"""``python -m paired_replacement.model {traces,churn,quality,decode} [options]`` — see each command's --help.

``traces`` records a real model's FFN activations on held-out corpus tokens and writes mask traces
per policy x density x window x layer; ``churn`` turns a traces folder into a CSV of per-token
additions, removals and rows the paired cache writes; ``quality`` measures the held-out perplexity
of the model with every FFN masked online by each policy; ``decode`` times greedy decoding with
every layer's FFN behind a weight cache, per method. Exit status 3 (with a one-line message on
stderr) when the ``model`` extra or the GGUF wheel is missing, so a pipeline can skip the stage.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from . import MISSING_EXTRA_EXIT

DEFAULT_DENSITIES = (0.1, 0.25, 0.5)
DEFAULT_WINDOWS = (1, 2, 4, 8)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m paired_replacement.model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    tr = sub.add_parser("traces", help="record activations, write mask traces",
                        description="Record a model's MLP activations on held-out corpus tokens "
                        "(teacher-forced) and write bit-packed mask traces with JSON metadata.")
    tr.add_argument("--out", type=Path, required=True, help="traces folder (e.g. results/traces)")
    tr.add_argument("--tokens", type=int, default=256, help="held-out tokens (default 256)")
    tr.add_argument("--calib-tokens", type=int, default=None,
                    help="calibration tokens for the gate thresholds (default: --tokens)")
    tr.add_argument("--densities", type=float, nargs="+", default=list(DEFAULT_DENSITIES),
                    help="fractions of the N neurons per token (default 0.1 0.25 0.5)")
    tr.add_argument("--windows", type=int, nargs="+", default=list(DEFAULT_WINDOWS),
                    help="window-union sizes W over every base policy (1 = the base policy)")
    tr.add_argument("--policies", nargs="+", default=["oracle_topk", "gate_threshold"],
                    choices=["oracle_topk", "gate_threshold"],
                    help="base policies (default both); gate_threshold is calibrated per layer "
                    "on the calibration split")
    tr.add_argument("--tiny", action="store_true",
                    help="a tiny random Llama instead of SmolLM2 (tests; needs transformers only)")
    tr.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    tr.add_argument("--context", type=int, default=1024,
                    help="tokens per teacher-forced forward; documents are cut into such segments")
    tr.add_argument("--dtype", choices=["float16", "float32"], default="float16",
                    help="how activations are held in memory before masking (default float16)")
    tr.add_argument("--time-dense", action="store_true",
                    help="also time a plain forward without hooks on the same tokens")
    tr.add_argument("--corpus-root", type=Path, nargs="+", default=None,
                    help="corpus folders (default /usr/share/common-licenses)")
    tr.add_argument("--quiet", action="store_true", help="no progress lines")

    ch = sub.add_parser("churn", help="per-token churn of a traces folder, as a CSV",
                        description="Replay every trace through the NumPy reference cache and "
                        "write one CSV row per layer x policy x density x window.")
    ch.add_argument("--traces", type=Path, required=True, help="the folder `traces` wrote")
    ch.add_argument("--out", type=Path, required=True, help="summary CSV")
    ch.add_argument("--per-token", type=Path, default=None,
                    help="also a long CSV with every transition (key, layer, t, m, A, R, rows)")
    ch.add_argument("--quiet", action="store_true", help="no progress lines, no table")

    qu = sub.add_parser("quality", help="held-out perplexity, dense and per policy",
                        description="Perplexity of the model on the held-out split with every "
                        "layer's FFN computing only on a policy's neurons, masked online (see "
                        "paired_replacement.model.quality); one CSV row per policy x density x "
                        "window, plus the dense model.")
    qu.add_argument("--out", type=Path, required=True, help="CSV to write")
    qu.add_argument("--tokens", type=int, default=512, help="held-out tokens (default 512)")
    qu.add_argument("--calib-tokens", type=int, default=256,
                    help="calibration tokens for the gate thresholds (default 256)")
    qu.add_argument("--densities", type=float, nargs="+", default=list(DEFAULT_DENSITIES))
    qu.add_argument("--windows", type=int, nargs="+", default=list(DEFAULT_WINDOWS))
    qu.add_argument("--policies", nargs="+", default=["oracle_topk", "gate_threshold"],
                    choices=["oracle_topk", "gate_threshold"])
    qu.add_argument("--tiny", action="store_true", help="the tiny random Llama (tests)")
    qu.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    qu.add_argument("--context", type=int, default=256,
                    help="tokens per teacher-forced segment (default 256)")
    qu.add_argument("--corpus-root", type=Path, nargs="+", default=None)
    qu.add_argument("--quiet", action="store_true", help="no progress lines, no table")
    de = sub.add_parser("decode", help="greedy decode with per-layer caches, per method",
                        description="Token-by-token greedy decode (KV cache on) with every "
                        "layer's FFN behind a weight cache, per method and density, methods "
                        "interleaved round by round (see paired_replacement.model.decode); checks "
                        "that density 1 reproduces the dense logits and probes peak RSS per "
                        "method in fresh processes.")
    de.add_argument("--out", type=Path, required=True, help="CSV to write (one row per method "
                    "x density)")
    de.add_argument("--json", type=Path, default=None,
                    help="also the run's details: prompt, tokens, logit check, RSS probes")
    de.add_argument("--densities", type=float, nargs="+", default=[0.25, 0.5],
                    help="gate-threshold densities (calibrated per layer)")
    de.add_argument("--window", type=int, default=4, help="W of the window-union methods")
    de.add_argument("--methods", nargs="+", default=None,
                    help="decode methods (default: every method of each --tier: "
                    "paired_replacement.model.decode.DRAM_METHODS, FILE_METHODS)")
    de.add_argument("--tier", nargs="+", default=["dram"], choices=["dram", "file"],
                    help="where each layer's up/down pool lives: dram, or file (one pool file per "
                    "layer read with direct I/O: the file_* methods)")
    de.add_argument("--pool-dir", type=Path, default=None,
                    help="file tier: where the per-layer pool files go (default <out>.pools/ "
                    "next to --out; deleted after the run unless --keep-pools)")
    de.add_argument("--keep-pools", action="store_true", help="keep the file tier's pool files")
    de.add_argument("--queue-depth", type=int, default=16,
                    help="file tier: reads in flight per layer's pool file (default 16)")
    de.add_argument("--prompt-tokens", type=int, default=32)
    de.add_argument("--new-tokens", type=int, default=64, help="timed greedy steps per run")
    de.add_argument("--rounds", type=int, default=5, help="timed runs per method (+1 warm-up)")
    de.add_argument("--calib-tokens", type=int, default=256)
    de.add_argument("--logit-check-tokens", type=int, default=8,
                    help="teacher-forced steps of the density-1 logit check (0: skip)")
    de.add_argument("--rss-methods", nargs="*", default=None,
                    help="methods whose peak RSS is probed, each in a fresh process (none: skip; "
                    "default: dense, paired, paired_window, and file_window on the file tier)")
    de.add_argument("--tiny", action="store_true", help="the tiny random Llama (tests)")
    de.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    de.add_argument("--context", type=int, default=1024)
    de.add_argument("--corpus-root", type=Path, nargs="+", default=None)
    de.add_argument("--seed", type=int, default=0)
    de.add_argument("--build-dir", type=Path, default=None,
                    help="use the extension built there (a host's build/ of the pipeline) "
                    "instead of the package's own")
    de.add_argument("--quiet", action="store_true", help="no progress lines, no table")
    de.add_argument("--rss-probe", type=Path, default=None, help=argparse.SUPPRESS)
    return parser


def _progress(total: int, label: str, quiet: bool):
    from ..bench.common import Progress

    return Progress(total, label, quiet)


def _record_split(loaded, slice_, quantities, dtype, label, quiet):
    from .hooks import record

    progress = _progress(len(slice_.segments), label, quiet)
    start = time.perf_counter()
    records = record(loaded.model, slice_.token_ids, slice_.segments, quantities, dtype=dtype,
                     on_segment=lambda i, a, b: progress.step(f"tokens {a}..{b}"))
    return records, time.perf_counter() - start


def _time_dense(loaded, slice_) -> float:
    from .hooks import run_segments

    start = time.perf_counter()
    run_segments(loaded.model, slice_.token_ids, slice_.segments, keep_logits=False)
    return time.perf_counter() - start


def _load(args):
    """The model (tiny or SmolLM2) at ``args.threads`` threads and the corpus-cutting arguments
    of ``token_slice``; None (after the one-line message) when the extra is missing."""
    from . import smollm2
    from .corpus import DEFAULT_ROOTS

    try:
        loaded = smollm2.tiny_llama() if args.tiny else smollm2.load_smollm2()
    except smollm2.ModelExtraMissing as exc:
        print(f"paired_replacement.model: {exc}", file=sys.stderr)
        return None
    import torch

    torch.set_num_threads(args.threads)
    cut = dict(encode=loaded.encode, context=args.context,
               bos=loaded.model.config.bos_token_id, roots=args.corpus_root or DEFAULT_ROOTS)
    return loaded, cut


def cmd_traces(args) -> int:
    from .corpus import token_slice, token_ids_sha256
    from .policies import BASE_POLICIES, WindowUnion, window_union
    from .traces import RUN_FILE, TraceBuilder, write_run

    found = _load(args)
    if found is None:
        return MISSING_EXTRA_EXIT
    import torch

    loaded, cut = found
    roots = cut["roots"]
    heldout = token_slice("heldout", args.tokens, **cut)
    dtype = np.dtype(args.dtype)
    timings: dict = {"threads": args.threads}

    calibration = None
    calib_start = time.perf_counter()
    if "gate_threshold" in args.policies:
        calib_slice = token_slice("calibration", args.calib_tokens or args.tokens, **cut)
        calibration, _ = _record_split(loaded, calib_slice, ("gate",), dtype, "calibration",
                                       args.quiet)
    bases = [BASE_POLICIES[name](d) for name in args.policies for d in args.densities]
    if calibration is not None:
        for base in bases:
            base.fit(calibration)
        del calibration
    timings["calibrate_s"] = time.perf_counter() - calib_start
    quantities = tuple(q for q, p in (("down_in", "oracle_topk"), ("gate", "gate_threshold"))
                       if p in args.policies)
    if args.time_dense:
        _time_dense(loaded, heldout)  # warm-up
        dense_s = _time_dense(loaded, heldout)
        timings["dense_forward_s"] = dense_s
        timings["dense_tokens_per_s"] = len(heldout.token_ids) / dense_s
    records, record_s = _record_split(loaded, heldout, quantities, dtype, "held-out", args.quiet)
    timings["record_s"] = record_s
    timings["record_tokens_per_s"] = len(heldout.token_ids) / record_s

    # Masks layer by layer: each layer's float32 scores are shared by the densities, then freed.
    mask_start = time.perf_counter()
    common = {
        "model_id": loaded.model_id,
        "gguf_sha256": loaded.info.get("gguf_sha256"),
        "split": "heldout",
        "token_ids_sha256": token_ids_sha256(heldout.token_ids),
        "documents": [{"name": d.name, "sha256": d.sha256} for d in heldout.documents],
        "run_file": RUN_FILE,
    }
    policies = [WindowUnion(base, w) for base in bases for w in args.windows]
    builders = {policy.key: TraceBuilder(policy.key) for policy in policies}
    progress = _progress(records.num_layers, "masks", args.quiet)
    for layer in range(records.num_layers):
        for base in bases:
            base_masks = base.masks(records, layer)
            for window in args.windows:
                key = WindowUnion(base, window).key
                builders[key].add(window_union(base_masks, window))
        records.layers[layer].drop_scores()
        progress.step(f"layer {layer}: {len(bases)} policies x {len(args.windows)} windows")
    for policy in policies:
        builders[policy.key].write(args.out, {**common, "policy": policy.name,
                                              "density": policy.density,
                                              "window": policy.window, "params": policy.params})
    written = len(policies)
    timings["masks_and_write_s"] = time.perf_counter() - mask_start
    timings["extraction_tokens_per_s"] = len(heldout.token_ids) / (
        record_s + timings["masks_and_write_s"])

    run = {
        "model": loaded.info,
        "recording_dtype": args.dtype,
        "context": args.context,
        "policies": args.policies,
        "densities": args.densities,
        "windows": args.windows,
        "corpus_roots": [str(r) for r in roots],
        "heldout": {**heldout.metadata(), "token_ids": heldout.token_ids},
        "calibration": None if "gate_threshold" not in args.policies else {
            **calib_slice.metadata(), "token_ids": calib_slice.token_ids},
        "timings": timings,
        "traces_written": written,
        "torch": torch.__version__,
    }
    write_run(args.out, run)
    if not args.quiet:
        print(f"wrote {written} traces and {args.out / RUN_FILE}; "
              + ", ".join(f"{k} {v:.3g}" for k, v in timings.items()), file=sys.stderr)
    return 0


def cmd_churn(args) -> int:
    from .churn import (PER_TOKEN_COLUMNS, SUMMARY_COLUMNS, churn_series, per_token_rows,
                        summary_row, write_csv)
    from .traces import TraceError, list_traces, read_trace

    try:
        paths = list_traces(args.traces)
    except TraceError as exc:
        print(f"paired_replacement.model churn: {exc}", file=sys.stderr)
        return 1
    progress = _progress(len(paths), "churn", args.quiet)
    rows, per_token, pooled = [], [], defaultdict(lambda: defaultdict(list))
    for path in paths:
        try:
            trace = read_trace(path)
        except TraceError as exc:
            print(f"paired_replacement.model churn: {exc}", file=sys.stderr)
            return 1
        key = trace.meta["key"]
        for layer in range(trace.num_layers):
            masks = trace.layer(layer)
            series = churn_series(masks)
            rows.append(summary_row({**trace.meta, "layer": layer}, masks, series))
            for name, values in series.ratios().items():
                pooled[key][name].append(values)
            if args.per_token is not None:
                per_token.extend(per_token_rows(key, layer, series))
        progress.step(f"{key}: {trace.num_layers} layers")
    write_csv(args.out, SUMMARY_COLUMNS, rows)
    if args.per_token is not None:
        write_csv(args.per_token, PER_TOKEN_COLUMNS, per_token)
    if not args.quiet:
        # medians over every layer and transition; m is the mask size (grows with the window)
        print(f"{'trace (policy-density-window)':32s} {'mean m/N':>8s} {'median A/m':>10s} "
              f"{'median rows/m':>13s}")
        for key, values in pooled.items():
            a = np.median(np.concatenate(values["added_over_m"]))
            w = np.median(np.concatenate(values["rows_written_over_m"]))
            d = np.mean([r["density_measured"] for r in rows if r["key"] == key])
            print(f"{key:32s} {d:8.3f} {a:10.3f} {w:13.3f}")
    return 0


QUALITY_COLUMNS = ("model_id", "key", "policy", "density", "window", "tokens", "nll",
                   "perplexity", "mask_density")


def cmd_quality(args) -> int:
    from .churn import write_csv
    from .corpus import token_slice
    from .hooks import record
    from .policies import BASE_POLICIES, WindowUnion
    from .quality import evaluate

    found = _load(args)
    if found is None:
        return MISSING_EXTRA_EXIT
    loaded, cut = found
    heldout = token_slice("heldout", args.tokens, **cut)
    policies = []
    calibration = None
    if "gate_threshold" in args.policies:
        calib = token_slice("calibration", args.calib_tokens, **cut)
        calibration = record(loaded.model, calib.token_ids, calib.segments, ("gate",))
    for name in args.policies:
        for density in args.densities:
            base = BASE_POLICIES[name](density)
            if calibration is not None:
                base.fit(calibration)
            policies += [base] + [WindowUnion(base, w) for w in args.windows if w > 1]
    progress = _progress(len(policies), "quality", args.quiet)
    rows = evaluate(loaded.model, loaded.layers, heldout.token_ids, heldout.segments, policies,
                    on_policy=lambda p: progress.step(p.key))
    write_csv(args.out, QUALITY_COLUMNS,
              [{"model_id": loaded.model_id, **vars(q)} for q in rows])
    if not args.quiet:
        print(f"{'policy-density-window':28s} {'perplexity':>10s} {'FFN density':>11s}")
        for q in rows:
            print(f"{q.key:28s} {q.perplexity:10.2f} {q.mask_density:11.3f}")
    return 0


def _probe_rss(args, loaded) -> int:
    """Child process of ``decode``: one RSS probe, spec from the JSON file, result on stdout."""
    import json

    from .decode import probe_rss

    spec = json.loads(args.rss_probe.read_text())
    result = probe_rss(loaded.model, loaded.layers, spec["method"], spec["thresholds"],
                       spec["window"], spec["prompt_ids"], spec["new_tokens"],
                       spec.get("pool_paths"), spec.get("queue_depth", 16))
    print("RSS-PROBE " + json.dumps(result))
    return 0


def _run_probe(args, spec: dict) -> dict:
    """``decode --rss-probe`` in a fresh interpreter (its peak RSS is its own)."""
    import json
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        cmd = [sys.executable, "-m", "paired_replacement.model", "decode", "--out", "-",
               "--rss-probe", fh.name, "--threads", str(args.threads)]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--build-dir", str(args.build_dir)] if args.build_dir is not None else []
        done = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        Path(fh.name).unlink(missing_ok=True)
    for line in done.stdout.splitlines():
        if line.startswith("RSS-PROBE "):
            return json.loads(line[len("RSS-PROBE "):])
    raise RuntimeError(f"RSS probe of {spec['method']} failed (exit {done.returncode}): "
                       f"{done.stderr.strip()[-2000:]}")


def cmd_decode(args) -> int:
    from .decode import DRAM_METHODS, FILE_METHODS, METHODS

    methods = args.methods or [*(DRAM_METHODS if "dram" in args.tier else ()),
                               *(FILE_METHODS if "file" in args.tier else ())]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"paired_replacement.model decode: unknown --methods {unknown}; choose from "
              f"{', '.join(METHODS)}", file=sys.stderr)
        return 2
    rss_methods = args.rss_methods if args.rss_methods is not None else [
        "dense", "paired", "paired_window", *(["file_window"] if "file_window" in methods else [])]
    bad = [d for d in args.densities if not 0.0 < d <= 1.0]
    if bad or args.window < 1 or args.new_tokens < 1 or args.prompt_tokens < 1 \
            or args.rounds < 1 or args.queue_depth < 1:
        print("paired_replacement.model decode: --densities must be in (0, 1]; --window, "
              "--new-tokens, --prompt-tokens, --rounds and --queue-depth must be >= 1",
              file=sys.stderr)
        return 2
    if args.build_dir is not None:
        from .._extension import load_extension

        load_extension(args.build_dir)
    found = _load(args)
    if found is None:
        return MISSING_EXTRA_EXIT
    loaded, cut = found
    if args.rss_probe is not None:
        return _probe_rss(args, loaded)
    pool_dir = None
    if any(m in FILE_METHODS for m in [*methods, *rss_methods]):
        pool_dir = args.pool_dir or args.out.with_name(args.out.stem + ".pools")
    try:
        return _decode(args, loaded, cut, methods, rss_methods, pool_dir)
    finally:
        if pool_dir is not None and not args.keep_pools:
            from ..pool_file import remove_pool_files

            remove_pool_files(pool_dir, "layer*.pool")


def _decode(args, loaded, cut, methods, rss_methods, pool_dir) -> int:
    """cmd_decode after the checks and the model load (``pool_dir``: the file tier's, or None)."""
    import json
    import math

    from ..bench import common as bench_common
    from ..bench import load as bench_load
    from .corpus import token_slice
    from .decode import WINDOW_METHODS, max_logit_difference, measure, summarize, write_pool_files
    from .hooks import record
    from .policies import GateThreshold

    layers, n = loaded.layers, loaded.num_neurons
    pool_paths = write_pool_files(layers, pool_dir) if pool_dir is not None else None
    io_mode = "memory"
    if pool_paths:
        from .. import WeightCache

        import torch

        probe_cache = WeightCache.from_pool_file(pool_paths[0], torch.zeros(n, dtype=torch.bool))
        io_mode = "direct" if probe_cache.tier_info.direct_io else "buffered+dontneed"
        del probe_cache
    prompt = token_slice("heldout", args.prompt_tokens, **cut).token_ids[: args.prompt_tokens]
    calib = token_slice("calibration", args.calib_tokens, **cut)
    calibration = record(loaded.model, calib.token_ids, calib.segments, ("gate",))
    fitted = {d: GateThreshold(d).fit(calibration).thresholds for d in args.densities}
    del calibration

    details: dict = {"model": loaded.info, "prompt_ids": list(prompt), "threads": args.threads,
                     "window": args.window, "new_tokens": args.new_tokens,
                     "rounds": args.rounds, "calibration_tokens": len(calib.token_ids),
                     "thresholds": {str(d): t for d, t in fitted.items()}, "logit_check": [],
                     "rss": [], "generated": {}}
    # Density 1: every neuron active, so every sparse method is the dense FFN.
    if args.logit_check_tokens > 0:
        for method in methods:
            if method == "dense":
                continue
            diff, scale = max_logit_difference(loaded.model, layers, method, prompt,
                                               args.logit_check_tokens, pool_paths,
                                               args.queue_depth)
            details["logit_check"].append({"method": method, "max_abs_diff": diff,
                                           "max_abs_logit": scale})

    meta = bench_common.run_metadata()
    rows = []
    total_runs = len(args.densities) * len(methods) * (args.rounds + 1)
    progress = _progress(total_runs, "decode", args.quiet)
    for density in args.densities:
        probe = bench_load.LoadProbe()
        runs = measure(loaded.model, layers, fitted[density], methods, args.window, prompt,
                       args.new_tokens, args.rounds, seed=args.seed,
                       on_run=lambda r, m, run: progress.step(
                           f"d={density:g} round {r} {m}: "
                           f"{len(run.step_s) / sum(run.step_s):.1f} tok/s"),
                       pool_paths=pool_paths, queue_depth=args.queue_depth)
        load_columns = probe.stop()
        config = {"model_id": loaded.model_id, "density": density, "window": args.window,
                  "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
                  "threads": args.threads, "methods": methods, "seed": args.seed}
        chash = bench_common.config_hash(config)
        details["generated"][str(density)] = {m: rs[0].tokens for m, rs in runs.items()}
        for row in summarize(runs, num_layers=len(layers), num_neurons=n, seed=args.seed):
            dense_like = row["method"] == "dense"
            rows.append({
                **meta, "threads": args.threads, "config_hash": chash, "benchmark": "decode",
                **row, "pyperf_json": "", "model_id": loaded.model_id,
                "policy": "dense" if dense_like else "gate_threshold",
                "density": 1.0 if dense_like else density,
                "window": args.window if row["method"] in WINDOW_METHODS else 1,
                "io_mode": io_mode if row["tier"] == "file" else "memory",
                "queue_depth": args.queue_depth if row["tier"] == "file" else 0,
                "num_layers": len(layers), "N": n, "hidden": loaded.hidden_size,
                "prompt_tokens": len(prompt), "new_tokens": args.new_tokens,
                **load_columns})

    rss = {}
    for method in rss_methods:
        density = 0.25 if 0.25 in fitted else args.densities[0]
        spec = {"method": method, "thresholds": fitted[density], "window": args.window,
                "prompt_ids": list(prompt), "new_tokens": min(args.new_tokens, 16),
                "density": density,
                "pool_paths": [str(x) for x in pool_paths] if pool_paths else None,
                "queue_depth": args.queue_depth}
        result = _run_probe(args, spec)
        details["rss"].append({**result, "density": density})
        rss[method] = result
    dense_peak = rss.get("dense", {}).get("peak_kib", -1)
    dense_end = rss.get("dense", {}).get("rss_end_kib", -1)
    densities_of = {r["config_hash"]: r["density"] for r in rows if r["method"] != "dense"}
    logit_checks = {c["method"]: c for c in details["logit_check"]}
    for row in rows:
        probed = rss.get(row["method"])
        probed_here = probed is not None and math.isclose(
            densities_of.get(row["config_hash"], row["density"]), details["rss"][0]["density"])
        peak = probed["peak_kib"] if probed_here and probed["peak_kib"] > 0 else math.nan
        row["peak_rss_mib"] = peak / 1024
        row["peak_rss_vs_dense"] = peak / dense_peak if dense_peak > 0 else math.nan
        end = probed["rss_end_kib"] if probed_here and probed["rss_end_kib"] > 0 else math.nan
        row["end_rss_vs_dense"] = end / dense_end if dense_end > 0 else math.nan
        check = logit_checks.get(row["method"])
        row["density1_max_logit_diff"] = check["max_abs_diff"] if check else math.nan
        row["density1_max_abs_logit"] = check["max_abs_logit"] if check else math.nan
    bench_common.write_csv(rows, args.out, "decode")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(details, indent=1, sort_keys=True) + "\n")
    if not args.quiet:
        print(f"{'method':22s} {'density':>7s} {'tok/s':>7s} {'95% CI':>15s} {'vs dense':>8s} "
              f"{'vs delta':>8s} {'mask':>5s} {'upd':>5s} {'ffn':>5s} {'m/N':>5s} {'RSS x':>6s}")
        for r in rows:
            print(f"{r['method']:22s} {r['density']:7.2f} {r['tokens_per_s']:7.1f} "
                  f"[{r['tokens_per_s_ci95_low']:6.1f},{r['tokens_per_s_ci95_high']:6.1f}] "
                  f"{r['speedup_vs_dense']:8.2f} {r['speedup_vs_torch_delta']:8.2f} "
                  f"{r['mask_share']:5.2f} {r['update_share']:5.2f} {r['ffn_share']:5.2f} "
                  f"{r['active_fraction']:5.2f} {r['peak_rss_vs_dense']:6.2f}")
        for r in rows:
            if r["tier"] != "file":
                continue
            base = "file_window_reload" if r["method"].startswith("file_window") else "file_reload"
            print(f"file tier {r['method']:20s} d={r['density']:.2f}: "
                  f"{r['slow_bytes_read_per_token'] / 1e6:8.1f} MB read/token, "
                  f"{r['speedup_vs_' + base]:6.2f}x vs {base} "
                  f"[{r['speedup_vs_' + base + '_ci95_low']:.2f}, "
                  f"{r['speedup_vs_' + base + '_ci95_high']:.2f}], {r['io_mode']}, "
                  f"resident at the end {r['end_rss_vs_dense']:.2f}x dense")
        for check in details["logit_check"]:
            print(f"density 1, {check['method']}: max |logit - dense| = "
                  f"{check['max_abs_diff']:.3g} (max |logit| {check['max_abs_logit']:.3g})")
    return 0


def _decode_locked(args) -> int:
    """``decode`` is timed: like every benchmark it holds the host's lock (the folder of --out,
    results/hosts/<host>/) so that no other benchmark runs beside it; the RSS probes it starts
    are its children and take no lock."""
    if args.rss_probe is not None:
        return cmd_decode(args)
    from ..bench.__main__ import LOCKED_EXIT, BenchmarkLocked, host_lock

    try:
        with host_lock(Path(args.out).parent, "model decode"):
            return cmd_decode(args)
    except BenchmarkLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return LOCKED_EXIT


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"traces": cmd_traces, "churn": cmd_churn, "quality": cmd_quality,
                "decode": _decode_locked}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
