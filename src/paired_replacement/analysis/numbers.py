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
\SmokeBanner                        a boxed "not for publication" line for the first page when
                                    study.json says smoke (or, without study.json, every timed row
                                    comes from one process); empty otherwise [study.json, n_processes]
\IsSmoke                            true / false, the same test
\PrimaryHostSentence                the primary host with its dtype and thread counts, and how it
                                    was chosen (config, the only host, or not chosen) [study.json]
\SkippedHostsSentence               host files merge left out (skipped_hosts) [study.json]
\TimingWarmupSentence               warm-up rounds discarded (timing.warmups) [study.json config]
\MicroBreakEvenSentence             per thread count, where paired stops beating index_select:
                                    above the measured k, between two k, or below the smallest
\MicroTrendSentence                 whether paired's speedup over index_select shrinks with k
\MicroFixedCostSentence             paired's time at k = 0, and its share of the headline k's time
\MicroHybridSentence                hybrid vs index_select verdicts; the k where it rebuilt
\MicroIndexFormSentence             paired_indices vs torch_delta_indices (the index forms)
\MicroNaiveSentence                 bool_mask / numpy_reference times (included rows), never headline
\MicroPatterns \MicroPatternSentence mask patterns timed; paired vs torch_delta for non-uniform ones
\EtoERangeSentence                  paired decode-step speedup ranges over every baseline measured
\EtoEJobSentence                    the single-configuration e2e job's ratios with intervals
\EtoEHybridSentence                 hybrid decode-step speedup ranges
\EtoEChurnSentence                  mean churn per batch size, and whether larger batches churn more
\EtoENoPackShort                    a clause: is no_pack faster than the paired step (counts)
\PerfFigureK                        the k the counter figure shows (closest to 64; data.perf_figure_k)
\PerfIrSentence                     paired / rebuild instructions at \PerfFigureK and the other k
\PerfThreatSentence                 what the counter source means (hw, or cachegrind on which build)
\AutotuneWinnerSentence             the winners of every thread count autotune ran
\TraceMicroSentence                 paired vs torch_delta on the real model's recorded masks per
                                    trace, at tile 1 and the largest tile (layers side by side),
                                    with intervals [micro_trace.csv; analysis/trace_micro.py]
