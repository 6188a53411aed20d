"""The paper's figures, one function per figure, from the merged tables (registry ``FIGURES``).

Every function takes a :class:`~paired_replacement.analysis.data.Merged` and returns a matplotlib
figure; :func:`render` writes it as PDF and PNG. Missing data never fails: a figure (or one of its
panels) without rows shows an empty axes with a centered "no data: <what is missing>".

Error bars are 95% intervals. Times use the bootstrap CI of the median (ci95_low_s/ci95_high_s);
speedups and efficiencies (a reference median over this median) use
:func:`~paired_replacement.analysis.data.ratio_bounds`: [reference/ci_high, reference/ci_low],
i.e. the uncertainty of the method's own median with the reference median taken as exact.

Rows shown (see :mod:`~paired_replacement.analysis.data` for the selections): micro figures use the
micro selection (uniform masks, gate on, first dtype, per-host default threads) at the primary
(N, m); ``cross_host`` also fixes the primary hidden size; ``e2e_speedup`` uses the e2e selection.
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
from matplotlib.patches import Rectangle  # noqa: E402

from . import data  # noqa: E402

METHOD_ORDER = ["paired", "paired_indices", "hybrid", "numpy_reference", "index_select",
                "bool_mask", "memcpy_floor", "memcpy_floor_nt", "dense", "rebuild"]
_PALETTE = dict(zip(METHOD_ORDER, sns.color_palette("colorblind", len(METHOD_ORDER))))
_MARKERS = dict(zip(METHOD_ORDER, "osD^vPXh*p"))
K_LABEL = "k (rows swapped per update, symlog scale)"
SPEEDUP_LABEL = "speedup vs index_select (×)"

sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)


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
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(width * ncols, 5.0), height * nrows + 0.9),
                             squeeze=False, layout="constrained", **kw)
    return fig, axes


def errorbars(ax, x, y, lo, hi, color) -> None:
    """Asymmetric error bars from absolute bounds (NaN bounds: no bar)."""
    y, lo, hi = (np.asarray(v, float) for v in (y, lo, hi))
    below = np.clip(np.nan_to_num(y - lo, nan=0.0), 0, None)
    above = np.clip(np.nan_to_num(hi - y, nan=0.0), 0, None)
    ax.errorbar(np.asarray(x, float), y, yerr=[below, above], fmt="none", ecolor=color,
                elinewidth=1.0, capsize=2.5)


def method_lines(ax, rows: pd.DataFrame, methods: list[str], x: str, y: str) -> list[str]:
    """One seaborn line (with markers) per method and CI error bars; returns the methods drawn."""
    drawn = []
    for method in methods:
        sub = rows[rows["method"] == method].sort_values(x)
        sub = sub[np.isfinite(sub[y])]
        if sub.empty:
            continue
        sns.lineplot(data=sub, x=x, y=y, ax=ax, color=_PALETTE.get(method), errorbar=None,
                     marker=_MARKERS.get(method, "o"), label=method, legend=False)
        errorbars(ax, sub[x], sub[y], sub[y + "_lo"], sub[y + "_hi"], _PALETTE.get(method))
        drawn.append(method)
    return drawn


def figure_legend(fig, labels: list[str], colors: dict, markers: dict | None = None,
                  title: str | None = None) -> None:
    if not labels:
        return
    handles = [plt.Line2D([], [], color=colors[lab], marker=(markers or {}).get(lab, "o"))
               for lab in labels]
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


def _config_text(primary: data.Primary, hidden: bool = False) -> str:
    text = f"uniform masks, N={primary.N}, m={primary.m}"
    if hidden:
        text += f", hidden={primary.hidden}"
    return text + f", gate on, {primary.dtype}, default threads per host"


def _other_shape(rows: pd.DataFrame, primary: data.Primary) -> str:
    """' (N=…, m=…)' when a host's panel shows another (N, m) than the primary one."""
    if rows.empty or (rows["N"].iloc[0], rows["m"].iloc[0]) == (primary.N, primary.m):
        return ""
    return f" (N={int(rows['N'].iloc[0])}, m={int(rows['m'].iloc[0])})"


def _ordered(values, order: list[str]) -> list[str]:
    present = list(dict.fromkeys(values))
    return [v for v in order if v in present] + sorted(v for v in present if v not in order)


