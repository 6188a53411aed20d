"""Loading the merged tables and choosing the rows a figure, table or number is about.

The merged folder (written by ``merge``) holds ``micro.csv``, ``e2e.csv`` (e2e and sweep rows),
``perf.csv``, ``autotune.csv`` and ``hosts.csv``. :func:`load_table` reads one of them with the
schema's types; a missing or header-only file gives an empty frame with the schema's columns, so
every consumer works on partial results.

Row selection, shared by figures, tables and numbers so that they all talk about the same rows:

* **micro selection** (:func:`micro_selection`): pattern ``uniform``, gate on, the *first dtype*
  (the dtype of the first such row in merged order, i.e. the first ``--dtype`` of the
  alphabetically first host that ran it), every thread count (the study measures each
  configuration at several thread counts, e.g. 1 and 2; they are shown side by side, never mixed).
* **primary configuration** (:func:`primary_config`): the *primary host* is ``primary_host`` of
  ``study.json`` (:func:`load_study`; the workflow config's ``paper.primary_host`` or the host
  that made the run) when it has micro rows; else the only host with micro rows; else (several
  hosts, none chosen) the old rule: in the micro selection, the (N, m, hidden) with the most rows
  over all hosts (ties: the first in merged order), on the first host alphabetically that has it.
  :attr:`Primary.source` says which rule chose it, so the text can say so. On a chosen host the
  dtype is that host's first and the (N, m, hidden) its most measured; every thread count that
  host measured there. Micro figures and
  the micro table show every host at the primary (N, m) (a host without it: at its own most
  measured (N, m), named in the panel / a column); ``cross_host`` shows the hosts that measured
  the primary (N, m, hidden), each at its largest thread count (:func:`default_threads`).
* **e2e selection** (:func:`e2e_selection`): per host its ``sweep`` rows, or its ``e2e`` rows when
  it has no sweep; then the most frequent (N, hidden, gate, dtype, rho, beta) of that host, every
  thread count.

Comparisons and exclusions (:func:`comparison`): a ratio column of a method's row (e.g. paired's
``speedup_vs_torch_delta``) with its 95% interval *as the benchmark wrote it* (paired-sample
ratios round by round, hierarchical bootstrap over processes then rounds; nothing is recomputed
here), plus why it is excluded from headline numbers: ``implausible`` when the method's row or
the baseline's row has ``plausible = false`` (faster than a memcpy of its own rows: a measurement
error until explained), ``busy`` when measured while other processes used the host
(``busy = true``). Methods of role ``naive`` (bool_mask) or ``reference`` (numpy_reference) are
never headline methods (:data:`NEVER_HEADLINE_ROLES`).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..bench import common

#: merged file name -> schema name (the merged files of ``merge``)
MERGED_TABLES = {"micro": "micro", "e2e": "e2e", "perf": "perf", "autotune": "autotune",
                 "hosts": "hosts", "churn": "churn", "churn_tokens": "churn_tokens",
                 "quality": "quality", "micro_trace": "micro", "decode": "decode",
                 "micro_file": "micro"}
#: merged tables of the real-model stage (results/model/, not per host): name -> schema
MODEL_TABLES = {"churn": "churn", "churn_tokens": "churn_tokens", "quality": "quality"}
#: per-host CSV name -> merged table (its schema: MERGED_TABLES); sweep rows go into e2e.csv
#: (benchmark 'sweep'); micro_trace.csv (micro on recorded masks) and decode.csv (the real
#: model's greedy decode) are optional, like every file
HOST_CSVS = {"micro.csv": "micro", "e2e.csv": "e2e", "sweep.csv": "e2e", "perf.csv": "perf",
             "autotune.csv": "autotune", "micro_trace.csv": "micro_trace",
             "decode.csv": "decode", "micro_file.csv": "micro_file"}
HOSTINFO = "hostinfo.json"
#: what merge knows about the study (primary host, smoke, config, hosts, skipped hosts)
STUDY_FILE = "study.json"

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
#: boolean columns whose empty cell means true (``plausible``: not flagged when not judged)
_EMPTY_TRUE = {"plausible"}


def schema_types(name: str) -> dict[str, str]:
    return {c["name"]: c["type"] for c in common.load_schema(name)}


def empty_frame(name: str) -> pd.DataFrame:
    return coerce(pd.DataFrame({c: pd.Series([], dtype=object) for c in schema_types(name)}), name)


def coerce(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """The schema's types: integers/numbers as float (NaN where empty), booleans as bool (an
    empty cell is false, except in ``plausible``, where it is true: not judged is not flagged),
    strings as str ('' where empty)."""
    out = frame.copy()
    for col, kind in schema_types(name).items():
        if col not in out.columns:
            continue
        if kind in ("integer", "number"):
            out[col] = pd.to_numeric(out[col], errors="coerce").astype(float)
        elif kind == "boolean":
            if col in _EMPTY_TRUE:
                out[col] = out[col].map(lambda v: str(v).strip().lower() not in _FALSE)
            else:
                out[col] = out[col].map(lambda v: str(v).strip().lower() in _TRUE)
            out[col] = out[col].astype(bool)
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
    frame = common.fill_absent_columns(frame, name)  # written before a column existed
    if list(frame.columns) != expected:
        raise common.SchemaError(f"{path}: columns do not match schema '{name}'")
    if frame.empty:
        return empty_frame(name)
    common.validate_frame(frame, name, str(path))
    return coerce(frame, name).reset_index(drop=True)


def default_study() -> dict:
    """What :func:`load_study` gives without ``study.json``."""
    return {"primary_host": None, "smoke": False, "config": None, "hosts": [],
            "skipped_hosts": [], "skipped_stages": {}, "model": None}


def _check(ok: bool, path: Path, what: str) -> None:
    if not ok:
        raise common.SchemaError(f"{path}: {what}")


def load_study(merged_dir: str | Path) -> dict:
    """``<merged_dir>/study.json`` (written by merge): ``primary_host`` (str or null), ``smoke``
    (bool), ``config`` (object or null), ``hosts`` (list of str), ``skipped_hosts`` (list of
    objects with ``host``, ``file``, ``reason``), ``skipped_stages`` (stage -> why it did not
    run, e.g. ``model``), ``model`` (the real-model run: model, corpus, timings; or null). A
    missing file gives :func:`default_study`; a
    missing key its default; a malformed file raises SchemaError naming it."""
    path = Path(merged_dir) / STUDY_FILE
    study = default_study()
    if not path.is_file():
        return study
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise common.SchemaError(f"{path}: not readable as JSON ({exc})") from exc
    _check(isinstance(raw, dict), path, "expected a JSON object")
    study.update({k: v for k, v in raw.items() if k in study})
    _check(study["primary_host"] is None or (isinstance(study["primary_host"], str)
                                             and study["primary_host"] != ""), path,
           "'primary_host' must be a host id or null")
    _check(isinstance(study["smoke"], bool), path, "'smoke' must be true or false")
    _check(study["config"] is None or isinstance(study["config"], dict), path,
           "'config' must be an object or null")
    _check(isinstance(study["hosts"], list) and all(isinstance(h, str) for h in study["hosts"]),
           path, "'hosts' must be a list of host ids")
    skipped = study["skipped_hosts"]
    _check(isinstance(skipped, list) and all(
        isinstance(s, dict) and all(isinstance(s.get(k), str) for k in ("host", "file", "reason"))
        for s in skipped), path,
        "'skipped_hosts' must be a list of {host, file, reason} objects (strings)")
    _check(isinstance(study["skipped_stages"], dict) and all(
        isinstance(v, str) for v in study["skipped_stages"].values()), path,
        "'skipped_stages' must map a stage to the reason it did not run")
    _check(study["model"] is None or isinstance(study["model"], dict), path,
           "'model' must be an object (the real-model run) or null")
    return study


class Merged:
    """The merged tables of one folder, each loaded on first use, plus ``study.json``
    (:attr:`study`, :attr:`has_study`) and the primary configuration (:attr:`primary`)."""

    def __init__(self, merged_dir: str | Path, *, warn: bool = True) -> None:
        self.dir, self.warn = Path(merged_dir), warn
        self._cache: dict[str, pd.DataFrame] = {}
        self._study: dict | None = None

    @property
    def study(self) -> dict:
        if self._study is None:
            self._study = load_study(self.dir)
        return self._study

    @property
    def has_study(self) -> bool:
        return (self.dir / STUDY_FILE).is_file()

    @property
    def primary(self) -> "Primary | None":
        if "primary" not in self.__dict__:
            self.__dict__["primary"] = primary_config(self.micro, self.study)
        return self.__dict__["primary"]

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


def thread_counts(frame: pd.DataFrame) -> list[int]:
    """The thread counts ``frame`` holds, ascending."""
    return sorted(int(t) for t in frame["threads"].dropna().unique())


def threads_text(counts) -> str:
    """'1 thread', '1 and 2 threads', '1, 2 and 4 threads' (plain text)."""
    counts = [int(c) for c in counts]
    if not counts:
        return "no threads"
    words = [str(c) for c in counts]
    joined = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return f"{joined} thread" + ("" if counts == [1] else "s")


def first_dtype(micro: pd.DataFrame) -> str | None:
    rows = micro[(micro["pattern"] == "uniform") & micro["gate"]]
    return None if rows.empty else str(rows["dtype"].iloc[0])


def micro_selection(micro: pd.DataFrame, dtype: str | None = None) -> pd.DataFrame:
    """Uniform pattern, gate on, ``dtype`` (default: the first dtype), every thread count (all N,
    m, hidden, k)."""
    dtype = dtype or first_dtype(micro)
    if dtype is None:
        return micro.iloc[0:0]
    return micro[(micro["pattern"] == "uniform") & micro["gate"] & (micro["dtype"] == dtype)]


@dataclass(frozen=True)
class Primary:
    """The primary configuration of the paper's numbers (see the module docstring)."""

    host: str
    N: int
    m: int
    hidden: int
    dtype: str
    threads: tuple[int, ...]  # every thread count the host measured there, ascending
    #: how the host was chosen: "config" (study.json's primary_host), "only" (the only host with
    #: micro rows) or "fallback" (several hosts and none chosen: the first alphabetically of
    #: those with the most measured configuration)
    source: str = "fallback"
    #: study.json's primary_host when it was not used (it has no micro rows), else None
    requested: str | None = None


