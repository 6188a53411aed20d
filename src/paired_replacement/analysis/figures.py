"""The paper's figures, one function per figure, from the merged tables (registry ``FIGURES``).

Every function takes a :class:`~paired_replacement.analysis.data.Merged` and returns a matplotlib
figure; :func:`render` writes it as PDF and PNG. Missing data never fails: a figure (or one of its
panels) without rows shows an empty axes with a centered "no data: <what is missing>".

Error bars are the 95% intervals the benchmarks wrote, never recomputed here: for times the
hierarchical bootstrap interval of the median (``ci95_low_s``/``ci95_high_s``: processes, then
rounds, resampled); for speedups and efficiencies the interval of the paired-sample ratio
(``<column>_ci95_low``/``_high``: the two methods' values of one round divided, then the same
bootstrap), so the baseline's noise is in it.

Thread counts are told apart by line style (the largest count solid, smaller ones dashed or
dotted) or by panel; a point kept out of headline numbers (its row or its baseline's row
implausible, or measured on a busy host; see :func:`~paired_replacement.analysis.data.comparison`)
is drawn with a hollow marker.

Rows shown (see :mod:`~paired_replacement.analysis.data` for the selections): micro figures use the
micro selection (uniform masks, gate on, first dtype, every thread count) at the primary (N, m);
``cross_host`` fixes the primary hidden size and each host's largest thread count;
``e2e_speedup`` uses the e2e selection.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from . import data  # noqa: E402

#: every method of every table, in legend order, with its tab20 color index and marker
_STYLE = {
    "paired": (0, "o"), "paired_indices": (1, "s"), "paired_control": (18, "D"),
    "hybrid": (4, "^"), "paired_rowffn": (5, "v"), "torch_delta": (2, "P"),
    "torch_delta_indices": (3, "X"), "index_select": (6, "h"), "rebuild_floor": (14, "p"),
    "rebuild": (14, "p"), "memcpy_floor": (8, "<"), "memcpy_floor_nt": (9, ">"),
    "no_pack": (10, "d"), "ffn_floor": (15, "H"), "dense": (16, "8"), "bool_mask": (7, "*"),
    "numpy_reference": (12, "o"), "gather": (6, "h"), "paired_window": (1, "s"),
    "paired_window_subset": (19, "D"), "full_reload": (11, "h"), "disk_floor": (13, "<"),
    "disk_update_floor": (19, ">"),
    "file_reload": (11, "h"), "file_paired": (0, "o"), "file_window_reload": (17, "*"),
    "file_window": (1, "s")}
METHOD_ORDER = list(_STYLE)
_TAB20 = sns.color_palette("tab20", 20)
_PALETTE = {m: _TAB20[i] for m, (i, _) in _STYLE.items()}
_MARKERS = {m: marker for m, (_, marker) in _STYLE.items()}
K_LABEL = "k (rows swapped per update, symlog scale)"
SPEEDUP_LABEL = "speedup of paired (×)"
CI_TEXT = ("error bars: 95% intervals of the paired-sample ratio (processes, then rounds, "
           "resampled)")
HOLLOW_TEXT = "hollow: excluded from headline numbers (implausible or busy host)"
_OTHER_STYLES = ["--", ":", "-."]

sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)


def color(method: str):
    return _PALETTE.get(method, "0.4")


def marker(method: str) -> str:
    return _MARKERS.get(method, "o")


def thread_styles(counts) -> dict[int, object]:
    """Line style per thread count: the largest solid, the smaller ones dashed, dotted, ..."""
    counts = sorted({int(c) for c in counts})
    styles = {c: _OTHER_STYLES[i % len(_OTHER_STYLES)] for i, c in enumerate(counts[:-1])}
    if counts:
        styles[counts[-1]] = "-"
    return styles


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def no_data(ax, what: str) -> None:
    """An empty panel saying which data is missing (the paper must build on partial results)."""
    ax.text(0.5, 0.5, "no data: " + "\n".join(textwrap.wrap(what, 40)), ha="center",
            va="center", transform=ax.transAxes, fontsize=8, color="0.35")
    # Tick labels off for this axes only (set_xticks would clear the ticks of shared axes too).
    ax.tick_params(left=False, bottom=False, labelleft=False, labelbottom=False)
    ax.grid(False)


def no_data_figure(title: str, what: str, xlabel: str = "", ylabel: str = ""):
    fig, ax = plt.subplots(figsize=(6.0, 3.2), layout="constrained")
    no_data(ax, what)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    return fig


def suptitle(fig, title: str, subtitle: str) -> None:
    """Title plus a smaller subtitle wrapped to the figure's width."""
    width = int(fig.get_figwidth() * 13)
    fig.suptitle(title + "\n" + "\n".join(textwrap.wrap(subtitle, width)), fontsize=9)


