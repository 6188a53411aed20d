"""The real-model stage in the paper: churn of SmolLM2's FFN masks per policy, density, window.

Inputs (merged by ``merge`` from ``results/model/`` and ``results/traces/run.json``):
``churn.csv`` (one row per layer x policy x density x window), ``churn_tokens.csv`` (every
token-to-token transition: m, additions, removals, rows the cache wrote) and study.json's
``model`` (model, corpus, timings) and ``skipped_stages`` (why the stage did not run).

Statistics pool every layer's transitions of a trace (``churn_tokens.csv``): "median rows/m" is
the median over all layers and tokens of rows written / m after the update; per-layer values
come from ``churn.csv``. Three things the paper shows: the figure ``model_churn`` (CDF of rows/m
at W = 1, the median by layer, rows/m and mask density vs W), the table ``model_churn`` and the
macros of :func:`model_numbers`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import data
from .latex import escape, fmt_fixed, fmt_int, fmt_percent, join_and, tabular

def pct(fraction, decimals: int = 1) -> str:
    """A fraction as a LaTeX percentage (0.638 -> 63.8\\%)."""
    return fmt_percent(fraction, decimals) + r"\%"


POLICY_TEXT = {"oracle_topk": "oracle top-$k$", "gate_threshold": "gate threshold"}
POLICY_ORDER = ["oracle_topk", "gate_threshold"]


def traces(merged: data.Merged) -> pd.DataFrame:
    """One row per trace (policy, density, window): measured density, mean m, and the pooled
    (all layers, all transitions) mean / median / p90 of A/m and rows/m."""
    summary, tokens = merged["churn"], merged["churn_tokens"]
    if summary.empty or tokens.empty:
        return pd.DataFrame(columns=["key", "policy", "density", "window", "density_measured",
                                     "m_mean", "added_median", "rows_median", "rows_p90",
                                     "rows_mean", "layers", "transitions"])
    keys = summary.groupby("key").agg(policy=("policy", "first"), density=("density", "first"),
                                      window=("window", "first"),
                                      density_measured=("density_measured", "mean"),
                                      m_mean=("mask_size_mean", "mean"),
                                      layers=("layer", "nunique"))
    valid = tokens[tokens["m"] > 0]
    added = valid["added"] / valid["m"]
    rows = valid["rows_written"] / valid["m"]
    pooled = pd.DataFrame({"key": valid["key"], "added": added, "rows": rows}).groupby("key").agg(
        added_median=("added", "median"), rows_median=("rows", "median"),
        rows_p90=("rows", lambda v: float(np.percentile(v, 90))), rows_mean=("rows", "mean"),
        transitions=("rows", "size"))
    out = keys.join(pooled, how="inner").reset_index()
    out["order"] = out["policy"].map({p: i for i, p in enumerate(POLICY_ORDER)}).fillna(9)
    return out.sort_values(["order", "density", "window"]).drop(columns="order").reset_index(
        drop=True)


def _texts(part: dict) -> str:
    n = len(part.get("documents", []))
    return {0: "the licence texts", 1: "one licence text"}.get(n, f"{n} licence texts")


def model_info(merged: data.Merged) -> dict:
    return (merged.study.get("model") or {}).get("model") or {}


def _model_name(merged: data.Merged) -> str:
    info = model_info(merged)
    name = str(info.get("model_id", "the model")).split("/")[-1]
    return escape(name)


# ---------------------------------------------------------------------------------------------
# Figure
# ---------------------------------------------------------------------------------------------
def model_churn_figure(merged: data.Merged):
    """Three panels: CDF of rows written / m per transition (W = 1, every policy and density),
    the median by layer (W = 1), and rows written / m (filled markers) and mask density m / N
    (hollow) vs the window W, medians pooled over layers and tokens. Colour: density; line
    style: policy (one legend below the panels)."""
    from . import figures
    import matplotlib.pyplot as plt

    table = traces(merged)
    title = "Real model: rows the cache writes per token"
    if table.empty:
        reason = merged.study.get("skipped_stages", {}).get("model")
        return figures.no_data_figure(title, "the real-model stage did not run"
                                      + (f": {reason}" if reason else ""))
    tokens, summary = merged["churn_tokens"], merged["churn"]
    fig, axes = plt.subplots(1, 3, figsize=(11.5, 3.4), constrained_layout=True)
    figures.suptitle(fig, title, f"{_model_name(merged).replace(chr(92), '')}, "
                     f"{int(table['layers'].max())} layers, held-out licence texts; "
                     "rows written by the paired update / active rows m")
    single = table[table["window"] == 1]
    palette = plt.get_cmap("tab10")
    styles = {"oracle_topk": "-", "gate_threshold": "--"}
    densities = sorted(single["density"].unique())
    for r in single.itertuples():
        t = tokens[(tokens["key"] == r.key) & (tokens["m"] > 0)]
        values = np.sort((t["rows_written"] / t["m"]).to_numpy())
        color, style = palette(densities.index(r.density)), styles.get(r.policy, ":")
        axes[0].plot(values, np.arange(1, values.size + 1) / values.size, color=color,
                     linestyle=style)
        layers = summary[summary["key"] == r.key].sort_values("layer")
        axes[1].plot(layers["layer"], layers["rows_written_over_m_median"], color=color,
                     linestyle=style, marker=".")
    axes[0].set(xlabel="rows written / m (per token and layer)", ylabel="fraction of transitions",
                title="W = 1: distribution", xlim=(0, 1.02))
    axes[1].set(xlabel="layer", ylabel="median rows written / m", title="W = 1: by layer")
    for policy, group in table.groupby("policy", sort=False):
        for density, rows in group.groupby("density"):
            rows = rows.sort_values("window")
            color = palette(densities.index(density)) if density in densities else "grey"
            style = styles.get(policy, ":")
            axes[2].plot(rows["window"], rows["rows_median"], color=color, marker="o",
                         linestyle=style)
            axes[2].plot(rows["window"], rows["density_measured"], color=color, marker="s",
                         markerfacecolor="none", linestyle=style, linewidth=0.8)
    axes[2].set_xscale("log", base=2)
    windows = sorted(table["window"].unique())
    axes[2].set_xticks(windows, [str(int(w)) for w in windows])
    axes[2].set(xlabel="window W (union of the last W tokens' masks)", ylim=(0, 1.05),
                ylabel="fraction", title="window union: rows / m (filled), m / N (hollow)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=palette(i), label=f"density {d:.0%}")
               for i, d in enumerate(densities)]
    handles += [Line2D([], [], color="black", linestyle=styles[p], label=p.replace("_", " "))
                for p in POLICY_ORDER if p in set(table["policy"])]
    handles += [Line2D([], [], color="black", marker="o", linestyle="", label="rows written / m"),
                Line2D([], [], color="black", marker="s", markerfacecolor="none", linestyle="",
                       label="mask size m / N")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    return fig


# ---------------------------------------------------------------------------------------------
# Table
# ---------------------------------------------------------------------------------------------
def model_churn_table(merged: data.Merged) -> str:
    table = traces(merged)
    rows = [[POLICY_TEXT.get(r.policy, escape(r.policy)), fmt_percent(r.density, 0),
             fmt_int(r.window), fmt_percent(r.density_measured), fmt_fixed(r.m_mean, 0),
             fmt_percent(r.added_median), fmt_percent(r.rows_median), fmt_percent(r.rows_p90)]
            for r in table.itertuples()]
    return tabular(["policy", "density [\\%]", "$W$", "$m/N$ [\\%]", "mean $m$",
                    "med.\\ $A/m$ [\\%]", "med.\\ rows$/m$ [\\%]", "p90 rows$/m$ [\\%]"],
                   rows, "lrrrrrrr",
                   comment="model_churn: churn of real-model masks, pooled over layers and "
                           "token transitions (churn_tokens.csv)")


def quality(merged: data.Merged) -> pd.DataFrame:
    """The perplexity rows (dense first, then policy, density, window), with the ratio to the
    dense model's perplexity."""
    rows = merged["quality"]
    if rows.empty:
        return rows.assign(vs_dense=pd.Series(dtype=float))
    dense = rows[rows["policy"] == "dense"]
    base = float(dense["perplexity"].iloc[0]) if not dense.empty else float("nan")
    order = {"dense": -1, **{p: i for i, p in enumerate(POLICY_ORDER)}}
    out = rows.assign(vs_dense=rows["perplexity"] / base,
                      order=rows["policy"].map(order).fillna(9))
    return out.sort_values(["order", "density", "window"]).drop(columns="order").reset_index(
        drop=True)


