"""The analysis stage: merge, figures, tables and numbers on small synthetic per-host folders.

No benchmark runs: every CSV is built from plausible rows by bench.common.write_csv (so it
validates against its schema), for two hosts with several k, hidden sizes and methods, a sweep,
perf rows (cachegrind on one host, unavailable on the other), autotune rows and a hostinfo.json.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paired_replacement.analysis import data, figures, tables
from paired_replacement.analysis.__main__ import main
from paired_replacement.bench import common

ALPHA_CPU = "Intel(R) Xeon(R) Gold 6348"
BETA_CPU = "Weird_CPU 100% R&D #1 {x}"
MICRO_METHODS = ["paired", "paired_indices", "hybrid", "numpy_reference", "index_select",
                 "bool_mask", "memcpy_floor", "memcpy_floor_nt"]
KS = [0, 16, 64, 256]


# ---------------------------------------------------------------------------------------------
# Synthetic results
# ---------------------------------------------------------------------------------------------
def meta(host: str, threads: int, chash: str = "0123456789ab") -> dict:
    return {"host_id": host, "cpu_model": ALPHA_CPU if host == "alpha" else BETA_CPU,
            "threads": threads, "torch_version": "2.13.0+cpu", "compiler": "g++ (GCC) 12.2.0",
            "build_flags": "-O3,-march=native", "simd": "avx2", "build_source": "pip",
            "git_commit": "deadbeef", "config_hash": chash, "timestamp": "2025-01-01T00:00:00+0000"}


def stats(median: float, pyperf: str = "x.pyperf.json") -> dict:
    return {"n_values": 15, "median_s": median, "iqr_s": 0.05 * median,
            "ci95_low_s": 0.97 * median, "ci95_high_s": 1.04 * median, "mean_s": 1.01 * median,
            "stdev_s": 0.03 * median, "pyperf_json": pyperf}


TUNING = {"grain": 64, "par_threshold": 64, "hybrid_tau_frac": 0.5, "tuning_source": "default"}


def micro_times(host: str, threads: int, m: int, k: int, hidden: int) -> dict[str, float]:
    """Median seconds per method: index_select gathers m rows, paired writes k (x1.5 cost)."""
    base_scale = (1.0 if host == "alpha" else 1.3) * (1.0 if threads > 1 else 2.0)
    paired_scale = (1.0 if host == "alpha" else 1.1) * (1.0 if threads > 1 else 3.0)
    base = base_scale * (2e-6 + m * hidden * 4e-10)
    paired = paired_scale * (1e-6 + 1.5 * k * hidden * 4e-10)
    return {"paired": paired, "paired_indices": 0.95 * paired, "hybrid": min(paired, 1.02 * base),
            "numpy_reference": 8 * paired + 1e-5, "index_select": base, "bool_mask": 1.6 * base,
            "memcpy_floor": 0.85 * paired, "memcpy_floor_nt": 0.9 * paired}


def micro_rows(host: str, *, N: int, m: int, hidden: int, threads: int, ks=KS,
               pattern: str = "uniform", gate: bool = True, dtype: str = "float32") -> list[dict]:
    rows = []
    for k in ks:
        t = micro_times(host, threads, m, max(k, 8), hidden)
        floor = min(t["memcpy_floor"], t["memcpy_floor_nt"])
        key = f"{host}{N}{m}{hidden}{threads}{k}{pattern}{gate}"
        chash = hashlib.sha256(key.encode()).hexdigest()[:12]
        for method in MICRO_METHODS:
            written = m if method in ("index_select", "bool_mask") else k
            rows.append({
                **meta(host, threads, chash), **TUNING, **stats(t[method], "micro.pyperf.json"),
                "benchmark": "micro", "method": method, "N": N, "m": m,
                "k_target": k if pattern == "uniform" else -1, "k_mean": float(k), "hidden": hidden,
                "gate": gate, "dtype": dtype, "pattern": pattern, "steps": 8,
                "rows_written_mean": float(written), "bytes_moved_mean": written * hidden * 12.0,
                "gbps": written * hidden * 12.0 / t[method] / 1e9,
                "speedup_vs_index_select": t["index_select"] / t[method],
                "efficiency_vs_floor": (floor / t[method] if written and method not in
                                        ("index_select", "bool_mask") else None)})
    return rows


def e2e_rows(host: str, benchmark: str, ms, batches, *, threads: int) -> list[dict]:
    rows = []
    for m in ms:
        for batch in batches:
            active = min(1024.0, 0.8 * m * batch + m)
            k_mean = 0.1 * active
            base = 1e-5 + active * 512 * 3e-9
            t = {"index_select": base, "paired": 0.25 * base + 3e-5 + k_mean * 1e-8,
                 "hybrid": 0.45 * base, "dense": 1e-5 + 1024 * 512 * 3e-9}
            for method, median in t.items():
                rows.append({
                    **meta(host, threads), **TUNING, **stats(median, f"{benchmark}.pyperf.json"),
                    "benchmark": benchmark, "method": method, "N": 1024, "m": m, "batch": batch,
                    "hidden": 512, "gate": True, "dtype": "float32", "rho": 0.9, "beta": 0.0,
                    "steps": 16, "active_mean": active, "k_mean": k_mean,
                    "speedup_vs_index_select": t["index_select"] / median,
                    "speedup_vs_dense": t["dense"] / median})
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
            for event, per_row in events.items():
                if source == "cachegrind":
                    per = perf_ir(method, k) if event == "Ir" else \
                        (k if method == "paired" else 512) * 256 * per_row
                    value = per * 20
                else:
                    per = value = None
                rows.append({**meta(host, 1), "benchmark": "perf", "method": method, "N": 2048,
                             "m": 512, "k": k, "hidden": 256, "gate": True, "dtype": "float32",
                             "updates": 20, "source": source, "event": event, "value": value,
                             "per_update": per})
    return rows


AUTOTUNE_WINNER = {"alpha": (64, 16, 0.5), "beta": (16, 64, 0.25)}


def autotune_rows(host: str) -> list[dict]:
    rows = []
    win = AUTOTUNE_WINNER[host]
    for grain in (16, 64, 256):
        for par in (16, 64):
            for tau in (0.25, 0.5, 1.0):
                cand = (grain, par, tau)
                median = 1e-4 * (1 + 0.1 * abs(grain - win[0]) / 16 + 0.05 * abs(par - win[1]) / 16
                                 + abs(tau - win[2]))
                rows.append({**meta(host, 4), **stats(median, "autotune.pyperf.json"),
                             "benchmark": "autotune", "N": 1024, "m": 256, "hidden": 512,
                             "k_list": "16 64 256", "grain": grain, "par_threshold": par,
                             "hybrid_tau_frac": tau, "is_winner": cand == win})
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
    micro_a = (micro_rows("alpha", N=1024, m=256, hidden=512, threads=4)
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=1)
               + micro_rows("alpha", N=1024, m=256, hidden=1024, threads=4)
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=4, ks=[-1],
                            pattern="sticky")
               + micro_rows("alpha", N=1024, m=256, hidden=512, threads=4, ks=[64], gate=False)
               + micro_rows("alpha", N=2048, m=512, hidden=512, threads=4, ks=[64]))
    common.write_csv(micro_a, a / "micro.csv", "micro")
    common.write_csv(micro_rows("beta", N=1024, m=256, hidden=512, threads=8), b / "micro.csv",
                     "micro")
    common.write_csv(e2e_rows("alpha", "sweep", [128, 256], [1, 4], threads=4), a / "sweep.csv",
                     "e2e")
    common.write_csv(e2e_rows("alpha", "e2e", [256], [1], threads=4), a / "e2e.csv", "e2e")
    common.write_csv(e2e_rows("beta", "e2e", [256], [1], threads=8), b / "e2e.csv", "e2e")
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
    assert sorted(p.name for p in merged.iterdir()) == sorted(f"{k}.csv" for k in MERGED)
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
    """Every text of a figure (panel texts and titles), line breaks as spaces."""
    texts = [t.get_text() for ax in fig.axes for t in ax.texts] + \
        [ax.get_title() for ax in fig.axes]
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
    # Missing files (not even headers) behave as empty tables.
    figures.render("cross_host", tmp_path / "nowhere", tmp_path / "x.pdf")
    _check_rendered(tmp_path / "x.pdf")


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
    assert "alpha" in tex and "beta" in tex
    assert main(["table", name, "--merged-dir", str(results["empty"]), "--out", str(out),
                 "--quiet"]) == 0
    empty = out.read_text()
    _check_tabular(empty)
    assert "no data" in empty


def test_tables_escape_and_hold_the_numbers(results):
    merged = data.Merged(results["merged"])
    hosts = tables.hosts(merged)
    assert r"Weird\_CPU 100\% R\&D \#1 \{x\}" in hosts
    assert "43008K" in hosts and "unknown" in hosts
    micro = tables.micro_summary(merged)
    t = micro_times("alpha", 4, 256, 64, 512)
    row = [line for line in micro.splitlines() if line.startswith("alpha & 512 & 64 &")]
    assert len(row) == 1, micro  # one row per (host, hidden, k): threads=1 rows left out
    assert f"& {t['index_select'] / t['paired']:.2f} &" in row[0]
    e2e = tables.e2e_summary(merged)
    assert len([ln for ln in e2e.splitlines() if ln.startswith("alpha &")]) == 4  # the sweep


def test_a_host_with_another_shape_stays_in_the_micro_summary(results, tmp_path):
    merged = tmp_path / "merged"
    shutil.copytree(results["merged"], merged)
    micro = pd.read_csv(merged / "micro.csv", dtype=str, keep_default_na=False)
    micro.loc[micro["host_id"] == "beta", "N"] = "4096"
    micro.to_csv(merged / "micro.csv", index=False)
    tex = tables.micro_summary(data.Merged(merged))
    _check_tabular(tex)
    assert "$N$ & $m$" in tex and "beta & 4096 & 256 & 512 & 64 &" in tex
    fig = figures.micro_speedup(data.Merged(merged))
    assert "beta, hidden=512 (N=4096, m=256)" in _texts(fig)


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------
LINE = re.compile(r"^\\newcommand\{\\([A-Za-z]+)\}\{(.*)\}$")


def _macros(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        match = LINE.match(line)
        assert match, line
        assert match.group(1) not in values, f"duplicate {match.group(1)}"
        values[match.group(1)] = match.group(2)
    return values


def test_numbers_match_the_synthetic_data(results, tmp_path):
    out = tmp_path / "numbers.tex"
    assert main(["numbers", "--merged-dir", str(results["merged"]), "--out", str(out),
                 "--quiet"]) == 0
    v = _macros(out)
    # Primary: alpha (first alphabetically), N=1024, m=256, hidden=512 (most rows), threads 4.
    assert (v["MicroPrimaryHost"], v["MicroN"], v["MicroM"], v["MicroHidden"],
            v["MicroThreads"]) == ("alpha", "1024", "256", "512", "4")
    t = micro_times("alpha", 4, 256, 64, 512)
    speedup = t["index_select"] / t["paired"]
    assert float(v["MicroSpeedupKSixtyFour"]) == pytest.approx(speedup, abs=0.005)
    assert v["MicroSpeedupKSixtyFour"] == f"{speedup:.2f}"
    floor = min(t["memcpy_floor"], t["memcpy_floor_nt"])
    assert v["MicroEfficiencyKSixtyFour"] == f"{floor / t['paired']:.2f}"
    assert v["MicroSpeedupKOneThousandTwentyFour"] == r"\textit{n/a}"  # standard k, not measured
    ratios = {k: micro_times("alpha", 4, 256, max(k, 8), 512) for k in KS if k > 0}
    ratios = {k: r["index_select"] / r["paired"] for k, r in ratios.items()}
    assert v["MicroBreakEvenK"] == str(min(k for k, r in ratios.items() if r <= 1))
    assert v["MicroBestSpeedup"] == f"{max(ratios.values()):.2f}"
    assert v["PerfIrRatioKSixtyFour"] == f"{perf_ir('paired', 64) / perf_ir('rebuild', 64):.2f}"
    small = perf_ir("paired", 16) / perf_ir("rebuild", 16)  # < 0.1: two significant digits
    assert small < 0.1 and v["PerfIrRatioKSixteen"] == f"{small:.2g}"
    assert v["PerfSource"] == "cachegrind" and v["PerfHost"] == "alpha"
    grain, par, tau = AUTOTUNE_WINNER["alpha"]
    assert (v["AutotuneGrain"], v["AutotuneParThreshold"], v["AutotuneTau"]) == \
        (str(grain), str(par), f"{tau:g}")
    assert v["HostCount"] == "2" and v["ResultsHosts"] == "alpha, beta"
    assert v["MicroHostCount"] == "2"
    sweep = pd.DataFrame(e2e_rows("alpha", "sweep", [128, 256], [1, 4], threads=4))
    paired = sweep[sweep["method"] == "paired"]
    assert v["EtoESpeedupBest"] == f"{paired['speedup_vs_index_select'].max():.2f}"
    assert v["EtoESpeedupWorst"] == f"{paired['speedup_vs_index_select'].min():.2f}"
    churn = (100 * paired["k_mean"] / paired["active_mean"]).mean()
    assert v["EtoEMeanChurnPercent"] == f"{churn:.1f}"


def test_numbers_without_data_are_na(results, tmp_path):
    out = tmp_path / "numbers.tex"
    assert main(["numbers", "--merged-dir", str(results["empty"]), "--out", str(out),
                 "--quiet"]) == 0
    v = _macros(out)
    for name in ("MicroSpeedupKSixtyFour", "MicroEfficiencyKSixtyFour", "MicroN",
                 "MicroBestSpeedup", "MicroBreakEvenK", "EtoESpeedupBest", "EtoEMeanChurnPercent",
                 "PerfIrRatioKSixtyFour", "AutotuneGrain", "AutotuneTau", "ResultsHosts"):
        assert v[name] == r"\textit{n/a}", name
    assert v["HostCount"] == "0" and v["MicroHostCount"] == "0"
    # The same macro names with and without data: the paper compiles either way.
    full = tmp_path / "full.tex"
    main(["numbers", "--merged-dir", str(results["merged"]), "--out", str(full), "--quiet"])
    assert set(v) <= set(_macros(full))