def grid(nrows: int, ncols: int, *, width: float = 3.3, height: float = 2.6, **kw):
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(width * ncols, 5.0), height * nrows + 1.2),
                             squeeze=False, layout="constrained", **kw)
    return fig, axes


def errorbars(ax, x, y, lo, hi, color, **kw) -> None:
    """Asymmetric error bars from absolute bounds (NaN bounds: no bar)."""
    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
    below = np.clip(np.nan_to_num(y - lo, nan=0.0), 0, None)
    above = np.clip(np.nan_to_num(hi - y, nan=0.0), 0, None)
    ax.errorbar(np.asarray(x, float), y, yerr=[below, above], fmt="none", ecolor=color,
                elinewidth=1.0, capsize=2.5, **kw)


def flagged_line(ax, x, comp: pd.DataFrame, color, marker: str, linestyle) -> int:
    """A line through ``comp['point']`` at ``x`` with its interval as error bars; included points
    filled, excluded ones hollow. Returns the number of hollow points."""
    x = np.asarray(x, float)
    y = comp["point"].to_numpy(float)
    excluded = comp["excluded"].to_numpy(bool)
    ax.plot(x, y, color=color, ls=linestyle, lw=1.3)
    errorbars(ax, x, y, comp["low"], comp["high"], color)
    ax.scatter(x[~excluded], y[~excluded], color=color, marker=marker, s=26, zorder=3,
               edgecolors=color, linewidths=1.2)
    ax.scatter(x[excluded], y[excluded], facecolors="white", marker=marker, s=30, zorder=4,
               edgecolors=color, linewidths=1.3)
    return int(excluded.sum())


def style_legend(fig, methods: list[str], threads: dict[int, object], hollow: bool,
                 title: str | None = None, colors: dict | None = None) -> None:
    """One legend: methods (color and marker), thread counts (line style), hollow = excluded."""
    handles, labels = [], []
    for m in methods:
        c = (colors or {}).get(m, color(m))
        handles.append(plt.Line2D([], [], color=c, marker=marker(m) if not colors else "o",
                                  ls="-"))
        labels.append(m)
    if len(threads) > 1:
        for t, ls in sorted(threads.items()):
            handles.append(plt.Line2D([], [], color="0.3", ls=ls))
            labels.append(f"{t} thread" + ("" if t == 1 else "s"))
    if hollow:
        handles.append(plt.Line2D([], [], color="0.3", marker="o", ls="none",
                                  markerfacecolor="white"))
        labels.append("excluded (implausible / busy)")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 4),
                   title=title, frameon=False)


def value_ticks(ax, values) -> None:
    """x ticks at exactly the measured values (k or m), labelled plainly."""
    values = sorted({float(v) for v in values})
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(values))
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


def symlog_k(ax, ks) -> None:
    """Symmetric-log k axis (log above 1, linear below: k = 0 shows), ticks at the k measured."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlim(-0.4 if min(ks) <= 0 else min(ks) / 1.5, max(ks) * 1.5)
    value_ticks(ax, ks)


def dodge(x, index: int, count: int, log: bool = True) -> np.ndarray:
    """Shift the x of the ``index``-th of ``count`` overlapping series a little (so error bars
    of the thread counts do not hide each other): multiplicative on log axes, k = 0 additive."""
    x = np.asarray(x, float)
    offset = (index - (count - 1) / 2) * 0.06
    if not log:
        return x + offset
    return np.where(x > 0, x * (1 + offset), x + offset)


def _config_text(primary: data.Primary, hidden: bool = False) -> str:
    text = f"uniform masks, N={primary.N}, m={primary.m}"
    if hidden:
        text += f", hidden={primary.hidden}"
    return text + f", gate on, {primary.dtype}"


def _other_shape(rows: pd.DataFrame, primary: data.Primary) -> str:
    """' (N=…, m=…)' when a host's panel shows another (N, m) than the primary one."""
    if rows.empty or (rows["N"].iloc[0], rows["m"].iloc[0]) == (primary.N, primary.m):
        return ""
    return f" (N={int(rows['N'].iloc[0])}, m={int(rows['m'].iloc[0])})"


def _ordered(values, order: list[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


def _log_ylim(ax, values) -> None:
    """Log y axis spanning the values and 1 with some room."""
    values = np.asarray([v for v in values if np.isfinite(v) and v > 0], float)
    ax.set_yscale("log")
    if values.size:
        low, high = min(values.min(), 1.0), max(values.max(), 1.0)
        ax.set_ylim(low / 1.4, high * 1.4)
    ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))