def model_quality_table(merged: data.Merged) -> str:
    table = quality(merged)
    rows = [["dense" if r.policy == "dense" else POLICY_TEXT.get(r.policy, escape(r.policy)),
             "--" if r.policy == "dense" else fmt_percent(r.density, 0),
             "--" if r.policy == "dense" else fmt_int(r.window),
             fmt_percent(r.mask_density), f"{r.perplexity:.2f}", f"{r.vs_dense:.3f}"]
            for r in table.itertuples()]
    return tabular(["policy", "density [\\%]", "$W$", "FFN density [\\%]", "perplexity",
                    "/ dense"], rows, "lrrrrr",
                   comment="model_quality: held-out perplexity, every FFN masked online "
                           "(quality.csv)")


# ---------------------------------------------------------------------------------------------
# Real decode (decode.csv, one per host): tokens/s per method, the step split, memory
# ---------------------------------------------------------------------------------------------
DECODE_ORDER = ["dense", "gather", "torch_delta", "paired", "no_pack", "paired_window",
                "paired_window_subset"]
DECODE_TEXT = {"dense": "dense", "gather": "gather (full re-pack)",
               "torch_delta": "torch\\_delta", "paired": "paired", "no_pack": "no\\_pack",
               "paired_window": "paired, window union",
               "paired_window_subset": "paired, union block, own rows"}


