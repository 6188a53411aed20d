r"""``numbers``: the numbers the paper's text quotes, as ``\newcommand{\Name}{value}`` lines.

Every macro is always defined (so the paper compiles on partial results); a number the merged
tables cannot give expands to ``\textit{n/a}``. Ratios carry two decimals (two significant
digits below 0.1), counts are plain integers, percentages one decimal, times (ms) three
significant digits; text is LaTeX-escaped.
``<K>`` in a name is k spelled out in CamelCase words (0 -> Zero, 64 -> SixtyFour, 1024 ->
OneThousandTwentyFour); the per-k macros exist for k in {0, 16, 64, 256, 1024} (the micro
benchmark's default --k) plus every k the primary rows hold.

Primary configuration P (see :mod:`paired_replacement.analysis.data`): micro rows with pattern
uniform, gate on, the first dtype, of the (N, m, hidden) with the most rows (ties: first in merged
order), on the first host alphabetically that has it, at that host's default (largest) thread
count. The e2e, perf and autotune numbers come from P's host when it has such rows, else from the
first host alphabetically that has them.

Macros (name: meaning [source rows]):

======================== ==========================================================================
macro                    meaning [source rows]
======================== ==========================================================================
\ResultsHosts            host ids, comma-separated [hosts.csv]
\HostCount               number of hosts [hosts.csv]
\MicroHostCount          hosts with any micro rows [micro.csv]
\MicroPrimaryHost        host of P [micro.csv, P]
\MicroN \MicroM          N and m of P [micro.csv, P]
\MicroHidden             hidden size of P [micro.csv, P]
\MicroDtype              dtype of P [micro.csv, P]
\MicroThreads            torch threads of P [micro.csv, P]
\MicroSpeedupK<K>        paired speedup vs index_select at k, index_select median / paired median
                         [micro.csv: P, method paired, k_target = k]
\MicroHybridSpeedupK<K>  the same for hybrid [micro.csv: P, method hybrid, k_target = k]
\MicroEfficiencyK<K>     paired efficiency vs the memcpy floor, floor median / paired median
                         [micro.csv: P, method paired, k_target = k]
\MicroPairedMsK<K>       paired median per update, ms [micro.csv: P, paired, k_target = k]
\MicroIndexSelectMsK<K>  index_select median per update, ms [micro.csv: P, index_select, k]
\MicroBestSpeedup        largest paired speedup vs index_select over k > 0 [micro.csv: P, paired]
\MicroBestSpeedupK       the k where it occurs [idem]
\MicroBreakEvenK         smallest k > 0 at which paired is no longer faster than index_select
                         (speedup <= 1); "none" if paired always wins [micro.csv: P, paired]
\MicroMinEfficiency      smallest paired efficiency vs the floor over k >= 64 (the goal: >= 0.8)
                         [micro.csv: P, paired, k_target >= 64]
\EtoEHost                host of the e2e numbers [e2e.csv]
\EtoEConfigCount         (m, batch) configurations measured there [e2e selection of that host]
\EtoESpeedupBest         largest paired speedup vs index_select over (m, batch)
                         [e2e selection, method paired]
\EtoESpeedupWorst        smallest paired speedup vs index_select over (m, batch) [idem]
\EtoEHybridSpeedupBest   largest hybrid speedup vs index_select [e2e selection, method hybrid]
\EtoEHybridSpeedupWorst  smallest hybrid speedup vs index_select [idem]
\EtoEMeanChurnPercent    mean over (m, batch) of 100 * k_mean / active_mean: additions per step
                         as a percentage of the active rows [e2e selection, method paired]
\PerfHost                host of the counter numbers (P's host if it counted, else the first
                         host alphabetically that did) [perf.csv, source hw or cachegrind]
\PerfSource              hw or cachegrind [idem]
\PerfIrRatioK<K>         paired / rebuild per-update instructions (event Ir under cachegrind,
                         instructions under hw) at k [perf.csv: that host and source, P's
                         (N, m, hidden) if counted there, else its most counted configuration]
\AutotuneHost            host of the autotune numbers [autotune.csv]
\AutotuneGrain           winning WEIGHT_CACHE_GRAIN [autotune.csv: that host, is_winner]
\AutotuneParThreshold    winning WEIGHT_CACHE_PAR_THRESHOLD [idem]
\AutotuneTau             winning WEIGHT_CACHE_HYBRID_TAU_FRAC [idem]
\AutotuneThreads         threads of the winner [idem]
\AutotuneWinnerMs        the winner's median update time, ms [idem]
\AutotuneCandidates      candidates timed [autotune.csv: that host]
======================== ==========================================================================

"e2e selection": a host's sweep rows (else its e2e rows) at its most measured (N, hidden, gate,
dtype, rho, beta) and default threads.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from . import data
from .latex import NA, escape, fmt_fixed, fmt_int, fmt_ratio, fmt_sig

STANDARD_K = (0, 16, 64, 256, 1024)
_ONES = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
         "Eleven", "Twelve", "Thirteen", "Fourteen", "Fifteen", "Sixteen", "Seventeen", "Eighteen",
         "Nineteen"]
_TENS = ["", "", "Twenty", "Thirty", "Forty", "Fifty", "Sixty", "Seventy", "Eighty", "Ninety"]
_SCALES = [(10**9, "Billion"), (10**6, "Million"), (1000, "Thousand"), (100, "Hundred")]


def words(n: int) -> str:
    """CamelCase English words of a non-negative integer (64 -> SixtyFour); 'Minus...' below 0."""
    if n < 0:
        return "Minus" + words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + (_ONES[n % 10] if n % 10 else "")
    for scale, name in _SCALES:
        if n >= scale:
            rest = n % scale
            return words(n // scale) + name + (words(rest) if rest else "")
    raise AssertionError(n)


class Macros:
    """Ordered macro definitions; a name may be defined once."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def __setitem__(self, name: str, value: str) -> None:
        if not re.fullmatch(r"[A-Za-z]+", name):
            raise ValueError(f"macro name {name!r}: letters only")
        if name in self.values:
            raise ValueError(f"macro \\{name} defined twice")
        self.values[name] = value

    def render(self) -> str:
        return "".join(f"\\newcommand{{\\{k}}}{{{v}}}\n" for k, v in self.values.items())