# ---------------------------------------------------------------------------------------------
# micro
# ---------------------------------------------------------------------------------------------
SPEEDUP_METHODS = ["paired", "paired_control", "hybrid"]
SPEEDUP_BASELINES = ["torch_delta", "index_select"]
EFFICIENCY_METHODS = ["paired", "hybrid", "torch_delta", "index_select"]
PLAUSIBLE_LIMIT = 1.25  # micro.PLAUSIBLE_EFFICIENCY: above it a point is flagged implausible


def _micro_panels(merged: data.Merged):
    """The micro figure rows (k >= 0) and their (host, hidden) panels."""
    rows, primary = data.micro_figure_rows(merged.micro, merged.study)
    rows = rows[rows["k_target"] >= 0]
    panels = [(h, hid) for h in sorted(rows["host_id"].unique())
              for hid in sorted(rows.loc[rows["host_id"] == h, "hidden"].unique())]
    return rows, primary, panels


def _thread_panels(axes, panels, row_threads, frame: pd.DataFrame, primary, what: str):
    """The panels of a (host × hidden) by thread-count grid: yields (row, column, axes, rows of
    ``frame`` for that host, hidden size and thread count); titles every panel, switches off the
    unused ones and says 'no data' in the empty ones."""
    for i, (host, hidden) in enumerate(panels):
        for j, ax in enumerate(axes[i]):
            if not row_threads[i] and j == 0:
                ax.set_title(f"{host}, hidden={int(hidden)}", fontsize=8)
                no_data(ax, f"{host} has no {what} at hidden={int(hidden)}")
                continue
            if j >= len(row_threads[i]):
                ax.set_axis_off()
                continue
            t = row_threads[i][j]
            sub = frame[(frame["host_id"] == host) & (frame["hidden"] == hidden)
                        & (frame["threads"] == t)]
            ax.set_title(f"{host}, hidden={int(hidden)}" + _other_shape(sub, primary)
                         + f", {t} thread" + ("" if t == 1 else "s"), fontsize=8)
            if sub.empty:
                no_data(ax, f"{host} has no {what} at hidden={int(hidden)}")
                continue
            yield i, j, ax, sub


def micro_speedup(merged: data.Merged):
    """Speedup of one update over the same differential update in plain torch (torch_delta, left)
    and over index_select (right) vs k: one line per method and thread count, one row of panels
    per host × hidden size."""
    title = "One cache update: speedup over torch_delta and over index_select"
    rows, primary, panels = _micro_panels(merged)
    comps = {b: pd.concat([data.comparison(rows, m, f"speedup_vs_{b}", b, full=merged.micro)
                           for m in SPEEDUP_METHODS]) for b in SPEEDUP_BASELINES}
    if all(c.empty for c in comps.values()):
        what = ("micro.csv has no rows with uniform masks and gate on" if primary is None
                else "micro.csv has no paired speedups vs torch_delta or index_select in the "
                     "selection")
        return no_data_figure(title, what, K_LABEL, SPEEDUP_LABEL)
    styles = thread_styles(rows["threads"])
    fig, axes = grid(len(panels), len(SPEEDUP_BASELINES))
    drawn, hollow = [], 0
    for i, (host, hidden) in enumerate(panels):
        for j, base in enumerate(SPEEDUP_BASELINES):
            ax = axes[i][j]
            comp = comps[base]
            comp = comp[(comp["host_id"] == host) & (comp["hidden"] == hidden)]
            ax.set_title(f"{host}, hidden={int(hidden)}" + _other_shape(comp, primary)
                         + f": vs {base}", fontsize=8)
            if comp.empty:
                no_data(ax, f"{host} has no paired rows timed against {base} at "
                            f"hidden={int(hidden)}")
                continue
            threads = data.thread_counts(comp)  # dodged among the counts of this panel
            for method in _ordered(comp["method"], METHOD_ORDER):
                for t_index, t in enumerate(threads):
                    sub = comp[(comp["method"] == method) & (comp["threads"] == t)]
                    sub = sub.sort_values("k_target")
                    if sub.empty:
                        continue
                    hollow += flagged_line(ax, dodge(sub["k_target"], t_index, len(threads)),
                                           sub, color(method), marker(method), styles[t])
                    drawn.append(method)
            ax.axhline(1.0, color="0.3", ls="--", lw=1.0)
            ax.text(0.02, 1.0, f" {base} (= 1)", transform=ax.get_yaxis_transform(),
                    va="bottom", fontsize=7, color="0.3")
            symlog_k(ax, comp["k_target"])
            _log_ylim(ax, pd.concat([comp["point"], comp["low"], comp["high"]]))
            ax.set(xlabel=K_LABEL if i == len(panels) - 1 else "",
                   ylabel="baseline time / method time (×)" if j == 0 else "")
    suptitle(fig, title, f"({_config_text(primary)}; {CI_TEXT}; {HOLLOW_TEXT})")
    style_legend(fig, _ordered(drawn, METHOD_ORDER), styles, hollow > 0)
    return fig