def decode_host(merged: data.Merged) -> str | None:
    """The host whose decode rows the paper shows: study.json's primary host when it has them,
    else the first host (alphabetically) that has any."""
    rows = merged["decode"]
    if rows.empty:
        return None
    primary = merged.study.get("primary_host")
    hosts = sorted(rows["host_id"].unique())
    return primary if primary in hosts else hosts[0]


def decode(merged: data.Merged, tier: str = "dram") -> pd.DataFrame:
    """The decode rows of :func:`decode_host` on ``tier`` (dram: the dense rows and the methods
    with pools in memory; file: the file_* methods, analysis/tiers.py) in table order (density,
    then method); the dense rows (one per density configuration, each measured beside its
    sparse methods) stay with their density."""
    rows = merged["decode"]
    host = decode_host(merged)
    if host is None:
        return rows
    rows = rows[(rows["host_id"] == host) & (rows["tier"] == tier)].copy()
    # the density a row was measured beside: the config's density (dense rows carry 1)
    config_density = rows[rows["method"] != "dense"].groupby("config_hash")["density"].first()
    rows["config_density"] = rows["config_hash"].map(config_density).fillna(rows["density"])
    rows["order"] = rows["method"].map({m: i for i, m in enumerate(DECODE_ORDER)}).fillna(99)
    return rows.sort_values(["config_density", "order"]).drop(columns="order").reset_index(
        drop=True)


def _ci(point, low, high, digits: int = 2) -> str:
    if pd.isna(point):
        return "--"
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def model_decode_table(merged: data.Merged) -> str:
    table = decode(merged)
    body = []
    for r in table.itertuples():
        body.append([
            DECODE_TEXT.get(r.method, escape(r.method)) + ("$^b$" if r.busy else ""),
            fmt_percent(r.config_density, 0), fmt_int(r.window),
            _ci(r.tokens_per_s, r.tokens_per_s_ci95_low, r.tokens_per_s_ci95_high, 1),
            _ci(r.speedup_vs_dense, r.speedup_vs_dense_ci95_low, r.speedup_vs_dense_ci95_high),
            _ci(r.speedup_vs_torch_delta, r.speedup_vs_torch_delta_ci95_low,
                r.speedup_vs_torch_delta_ci95_high),
            fmt_percent(r.mask_share, 0), fmt_percent(r.update_share, 0),
            fmt_percent(r.ffn_share, 0), fmt_percent(r.active_fraction, 0),
            fmt_fixed(r.rows_written_per_layer, 0),
            "--" if pd.isna(r.peak_rss_vs_dense) else fmt_fixed(r.peak_rss_vs_dense, 2)])
    return tabular(["method", "dens.", "$W$", "tokens/s [95\\% CI]", "vs dense",
                    "vs torch\\_delta", "mask", "upd.", "FFN", "$m/N$", "rows",
                    "RSS$\\times$"], body, "lrrrrrrrrrrr",
                   comment="model_decode: greedy decode, every FFN behind a per-layer cache "
                           "(decode.csv); shares of the step time in %; rows: rows written per "
                           "layer and token; RSS: peak RSS / dense; b: measured while other "
                           "processes used the host")