def primary_config(micro: pd.DataFrame, study: dict | None = None) -> Primary | None:
    """The primary configuration (see the module docstring); ``study``: :func:`load_study`."""
    usable = micro[(micro["pattern"] == "uniform") & micro["gate"]]
    if usable.empty:
        return None
    hosts = list(dict.fromkeys(usable["host_id"]))
    wanted = (study or {}).get("primary_host")
    if wanted in hosts or len(hosts) == 1:
        host = wanted if wanted in hosts else hosts[0]
        source = "config" if wanted == host else "only"
        rows = usable[usable["host_id"] == host]
        dtype = str(rows["dtype"].iloc[0])
        rows = rows[rows["dtype"] == dtype]
        n, m, hidden = mode_key(rows, ["N", "m", "hidden"])
    else:
        source = "fallback"
        rows = micro_selection(micro)
        dtype = str(rows["dtype"].iloc[0])
        n, m, hidden = mode_key(rows, ["N", "m", "hidden"])
        host = sorted(where(rows, N=n, m=m, hidden=hidden)["host_id"].unique())[0]
    rows = where(rows, host_id=host, N=n, m=m, hidden=hidden)
    threads = tuple(thread_counts(rows))
    requested = wanted if wanted and wanted != host else None
    return Primary(str(host), int(n), int(m), int(hidden), dtype, threads, source, requested)


