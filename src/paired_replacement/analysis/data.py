"""Loading the merged tables and choosing the rows a figure, table or number is about.

The merged folder (written by ``merge``) holds ``micro.csv``, ``e2e.csv`` (e2e and sweep rows),
``perf.csv``, ``autotune.csv`` and ``hosts.csv``. :func:`load_table` reads one of them with the
schema's types; a missing or header-only file gives an empty frame with the schema's columns, so
every consumer works on partial results.

Row selection, shared by figures, tables and numbers so that they all talk about the same rows:

* **micro selection** (:func:`micro_selection`): pattern ``uniform``, gate on, the *first dtype*
  (the dtype of the first such row in merged order, i.e. the first ``--dtype`` of the
  alphabetically first host that ran it), and per host its *default threads* = the largest thread
  count that host measured (the benchmarks default to torch's intra-op count, i.e. all cores; a
  thread sweep only adds smaller counts).
* **primary configuration** (:func:`primary_config`): in the micro selection, the (N, m, hidden)
  with the most rows over all hosts (ties: the first in merged order), on the first host
  alphabetically that has it, at that host's default threads. Micro figures and the micro table
  show every host at the primary (N, m) (a host without it: at its own most measured (N, m),
  named in the panel / a column); ``cross_host`` shows the hosts that measured the primary
  (N, m, hidden) and names the others.
* **e2e selection** (:func:`e2e_selection`): per host its ``sweep`` rows, or its ``e2e`` rows when
  it has no sweep; then the most frequent (N, hidden, gate, dtype, rho, beta) of that host, at its
  default threads.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..bench import common

#: merged file name -> schema name (the merged files of ``merge``)
MERGED_TABLES = {"micro": "micro", "e2e": "e2e", "perf": "perf", "autotune": "autotune",
                 "hosts": "hosts"}
#: per-host CSV name -> (merged table, schema); sweep rows go into e2e.csv (benchmark 'sweep')
HOST_CSVS = {"micro.csv": "micro", "e2e.csv": "e2e", "sweep.csv": "e2e", "perf.csv": "perf",
             "autotune.csv": "autotune"}
HOSTINFO = "hostinfo.json"

_TRUE = {"true", "1", "yes", "on"}


def schema_types(name: str) -> dict[str, str]:
    return {c["name"]: c["type"] for c in common.load_schema(name)}


def empty_frame(name: str) -> pd.DataFrame:
    return coerce(pd.DataFrame({c: pd.Series([], dtype=object) for c in schema_types(name)}), name)


def coerce(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The schema's types: integers/numbers as float (NaN where empty), booleans as bool,
    strings as str ('' where empty)."""
    out = frame.copy()
    for col, kind in schema_types(name).items():
        if col not in out.columns:
            continue
        if kind in ("integer", "number"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
        elif kind == "boolean":
            out[col] = out[col].map(lambda v: str(v).strip().lower() in _TRUE).astype(bool)
        else:
            out[col] = out[col].map(lambda v: "" if v is None or (isinstance(v, float)
                                                               and math.isnan(v)) else str(v))
            out[col] = out[col].astype(object)
    return out


def load_table(merged_dir: str | Path, kind: str, *, warn: bool = True) -> pd.DataFrame:
    """Merged table ``kind`` with the schema's types; empty (schema columns) when the file is
    missing or holds only the header. A file that does not match its schema raises SchemaError."""
    name = MERGED_TABLES[kind]
    path = Path(merged_dir) / f"{kind}.csv"
    if not path.is_file():
        if warn:
            print(f"warning: {path} missing; treated as empty", file=sys.stderr)
        return empty_frame(name)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return empty_frame(name)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise common.SchemaError(f"{path}: unreadable as CSV ({exc})") from exc
    expected = common.column_names(name)
    if list(frame.columns) != expected:
        raise common.SchemaError(f"{path}: columns do not match schema '{name}'")
    if frame.empty:
        return empty_frame(name)
    common.validate_frame(frame, name, str(path))
    return coerce(frame, name).reset_index(drop=True)


class Merged:
    """The merged tables of one folder, each loaded on first use."""

    def __init__(self, merged_dir: str | Path, *, warn: bool = True) -> None:
        self.dir, self.warn = Path(merged_dir), warn
        self._cache: dict[str, pd.DataFrame] = {}

    def __getitem__(self, kind: str) -> pd.DataFrame:
        if kind not in self._cache:
            self._cache[kind] = load_table(self.dir, kind, warn=self.warn)
        return self._cache[kind]

    micro = property(lambda self: self["micro"])
    e2e = property(lambda self: self["e2e"])
    perf = property(lambda self: self["perf"])
    autotune = property(lambda self: self["autotune"])
    hosts = property(lambda self: self["hosts"])


# ---------------------------------------------------------------------------------------------
# Row selection
# ---------------------------------------------------------------------------------------------
def mode_key(frame: pd.DataFrame, cols: list[str]) -> tuple | None:
    """The most frequent value tuple of ``cols`` (ties: first in row order); None when empty."""
    if frame.empty:
        return None
    counts = frame.groupby(cols, sort=False, dropna=False).size()
    key = counts.idxmax()
    return key if isinstance(key, tuple) else (key,)


def where(frame: pd.DataFrame, **equal) -> pd.DataFrame:
    mask = pd.Series(True, index=frame.index)
    for col, value in equal.items():
        mask &= frame[col] == value
    return frame[mask]


def default_threads(frame: pd.DataFrame) -> pd.DataFrame:
    """Per host, only the rows at the largest thread count that host measured."""
    if frame.empty:
        return frame
    top = frame.groupby("host_id")["threads"].transform("max")
    return frame[frame["threads"] == top]


def first_dtype(micro: pd.DataFrame) -> str | None:
    rows = micro[(micro["pattern"] == "uniform") & micro["gate"]]
    return None if rows.empty else str(rows["dtype"].iloc[0])


def micro_selection(micro: pd.DataFrame) -> pd.DataFrame:
    """Uniform pattern, gate on, first dtype, per-host default threads (all N, m, hidden, k)."""
    dtype = first_dtype(micro)
    if dtype is None:
        return micro.iloc[0:0]
    rows = micro[(micro["pattern"] == "uniform") & micro["gate"] & (micro["dtype"] == dtype)]
    return default_threads(rows)


@dataclass(frozen=True)
class Primary:
    """The primary configuration of the paper's numbers (see the module docstring)."""

    host: str
    N: int
    m: int
    hidden: int
    dtype: str
    threads: int


def primary_config(micro: pd.DataFrame) -> Primary | None:
    rows = micro_selection(micro)
    if rows.empty:
        return None
    dtype = str(rows["dtype"].iloc[0])
    n, m, hidden = mode_key(rows, ["N", "m", "hidden"])
    rows = where(rows, N=n, m=m, hidden=hidden)
    host = sorted(rows["host_id"].unique())[0]
    threads = rows.loc[rows["host_id"] == host, "threads"].max()
    return Primary(str(host), int(n), int(m), int(hidden), dtype, int(threads))


def micro_figure_rows(micro: pd.DataFrame) -> tuple[pd.DataFrame, Primary | None]:
    """The micro selection at the primary (N, m), every hidden size; a host that did not measure
    the primary (N, m) contributes its own most measured (N, m) instead (so no host vanishes)."""
    primary = primary_config(micro)
    if primary is None:
        return micro.iloc[0:0], None
    rows = micro_selection(micro)
    parts = []
    for host in sorted(rows["host_id"].unique()):
        host_rows = rows[rows["host_id"] == host]
        same = where(host_rows, N=primary.N, m=primary.m)
        if same.empty:
            n, m = mode_key(host_rows, ["N", "m"])
            same = where(host_rows, N=n, m=m)
        parts.append(same)
    return pd.concat(parts), primary


def micro_primary_rows(micro: pd.DataFrame) -> tuple[pd.DataFrame, Primary | None]:
    """The micro selection at exactly the primary (N, m, hidden), every host that measured it."""
    primary = primary_config(micro)
    if primary is None:
        return micro.iloc[0:0], None
    return where(micro_selection(micro), N=primary.N, m=primary.m, hidden=primary.hidden), primary


E2E_FIXED = ["N", "hidden", "gate", "dtype", "rho", "beta"]


def e2e_selection(e2e: pd.DataFrame) -> pd.DataFrame:
    """Per host: its sweep rows (else its e2e rows), most frequent (N, hidden, gate, dtype, rho,
    beta), default threads."""
    parts = []
    for host in sorted(e2e["host_id"].unique()):
        rows = e2e[e2e["host_id"] == host]
        sweep = rows[rows["benchmark"] == "sweep"]
        rows = sweep if not sweep.empty else rows[rows["benchmark"] != "sweep"]
        key = mode_key(rows, E2E_FIXED)
        if key is None:
            continue
        rows = where(rows, **dict(zip(E2E_FIXED, key)))
        parts.append(default_threads(rows))
    return pd.concat(parts) if parts else e2e.iloc[0:0]


# ---------------------------------------------------------------------------------------------
# Confidence intervals of ratios
# ---------------------------------------------------------------------------------------------
def ratio_bounds(ratio, median, ci_low, ci_high) -> tuple[np.ndarray, np.ndarray]:
    """95% bounds of ``ratio = reference_median / median`` from this row's CI of its median.

    The reference median is recovered as ``ratio * median`` and treated as exact, so the bounds
    are ``[reference / ci_high, reference / ci_low]``: the interval of the ratio caused by the
    uncertainty of this method's median alone (the reference's own CI is not propagated; the
    interval is an approximation, good when the reference is much tighter or similar)."""
    ratio, median = np.asarray(ratio, float), np.asarray(median, float)
    lo, hi = np.asarray(ci_low, float), np.asarray(ci_high, float)
    reference = ratio * median
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(hi > 0, reference / hi, np.nan)
        upper = np.where(lo > 0, reference / lo, np.nan)
    return lower, upper


def with_ratio_bounds(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """``frame`` plus ``<column>_lo`` / ``<column>_hi`` (see :func:`ratio_bounds`)."""
    out = frame.copy()
    lo, hi = ratio_bounds(out[column], out["median_s"], out["ci95_low_s"], out["ci95_high_s"])
    out[column + "_lo"], out[column + "_hi"] = lo, hi
    return out
