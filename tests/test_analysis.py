"""The analysis stage: merge, figures, tables and numbers on small synthetic per-host folders.

No benchmark runs: every CSV is built from plausible rows by bench.common.write_csv (so it
validates against its schema), for two hosts with several k, hidden sizes, thread counts and
methods, a sweep, perf rows (cachegrind on one host, unavailable on the other), autotune rows
(tune phase and held-out check per thread count) and a hostinfo.json. A few rows are flagged on
purpose (:data:`FLAGS`): alpha's paired update at k = 16 with 2 threads is implausible, alpha's
k = 256 configuration with 1 thread ran on a busy host, alpha's sweep at m = 256, batch 4,
2 threads too.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from paired_replacement.analysis import data, figures, tables
from paired_replacement.analysis.__main__ import main
from paired_replacement.analysis.latex import fmt_sig
from paired_replacement.bench import common

ALPHA_CPU = "Intel(R) Xeon(R) Gold 6348"
BETA_CPU = "Weird_CPU 100% R&D #1 {x}"
MICRO_METHODS = ["paired", "paired_indices", "paired_control", "hybrid", "torch_delta",
                 "torch_delta_indices", "numpy_reference", "index_select", "rebuild_floor",
                 "bool_mask", "memcpy_floor", "memcpy_floor_nt"]
MICRO_ROLES = {"paired": "headline", "paired_indices": "headline", "paired_control": "control",
               "hybrid": "policy", "torch_delta": "baseline", "torch_delta_indices": "baseline",
               "numpy_reference": "reference", "index_select": "baseline",
               "rebuild_floor": "floor", "bool_mask": "naive", "memcpy_floor": "floor",
               "memcpy_floor_nt": "floor"}
MICRO_BASELINES = ["torch_delta", "torch_delta_indices", "index_select", "rebuild_floor"]
REBUILDS = ("index_select", "rebuild_floor", "bool_mask")
KS = [0, 16, 64, 256]
CI = (0.97, 1.04)  # every synthetic interval: [0.97 x, 1.04 x] of its point (half-width 4%)
LLC = 43008 * 1024
#: rows flagged on purpose: (host, benchmark, threads, k or m, method or None = all) -> column
FLAGS = {("alpha", "micro", 2, 16, "paired"): "implausible",
         ("alpha", "micro", 1, 256, None): "busy",
         ("alpha", "sweep", 2, 256, None): "busy"}


# ---------------------------------------------------------------------------------------------
# Synthetic results
# ---------------------------------------------------------------------------------------------
def meta(host: str, threads: int, chash: str = "0123456789ab") -> dict:
    return {"host_id": host, "cpu_model": ALPHA_CPU if host == "alpha" else BETA_CPU,
            "threads": threads, "torch_version": "2.13.0+cpu", "compiler": "g++ (GCC) 12.2.0",
            "build_flags": "-O3,-march=native", "simd": "avx2", "build_source": "pip",
            "git_commit": "deadbeef", "config_hash": chash, "timestamp": "2025-01-01T00:00:00+0000"}


def chash(*key) -> str:
    return hashlib.sha256(repr(key).encode()).hexdigest()[:12]


def stats(median: float, pyperf: str = "x.pyperf.json") -> dict:
    return {"n_processes": 2, "n_values": 10, "median_s": median, "iqr_s": 0.05 * median,
            "ci95_low_s": 0.97 * median, "ci95_high_s": 1.04 * median, "mean_s": 1.01 * median,
            "stdev_s": 0.03 * median, "pyperf_json": pyperf}


def load(busy: bool = False) -> dict:
    return {"load_before": 1.2, "load_after": 1.3, "others_busy_cores": 0.9 if busy else 0.05,
            "steal_percent": 0.0, "busy": busy}


def ratio(name: str, value) -> dict:
    """A ratio column with the synthetic interval (empty when ``value`` is None)."""
    if value is None:
        return {name: None, f"{name}_ci95_low": None, f"{name}_ci95_high": None}
    return {name: value, f"{name}_ci95_low": CI[0] * value, f"{name}_ci95_high": CI[1] * value}


TUNING = {"grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "tuning_source": "default"}


def micro_times(host: str, threads: int, m: int, k: int, hidden: int) -> dict[str, float]:
    """Median seconds per method: index_select gathers m rows, paired writes k (x1.5 cost),
    torch_delta does the same work 2.5x slower plus a fixed cost."""
    base_scale = (1.0 if host == "alpha" else 1.3) * (1.0 if threads > 1 else 2.0)
    paired_scale = (1.0 if host == "alpha" else 1.1) * (1.0 if threads > 1 else 3.0)
    base = base_scale * (2e-6 + m * hidden * 4e-10)
    paired = paired_scale * (1e-6 + 1.5 * k * hidden * 4e-10)
    return {"paired": paired, "paired_indices": 0.95 * paired, "paired_control": paired,
            # hybrid rebuilds when cheaper, never beyond 1.25x the floor (0.85 paired)
            "hybrid": min(paired, max(1.02 * base, 0.7 * paired)),
            "torch_delta": 2.5 * paired + 5e-6,
            "torch_delta_indices": 2.2 * paired + 4e-6, "numpy_reference": 8 * paired + 1e-5,
            "index_select": base, "rebuild_floor": 0.9 * base, "bool_mask": 1.6 * base,
            "memcpy_floor": 0.85 * paired, "memcpy_floor_nt": 0.9 * paired}


def _flag(host: str, bench: str, threads: int, key: int, method: str | None) -> str | None:
    return FLAGS.get((host, bench, threads, key, method)) or \
        FLAGS.get((host, bench, threads, key, None))


def micro_rows(host: str, *, N: int, m: int, hidden: int, threads: int, ks=KS,
               pattern: str = "uniform", gate: bool = True, dtype: str = "float32") -> list[dict]:
    rows = []
    for k in ks:
        t = micro_times(host, threads, m, max(k, 8), hidden)
        floor = min(t["memcpy_floor"], t["memcpy_floor_nt"])
        h = chash(host, N, m, hidden, threads, k, pattern, gate, dtype)
        cycle = 2 * max(k, 0) * hidden * 12 * 9
        for method in MICRO_METHODS:
            written = m if method in REBUILDS else k
            own_floor = t["rebuild_floor"] if method in REBUILDS else floor
            efficiency = own_floor / t[method] if written else None
            flag = _flag(host, "micro", threads, k, method)
            rows.append({
                **meta(host, threads, h), **TUNING, **stats(t[method], "micro.pyperf.json"),
                **load(flag == "busy"),
                "benchmark": "micro", "method": method, "role": MICRO_ROLES[method], "N": N,
                "m": m, "k_target": k if pattern == "uniform" else -1, "k_mean": float(k),
                "hidden": hidden, "gate": gate, "dtype": dtype, "pattern": pattern, "steps": 8,
                "rows_written_mean": float(written), "bytes_moved_mean": written * hidden * 12.0,
                "gbps": written * hidden * 12.0 / t[method] / 1e9,
                **{k2: v for base in MICRO_BASELINES
                   for k2, v in ratio(f"speedup_vs_{base}", t[base] / t[method]).items()},
                "floor_method": "rebuild_floor" if method in REBUILDS else "memcpy_floor",
                **ratio("efficiency_vs_floor", efficiency),
                "plausible": flag != "implausible",
                **ratio("control_ratio", t["paired_control"] / t["paired"]
                        if method == "paired" else None),
                "cycle_bytes": cycle, "llc_bytes": LLC,
                "cache_state": "none" if k == 0 else ("cold" if cycle > LLC else "warm")})
    return rows


E2E_METHODS = ["paired", "paired_rowffn", "hybrid", "torch_delta", "index_select", "no_pack",
               "ffn_floor", "dense"]
E2E_ROLES = {"paired": "headline", "paired_rowffn": "headline", "hybrid": "policy",
             "torch_delta": "baseline", "index_select": "baseline", "no_pack": "baseline",
             "ffn_floor": "floor", "dense": "baseline"}
PACKED = ("paired", "hybrid", "torch_delta", "index_select")


def e2e_times(m: int, batch: int) -> dict[str, float]:
    """Per-step seconds: no_pack reads the rows in place (faster than any packing here)."""
    active = min(1024.0, 0.8 * m * batch + m)
    k_mean = 0.1 * active
    base = 1e-5 + active * 512 * 3e-9
    paired = 0.25 * base + 3e-5 + k_mean * 1e-8
    return {"index_select": base, "paired": paired, "paired_rowffn": 0.9 * paired,
            "hybrid": 0.45 * base, "torch_delta": 1.5 * paired, "no_pack": 0.5 * paired,
            "ffn_floor": 0.2 * base, "dense": 1e-5 + 1024 * 512 * 3e-9}


def e2e_rows(host: str, benchmark: str, ms, batches, *, threads_list=(1, 2)) -> list[dict]:
    rows = []
    for threads in threads_list:
        for m in ms:
            for batch in batches:
                active = min(1024.0, 0.8 * m * batch + m)
                t = e2e_times(m, batch)
                h = chash(host, benchmark, m, batch, threads)
                for method in E2E_METHODS:
                    flag = _flag(host, benchmark, threads, m, method) if batch == 4 else None
                    rows.append({
                        **meta(host, threads, h), **TUNING, **load(flag == "busy"),
                        **stats(t[method], f"{benchmark}.pyperf.json"),
                        "benchmark": benchmark, "method": method, "role": E2E_ROLES[method],
                        "N": 1024, "m": m, "batch": batch, "hidden": 512, "gate": True,
                        "dtype": "float32", "rho": 0.9, "beta": 0.0, "steps": 16,
                        "active_mean": active, "k_mean": 0.1 * active,
                        **{k2: v for base in ("torch_delta", "index_select", "no_pack", "dense")
                           for k2, v in ratio(f"speedup_vs_{base}",
                                              t[base] / t[method]).items()},
                        "floor_method": "ffn_floor" if method in PACKED else "none",
                        **ratio("efficiency_vs_floor", t["ffn_floor"] / t[method]
                                if method in PACKED else None),
                        "plausible": flag != "implausible"})
    return rows


CG_EVENTS = {"Ir": 4.0, "Dr": 1.0, "Dw": 1.0, "D1mr": 0.05, "D1mw": 0.06, "DLmr": 0.01,
             "DLmw": 0.0}


def perf_ir(method: str, k: int) -> float:
    """Per-update Ir of the synthetic cachegrind rows (paired writes k rows, rebuild m = 512)."""
    rows = k if method == "paired" else 512
    return rows * 256 * CG_EVENTS["Ir"] + 300.0


def perf_rows(host: str, source: str) -> list[dict]:
    rows = []
    for k in (16, 64):
        for method in ("paired", "rebuild"):
            events = CG_EVENTS if source == "cachegrind" else {"cycles": 0, "instructions": 0}
            written = k if method == "paired" else 512
            for event, per_row in events.items():
                if source == "cachegrind":
                    per = perf_ir(method, k) if event == "Ir" else written * 256 * per_row
                    value = per * 20
                else:
                    per = value = None
                rows.append({**meta(host, 1), "benchmark": "perf", "method": method, "N": 2048,
                             "m": 512, "k": k, "hidden": 256, "gate": True, "dtype": "float32",
                             "updates": 20, "source": source, "event": event, "value": value,
                             "per_update": per,
                             "sim_ll_bytes": 1 << 20 if source == "cachegrind" else 0,
                             "bytes_per_update": written * 256 * 4 * 3 * 2})
    return rows


AUTOTUNE_WINNER = {("alpha", 1): (64, 64, 0.5), ("alpha", 2): (64, 16, 0.5),
                   ("beta", 1): (64, 64, 0.25), ("beta", 2): (16, 64, 0.25)}
#: held-out gain (point, low, high) per (host, threads): within noise, real
AUTOTUNE_GAIN = {("alpha", 1): (1.01, 0.98, 1.04), ("alpha", 2): (1.2, 1.1, 1.3),
                 ("beta", 1): (0.9, 0.85, 0.95), ("beta", 2): (1.0, 0.99, 1.01)}


def autotune_rows(host: str) -> list[dict]:
    rows = []
    base = {"benchmark": "autotune", "N": 1024, "m": 256, "hidden": 512, "k_list": "16 64 256"}
    for threads in (1, 2):
        win = AUTOTUNE_WINNER[(host, threads)]
        grains, pars = ((64,), (64,)) if threads == 1 else ((16, 64, 256), (16, 64))
        for grain in grains:
            for par in pars:
                for tau in (0.25, 0.5, 1.0):
                    cand = (grain, par, tau)
                    median = 1e-4 * (1 + 0.1 * abs(grain - win[0]) / 16
                                     + 0.05 * abs(par - win[1]) / 16 + abs(tau - win[2]))
                    rows.append({**meta(host, threads, chash(host, threads, *cand)),
                                 **stats(median, "autotune.pyperf.json"), **load(), **base,
                                 "phase": "tune", "grain": grain, "par_threshold": par,
                                 "hybrid_tau_frac": tau, "is_winner": cand == win})
        gain, low, high = AUTOTUNE_GAIN[(host, threads)]
        for phase, settings in (("held_out_winner", win), ("held_out_default", (64, 64, 0.5))):
            median = 1e-4 if phase == "held_out_winner" else 1e-4 * gain
            rows.append({**meta(host, threads, chash(host, threads, phase)),
                         **stats(median, "autotune.pyperf.json"), **load(), **base,
                         "phase": phase, "grain": settings[0], "par_threshold": settings[1],
                         "hybrid_tau_frac": settings[2], "is_winner": False,
                         "gain_vs_default": gain if phase == "held_out_winner" else None,
                         "gain_ci95_low": low if phase == "held_out_winner" else None,
                         "gain_ci95_high": high if phase == "held_out_winner" else None})
    return rows


def hostinfo(host: str) -> dict:
    caches = [{"level": "1", "type": "Data", "size": "48K", "shared_cpu_list": "0"},
              {"level": "1", "type": "Instruction", "size": "32K", "shared_cpu_list": "0"},
              {"level": "2", "type": "Unified", "size": "1280K", "shared_cpu_list": "0"}]
    if host == "alpha":
        caches.append({"level": "3", "type": "Unified", "size": "43008K",
                       "shared_cpu_list": "0-3"})
    return {"host_id": host, "cpu_model": ALPHA_CPU if host == "alpha" else BETA_CPU,
            "logical_cpus": 8, "machine": "x86_64", "hostname": host + ".example",
            "physical_cores": 4 if host == "alpha" else None, "isa_flags": ["avx", "avx2", "fma"],
            "caches": caches, "memory_gib": 31.25, "os": "Linux-6.1-x86_64", "kernel": "6.1.0",
            "governor": "performance", "python_version": "3.11.2", "torch_version": "2.13.0+cpu",
            "torch_threads": 4, "compiler": "g++ (GCC) 12.2.0"}


def build_hosts(root: Path) -> Path:
    """results/hosts/{alpha,beta}/ with every table kind (beta: e2e but no sweep), plus the files
    the merge must ignore (pyperf JSON, build/, autotune.json)."""
    hosts = root / "hosts"
    a, b = hosts / "alpha", hosts / "beta"
    micro_a = (micro_rows("alpha", N=1024, m=256, hidden=512, threads=2)
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=1)
               + micro_rows("alpha", N=1024, m=256, hidden=1024, threads=2)
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=2, ks=[-1],
                            pattern="sticky")
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=2, ks=[64], gate=False)
               + micro_rows("alpha", N=2048, m=512, hidden=512, threads=2, ks=[64]))
    common.write_csv(micro_a, a / "micro.csv", "micro")
    common.write_csv(micro_rows("beta", N=1024, m=256, hidden=512, threads=8), b / "micro.csv",
                     "micro")
    common.write_csv(e2e_rows("alpha", "sweep", [128, 256], [1, 4]), a / "sweep.csv", "e2e")
    common.write_csv(e2e_rows("alpha", "e2e", [256], [1]), a / "e2e.csv", "e2e")
    common.write_csv(e2e_rows("beta", "e2e", [256], [1], threads_list=(8,)), b / "e2e.csv",
                     "e2e")
    common.write_csv(perf_rows("alpha", "cachegrind"), a / "perf.csv", "perf")
    common.write_csv(perf_rows("beta", "unavailable"), b / "perf.csv", "perf")
    for host, folder in (("alpha", a), ("beta", b)):
        common.write_csv(autotune_rows(host), folder / "autotune.csv", "autotune")
        (folder / "hostinfo.json").write_text(json.dumps(hostinfo(host), indent=2))
        (folder / "micro.pyperf.json").write_text("{}")
        (folder / "autotune.json").write_text("{}")
        (folder / "build").mkdir()
        (folder / "build" / "manifest.json").write_text("{}")
    return hosts


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """The synthetic hosts, their merge, and the merge of an empty hosts folder."""
    root = tmp_path_factory.mktemp("results")
    hosts = build_hosts(root)
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(root / "merged"),
                 "--quiet"]) == 0
    (root / "no_hosts").mkdir()
    assert main(["merge", "--hosts-dir", str(root / "no_hosts"), "--out-dir",
                 str(root / "empty"), "--quiet"]) == 0
    return {"root": root, "hosts": hosts, "merged": root / "merged", "empty": root / "empty"}


MERGED = ["micro", "e2e", "perf", "autotune", "hosts"]


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------
def test_merge_writes_validated_tables_from_both_hosts(results, tmp_path):
    merged = results["merged"]
    assert sorted(p.name for p in merged.iterdir()) == sorted(
        [f"{k}.csv" for k in MERGED] + ["churn.csv", "churn_tokens.csv", "quality.csv",
                                        "micro_trace.csv", "decode.csv", "micro_file.csv",
                                        "study.json"])
    for kind in MERGED:
        frame = common.validate_csv(merged / f"{kind}.csv", kind)
        assert list(frame.columns) == common.column_names(kind)
        assert set(frame["host_id"]) == {"alpha", "beta"}, kind
    e2e = pd.read_csv(merged / "e2e.csv")
    assert set(e2e["benchmark"]) == {"e2e", "sweep"}
    hosts = pd.read_csv(merged / "hosts.csv", keep_default_na=False).set_index("host_id")
    assert hosts.loc["alpha", "cache_l3"] == "43008K" and hosts.loc["beta", "cache_l3"] == "unknown"
    assert hosts.loc["alpha", "isa_flags"] == "avx avx2 fma"
    assert hosts.loc["beta", "physical_cores"] == ""  # unknown number: empty
    # Same input, same bytes; the hosts folder is only read.
    before = tree_hashes(results["hosts"])
    assert main(["merge", "--hosts-dir", str(results["hosts"]), "--out-dir", str(tmp_path),
                 "--quiet"]) == 0
    assert tree_hashes(tmp_path) == tree_hashes(merged)
    assert tree_hashes(results["hosts"]) == before


def test_merge_refuses_to_write_into_the_hosts_folder(results, capsys):
    before = tree_hashes(results["hosts"])
    assert main(["merge", "--hosts-dir", str(results["hosts"]), "--out-dir",
                 str(results["hosts"] / "merged")]) == 1
    assert "inside --hosts-dir" in capsys.readouterr().err
    assert tree_hashes(results["hosts"]) == before


def test_merge_of_a_host_without_csvs_gives_its_hosts_row_only(results, tmp_path):
    hosts = tmp_path / "hosts"
    (hosts / "gamma").mkdir(parents=True)
    (hosts / "gamma" / "hostinfo.json").write_text(json.dumps(hostinfo("gamma")))
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(tmp_path / "out"),
                 "--quiet"]) == 0
    assert list(pd.read_csv(tmp_path / "out" / "hosts.csv")["host_id"]) == ["gamma"]
    for kind in ("micro", "e2e", "perf", "autotune"):
        text = (tmp_path / "out" / f"{kind}.csv").read_text()
        assert text == ",".join(common.column_names(kind)) + "\n"  # header only


def _truncate(folder: Path) -> str:
    path = folder / "micro.csv"
    text = path.read_text()
    path.write_text(text[: len(text) - 25])  # cut inside the last row
    return "micro.csv"


def _wrong_column(folder: Path) -> str:
    path = folder / "perf.csv"
    lines = path.read_text().splitlines(keepends=True)
    lines[0] = lines[0].replace(",event,", ",evnt,")
    path.write_text("".join(lines))
    return "perf.csv"


def _host_mismatch(folder: Path) -> str:
    path = folder / "e2e.csv"
    frame = pd.read_csv(path)
    frame["host_id"] = "gamma"
    frame.to_csv(path, index=False)
    return "e2e.csv"


def _no_hostinfo(folder: Path) -> str:
    (folder / "hostinfo.json").unlink()
    return "hostinfo.json"


@pytest.mark.parametrize("corrupt", [_truncate, _wrong_column, _host_mismatch, _no_hostinfo],
                         ids=["truncated", "wrong-column", "host-id-mismatch", "no-hostinfo"])
def test_invalid_host_fails_naming_it_or_is_skipped(results, tmp_path, capsys, corrupt):
    hosts = tmp_path / "hosts"
    shutil.copytree(results["hosts"], hosts)
    out = tmp_path / "merged"
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(out), "--quiet"]) == 0
    good = tree_hashes(out)
    file = corrupt(hosts / "beta")
    capsys.readouterr()
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(hosts / "beta") in err and file in err, err
    assert tree_hashes(out) == good  # nothing written
    assert not list(out.glob(".*tmp*"))

    before = tree_hashes(hosts)
    assert main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(out), "--skip-invalid",
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "beta" in err and file in err, err
    for kind in MERGED:
        frame = common.validate_csv(out / f"{kind}.csv", kind)
        assert set(frame["host_id"]) == {"alpha"}, kind
    assert tree_hashes(hosts) == before


def test_cli_runs_as_a_module_with_exit_codes(results, tmp_path):
    hosts = tmp_path / "hosts"
    shutil.copytree(results["hosts"], hosts)
    (hosts / "beta" / "autotune.csv").write_text("not,a\ncsv")
    cmd = [sys.executable, "-m", "paired_replacement.analysis", "merge", "--hosts-dir", str(hosts),
           "--out-dir", str(tmp_path / "out")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "autotune.csv" in proc.stderr, proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_names_match_the_registries():
    from paired_replacement.analysis import __main__ as cli

    assert cli.FIGURE_NAMES == list(figures.FIGURES) and cli.TABLE_NAMES == list(tables.TABLES)


@pytest.mark.parametrize("argv", [["--help"], ["merge", "--help"], ["figure", "--help"],
                                  ["table", "--help"], ["numbers", "--help"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# helpers: edited copies of the merged folder
# ---------------------------------------------------------------------------------------------
def edited(results, tmp_path: Path, kind: str, edit) -> Path:
    """A copy of the merged folder whose ``kind``.csv went through ``edit(frame)`` (all cells as
    text; returns the new frame)."""
    merged = tmp_path / "merged"
    if not merged.exists():
        shutil.copytree(results["merged"], merged)
    frame = pd.read_csv(merged / f"{kind}.csv", dtype=str, keep_default_na=False)
    edit(frame).to_csv(merged / f"{kind}.csv", index=False)
    return merged


def at(frame: pd.DataFrame, **equal) -> pd.Series:
    mask = pd.Series(True, index=frame.index)
    for col, value in equal.items():
        mask &= frame[col] == str(value)
    assert mask.any(), equal
    return mask


def set_ratio(frame: pd.DataFrame, mask, column: str, point: float, low: float,
              high: float) -> None:
    frame.loc[mask, column] = str(point)
    frame.loc[mask, f"{column}_ci95_low"] = str(low)
    frame.loc[mask, f"{column}_ci95_high"] = str(high)


PRIMARY = {"host_id": "alpha", "N": 1024, "m": 256, "hidden": 512, "pattern": "uniform",
           "gate": "True"}


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def _check_rendered(pdf: Path) -> None:
    png = pdf.with_suffix(".png")
    assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF")
    assert png.stat().st_size > 1000 and png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.parametrize("which", ["merged", "empty"])
@pytest.mark.parametrize("name", sorted(figures.FIGURES))
def test_figure_renders_pdf_and_png(results, tmp_path, name, which):
    pdf = tmp_path / "fig" / f"{name}.pdf"
    assert main(["figure", name, "--merged-dir", str(results[which]), "--out", str(pdf),
                 "--quiet"]) == 0
    _check_rendered(pdf)


def _texts(fig) -> str:
    """Every text of a figure (panel texts, titles, legends), line breaks as spaces."""
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + \
        [ax.get_title() for ax in fig.axes] + [t.get_text() for t in fig.texts]
    texts += [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    texts += [t.get_text() for ax in fig.axes if ax.get_legend()
              for t in ax.get_legend().get_texts()]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    return " ".join(texts).replace("\n", " ")


def test_figures_say_what_is_missing(results, tmp_path):
    fig = figures.FIGURES["micro_speedup"](data.Merged(results["empty"]))
    assert "no data: micro.csv" in _texts(fig)
    # Counters only from a host whose source was unavailable: a labelled "no counters" figure.
    only_beta = tmp_path / "merged"
    shutil.copytree(results["merged"], only_beta)
    perf = pd.read_csv(only_beta / "perf.csv", dtype=str, keep_default_na=False)
    perf[perf["host_id"] == "beta"].to_csv(only_beta / "perf.csv", index=False)
    fig = figures.perf_counters(data.Merged(only_beta))
    assert "no counters available" in _texts(fig)
    fig = figures.perf_counters(data.Merged(results["merged"]))
    text = _texts(fig)
    assert "cachegrind" in text and "no counters available on beta" in text
    assert "simulated LL 1 MiB" in text and "memcpy of all m rows" in text
    # Missing files (not even headers) behave as empty tables.
    figures.render("cross_host", tmp_path / "nowhere", tmp_path / "x.pdf")
    _check_rendered(tmp_path / "x.pdf")


def _schema_methods(name: str) -> list[str]:
    column = next(c for c in common.load_schema(name) if c["name"] == "method")
    return re.findall(r"[a-z_]+", column["description"].split("(")[0])


def test_every_method_has_a_color_and_a_marker():
    methods = set(_schema_methods("micro")) | set(_schema_methods("e2e")) | {"rebuild"}
    assert {"paired_control", "torch_delta", "no_pack", "ffn_floor"} <= methods
    for method in methods:
        assert method in figures._PALETTE and method in figures._MARKERS, method
    colors = [tuple(figures._PALETTE[m]) for m in methods - {"rebuild"}]
    assert len(set(colors)) == len(colors)  # no two methods share a color (rebuild = the floor)


def _hollow_points(fig) -> int:
    """Scatter points drawn with a white face (the excluded ones)."""
    count = 0
    for ax in fig.axes:
        for coll in ax.collections:
            faces = coll.get_facecolors()
            if len(coll.get_offsets()) and len(faces) and np.allclose(faces[0][:3], 1.0):
                count += len(coll.get_offsets())
    return count


def test_flagged_points_are_drawn_hollow_and_threads_apart(results):
    merged = data.Merged(results["merged"])
    fig = figures.micro_speedup(merged)
    # alpha k=16 with 2 threads (implausible) and k=256 with 1 thread (busy): paired and hybrid
    # (the busy configuration flags every method) in both panels of both hidden sizes' rows.
    assert _hollow_points(fig) >= 4
    text = _texts(fig)
    assert "1 thread" in text and "2 threads" in text and "excluded" in text
    styles = {line.get_linestyle() for ax in fig.axes for line in ax.get_lines()
              if len(line.get_xdata()) > 1}
    assert {"-", "--"} <= styles
    assert "vs torch_delta" in text and "vs index_select" in text
    assert "paired-sample ratio" in text  # what the error bars are
    assert _hollow_points(figures.e2e_speedup(merged)) >= 1  # alpha's busy sweep point
    assert _hollow_points(figures.micro_efficiency(merged)) >= 1
    hosts = figures.cross_host(merged)
    assert _hollow_points(hosts) >= 1  # alpha's k=16 at 2 threads
    assert "alpha (2 threads)" in _texts(hosts)


def test_comparison_takes_the_intervals_of_the_csv(results):
    micro = data.Merged(results["merged"]).micro
    rows = data.where(micro, host_id="alpha", N=1024, m=256, hidden=512, pattern="uniform",
                      gate=True, k_target=64, threads=2)
    comp = data.comparison(rows, "paired", "speedup_vs_torch_delta", "torch_delta")
    t = micro_times("alpha", 2, 256, 64, 512)
    r = comp.iloc[0]
    assert r["point"] == pytest.approx(t["torch_delta"] / t["paired"])
    assert (r["low"], r["high"]) == pytest.approx((CI[0] * r["point"], CI[1] * r["point"]))
    assert r["verdict"] == "faster" and not r["excluded"] and r["reasons"] == []
    flagged = data.comparison(data.where(micro, host_id="alpha", k_target=16, threads=2,
                                         hidden=512, pattern="uniform", gate=True, N=1024),
                              "paired", "speedup_vs_torch_delta", "torch_delta")
    assert flagged["reasons"].iloc[0] == ["implausible"]
    assert data.verdict(1.0, 0.9, 1.1) == "tie" and data.verdict(0.5, 0.4, 0.6) == "slower"
    assert data.half_width(1.0, 0.97, 1.04) == pytest.approx(0.04)


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _check_tabular(tex: str) -> None:
    assert tex.count(r"\begin{tabular}") == tex.count(r"\end{tabular}") == 1
    assert tex.index(r"\begin{tabular}") < tex.index(r"\toprule") < tex.index(r"\midrule") \
        < tex.index(r"\bottomrule") < tex.index(r"\end{tabular}")
    for line in tex.splitlines():
        if line.startswith("%"):
            continue
        bare = line.replace(r"\{", "").replace(r"\}", "")
        assert bare.count("{") == bare.count("}"), line
        assert not re.findall(r"(?<!\\)[%#_&]", line.replace(" & ", " ")), line


@pytest.mark.parametrize("name", sorted(tables.TABLES))
def test_tables_are_booktabs_latex(results, tmp_path, name):
    out = tmp_path / f"{name}.tex"
    assert main(["table", name, "--merged-dir", str(results["merged"]), "--out", str(out),
                 "--quiet"]) == 0
    tex = out.read_text()
    _check_tabular(tex)
    if not name.startswith("model_"):  # not per host (content: test_model_analysis.py)
        assert "alpha" in tex and "beta" in tex
    assert main(["table", name, "--merged-dir", str(results["empty"]), "--out", str(out),
                 "--quiet"]) == 0
    empty = out.read_text()
    _check_tabular(empty)
    assert "no data" in empty


def _block(tex: str, heading: str) -> list[str]:
    """The body lines of the table block under the spanning heading that starts with
    ``heading``."""
    lines = tex.splitlines()
    start = next(i for i, ln in enumerate(lines) if f"\\textit{{{heading}" in ln)
    block = []
    for line in lines[start + 1:]:
        if line.startswith("\\midrule") or line.startswith("\\bottomrule"):
            break
        block.append(line)
    return block


def test_tables_escape_and_hold_the_numbers(results):
    merged = data.Merged(results["merged"])
    hosts = tables.hosts(merged)
    assert r"Weird\_CPU 100\% R\&D \#1 \{x\}" in hosts
    assert "43008K" in hosts and "unknown" in hosts
    micro = tables.micro_summary(merged)
    block = _block(micro, "alpha: $N$ = 1024, $m$ = 256, hidden 512")
    assert len(block) == 8  # 4 k x 2 thread counts
    t = micro_times("alpha", 2, 256, 64, 512)
    row = [line for line in block if line.startswith("64 & 2 &")]
    assert len(row) == 1, micro  # one row per (k, threads)
    delta = t["torch_delta"] / t["paired"]
    assert (f"& {delta:.2f} {{\\scriptsize [{CI[0] * delta:.2f}, {CI[1] * delta:.2f}]}} &"
            in row[0]), row[0]
    assert f"{t['index_select'] / t['paired']:.2f} {{\\scriptsize" in row[0]
    for ms in ("paired", "torch_delta", "index_select", "rebuild_floor"):
        assert f"& {fmt_sig(t[ms] * 1e3)} &" in row[0], ms
    implausible = [ln for ln in block if ln.startswith("16 & 2 &")]
    assert r"$^{\dagger}$" in implausible[0]
    busy = [ln for ln in block if ln.startswith("256 & 1 &")]
    assert busy[0].count(r"$^{\ddagger}$") == 6  # 4 times and 2 ratios
    assert len(_block(micro, "alpha: $N$ = 1024, $m$ = 256, hidden 1024")) == 4
    assert len(_block(micro, "beta: $N$ = 1024, $m$ = 256, hidden 512")) == 4
    assert "bool" not in micro and "numpy" not in micro
    e2e = tables.e2e_summary(merged)
    assert len(_block(e2e, "alpha (sweep): $N$ = 1024, hidden 512")) == 8  # 2 m x 2 b x 2 t
    assert len(_block(e2e, "beta (e2e)")) == 1
    assert "no\\_pack" in e2e and "torch\\_delta" in e2e and "dense" in e2e
    assert r"$^{\ddagger}$" in e2e  # the busy sweep point


def test_a_host_with_another_shape_stays_in_the_micro_summary(results, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(results["merged"], merged)
    micro = pd.read_csv(merged / "micro.csv", dtype=str, keep_default_na=False)
    micro.loc[micro["host_id"] == "beta", "N"] = "4096"
    micro.to_csv(merged / "micro.csv", index=False)
    tex = tables.micro_summary(data.Merged(merged))
    _check_tabular(tex)
    assert len(_block(tex, "beta: $N$ = 4096, $m$ = 256, hidden 512")) == 4
    fig = figures.micro_speedup(data.Merged(merged))
    assert "beta, hidden=512 (N=4096, m=256)" in _texts(fig)


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
LINE = re.compile(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$")
NA = r"\textit{n/a}"
EXCLUDED = r"\textit{excluded}"


def _macros(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        assert match, line
        assert match.group(1) not in values, f"duplicate {match.group(1)}"
        values[match.group(1)] = match.group(2)
    return values


def _numbers(merged_dir: Path, tmp_path: Path) -> dict[str, str]:
    out = tmp_path / "numbers.tex"
    assert main(["numbers", "--merged-dir", str(merged_dir), "--out", str(out), "--quiet"]) == 0
    return _macros(out)


def _ci(value: float) -> str:
    return f"[{CI[0] * value:.2f}, {CI[1] * value:.2f}]"


def test_numbers_match_the_synthetic_data(results, tmp_path):
    v = _numbers(results["merged"], tmp_path)
    # Primary: alpha (first alphabetically), N=1024, m=256, hidden=512 (most rows), threads 1, 2.
    assert (v["MicroPrimaryHost"], v["MicroN"], v["MicroM"], v["MicroHidden"],
            v["MicroThreads"]) == ("alpha", "1024", "256", "512", "1 and 2 threads")
    for threads, word in ((1, "One"), (2, "Two")):
        t = micro_times("alpha", threads, 256, 64, 512)
        name = f"KSixtyFourThreads{word}"
        for stem, base in (("Delta", "torch_delta"), ("IndexSelect", "index_select"),
                           ("RebuildFloor", "rebuild_floor")):
            ratio = t[base] / t["paired"]
            assert v[f"MicroVs{stem}{name}"] == f"{ratio:.2f}", (stem, threads)
            assert v[f"MicroVs{stem}{name}CI"] == _ci(ratio), (stem, threads)
        floor = min(t["memcpy_floor"], t["memcpy_floor_nt"])
        assert v[f"MicroEfficiency{name}"] == f"{floor / t['paired']:.2f}"
        assert v[f"MicroPairedMs{name}"] == fmt_sig(t["paired"] * 1e3)
        assert v[f"MicroDeltaMs{name}"] == fmt_sig(t["torch_delta"] * 1e3)
        delta = t["torch_delta"] / t["paired"]
        assert f"{delta:.2f}$\\times$ {_ci(delta)} with {threads} thread" in \
            v["MicroHeadlineSentence"]
    assert v["MicroHeadlineK"] == "64" and "$k = 64$" in v["MicroHeadlineSentence"]
    assert "torch\\_delta" in v["MicroHeadlineSentence"]
    # Standard k / thread counts that were not measured: n/a.
    assert v["MicroVsDeltaKOneThousandTwentyFourThreadsOne"] == NA
    assert "MicroVsDeltaKSixtyFourThreadsEight" not in v  # beta's count, not the primary host's
    # Every synthetic interval is [0.97, 1.04] x its point: +-4%, narrower than 10%.
    assert v["MicroHeadlineHalfWidth"] == "4.0" and v["MicroHalfWidthMax"] == "4.0"
    assert "narrower than $\\pm$10\\%" in v["MicroPrecisionSentence"]
    assert "could not" not in v["MicroPrecisionSentence"]
    # Exclusions: k=16 with 2 threads (implausible paired), k=256 with 1 thread (busy).
    assert v["MicroVsDeltaKSixteenThreadsTwo"] == EXCLUDED
    assert v["MicroVsDeltaKSixteenThreadsTwoCI"] == EXCLUDED
    assert v["MicroVsIndexSelectKTwoHundredFiftySixThreadsOne"] == EXCLUDED
    assert v["MicroVsDeltaKSixteenThreadsOne"] != EXCLUDED
    assert (v["MicroHeadlinePoints"], v["MicroExcludedCount"], v["MicroExcludedImplausible"],
            v["MicroExcludedBusy"]) == ("8", "2", "1", "1")
    assert "2 of the 8 headline points" in v["MicroExclusionSentence"]
    assert "implausible" in v["MicroExclusionSentence"] and "busy" in v["MicroExclusionSentence"]
    assert v["MicroImplausibleRows"] == "2"  # paired at k=16, 2 threads: hidden 512 and 1024
    assert "\\texttt{paired} ($k$ = 16, 2 threads" in v["MicroExclusionSentence"]
    # Where the method does not pay: index_select wins at k=256 with 2 threads (1 thread: busy).
    verdict = v["MicroVerdictIndexSelectSentence"]
    assert "with 2 threads it is faster at $k$ = 0, 64, slower at $k$ = 256" in verdict
    assert "not judged at $k$ = 256 (excluded: busy)" in verdict
    assert "faster" in v["MicroVerdictDeltaSentence"] and "slower" not in \
        v["MicroVerdictDeltaSentence"]
    # The same-code control: paired_control = paired everywhere (ratio 1 [0.97, 1.04]).
    assert v["ControlConfigs"] == "19" and v["ControlAgreed"] == "19"  # alpha 15, beta 4
    assert "agreed in all 19 configurations" in v["ControlSentence"]
    assert "warm" in v["MicroCacheSentence"] or "cold" in v["MicroCacheSentence"]
    # Counters.
    assert v["PerfIrRatioKSixtyFour"] == f"{perf_ir('paired', 64) / perf_ir('rebuild', 64):.2f}"
    small = perf_ir("paired", 16) / perf_ir("rebuild", 16)  # < 0.1: two significant digits
    assert small < 0.1 and v["PerfIrRatioKSixteen"] == f"{small:.2g}"
    assert v["PerfSource"] == "cachegrind" and v["PerfHost"] == "alpha"
    assert v["PerfSimLLMiB"] == "1"
    assert "1 MiB last-level cache" in v["PerfSentence"] and "more than it holds" in \
        v["PerfSentence"]
    # Autotune: alpha within noise at 1 thread, real at 2 threads.
    assert v["AutotuneGainThreadsOne"] == "1.010"
    assert v["AutotuneGainThreadsOneCI"] == "[0.980, 1.040]"
    assert v["AutotuneGainThreadsTwo"] == "1.200"
    assert "with 1 thread, 1.010$\\times$ [0.980, 1.040] (within noise" in v["AutotuneSentence"]
    assert "with 2 threads, 1.200$\\times$ [1.100, 1.300] (real" in v["AutotuneSentence"]
    assert v["AutotuneWinnerThreadsTwo"] == "grain 64, threshold 16, $\\tau$ = 0.5"
    assert "not searched" in v["AutotuneWinnerThreadsOne"]
    assert v["AutotuneCandidates"] == str(3 + 3 * 2 * 3)
    assert v["HostCount"] == "2" and v["ResultsHosts"] == "alpha, beta"
    assert v["MicroHostCount"] == "2"
    # Decode steps (alpha's sweep): paired = 2 no_pack, torch_delta = 1.5 paired.
    assert (v["EtoEVsNoPackMin"], v["EtoEVsNoPackMax"]) == ("0.50", "0.50")
    assert (v["EtoEVsDeltaMin"], v["EtoEVsDeltaMax"]) == ("1.50", "1.50")
    assert v["EtoEExcludedCount"] == "1" and "busy" in v["EtoEExclusionSentence"]
    assert v["EtoEConfigCount"] == "8" and v["EtoEThreads"] == "1 and 2 threads"
    assert v["EtoENoPackSentence"].startswith("Packing does not pay here: in all 7 included")
    sweep = pd.DataFrame(e2e_rows("alpha", "sweep", [128, 256], [1, 4]))
    paired = sweep[sweep["method"] == "paired"]
    churn = (100 * paired["k_mean"] / paired["active_mean"]).mean()
    assert v["EtoEMeanChurnPercent"] == f"{churn:.1f}"
    # The protocol and the load.
    assert v["TimingProcesses"] == "2" and v["TimingRounds"] == "5"
    assert "2 fresh worker processes of 5 timed rounds" in v["TimingSentence"]
    assert int(v["BusyConfigs"]) == 2 and "2 of the" in v["LoadSentence"]


def test_naive_and_reference_methods_never_reach_headline_numbers(results, tmp_path):
    def edit(frame):
        naive = frame["method"].isin(["bool_mask", "numpy_reference"])
        frame.loc[naive, "plausible"] = "False"
        for col in ("speedup_vs_torch_delta", "speedup_vs_index_select"):
            set_ratio(frame, naive, col, 999.0, 998.0, 1000.0)
        frame.loc[naive, "median_s"] = "1e-12"
        return frame
    merged = edited(results, tmp_path, "micro", edit)
    v = _numbers(merged, tmp_path)
    # Reported in their own sentence (flagged rows left out there too), never in a headline.
    text = "\n".join(value for name, value in v.items() if name != "MicroNaiveSentence")
    assert "bool" not in text and "numpy" not in text and "999" not in text
    assert "excluded" in v["MicroNaiveSentence"] and "0.000000001" not in v["MicroNaiveSentence"]
    assert v["MicroImplausibleRows"] == "2"  # the naive rows are not counted either
    assert "bool" not in tables.micro_summary(data.Merged(merged))
    fig = figures.micro_speedup(data.Merged(merged))
    assert "bool_mask" not in _texts(fig) and "numpy_reference" not in _texts(fig)


def test_an_implausible_baseline_excludes_only_its_ratio(results, tmp_path):
    def edit(frame):
        frame.loc[at(frame, **PRIMARY, method="torch_delta", k_target=64, threads=1),
                  "plausible"] = "False"
        return frame
    v = _numbers(edited(results, tmp_path, "micro", edit), tmp_path)
    assert v["MicroVsDeltaKSixtyFourThreadsOne"] == EXCLUDED
    assert v["MicroVsIndexSelectKSixtyFourThreadsOne"] != EXCLUDED
    assert v["MicroExcludedImplausible"] == "2" and v["MicroImplausibleRows"] == "3"
    assert "not reported with 1 thread (implausible" in v["MicroHeadlineSentence"]
    assert "(1 for both reasons)" not in v["MicroExclusionSentence"]
    assert "\\texttt{torch\\_delta} ($k$ = 64, 1 thread, alpha)" in v["MicroExclusionSentence"]


def test_a_point_with_both_reasons_is_counted_once(results, tmp_path):
    def edit(frame):
        frame.loc[at(frame, **PRIMARY, method="paired", k_target=256, threads=1),
                  "plausible"] = "False"
        return frame
    v = _numbers(edited(results, tmp_path, "micro", edit), tmp_path)
    assert (v["MicroExcludedCount"], v["MicroExcludedImplausible"], v["MicroExcludedBusy"]) == \
        ("2", "2", "1")
    assert "2 of the 8 headline points" in v["MicroExclusionSentence"]
    assert "(1 for both reasons)" in v["MicroExclusionSentence"]


def test_a_control_disagreement_is_reported(results, tmp_path):
    def edit(frame):
        set_ratio(frame, at(frame, **PRIMARY, method="paired", k_target=64, threads=1),
                  "control_ratio", 1.2, 1.1, 1.3)
        return frame
    v = _numbers(edited(results, tmp_path, "micro", edit), tmp_path)
    assert (v["ControlAgreed"], v["ControlConfigs"]) == ("18", "19")
    sentence = v["ControlSentence"]
    assert sentence.startswith("The same-code control agreed in 18 of 19 configurations")
    assert "disagreed at $k$ = 64, 1 thread, alpha (1.200$\\times$ [1.100, 1.300])" in sentence


def test_wide_intervals_say_could_not(results, tmp_path):
    def edit(frame):
        set_ratio(frame, at(frame, **PRIMARY, method="paired", k_target=64, threads=2),
                  "speedup_vs_torch_delta", 2.0, 1.6, 2.5)
        return frame
    v = _numbers(edited(results, tmp_path, "micro", edit), tmp_path)
    assert v["MicroHeadlineHalfWidth"] == "25.0" and v["MicroHalfWidthMax"] == "25.0"
    assert v["MicroPrecisionSentence"].startswith("We could not resolve the headline ratio to")
    assert "1 of 6 included" in v["MicroPrecisionSentence"]
    assert "$k$ = 64, 2 threads" in v["MicroPrecisionSentence"]


def test_autotune_wording_follows_the_interval(results, tmp_path):
    def edit(frame):
        winner = at(frame, host_id="alpha", phase="held_out_winner", threads=1)
        frame.loc[winner, "gain_ci95_low"], frame.loc[winner, "gain_ci95_high"] = "1.005", "1.02"
        frame.loc[at(frame, host_id="alpha", phase="held_out_default", threads=2), "busy"] = \
            "True"
        return frame
    v = _numbers(edited(results, tmp_path, "autotune", edit), tmp_path)
    assert "with 1 thread, 1.010$\\times$ [1.005, 1.020] (real" in v["AutotuneSentence"]
    assert "with 2 threads, not reported (measured on a busy host)" in v["AutotuneSentence"]
    assert v["AutotuneGainThreadsTwo"] == EXCLUDED and v["AutotuneGainThreadsTwoCI"] == EXCLUDED


def test_no_pack_sentence_in_both_directions(results, tmp_path):
    def pays(frame):
        set_ratio(frame, frame["method"] == "paired", "speedup_vs_no_pack", 2.0, 1.9, 2.1)
        return frame
    v = _numbers(edited(results, tmp_path / "pays", "e2e", pays), tmp_path)
    assert v["EtoENoPackSentence"].startswith("Packing pays: in all 7 included configurations")
    assert "2.00$\\times$" in v["EtoENoPackSentence"]

    def mixed(frame):
        set_ratio(frame, (frame["method"] == "paired") & (frame["m"] == "128"),
                  "speedup_vs_no_pack", 1.5, 1.4, 1.6)
        set_ratio(frame, (frame["method"] == "paired") & (frame["m"] == "256")
                  & (frame["batch"] == "1"), "speedup_vs_no_pack", 1.0, 0.9, 1.1)
        return frame
    v = _numbers(edited(results, tmp_path / "mixed", "e2e", mixed), tmp_path)
    sentence = v["EtoENoPackSentence"]
    assert "packing pays in 4" in sentence and "does not pay in 1" in sentence
    assert "is within noise in 2" in sentence and "of 7 included configurations" in sentence
    assert "$m$ = 256 (batch 4) with 1 thread" in sentence  # where it does not pay
    assert "\\texttt{paired\\_rowffn}" in sentence


def test_nothing_crashes_with_missing_methods(results, tmp_path):
    gone = {"micro": ["torch_delta", "torch_delta_indices", "paired_control", "rebuild_floor",
                      "memcpy_floor", "memcpy_floor_nt"],
            "e2e": ["no_pack", "torch_delta", "dense", "ffn_floor"]}
    for kind, methods in gone.items():
        def edit(frame, methods=methods):
            frame = frame[~frame["method"].isin(methods)].copy()
            for col in frame.columns:
                if any(col.startswith(f"speedup_vs_{m}") for m in methods) \
                        or col.startswith("control_ratio") or col.startswith("efficiency"):
                    frame[col] = ""
            return frame
        merged = edited(results, tmp_path, kind, edit)
    edited(results, tmp_path, "autotune", lambda f: f[f["phase"] == "tune"])
    edited(results, tmp_path, "perf", lambda f: f.assign(sim_ll_bytes="", bytes_per_update=""))
    v = _numbers(merged, tmp_path)
    assert v["MicroVsDeltaKSixtyFourThreadsOne"] == NA
    assert v["MicroVsIndexSelectKSixtyFourThreadsOne"] != NA
    assert "not available" in v["MicroHeadlineSentence"]
    assert "not measured" in v["ControlSentence"]
    assert "not measured" in v["EtoENoPackSentence"]
    assert v["EtoEVsNoPackMin"] == NA and v["AutotuneGainThreadsOne"] == NA
    assert "not checked" in v["AutotuneSentence"] or "not known" in v["AutotuneSentence"]
    for name in figures.FIGURES:
        figures.render(name, merged, tmp_path / "fig" / f"{name}.pdf")
    for table in tables.TABLES.values():
        _check_tabular(table(data.Merged(merged)))


def test_numbers_without_data_are_na(results, tmp_path):
    v = _numbers(results["empty"], tmp_path)
    for name in ("MicroVsDeltaKSixtyFourThreadsOne", "MicroVsDeltaKSixtyFourThreadsTwoCI",
                 "MicroEfficiencyKSixtyFourThreadsOne", "MicroN", "MicroHeadlineK",
                 "MicroHeadlineHalfWidth", "EtoEVsNoPackMin", "EtoEMeanChurnPercent",
                 "PerfIrRatioKSixtyFour", "PerfSimLLMiB", "AutotuneGainThreadsOne",
                 "AutotuneWinnerThreadsTwo", "ResultsHosts", "TimingProcesses"):
        assert v[name] == NA, name
    assert v["HostCount"] == "0" and v["MicroHostCount"] == "0"
    for name in [n for n in v if n.endswith("Sentence")]:
        assert v[name] and v[name] != NA, name  # a sentence always says something
    # The same macro names with and without data: the paper compiles either way.
    full = _numbers(results["merged"], tmp_path / "full")
    assert set(v) <= set(full)


#: commands of LaTeX packages the paper uses that start with a capital letter
LATEX_COMMANDS = {"State", "Comment", "If", "Else", "EndIf", "ForAll", "EndFor", "Return",
                  "Vert"}


def test_every_macro_the_paper_uses_is_always_defined(results, tmp_path):
    paper = Path(__file__).resolve().parents[1] / "paper" / "paper.tex"
    if not paper.is_file():
        pytest.skip("paper/paper.tex is not there")
    used = set(re.findall(r"(?<!\\)\\([A-Z][A-Za-z]+)", paper.read_text())) - LATEX_COMMANDS
    for which in ("merged", "empty"):
        v = _numbers(results[which], tmp_path / which)
        assert used <= set(v), sorted(used - set(v))
    assert {"MicroHeadlineSentence", "ControlSentence", "EtoENoPackSentence",
            "AutotuneSentence", "MicroPrecisionSentence"} <= used
