"""What every benchmark shares: run metadata, statistics, schema-checked CSV output, progress,
tuning (autotune JSON) resolution and the correctness gate."""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import hostinfo

REPO_ROOT = Path(__file__).resolve().parents[3]


class CorrectnessError(RuntimeError):
    """A method's result differs from the reference: the benchmark must not time it."""


class SchemaError(ValueError):
    """A results table does not match its documented schema."""


class AutotuneError(ValueError):
    """An autotune JSON that must not be used here (another host, malformed)."""


# ---------------------------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------------------------
def load_schema(name: str) -> list[dict]:
    """Columns of schema ``name`` (micro, e2e, perf, autotune), group columns first."""
    folder = resources.files("paired_replacement.bench") / "schemas"
    common = json.loads((folder / "common.schema.json").read_text())["groups"]
    schema = json.loads((folder / f"{name}.schema.json").read_text())
    columns = [c for group in schema.get("extends", []) for c in common[group]]
    return columns + schema["columns"]


def column_names(name: str) -> list[str]:
    return [c["name"] for c in load_schema(name)]


#: boolean cells as the analysis reads them (data.coerce), in any case
_BOOLEANS = {"true", "false", "1", "0", "yes", "no", "on", "off"}


def _to_float(value) -> float | None:
    """The cell as a float (``nan``/``inf`` included, to be refused as non-finite); None when
    it is not a number at all."""
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _empty(series):
    return series.isna() | (series.astype(str).str.strip() == "")


def validate_frame(frame, name: str, source: str = "<table>") -> None:
    """Raises SchemaError naming ``source``, the column and the line unless ``frame`` has exactly
    the schema's columns, in order, with values of the documented types: numbers finite (no
    ``nan``/``inf``), integers whole, booleans true/false, and no empty cell in a column the
    schema marks ``required``. (Relations between rows: :func:`check_ratios`.)

    ``frame`` may hold text cells (a CSV read with ``dtype=str, keep_default_na=False``, as
    :func:`read_results_csv` does) or typed values (rows about to be written; NaN = empty)."""
    import pandas as pd

    columns = load_schema(name)
    expected = [c["name"] for c in columns]
    actual = list(frame.columns)
    if actual != expected:
        missing = [c for c in expected if c not in actual]
        extra = [c for c in actual if c not in expected]
        raise SchemaError(f"{source}: columns do not match schema '{name}' "
                          f"(missing {missing}, unexpected {extra}, or out of order)")
    if frame.empty:
        raise SchemaError(f"{source}: no rows")

    def fail(col: str, labels, what: str) -> None:
        label = labels[0]
        line = frame.index.get_loc(label) + 2  # 1-based, after the header
        raise SchemaError(f"{source}: line {line}, column {col}: {what} "
                          f"(got {str(frame[col][label])!r})")

    for col in columns:
        series = frame[col["name"]]
        empty = _empty(series)
        if col.get("required") and empty.any():
            fail(col["name"], series.index[empty], "empty, but the schema requires a value")
        present = series[~empty]
        if col["type"] in ("integer", "number"):
            numeric = present.map(_to_float).astype(object)
            garbage = numeric.map(lambda v: v is None).astype(bool)
            if garbage.any():
                fail(col["name"], present.index[garbage], "not a number")
            infinite = ~numeric.map(math.isfinite).astype(bool)
            if infinite.any():
                fail(col["name"], present.index[infinite], "not a finite number")
            fractional = numeric.map(lambda v: not float(v).is_integer()).astype(bool)
            if col["type"] == "integer" and fractional.any():
                fail(col["name"], present.index[fractional], "not an integer")
        elif col["type"] == "boolean":
            wrong = ~present.map(lambda v: str(v).strip().lower() in _BOOLEANS).astype(bool)
            if wrong.any():
                fail(col["name"], present.index[wrong], "not true/false")


def fill_absent_columns(frame, name: str):
    """``frame`` with the columns a file written before them lacks: a schema column with a
    ``default_when_absent`` (text) that ``frame`` does not have is added with that value, in
    schema order, so older results (a host folder copied in, a merged folder redrawn) still
    validate. Any other difference is left for :func:`validate_frame` to refuse."""
    missing = [c for c in load_schema(name)
               if "default_when_absent" in c and c["name"] not in frame.columns]
    if not missing:
        return frame
    frame = frame.copy()
    for col in missing:
        frame[col["name"]] = col["default_when_absent"]
    known = [c for c in column_names(name) if c in frame.columns]
    return frame[known + [c for c in frame.columns if c not in known]]


