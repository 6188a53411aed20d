r"""``numbers``: the numbers and data-dependent sentences the paper quotes, as
``\newcommand{\Name}{value}`` lines.

Every macro is always defined (so the paper compiles on partial results); a number the merged
tables cannot give expands to ``\textit{n/a}``, a number whose row is kept out of headline
numbers (implausible or busy, see below) to ``\textit{excluded}``. Ratios carry two decimals (two
significant digits below 0.1), counts are plain integers, percentages one decimal, times (ms)
three significant digits; text is LaTeX-escaped. Every sentence whose wording depends on the data
is a ``...Sentence`` macro built here, never typed in the paper.

``<K>`` in a name is k spelled out in CamelCase words (0 -> Zero, 64 -> SixtyFour, 1024 ->
OneThousandTwentyFour), ``<T>`` a thread count the same way (1 -> One, 2 -> Two); the per-k macros
exist for k in {0, 16, 64, 256, 1024} plus every k the primary rows hold, the per-thread macros
for threads in {1, 2} plus every thread count of the primary rows (autotune: of its host).

Primary configuration P (see :mod:`paired_replacement.analysis.data`): micro rows with pattern
uniform, gate on, the first dtype, of the (N, m, hidden) with the most rows (ties: first in merged
order), on the first host alphabetically that has it, at every thread count measured there. The
e2e, perf and autotune numbers come from P's host when it has such rows, else from the first host
alphabetically that has them.

Headline rule: a ratio is quoted with its 95% interval exactly as the benchmark wrote it
(paired-sample ratios round by round, hierarchical bootstrap over processes then rounds). It is
*excluded* -- ``\textit{excluded}``, counted, and named in the exclusion sentences -- when the
method's row or the baseline's row of the same configuration has ``plausible = false`` (faster
than 1.25x a memcpy of its own rows: a measurement error until explained) or ``busy = true``
(other processes used more than 0.25 cores, or the hypervisor stole more than 5%). Methods of
role naive (bool_mask) or reference (numpy_reference) never enter a headline number. A ratio is
*faster* / *slower* when its whole interval lies above / below 1, *within noise* otherwise.

Macros (name: meaning [source rows]):

=================================== ===============================================================
macro                               meaning [source rows]
=================================== ===============================================================
\ResultsHosts                       host ids, comma-separated [hosts.csv]
\HostCount                          number of hosts [hosts.csv]
\TimingProcesses                    worker processes per timed row (a range if they differ)
                                    [micro, e2e, autotune: n_processes]
\TimingRounds                       timed rounds per process (n_values / n_processes; a range)
\TimingSentence                     how many processes x rounds every interval rests on; says when
                                    one process leaves out between-process variation
\TimedConfigs                       timed configurations (host, benchmark, config_hash, threads)
                                    [micro, e2e, autotune]
\BusyConfigs                        of those, measured on a busy host (busy = true)
\LoadSentence                       how many ran busy (and the most other cores seen), kept out
\MicroHostCount                     hosts with any micro rows [micro.csv]
\MicroPrimaryHost                   host of P [micro.csv, P]
\MicroN \MicroM                     N and m of P [micro.csv, P]
\MicroHidden                        hidden size of P [micro.csv, P]
\MicroDtype                         dtype of P [micro.csv, P]
\MicroThreads                       thread counts of P, as text ("1 and 2") [micro.csv, P]
\MicroVsDeltaK<K>Threads<T>         paired speedup vs torch_delta (torch_delta time / paired time,
                                    median of round-by-round ratios) at k, T threads
                                    [micro.csv: P, method paired, speedup_vs_torch_delta]
\MicroVsDeltaK<K>Threads<T>CI       its 95% interval, "[low, high]" [idem, _ci95_low/_high]
\MicroVsIndexSelectK<K>Threads<T>   paired speedup vs index_select (+ ...CI) [idem]
\MicroVsRebuildFloorK<K>Threads<T>  paired speedup vs rebuild_floor, a memcpy of all m' rows
                                    (+ ...CI) [idem]
\MicroEfficiencyK<K>Threads<T>      paired efficiency vs its memcpy floor (floor time / paired time)
                                    [micro.csv: P, paired, efficiency_vs_floor]
\MicroPairedMsK<K>Threads<T>        paired median per update, ms [micro.csv: P, paired]
\MicroDeltaMsK<K>Threads<T>         torch_delta median per update, ms [micro.csv: P, torch_delta]
\MicroHeadlineK                     k of the headline sentence: 64 if P measured it, else the
                                    measured k > 0 closest to 64 on a log scale
\MicroHeadlineSentence              paired vs torch_delta at \MicroHeadlineK with its interval, for
                                    every thread count of P (or why a count is not reported)
\MicroHeadlineHalfWidth             relative half-width of the headline ratio's interval at
                                    \MicroHeadlineK, % (the larger side; the widest over threads)
\MicroHalfWidthMax                  the widest relative half-width over all included paired vs
                                    torch_delta intervals of P (every k, every thread count), %
\MicroPrecisionSentence             whether those intervals are all narrower than +-10%, or that
                                    we "could not" resolve the ratio that finely (how many wider)
\MicroVerdictDeltaSentence          where paired is faster / slower / within noise / excluded
                                    against torch_delta, per thread count, over P's k
\MicroVerdictIndexSelectSentence    the same against index_select
\MicroVerdictRebuildFloorSentence   the same against rebuild_floor
\MicroHeadlinePoints                (k, threads) points of P with a paired vs torch_delta ratio
\MicroExcludedCount                 of those, excluded (paired's or torch_delta's row flagged)
\MicroExcludedImplausible           of those, excluded as implausible
\MicroExcludedBusy                  of those, excluded as busy
\MicroImplausibleRows               rows of micro.csv with plausible = false (any configuration;
                                    naive/reference methods left out) [micro.csv]
\MicroRows                          rows of micro.csv (naive/reference methods left out)
\MicroExclusionSentence             the exclusions at P and in micro.csv, with counts and reasons,
                                    naming the implausible rows
\ControlConfigs                     configurations with a same-code control ratio (paired_control
                                    time / paired time) with an interval [micro.csv: paired rows]
\ControlAgreed                      of those, where the interval contains 1
\ControlSentence                    "the control agreed in X of Y configurations", naming each
                                    disagreement with its ratio and interval
\MicroColdPoints \MicroWarmPoints   P's paired points with k > 0 whose cycle is cold / warm
\MicroCacheSentence                 cold vs warm at P, with the LLC size [cache_state, llc_bytes]
\EtoEHost                           host of the e2e numbers [e2e.csv]
\EtoEThreads                        its thread counts, as text
\EtoEConfigCount                    (m, batch, threads) configurations of the e2e selection there
\EtoEVs<C>Min \EtoEVs<C>Max         smallest / largest included paired speedup vs C over those
                                    configurations; C = Delta (torch_delta), IndexSelect, NoPack
                                    (no_pack), Dense [e2e selection, method paired]
\EtoERowFFNVsNoPackMin ...Max       the same for paired_rowffn vs no_pack (same row kernel)
\EtoEExcludedCount                  paired rows of the selection excluded (paired or the compared
                                    baseline flagged; the union over the four baselines)
\EtoEExclusionSentence              those exclusions with reasons
\EtoENoPackSentence                 whether packing pays against no_pack (speedup_vs_no_pack > 1:
                                    it pays), in which configurations it does not
\EtoEVerdictDeltaSentence           where the paired step is faster / slower than torch_delta
\EtoEVerdictIndexSelectSentence     the same against index_select
\EtoEVerdictDenseSentence           the same against dense
\EtoEMeanChurnPercent               mean over configurations of 100 * k_mean / active_mean
                                    [e2e selection, method paired]
\PerfHost                           host of the counter numbers [perf.csv, source hw or cachegrind]
\PerfSource                         hw or cachegrind [idem]
\PerfIrRatioK<K>                    paired / rebuild per-update instructions (Ir under cachegrind,
                                    instructions under hw) at k; rebuild is the core's full gather
                                    (memcpy of all m rows) [perf.csv: that host and source, P's
                                    (N, m, hidden) if counted there, else its most counted one]
\PerfSimLLMiB                       size of cachegrind's simulated last-level cache, MiB
                                    [perf.csv: sim_ll_bytes]; n/a under hw counters
\PerfSentence                       the counter source, the simulated LL size and whether the
                                    counted updates move more bytes than it holds
\AutotuneHost                       host of the autotune numbers [autotune.csv]
\AutotuneCandidates                 candidates timed in the tune phase, all thread counts
\AutotuneWinnerThreads<T>           the tune-phase winner at T threads, as text [is_winner]
\AutotuneGainThreads<T>             held-out gain, defaults' time / winner's time
                                    [autotune.csv: phase held_out_winner, gain_vs_default]
\AutotuneGainThreads<T>CI           its 95% interval [gain_ci95_low/_high]
\AutotuneSentence                   the held-out gain per thread count, "within noise" (interval
                                    contains 1), "real" (above 1) or a loss (below 1)
=================================== ===============================================================

"e2e selection": a host's sweep rows (else its e2e rows) at its most measured (N, hidden, gate,
dtype, rho, beta), every thread count.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from . import data
from .latex import (NA, escape, fmt_fixed, fmt_int, fmt_interval, fmt_mib, fmt_percent,
                    fmt_ratio, fmt_sig, join_and)

STANDARD_K = (0, 16, 64, 256, 1024)
STANDARD_THREADS = (1, 2)
HEADLINE_K = 64
PRECISION_GOAL = 0.10  # the +-10% the precision sentence judges against
EXCLUDED = r"\textit{excluded}"
LIST_LIMIT = 6  # items a sentence names before "and N more"
_ONES = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine", "Ten",
         "Eleven", "Twelve", "Thirteen", "Fourteen", "Fifteen", "Sixteen", "Seventeen", "Eighteen",
         "Nineteen"]
_TENS = ["", "", "Twenty", "Thirty", "Forty", "Fifty", "Sixty", "Seventy", "Eighty", "Ninety"]
_SCALES = [(10**9, "Billion"), (10**6, "Million"), (1000, "Thousand"), (100, "Hundred")]


def tt(method: str) -> str:
    """A method name in typewriter type."""
    return r"\texttt{" + escape(method) + "}"


TT = {m: tt(m) for m in ("paired", "paired_control", "paired_rowffn", "torch_delta",
                         "index_select", "rebuild_floor", "no_pack", "dense", "ffn_floor")}
#: micro comparisons: macro stem -> (baseline method, column)
MICRO_VS = {"Delta": ("torch_delta", "speedup_vs_torch_delta"),
            "IndexSelect": ("index_select", "speedup_vs_index_select"),
            "RebuildFloor": ("rebuild_floor", "speedup_vs_rebuild_floor")}
#: e2e comparisons: macro stem -> (baseline method, column)
E2E_VS = {"Delta": ("torch_delta", "speedup_vs_torch_delta"),
          "IndexSelect": ("index_select", "speedup_vs_index_select"),
          "NoPack": ("no_pack", "speedup_vs_no_pack"),
          "Dense": ("dense", "speedup_vs_dense")}
REASON_TEXT = {"implausible": "implausible: faster than 1.25$\\times$ a memcpy of its own rows",
               "busy": "measured on a busy host"}


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


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------
def _value(rows: pd.DataFrame, column: str, **equal) -> float:
    rows = data.where(rows, **equal) if equal else rows
    return float(rows[column].iloc[0]) if not rows.empty else math.nan


def _host_for(frame: pd.DataFrame, preferred: str | None) -> str | None:
    hosts = sorted(frame["host_id"].unique())
    if not hosts:
        return None
    return preferred if preferred in hosts else hosts[0]


def _threads_words(t: int) -> str:
    return f"{int(t)} thread" + ("" if int(t) == 1 else "s")


def _listed(items: list[str], limit: int = LIST_LIMIT) -> str:
    """Up to ``limit`` items joined with 'and', then 'and N more'."""
    if len(items) <= limit:
        return join_and(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"


def _all(n: int, noun: str, plural: str | None = None) -> str:
    """'the only configuration', 'both configurations', 'all 5 configurations'."""
    plural = plural or noun + "s"
    return f"the only {noun}" if n == 1 else (f"both {plural}" if n == 2 else
                                             f"all {n} {plural}")


def _reasons(reasons) -> str:
    return "; ".join(REASON_TEXT[r] for r in reasons)


def _ratio_ci(point, low, high, decimals: int = 2) -> str:
    """'8.29$\\times$ [8.05, 14.04]' (the interval left out when the CSV has none)."""
    ci = fmt_interval(low, high, na="", decimals=decimals)
    return f"{fmt_ratio(point, decimals=decimals)}$\\times$" + (f" {ci}" if ci else "")


def _range(values: pd.Series) -> tuple[str, str]:
    values = values.dropna()
    if values.empty:
        return NA, NA
    return fmt_ratio(values.min()), fmt_ratio(values.max())


def _range_text(values: pd.Series) -> str:
    low, high = _range(values)
    return f"{low}$\\times$" if low == high else f"{low}--{high}$\\times$"


def _k_text(ks) -> str:
    return "$k$ = " + ", ".join(str(int(k)) for k in ks)


def verdict_sentence(comp: pd.DataFrame, against: str, subject: str, label, unit: str) -> str:
    """Where ``subject`` is faster / slower / within noise / excluded against ``against``, per
    thread count. ``comp``: a :func:`data.comparison` frame; ``label(rows) -> str`` names a set
    of points (e.g. '$k$ = 16, 64'); ``unit``: what 'every measured ...' counts (e.g. '$k$')."""
    if comp.empty:
        return f"No ratio of {subject} against {against} was measured."
    clauses, uniform = [], None
    for threads, group in comp.groupby("threads", sort=True):
        included = group[~group["excluded"]]
        parts = []
        for v, text in (("faster", "faster"), ("slower", "slower"), ("tie", "within noise")):
            rows = included[included["verdict"] == v]
            if rows.empty:
                continue
            every = len(rows) == len(group)
            parts.append(f"{text} at every measured {unit}" if every else
                         f"{text} at {label(rows)}")
            uniform = v if every and uniform in (None, v) else "mixed"
        excluded = group[group["excluded"]]
        if not excluded.empty:
            uniform = "mixed"
            reasons = sorted({r for rs in excluded["reasons"] for r in rs},
                             key=data.REASONS.index)
            parts.append(f"not judged at {label(excluded)} (excluded: {', '.join(reasons)})")
        clauses.append((int(threads), join_and(parts)))
    if uniform in ("faster", "slower", "tie"):
        text = {"faster": "faster (95\\% interval above 1)",
                "slower": "slower (95\\% interval below 1)",
                "tie": "within noise (95\\% interval containing 1)"}[uniform]
        return (f"Against {against}, {subject} is {text} at every measured {unit} with "
                f"{data.threads_text([t for t, _ in clauses])}.")
    return (f"Against {against}, " + "; ".join(
        f"with {_threads_words(t)} {subject if i == 0 else 'it'} is {c}"
        for i, (t, c) in enumerate(clauses)) + ".")


# ---------------------------------------------------------------------------------------------
# Hosts, timing protocol and load
# ---------------------------------------------------------------------------------------------
def hosts_numbers(out: Macros, merged: data.Merged) -> None:
    ids = sorted(merged.hosts["host_id"])
    out["ResultsHosts"] = escape(", ".join(ids)) if ids else NA
    out["HostCount"] = str(len(ids))


def _timed(merged: data.Merged) -> pd.DataFrame:
    cols = data.CONFIG_KEY + ["n_processes", "n_values", "busy", "others_busy_cores",
                              "steal_percent"]
    frames = [merged[kind][cols] for kind in ("micro", "e2e", "autotune")
              if not merged[kind].empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)


def _int_range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return NA
    low, high = int(round(values.min())), int(round(values.max()))
    return str(low) if low == high else f"{low}--{high}"


def timing_numbers(out: Macros, merged: data.Merged) -> None:
    timed = _timed(merged)
    procs = timed["n_processes"].astype(float)
    rounds = timed["n_values"].astype(float) / procs.where(procs > 0)
    out["TimingProcesses"] = _int_range(procs)
    out["TimingRounds"] = _int_range(rounds)
    if procs.dropna().empty:
        out["TimingSentence"] = "No timed rows are available."
    else:
        single = int((procs == 1).sum())
        if single == len(procs):
            text = (f"Each timed row comes from a single worker process of {_int_range(rounds)} "
                    "timed rounds, so its interval covers the variation between rounds only, "
                    "not between processes")
        else:
            text = (f"Each timed row pools {_int_range(procs)} fresh worker processes of "
                    f"{_int_range(rounds)} timed rounds each")
        if 0 < single < len(procs):
            text += (f"; {single} of {len(procs)} rows come from a single process, whose "
                     "intervals cover the variation between rounds only")
        out["TimingSentence"] = text + "."
    configs = timed.drop_duplicates(data.CONFIG_KEY)
    busy = configs[configs["busy"].astype(bool)]
    out["TimedConfigs"] = str(len(configs))
    out["BusyConfigs"] = str(len(busy))
    if configs.empty:
        out["LoadSentence"] = "No timed configurations are available."
    elif busy.empty:
        top = timed["others_busy_cores"].astype(float).max()
        out["LoadSentence"] = (
            f"None of the {len(configs)} timed configurations ran on a busy host"
            + (f" (other processes used at most {fmt_fixed(top, 2)} cores)"
               if np.isfinite(top) else "") + ".")
    else:
        top = busy["others_busy_cores"].astype(float).max()
        out["LoadSentence"] = (
            f"{len(busy)} of the {len(configs)} timed configurations ran on a busy host (other "
            "processes used more than 0.25 cores or the hypervisor stole more than 5\\%"
            + (f"; at worst {fmt_fixed(top, 2)} other cores" if np.isfinite(top) else "")
            + "); their rows stay out of every headline number.")


# ---------------------------------------------------------------------------------------------
# micro
# ---------------------------------------------------------------------------------------------
def _point_macros(out: Macros, name: str, comp: pd.DataFrame, k: int, threads: int) -> None:
    rows = comp[(comp["k_target"] == k) & (comp["threads"] == threads)]
    if rows.empty:
        out[name], out[name + "CI"] = NA, NA
        return
    r = rows.iloc[0]
    if r["excluded"]:
        out[name], out[name + "CI"] = EXCLUDED, EXCLUDED
        return
    out[name] = fmt_ratio(r["point"])
    out[name + "CI"] = fmt_interval(r["low"], r["high"])


def _headline_k(ks: list[int]) -> int | None:
    ks = [k for k in ks if k > 0]
    if not ks:
        return None
    if HEADLINE_K in ks:
        return HEADLINE_K
    return min(ks, key=lambda k: (abs(math.log(k / HEADLINE_K)), k))


def _clause(rows: pd.DataFrame, threads: int) -> str:
    """'8.29$\\times$ [..] with 1 thread' or why that thread count is not reported."""
    sub = rows[rows["threads"] == threads]
    if sub.empty:
        return f"not measured with {_threads_words(threads)}"
    r = sub.iloc[0]
    if r["excluded"]:
        return f"not reported with {_threads_words(threads)} ({_reasons(r['reasons'])})"
    note = {"slower": " (slower)", "tie": " (within noise)"}.get(r["verdict"], "")
    return f"{_ratio_ci(r['point'], r['low'], r['high'])}{note} with {_threads_words(threads)}"


def _row_name(r, hosts: int) -> str:
    """'paired ($k$ = 16, 1 thread)' plus host / shape / pattern where they differ from usual."""
    bits = [f"$k$ = {int(r['k_target'])}" if r["k_target"] >= 0 else escape(r["pattern"]),
            _threads_words(r["threads"])]
    if r["pattern"] != "uniform" and r["k_target"] >= 0:
        bits.append(escape(r["pattern"]))
    if hosts > 1:
        bits.append(escape(r["host_id"]))
    return f"{tt(r['method'])} ({', '.join(bits)})"


def micro_numbers(out: Macros, merged: data.Merged) -> data.Primary | None:
    micro = merged.micro
    p = data.primary_config(micro)
    out["MicroHostCount"] = str(micro["host_id"].nunique())
    out["MicroPrimaryHost"] = escape(p.host) if p else NA
    out["MicroN"] = fmt_int(p.N) if p else NA
    out["MicroM"] = fmt_int(p.m) if p else NA
    out["MicroHidden"] = fmt_int(p.hidden) if p else NA
    out["MicroDtype"] = escape(p.dtype) if p else NA
    out["MicroThreads"] = data.threads_text(p.threads) if p else NA
    rows = data.primary_rows(micro, p)
    rows = rows[rows["k_target"] >= 0]
    comps = {stem: data.comparison(rows, "paired", col, base, full=micro)
             for stem, (base, col) in MICRO_VS.items()}
    eff = data.comparison(rows, "paired", "efficiency_vs_floor", full=micro)
    ks = sorted(set(STANDARD_K) | {int(k) for k in rows["k_target"]})
    threads = sorted(set(STANDARD_THREADS) | set(p.threads if p else ()))
    for k in ks:
        for t in threads:
            suffix = f"K{words(k)}Threads{words(t)}"
            for stem, comp in comps.items():
                _point_macros(out, f"MicroVs{stem}{suffix}", comp, k, t)
            e = eff[(eff["k_target"] == k) & (eff["threads"] == t)]
            out[f"MicroEfficiency{suffix}"] = (NA if e.empty else EXCLUDED if e["excluded"].iloc[0]
                                               else fmt_ratio(e["point"].iloc[0]))
            out[f"MicroPairedMs{suffix}"] = fmt_sig(_value(rows, "median_s", method="paired",
                                                           k_target=k, threads=t) * 1e3)
            out[f"MicroDeltaMs{suffix}"] = fmt_sig(_value(rows, "median_s", method="torch_delta",
                                                          k_target=k, threads=t) * 1e3)
    delta = comps["Delta"]
    # The headline sentence and its precision.
    k_h = _headline_k(sorted(int(k) for k in delta["k_target"].unique()))
    out["MicroHeadlineK"] = str(k_h) if k_h is not None else NA
    if p is None or k_h is None:
        out["MicroHeadlineSentence"] = ("No paired update was timed against "
                                        f"{TT['torch_delta']}, so the headline ratio is not "
                                        "available.")
    else:
        head = delta[delta["k_target"] == k_h]
        clauses = [_clause(head, t) for t in p.threads]
        out["MicroHeadlineSentence"] = (
            f"At $k = {k_h}$ swapped rows the paired update's speedup over {TT['torch_delta']}, "
            f"the same differential update written in plain torch, is {join_and(clauses)}.")
    included = delta[~delta["excluded"]]
    widths = pd.Series([data.half_width(a, b, c) for a, b, c in
                        zip(included["point"], included["low"], included["high"])],
                       index=included.index, dtype=float)
    head_w = widths[included["k_target"] == k_h] if k_h is not None else widths.iloc[0:0]
    out["MicroHeadlineHalfWidth"] = fmt_percent(head_w.max()) if head_w.notna().any() else NA
    out["MicroHalfWidthMax"] = fmt_percent(widths.max()) if widths.notna().any() else NA
    known = widths.dropna()
    if known.empty:
        out["MicroPrecisionSentence"] = (f"No included {TT['paired']} vs {TT['torch_delta']} "
                                         "ratio has an interval, so its precision is not known.")
    else:
        wide = known[known > PRECISION_GOAL]
        top = known.idxmax()
        where_top = (f"$k$ = {int(included.loc[top, 'k_target'])}, "
                     f"{_threads_words(included.loc[top, 'threads'])}")
        if wide.empty:
            text = _all(len(known), "included 95\\% interval")
            verb = "is" if len(known) == 1 else "are"
            out["MicroPrecisionSentence"] = (
                f"{text[0].upper() + text[1:]} of the headline ratio {verb} narrower than "
                f"$\\pm$10\\% (the widest: $\\pm${fmt_percent(known.max())}\\% at {where_top}).")
        else:
            out["MicroPrecisionSentence"] = (
                "We could not resolve the headline ratio to $\\pm$10\\%: "
                f"{len(wide)} of {len(known)} included 95\\% intervals are wider (the widest: "
                f"$\\pm${fmt_percent(known.max())}\\% at {where_top}).")
    # Where the method pays, per baseline.
    label = lambda sub: _k_text(sorted(sub["k_target"].unique()))  # noqa: E731
    for stem, (base, _) in MICRO_VS.items():
        out[f"MicroVerdict{stem}Sentence"] = verdict_sentence(
            comps[stem], TT[base], "the paired update", label, "$k$")
    # Exclusions.
    excluded = delta[delta["excluded"]]
    out["MicroHeadlinePoints"] = str(len(delta))
    out["MicroExcludedCount"] = str(len(excluded))
    n_impl = int(excluded["reasons"].map(lambda r: "implausible" in r).sum())
    n_busy = int(excluded["reasons"].map(lambda r: "busy" in r).sum())
    out["MicroExcludedImplausible"] = str(n_impl)
    out["MicroExcludedBusy"] = str(n_busy)
    counted = data.headline_methods(micro)
    implausible = counted[~counted["plausible"]]
    out["MicroImplausibleRows"] = str(len(implausible))
    out["MicroRows"] = str(len(counted))
    if micro.empty:
        out["MicroExclusionSentence"] = "There are no micro results to exclude from."
    else:
        if delta.empty:
            head_text = (f"No (k, threads) point of the primary configuration has a paired vs "
                         f"{TT['torch_delta']} ratio.")
        elif excluded.empty:
            head_text = (f"None of the {len(delta)} headline points (k, threads) of the primary "
                         "configuration is excluded.")
        else:
            why = []
            if n_impl:
                why.append(f"{n_impl} as implausible ({TT['paired']} or {TT['torch_delta']} ran "
                           "faster than 1.25$\\times$ a memcpy of its own rows)")
            if n_busy:
                why.append(f"{n_busy} as measured on a busy host")
            both = n_impl + n_busy - len(excluded)
            head_text = (f"{len(excluded)} of the {len(delta)} headline points (k, threads) of "
                         f"the primary configuration {'is' if len(excluded) == 1 else 'are'} "
                         f"excluded: {join_and(why)}"
                         + (f" ({both} for both reasons)" if both else "") + ".")
        hosts = micro["host_id"].nunique()
        if implausible.empty:
            table_text = "No row of the micro benchmark is implausible."
        else:
            names = [_row_name(r, hosts) for _, r in implausible.sort_values(
                ["host_id", "threads", "k_target", "method"]).iterrows()]
            table_text = (f"Over the whole micro benchmark {len(implausible)} of {len(counted)} "
                          f"rows are implausible: {_listed(names)}; we treat them as measurement "
                          "errors, not results.")
        out["MicroExclusionSentence"] = f"{head_text} {table_text}"
    # The same-code control, over the whole micro table.
    ctl = micro[(micro["method"] == "paired") & np.isfinite(micro["control_ratio"])
                & np.isfinite(micro["control_ratio_ci95_low"])
                & np.isfinite(micro["control_ratio_ci95_high"])]
    agree = (ctl["control_ratio_ci95_low"] <= 1.0) & (ctl["control_ratio_ci95_high"] >= 1.0)
    out["ControlConfigs"] = str(len(ctl))
    out["ControlAgreed"] = str(int(agree.sum()))
    if ctl.empty:
        out["ControlSentence"] = (f"The same-code control ({TT['paired_control']}) was not "
                                  "measured, so the harness's ability to tell identical code "
                                  "apart is not checked.")
    elif agree.all():
        out["ControlSentence"] = (
            f"The same-code control agreed in {_all(len(ctl), 'configuration')}: the 95\\% "
            f"interval of {TT['paired_control']} time / {TT['paired']} time contains 1 in each "
            "(ratios "
            f"{_range_text(ctl['control_ratio'])}).")
    else:
        hosts = micro["host_id"].nunique()
        names = []
        for _, r in ctl[~agree].sort_values(["host_id", "threads", "k_target"]).iterrows():
            bits = [f"$k$ = {int(r['k_target'])}" if r["k_target"] >= 0 else escape(r["pattern"]),
                    _threads_words(r["threads"])]
            if r["pattern"] != "uniform" and r["k_target"] >= 0:
                bits.append(escape(r["pattern"]))
            if (r["N"], r["m"], r["hidden"]) != ((p.N, p.m, p.hidden) if p else None):
                bits.append(f"$N$ = {int(r['N'])}, $m$ = {int(r['m'])}, hidden "
                            f"{int(r['hidden'])}")
            if hosts > 1:
                bits.append(escape(r["host_id"]))
            names.append(f"{', '.join(bits)} ("
                         + _ratio_ci(r["control_ratio"], r["control_ratio_ci95_low"],
                                     r["control_ratio_ci95_high"], decimals=3) + ")")
        out["ControlSentence"] = (
            f"The same-code control agreed in {int(agree.sum())} of {len(ctl)} configurations; "
            f"it disagreed at {_listed(names)}. There the harness told identical code apart, so "
            "differences of that size between methods are not resolved in those "
            "configurations.")
    # Cache state at P.
    cache = rows[(rows["method"] == "paired") & (rows["k_target"] > 0)]
    cold = int((cache["cache_state"] == "cold").sum())
    warm = int((cache["cache_state"] == "warm").sum())
    out["MicroColdPoints"], out["MicroWarmPoints"] = str(cold), str(warm)
    llc = cache["llc_bytes"].max() if not cache.empty else math.nan
    llc_text = (f"the {fmt_mib(llc)} MiB last-level cache" if np.isfinite(llc)
                and llc > 0 else "the last-level cache (its size unknown on this host)")
    if cache.empty:
        out["MicroCacheSentence"] = "No paired point with $k > 0$ says how warm its caches were."
    elif warm == 0 and cold == len(cache):
        out["MicroCacheSentence"] = (
            f"Every one of the {cold} paired points with $k > 0$ of the primary configuration "
            f"ran cold: one cycle of its mask sequence touches more bytes than {llc_text}.")
    else:
        out["MicroCacheSentence"] = (
            f"Of the {len(cache)} paired points with $k > 0$ of the primary configuration, "
            f"{cold} ran cold and {warm} warm: a warm cycle fits in {llc_text}, which flatters "
            "every method that rereads the same rows.")
    return p


# ---------------------------------------------------------------------------------------------
# e2e
# ---------------------------------------------------------------------------------------------
def _e2e_label(rows: pd.DataFrame) -> str:
    items = [f"$m$ = {int(r['m'])}" + (f" (batch {int(r['batch'])})" if r["batch"] != 1 else "")
             for _, r in rows.sort_values(["m", "batch"]).iterrows()]
    return _listed(list(dict.fromkeys(items)))


def e2e_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    rows = data.e2e_selection(merged.e2e)
    host = _host_for(rows, primary.host if primary else None)
    rows = rows[rows["host_id"] == host] if host else rows
    out["EtoEHost"] = escape(host) if host else NA
    out["EtoEThreads"] = data.threads_text(data.thread_counts(rows)) if host else NA
    out["EtoEConfigCount"] = str(len(rows.groupby(["m", "batch", "threads"]))) if host else NA
    comps = {stem: data.comparison(rows, "paired", col, base, full=merged.e2e)
             for stem, (base, col) in E2E_VS.items()}
    for stem, comp in comps.items():
        out[f"EtoEVs{stem}Min"], out[f"EtoEVs{stem}Max"] = _range(
            comp.loc[~comp["excluded"], "point"])
    rowffn = data.comparison(rows, "paired_rowffn", "speedup_vs_no_pack", "no_pack",
                             full=merged.e2e)
    out["EtoERowFFNVsNoPackMin"], out["EtoERowFFNVsNoPackMax"] = _range(
        rowffn.loc[~rowffn["excluded"], "point"])
    # Exclusions: a paired row is excluded from a comparison when it or that baseline is flagged.
    excluded = {}
    for comp in comps.values():
        for idx, reasons in comp.loc[comp["excluded"], "reasons"].items():
            excluded.setdefault(idx, set()).update(reasons)
    paired = rows[rows["method"] == "paired"]
    out["EtoEExcludedCount"] = str(len(excluded))
    if paired.empty:
        out["EtoEExclusionSentence"] = "There are no paired decode-step timings."
    elif not excluded:
        out["EtoEExclusionSentence"] = (f"None of the {len(paired)} paired decode-step "
                                        "configurations is excluded.")
    else:
        counts = {r: sum(r in v for v in excluded.values()) for r in data.REASONS}
        why = [f"{n} {'as implausible' if r == 'implausible' else 'as measured on a busy host'}"
               for r, n in counts.items() if n]
        names = [f"{_e2e_label(paired.loc[[i]])}, {_threads_words(paired.loc[i, 'threads'])}"
                 for i in sorted(excluded)]
        out["EtoEExclusionSentence"] = (
            f"{len(excluded)} of the {len(paired)} paired decode-step configurations "
            f"{'is' if len(excluded) == 1 else 'are'} excluded from the decode-step numbers "
            f"({join_and(why)}): {_listed(names)}.")
    # Does packing pay against no_pack?
    nopack = comps["NoPack"]
    inc = nopack[~nopack["excluded"]]
    reads = f"{TT['no_pack']}, which reads the active rows where they lie in the pools"
    if inc.empty:
        sentence = (f"No included configuration times both {TT['paired']} and {TT['no_pack']}, "
                    "so whether packing pays is not measured.")
    else:
        faster, slower = inc[inc["verdict"] == "faster"], inc[inc["verdict"] == "slower"]
        tie = inc[inc["verdict"] == "tie"]
        n = len(inc)
        if len(faster) == n:
            sentence = (f"Packing pays: in {_all(n, 'included configuration')} the paired step is "
                        f"faster than {reads} ({_range_text(inc['point'])}).")
        elif len(slower) == n:
            sentence = (f"Packing does not pay here: in {_all(n, 'included configuration')} the "
                        f"paired step is slower than {reads} ({_range_text(inc['point'])}); "
                        "keeping a packed block costs more than it saves in them.")
        else:
            parts = []
            for sub, text in ((faster, "pays"), (slower, "does not pay"),
                              (tie, "is within noise")):
                if sub.empty:
                    continue
                by_t = "; ".join(f"{_e2e_label(g)} with {_threads_words(t)}"
                                 for t, g in sub.groupby("threads"))
                parts.append(f"{text} in {len(sub)} ({by_t}; {_range_text(sub['point'])})")
            sentence = (f"Against {reads}, packing " + join_and(parts) + f", of {n} included "
                        "configurations.")
        if not rowffn.empty and (~rowffn["excluded"]).any():
            sentence += (f" {TT['paired_rowffn']}, which runs the same row kernel as "
                         f"{TT['no_pack']} on the packed block, reaches "
                         f"{_range_text(rowffn.loc[~rowffn['excluded'], 'point'])}.")
    out["EtoENoPackSentence"] = sentence
    for stem in ("Delta", "IndexSelect", "Dense"):
        base = E2E_VS[stem][0]
        out[f"EtoEVerdict{stem}Sentence"] = verdict_sentence(
            comps[stem], TT[base], "the paired decode step", _e2e_label, "configuration")
    paired = paired[paired["active_mean"] > 0]
    churn = (100.0 * paired["k_mean"] / paired["active_mean"]).dropna()
    out["EtoEMeanChurnPercent"] = fmt_fixed(churn.mean(), 1) if not churn.empty else NA


# ---------------------------------------------------------------------------------------------
# perf
# ---------------------------------------------------------------------------------------------
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
    source = rows["source"].iloc[0] if host else None
    out["PerfHost"] = escape(host) if host else NA
    out["PerfSource"] = escape(source) if host else NA
    ks = sorted(set(STANDARD_K) | {int(k) for k in rows["k"]})
    for k in ks:
        paired = _value(rows, "per_update", method="paired", k=k)
        rebuild = _value(rows, "per_update", method="rebuild", k=k)
        ratio = paired / rebuild if rebuild and rebuild > 0 else math.nan
        out[f"PerfIrRatioK{words(k)}"] = fmt_ratio(ratio)
    sim = rows["sim_ll_bytes"].max() if host else math.nan
    simulated = source == "cachegrind" and np.isfinite(sim) and sim > 0
    out["PerfSimLLMiB"] = fmt_mib(sim) if simulated else NA
    if not host:
        out["PerfSentence"] = ("No host could count the updates (neither hardware counters nor "
                               "cachegrind were available), so there are no counter numbers.")
    elif source == "hw":
        out["PerfSentence"] = (f"The counts on {escape(host)} are hardware counters (perf stat) "
                               "of the native driver.")
    elif not simulated:
        out["PerfSentence"] = (f"The counts on {escape(host)} are cachegrind's simulation with "
                               "the cache geometry valgrind derived from the host.")
    else:
        totals = {}
        for method in ("paired", "rebuild"):
            sub = rows[rows["method"] == method]
            if not sub.empty and np.isfinite(sub["bytes_per_update"]).any():
                totals[method] = float((sub["bytes_per_update"] * sub["updates"]).min())
        text = (f"The counts on {escape(host)} are cachegrind's simulation of a generic build "
                f"with a {fmt_mib(sim)} MiB last-level cache")
        if totals:
            moved = join_and([f"{fmt_mib(v)} MiB ({escape(m)})" for m, v in totals.items()])
            fits = [m for m, v in totals.items() if v <= sim]
            text += f"; the counted updates move at least {moved} in all"
            if not fits:
                text += ", more than it holds, so their last-level misses are real."
            elif len(fits) == len(totals):
                text += (", less than it holds, so last-level misses are undercounted and only "
                         "the instruction and L1 counts are telling.")
            else:
                text += (f"; those of {join_and([escape(m) for m in fits])} fit in it, so their "
                         "last-level misses are undercounted.")
        else:
            text += "."
        out["PerfSentence"] = text


# ---------------------------------------------------------------------------------------------
# autotune
# ---------------------------------------------------------------------------------------------
def _winner_text(w, candidates: pd.DataFrame) -> str:
    tau = f"$\\tau$ = {w['hybrid_tau_frac']:g}"
    if candidates["grain"].nunique() <= 1 and candidates["par_threshold"].nunique() <= 1:
        return tau + " (grain and threshold not searched)"
    return f"grain {fmt_int(w['grain'])}, threshold {fmt_int(w['par_threshold'])}, {tau}"


def autotune_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    rows = merged.autotune
    host = _host_for(rows, primary.host if primary else None)
    rows = rows[rows["host_id"] == host] if host else rows
    tune = rows[rows["phase"] != "held_out_winner"]
    tune = tune[tune["phase"] != "held_out_default"]
    out["AutotuneHost"] = escape(host) if host else NA
    out["AutotuneCandidates"] = str(len(tune)) if host else NA
    threads = sorted(set(STANDARD_THREADS) | set(data.thread_counts(rows)))
    clauses = []
    for t in threads:
        name = f"Threads{words(t)}"
        cands = tune[tune["threads"] == t]
        winner = cands[cands["is_winner"]]
        out[f"AutotuneWinner{name}"] = (_winner_text(winner.iloc[0], cands) if not winner.empty
                                        else NA)
        held = rows[(rows["threads"] == t) & rows["phase"].isin(["held_out_winner",
                                                                 "held_out_default"])]
        hw = held[(held["phase"] == "held_out_winner") & np.isfinite(held["gain_vs_default"])]
        if hw.empty:
            out[f"AutotuneGain{name}"] = out[f"AutotuneGain{name}CI"] = NA
            if t in data.thread_counts(rows):
                clauses.append(f"with {_threads_words(t)}, not checked")
            continue
        r = hw.iloc[0]
        reasons = sorted({x for _, h in held.iterrows() for x in data.row_reasons(h)},
                         key=data.REASONS.index)
        if reasons:
            out[f"AutotuneGain{name}"] = out[f"AutotuneGain{name}CI"] = EXCLUDED
            clauses.append(f"with {_threads_words(t)}, not reported ({_reasons(reasons)})")
            continue
        point, low, high = data.interval(r, "gain_vs_default")
        out[f"AutotuneGain{name}"] = fmt_ratio(point, decimals=3)
        out[f"AutotuneGain{name}CI"] = fmt_interval(low, high, decimals=3)
        word = {"faster": "real: the interval lies above 1",
                "slower": "a loss: the interval lies below 1",
                "tie": "within noise: the interval contains 1"}.get(data.verdict(point, low, high),
                                                                  "no interval")
        clauses.append(f"with {_threads_words(t)}, {_ratio_ci(point, low, high, decimals=3)} "
                       f"({word})")
    if not host:
        out["AutotuneSentence"] = "The autotuner did not run, so no gain can be reported."
    elif not clauses:
        out["AutotuneSentence"] = ("The autotuner's winner was not checked on held-out masks, "
                                   "so its gain over the defaults is not known.")
    else:
        out["AutotuneSentence"] = ("On held-out masks, the tuned settings' gain over the "
                                   "defaults (defaults' time / winner's time) is: "
                                   + "; ".join(clauses) + ".")


def numbers(merged: data.Merged) -> str:
    out = Macros()
    hosts_numbers(out, merged)
    timing_numbers(out, merged)
    primary = micro_numbers(out, merged)
    e2e_numbers(out, merged, primary)
    perf_numbers(out, merged, primary)
    autotune_numbers(out, merged, primary)
    return out.render()
