"""``merge``: the per-host result folders -> one schema-checked table per kind.

    python -m paired_replacement.analysis merge --hosts-dir results/hosts --out-dir results/merged

Every folder ``<hosts-dir>/<host>/`` (sorted by name; names starting with '.' are ignored) must
hold ``hostinfo.json`` and may hold ``micro.csv``, ``e2e.csv``, ``sweep.csv``, ``perf.csv``,
``autotune.csv`` and ``micro_trace.csv`` (micro on recorded masks, the micro schema; anything
else there -- pyperf JSON, build/, autotune.json -- is not read). Each
CSV is read by the one reader of results (``common.read_results_csv``): it must validate against its
schema (sweep.csv: the e2e schema: finite numbers, no empty required cell, ratios present exactly
where their baseline was measured, inside their intervals), end with a newline and have as
many fields in every line as in its header (a truncated copy fails), and its ``host_id`` column
must equal the folder name, as must hostinfo.json's ``host_id``.

Output, in ``--out-dir``: ``micro.csv``, ``e2e.csv`` (e2e then sweep rows), ``perf.csv``,
``autotune.csv``, ``micro_trace.csv``, ``hosts.csv`` (one row per hostinfo.json, schema
``hosts``) and ``study.json``
(the primary host, whether the results are a smoke run, the workflow config they were made
with, the hosts merged and the hosts skipped with why: :func:`study_record`). Cell text is
copied verbatim (no float re-formatting), so merging the same folders twice gives identical bytes.
A kind no host measured is written as its header alone. The merged tables are validated again.

An invalid host folder is an error (exit 1) naming the folder and the file, and nothing is written;
with ``--skip-invalid`` it is a warning and that host is left out entirely. The hosts folder is only
read. Outputs are written to temporary files first and renamed into place once all are written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import pandas as pd

from ..bench import common
from .data import HOST_CSVS, HOSTINFO, MERGED_TABLES, MODEL_TABLES

#: the study record next to the merged tables (see :func:`study_record`)
STUDY_JSON = "study.json"


class HostError(ValueError):
    """A host folder that cannot be merged; names the folder and the file."""

    def __init__(self, folder: Path, file: str, reason: str) -> None:
        super().__init__(f"host folder {folder}: {file}: {reason}")
        self.folder, self.file, self.reason = folder, file, reason


# ---------------------------------------------------------------------------------------------
# One host folder
# ---------------------------------------------------------------------------------------------
def read_csv(folder: Path, file: str, schema: str) -> pd.DataFrame:
    """The CSV as text cells (verbatim), after the one reader's checks
    (:func:`common.read_results_csv`: shape, schema, finite numbers, required cells, ratios);
    raises HostError."""
    path = folder / file
    try:
        frame = common.read_results_csv(path, schema)
    except common.SchemaError as exc:
        raise HostError(folder, file, str(exc).replace(f"{path}: ", "")) from exc
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
        # hostinfo.json before host labels: the short hostname it recorded
        "host_label": _text(info.get("host_label"),
                            _text(str(info.get("hostname") or "").split(".")[0])),
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
    # (the model tables are not per host: see read_model)
    tables["hosts"].append(pd.DataFrame([read_hostinfo(folder)]))
    for file, kind in HOST_CSVS.items():
        if (folder / file).exists():
            tables[kind].append(read_csv(folder, file, MERGED_TABLES[kind]))
    return tables


# ---------------------------------------------------------------------------------------------
# All hosts
# ---------------------------------------------------------------------------------------------
def host_folders(hosts_dir: Path) -> list[Path]:
    return sorted((p for p in hosts_dir.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.name)


#: what of the real-model run (results/traces/run.json) study.json keeps (the corpus parts
#: without their token ids, which stay in run.json)
MODEL_RUN_KEYS = ("model", "timings", "policies", "densities", "windows", "recording_dtype",
                  "context", "traces_written", "torch", "heldout", "calibration")


def read_model(model_dir: Path | None, traces_dir: Path | None):
    """The real-model stage's tables ({name: frame}) and run summary (or None): churn.csv and
    churn_tokens.csv of ``model_dir`` through the one reader, the run of ``traces_dir``.
    Raises common.SchemaError naming the file."""
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in MODEL_TABLES}
    run = None
    if model_dir is not None:
        for name, schema in MODEL_TABLES.items():
            path = model_dir / f"{name}.csv"
            if path.is_file():
                frames[name].append(common.read_results_csv(path, schema))
    if traces_dir is not None and (traces_dir / "run.json").is_file():
        path = traces_dir / "run.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise common.SchemaError(f"{path}: not readable as JSON ({exc})") from exc
        run = {k: raw[k] for k in MODEL_RUN_KEYS if k in raw}
        for part in ("heldout", "calibration"):
            if isinstance(run.get(part), dict):
                run[part] = {k: v for k, v in run[part].items() if k != "token_ids"}
    return frames, run


def merge_frames(per_host: list[dict[str, list[pd.DataFrame]]]) -> dict[str, pd.DataFrame]:
    merged = {}
    for kind, schema in MERGED_TABLES.items():
        columns = common.column_names(schema)
        frames = [f for tables in per_host for f in tables.get(kind, [])]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
        frame = frame.reindex(columns=columns)
        if not frame.empty:  # the same checks as each host's file (common.read_results_csv)
            common.validate_frame(frame, schema, f"merged {kind}.csv")
            common.check_ratios(frame, schema, f"merged {kind}.csv")
        merged[kind] = frame
    return merged


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    return tmp


def write_outputs(merged: dict[str, pd.DataFrame], study: dict, out_dir: Path) -> list[Path]:
    """All tables and study.json to temporary files, then each renamed into place (no partial
    set on error)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pending: list[tuple[Path, Path]] = []
    try:
        for kind, frame in merged.items():
            final = out_dir / f"{kind}.csv"
            tmp = out_dir / f".{kind}.csv.tmp-{os.getpid()}"
            pending.append((tmp, final))
            frame.to_csv(tmp, index=False, lineterminator="\n")
        final = out_dir / STUDY_JSON
        pending.append((_write_text(final, json.dumps(study, indent=2, sort_keys=True) + "\n"),
                        final))
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in pending:
        tmp.replace(final)
    return [final for _, final in pending]