def _ratio_bases(name: str) -> list[str]:
    names = column_names(name)
    return [c[len("speedup_vs_"):] for c in names
            if c.startswith("speedup_vs_") and not c.endswith(("_ci95_low", "_ci95_high"))]


def check_ratios(frame, name: str, source: str = "<table>") -> None:
    """Cross-row checks of the ratio columns ``speedup_vs_<baseline>`` (micro, e2e).

    Within one measured configuration (host, benchmark, config_hash, threads): the ratio is
    given on every row when the baseline was measured there and on none when it was not, and
    its interval brackets it. (It is not compared with the ratio of the two medians: it is the
    median of round-by-round ratios, and on a loaded host with stalling rounds the two differ by
    any factor -- 1.28 against 54.8 in a smoke run at 2 threads -- so no tolerance separates an
    edit from a measurement.)"""
    import pandas as pd

    bases = _ratio_bases(name)
    if not bases or "method" not in frame.columns:
        return
    number = {c: pd.to_numeric(frame[c].where(~_empty(frame[c])).astype(str).str.strip(),
                               errors="coerce")
              for c in [f"speedup_vs_{b}{s}" for b in bases
                        for s in ("", "_ci95_low", "_ci95_high")]}
    keys = ["host_id", "benchmark", "config_hash", "threads"]
    for _, group in frame.groupby(keys, sort=False):
        idx = group.index
        methods = list(group["method"])
        for base in bases:
            col = f"speedup_vs_{base}"
            ratio = number[col][idx]
            where = f"{source}: {col} of the configuration {group['config_hash'].iloc[0]} " \
                    f"at {group['threads'].iloc[0]} thread(s)"
            if base not in methods:
                if ratio.notna().any():
                    raise SchemaError(f"{where}: given, but no row of method {base} was "
                                      "measured there")
                continue
            if ratio.isna().any():
                method = group["method"][ratio.isna()].iloc[0]
                raise SchemaError(f"{where}: empty on the {method} row although {base} was "
                                  "measured")
            low, high = number[col + "_ci95_low"][idx], number[col + "_ci95_high"][idx]
            outside = (low > ratio * (1 + 1e-9)) | (high < ratio * (1 - 1e-9))
            if outside.any():
                raise SchemaError(f"{where}: the interval does not contain the ratio on the "
                                  f"{group['method'][outside].iloc[0]} row")


def _check_shape(path: Path, text: str) -> None:
    """Truncation checks a table check cannot make: a final newline, no ragged lines."""
    import csv
    import io

    if text and not text.endswith("\n"):
        raise SchemaError(f"{path}: truncated (the last line has no newline)")
    lines = list(csv.reader(io.StringIO(text, newline="")))
    if not lines:
        raise SchemaError(f"{path}: empty file")
    width = len(lines[0])
    for number, fields in enumerate(lines[1:], start=2):
        if len(fields) != width:
            raise SchemaError(f"{path}: line {number} has {len(fields)} fields, the header "
                              f"{width} (truncated or corrupt)")


def read_results_csv(path: str | Path, name: str):
    """THE reader of a results CSV, for every check (a host's file at merge, the merged table,
    a test): the cells as text, verbatim (no NaN conversion: ``nan`` is refused, not read as
    empty), after the shape checks, :func:`validate_frame` and :func:`check_ratios`. Raises
    SchemaError naming the file, the line and the column."""
    import pandas as pd

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaError(f"{path}: unreadable ({exc})") from exc
    _check_shape(path, text)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as exc:
        raise SchemaError(f"{path}: unreadable as CSV ({exc})") from exc
    frame = fill_absent_columns(frame, name)
    validate_frame(frame, name, str(path))
    check_ratios(frame, name, str(path))
    return frame


def validate_csv(path: str | Path, name: str):
    """Checks a results CSV with :func:`read_results_csv`; returns it with pandas' types."""
    import pandas as pd

    read_results_csv(path, name)
    return pd.read_csv(path)


