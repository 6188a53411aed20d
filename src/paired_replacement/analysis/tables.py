"""The paper's LaTeX tables (booktabs tabulars, formatted by hand), registry ``TABLES``.

* ``micro_summary`` — per k and thread count, in one block per host, (N, m) and hidden size (a
  spanning heading row names them): median ms of one update for paired, torch_delta,
  index_select and rebuild_floor, and paired's speedups vs torch_delta and vs index_select with
  the 95% intervals the benchmark wrote (paired-sample ratios). Rows: the micro selection
  (uniform masks, gate on, first dtype, every thread count) at the primary (N, m); a host that
  did not measure it shows its own most measured (N, m).
* ``e2e_summary`` — per m, batch and thread count, in one block per host (and benchmark): median
  ms per decode step of paired, torch_delta, no_pack and dense, paired's speedups vs torch_delta
  and vs no_pack with their intervals, and k_mean (mean additions per step). Rows: the e2e
  selection (a host's sweep rows, else its e2e rows), plus the single-configuration e2e job's
  rows of a host whose selection is its sweep (a block of their own).
* ``hosts`` — host, CPU, physical/logical cores, L3, memory, torch, compiler (hosts.csv);
  a host merge left out (study.json's ``skipped_hosts``) gets a row saying which file and why.
* ``model_churn`` — the real-model stage: per policy, density and window W, the mask density,
  the median additions and rows written per token (pooled over layers), see :mod:`.model`.
* ``model_quality`` — the real model's held-out perplexity, dense and with every FFN masked
  online by each policy, density and window, and its ratio to the dense perplexity.

Flags: a time whose row is implausible (faster than 1.25x a memcpy of its own rows) carries
:data:`MARKS` ``implausible`` (a dagger), one measured on a busy host ``busy`` (a double dagger); a
ratio carries the marks of both its rows (see :func:`data.comparison`): such values are kept out
of the headline numbers. Missing values print as "--"; a table without rows is one row saying
"no data".
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from . import data
from .latex import escape, fmt_fixed, fmt_int, fmt_ratio, fmt_sig, tabular

DASH = "--"
MARKS = {"implausible": r"$^{\dagger}$", "busy": r"$^{\ddagger}$"}


def _marks(reasons) -> str:
    return "".join(MARKS[r] for r in data.REASONS if r in reasons)


def _ms(row) -> str:
    if row is None:
        return DASH
    return fmt_sig(row["median_s"] * 1e3, 3, na=DASH) + _marks(data.row_reasons(row))


def _end(value: float) -> str:
    """An end of a ratio's interval: like the ratio, but one decimal from 10 on (narrower)."""
    return fmt_sig(value, 3) if abs(value) >= 10 else fmt_ratio(value)


def _ratio(comp: pd.DataFrame, key) -> str:
    """'8.29 [8.05, 14.0]' (interval in script size) with the flags of both rows; '--' when
    missing."""
    if comp.empty or key not in comp.index:
        return DASH
    r = comp.loc[key]
    if isinstance(r, pd.DataFrame):
        r = r.iloc[0]
    ci = "" if not (np.isfinite(r["low"]) and np.isfinite(r["high"])) else \
        f"[{_end(r['low'])}, {_end(r['high'])}]"
    return (fmt_ratio(r["point"], na=DASH) + _marks(r["reasons"])
            + (f" {{\\scriptsize {ci}}}" if ci else ""))


def _with_headings(groups: list[tuple[str, list[list[str]]]]) -> tuple[list, list[int]]:
    """Rows with a spanning heading before each group, and the indices of the headings (each
    preceded by a midrule)."""
    rows, starts = [], []
    for heading, body in groups:
        starts.append(len(rows))
        rows += [heading, *body]
    return rows, starts


MICRO_METHODS = ["paired", "torch_delta", "index_select", "rebuild_floor"]


def micro_summary(merged: data.Merged) -> str:
    rows, primary = data.micro_figure_rows(merged.micro, merged.study)
    rows = rows[rows["k_target"] >= 0]
    lead = ["$k$", "thr."]
    header = [*lead, "paired", "torch\\_delta", "index\\_select", "rebuild floor",
              "vs torch\\_delta", "vs index\\_select"]
    spans = [(len(lead), ""), (4, "median per update [ms]"), (2, "paired speedup [$\\times$]")]
    comment = ("micro_summary: median time of one cache update; paired speedups with 95% "
               "intervals (paired-sample ratios); one block per host, shape and hidden size"
               + (f"; uniform masks, gate on, {primary.dtype}" if primary else "")
               + "\nmarks: dagger = implausible, double dagger = busy host (excluded)")
    index = ["host_id", "N", "m", "hidden", "k_target", "threads"]
    comps = {base: data.comparison(rows, "paired", f"speedup_vs_{base}", base,
                                   full=merged.micro).set_index(index)
             for base in ("torch_delta", "index_select")}
    groups = []
    for (host, n, m, hidden), block in rows.groupby(["host_id", "N", "m", "hidden"], sort=True):
        body = []
        for (k, threads), group in block.groupby(["k_target", "threads"], sort=True):
            by = {meth: g.iloc[0] for meth, g in group.groupby("method")}
            if not any(meth in by for meth in MICRO_METHODS):
                continue
            key = (host, n, m, hidden, k, threads)
            body.append([fmt_int(k), fmt_int(threads),
                         *[_ms(by.get(meth)) for meth in MICRO_METHODS],
                         _ratio(comps["torch_delta"], key), _ratio(comps["index_select"], key)])
        if body:
            groups.append((f"{escape(host)}: $N$ = {fmt_int(n)}, $m$ = {fmt_int(m)}, hidden "
                           f"{fmt_int(hidden)}", body))
    body, starts = _with_headings(groups)
    return tabular(header, body, "r" * len(header), comment=comment, groups=starts, spans=spans)