# ---------------------------------------------------------------------------------------------
# micro
# ---------------------------------------------------------------------------------------------
def _micro_grid(merged: data.Merged, title: str, column: str, methods: list[str] | None,
                ylabel: str, reference: tuple[float, str], log_y: bool):
    rows, primary = data.micro_figure_rows(merged.micro)
    rows = rows[rows["k_target"] >= 0]
    if methods is not None:
        rows = rows[rows["method"].isin(methods)]
    rows = rows[np.isfinite(rows[column])]
    if rows.empty:
        what = ("micro.csv has no rows with uniform masks and gate on" if primary is None
                else f"micro.csv has no {column} values in the selection")
        return no_data_figure(title, what, K_LABEL, ylabel)
    rows = data.with_ratio_bounds(rows, column)
    hosts = sorted(rows["host_id"].unique())
    hiddens = sorted(rows["hidden"].unique())
    fig, axes = grid(len(hosts), len(hiddens))
    order = _ordered(rows["method"], METHOD_ORDER)
    order = [m for m in order if m != "index_select"] if column == "speedup_vs_index_select" \
        else order
    drawn: list[str] = []
    for i, host in enumerate(hosts):
        for j, hidden in enumerate(hiddens):
            ax = axes[i][j]
            sub = rows[(rows["host_id"] == host) & (rows["hidden"] == hidden)]
            ax.set_title(f"{host}, hidden={int(hidden)}" + _other_shape(sub, primary))
            if sub.empty:
                no_data(ax, f"{host} did not measure hidden={int(hidden)}")
                continue
            drawn += method_lines(ax, sub, order, "k_target", column)
            ax.axhline(reference[0], color="0.3", ls="--", lw=1.0, label=reference[1])
            ax.text(0.02, reference[0], f" {reference[1]}", transform=ax.get_yaxis_transform(),
                    va="bottom", fontsize=7, color="0.3")
            symlog_k(ax, sub["k_target"])
            if log_y:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=0)
            ax.set(xlabel=K_LABEL if i == len(hosts) - 1 else "", ylabel=ylabel if j == 0 else "")
    suptitle(fig, title, f"({_config_text(primary)}; error bars: 95% CI)")
    figure_legend(fig, _ordered(drawn, METHOD_ORDER), _PALETTE, _MARKERS)
    return fig


def micro_speedup(merged: data.Merged):
    """Update speedup vs index_select(out=) over k: one line per method, facets host × hidden."""
    return _micro_grid(merged, "One cache update: speedup vs index_select",
                       "speedup_vs_index_select", None, SPEEDUP_LABEL,
                       (1.0, "index_select (= 1)"), log_y=True)


def micro_efficiency(merged: data.Merged):
    """Efficiency vs the memcpy floor (floor median / method median) over k, goal line at 0.8."""
    return _micro_grid(merged, "One cache update: efficiency vs the memcpy floor",
                       "efficiency_vs_floor", ["paired", "paired_indices", "hybrid"],
                       "floor time / update time (1 = floor)", (0.8, "goal 0.8"), log_y=False)


def cross_host(merged: data.Merged):
    """Paired speedup vs index_select at each k, one bar per host (primary N, m, hidden)."""
    title = "Paired update speedup vs index_select across hosts"
    rows, primary = data.micro_primary_rows(merged.micro)
    rows = rows[(rows["method"] == "paired") & (rows["k_target"] >= 0)]
    rows = rows[np.isfinite(rows["speedup_vs_index_select"])]
    if rows.empty:
        return no_data_figure(title, "micro.csv has no paired rows with uniform masks and gate on",
                              "k (rows swapped per update)", SPEEDUP_LABEL)
    rows = data.with_ratio_bounds(rows, "speedup_vs_index_select")
    hosts = sorted(rows["host_id"].unique())
    ks = sorted(rows["k_target"].unique())
    colors = dict(zip(hosts, sns.color_palette("deep", len(hosts))))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(ks) * max(1, len(hosts)) ** 0.5 + 2), 3.4),
                           layout="constrained")
    width = 0.8 / len(hosts)
    for h, host in enumerate(hosts):
        sub = rows[rows["host_id"] == host].groupby("k_target").first()
        x = np.array([ks.index(k) for k in sub.index]) - 0.4 + width * (h + 0.5)
        y = sub["speedup_vs_index_select"].to_numpy()
        ax.bar(x, y, width=width * 0.95, color=colors[host], label=host)
        errorbars(ax, x, y, sub["speedup_vs_index_select_lo"], sub["speedup_vs_index_select_hi"],
                  "0.15")
    ax.axhline(1.0, color="0.3", ls="--", lw=1.0)
    ax.set_xticks(range(len(ks)), [f"{int(k)}" for k in ks])
    ax.set_yscale("log")
    ax.set(xlabel="k (rows swapped per update)", ylabel=SPEEDUP_LABEL)
    ax.legend(title="host", fontsize=7, title_fontsize=7)
    others = sorted(set(merged.micro["host_id"]) - set(hosts))
    suptitle(fig, title, f"({_config_text(primary, hidden=True)}; error bars: 95% CI; "
             "dashed: parity" + (f"; not measured in this configuration: {', '.join(others)}"
                                 if others else "") + ")")
    return fig


