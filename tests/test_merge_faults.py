"""Faults a long study meets at the merge: damaged host files, skipped hosts, the study record.

Each host folder is the synthetic one of test_analysis (built by bench.common.write_csv, so it
is valid); a test damages one copy the way a real fault would (a ``nan`` written by a crashed
statistic, an emptied column or ratio, an interval that misses its point, a baseline's rows
lost) and checks that the
one reader of results refuses it naming the host, the file, the line and the column -- at the
host's check, so that ``--skip-invalid`` leaves exactly that host out and says so.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from paired_replacement.analysis.__main__ import main
from paired_replacement.bench import common

import test_analysis as synthetic  # the synthetic host folders (tests/ is on sys.path)


@pytest.fixture()
def hosts(tmp_path) -> Path:
    return synthetic.build_hosts(tmp_path)


def edit_csv(path: Path, edit) -> None:
    """Rewrites ``path`` through ``edit(frame)`` with every cell as text (as a tool would)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    edited = edit(frame)
    (frame if edited is None else edited).to_csv(path, index=False)


def merge(hosts: Path, out: Path, *extra: str) -> int:
    return main(["merge", "--hosts-dir", str(hosts), "--out-dir", str(out), *extra])


def study(out: Path) -> dict:
    return json.loads((out / "study.json").read_text())


# ---------------------------------------------------------------------------------------------
# Damaged host files: refused by the host's check, with where and what
# ---------------------------------------------------------------------------------------------
def _nan_median(frame):
    frame.loc[frame.index[3], "median_s"] = "nan"


def _empty_paired_medians(frame):
    frame.loc[frame["method"] == "paired", "median_s"] = ""


def _emptied_ratio(frame):
    frame.loc[frame.index[frame["method"] == "paired"][0], "speedup_vs_torch_delta"] = ""


def _baseline_rows_lost(frame):
    return frame[frame["method"] != "torch_delta"]


def _infinite_ratio(frame):
    frame.loc[frame.index[0], "speedup_vs_index_select"] = "inf"


def _interval_misses_point(frame):
    rows = frame["method"] == "paired"
    frame.loc[rows, "speedup_vs_index_select_ci95_low"] = (
        frame.loc[rows, "speedup_vs_index_select"].astype(float) * 1.5).astype(str)


@pytest.mark.parametrize("damage, needles", [
    (_nan_median, ["micro.csv", "line 5, column median_s: not a finite number", "'nan'"]),
    (_empty_paired_medians, ["micro.csv", "column median_s: empty, but the schema requires"]),
    (_emptied_ratio, ["speedup_vs_torch_delta", "empty on the paired row although "
                      "torch_delta was measured"]),
    (_baseline_rows_lost, ["speedup_vs_torch_delta", "no row of method torch_delta"]),
    (_infinite_ratio, ["column speedup_vs_index_select: not a finite number"]),
    (_interval_misses_point, ["speedup_vs_index_select", "interval does not contain"]),
], ids=["nan", "emptied", "ratio-emptied", "baseline-lost", "inf", "interval"])
def test_damaged_host_file_is_refused_then_skipped(hosts, tmp_path, capsys, damage, needles):
    edit_csv(hosts / "beta" / "micro.csv", damage)
    out = tmp_path / "merged"
    assert merge(hosts, out) == 1
    err = capsys.readouterr().err
    assert "host folder" in err and "beta" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()  # nothing written

    # --skip-invalid leaves exactly that host out, says so, and records why
    assert merge(hosts, out, "--skip-invalid") == 0
    captured = capsys.readouterr()
    assert "warning: skipping host 'beta'" in captured.err
    assert "SKIPPED 1: beta" in captured.out
    record = study(out)
    assert record["hosts"] == ["alpha"]
    assert [s["host"] for s in record["skipped_hosts"]] == ["beta"]
    assert record["skipped_hosts"][0]["file"] == "micro.csv"
    assert needles[-1] in record["skipped_hosts"][0]["reason"]
    for kind in ("micro", "e2e", "perf", "autotune", "hosts"):
        frame = pd.read_csv(out / f"{kind}.csv", dtype=str, keep_default_na=False)
        assert set(frame["host_id"]) <= {"alpha"}, kind


def test_the_same_reader_checks_host_files_and_merged_tables(hosts, tmp_path):
    """A merged table damaged after the merge fails the same check, naming the merged file."""
    out = tmp_path / "merged"
    assert merge(hosts, out, "--quiet") == 0
    for kind in ("micro", "e2e", "perf", "autotune", "hosts"):
        common.read_results_csv(out / f"{kind}.csv", kind)  # valid as written
    edit_csv(out / "e2e.csv", _nan_median)
    with pytest.raises(common.SchemaError, match=r"e2e\.csv: line 5, column median_s: not a "
                                                 r"finite number"):
        common.read_results_csv(out / "e2e.csv", "e2e")
    with pytest.raises(common.SchemaError, match="not a finite number"):
        common.validate_csv(out / "e2e.csv", "e2e")


