"""The paper's LaTeX tables (booktabs tabulars, formatted by hand), registry ``TABLES``.

* ``micro_summary`` — per host, hidden, k: median ms of one update for paired and index_select,
  paired's speedup vs index_select and its efficiency vs the memcpy floor. Rows: the micro
  selection (uniform masks, gate on, first dtype, per-host default threads) at the primary (N, m);
  a host that did not measure it shows its own most measured (N, m), and then N and m get columns.
* ``e2e_summary`` — per host, m, batch: median ms per decode step of paired, hybrid, index_select
  and dense, paired's speedup vs index_select and k_mean (mean additions per step). Rows: the e2e
  selection (a host's sweep rows, else its e2e rows).
* ``hosts`` — host, CPU, physical/logical cores, L3, memory, torch, compiler (hosts.csv).

Missing values print as "--"; a table without rows is one row saying "no data".
"""

from __future__ import annotations

from typing import Callable

import pandas as pd

from . import data
from .latex import escape, fmt_fixed, fmt_int, fmt_ratio, fmt_sig, tabular

DASH = "--"


def _ms(value) -> str:
    return fmt_sig(value * 1e3, 3, na=DASH)


def _group_starts(keys: list) -> list[int]:
    return [i for i, key in enumerate(keys) if i == 0 or key != keys[i - 1]]


def micro_summary(merged: data.Merged) -> str:
    rows, primary = data.micro_figure_rows(merged.micro)
    rows = rows[rows["k_target"] >= 0]
    # N and m get columns only when some host shows another (N, m) than the primary one.
    shapes = rows[["N", "m"]].drop_duplicates()
    keys = ["host_id", "N", "m", "hidden", "k_target"] if len(shapes) > 1 else \
        ["host_id", "hidden", "k_target"]
    header = ["Host", *(["$N$", "$m$"] if len(shapes) > 1 else []), "hidden", "$k$",
              "paired [ms]", "index\\_select [ms]", "speedup [$\\times$]", "efficiency vs floor"]
    comment = ("micro_summary: median time of one cache update"
               + (f"; uniform masks, N={primary.N}, m={primary.m}, gate on, {primary.dtype}, "
                  "default threads per host" if primary else ""))
    body, hosts = [], []
    for key, group in rows.groupby(keys, sort=True):
        by = {m: g.iloc[0] for m, g in group.groupby("method")}
        paired, base = by.get("paired"), by.get("index_select")
        if paired is None and base is None:
            continue
        body.append([escape(key[0]), *[fmt_int(v) for v in key[1:]],
                     _ms(paired["median_s"]) if paired is not None else DASH,
                     _ms(base["median_s"]) if base is not None else DASH,
                     fmt_ratio(paired["speedup_vs_index_select"], na=DASH) if paired is not None
                     else DASH,
                     fmt_ratio(paired["efficiency_vs_floor"], na=DASH) if paired is not None
                     else DASH])
        hosts.append(key[0])
    return tabular(header, body, "l" + "r" * (len(header) - 1), comment=comment,
                   groups=_group_starts(hosts))


E2E_METHODS = ["paired", "hybrid", "index_select", "dense"]


def e2e_summary(merged: data.Merged) -> str:
    rows = data.e2e_selection(merged.e2e)
    header = ["Host", "$m$", "batch", *[f"{escape(m)} [ms]" for m in E2E_METHODS],
              "speedup [$\\times$]", "$\\bar k$"]
    body, hosts = [], []
    for (host, m, batch), group in rows.groupby(["host_id", "m", "batch"], sort=True):
        by = {meth: g.iloc[0] for meth, g in group.groupby("method")}
        paired = by.get("paired")
        body.append([escape(host), fmt_int(m), fmt_int(batch),
                     *[_ms(by[meth]["median_s"]) if meth in by else DASH for meth in E2E_METHODS],
                     fmt_ratio(paired["speedup_vs_index_select"], na=DASH) if paired is not None
                     else DASH,
                     fmt_fixed(group["k_mean"].iloc[0], 1, na=DASH)])
        hosts.append(host)
    comment = ("e2e_summary: median time per decode step (update + sparse FFN); speedup: paired vs "
               "index_select; k: mean additions per step")
    return tabular(header, body, "lrrrrrrrr", comment=comment, groups=_group_starts(hosts))


def _cores(row: pd.Series) -> str:
    physical, logical = fmt_int(row["physical_cores"], na="?"), fmt_int(row["logical_cpus"], na="?")
    return f"{physical}/{logical}"


def hosts(merged: data.Merged) -> str:
    header = ["Host", "CPU", "cores (phys./log.)", "L3", "memory [GiB]", "torch", "compiler"]
    body = [[escape(r["host_id"]), escape(r["cpu_model"]), _cores(r), escape(r["cache_l3"]),
             fmt_fixed(r["memory_gib"], 0, na=DASH), escape(r["torch_version"]),
             escape(r["compiler"])]
            for _, r in merged.hosts.sort_values("host_id").iterrows()]
    return tabular(header, body, "lllrrll", comment="hosts: one row per host folder")


TABLES: dict[str, Callable[[data.Merged], str]] = {
    "micro_summary": micro_summary,
    "e2e_summary": e2e_summary,
    "hosts": hosts,
}