# ---------------------------------------------------------------------------------------------
# e2e
# ---------------------------------------------------------------------------------------------
def e2e_speedup(merged: data.Merged):
    """Decode-step speedup of paired and hybrid vs index_select over m, one line per batch size;
    rows: hosts, columns: method (sweep rows, else the host's e2e rows)."""
    title = "Decode step (update + sparse FFN): speedup vs index_select"
    rows = data.e2e_selection(merged.e2e)
    rows = rows[rows["method"].isin(["paired", "hybrid"])]
    rows = rows[np.isfinite(rows["speedup_vs_index_select"])]
    if rows.empty:
        return no_data_figure(title, "e2e.csv has no paired/hybrid rows with an index_select "
                              "baseline (no sweep and no e2e run)", "m (top-m neurons per token)",
                              SPEEDUP_LABEL)
    rows = data.with_ratio_bounds(rows, "speedup_vs_index_select")
    hosts = sorted(rows["host_id"].unique())
    methods = _ordered(rows["method"], METHOD_ORDER)
    batches = sorted(rows["batch"].unique())
    colors = dict(zip([f"{int(b)}" for b in batches],
                      sns.color_palette("viridis", len(batches))))
    fig, axes = grid(len(hosts), len(methods), sharey=True)
    for i, host in enumerate(hosts):
        host_rows = rows[rows["host_id"] == host]
        source = "sweep" if (host_rows["benchmark"] == "sweep").any() else "e2e"
        for j, method in enumerate(methods):
            ax = axes[i][j]
            sub = host_rows[host_rows["method"] == method]
            r0 = host_rows.iloc[0]
            ax.set_title(f"{host}: {method} ({source}, N={int(r0['N'])}, "
                         f"hidden={int(r0['hidden'])})", fontsize=8)
            if sub.empty:
                no_data(ax, f"{host} has no {method} rows")
                continue
            for b in batches:
                line = sub[sub["batch"] == b].sort_values("m")
                if line.empty:
                    continue
                color = colors[f"{int(b)}"]
                sns.lineplot(data=line, x="m", y="speedup_vs_index_select", ax=ax, color=color,
                             marker="o", errorbar=None, legend=False)
                errorbars(ax, line["m"], line["speedup_vs_index_select"],
                          line["speedup_vs_index_select_lo"], line["speedup_vs_index_select_hi"],
                          color)
            ax.axhline(1.0, color="0.3", ls="--", lw=1.0)
            ax.set_xscale("log", base=2)
            value_ticks(ax, host_rows["m"])
            ax.set(xlabel="m (top-m neurons per token)" if i == len(hosts) - 1 else "",
                   ylabel=SPEEDUP_LABEL if j == 0 else "")
    suptitle(fig, title, "(gate/dtype/rho/beta: each host's most measured; default threads; "
             "error bars: 95% CI; dashed: parity)")
    figure_legend(fig, list(colors), colors, title="batch (tokens per step)")
    return fig


# ---------------------------------------------------------------------------------------------
# perf
# ---------------------------------------------------------------------------------------------
SOURCE_TEXT = {"hw": "hw (perf stat, hardware counters)",
               "cachegrind": "cachegrind (simulated caches, generic build)"}


def _perf_config(rows: pd.DataFrame, primary: data.Primary | None) -> pd.DataFrame:
    """One configuration of one host's counted rows: the primary (N, m, hidden) when present
    (else the most counted one), and k closest to 64 (ties: the smaller)."""
    if primary is not None:
        same = data.where(rows, N=primary.N, m=primary.m, hidden=primary.hidden)
        rows = same if not same.empty else rows
    key = data.mode_key(rows, ["N", "m", "hidden", "gate"])
    rows = data.where(rows, **dict(zip(["N", "m", "hidden", "gate"], key)))
    ks = sorted(rows["k"].unique(), key=lambda k: (abs(k - 64), k))
    return rows[rows["k"] == ks[0]]