def test_ratios_are_not_judged_against_the_medians(hosts):
    """A ratio is the median of round-by-round ratios: under stalls it may differ from the ratio
    of the two medians by any factor (1.28 against 54.8 in a smoke run), and the file is still
    a measurement. Scaling a median 50x must not make the reader refuse it."""
    path = hosts / "alpha" / "micro.csv"

    def slower_paired(frame):
        rows = frame["method"] == "paired"
        frame.loc[rows, "median_s"] = (frame.loc[rows, "median_s"].astype(float)
                                       * 50).astype(str)
    edit_csv(path, slower_paired)
    common.read_results_csv(path, "micro")


# ---------------------------------------------------------------------------------------------
# study.json: primary host, smoke, config, hosts
# ---------------------------------------------------------------------------------------------
def test_study_records_the_primary_host_and_the_config(hosts, tmp_path):
    config = tmp_path / "study_config.yaml"
    config.write_text("timing:\n  fast: false\n  processes: 5\nmicro:\n  k: [0, 16]\n")
    out = tmp_path / "merged"
    assert merge(hosts, out, "--primary-host", "beta", "--study-config", str(config),
                 "--quiet") == 0
    record = study(out)
    assert record["primary_host"] == "beta"
    assert record["hosts"] == ["alpha", "beta"]
    assert record["config"] == {"timing": {"fast": False, "processes": 5},
                                "micro": {"k": [0, 16]}}
    assert record["smoke"] is False and record["skipped_hosts"] == []


def test_smoke_results_are_marked(hosts, tmp_path):
    config = tmp_path / "smoke.yaml"
    config.write_text("timing:\n  fast: true\n")
    assert merge(hosts, tmp_path / "a", "--study-config", str(config), "--quiet") == 0
    assert study(tmp_path / "a")["smoke"] is True
    # without the config: a study whose every timed row comes from one process is marked too
    assert merge(hosts, tmp_path / "b", "--quiet") == 0
    assert study(tmp_path / "b")["smoke"] is False  # synthetic rows: 2 processes
    for host in ("alpha", "beta"):
        for name in ("micro.csv", "e2e.csv", "sweep.csv"):
            if (hosts / host / name).exists():
                edit_csv(hosts / host / name,
                         lambda f: f.__setitem__("n_processes", "1"))
    assert merge(hosts, tmp_path / "c", "--quiet") == 0
    assert study(tmp_path / "c")["smoke"] is True


@pytest.mark.parametrize("primary, why", [("gamma", "has no folder"),
                                          ("beta", "was skipped")])
def test_a_primary_host_without_results_is_an_error(hosts, tmp_path, capsys, primary, why):
    edit_csv(hosts / "beta" / "micro.csv", _nan_median)
    out = tmp_path / "merged"
    assert merge(hosts, out, "--skip-invalid", "--primary-host", primary) == 1
    err = capsys.readouterr().err
    assert f"the primary host '{primary}' {why}" in err and "alpha" in err, err
    assert not out.exists()


def test_bad_study_config_is_refused(hosts, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("- a list\n")
    assert merge(hosts, tmp_path / "m", "--study-config", str(config)) == 1
    assert "not a mapping" in capsys.readouterr().err
    config.write_text("a: [unclosed\n")
    assert merge(hosts, tmp_path / "m", "--study-config", str(config)) == 1
    assert "not YAML" in capsys.readouterr().err


def test_hosts_table_has_a_human_label(hosts, tmp_path):
    info = json.loads((hosts / "alpha" / "hostinfo.json").read_text())
    info["host_label"] = "bigbox"
    (hosts / "alpha" / "hostinfo.json").write_text(json.dumps(info))
    out = tmp_path / "merged"
    assert merge(hosts, out, "--quiet") == 0
    frame = pd.read_csv(out / "hosts.csv", dtype=str, keep_default_na=False)
    labels = dict(zip(frame["host_id"], frame["host_label"]))
    # alpha names its label; beta's hostinfo predates labels: its short hostname
    assert labels == {"alpha": "bigbox", "beta": "beta"}


def test_merge_twice_gives_identical_bytes_including_study(hosts, tmp_path):
    for name in ("a", "b"):
        assert merge(hosts, tmp_path / name, "--primary-host", "alpha", "--quiet") == 0
    for path in sorted((tmp_path / "a").iterdir()):
        assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes(), path.name


def test_copied_folder_changes_nothing_but_its_rows(hosts, tmp_path):
    """A third host copied in never changes what the study calls its primary host."""
    out = tmp_path / "merged"
    assert merge(hosts, out, "--primary-host", "beta", "--quiet") == 0
    shutil.copytree(hosts / "alpha", hosts / "aaa-epyc")
    for path in (hosts / "aaa-epyc").glob("*.csv"):
        edit_csv(path, lambda f: f.__setitem__("host_id", "aaa-epyc"))
    info = json.loads((hosts / "aaa-epyc" / "hostinfo.json").read_text())
    info["host_id"] = "aaa-epyc"
    (hosts / "aaa-epyc" / "hostinfo.json").write_text(json.dumps(info))
    assert merge(hosts, out, "--primary-host", "beta", "--quiet") == 0
    assert study(out)["primary_host"] == "beta"
    assert study(out)["hosts"] == ["aaa-epyc", "alpha", "beta"]
