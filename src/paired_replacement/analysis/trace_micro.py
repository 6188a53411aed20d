r"""micro on recorded masks in the paper: the figure ``micro_trace`` and ``\TraceMicroSentence``.

Input: ``micro_trace.csv`` (merged from every host's ``results/hosts/<host>/micro_trace.csv``; the
micro schema, pattern ``trace``), written by ``micro --pattern trace`` replaying the real model's
mask traces (``results/traces/<key>.json``) at the model's N and hidden size (tile 1) and at a
larger N by placing the masks of ``trace_tile`` consecutive layers side by side (tiling: real
masks, not a larger model; each block churns like one layer). The real model's name comes from
study.json; when the model stage did not run, the figure and the sentence say why.

Rows shown: one host (the primary host when it has trace rows, else the first alphabetically),
its first dtype, every trace key, tile and thread count. Intervals are the benchmark's own (the
median's for times; the paired-sample ratio's for speedups), never recomputed; a row excluded
from headline numbers (implausible or busy, :func:`data.comparison`) is drawn hollow and quoted
as excluded.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from . import data
from .latex import escape, fmt_int, fmt_interval, fmt_ratio, join_and

KIND = "micro_trace"
TIME_METHODS = ["paired", "torch_delta", "index_select"]
POLICY_WORDS = {"oracle_topk": ("oracle top-k", "oracle top-$k$"),
                "gate_threshold": ("gate threshold", "gate threshold")}
TILING_TEXT = ("tile T: the masks of T consecutive layers side by side (N = T x the model's N: "
               "tiled real masks, not a larger model)")


def selection(merged: data.Merged) -> pd.DataFrame:
    """The trace rows the figure and the sentence show (see the module doc)."""
    rows = merged[KIND]
    rows = rows[rows["pattern"] == "trace"] if not rows.empty else rows
    if rows.empty:
        return rows
    hosts = sorted(rows["host_id"].unique())
    primary = merged.study.get("primary_host")
    rows = rows[rows["host_id"] == (primary if primary in hosts else hosts[0])]
    return rows[rows["dtype"] == rows["dtype"].iloc[0]]


def key_label(key: str, latex: bool = False) -> str:
    """'oracle_topk-d0.250-w1' -> 'oracle top-k 25%, W=1' (LaTeX: escaped, math W)."""
    found = re.fullmatch(r"(.+)-d([0-9.]+)-w([0-9]+)", key)
    if not found:
        return escape(key) if latex else key
    policy, density, window = found.groups()
    words = POLICY_WORDS.get(policy, (policy, escape(policy)))[1 if latex else 0]
    percent = f"{100 * float(density):g}"
    return (f"{words} {percent}\\%, $W = {window}$" if latex
            else f"{words} {percent}%, W={window}")


def _tick(key: str) -> str:
    """A key as a three-line tick label: policy, density, window."""
    label = key_label(key)
    head, sep, tail = label.rpartition(" ")
    if not sep or ", W=" not in label:
        return label
    policy, _, density = head.rpartition(" ")
    return f"{policy}\n{density}\n{tail}".replace(",\n", "\n")


def model_name(merged: data.Merged, latex: bool = True) -> str:
    info = (merged.study.get("model") or {}).get("model") or {}
    name = str(info.get("model_id", "the model")).split("/")[-1]
    return escape(name) if latex else name


def _skipped(merged: data.Merged) -> str:
    reason = merged.study.get("skipped_stages", {}).get("model")
    return (f"the real-model stage did not run ({reason})" if reason
            else "micro_trace.csv has no rows (no traces replayed)")


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------
def micro_trace_figure(merged: data.Merged):
    """Median time per update (log) of paired, torch_delta and index_select on each recorded
    trace (x), one panel per tile (columns) and thread count (rows), with the 95% intervals of the
    medians as whiskers; flagged rows hollow."""
    from . import figures as f

    title = "One cache update on recorded masks: median time per update"
    ylabel = "time per update (µs, log)"
    rows = selection(merged)
    rows = rows[rows["method"].isin(TIME_METHODS)] if not rows.empty else rows
    if rows.empty:
        return f.no_data_figure(title, _skipped(merged), "trace", ylabel)
    tiles = sorted(int(t) for t in rows["trace_tile"].unique())
    threads = data.thread_counts(rows)
    keys = sorted(rows["trace"].unique(), key=lambda k: (not k.startswith("oracle"), k))
    fig, axes = f.grid(len(threads), len(tiles), width=3.0, height=2.7, sharey=True)
    methods = f._ordered(rows["method"], f.METHOD_ORDER)
    hollow, values = 0, []
    for i, t in enumerate(threads):
        for j, tile in enumerate(tiles):
            ax = axes[i][j]
            sub = data.where(rows, threads=t, trace_tile=tile)
            if sub.empty:
                f.no_data(ax, f"tile {tile} at {t} thread(s)")
                continue
            for index, method in enumerate(methods):
                mine = sub[sub["method"] == method].set_index("trace").reindex(keys)
                mine = mine[np.isfinite(mine["median_s"].astype(float))]
                if mine.empty:
                    continue
                x = np.array([keys.index(k) for k in mine.index], float)
                x += (index - (len(methods) - 1) / 2) * 0.22
                y, lo, hi = (mine[c].to_numpy(float) * 1e6
                             for c in ("median_s", "ci95_low_s", "ci95_high_s"))
                excluded = np.array([bool(data.row_reasons(r)) for _, r in mine.iterrows()])
                f.errorbars(ax, x, y, lo, hi, f.color(method))
                ax.scatter(x[~excluded], y[~excluded], color=f.color(method),
                           marker=f.marker(method), s=28, zorder=3)
                ax.scatter(x[excluded], y[excluded], facecolors="white", marker=f.marker(method),
                           s=30, zorder=4, edgecolors=f.color(method), linewidths=1.3)
                hollow += int(excluded.sum())
                values += [v for v in (*y, *lo, *hi) if np.isfinite(v) and v > 0]
            n = int(sub["N"].iloc[0])
            ax.set_title(f"tile {tile} (N = {n})" + (f", {t} thread" + "s" * (t != 1)
                                                     if len(threads) > 1 else ""), fontsize=8)
            ax.set_xticks(range(len(keys)))
            ax.set_xticklabels([_tick(k) for k in keys], fontsize=6.5)
            ax.set_xlim(-0.6, len(keys) - 0.4)
            ax.set_yscale("log")
            if j == 0:
                ax.set_ylabel(ylabel)
    if values:
        axes[0][0].set_ylim(min(values) / 1.5, max(values) * 1.5)
    r0 = rows.iloc[0]
    thread_text = "" if len(threads) != 1 else f", {threads[0]} thread" + "s" * (threads[0] != 1)
    f.suptitle(fig, title, f"({model_name(merged, latex=False)}'s FFN masks, recorded on "
               f"held-out text, replayed from layer {int(r0['trace_layer'])}, "
               f"hidden={int(r0['hidden'])}, "
               f"{r0['dtype']}, host {r0['host_id']}{thread_text}; {TILING_TEXT}; "
               f"{f.TIME_CI_TEXT})")
    f.style_legend(fig, methods, {}, hollow > 0)
    return fig


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------
def trace_sentence(merged: data.Merged) -> str:
    """paired vs torch_delta on the recorded masks, per tile (the smallest, 1, and the largest),
    each trace key with its 95% interval, at the host's largest thread count."""
    rows = selection(merged)
    if rows.empty:
        return ("The trace-driven micro benchmark has no results here: "
                f"{escape(_skipped(merged))}.")
    threads = max(data.thread_counts(rows))
    rows = rows[rows["threads"] == threads]
    comp = data.comparison(rows, "paired", "speedup_vs_torch_delta", "torch_delta")
    if comp.empty:
        return ("The trace-driven micro benchmark measured no ratio of \\texttt{paired} to "
                "\\texttt{torch\\_delta}.")
    tiles = sorted(int(t) for t in comp["trace_tile"].unique())
    shown = sorted({tiles[0], tiles[-1]})
    keys = sorted(comp["trace"].unique(), key=lambda k: (not k.startswith("oracle"), k))
    parts = []
    for tile in shown:
        at = comp[comp["trace_tile"] == tile].set_index("trace")
        items = []
        for key in keys:
            if key not in at.index:
                continue
            r = at.loc[key]
            label = key_label(key, latex=True)
            items.append(f"\\textit{{excluded}} ({label}; {', '.join(r['reasons'])})"
                         if r["excluded"] else
                         f"{fmt_ratio(r['point'])}$\\times$ {fmt_interval(r['low'], r['high'])} "
                         f"({label})")
        n = int(at["N"].iloc[0])
        where = (f"at the model's own size ($N = {fmt_int(n)}$)" if tile == 1 else
                 f"with {tile} layers' masks side by side ($N = {fmt_int(n)}$, tiled: "
                 "a larger $N$ from real masks, not a larger model)")
        parts.append(f"{join_and(items)} {where}")
    r0 = rows.iloc[0]
    threads_text = f"{threads} thread" + ("" if threads == 1 else "s")
    return (f"Replaying {model_name(merged)}'s recorded masks (hidden size "
            f"{fmt_int(r0['hidden'])}, the first {fmt_int(int(r0['steps']) + 1)} held-out tokens "
            f"from layer {fmt_int(r0['trace_layer'])}; Figure~\\ref{{fig:micro_trace}}), the "
            "paired update's speedup over \\texttt{torch\\_delta} (its time over paired's) is "
            + "; and ".join(parts)
            + f" ({escape(r0['host_id'])}, {threads_text}; 95\\% intervals of the paired-sample "
            "ratio).")


def trace_numbers(out, merged: data.Merged) -> None:
    r"""Macro ``\TraceMicroSentence`` (see :func:`trace_sentence`)."""
    out["TraceMicroSentence"] = trace_sentence(merged)