def primary_rows(micro: pd.DataFrame, primary: Primary | None) -> pd.DataFrame:
    """P's own rows: its host, (N, m, hidden), uniform, gate on, its dtype, every thread count."""
    if primary is None:
        return micro.iloc[0:0]
    return where(micro_selection(micro, primary.dtype), host_id=primary.host, N=primary.N,
                 m=primary.m, hidden=primary.hidden)


def micro_figure_rows(micro: pd.DataFrame, study: dict | None = None
                      ) -> tuple[pd.DataFrame, Primary | None]:
    """The micro selection (P's dtype) at the primary (N, m), every hidden size; a host that did
    not measure the primary (N, m) contributes its own most measured (N, m) instead (so no host
    vanishes)."""
    primary = primary_config(micro, study)
    if primary is None:
        return micro.iloc[0:0], None
    rows = micro_selection(micro, primary.dtype)
    parts = []
    for host in sorted(rows["host_id"].unique()):
        host_rows = rows[rows["host_id"] == host]
        same = where(host_rows, N=primary.N, m=primary.m)
        if same.empty:
            n, m = mode_key(host_rows, ["N", "m"])
            same = where(host_rows, N=n, m=m)
        parts.append(same)
    return pd.concat(parts), primary


def micro_primary_rows(micro: pd.DataFrame, study: dict | None = None
                       ) -> tuple[pd.DataFrame, Primary | None]:
    """The micro selection at exactly the primary (N, m, hidden), every host that measured it."""
    primary = primary_config(micro, study)
    if primary is None:
        return micro.iloc[0:0], None
    return (where(micro_selection(micro, primary.dtype), N=primary.N, m=primary.m,
                  hidden=primary.hidden), primary)


