r"""Memory tiers in the paper: the figure ``tiers`` and ``\TierFileSentence``,
``\TierDecodeSentence``, ``\TierPaySentence``, ``\TierCudaSentence``.

Inputs: ``micro_file.csv`` (micro's file tier: the pool in a pool file read with direct I/O, the
packed block in memory; methods paired, paired_indices, full_reload, disk_floor: every active
record read by an independent reader, the disk's big-batch throughput and the full reload's
floor, disk_update_floor: the paired update's own records read by that reader, its floor), the
file-tier rows of ``decode.csv`` (tier ``file``: every layer's up/down in a pool file;
file_reload, file_paired, file_window_reload, file_window) and ``study.json`` (which tiers ran;
why the CUDA tier did not).

Rows shown: one host (the primary host when it has rows, else the first alphabetically), its
first dtype, the largest thread count. Intervals are the benchmark's own; a row excluded from
headline numbers (implausible or busy, :func:`data.comparison`) is drawn hollow and quoted as
excluded. Every sentence is built from these rows; where a tier has no rows, it says so.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import data
from .latex import escape, fmt_int, fmt_interval, fmt_ratio, join_and

KIND = "micro_file"
TIME_METHODS = ["paired", "full_reload", "disk_floor", "disk_update_floor"]
#: what a file-tier floor read (efficiency_vs_floor is its time over the method's)
FLOOR_TEXT = {"disk_update_floor": "exactly the records each paired update reads",
              "disk_floor": "every active record"}
ENGINE_TEXT = {"linux-aio": "Linux native AIO", "threads": "Python threads"}
FILE_DECODE = ["file_reload", "file_paired", "file_window_reload", "file_window"]
DECODE_TEXT = {"file_reload": "a full reload of the token's active rows",
               "file_paired": "the paired update of the token's rows",
               "file_window_reload": "a full reload of the window union",
               "file_window": "the paired update of the window union"}


def _host_rows(rows: pd.DataFrame, merged: data.Merged) -> pd.DataFrame:
    if rows.empty:
        return rows
    hosts = sorted(rows["host_id"].unique())
    primary = merged.study.get("primary_host")
    return rows[rows["host_id"] == (primary if primary in hosts else hosts[0])]


def selection(merged: data.Merged) -> pd.DataFrame:
    """The file-tier micro rows shown (see the module doc)."""
    rows = _host_rows(merged[KIND], merged)
    if rows.empty:
        return rows
    rows = rows[rows["dtype"] == rows["dtype"].iloc[0]]
    rows = rows[rows["threads"] == max(data.thread_counts(rows))]
    return rows[rows["k_target"] > 0]


def _skipped(merged: data.Merged) -> str:
    tiers = (merged.study.get("config") or {}).get("tiers", {}).get("enabled")
    if tiers is not None and "file" not in tiers:
        return "the file tier is not in this run's config (tiers.enabled)"
    return "micro_file.csv has no rows"


def _mib(b) -> str:
    return f"{float(b) / 2**20:.1f}"


def _fmt_ms(s) -> str:
    ms = float(s) * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------
def tiers_figure(merged: data.Merged):
    """Left: median time per update (log) vs k of paired, the full reload and the two disk
    floors on the file tier, with the MiB each reads; right: paired's speedup over the full
    reload vs k next to the bytes ratio (m'/W: what time following bytes would give) and 0.8 of
    it (the goal). A third panel, when the real decode ran on the file tier: tokens/s per file method."""
    from . import figures as f

    title = "The file tier: pool in a pool file (direct I/O), packed block in memory"
    rows = selection(merged)
    dec = _decode_rows(merged)
    if rows.empty and dec.empty:
        return f.no_data_figure(title, _skipped(merged), f.K_LABEL, "time per update (ms)")
    ncols = 2 + (not dec.empty)
    fig, axes = f.grid(1, ncols, width=3.1, height=2.8)
    ax_t, ax_s = axes[0][0], axes[0][1]
    hollow = 0
    if rows.empty:
        f.no_data(ax_t, _skipped(merged))
        f.no_data(ax_s, _skipped(merged))
    else:
        for method in [m for m in TIME_METHODS if m in set(rows["method"])]:
            mine = rows[rows["method"] == method].sort_values("k_target")
            x = mine["k_target"].to_numpy(float)
            y, lo, hi = (mine[c].to_numpy(float) * 1e3
                         for c in ("median_s", "ci95_low_s", "ci95_high_s"))
            read = mine["slow_bytes_read_mean"].median()
            # the update floor reads paired's records (annotated on paired's line)
            label = method.replace("_", " ") + (
                "" if method in ("paired", "disk_update_floor") else f" ({_mib(read)} MiB)")
            ax_t.plot(x, y, color=f.color(method), marker=f.marker(method), lw=1.3, ms=5,
                      label=label)
            f.errorbars(ax_t, x, y, lo, hi, f.color(method))
            if method == "paired":
                for xi, yi, b in zip(x, y, mine["slow_bytes_read_mean"]):
                    ax_t.annotate(f"{_mib(b)} MiB", (xi, yi), textcoords="offset points",
                                  xytext=(3, -10), fontsize=6, color=f.color(method))
        ax_t.set(xscale="log", yscale="log", xlabel="k (rows swapped per update)",
                 ylabel="time per update (ms, log)")
        ax_t.legend(fontsize=7, loc="lower right")
        comp = data.comparison(rows, "paired", "speedup_vs_full_reload", "full_reload")
        if comp.empty:
            f.no_data(ax_s, "no paired / full_reload pair")
        else:
            comp = comp.sort_values("k_target")
            x = comp["k_target"].to_numpy(float)
            hollow += f.flagged_line(ax_s, x, comp, f.color("paired"), f.marker("paired"), "-")
            paired = rows[rows["method"] == "paired"].set_index("k_target")
            ratio = paired["bytes_ratio_vs_full_reload"].reindex(comp["k_target"]).to_numpy(float)
            ax_s.plot(x, ratio, color="0.3", ls="--", lw=1.0, label="bytes ratio m'/W")
            ax_s.plot(x, 0.8 * ratio, color="0.6", ls=":", lw=1.0, label="0.8 x bytes ratio")
            ax_s.set(xscale="log", yscale="log", xlabel="k (rows swapped per update)",
                     ylabel="paired vs full reload (×, log)")
            ax_s.legend(fontsize=7)
    if not dec.empty:
        from matplotlib.patches import Patch

        ax_d = axes[0][2]
        densities = sorted(dec["density"].unique())
        methods = [m for m in FILE_DECODE if m in set(dec["method"])]
        height = 0.8 / max(len(densities), 1)
        shades = {d: 1.0 - 0.45 * j / max(len(densities) - 1, 1) for j, d in enumerate(densities)}
        for j, density in enumerate(densities):
            part = dec[dec["density"] == density].set_index("method").reindex(methods)
            y = np.arange(len(methods)) + (j - (len(densities) - 1) / 2) * height
            tps = part["tokens_per_s"].to_numpy(float)
            lo = part["tokens_per_s_ci95_low"].to_numpy(float)
            hi = part["tokens_per_s_ci95_high"].to_numpy(float)
            ax_d.barh(y, tps, height=height * 0.9, color=[f.color(m) for m in methods],
                      alpha=shades[density])
            ax_d.errorbar(tps, y, xerr=[np.clip(tps - lo, 0, None), np.clip(hi - tps, 0, None)],
                          fmt="none", ecolor="0.2", elinewidth=1.0, capsize=2.5)
        ax_d.set_yticks(range(len(methods)), [m.replace("file_", "").replace("_", " ")
                                              for m in methods], fontsize=7)
        ax_d.set(xlabel="tokens/s (real decode, pools in files)")
        ax_d.legend(handles=[Patch(facecolor="0.45", alpha=shades[d], label=f"density {d:g}")
                             for d in densities], fontsize=6.5, loc="lower right")
    r0 = (rows if not rows.empty else dec).iloc[0]
    sub = (f"host {r0['host_id']}, {r0.get('io_mode', '')} reads"
           + ("" if rows.empty else
              f", N={int(r0['N'])}, m={int(r0['m'])}, hidden={int(r0['hidden'])}, {r0['dtype']}, "
              f"queue depth {int(r0['queue_depth'])}, {int(r0['threads'])} thread(s); "
              "disk floor: every active record read by an independent reader at the same queue "
              "depth (the disk's throughput), disk update floor: the paired update's records read "
              "by it (paired's floor); " + f.TIME_CI_TEXT))
    f.suptitle(fig, title, sub)
    if hollow:
        fig.text(0.01, 0.01, f.HOLLOW_TEXT, fontsize=6.5)
    return fig


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------
def _decode_rows(merged: data.Merged) -> pd.DataFrame:
    from .model import decode

    rows = merged["decode"]
    if rows.empty:
        return rows
    return decode(merged, tier="file")


def file_sentence(merged: data.Merged) -> str:
    """Per-update time and bytes of paired vs the full reload at every k, the speedup with its
    interval next to the bytes ratio, and the paired update's throughput against the disk's."""
    rows = selection(merged)
    if rows.empty:
        return f"The file tier has no micro results here: {escape(_skipped(merged))}."
    comp = data.comparison(rows, "paired", "speedup_vs_full_reload", "full_reload")
    paired = rows[rows["method"] == "paired"].set_index("k_target")
    full = rows[rows["method"] == "full_reload"].set_index("k_target")
    items, fractions = [], []
    for r in comp.sort_values("k_target").itertuples():
        k = r.k_target
        p = paired.loc[k]
        ratio = p["bytes_ratio_vs_full_reload"]
        if r.excluded:
            items.append(f"\\textit{{excluded}} at $k = {fmt_int(k)}$ ({', '.join(r.reasons)})")
            continue
        fractions.append(r.point / ratio if ratio and np.isfinite(ratio) else np.nan)
        items.append(f"{_fmt_ms(p['median_s'])}~ms and {_mib(p['slow_bytes_read_mean'])}~MiB "
                     f"at $k = {fmt_int(k)}$ ({fmt_ratio(r.point)}$\\times$ "
                     f"{fmt_interval(r.low, r.high)} faster than a full reload of "
                     f"{_fmt_ms(full.loc[k, 'median_s']) if k in full.index else '--'}~ms; "
                     f"bytes ratio {fmt_ratio(ratio, decimals=0)})")
    r0 = rows.iloc[0]
    included = comp[~comp["excluded"]]["k_target"]
    eff = paired["efficiency_vs_floor"].astype(float).reindex(included).dropna()
    floor = rows[rows["method"] == "disk_floor"]
    floor_mbps = floor["read_mbps"].astype(float)
    io = "\\texttt{O\\_DIRECT}" if r0["io_mode"] == "direct" else escape(r0["io_mode"])
    text = (f"On the file tier (host {escape(r0['host_id'])}: a pool of $N = {fmt_int(r0['N'])}$ "
            f"neurons with hidden size {fmt_int(r0['hidden'])} in {escape(r0['dtype'])} in a pool "
            f"file, records of gate row, up row and down column read with "
            f"{io} "
            f"reads at queue depth {fmt_int(r0['queue_depth'])}; $m = {fmt_int(r0['m'])}$; "
            f"Figure~\\ref{{fig:tiers}}), one paired update took "
            + join_and(items) + ".")
    if fractions:
        fr = np.array([x for x in fractions if np.isfinite(x)])
        if fr.size:
            text += (f" The speedup is {fmt_ratio(fr.min())}--{fmt_ratio(fr.max())} of the bytes "
                     "ratio: time follows the bytes read"
                     + (", except where an update reads so few records (about one per reader "
                        "thread) that the latency of one read, not the disk's throughput, sets "
                        "its time" if fr.min() < 0.8 else "") + ".")
    efficiency = _efficiency_text(rows, paired, eff) if not eff.empty else ""
    if efficiency:
        text += " " + efficiency
    if not floor_mbps.empty:
        text += (f" The disk's random-read throughput on a large batch (every active record, "
                 f"read by the same reader) was "
                 f"{floor_mbps.min():.0f}--{floor_mbps.max():.0f}~MB/s.")
    return text


def _efficiency_text(rows: pd.DataFrame, paired: pd.DataFrame, eff: pd.Series) -> str:
    """The paired update's efficiency_vs_floor at the k of ``eff``, said against the floor its
    rows name: the disk's time for the same records (disk_update_floor), or, in a run without
    it (or whose reader could not time a small batch), the time the disk's big-batch throughput
    allows for its bytes (disk_floor, scaled by the bytes)."""
    floors = paired["floor_method"].reindex(eff.index)
    parts = []
    for floor in [f for f in FLOOR_TEXT if f in set(floors)]:
        ks = floors[floors == floor].index
        engines = sorted({ENGINE_TEXT.get(e, e) for e in
                          paired["floor_engine"].reindex(ks).fillna("").astype(str) if e}) \
            if "floor_engine" in paired.columns else []
        reader = "an independent reader" + (f", {', '.join(engines)}," if engines else "")
        span = f"{fmt_ratio(eff[ks].min())}--{fmt_ratio(eff[ks].max())}"
        where = "" if len(ks) == len(eff) else f" at $k = {', '.join(fmt_int(k) for k in ks)}$"
        parts.append(
            f"{span} of the disk's speed for the same records{where} ({reader} of "
            f"{FLOOR_TEXT[floor]}, at the same queue depth)" if floor == "disk_update_floor" else
            f"{span} of the speed the disk's big-batch throughput allows for its bytes{where} "
            f"({reader} of {FLOOR_TEXT[floor]} at the same queue depth, its time scaled by the "
            "bytes)")
    if not parts:
        return ""
    text = ("The paired update reaches " + join_and(parts) + "; "
            + ("the goal, at least 0.8 at every $k$, is met." if eff.min() >= 0.8 else
               "below the 0.8 goal at $k = " + ", ".join(fmt_int(k) for k in eff[eff < 0.8].index)
               + "$."))
    # where paired is timed against its own records: what the big-batch throughput would allow
    upd = rows[rows["method"] == "disk_update_floor"].set_index("k_target")
    big = rows[rows["method"] == "disk_floor"].set_index("k_target")
    own = [k for k in floors[floors == "disk_update_floor"].index
           if k in upd.index and k in big.index and float(big.loc[k, "read_mbps"]) > 0]
    if own:
        k = min(own)
        took = float(upd.loc[k, "median_s"])
        allows = float(upd.loc[k, "slow_bytes_read_mean"]) / (float(big.loc[k, "read_mbps"]) * 1e6)
        text += (f" At $k = {fmt_int(k)}$ the disk took {_fmt_ms(took)}~ms for the update's "
                 f"{_mib(upd.loc[k, 'slow_bytes_read_mean'])}~MiB, where its big-batch "
                 f"throughput would allow {_fmt_ms(allows)}~ms"
                 + (": a batch this small is bound by the latency of its reads, not by the "
                    "disk's throughput." if took > 1.1 * allows else "."))
    return text


def decode_sentence(merged: data.Merged) -> str:
    """The real decode on the file tier: tokens/s and bytes per token of each file method, the
    window-union paired update against the full reload at the same policy."""
    dec = _decode_rows(merged)
    if dec.empty:
        return ("The real decode did not run on the file tier here (no \\texttt{file\\_*} rows "
                "in decode.csv).")
    parts = []
    for density in sorted(dec["density"].unique()):
        by = {r.method: r for r in dec[dec["density"] == density].itertuples()}
        items = [f"{DECODE_TEXT[m]} {by[m].tokens_per_s:.2f}~tokens/s "
                 f"({float(by[m].slow_bytes_read_per_token) / 1e6:.1f}~MB read per token)"
                 for m in FILE_DECODE if m in by]
        text = f"at density {100 * density:g}\\% {join_and(items)}"
        w = by.get("file_window")
        if w is not None and np.isfinite(getattr(w, "speedup_vs_file_window_reload", np.nan)):
            text += (f"; the paired window update is "
                     f"{fmt_ratio(w.speedup_vs_file_window_reload)}$\\times$ "
                     f"{fmt_interval(w.speedup_vs_file_window_reload_ci95_low, w.speedup_vs_file_window_reload_ci95_high)} "
                     "the full reload at the same policy"
                     + (f" and {fmt_ratio(w.speedup_vs_file_reload)}$\\times$ re-reading only "
                        "the token's own active rows (the bytes a no-packing kernel must read)"
                        if np.isfinite(getattr(w, "speedup_vs_file_reload", np.nan)) else ""))
        parts.append(text)
    r0 = dec.iloc[0]
    mem = dec[dec["method"] == "file_window"]["end_rss_vs_dense"].astype(float).dropna()
    dram = _host_rows(merged["decode"], merged)
    dram = dram[(dram["tier"] == "dram") & (dram["method"] == "paired_window")]
    dram_mem = dram["end_rss_vs_dense"].astype(float).dropna()
    out = (f"With every layer's up rows and down columns in a pool file of its own "
           f"({escape(r0['io_mode'])} reads; the gate, which chooses the mask, stays in memory), "
           "the real decode generated " + "; ".join(parts) + ".")
    if not mem.empty:
        out += (f" Resident memory after decoding with the window cache on files was "
                f"{fmt_ratio(mem.iloc[0])}$\\times$ the dense model's"
                + (f", against {fmt_ratio(dram_mem.iloc[0])}$\\times$ with its pools in memory"
                   if not dram_mem.empty else "") + ".")
    return out


def pay_sentence(merged: data.Merged) -> str:
    """Where the file tier does not pay (high churn) and the caveat of the virtual disk."""
    rows = selection(merged)
    if rows.empty:
        return ("Where the file tier stops paying is not measured here (no file-tier micro "
                "results).")
    comp = data.comparison(rows, "paired", "speedup_vs_full_reload", "full_reload")
    comp = comp[~comp["excluded"]].sort_values("k_target")
    if comp.empty:
        return ("Where the file tier stops paying is not measured here: every file-tier ratio "
                "was excluded (implausible or measured on a busy host).")
    hi = comp.iloc[-1]
    r0 = rows.iloc[0]
    floor = rows[rows["method"] == "disk_floor"]["read_mbps"].astype(float)
    return (f"On the file tier the gain shrinks with churn: at $k = {fmt_int(hi['k_target'])}$ "
            f"of $m = {fmt_int(r0['m'])}$ rows the paired update is only "
            f"{fmt_ratio(hi['point'])}$\\times$ a full reload, because it reads "
            f"{fmt_ratio(1 / rows[(rows['method'] == 'paired') & (rows['k_target'] == hi['k_target'])]['bytes_ratio_vs_full_reload'].iloc[0])} "
            "of the bytes. Its absolute times also depend on the disk: this run's disk answered "
            + (f"{floor.min():.0f}--{floor.max():.0f}~MB/s" if not floor.empty else "at a rate")
            + " to direct reads of a freshly written file, a rate the virtual disk's host-side "
            "cache can serve; a disk without it (or an older file) is slower, and then every "
            "method's time grows with the bytes it reads, which keeps the ratios.")


def cuda_sentence(merged: data.Merged) -> str:
    reason = (merged.study.get("skipped_stages") or {}).get("cuda")
    if reason:
        return (f"The CUDA tier was not measured here: {escape(reason)}; its logic is tested on "
                "the CPU, and the repository's GPU check script measures it where a GPU is at "
                "hand.")
    return ("The CUDA tier was not measured in this run; its logic is tested on the CPU, and the "
            "repository's GPU check script measures it where a GPU is at hand.")


def tier_numbers(out, merged: data.Merged) -> None:
    r"""Macros ``\TierFileSentence``, ``\TierDecodeSentence``, ``\TierPaySentence``,
    ``\TierCudaSentence``."""
    out["TierFileSentence"] = file_sentence(merged)
    out["TierDecodeSentence"] = decode_sentence(merged)
    out["TierPaySentence"] = pay_sentence(merged)
    out["TierCudaSentence"] = cuda_sentence(merged)