def _frontier_points(merged: data.Merged) -> pd.DataFrame:
    """(method, density, window, tokens/s and interval, perplexity of the mask the FFN computes
    on): a window union computes on the union (quality at its W), every other sparse method on
    the token's own mask (quality at W = 1)."""
    rows, q = decode(merged), quality(merged)
    if rows.empty or q.empty:
        return pd.DataFrame()
    dense_ppl = q.loc[q["policy"] == "dense", "perplexity"]
    points = []
    for r in rows.itertuples():
        if r.method == "dense":
            ppl = float(dense_ppl.iloc[0]) if not dense_ppl.empty else np.nan
        else:
            window = r.window if r.method == "paired_window" else 1
            match = q[(q["policy"] == "gate_threshold") & (q["window"] == window)
                      & np.isclose(q["density"], r.density)]
            ppl = float(match["perplexity"].iloc[0]) if not match.empty else np.nan
        points.append({"method": r.method, "density": r.config_density, "window": r.window,
                       "perplexity": ppl, "tps": r.tokens_per_s, "lo": r.tokens_per_s_ci95_low,
                       "hi": r.tokens_per_s_ci95_high})
    return pd.DataFrame(points)


def model_decode_figure(merged: data.Merged):
    """Left: the speed/quality frontier, tokens/s (95% interval) against the held-out perplexity
    of the mask each method computes on; marker: method, fill: density. Right: the mean step time
    split into mask, cache update, FFN and the rest (attention, head, Python), per method, at
    the first density."""
    from . import figures
    import matplotlib.pyplot as plt

    rows = decode(merged)
    title = "Real decode: speed against quality, and where a step's time goes"
    if rows.empty:
        reason = merged.study.get("skipped_stages", {}).get("model")
        return figures.no_data_figure(title, "no decode results"
                                      + (f" (the real-model stage did not run: {reason})"
                                         if reason else ""))
    fig, axes = plt.subplots(1, 2, figsize=(11.0, 3.8), constrained_layout=True)
    r0 = rows.iloc[0]
    figures.suptitle(fig, title, f"{_model_name(merged).replace(chr(92), '')} on "
                     f"{decode_host(merged)}, {int(r0.threads)} thread(s), greedy, KV cache on; "
                     f"{int(r0.new_tokens)} timed tokens per run, {int(r0.n_processes)} runs per "
                     "method, methods interleaved; gate-threshold masks")
    points = _frontier_points(merged)
    ax = axes[0]
    densities = sorted(rows["config_density"].unique())
    if points.empty or points["perplexity"].isna().all():
        figures.no_data(ax, "no perplexity for these masks (quality.csv)")
    else:
        for (method, density), group in points.groupby(["method", "density"], sort=False):
            if method == "dense" and density != densities[0]:
                continue  # one dense point (the dense rows of the other densities are repeats)
            filled = densities.index(density) == 0 if density in densities else True
            ax.plot(group["perplexity"], group["tps"], linestyle="",
                    marker=figures.marker(method), color=figures.color(method),
                    markerfacecolor=figures.color(method) if filled else "none")
            figures.errorbars(ax, group["perplexity"], group["tps"], group["lo"], group["hi"],
                              figures.color(method))
        ax.set_xscale("log")
        ax.set(xlabel="held-out perplexity of the computed mask (log)", ylabel="tokens/s",
               title="frontier (filled: density " + ", hollow: ".join(
                   f"{d:.0%}" for d in densities) + ")")
    ax = axes[1]
    first = rows[rows["config_density"] == densities[0]]
    y = np.arange(len(first))
    left = np.zeros(len(first))
    colors = {"mask": "tab:orange", "update": "tab:red", "ffn": "tab:blue", "other": "0.75"}
    for phase in ("mask", "update", "ffn", "other"):
        width = first[f"{phase}_s"].to_numpy() * 1e3
        ax.barh(y, width, left=left, color=colors[phase], label=phase)
        left += width
    ax.set_yticks(y, [m.replace("_", " ") for m in first["method"]])
    ax.invert_yaxis()
    ax.set(xlabel=f"mean ms per token (density {densities[0]:.0%})")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
    from matplotlib.lines import Line2D

    methods = [m for m in DECODE_ORDER if m in set(rows["method"])]
    handles = [Line2D([], [], color=figures.color(m), marker=figures.marker(m), linestyle="",
                      label=m.replace("_", " ")) for m in methods]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    return fig