def micro_efficiency(merged: data.Merged):
    """Efficiency vs each method's own memcpy floor (floor time / method time) over k, one panel
    per thread count (rows: host × hidden), with the plausibility limit shaded."""
    title = "One cache update: efficiency vs the memcpy floor of its own rows"
    rows, primary, panels = _micro_panels(merged)
    comp = pd.concat([data.comparison(rows, m, "efficiency_vs_floor", full=merged.micro)
                      for m in EFFICIENCY_METHODS])
    ylabel = "floor time / method time (1 = floor)"
    if comp.empty:
        what = ("micro.csv has no rows with uniform masks and gate on" if primary is None
                else "micro.csv has no efficiency_vs_floor values in the selection")
        return no_data_figure(title, what, K_LABEL, ylabel)
    # Columns: the thread counts of each panel row's host, ascending (hosts may differ).
    row_threads = [data.thread_counts(comp[(comp["host_id"] == h) & (comp["hidden"] == hid)])
                   for h, hid in panels]
    fig, axes = grid(len(panels), max(1, max(len(t) for t in row_threads)), sharey=True)
    drawn, hollow = [], 0
    top = max(1.4, float(np.nanmax(comp[["point", "high"]].to_numpy(float))) * 1.08)
    for i, j, ax, sub in _thread_panels(axes, panels, row_threads, comp, primary,
                                        "efficiencies"):
        for method in _ordered(sub["method"], METHOD_ORDER):
            line = sub[sub["method"] == method].sort_values("k_target")
            hollow += flagged_line(ax, line["k_target"], line, color(method), marker(method), "-")
            drawn.append(method)
        ax.axhspan(PLAUSIBLE_LIMIT, top, color="red", alpha=0.07, lw=0)
        ax.text(0.02, PLAUSIBLE_LIMIT, " implausible above 1.25",
                transform=ax.get_yaxis_transform(), va="bottom", fontsize=7, color="darkred")
        symlog_k(ax, sub["k_target"])
        ax.set_ylim(0, top)
        ax.set(xlabel=K_LABEL if i == len(panels) - 1 else "", ylabel=ylabel if j == 0 else "")
    suptitle(fig, title, f"({_config_text(primary)}; floors: the faster memcpy of the rows the "
             "paired update writes for differential methods, rebuild_floor for index_select; "
             f"{CI_TEXT}; {HOLLOW_TEXT})")
    style_legend(fig, _ordered(drawn, METHOD_ORDER), {}, hollow > 0)
    return fig


TIME_METHODS = ["paired", "hybrid", "torch_delta", "index_select", "rebuild_floor"]
TIME_CI_TEXT = ("error bars: 95% interval of each median (processes, then rounds, resampled); "
                "a time's interval holds only its own method's noise")


def _time_rows(rows: pd.DataFrame, method: str) -> pd.DataFrame:
    """``method``'s rows as a comparison-like frame: point/low/high in ms, excluded when the row
    itself is flagged (implausible or busy)."""
    sub = rows[rows["method"] == method].sort_values("k_target")
    sub = sub[np.isfinite(sub["median_s"].astype(float))]
    out = sub.assign(point=sub["median_s"] * 1e3, low=sub["ci95_low_s"] * 1e3,
                     high=sub["ci95_high_s"] * 1e3)
    out["excluded"] = [bool(data.row_reasons(r)) for _, r in sub.iterrows()] if len(sub) else \
        pd.Series([], dtype=bool)
    return out


def micro_time(merged: data.Merged):
    """Absolute median time of one update (ms, log) vs k (symlog) for the main methods, one panel
    per thread count (rows: host × hidden), with the 95% intervals of the medians; flagged rows
    (implausible or busy) hollow."""
    title = "One cache update: median time per update"
    rows, primary, panels = _micro_panels(merged)
    rows = rows[rows["method"].isin(TIME_METHODS)]
    ylabel = "time per update (ms, log)"
    if rows.empty:
        what = ("micro.csv has no rows with uniform masks and gate on" if primary is None
                else "micro.csv has no times of " + ", ".join(TIME_METHODS))
        return no_data_figure(title, what, K_LABEL, ylabel)
    row_threads = [data.thread_counts(rows[(rows["host_id"] == h) & (rows["hidden"] == hid)])
                   for h, hid in panels]
    fig, axes = grid(len(panels), max(1, max(len(t) for t in row_threads)), sharey=True)
    drawn, hollow, values = [], 0, []
    for i, j, ax, sub in _thread_panels(axes, panels, row_threads, rows, primary, "times"):
        methods = _ordered(sub["method"], METHOD_ORDER)
        for index, method in enumerate(methods):
            line = _time_rows(sub, method)
            if line.empty:
                continue
            hollow += flagged_line(ax, dodge(line["k_target"], index, len(methods)), line,
                                   color(method), marker(method), "-")
            values += list(line["low"]) + list(line["high"]) + list(line["point"])
            drawn.append(method)
        symlog_k(ax, sub["k_target"])
        ax.set_yscale("log")
        ax.set(xlabel=K_LABEL if i == len(panels) - 1 else "", ylabel=ylabel if j == 0 else "")
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if finite:
        axes[0][0].set_ylim(min(finite) / 1.5, max(finite) * 1.5)
    suptitle(fig, title, f"({_config_text(primary)}; {TIME_CI_TEXT}; hollow: row excluded from "
             "headline numbers (implausible or busy host))")
    style_legend(fig, _ordered(drawn, METHOD_ORDER), {}, hollow > 0)
    return fig