def load_config(path: Path | None) -> dict | None:
    """The workflow config the results were made with (YAML or JSON), or None."""
    if path is None:
        return None
    import yaml

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"--study-config {path}: not YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"--study-config {path}: not a mapping")
    return config


def is_smoke(config: dict | None, merged: dict[str, pd.DataFrame]) -> bool:
    """Results not fit for a paper: made with pyperf's fast mode (the smoke config), or, when
    the config is not known, every timed row from a single process (no interval over
    processes)."""
    if config is not None:
        return bool(config.get("timing", {}).get("fast", False))
    counts = [pd.to_numeric(merged[kind]["n_processes"], errors="coerce")
              for kind in ("micro", "e2e") if not merged[kind].empty]
    return bool(counts) and all((c <= 1).all() for c in counts)


def study_record(config: dict | None, primary_host: str | None, used: list[str],
                 errors: list[HostError], merged: dict[str, pd.DataFrame],
                 skipped_stages: dict[str, str] | None = None,
                 model_run: dict | None = None) -> dict:
    """What the figures, tables and paper need to know about the study besides the tables."""
    return {
        "skipped_stages": dict(skipped_stages or {}),
        "model": model_run,
        "primary_host": primary_host,
        "smoke": is_smoke(config, merged),
        "config": config,
        "hosts": used,
        "skipped_hosts": [{"host": e.folder.name, "file": e.file, "reason": e.reason}
                          for e in errors],
    }


def merge(hosts_dir: Path, out_dir: Path, *, skip_invalid: bool = False,
          primary_host: str | None = None, study_config: Path | None = None,
          model_dir: Path | None = None, traces_dir: Path | None = None,
          skipped_stages: dict[str, str] | None = None, quiet: bool = False) -> int:
    if not hosts_dir.is_dir():
        print(f"error: --hosts-dir {hosts_dir} is not a folder", file=sys.stderr)
        return 1
    if out_dir.resolve().is_relative_to(hosts_dir.resolve()):
        print(f"error: --out-dir {out_dir} lies inside --hosts-dir {hosts_dir}, which merge "
              "never writes to", file=sys.stderr)
        return 1
    try:
        config = load_config(study_config)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
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
    if primary_host and primary_host not in used:
        why = ("was skipped (above)" if primary_host in {e.folder.name for e in errors}
               else f"has no folder in {hosts_dir}")
        print(f"error: the primary host '{primary_host}' {why}; the paper's headline would come "
              "from another host. Choose one of: " + (", ".join(used) or "(none)"),
              file=sys.stderr)
        return 1
    try:
        model_frames, model_run = read_model(model_dir, traces_dir)
        merged = merge_frames(per_host + [model_frames])
    except common.SchemaError as exc:  # e.g. two hosts disagreeing on a column's type
        print(f"error: {exc}; nothing written", file=sys.stderr)
        return 1
    if not used:
        print(f"warning: no usable host folder in {hosts_dir}; writing header-only tables",
              file=sys.stderr)
    for stage, reason in (skipped_stages or {}).items():
        print(f"warning: stage '{stage}' did not run: {reason}", file=sys.stderr)
    study = study_record(config, primary_host or None, used, errors, merged, skipped_stages,
                         model_run)
    paths = write_outputs(merged, study, out_dir)
    if not quiet:
        counts = ", ".join(f"{p.name}: {len(merged[p.stem])} rows" for p in paths
                           if p.suffix == ".csv")
        skipped = f"; SKIPPED {len(errors)}: {' '.join(e.folder.name for e in errors)}" \
            if errors else ""
        print(f"merged {len(used)} host(s) [{' '.join(used)}]{skipped} -> {out_dir} ({counts})")
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
    p.add_argument("--primary-host", default=None,
                   help="host whose results the paper's headline quotes (must be merged)")
    p.add_argument("--study-config", type=Path, default=None,
                   help="the workflow config the results were made with (YAML/JSON), copied "
                        "into study.json")
    p.add_argument("--model-dir", type=Path, default=None,
                   help="the real-model stage's folder (churn.csv, churn_tokens.csv, "
                        "quality.csv)")
    p.add_argument("--traces-dir", type=Path, default=None,
                   help="the traces folder (its run.json is summarised in study.json)")
    p.add_argument("--skipped-stage", action="append", default=[], metavar="STAGE=REASON",
                   help="a stage of the study that did not run, and why (recorded in study.json "
                        "and said in the paper); repeatable")
    p.add_argument("--quiet", action="store_true", help="no summary line")
    p.set_defaults(func=_run)


def _run(args) -> int:
    stages = {}
    for item in args.skipped_stage:
        stage, sep, reason = item.partition("=")
        if not sep or not stage.strip() or not reason.strip():
            print(f"error: --skipped-stage {item!r}: expected STAGE=REASON", file=sys.stderr)
            return 2
        stages[stage.strip()] = reason.strip()
    return merge(args.hosts_dir, args.out_dir, skip_invalid=args.skip_invalid,
                 primary_host=args.primary_host, study_config=args.study_config,
                 model_dir=args.model_dir, traces_dir=args.traces_dir, skipped_stages=stages,
                 quiet=args.quiet)