def write_csv(rows: list[dict], path: str | Path, name: str) -> None:
    """Writes ``rows`` in schema order after validating them (atomically: tmp + rename)."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    expected = column_names(name)
    unknown = [c for c in frame.columns if c not in expected]
    if unknown:
        raise SchemaError(f"rows for {path} carry columns not in schema '{name}': {unknown}")
    frame = frame.reindex(columns=expected)
    validate_frame(frame, name, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    frame.to_csv(tmp, index=False)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# Metadata and statistics
# ---------------------------------------------------------------------------------------------
def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_metadata() -> dict[str, str]:
    """compiler, build_flags, simd and build_source of the ops library this process loaded."""
    from .. import _extension  # imports torch: only the measuring commands need it

    library = _extension.load_extension()
    info = _extension.build_info()
    installed = library.name.startswith("_C.")
    return {"compiler": info.get("compiler", "unknown"), "build_flags": info.get("flags", "unknown"),
            "simd": info.get("simd", "unknown"),
            "build_source": "pip" if installed else str(library.parent)}


def run_metadata() -> dict[str, Any]:
    """The meta columns shared by every row of one run (threads and config_hash are per row)."""
    import torch

    return {"host_id": hostinfo.host_id(), "cpu_model": hostinfo.cpu_model(),
            "torch_version": torch.__version__, **build_metadata(), "git_commit": git_commit(),
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def config_hash(config: dict) -> str:
    """12 hex digits of the canonical JSON of ``config``."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Progress:
    """One line per finished configuration with an ETA; silent when quiet."""

    def __init__(self, total: int, label: str, quiet: bool = False) -> None:
        self.total, self.label, self.quiet = total, label, quiet
        self.done = 0
        self.start = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        if self.quiet:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        print(f"[{self.label} {self.done}/{self.total}] {what}  "
              f"(elapsed {elapsed:5.0f} s, ETA {eta:5.0f} s)", file=sys.stderr, flush=True)


def check_close(method: str, what: str, got, want, *, exact: bool = True,
                rtol: float = 1e-5, atol: float = 1e-6) -> None:
    """The correctness gate: raises CorrectnessError unless ``got`` equals ``want``."""
    import torch

    got_t, want_t = torch.as_tensor(got), torch.as_tensor(want)
    if got_t.shape != want_t.shape:
        raise CorrectnessError(f"{method}: {what} has shape {tuple(got_t.shape)}, "
                               f"reference {tuple(want_t.shape)}; refusing to time a wrong answer")
    ok = torch.equal(got_t, want_t) if exact else torch.allclose(
        got_t.double(), want_t.double(), rtol=rtol, atol=atol)
    if not ok:
        diff = (got_t.double() - want_t.double()).abs().max().item()
        raise CorrectnessError(f"{method}: {what} differs from the reference (max abs diff "
                               f"{diff:.3g}); refusing to time a wrong answer")


# ---------------------------------------------------------------------------------------------
# Tuning: defaults, CLI values or the host's autotune JSON
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tuning:
    grain: int = 64
    par_threshold: int = 64
    hybrid_tau_frac: float = 0.5
    source: str = "default"

    def columns(self) -> dict[str, Any]:
        return {"grain": self.grain, "par_threshold": self.par_threshold,
                "hybrid_tau_frac": self.hybrid_tau_frac, "tuning_source": self.source}


#: what an autotune JSON's host must share with this one to be used here: the tuning of another
#: machine (or another architecture, CPU or core count) does not carry over
FINGERPRINT_FIELDS = ("host_id", "cpu_model", "logical_cpus", "machine")