def cross_host(merged: data.Merged):
    """Paired speedup vs torch_delta at each k, one point with its 95% interval per host (primary
    N, m, hidden; each host at its largest thread count), hosts side by side at each k; excluded
    points hollow. Points, not bars: the y axis is logarithmic."""
    title = "Paired update speedup over torch_delta across hosts"
    rows, primary = data.micro_primary_rows(merged.micro, merged.study)
    rows = data.default_threads(rows[rows["k_target"] >= 0])
    comp = data.comparison(rows, "paired", "speedup_vs_torch_delta", "torch_delta",
                           full=merged.micro)
    if comp.empty:
        return no_data_figure(title, "micro.csv has no paired rows with a torch_delta ratio "
                              "(uniform masks, gate on)", "k (rows swapped per update)",
                              SPEEDUP_LABEL)
    hosts = sorted(comp["host_id"].unique())
    ks = sorted(comp["k_target"].unique())
    colors = dict(zip(hosts, sns.color_palette("deep", len(hosts))))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(ks) * max(1, len(hosts)) ** 0.5 + 2), 3.6),
                           layout="constrained")
    hollow = 0
    for h, host in enumerate(hosts):
        sub = comp[comp["host_id"] == host].groupby("k_target").first()
        x = dodge([ks.index(k) for k in sub.index], h, len(hosts), log=False) \
            if len(hosts) > 1 else np.array([ks.index(k) for k in sub.index], float)
        y = sub["point"].to_numpy(float)
        excluded = sub["excluded"].to_numpy(bool)
        threads = int(sub["threads"].iloc[0])
        errorbars(ax, x, y, sub["low"], sub["high"], colors[host])
        ax.scatter(x[~excluded], y[~excluded], color=colors[host], marker="o", s=30, zorder=3,
                   label=f"{host} ({threads} thread{'' if threads == 1 else 's'})")
        ax.scatter(x[excluded], y[excluded], facecolors="white", edgecolors=colors[host],
                   marker="o", s=32, zorder=4, linewidths=1.3)
        hollow += int(excluded.sum())
    ax.axhline(1.0, color="0.3", ls="--", lw=1.0)
    ax.set_xticks(range(len(ks)), [f"{int(k)}" for k in ks])
    ax.set_xlim(-0.5, len(ks) - 0.5)
    _log_ylim(ax, pd.concat([comp["point"], comp["low"], comp["high"]]))
    ax.set(xlabel="k (rows swapped per update)", ylabel="torch_delta time / paired time (×)")
    handles, labels = ax.get_legend_handles_labels()
    if hollow:
        handles.append(plt.Line2D([], [], color="0.3", marker="o", ls="none",
                                  markerfacecolor="white"))
        labels.append("excluded (implausible / busy)")
    ax.legend(handles, labels, title="host", fontsize=7, title_fontsize=7)
    others = sorted(set(merged.micro["host_id"]) - set(hosts))
    suptitle(fig, title, f"({_config_text(primary, hidden=True)}; each host at its largest thread "
             f"count; {CI_TEXT}; dashed: parity"
             + (f"; not measured in this configuration: {', '.join(others)}" if others else "")
             + ")")
    return fig


# ---------------------------------------------------------------------------------------------
# e2e
# ---------------------------------------------------------------------------------------------
E2E_BASELINES = ["no_pack", "torch_delta"]