def decode_sentences(merged: data.Merged) -> dict[str, str]:
    """ModelDecodeSentence (tokens/s, who is fastest, the step split, the window union's update
    share against the 10% goal), ModelMemorySentence (peak RSS against the 1.15x goal), and
    ModelLogitSentence (the density-1 check is in decode.json, not here: the sentence says the
    test suite checks it)."""
    rows = decode(merged)
    said = {"ModelDecodeSentence": "",
            "ModelMemorySentence": "Peak resident memory was not probed in this run.",
            "ModelDecodePaySentence": "No real decode was measured in this run, so nothing here "
                                      "says whether FFN sparsity pays in a real model's decode."}
    if rows.empty:
        reason = merged.study.get("skipped_stages", {}).get("model")
        said["ModelDecodeSentence"] = ("No real decode was measured"
                                       + (f" ({escape(reason)})." if reason else "."))
        return said
    host = escape(decode_host(merged))
    densities = sorted(rows["config_density"].unique())
    d0 = rows[rows["config_density"] == densities[0]]
    by = {r.method: r for r in d0.itertuples()}
    dense = by.get("dense")
    parts = []
    for method in ("paired", "torch_delta", "gather", "no_pack", "paired_window"):
        r = by.get(method)
        if r is None:
            continue
        parts.append(f"{DECODE_TEXT[method]} {r.tokens_per_s:.1f} "
                     f"({fmt_fixed(r.speedup_vs_dense, 2)}$\\times$ dense, "
                     f"[{fmt_fixed(r.speedup_vs_dense_ci95_low, 2)}, "
                     f"{fmt_fixed(r.speedup_vs_dense_ci95_high, 2)}])")
    sparse = d0[d0["method"] != "dense"]
    fastest = sparse.sort_values("tokens_per_s", ascending=False).iloc[0] if not sparse.empty \
        else None
    text = (f"Greedy decode on {host} ({int(d0.iloc[0].threads)} thread, KV cache on, every "
            f"layer's FFN behind its own cache, gate thresholds at {pct(densities[0], 0)}) runs "
            + (f"the dense model at {dense.tokens_per_s:.1f} tokens/s "
               f"[{dense.tokens_per_s_ci95_low:.1f}, {dense.tokens_per_s_ci95_high:.1f}] and "
               if dense is not None else "")
            + join_and(parts) + " (Table~\\ref{tab:model_decode}).")
    if fastest is not None:
        verdict = ("faster than dense" if fastest.speedup_vs_dense_ci95_low > 1 else
                   "not faster than dense beyond the noise" if fastest.speedup_vs_dense_ci95_high
                   >= 1 else "slower than dense")
        text += (f" The fastest sparse method here is {DECODE_TEXT.get(fastest.method)}, "
                 f"{verdict}.")
    paired = by.get("paired")
    if paired is not None:
        text += (f" In a paired step the masks (the dense gate) take {pct(paired.mask_share, 0)} "
                 f"of the time, the cache update {pct(paired.update_share, 0)} "
                 f"({fmt_fixed(paired.rows_written_per_layer, 0)} rows per layer and token, "
                 f"{pct(paired.rows_written_per_layer / (paired.active_fraction * paired.N), 0)}"
                 f" of the {pct(paired.active_fraction, 0)} of $N$ active) and the FFN "
                 f"{pct(paired.ffn_share, 0)}; the rest is attention, the LM head and Python.")
        if dense is not None:
            text += (f" The dense MLP is {pct(dense.ffn_share, 0)} of a dense step, which bounds "
                     "what any FFN sparsity can save.")
    window = by.get("paired_window")
    if window is not None:
        goal = "within" if window.update_share <= 0.10 else "above"
        text += (f" With the union of the last {int(window.window)} masks the update falls to "
                 f"{pct(window.update_share, 0)} of the step ({goal} the 10\\% goal), while the "
                 f"FFN computes on {pct(window.active_fraction, 0)} of $N$.")
    checked = rows.dropna(subset=["density1_max_logit_diff"])
    if not checked.empty:
        worst = checked.sort_values("density1_max_logit_diff").iloc[-1]
        text += (" With every neuron active (density 1) each sparse method computes the dense "
                 "model: over teacher-forced steps its logits differ from the dense model's by at "
                 f"most {worst.density1_max_logit_diff:.1e} (largest logit "
                 f"{worst.density1_max_abs_logit:.0f}), float rounding of a different summation "
                 "order.")
    said["ModelDecodeSentence"] = text
    verdicts = []
    q = quality(merged)
    for density in densities:
        part = rows[rows["config_density"] == density]
        sparse = part[part["method"] != "dense"].sort_values("tokens_per_s", ascending=False)
        if sparse.empty:
            continue
        best = sparse.iloc[0]
        wins = best.speedup_vs_dense_ci95_low > 1
        # the price of that speed: the perplexity of the masks it computes on (W = 1)
        same = q[(q["policy"] == "gate_threshold") & (q["window"] == 1)
                 & np.isclose(q["density"], density)] if not q.empty else q
        price = (f" at a perplexity {fmt_fixed(same.iloc[0].vs_dense, 2)}$\\times$ the dense "
                 "model's" if not same.empty else "")
        verdicts.append(f"at density {pct(density, 0)} the fastest sparse method "
                        f"({DECODE_TEXT.get(best.method, escape(best.method))}) is "
                        f"{fmt_fixed(best.speedup_vs_dense, 2)}$\\times$ dense"
                        + ("" if wins else " (its interval reaches 1: no gain)") + price)
    if verdicts:
        said["ModelDecodePaySentence"] = (
            "On the real model the ceiling is low: " + "; ".join(verdicts) + ". Every sparse "
            "method still computes the gate densely to choose its mask, and the FFN is only "
            "part of a step.")
        paired, gather = by.get("paired"), by.get("gather")
        if paired is not None and gather is not None and paired.active_fraction > 0:
            share = paired.rows_written_per_layer / (paired.active_fraction * paired.N)
            if paired.tokens_per_s < gather.tokens_per_s:
                said["ModelDecodePaySentence"] += (
                    f" Nor does the paired update beat a full re-pack here: at density "
                    f"{pct(densities[0], 0)} it rewrites {pct(share, 0)} of the active rows per "
                    f"token, and the gather runs at {gather.tokens_per_s:.1f} tokens/s against "
                    f"paired's {paired.tokens_per_s:.1f}; with this much churn the differential "
                    "update saves too few writes to repay its bookkeeping.")
            else:
                said["ModelDecodePaySentence"] += (
                    f" The paired update ({paired.tokens_per_s:.1f} tokens/s) beats a full re-pack "
                    f"({gather.tokens_per_s:.1f}) while rewriting {pct(share, 0)} of the active "
                    "rows per token.")
    probed = rows.dropna(subset=["peak_rss_vs_dense"])
    probed = probed[probed["method"] != "dense"]
    if not probed.empty:
        parts = [f"{DECODE_TEXT.get(r.method, escape(r.method))} "
                 f"{fmt_fixed(r.peak_rss_vs_dense, 2)}$\\times$" for r in probed.itertuples()]
        over = probed[probed["peak_rss_vs_dense"] > 1.15]
        said["ModelMemorySentence"] = (
            "Peak resident memory while building the caches and decoding, relative to the dense "
            f"model's (fresh processes, after loading): {join_and(parts)}; "
            + ("every probed method stays within the 1.15$\\times$ goal" if over.empty else
               "above the 1.15$\\times$ goal: " + join_and(
                   [DECODE_TEXT.get(m, escape(m)) for m in over["method"]]))
            + ". The caches take over the MLP weights (the originals are released), and a packed "
            "block's pages are committed only as its slots are first used.")
    return said