def load_autotune(path: str | Path, shape: dict | None = None, threads: int | None = None) -> Tuning:
    """The winning settings of an autotune JSON made on this host, for ``threads`` torch threads.

    Raises AutotuneError for a JSON from another host (its fingerprint differs) or a malformed
    one; warns when it was tuned on a different shape than ``shape``. A JSON without a winner for
    ``threads`` gives the defaults (source says so): the tuning of one thread count does not carry
    over to another.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        host, winners = data["host"], data["winners"]
        if threads is None:
            threads = max(int(t) for t in winners)
        winner = winners.get(str(threads))
        tuning = None if winner is None else Tuning(
            int(winner["grain"]), int(winner["par_threshold"]), float(winner["hybrid_tau_frac"]),
            f"autotune:{path}")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AutotuneError(f"{path}: not a usable autotune JSON ({exc})") from exc
    here = hostinfo.fingerprint()
    mismatched = [k for k in FINGERPRINT_FIELDS if host.get(k) != here.get(k)]
    if mismatched:
        detail = ", ".join(f"{k}: {host.get(k)!r} there, {here[k]!r} here" for k in mismatched)
        raise AutotuneError(f"{path} was tuned on another host ({detail}); tune this host with "
                            "`python -m paired_replacement.bench autotune` or pass "
                            "--skip-autotune-json")
    if shape is not None and any(data.get("shape", {}).get(k) != v for k, v in shape.items()):
        warnings.warn(f"{path} was tuned for shape {data.get('shape')}, this run uses {shape}; "
                      "using its settings anyway", stacklevel=2)
    if tuning is None:
        warnings.warn(f"{path} has no winner for {threads} thread(s) (tuned: "
                      f"{sorted(int(t) for t in winners)}); using the defaults", stacklevel=2)
        return Tuning(source=f"default (no autotune winner for {threads} threads)")
    return tuning


def resolve_tuning(args: argparse.Namespace, shape: dict | None = None,
                   threads: int | None = None) -> Tuning:
    """CLI values win; else the autotune JSON's winner for ``threads`` (unless
    --skip-autotune-json); else defaults."""
    cli = {k: getattr(args, k) for k in ("grain", "par_threshold", "hybrid_tau_frac")
           if getattr(args, k, None) is not None}
    base = Tuning()
    if args.autotune_json and not args.skip_autotune_json:
        base = load_autotune(args.autotune_json, shape, threads)
    if cli:
        merged = {**base.columns(), **cli}
        return Tuning(int(merged["grain"]), int(merged["par_threshold"]),
                      float(merged["hybrid_tau_frac"]), "cli")
    return base


# ---------------------------------------------------------------------------------------------
# Command-line options every benchmark takes
# ---------------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, *, tuning: bool = True) -> None:
    out = parser.add_argument_group("output")
    out.add_argument("--out", required=True, help="CSV to write (pyperf JSON goes next to it)")
    out.add_argument("--quiet", action="store_true", help="no progress lines")
    timing = parser.add_argument_group("timing (interleaved rounds in worker processes)")
    timing.add_argument("--processes", type=int, default=3,
                        help="worker processes, one after the other (each times every method)")
    timing.add_argument("--values", type=int, default=5,
                        help="timed rounds per worker (a round times every method once)")
    timing.add_argument("--warmups", type=int, default=1, help="discarded rounds per worker")
    timing.add_argument("--min-time", type=float, default=0.05,
                        help="minimum seconds per value (the loop count is calibrated per method)")
    timing.add_argument("--fast", action="store_true",
                        help="1 process x 3 rounds of 8 loops, no calibration: smoke runs and "
                        "tests only (intervals then ignore between-process variation)")
    timing.add_argument("--seed", type=int, default=0, help="seed of the data and mask sequences")
    timing.add_argument("--build-dir", help="use the ops built here (paired-replacement-build)")
    if tuning:
        tune = parser.add_argument_group("tuning")
        tune.add_argument("--autotune-json", help="this host's autotune result to take settings from")
        tune.add_argument("--skip-autotune-json", action="store_true",
                          help="ignore --autotune-json (use defaults or the values below)")
        tune.add_argument("--grain", type=int, help="override WEIGHT_CACHE_GRAIN")
        tune.add_argument("--par-threshold", type=int, help="override WEIGHT_CACHE_PAR_THRESHOLD")
        tune.add_argument("--hybrid-tau-frac", type=float,
                          help="override WEIGHT_CACHE_HYBRID_TAU_FRAC (the hybrid method's tau)")


def timing_options(args: argparse.Namespace) -> dict[str, Any]:
    if args.fast:
        return {"processes": 1, "values": 3, "warmups": 1, "min_time": 0.01, "loops": 8,
                "seed": args.seed}
    return {"processes": args.processes, "values": args.values, "warmups": args.warmups,
            "min_time": args.min_time, "loops": 0, "seed": args.seed}


def parse_bool_list(values: list[str]) -> list[bool]:
    table = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}
    try:
        return [table[v.lower()] for v in values]
    except KeyError as exc:
        raise argparse.ArgumentTypeError(f"expected on/off, got {exc.args[0]!r}") from None