def _value(rows: pd.DataFrame, column: str, **equal) -> float:
    rows = data.where(rows, **equal) if equal else rows
    return float(rows[column].iloc[0]) if not rows.empty else math.nan


def _host_for(frame: pd.DataFrame, preferred: str | None) -> str | None:
    hosts = sorted(frame["host_id"].unique())
    if not hosts:
        return None
    return preferred if preferred in hosts else hosts[0]


# ---------------------------------------------------------------------------------------------
def hosts_numbers(out: Macros, merged: data.Merged) -> None:
    ids = sorted(merged.hosts["host_id"])
    out["ResultsHosts"] = escape(", ".join(ids)) if ids else NA
    out["HostCount"] = str(len(ids))


def micro_numbers(out: Macros, merged: data.Merged) -> data.Primary | None:
    micro = merged.micro
    primary = data.primary_config(micro)
    out["MicroHostCount"] = str(micro["host_id"].nunique())
    p = primary
    out["MicroPrimaryHost"] = escape(p.host) if p else NA
    out["MicroN"] = fmt_int(p.N) if p else NA
    out["MicroM"] = fmt_int(p.m) if p else NA
    out["MicroHidden"] = fmt_int(p.hidden) if p else NA
    out["MicroDtype"] = escape(p.dtype) if p else NA
    out["MicroThreads"] = fmt_int(p.threads) if p else NA
    rows = micro.iloc[0:0]
    if p:
        rows = data.where(micro, host_id=p.host, N=p.N, m=p.m, hidden=p.hidden,
                          pattern="uniform", gate=True, dtype=p.dtype, threads=p.threads)
    ks = sorted(set(STANDARD_K) | {int(k) for k in rows["k_target"] if k >= 0})
    for k in ks:
        w = words(k)
        out[f"MicroSpeedupK{w}"] = fmt_ratio(_value(rows, "speedup_vs_index_select",
                                                    method="paired", k_target=k))
        out[f"MicroHybridSpeedupK{w}"] = fmt_ratio(_value(rows, "speedup_vs_index_select",
                                                          method="hybrid", k_target=k))
        out[f"MicroEfficiencyK{w}"] = fmt_ratio(_value(rows, "efficiency_vs_floor",
                                                       method="paired", k_target=k))
        out[f"MicroPairedMsK{w}"] = fmt_sig(_value(rows, "median_s", method="paired",
                                                   k_target=k) * 1e3)
        out[f"MicroIndexSelectMsK{w}"] = fmt_sig(_value(rows, "median_s", method="index_select",
                                                        k_target=k) * 1e3)
    paired = rows[(rows["method"] == "paired") & (rows["k_target"] > 0)]
    paired = paired[paired["speedup_vs_index_select"].notna()].sort_values("k_target")
    if paired.empty:
        best = best_k = breakeven = NA
    else:
        top = paired.loc[paired["speedup_vs_index_select"].idxmax()]
        best, best_k = fmt_ratio(top["speedup_vs_index_select"]), fmt_int(top["k_target"])
        slower = paired[paired["speedup_vs_index_select"] <= 1.0]
        breakeven = fmt_int(slower["k_target"].iloc[0]) if not slower.empty else "none"
    out["MicroBestSpeedup"], out["MicroBestSpeedupK"] = best, best_k
    out["MicroBreakEvenK"] = breakeven
    eff = paired.loc[paired["k_target"] >= 64, "efficiency_vs_floor"].dropna()
    out["MicroMinEfficiency"] = fmt_ratio(eff.min()) if not eff.empty else NA
    return primary