# ---------------------------------------------------------------------------------------------
# Numbers
# ---------------------------------------------------------------------------------------------
def model_numbers(out, merged: data.Merged) -> None:
    """Macros: ModelName, ModelShape, ModelStageSentence (whether and on what the stage ran),
    ModelThreatSentence, and ModelParagraph: the stage sentence followed by those the data
    supports (churn of the oracle masks and the write bound it implies, the calibrated
    thresholds, the window union's trade, the extraction speed)."""
    said: dict[str, str] = {}
    # the decode is per host and may exist without traces (a copied-in host folder)
    for name, text in decode_sentences(merged).items():
        out[name] = text
    table = traces(merged)
    info = model_info(merged)
    run = merged.study.get("model") or {}
    reason = merged.study.get("skipped_stages", {}).get("model")
    shape = (f"hidden size {fmt_int(info.get('hidden_size'))}, "
             f"$N = {fmt_int(info.get('num_neurons'))}$ FFN neurons, "
             f"{fmt_int(info.get('num_layers'))} layers") if info else r"\textit{n/a}"
    out["ModelName"] = _model_name(merged)
    out["ModelShape"] = shape
    if table.empty:
        out["ModelStageSentence"] = (
            f"The real-model stage did not run: {escape(reason)}." if reason else
            "The real-model stage has no results here.")
        out["ModelThreatSentence"] = (
            "No real model's masks were measured in this run, so nothing here says how much a "
            "real model's active set changes per token.")
        out["ModelParagraph"] = out.values["ModelStageSentence"]
        return
    measured_quality = not merged["quality"].empty
    out["ModelThreatSentence"] = (
        f"The real-model masks come from one small model ({_model_name(merged)}) and one corpus, "
        "with oracle and threshold policies rather than a trained predictor's; "
        + ("their churn is timed in a greedy decode of this one model at batch 1 on a CPU "
           "(the gate-threshold policy only: the oracle needs the dense FFN to pick its mask), "
           "and " if not merged["decode"].empty else
           "their churn is counted, not timed in a decode, and ")
        + ("their cost in quality is a perplexity on licence texts, not a downstream task."
           if measured_quality else "their cost in quality is not measured here."))
    heldout = run.get("heldout") or {}
    n_tokens = heldout.get("num_tokens") or int(
        table.iloc[0]["transitions"] / max(table.iloc[0]["layers"], 1)) + 1
    out["ModelStageSentence"] = (
        f"{_model_name(merged)} ({shape}; {escape(info.get('dtype', 'float32'))}) ran "
        f"teacher-forced over {fmt_int(n_tokens)} held-out tokens of {_texts(heldout)} "
        "(the licence texts are split by document into calibration and held-out parts).")
    oracle = table[(table["policy"] == "oracle_topk") & (table["window"] == 1)]
    if not oracle.empty:
        parts = [f"{pct(r.rows_median)} at density {pct(r.density, 0)}"
                 for r in oracle.itertuples()]
        most = oracle["rows_median"].max()
        lead = ("Consecutive tokens share few of their active neurons" if most > 0.5 else
                "Consecutive tokens share most of their active neurons")
        bounds = join_and([f"{fmt_fixed(1 / r.rows_median, 1)}$\\times$ ({pct(r.density, 0)})"
                           for r in oracle.itertuples() if r.rows_median > 0])
        said["ModelChurnSentence"] = (
            f"{lead}: with oracle top-$k$ masks the paired update rewrites a median "
            f"{join_and(parts)} of the packed rows per token and layer "
            "(Figure~\\ref{fig:model_churn}, Table~\\ref{tab:model_churn}): a gather of the whole "
            f"mask writes only {bounds} as many rows.")
    else:
        said["ModelChurnSentence"] = ""
    gate = table[(table["policy"] == "gate_threshold") & (table["window"] == 1)]
    if not gate.empty:
        parts = [f"{pct(r.density_measured)} of $N$ (asked {pct(r.density, 0)})"
                 f" with a median {pct(r.rows_median)} rewritten"
                 for r in gate.itertuples()]
        said["ModelThresholdSentence"] = (
            "Gate thresholds set per layer on the calibration texts keep "
            f"{join_and(parts)} on the held-out texts; their mask size varies from token to "
            "token, so a shrinking mask also moves tail rows.")
    else:
        said["ModelThresholdSentence"] = ""
    windows = table[(table["window"] > 1)]
    if not windows.empty:
        # the base nearest a quarter of the neurons (oracle first), the usual reference point
        base = windows.assign(off=(windows["density"] - 0.25).abs()).sort_values(
            ["off"], kind="stable").iloc[0]
        same = table[(table["policy"] == base.policy) & (table["density"] == base.density)]
        same = same.sort_values("window")
        parts = [f"$W = {int(r.window)}$: {pct(r.rows_median)} rewritten, "
                 f"{pct(r.density_measured)} of $N$ held" for r in same.itertuples()]
        said["ModelWindowSentence"] = (
            f"A window union over {POLICY_TEXT.get(base.policy, escape(base.policy))} at "
            f"{pct(base.density, 0)} trades rewrites for size ({'; '.join(parts)}): "
            "fewer rows change because the block holds more of them, and an FFN that computes on "
            "the whole union does that much more work per token.")
    else:
        said["ModelWindowSentence"] = ""
    q = quality(merged)
    sparse = q[(q["policy"] != "dense") & (q["window"] == 1)]
    if not sparse.empty and (q["policy"] == "dense").any():
        dense = float(q.loc[q["policy"] == "dense", "perplexity"].iloc[0])
        parts = [f"{POLICY_TEXT.get(r.policy, escape(r.policy))} at {pct(r.density, 0)} "
                 f"{r.perplexity:.1f} ({fmt_fixed(r.vs_dense, 2)}$\\times$)"
                 for r in sparse.itertuples()]
        lossless = sparse[sparse["vs_dense"] <= 1.05]
        verdict = ("No policy measured here stays within 5\\% of the dense perplexity."
                   if lossless.empty else
                   "Within 5\\% of the dense perplexity: " + join_and(
                       [f"{POLICY_TEXT.get(r.policy, escape(r.policy))} at "
                        f"{pct(r.density, 0)}" for r in lossless.itertuples()]) + ".")
        lead = ("Quality has its price" if (sparse["vs_dense"] > 1.05).any() else
                "Quality holds")
        said["ModelQualitySentence"] = (
            f"{lead}: on {fmt_int(int(q['tokens'].iloc[0]))} held-out tokens the "
            f"dense model's perplexity is {dense:.1f}, and with every FFN computing only on a "
            f"policy's neurons (masked online) it is {join_and(parts)} "
            f"(Table~\\ref{{tab:model_quality}}). {verdict}")
        # unions that still skip at least half the FFN: the interesting ones
        windowed = q[(q["policy"] != "dense") & (q["window"] > 1) & (q["mask_density"] <= 0.5)]
        if not windowed.empty:
            best = windowed.sort_values("vs_dense").iloc[0]
            said["ModelQualityWindowSentence"] = (
                "Computing on the whole window union buys quality with work: of the unions that "
                f"compute on at most half the neurons, the best, "
                f"{POLICY_TEXT.get(best.policy, escape(best.policy))} at "
                f"{pct(best.density, 0)} with $W = {int(best.window)}$, reaches "
                f"{best.perplexity:.1f} ({fmt_fixed(best.vs_dense, 2)}$\\times$ dense) on "
                f"{pct(best.mask_density)} of the neurons.")
    timings = run.get("timings") or {}
    if timings.get("extraction_tokens_per_s") and timings.get("dense_tokens_per_s"):
        ratio = timings["extraction_tokens_per_s"] / timings["dense_tokens_per_s"]
        said["ModelSpeedSentence"] = (
            f"Recording and masking ran at {fmt_fixed(timings['extraction_tokens_per_s'], 0)} "
            f"tokens/s against {fmt_fixed(timings['dense_tokens_per_s'], 0)} for the plain "
            f"forward on the same tokens ({pct(ratio, 0)}; one thread).")
    else:
        said["ModelSpeedSentence"] = ""
    out["ModelParagraph"] = " ".join(
        [out.values["ModelStageSentence"]] + [text for text in said.values() if text])