def e2e_speedup(merged: data.Merged):
    """Decode-step speedup of paired over no_pack (left: does packing pay?) and over torch_delta
    (right) vs m, one line per batch size (color) and thread count (line style); rows: hosts."""
    title = "Decode step (update + sparse FFN): speedup of paired over no_pack and torch_delta"
    rows = data.e2e_selection(merged.e2e)
    comps = {b: data.comparison(rows, "paired", f"speedup_vs_{b}", b, full=merged.e2e)
             for b in E2E_BASELINES}
    if all(c.empty for c in comps.values()):
        return no_data_figure(title, "e2e.csv has no paired rows with a no_pack or torch_delta "
                              "baseline (no sweep and no e2e run)", "m (top-m neurons per token)",
                              SPEEDUP_LABEL)
    hosts = sorted(rows["host_id"].unique())
    batches = sorted(rows["batch"].unique())
    colors = dict(zip([f"{int(b)}" for b in batches],
                      sns.color_palette("viridis", len(batches))))
    styles = thread_styles(rows["threads"])
    fig, axes = grid(len(hosts), len(E2E_BASELINES), sharey=True)
    hollow = 0
    for i, host in enumerate(hosts):
        host_rows = rows[rows["host_id"] == host]
        source = "sweep" if (host_rows["benchmark"] == "sweep").any() else "e2e"
        r0 = host_rows.iloc[0]
        for j, base in enumerate(E2E_BASELINES):
            ax = axes[i][j]
            comp = comps[base]
            comp = comp[comp["host_id"] == host]
            ax.set_title(f"{host}: vs {base} ({source}, N={int(r0['N'])}, "
                         f"hidden={int(r0['hidden'])})", fontsize=8)
            if comp.empty:
                no_data(ax, f"{host} has no paired rows timed against {base}")
                continue
            threads = data.thread_counts(comp)  # dodged among the counts of this panel
            for b in batches:
                for t_index, t in enumerate(threads):
                    line = comp[(comp["batch"] == b) & (comp["threads"] == t)].sort_values("m")
                    if line.empty:
                        continue
                    hollow += flagged_line(ax, dodge(line["m"], t_index, len(threads)), line,
                                           colors[f"{int(b)}"], "o", styles[t])
            ax.axhline(1.0, color="0.3", ls="--", lw=1.0)
            ax.text(0.02, 1.0, f" {base} (= 1)", transform=ax.get_yaxis_transform(),
                    va="bottom", fontsize=7, color="0.3")
            ax.set_xscale("log", base=2)
            value_ticks(ax, host_rows["m"])
            _log_ylim(ax, pd.concat([c[c["host_id"] == host][col] for c in comps.values()
                                     for col in ("point", "low", "high")]))
            ax.set(xlabel="m (top-m neurons per token)" if i == len(hosts) - 1 else "",
                   ylabel="baseline time / paired time (×)" if j == 0 else "")
    suptitle(fig, title, "(above 1 against no_pack: packing pays; gate/dtype/rho/beta: each "
             f"host's most measured; {CI_TEXT}; {HOLLOW_TEXT})")
    style_legend(fig, list(colors), styles, hollow > 0, title="batch (tokens per step)",
                 colors=colors)
    return fig


# ---------------------------------------------------------------------------------------------
# perf
# ---------------------------------------------------------------------------------------------
SOURCE_TEXT = {"hw": "hw (perf stat, hardware counters)",
               "cachegrind": "cachegrind (simulated caches, generic build)"}
REBUILD_TEXT = "rebuild: the core's full gather, a memcpy of all m rows (not index_select)"