E2E_METHODS = ["paired", "torch_delta", "no_pack", "dense"]


def e2e_summary(merged: data.Merged) -> str:
    rows = data.e2e_selection(merged.e2e)
    # The single-configuration e2e job's rows too, where a host's selection is its sweep.
    job = merged.e2e[(merged.e2e["benchmark"] == "e2e")
                     & merged.e2e["host_id"].isin(rows.loc[rows["benchmark"] == "sweep",
                                                           "host_id"])]
    rows = pd.concat([rows, job]) if not job.empty else rows
    lead = ["$m$", "batch", "thr."]
    header = [*lead, *[escape(m) for m in E2E_METHODS], "vs torch\\_delta", "vs no\\_pack",
              "$\\bar k$"]
    spans = [(len(lead), ""), (len(E2E_METHODS), "median per step [ms]"),
             (2, "paired speedup [$\\times$]"), (1, "")]
    index = ["host_id", "benchmark", "m", "batch", "threads"]
    comps = {base: data.comparison(rows, "paired", f"speedup_vs_{base}", base,
                                   full=merged.e2e).set_index(index)
             for base in ("torch_delta", "no_pack")}
    groups = []
    for (host, bench), block in rows.groupby(["host_id", "benchmark"], sort=True):
        body = []
        for (m, batch, threads), group in block.groupby(["m", "batch", "threads"], sort=True):
            by = {meth: g.iloc[0] for meth, g in group.groupby("method")}
            key = (host, bench, m, batch, threads)
            body.append([fmt_int(m), fmt_int(batch), fmt_int(threads),
                         *[_ms(by.get(meth)) for meth in E2E_METHODS],
                         _ratio(comps["torch_delta"], key), _ratio(comps["no_pack"], key),
                         fmt_fixed(group["k_mean"].iloc[0], 1, na=DASH)])
        r0 = block.iloc[0]
        groups.append((f"{escape(host)} ({escape(bench)}): $N$ = {fmt_int(r0['N'])}, hidden "
                       f"{fmt_int(r0['hidden'])}", body))
    comment = ("e2e_summary: median time per decode step (update + sparse FFN); paired speedups "
               "with 95% intervals (paired-sample ratios); k: mean additions per step\n"
               "marks: dagger = implausible, double dagger = busy host (excluded)")
    body, starts = _with_headings(groups)
    return tabular(header, body, "r" * len(header), comment=comment, groups=starts, spans=spans)


def _cores(row: pd.Series) -> str:
    physical, logical = fmt_int(row["physical_cores"], na="?"), fmt_int(row["logical_cpus"], na="?")
    return f"{physical}/{logical}"


def hosts(merged: data.Merged) -> str:
    header = ["Host", "CPU", "cores", "L3", "mem. [GiB]", "torch", "compiler"]
    body = [[escape(r["host_id"]), escape(r["cpu_model"]), _cores(r), escape(r["cache_l3"]),
             fmt_fixed(r["memory_gib"], 0, na=DASH), escape(r["torch_version"]),
             escape(r["compiler"])]
            for _, r in merged.hosts.sort_values("host_id").iterrows()]
    # Hosts merge left out (study.json's skipped_hosts): named, with the file and the reason.
    body += [[escape(x["host"]), f"\\multicolumn{{{len(header) - 1}}}{{p{{10cm}}}}{{\\textit{{left "
              f"out by the merge: {escape(x['file'])}: {escape(x['reason'])}}}}}"]
             for x in merged.study["skipped_hosts"]]
    # CPU and compiler strings are long: wrapped in paragraph columns to keep the page width.
    return tabular(header, body, "lp{2.9cm}rrrlp{3.2cm}",
                   comment="hosts: one row per host folder; cores: physical/logical")


def model_churn(merged: data.Merged) -> str:
    """The real-model stage's churn per policy, density and window (see :mod:`.model`)."""
    from .model import model_churn_table

    return model_churn_table(merged)


def model_quality(merged: data.Merged) -> str:
    """The real model's held-out perplexity, dense and per policy (see :mod:`.model`)."""
    from .model import model_quality_table

    return model_quality_table(merged)


def model_decode(merged: data.Merged) -> str:
    """The real model's greedy decode per method and density (see :mod:`.model`)."""
    from .model import model_decode_table

    return model_decode_table(merged)


TABLES: dict[str, Callable[[data.Merged], str]] = {
    "micro_summary": micro_summary,
    "e2e_summary": e2e_summary,
    "hosts": hosts,
    "model_churn": model_churn,
    "model_quality": model_quality,
    "model_decode": model_decode,
}