def e2e_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    rows = data.e2e_selection(merged.e2e)
    host = _host_for(rows, primary.host if primary else None)
    rows = rows[rows["host_id"] == host] if host else rows
    out["EtoEHost"] = escape(host) if host else NA
    out["EtoEConfigCount"] = str(len(rows.groupby(["m", "batch"]))) if host else NA
    for method, prefix in (("paired", "EtoESpeedup"), ("hybrid", "EtoEHybridSpeedup")):
        speedups = rows.loc[rows["method"] == method, "speedup_vs_index_select"].dropna()
        out[prefix + "Best"] = fmt_ratio(speedups.max()) if not speedups.empty else NA
        out[prefix + "Worst"] = fmt_ratio(speedups.min()) if not speedups.empty else NA
    paired = rows[(rows["method"] == "paired") & (rows["active_mean"] > 0)]
    churn = (100.0 * paired["k_mean"] / paired["active_mean"]).dropna()
    out["EtoEMeanChurnPercent"] = fmt_fixed(churn.mean(), 1) if not churn.empty else NA


IR_EVENTS = {"cachegrind": "Ir", "hw": "instructions"}


def perf_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    perf = merged.perf
    counted = perf[perf["source"].isin(list(IR_EVENTS)) & perf["per_update"].notna()]
    counted = counted[counted.apply(lambda r: r["event"] == IR_EVENTS[r["source"]], axis=1)] \
        if not counted.empty else counted
    host = _host_for(counted, primary.host if primary else None)
    rows = counted[counted["host_id"] == host] if host else counted
    if host and primary is not None:
        same = data.where(rows, N=primary.N, m=primary.m, hidden=primary.hidden)
        rows = same if not same.empty else rows
    if host:
        key = data.mode_key(rows, ["N", "m", "hidden", "gate", "source"])
        rows = data.where(rows, **dict(zip(["N", "m", "hidden", "gate", "source"], key)))
    out["PerfHost"] = escape(host) if host else NA
    out["PerfSource"] = escape(rows["source"].iloc[0]) if host else NA
    ks = sorted(set(STANDARD_K) | {int(k) for k in rows["k"]})
    for k in ks:
        paired = _value(rows, "per_update", method="paired", k=k)
        rebuild = _value(rows, "per_update", method="rebuild", k=k)
        ratio = paired / rebuild if rebuild and rebuild > 0 else math.nan
        out[f"PerfIrRatioK{words(k)}"] = fmt_ratio(ratio)


def autotune_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    rows = merged.autotune
    host = _host_for(rows, primary.host if primary else None)
    rows = rows[rows["host_id"] == host] if host else rows
    winner = rows[rows["is_winner"]]
    w = winner.iloc[0] if not winner.empty else None
    out["AutotuneHost"] = escape(host) if host else NA
    out["AutotuneGrain"] = fmt_int(w["grain"]) if w is not None else NA
    out["AutotuneParThreshold"] = fmt_int(w["par_threshold"]) if w is not None else NA
    out["AutotuneTau"] = f"{w['hybrid_tau_frac']:g}" if w is not None else NA
    out["AutotuneThreads"] = fmt_int(w["threads"]) if w is not None else NA
    out["AutotuneWinnerMs"] = fmt_sig(w["median_s"] * 1e3) if w is not None else NA
    out["AutotuneCandidates"] = str(len(rows)) if host else NA


def numbers(merged: data.Merged) -> str:
    out = Macros()
    hosts_numbers(out, merged)
    primary = micro_numbers(out, merged)
    e2e_numbers(out, merged, primary)
    perf_numbers(out, merged, primary)
    autotune_numbers(out, merged, primary)
    return out.render()