E2E_FIXED = ["N", "hidden", "gate", "dtype", "rho", "beta"]


def e2e_selection(e2e: pd.DataFrame) -> pd.DataFrame:
    """Per host: its sweep rows (else its e2e rows), most frequent (N, hidden, gate, dtype, rho,
    beta), every thread count."""
    parts = []
    for host in sorted(e2e["host_id"].unique()):
        rows = e2e[e2e["host_id"] == host]
        sweep = rows[rows["benchmark"] == "sweep"]
        rows = sweep if not sweep.empty else rows[rows["benchmark"] != "sweep"]
        key = mode_key(rows, E2E_FIXED)
        if key is None:
            continue
        parts.append(where(rows, **dict(zip(E2E_FIXED, key))))
    return pd.concat(parts) if parts else e2e.iloc[0:0]


# ---------------------------------------------------------------------------------------------
# Intervals, flags and comparisons
# ---------------------------------------------------------------------------------------------
#: roles whose methods never enter headline numbers (bool_mask: naive; numpy_reference: oracle)
NEVER_HEADLINE_ROLES = ("naive", "reference")
#: why a point is kept out of headline numbers, in the order they are reported
REASONS = ("implausible", "busy")


def ci_columns(column: str) -> tuple[str, str]:
    """The columns of the 95% interval the benchmark wrote for ``column``."""
    if column == "median_s":
        return "ci95_low_s", "ci95_high_s"
    if column == "gain_vs_default":
        return "gain_ci95_low", "gain_ci95_high"
    return f"{column}_ci95_low", f"{column}_ci95_high"


def interval(row, column: str) -> tuple[float, float, float]:
    """(point, low, high) of ``column`` in ``row`` (NaN where absent)."""
    low, high = ci_columns(column)

    def get(name):
        try:
            return float(row[name])
        except (KeyError, TypeError, ValueError):
            return math.nan
    return get(column), get(low), get(high)