def perf_counters(merged: data.Merged):
    """Per-update counter values of paired vs rebuild per event (log y), one panel per host,
    each labelled with its counter source; 'no counters available' when no host could count."""
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
    primary = data.primary_config(merged.micro)
    fig, axes = grid(1, len(hosts), width=4.2, height=3.2)
    colors = {m: _PALETTE[m] for m in ("paired", "rebuild")}
    for j, host in enumerate(hosts):
        ax = axes[0][j]
        rows = counted[counted["host_id"] == host]
        if rows.empty:
            ax.set_title(host)
            no_data(ax, f"no counters available on {host} (source unavailable)")
            continue
        rows = _perf_config(rows, primary)
        events = list(dict.fromkeys(rows["event"]))
        sns.barplot(data=rows, x="event", y="per_update", hue="method", order=events,
                    hue_order=["paired", "rebuild"], palette=colors, errorbar=None, ax=ax,
                    legend=False)
        ax.set_yscale("log", nonpositive="clip")
        per = rows.set_index(["method", "event"])["per_update"]
        for e, event in enumerate(events):
            if ("paired", event) in per.index and ("rebuild", event) in per.index \
                    and per[("rebuild", event)] > 0:
                ratio = per[("paired", event)] / per[("rebuild", event)]
                ax.annotate(f"{ratio:.2g}×", (e, 1.0), xycoords=("data", "axes fraction"),
                            ha="center", va="top", fontsize=6, color="0.25")
        sources = ", ".join(SOURCE_TEXT.get(s, s) for s in sorted(rows["source"].unique()))
        r0 = rows.iloc[0]
        ax.set_title(f"{host}: N={int(r0['N'])}, m={int(r0['m'])}, k={int(r0['k'])}, "
                     f"hidden={int(r0['hidden'])}\nsource: {sources}", fontsize=8)
        top = rows["per_update"].max()
        if top > 0:
            ax.set_ylim(top=top * 8)  # room for the ratio labels
        ax.tick_params(axis="x", rotation=45, labelsize=7)
        ax.set(xlabel="counter event", ylabel=ylabel if j == 0 else "")
    suptitle(fig, title, "(counted updates only; top labels: paired/rebuild ratio)")
    figure_legend(fig, ["paired", "rebuild"], colors, {"paired": "s", "rebuild": "s"})
    return fig


# ---------------------------------------------------------------------------------------------
# autotune
# ---------------------------------------------------------------------------------------------
def autotune_landscape(merged: data.Merged):
    """Median update time over grain × par_threshold, one panel per tau (rows: hosts), the winner
    outlined. Threads: the winner's (else the largest measured)."""
    title = "Autotune landscape: median hybrid update time"
    rows = merged.autotune
    if rows.empty:
        return no_data_figure(title, "autotune.csv has no rows (autotune not run with --csv)",
                              "grain (rows per parallel task)", "par_threshold (rows)")
    hosts = sorted(rows["host_id"].unique())
    taus = sorted(rows["hybrid_tau_frac"].unique())
    fig, axes = grid(len(hosts), len(taus), width=3.0, height=2.6)
    for i, host in enumerate(hosts):
        host_rows = rows[rows["host_id"] == host]
        key = data.mode_key(host_rows, ["N", "m", "hidden", "k_list"])
        host_rows = data.where(host_rows, **dict(zip(["N", "m", "hidden", "k_list"], key)))
        winners = host_rows[host_rows["is_winner"]]
        threads = winners["threads"].iloc[0] if not winners.empty else host_rows["threads"].max()
        host_rows = host_rows[host_rows["threads"] == threads]
        ms = host_rows["median_s"] * 1e3
        vmin, vmax = float(ms.min()), float(ms.max())
        for j, tau in enumerate(taus):
            ax = axes[i][j]
            sub = host_rows[host_rows["hybrid_tau_frac"] == tau]
            ax.set_title(f"{host}: tau={tau:g}", fontsize=8)
            if sub.empty:
                no_data(ax, f"{host} did not time tau={tau:g}")
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
            ax.set(xlabel="grain (rows per parallel task)",
                   ylabel="par_threshold (rows)" if j == 0 else "")
        r0 = host_rows.iloc[0]
        axes[i][0].annotate(f"N={int(r0['N'])}, m={int(r0['m'])}, hidden={int(r0['hidden'])}, "
                            f"k mix: {r0['k_list']}, threads={int(threads)}",
                            (0, -0.32), xycoords="axes fraction", fontsize=6.5, color="0.3")
    suptitle(fig, title, "(red outline: winner, the lowest median)")
    return fig


FIGURES: dict[str, Callable[[data.Merged], "plt.Figure"]] = {
    "micro_speedup": micro_speedup,
    "micro_efficiency": micro_efficiency,
    "e2e_speedup": e2e_speedup,
    "perf_counters": perf_counters,
    "autotune_landscape": autotune_landscape,
    "cross_host": cross_host,
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