def perf_counters(merged: data.Merged):
    """Per-update counter values of paired vs rebuild (the core's full gather: a memcpy of all m
    rows) per event (points, log y), at the counted k closest to 64 (:func:`data.perf_figure_k`,
    the k the text quotes), one panel per host, each labelled with its counter source and, under
    cachegrind, the simulated last-level cache; 'no counters available' when no host could
    count."""
    title = "Counters per update: paired vs full rebuild"
    perf = merged.perf
    ylabel = "events per update (log)"
    if perf.empty:
        return no_data_figure(title, "perf.csv has no rows", "counter event", ylabel)
    counted = perf[(perf["source"] != "unavailable") & np.isfinite(perf["per_update"])]
    hosts = sorted(perf["host_id"].unique())
    if counted.empty:
        fig = no_data_figure(title, "no counters available (perf source 'unavailable' on every "
                             f"host: {', '.join(hosts)})", "counter event", ylabel)
        return fig
    primary = merged.primary
    fig, axes = grid(1, len(hosts), width=4.2, height=3.2)
    colors = {m: _PALETTE[m] for m in ("paired", "rebuild")}
    for j, host in enumerate(hosts):
        ax = axes[0][j]
        rows = counted[counted["host_id"] == host]
        if rows.empty:
            ax.set_title(host)
            no_data(ax, f"no counters available on {host} (source unavailable)")
            continue
        rows = data.perf_config(rows, primary)
        rows = rows[rows["k"] == data.perf_figure_k(rows)]
        events = list(dict.fromkeys(rows["event"]))
        # Points, not bars: the y axis is logarithmic (a bar's length would mean nothing).
        for i, method in enumerate(("paired", "rebuild")):
            sub = rows[(rows["method"] == method) & (rows["per_update"] > 0)]
            x = np.array([events.index(e) for e in sub["event"]], float) + (i - 0.5) * 0.25
            ax.scatter(x, sub["per_update"], color=colors[method], marker=marker(method), s=30,
                       zorder=3)
        ax.set_yscale("log", nonpositive="clip")
        ax.set_xticks(range(len(events)), events)
        ax.set_xlim(-0.6, len(events) - 0.4)
        per = rows.set_index(["method", "event"])["per_update"]
        for e, event in enumerate(events):
            if ("paired", event) in per.index and ("rebuild", event) in per.index \
                    and per[("rebuild", event)] > 0:
                ratio = per[("paired", event)] / per[("rebuild", event)]
                ax.annotate(f"{ratio:.2g}×", (e, 1.0), xycoords=("data", "axes fraction"),
                            ha="center", va="top", fontsize=6, color="0.25")
        sources = ", ".join(SOURCE_TEXT.get(s, s) for s in sorted(rows["source"].unique()))
        r0 = rows.iloc[0]
        sim = rows["sim_ll_bytes"].max()
        if (rows["source"] == "cachegrind").any() and np.isfinite(sim) and sim > 0:
            moved = (rows["bytes_per_update"] * rows["updates"]).max() / 2**20
            sources += (f"\nsimulated LL {sim / 2**20:.3g} MiB; counted updates move "
                        f"≤ {moved:.3g} MiB")
        ax.set_title(f"{host}: N={int(r0['N'])}, m={int(r0['m'])}, k={int(r0['k'])}, "
                     f"hidden={int(r0['hidden'])}\nsource: {sources}", fontsize=8)
        top = rows["per_update"].max()
        if top > 0:
            ax.set_ylim(top=top * 8)  # room for the ratio labels
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set(xlabel="counter event", ylabel=ylabel if j == 0 else "")
    suptitle(fig, title, f"(counted updates only; {REBUILD_TEXT}; top labels: paired/rebuild "
             "ratio)")
    style_legend(fig, ["paired", "rebuild"], {}, False)
    return fig


# ---------------------------------------------------------------------------------------------
# autotune
# ---------------------------------------------------------------------------------------------
def autotune_landscape(merged: data.Merged):
    """Median update time of the tune phase over grain × par_threshold, one panel per tau, one row
    per host × thread count, the winner of that thread count outlined, and the held-out gain of
    the winner over the defaults (with its interval) noted under the row."""
    title = "Autotune landscape: median hybrid update time"
    rows = merged.autotune
    tune = rows[~rows["phase"].isin(["held_out_winner", "held_out_default"])]
    if tune.empty:
        return no_data_figure(title, "autotune.csv has no tune-phase rows (autotune not run with "
                              "--csv)", "grain (rows per parallel task)", "par_threshold (rows)")
    hosts = sorted(tune["host_id"].unique())
    panel_rows = [(h, t) for h in hosts
                  for t in data.thread_counts(tune[tune["host_id"] == h])]
    taus = sorted(tune["hybrid_tau_frac"].unique())
    fig, axes = grid(len(panel_rows), len(taus), width=3.0, height=2.6)
    busy_seen, notes = False, []
    for i, (host, threads) in enumerate(panel_rows):
        host_rows = tune[(tune["host_id"] == host) & (tune["threads"] == threads)]
        key = data.mode_key(host_rows, ["N", "m", "hidden", "k_list"])
        host_rows = data.where(host_rows, **dict(zip(["N", "m", "hidden", "k_list"], key)))
        ms = host_rows["median_s"] * 1e3
        vmin, vmax = float(ms.min()), float(ms.max())
        for j, tau in enumerate(taus):
            ax = axes[i][j]
            sub = host_rows[host_rows["hybrid_tau_frac"] == tau]
            ax.set_title(f"{host}, {threads} thr.: tau={tau:g}", fontsize=8)
            if sub.empty:
                no_data(ax, f"{host} did not time tau={tau:g} at {threads} threads")
                continue
            table = sub.assign(ms=sub["median_s"] * 1e3).pivot_table(
                index="par_threshold", columns="grain", values="ms", aggfunc="median")
            table.index = [int(v) for v in table.index]
            table.columns = [int(v) for v in table.columns]
            sns.heatmap(table, ax=ax, annot=True, fmt=".3g", cmap="viridis_r", vmin=vmin,
                        vmax=vmax, cbar=j == len(taus) - 1, annot_kws={"fontsize": 6},
                        cbar_kws={"label": "median update time (ms)"} if j == len(taus) - 1
                        else None)
            ax.invert_yaxis()
            for _, w in sub[sub["is_winner"]].iterrows():
                x = list(table.columns).index(int(w["grain"]))
                y = list(table.index).index(int(w["par_threshold"]))
                ax.add_patch(Rectangle((x, y), 1, 1, fill=False, edgecolor="red", lw=2.5))
                ax.text(x + 0.5, y + 0.85, "winner", ha="center", va="center", fontsize=6,
                        color="red")
            for _, b in sub[sub["busy"]].iterrows():
                busy_seen = True
                x = list(table.columns).index(int(b["grain"]))
                y = list(table.index).index(int(b["par_threshold"]))
                ax.text(x + 0.5, y + 0.15, "busy", ha="center", va="center", fontsize=6,
                        color="black", bbox={"facecolor": "white", "alpha": 0.7, "lw": 0,
                                             "pad": 1})
            ax.set(xlabel="grain (rows per parallel task)",
                   ylabel="par_threshold (rows)" if j == 0 else "")
        r0 = host_rows.iloc[0]
        held = rows[(rows["host_id"] == host) & (rows["threads"] == threads)
                    & (rows["phase"] == "held_out_winner")]
        gain = "held-out check missing"
        if not held.empty:
            point, low, high = data.interval(held.iloc[0], "gain_vs_default")
            if np.isfinite(point):
                held_all = rows[(rows["host_id"] == host) & (rows["threads"] == threads)
                                & rows["phase"].isin(["held_out_winner", "held_out_default"])]
                verdict = {"faster": "real", "slower": "a loss", "tie": "within noise"}.get(
                    data.verdict(point, low, high), "")
                busy = ", busy host: excluded" if held_all["busy"].any() else ""
                gain = (f"held-out gain vs defaults {point:.3f} [{low:.3f}, {high:.3f}] "
                        f"({verdict}{busy})")
        notes.append(f"{host}, {int(threads)} thr.: N={int(r0['N'])}, m={int(r0['m'])}, "
                     f"hidden={int(r0['hidden'])}, k mix {r0['k_list']}; {gain}")
    suptitle(fig, title, "(tune-phase masks; red outline: winner of the thread count, the "
             "lowest median; held-out gain: defaults' time / winner's time on the reported masks, "
             "95% interval" + ("; 'busy': measured on a busy host" if busy_seen else "") + ")")
    fig.text(0.0, 0.0, "\n".join(notes), fontsize=6.5, color="0.3", ha="left", va="top",
             transform=fig.transFigure)
    return fig