\TierFileSentence                   the file tier: paired vs full reload per k (time, MiB read,
                                    speedup with interval, bytes ratio), efficiency vs the disk's
                                    time for the same records (disk_update_floor), the disk's
                                    big-batch throughput (disk_floor's read_mbps)
                                    [micro_file.csv; analysis/tiers.py]
\TierDecodeSentence                 the real decode with pools in files: tokens/s and MB/token per
                                    file method, window paired vs full reload [decode.csv]
\TierPaySentence                    where the file tier pays least (highest k) and the disk caveat
\TierCudaSentence                   whether the CUDA tier ran (study.json's skipped stages)
\ModelDecodeSentence                the real greedy decode: tokens/s per method at the first density
                                    with intervals, the fastest sparse method's verdict, a paired
                                    step's split, the window union's update share vs the 10% goal
                                    [decode.csv; analysis/model.py]
\ModelMemorySentence                peak RSS per probed method / dense, vs the 1.15x goal
\ModelDecodePaySentence             per density, the fastest sparse method vs dense (no gain when
                                    its interval reaches 1)
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


TT = {m: tt(m) for m in ("paired", "paired_control", "paired_rowffn", "hybrid", "torch_delta",
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


def _preferred(merged: data.Merged, primary: data.Primary | None) -> str | None:
    """The host whose e2e, perf and autotune rows the text quotes when it has them: the primary
    host, else study.json's primary_host."""
    return primary.host if primary else merged.study.get("primary_host")


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
    p = merged.primary
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
    host = _host_for(rows, _preferred(merged, primary))
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
    host = _host_for(counted, _preferred(merged, primary))
    rows = counted[counted["host_id"] == host] if host else counted
    if host:
        # The configuration the figure shows for this host (all its counted events), then the
        # instruction counts of its most frequent source.
        shown = data.perf_config(perf[(perf["host_id"] == host) & (perf["source"] != "unavailable")
                                      & np.isfinite(perf["per_update"])], primary)
        rows = data.where(rows, **{c: shown[c].iloc[0] for c in data.PERF_KEY}) \
            if not shown.empty else rows
        rows = rows if not rows.empty else counted[counted["host_id"] == host]
        rows = rows[rows["source"] == data.mode_key(rows, ["source"])[0]]
        figure_k = data.perf_figure_k(shown if not shown.empty else rows)
    source = rows["source"].iloc[0] if host else None
    out["PerfHost"] = escape(host) if host else NA
    out["PerfSource"] = escape(source) if host else NA
    ks = sorted(set(STANDARD_K) | {int(k) for k in rows["k"]})
    ratios: dict[int, float] = {}
    figure_k = None if not host else figure_k
    for k in ks:
        paired = _value(rows, "per_update", method="paired", k=k)
        rebuild = _value(rows, "per_update", method="rebuild", k=k)
        ratio = paired / rebuild if rebuild and rebuild > 0 else math.nan
        out[f"PerfIrRatioK{words(k)}"] = fmt_ratio(ratio)
        if np.isfinite(ratio):
            ratios[k] = ratio
    out["PerfFigureK"] = str(figure_k) if host and figure_k is not None else NA
    event = "instructions" + (" (Ir)" if source == "cachegrind" else "")
    if not ratios:
        out["PerfIrSentence"] = ("No host counted the instructions of both the paired update and "
                                 "a rebuild, so their ratio is not available.")
    else:
        shown_k = figure_k if figure_k in ratios else min(ratios, key=lambda k: abs(k - 64))
        others = [f"{fmt_ratio(r)} at $k$ = {k}" for k, r in sorted(ratios.items())
                  if k != shown_k]
        out["PerfIrSentence"] = (
            "Counting only the timed updates, the paired update executes "
            f"{fmt_ratio(ratios[shown_k])} of the {event} of a rebuild at $k$ = {shown_k}"
            + (", the $k$ of Figure~\\ref{fig:perf}" if shown_k == figure_k else "")
            + (f" ({join_and(others)})" if others else "") + ".")
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
    out["PerfThreatSentence"] = _perf_threat(merged, host, source, rows)


def _build_text(rows: pd.DataFrame) -> str:
    """'SIMD avx512f, flags -O3 -march=native' of the rows' first build (escaped)."""
    r = rows.iloc[0]
    flags = " ".join(f for f in str(r["build_flags"]).split(",") if f)
    return f"SIMD {escape(r['simd'] or 'unknown')}, flags \\texttt{{{escape(flags or 'unknown')}}}"


def _perf_threat(merged: data.Merged, host: str | None, source: str | None,
                 rows: pd.DataFrame) -> str:
    """What the counter source means for the memory-traffic numbers (threats to validity)."""
    if not host:
        return "No counters were available on any host, so memory traffic is not measured."
    if source == "hw":
        return (f"The counters on {escape(host)} are hardware counters of the native driver; they "
                "count only its timed updates, not the torch binding's overhead.")
    text = (f"No hardware counters were available on {escape(host)}: memory traffic comes from "
            "cachegrind's simulation of a fixed cache geometry")
    timed = merged.micro[merged.micro["host_id"] == host]
    if rows.empty or timed.empty:
        return text + ", which need not match the host's caches."
    counted, native = _build_text(rows), _build_text(timed)
    if counted == native:
        return text + f" on the same build as the timed runs ({counted}), with another memcpy path."
    return (text + f" on a build ({counted}) that differs from the timed native build ({native}), "
            "so its instruction mix and memcpy are not those of the timed runs.")


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
    host = _host_for(rows, _preferred(merged, primary))
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
    winners = [f"{out.values[f'AutotuneWinnerThreads{words(t)}']} with {_threads_words(t)}"
               for t in data.thread_counts(tune)
               if out.values[f"AutotuneWinnerThreads{words(t)}"] != NA]
    out["AutotuneWinnerSentence"] = (
        f"The autotuner's winners on {escape(host)} are " + join_and(winners)
        + " (Figure~\\ref{fig:autotune})." if winners else
        "The autotuner did not run, so there are no tuned settings." if not host else
        "The autotuner recorded no winner.")
    if not host:
        out["AutotuneSentence"] = "The autotuner did not run, so no gain can be reported."
    elif not clauses:
        out["AutotuneSentence"] = ("The autotuner's winner was not checked on held-out masks, "
                                   "so its gain over the defaults is not known.")
    else:
        out["AutotuneSentence"] = ("On held-out masks, the tuned settings' gain over the "
                                   "defaults (defaults' time / winner's time) is: "
                                   + "; ".join(clauses) + ".")


# ---------------------------------------------------------------------------------------------
# The study: smoke runs, the primary host, hosts left out, warm-up
# ---------------------------------------------------------------------------------------------
SMOKE_BOX = (r"\begin{center}\fbox{\parbox{0.92\linewidth}{\centering\textbf{%s}}}"
             r"\end{center}")


def _single_process(merged: data.Merged) -> bool:
    """Every timed row comes from one worker process (the smoke config's fast timing)."""
    procs = _timed(merged)["n_processes"].astype(float).dropna()
    return not procs.empty and bool((procs <= 1).all())


def _config(merged: data.Merged, *keys):
    """study.json's config value at ``keys`` (None when unknown)."""
    value = merged.study.get("config")
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def study_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    study = merged.study
    if study["smoke"]:
        out["IsSmoke"] = "true"
        out["SmokeBanner"] = SMOKE_BOX % (
            "Smoke run: tiny shapes and fast timing; these numbers mean nothing and are not "
            "for publication.")
    elif not merged.has_study and _single_process(merged):
        out["IsSmoke"] = "true"
        out["SmokeBanner"] = SMOKE_BOX % (
            "Not for publication: every timing comes from a single worker process (fast "
            "timing, as in a smoke run), and study.json, which says how the results were "
            "made, is missing.")
    else:
        out["IsSmoke"] = "false"
        out["SmokeBanner"] = ""
    n_hosts = merged.micro["host_id"].nunique()
    named = study.get("primary_host")
    if primary is None:
        text = "There are no micro results, so there is no primary configuration"
        out["PrimaryHostSentence"] = text + (
            f" (the chosen primary host, {escape(named)}, has none)." if named else ".")
    else:
        what = (f"{escape(primary.host)} ({escape(primary.dtype)}, "
                f"{data.threads_text(primary.threads)})")
        if primary.source == "config":
            chosen = _config(merged, "paper", "primary_host")
            how = ("chosen in the workflow configuration (\\texttt{paper.primary\\_host})"
                   if chosen == primary.host else "the host that made this run")
            text = f"The primary host is {what}, {how}"
            text += (f"; the other {n_hosts - 1} host{'s' if n_hosts > 2 else ''} appear only "
                     "where named" if n_hosts > 1 else "") + "."
        elif primary.source == "only":
            text = f"The primary host is {what}, the only host with micro results."
            if primary.requested:
                text += (f" The chosen primary host, {escape(primary.requested)}, has no micro "
                         "results.")
        else:
            text = (f"The primary host was not chosen in the workflow configuration "
                    f"(\\texttt{{paper.primary\\_host}}) and {n_hosts} hosts have micro results: "
                    f"this paper uses {what}, the first alphabetically of those that measured "
                    "the most measured configuration.")
            if primary.requested:
                text = (f"The chosen primary host, {escape(primary.requested)}, has no micro "
                        f"results, and {n_hosts} hosts have: this paper uses {what}, the first "
                        "alphabetically of those that measured the most measured configuration.")
        out["PrimaryHostSentence"] = text
    skipped = study["skipped_hosts"]
    if skipped:
        items = [f"{escape(x['host'])} ({escape(x['file'])}: {escape(x['reason'])})"
                 for x in skipped]
        out["SkippedHostsSentence"] = (f"The merge left out {len(skipped)} invalid host "
                                       f"file{'s' if len(skipped) > 1 else ''}: "
                                       f"{_listed(items)}.")
    elif merged.has_study:
        out["SkippedHostsSentence"] = "The merge left out no host folder."
    else:
        out["SkippedHostsSentence"] = ("Whether the merge left out any host folder is not "
                                       "recorded (no study.json).")
    warmups = _config(merged, "timing", "warmups")
    if isinstance(warmups, int) and not isinstance(warmups, bool):
        out["TimingWarmupSentence"] = (
            f"Each worker discards {warmups} warm-up round{'' if warmups == 1 else 's'} per "
            "method before timing." if warmups > 0 else
            "No warm-up rounds were discarded (\\texttt{timing.warmups} = 0).")
    else:
        out["TimingWarmupSentence"] = ("How many warm-up rounds each worker discarded is not "
                                       "recorded with these results.")


# ---------------------------------------------------------------------------------------------
# micro: break-even, trend, fixed cost, hybrid, index forms, naive methods, mask patterns
# ---------------------------------------------------------------------------------------------
VERDICT_WORD = {"faster": "faster", "slower": "slower", "tie": "within noise",
                "missing": "no ratio"}


def _by_threads(clauses: list[tuple[int, str]], subject: str) -> str:
    """'with 1 and 2 threads SUBJECT X' when every count says the same, else 'with 1 thread
    SUBJECT X; with 2 threads it Y'."""
    if len({c for _, c in clauses}) == 1:
        return f"with {data.threads_text([t for t, _ in clauses])} {subject} {clauses[0][1]}"
    return "; ".join(f"with {_threads_words(t)} {subject if i == 0 else 'it'} {c}"
                     for i, (t, c) in enumerate(clauses))


def _break_even_clause(group: pd.DataFrame, m: int) -> str:
    inc = group[~group["excluded"] & (group["k_target"] > 0)].sort_values("k_target")
    if inc.empty:
        return "has no included point with $k > 0$, so its break-even is not measured"
    faster = (inc["verdict"] == "faster").to_numpy()
    ks, pts = inc["k_target"].astype(int).to_list(), inc["point"].to_list()
    if faster.all():
        share = f" ({fmt_fixed(100.0 * ks[-1] / m, 0)}\\% of $m$)" if m else ""
        return (f"is faster at every measured $k$ up to {ks[-1]}{share}, so the break-even "
                "lies above the measured range")
    if not faster[0]:
        return (f"is not faster even at the smallest measured $k$ = {ks[0]} "
                f"({fmt_ratio(pts[0])}$\\times$, {VERDICT_WORD[inc['verdict'].iloc[0]]}), so the "
                "break-even lies below it")
    i = int(np.argmin(faster))
    text = (f"is faster up to $k$ = {ks[i - 1]} ({fmt_ratio(pts[i - 1])}$\\times$) and not "
            f"at $k$ = {ks[i]} ({fmt_ratio(pts[i])}$\\times$, "
            f"{VERDICT_WORD[inc['verdict'].iloc[i]]}), so the break-even lies between them")
    again = [k for k, f in zip(ks[i:], faster[i:]) if f]
    return text + (f" (faster again at {_k_text(again)})" if again else "")


def micro_more_numbers(out: Macros, merged: data.Merged, p: data.Primary | None,
                       rows: pd.DataFrame) -> None:
    """Sentences on the primary rows ``rows`` (k >= 0) beyond the headline."""
    micro = merged.micro
    gather = data.comparison(rows, "paired", "speedup_vs_index_select", "index_select",
                             full=micro)
    # Break-even against a full gather.
    if gather.empty or p is None:
        out["MicroBreakEvenSentence"] = (f"No paired update was timed against "
                                         f"{TT['index_select']}, so where it stops paying "
                                         "against a full gather is not measured.")
    else:
        clauses = [(int(t), _break_even_clause(g, p.m)) for t, g in gather.groupby("threads")]
        out["MicroBreakEvenSentence"] = (f"Against a full gather ({TT['index_select']}), "
                                         + _by_threads(clauses, "the paired update") + ".")
    # How the advantage changes with k.
    trend = []
    for t, g in gather.groupby("threads"):
        inc = g[~g["excluded"] & (g["k_target"] > 0)].sort_values("k_target")
        if len(inc) < 2:
            continue
        pts, ks = inc["point"].to_numpy(float), inc["k_target"].astype(int).to_list()
        shape = ("shrinks" if (np.diff(pts) < 0).all() else "grows" if (np.diff(pts) > 0).all()
                 else "does not change monotonically")
        trend.append((int(t), shape, f"from {fmt_ratio(pts[0])}$\\times$ at $k$ = {ks[0]} to "
                                     f"{fmt_ratio(pts[-1])}$\\times$ at $k$ = {ks[-1]}"))
    subject = f"the paired update's speedup over {TT['index_select']}"
    if not trend:
        out["MicroTrendSentence"] = (f"Fewer than two included $k > 0$ were timed against "
                                     f"{TT['index_select']}, so how the advantage changes with "
                                     "$k$ is not measured.")
    elif len({shape for _, shape, _ in trend}) == 1:
        out["MicroTrendSentence"] = (
            f"As $k$ grows, {subject} {trend[0][1]} with "
            f"{data.threads_text([t for t, _, _ in trend])}: "
            + "; ".join(f"{ends} with {_threads_words(t)}" for t, _, ends in trend) + ".")
    else:
        out["MicroTrendSentence"] = ("As $k$ grows, " + "; ".join(
            f"with {_threads_words(t)} {subject if i == 0 else 'it'} {shape} ({ends})"
            for i, (t, shape, ends) in enumerate(trend)) + ".")
    # The fixed cost: k = 0.
    paired = rows[rows["method"] == "paired"]
    k_h = out.values.get("MicroHeadlineK")
    zero = []
    for t in data.thread_counts(paired):
        at0 = _value(paired, "median_s", k_target=0, threads=t)
        if not np.isfinite(at0):
            continue
        clause = f"{fmt_sig(at0 * 1e3)} ms with {_threads_words(t)}"
        if k_h not in (None, NA):
            at_h = _value(paired, "median_s", k_target=int(k_h), threads=t)
            if np.isfinite(at_h) and at_h > 0:
                clause += f" ({fmt_percent(at0 / at_h)}\\% of its time at $k$ = {k_h})"
        zero.append(clause)
    out["MicroFixedCostSentence"] = (
        "With no row to write ($k$ = 0) an update still costs " + join_and(zero)
        + ": the mask difference over all $N$ neurons and the call." if zero else
        "$k$ = 0 was not timed, so the fixed cost of an update is not measured.")
    # The hybrid policy.
    hybrid = data.comparison(rows, "hybrid", "speedup_vs_index_select", "index_select",
                             full=micro)
    if hybrid.empty:
        out["MicroHybridSentence"] = "The hybrid policy was not timed in the micro benchmark."
    else:
        label = lambda sub: _k_text(sorted(sub["k_target"].unique()))  # noqa: E731
        text = verdict_sentence(hybrid, TT["index_select"], f"the hybrid policy ({TT['hybrid']})",
                                label, "$k$")
        both = rows[rows["method"].isin(["hybrid", "paired"])].pivot_table(
            index=["k_target", "threads"], columns="method", values="rows_written_mean")
        if {"hybrid", "paired"} <= set(both.columns):
            rebuilt = both[both["hybrid"] > both["paired"] + 0.5]
            ks = sorted({int(k) for k, _ in rebuilt.index})
            text += (" It never rebuilt at the measured $k$: it wrote the paired update's rows."
                     if not ks else
                     f" It rebuilt (wrote more rows than the paired update) at {_k_text(ks)}.")
        out["MicroHybridSentence"] = text
    # The index forms.
    index_form = data.comparison(rows, "paired_indices", "speedup_vs_torch_delta_indices",
                                 "torch_delta_indices", full=micro)
    if index_form.empty:
        out["MicroIndexFormSentence"] = (
            f"The index forms ({tt('paired_indices')}, {tt('torch_delta_indices')}: the update "
            "given lists of added and removed rows) were not both timed.")
    else:
        label = lambda sub: _k_text(sorted(sub["k_target"].unique()))  # noqa: E731
        inc = index_form[~index_form["excluded"]]
        out["MicroIndexFormSentence"] = (
            "Given lists of added and removed rows instead of masks "
            + verdict_sentence(index_form, tt("torch_delta_indices"),
                               f"the paired update ({tt('paired_indices')})", label, "$k$")
            .replace("Against", "against", 1)
            + (f" Its speedups over {tt('torch_delta_indices')} span "
               f"{_range_text(inc['point'])}." if not inc.empty else ""))
    # Naive and reference methods: reported, never headline.
    def ms_range(method: str) -> str | None:
        """'a--b ms' over the method's included rows; None when it has no rows."""
        sub = rows[(rows["method"] == method) & np.isfinite(rows["median_s"])]
        if sub.empty:
            return None
        kept = sub[~data.flagged(sub)]["median_s"] * 1e3
        if kept.empty:
            return ""
        low, high = fmt_sig(kept.min()), fmt_sig(kept.max())
        return f"{low} ms" if low == high else f"{low}--{high} ms"
    timed = [(m, ms_range(m)) for m in ("bool_mask", "numpy_reference")]
    gather_ms = ms_range("index_select")
    said = [f"{tt(m)} took {r} per update" if r else
            f"every row of {tt(m)} is excluded (implausible or busy)"
            for m, r in timed if r is not None]
    missing = [tt(m) for m, r in timed if r is None]
    text = ("At the primary configuration " + join_and(said)
            + (f" ({TT['index_select']}: {gather_ms})" if gather_ms else "") + "." if said else "")
    if missing:
        text += (" " if text else "") + (f"{join_and(missing)} "
                                         f"{'was' if len(missing) == 1 else 'were'} not timed.")
    out["MicroNaiveSentence"] = text if p is not None else "There are no micro results."
    # Mask patterns.
    patterns = _ordered_patterns(micro)
    out["MicroPatterns"] = join_and([escape(x) for x in patterns]) if patterns else NA
    others = [x for x in patterns if x != "uniform"]
    if not patterns:
        out["MicroPatternSentence"] = "No mask pattern was timed."
    elif not others:
        out["MicroPatternSentence"] = ("Only uniform churn was timed in this study; clustered "
                                       "and sticky mask sequences were not.")
    else:
        parts = []
        host = p.host if p else micro["host_id"].iloc[0]
        for pattern in others:
            sub = micro[(micro["host_id"] == host) & (micro["pattern"] == pattern)]
            comp = data.comparison(sub, "paired", "speedup_vs_torch_delta", "torch_delta",
                                   full=micro)
            inc = comp[~comp["excluded"]]
            if inc.empty:
                parts.append(f"with {escape(pattern)} masks it has no included ratio")
                continue
            verdicts = inc["verdict"].value_counts()
            counts = join_and([f"{n} {VERDICT_WORD[v]}" for v, n in verdicts.items()])
            parts.append(f"with {escape(pattern)} masks it is {_range_text(inc['point'])} "
                         f"({counts}, of {len(inc)} included configurations)")
        out["MicroPatternSentence"] = (f"Beyond uniform churn, on {escape(host)} the paired "
                                       f"update's speedup over {TT['torch_delta']}: "
                                       + "; ".join(parts) + ".")


def _ordered_patterns(micro: pd.DataFrame) -> list[str]:
    present = [x for x in dict.fromkeys(micro["pattern"]) if x]
    return sorted(present, key=lambda x: (x != "uniform", x))


# ---------------------------------------------------------------------------------------------
# e2e: ranges, the single-configuration job, the hybrid, churn by batch
# ---------------------------------------------------------------------------------------------
E2E_NAMES = {"Delta": "torch_delta", "IndexSelect": "index_select", "NoPack": "no_pack",
             "Dense": "dense"}


def e2e_more_numbers(out: Macros, merged: data.Merged, primary: data.Primary | None) -> None:
    e2e = merged.e2e
    rows = data.e2e_selection(e2e)
    host = _host_for(rows, _preferred(merged, primary))
    rows = rows[rows["host_id"] == host] if host else rows
    parts = []
    for stem, base in E2E_NAMES.items():
        low, high = out.values[f"EtoEVs{stem}Min"], out.values[f"EtoEVs{stem}Max"]
        if low != NA:
            parts.append((f"{low}$\\times$" if low == high else f"{low} to {high}$\\times$")
                         + f" over {TT[base]}")
    if not host:
        out["EtoERangeSentence"] = "No decode step was timed (no sweep and no e2e rows)."
    elif not parts:
        out["EtoERangeSentence"] = (f"On {escape(host)} no included decode-step ratio of the "
                                    "paired step is available.")
    else:
        source = "sweep" if (rows["benchmark"] == "sweep").any() else "single-configuration job"
        out["EtoERangeSentence"] = (
            f"On {escape(host)} over {out.values['EtoEConfigCount']} configurations ($m$, batch, "
            f"threads) of its {source}, the paired decode step's speedup is "
            + join_and(parts) + " (Figure~\\ref{fig:e2e}, Table~\\ref{tab:e2e}).")
    # The single-configuration job (benchmark e2e).
    job = e2e[(e2e["benchmark"] == "e2e") & (e2e["host_id"] == host)] if host else e2e.iloc[0:0]
    if job.empty:
        out["EtoEJobSentence"] = ("The single-configuration decode job (\\texttt{e2e}) was not "
                                  "run" + (f" on {escape(host)}." if host else "."))
    elif not (rows["benchmark"] == "sweep").any():
        out["EtoEJobSentence"] = ("No sweep was run: the decode-step numbers above are those of "
                                  "the single-configuration job (\\texttt{e2e}).")
    else:
        r0 = job.iloc[0]
        clauses = []
        for t in data.thread_counts(job):
            sub = job[job["threads"] == t]
            bits = []
            for stem, base in E2E_NAMES.items():
                comp = data.comparison(sub, "paired", f"speedup_vs_{base}", base, full=e2e)
                if comp.empty:
                    continue
                c = comp.iloc[0]
                bits.append(f"{EXCLUDED if c['excluded'] else _ratio_ci(c['point'], c['low'], c['high'])}"
                            f" over {TT[base]}")
            if bits:
                clauses.append(f"{join_and(bits)} with {_threads_words(t)}")
        out["EtoEJobSentence"] = (
            f"The single-configuration decode job ($m$ = {int(r0['m'])}, batch "
            f"{int(r0['batch'])}, Table~\\ref{{tab:e2e}}) gives the paired step "
            + ("; ".join(clauses) if clauses else "no ratio") + ".")
    # Short: does reading the rows in place (no_pack) beat the packed paired step?
    nopack = data.comparison(rows, "paired", "speedup_vs_no_pack", "no_pack", full=e2e)
    inc = nopack[~nopack["excluded"]]
    counts = inc["verdict"].value_counts()
    n = len(inc)
    if inc.empty:
        short = "our decode steps did not time it against the packed paired step"
    elif counts.get("slower", 0) == n:
        short = (f"in our decode steps it is faster than the packed paired step in "
                 f"{_all(n, 'included configuration')}")
    elif counts.get("faster", 0) == n:
        short = (f"in our decode steps it is slower than the packed paired step in "
                 f"{_all(n, 'included configuration')}")
    else:
        short = ("in our decode steps it is " + join_and(
            [f"{word} in {counts[v]}" for v, word in (("slower", "faster"),
                                                      ("faster", "slower"),
                                                      ("tie", "within noise"))
             if counts.get(v, 0)]) + f" of {n} included configurations, against the packed "
            "paired step")
    out["EtoENoPackShort"] = short
    # The hybrid policy in decode steps.
    bits = []
    for base in ("torch_delta", "index_select", "no_pack"):
        comp = data.comparison(rows, "hybrid", f"speedup_vs_{base}", base, full=e2e)
        inc = comp[~comp["excluded"]]
        if not inc.empty:
            bits.append(f"{_range_text(inc['point'])} over {TT[base]}")
    out["EtoEHybridSentence"] = (
        f"The hybrid policy's decode step ({TT['hybrid']}) reaches " + join_and(bits) + "."
        if bits else "The hybrid policy was not timed in decode steps.")
    # Churn by batch size.
    paired = rows[(rows["method"] == "paired") & (rows["active_mean"] > 0)]
    churn = (100.0 * paired["k_mean"] / paired["active_mean"]).groupby(paired["batch"]).mean()
    churn = churn.dropna()
    if churn.empty:
        out["EtoEChurnSentence"] = "No decode-step churn was measured."
    elif len(churn) == 1:
        out["EtoEChurnSentence"] = (f"Only batch {int(churn.index[0])} was timed; its decode "
                                    f"steps replace {fmt_fixed(churn.iloc[0], 1)}\\% of the "
                                    "active rows on average.")
    else:
        each = join_and([f"{fmt_fixed(v, 1)}\\%{' of the active rows' if i == 0 else ''} "
                         f"with batch {int(b)}" for i, (b, v) in enumerate(churn.items())])
        grows = (np.diff(churn.to_numpy()) > 0).all()
        out["EtoEChurnSentence"] = (
            ("Larger batches churn more, as the union of many tokens' top-$m$ sets changes by a "
             "larger fraction every step: " if grows else
             "Larger batches do not churn more here: ")
            + f"a decode step replaces on average {each}.")


def numbers(merged: data.Merged) -> str:
    out = Macros()
    hosts_numbers(out, merged)
    timing_numbers(out, merged)
    primary = micro_numbers(out, merged)
    study_numbers(out, merged, primary)
    micro_more_numbers(out, merged, primary, _primary_k_rows(merged, primary))
    e2e_numbers(out, merged, primary)
    e2e_more_numbers(out, merged, primary)
    perf_numbers(out, merged, primary)
    autotune_numbers(out, merged, primary)
    from .model import model_numbers

    model_numbers(out, merged)
    from .trace_micro import trace_numbers

    trace_numbers(out, merged)
    from .tiers import tier_numbers

    tier_numbers(out, merged)
    return out.render()


def _primary_k_rows(merged: data.Merged, primary: data.Primary | None) -> pd.DataFrame:
    rows = data.primary_rows(merged.micro, primary)
    return rows[rows["k_target"] >= 0]