def headline_methods(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the rows of naive / reference methods (never in headline numbers)."""
    if "role" not in frame.columns:
        return frame
    return frame[~frame["role"].isin(NEVER_HEADLINE_ROLES)]


def row_reasons(row) -> list[str]:
    """Why this row is kept out of headline numbers: [], ['implausible'], ['busy'] or both."""
    reasons = []
    if "plausible" in row.index and not bool(row["plausible"]):
        reasons.append("implausible")
    if "busy" in row.index and bool(row["busy"]):
        reasons.append("busy")
    return reasons


def flagged(frame: pd.DataFrame) -> pd.Series:
    """True on rows that must stay out of headline numbers (implausible or busy)."""
    out = pd.Series(False, index=frame.index)
    if "plausible" in frame.columns:
        out |= ~frame["plausible"].astype(bool)
    if "busy" in frame.columns:
        out |= frame["busy"].astype(bool)
    return out


def verdict(point: float, low: float, high: float) -> str:
    """What a ratio's 95% interval says against 1: 'faster' (above 1), 'slower' (below 1),
    'tie' (contains 1: within noise) or 'missing'. Without an interval: the point decides."""
    if not np.isfinite(point):
        return "missing"
    if np.isfinite(low) and np.isfinite(high):
        return "faster" if low > 1.0 else ("slower" if high < 1.0 else "tie")
    return "faster" if point > 1.0 else ("slower" if point < 1.0 else "tie")


#: the columns naming one configuration of a timed table (besides the method)
CONFIG_KEY = ["host_id", "benchmark", "config_hash", "threads"]


def comparison(rows: pd.DataFrame, method: str, column: str, baseline: str | None = None,
               full: pd.DataFrame | None = None) -> pd.DataFrame:
    """The rows of ``method`` in ``rows`` that carry ``column``, with ``point``, ``low``,
    ``high`` (the interval the CSV gives), ``verdict`` (see :func:`verdict`), ``reasons`` (list:
    why excluded, the method's and the ``baseline`` method's row of the same configuration both
    judged; the baseline row is looked up in ``full``, default ``rows``) and ``excluded``."""
    full = rows if full is None else full
    sub = rows[(rows["method"] == method)].copy()
    if column in sub.columns:
        sub = sub[np.isfinite(sub[column].astype(float))]
    else:
        sub = sub.iloc[0:0]
    low, high = ci_columns(column)
    sub["point"] = sub[column].astype(float)
    sub["low"] = sub[low].astype(float) if low in sub.columns else np.nan
    sub["high"] = sub[high].astype(float) if high in sub.columns else np.nan
    base_rows = {}
    if baseline is not None and not full.empty:
        base = full[full["method"] == baseline]
        base_rows = {tuple(r[c] for c in CONFIG_KEY): r for _, r in base.iterrows()}
    reasons = []
    for _, r in sub.iterrows():
        own = row_reasons(r)
        other = base_rows.get(tuple(r[c] for c in CONFIG_KEY))
        theirs = row_reasons(other) if other is not None else []
        reasons.append([reason for reason in REASONS if reason in own or reason in theirs])
    sub["reasons"] = pd.Series(reasons, index=sub.index, dtype=object)
    sub["excluded"] = sub["reasons"].map(bool).astype(bool) if len(sub) else \
        pd.Series([], dtype=bool)
    sub["verdict"] = [verdict(p, lo, hi) for p, lo, hi in zip(sub["point"], sub["low"],
                                                               sub["high"])]
    return sub


def half_width(point: float, low: float, high: float) -> float:
    """Relative half-width of an interval: the larger distance from the point to one of its
    ends, as a fraction of the point (so ±10% means both ends within 10% of the point)."""
    if not (np.isfinite(point) and np.isfinite(low) and np.isfinite(high)) or point <= 0:
        return math.nan
    return max(high - point, point - low) / point


# ---------------------------------------------------------------------------------------------
# Counters (perf.csv): the configuration and the k that both the figure and the text show
# ---------------------------------------------------------------------------------------------
PERF_KEY = ["N", "m", "hidden", "gate"]
PERF_FIGURE_K = 64  # the figure shows the counted k closest to it (ties: the smaller)


def perf_config(rows: pd.DataFrame, primary: Primary | None) -> pd.DataFrame:
    """One configuration of one host's counted rows: the primary (N, m, hidden) when counted
    there (else the most counted (N, m, hidden, gate)), every k and event."""
    if rows.empty:
        return rows
    if primary is not None:
        same = where(rows, N=primary.N, m=primary.m, hidden=primary.hidden)
        rows = same if not same.empty else rows
    return where(rows, **dict(zip(PERF_KEY, mode_key(rows, PERF_KEY))))


def perf_figure_k(rows: pd.DataFrame) -> int | None:
    """The k the counter figure shows for these rows: the one closest to 64 (ties: smaller)."""
    ks = sorted(int(k) for k in rows["k"].dropna().unique())
    return min(ks, key=lambda k: (abs(k - PERF_FIGURE_K), k)) if ks else None
