"""``merge``: the per-host result folders -> one schema-checked table per kind.

    python -m paired_replacement.analysis merge --hosts-dir results/hosts --out-dir results/merged

Every folder ``<hosts-dir>/<host>/`` (sorted by name; names starting with '.' are ignored) must
hold ``hostinfo.json`` and may hold ``micro.csv``, ``e2e.csv``, ``sweep.csv``, ``perf.csv`` and
``autotune.csv`` (anything else there -- pyperf JSON, build/, autotune.json -- is not read). Each
CSV must validate against its schema (sweep.csv: the e2e schema), end with a newline and have as
many fields in every line as in its header (a truncated copy fails), and its ``host_id`` column
must equal the folder name, as must hostinfo.json's ``host_id``.

Output, in ``--out-dir``: ``micro.csv``, ``e2e.csv`` (e2e then sweep rows), ``perf.csv``,
``autotune.csv`` and ``hosts.csv`` (one row per hostinfo.json, schema ``hosts``). Cell text is
copied verbatim (no float re-formatting), so merging the same folders twice gives identical bytes.
A kind no host measured is written as its header alone. The merged tables are validated again.

An invalid host folder is an error (exit 1) naming the folder and the file, and nothing is written;
with ``--skip-invalid`` it is a warning and that host is left out entirely. The hosts folder is only
read. Outputs are written to temporary files first and renamed into place once all are written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from ..bench import common
from .data import HOST_CSVS, HOSTINFO, MERGED_TABLES


class HostError(ValueError):
    """A host folder that cannot be merged; names the folder and the file."""

    def __init__(self, folder: Path, file: str, reason: str) -> None:
        super().__init__(f"host folder {folder}: {file}: {reason}")
        self.folder, self.file, self.reason = folder, file, reason


# ---------------------------------------------------------------------------------------------
# One host folder
# ---------------------------------------------------------------------------------------------
def _check_shape(path: Path) -> None:
    """Truncation checks the schema validation cannot make: a final newline, no ragged lines."""
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        raise ValueError("truncated (the last line has no newline)")
    lines = list(csv.reader(io.StringIO(text, newline="")))
    if not lines:
        raise ValueError("empty file")
    width = len(lines[0])
    for number, fields in enumerate(lines[1:], start=2):
        if len(fields) != width:
            raise ValueError(f"line {number} has {len(fields)} fields, the header {width} "
                             "(truncated or corrupt)")


def read_csv(folder: Path, file: str, schema: str) -> pd.DataFrame:
    """The CSV as text cells (verbatim), after validation; raises HostError."""
    path = folder / file
    try:
        _check_shape(path)
        common.validate_csv(path, schema)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # SchemaError is a ValueError
        reason = str(exc).replace(f"{path}: ", "")
        raise HostError(folder, file, reason) from exc
    wrong = sorted(set(frame["host_id"]) - {folder.name})
    if wrong:
        raise HostError(folder, file, f"host_id {wrong} does not match the folder name "
                                      f"'{folder.name}'")
    return frame


def _text(value, default: str = "unknown") -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    return str(value)


def _number(value) -> str:
    if value is None or isinstance(value, bool):
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return ""
    if math.isnan(number):
        return ""
    return str(int(number)) if number.is_integer() else repr(number)


def _cache_size(caches, level: str, types: tuple[str, ...]) -> str:
    for cache in caches or []:
        if str(cache.get("level")) == level and cache.get("type") in types and cache.get("size"):
            return str(cache["size"])
    return "unknown"


def hosts_row(info: dict) -> dict[str, str]:
    """One hosts.csv row (all cells as text) from a hostinfo.json."""
    flags = info.get("isa_flags") or []
    return {
        "host_id": _text(info.get("host_id")),
        "cpu_model": _text(info.get("cpu_model")),
        "logical_cpus": _number(info.get("logical_cpus")),
        "physical_cores": _number(info.get("physical_cores")),
        "machine": _text(info.get("machine")),
        "memory_gib": _number(info.get("memory_gib")),
        "os": _text(info.get("os")),
        "kernel": _text(info.get("kernel")),
        "governor": _text(info.get("governor")),
        "isa_flags": " ".join(map(str, flags)) if isinstance(flags, list) and flags else "none",
        "cache_l1d": _cache_size(info.get("caches"), "1", ("Data",)),
        "cache_l2": _cache_size(info.get("caches"), "2", ("Unified", "Data")),
        "cache_l3": _cache_size(info.get("caches"), "3", ("Unified", "Data")),
        "python_version": _text(info.get("python_version")),
        "torch_version": _text(info.get("torch_version")),
        "compiler": _text(info.get("compiler")),
    }


def read_hostinfo(folder: Path) -> dict[str, str]:
    path = folder / HOSTINFO
    if not path.is_file():
        raise HostError(folder, HOSTINFO, "missing (every host folder needs its hostinfo.json)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise HostError(folder, HOSTINFO, f"unreadable as JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise HostError(folder, HOSTINFO, "not a JSON object")
    missing = [k for k in ("host_id", "cpu_model", "logical_cpus") if info.get(k) in (None, "")]
    if missing:
        raise HostError(folder, HOSTINFO, f"lacks {missing} (partial hostinfo)")
    if str(info["host_id"]) != folder.name:
        raise HostError(folder, HOSTINFO, f"host_id '{info['host_id']}' does not match the "
                                          f"folder name '{folder.name}'")
    row = hosts_row(info)
    try:
        common.validate_frame(pd.DataFrame([row]), "hosts", str(path))
    except common.SchemaError as exc:
        raise HostError(folder, HOSTINFO, str(exc).replace(f"{path}: ", "")) from exc
    return row


def read_host(folder: Path) -> dict[str, list[pd.DataFrame]]:
    """Every table of one host folder: {merged kind: [frames]}; raises HostError."""
    tables: dict[str, list[pd.DataFrame]] = {kind: [] for kind in MERGED_TABLES}
    tables["hosts"].append(pd.DataFrame([read_hostinfo(folder)]))
    for file, schema in HOST_CSVS.items():
        if (folder / file).exists():
            tables[schema].append(read_csv(folder, file, schema))
    return tables


# ---------------------------------------------------------------------------------------------
# All hosts
# ---------------------------------------------------------------------------------------------
def host_folders(hosts_dir: Path) -> list[Path]:
    return sorted((p for p in hosts_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


def merge_frames(per_host: list[dict[str, list[pd.DataFrame]]]) -> dict[str, pd.DataFrame]:
    merged = {}
    for kind, schema in MERGED_TABLES.items():
        columns = common.column_names(schema)
        frames = [f for tables in per_host for f in tables[kind]]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame = frame.reindex(columns=columns)
        if not frame.empty:
            common.validate_frame(frame, schema, f"merged {kind}.csv")
        merged[kind] = frame
    return merged


def write_outputs(merged: dict[str, pd.DataFrame], out_dir: Path) -> list[Path]:
    """All tables to temporary files, then each renamed into place (no partial set on error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []
    try:
        for kind, frame in merged.items():
            final = out_dir / f"{kind}.csv"
            tmp = out_dir / f".{kind}.csv.tmp-{os.getpid()}"
            pending.append((tmp, final))
            frame.to_csv(tmp, index=False, lineterminator="\n")
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in pending:
        tmp.replace(final)
    return [final for _, final in pending]


def merge(hosts_dir: Path, out_dir: Path, *, skip_invalid: bool = False,
          quiet: bool = False) -> int:
    if not hosts_dir.is_dir():
        print(f"error: --hosts-dir {hosts_dir} is not a folder", file=sys.stderr)
        return 1
    if out_dir.resolve().is_relative_to(hosts_dir.resolve()):
        print(f"error: --out-dir {out_dir} lies inside --hosts-dir {hosts_dir}, which merge "
              "never writes to", file=sys.stderr)
        return 1
    per_host, used, errors = [], [], []
    for folder in host_folders(hosts_dir):
        try:
            per_host.append(read_host(folder))
            used.append(folder.name)
        except HostError as exc:
            errors.append(exc)
    if errors and not skip_invalid:
        for exc in errors:
            print(f"error: {exc}", file=sys.stderr)
        print(f"error: nothing written to {out_dir} (fix or remove the folder, or pass "
              "--skip-invalid to leave it out)", file=sys.stderr)
        return 1
    for exc in errors:
        print(f"warning: skipping host '{exc.folder.name}': {exc}", file=sys.stderr)
    try:
        merged = merge_frames(per_host)
    except common.SchemaError as exc:  # e.g. two hosts disagreeing on a column's type
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return 1
    if not used:
        print(f"warning: no usable host folder in {hosts_dir}; writing header-only tables",
              file=sys.stderr)
    paths = write_outputs(merged, out_dir)
    if not quiet:
        counts = ", ".join(f"{p.name}: {len(merged[p.stem])} rows" for p in paths)
        print(f"merged {len(used)} host(s) [{' '.join(used)}] -> {out_dir} ({counts})")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="merge results/hosts/<host>/ folders into one table per kind",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hosts-dir", required=True, type=Path, help="folder of per-host folders")
    p.add_argument("--out-dir", required=True, type=Path,
                   help="where micro.csv, e2e.csv, perf.csv, autotune.csv, hosts.csv go")
    p.add_argument("--skip-invalid", action="store_true",
                   help="leave out (with a warning) host folders that do not validate")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=lambda a: merge(a.hosts_dir, a.out_dir, skip_invalid=a.skip_invalid,
                                        quiet=a.quiet))