def model_churn(merged: data.Merged):
    """The real-model stage's churn (see :mod:`.model`)."""
    from .model import model_churn_figure

    return model_churn_figure(merged)


def tiers(merged: data.Merged):
    """The file tier (and the real decode on it): analysis/tiers.py."""
    from .tiers import tiers_figure

    return tiers_figure(merged)


def micro_trace(merged: data.Merged):
    """micro on the real model's recorded masks, per trace and tile (see :mod:`.trace_micro`)."""
    from .trace_micro import micro_trace_figure

    return micro_trace_figure(merged)


def model_decode(merged: data.Merged):
    """The real model's greedy decode: speed/quality frontier and step split (see :mod:`.model`)."""
    from .model import model_decode_figure

    return model_decode_figure(merged)


FIGURES: dict[str, Callable[[data.Merged], "plt.Figure"]] = {
    "micro_speedup": micro_speedup,
    "micro_efficiency": micro_efficiency,
    "e2e_speedup": e2e_speedup,
    "perf_counters": perf_counters,
    "autotune_landscape": autotune_landscape,
    "cross_host": cross_host,
    "micro_time": micro_time,
    "model_churn": model_churn,
    "micro_trace": micro_trace,
    "model_decode": model_decode,
    "tiers": tiers,
}


def render(name: str, merged_dir: str | Path, out_pdf: str | Path) -> tuple[Path, Path]:
    """Writes figure ``name`` to ``out_pdf`` and the same name with .png (tmp + rename)."""
    out_pdf = Path(out_pdf)
    out_png = out_pdf.with_suffix(".png")
    out_pdf.parent.mkdir(parents=True, exist_ok=True)
    fig = FIGURES[name](data.Merged(merged_dir))
    tmps = [p.with_name(f".{p.name}.tmp-{os.getpid()}") for p in (out_pdf, out_png)]
    try:
        fig.savefig(tmps[0], format="pdf", bbox_inches="tight",
                    metadata={"CreationDate": None, "ModDate": None})
        fig.savefig(tmps[1], format="png", dpi=150, bbox_inches="tight", metadata={"Software": None})
        for tmp, final in zip(tmps, (out_pdf, out_png)):
            tmp.replace(final)
    finally:
        plt.close(fig)
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return out_pdf, out_png
