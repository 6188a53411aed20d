"""``python -m paired_replacement.model {traces,churn} [options]`` — see each command's --help.

``traces`` records a real model's FFN activations on held-out corpus tokens and writes mask traces
per policy x density x window x layer; ``churn`` turns a traces folder into a CSV of per-token
additions, removals and rows the paired cache writes; ``quality`` measures the held-out perplexity
of the model with every FFN masked online by each policy. Exit status 3 (with a one-line message on
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"traces": cmd_traces, "churn": cmd_churn, "quality": cmd_quality}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
