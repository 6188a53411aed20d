"""Shared benchmark machinery: statistics, schemas, hostinfo, the command dispatcher."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from paired_replacement.bench import common, hostinfo, stats


def test_summary_matches_numpy_and_brackets_the_median():
    values = np.random.default_rng(0).lognormal(size=101)
    s = stats.summary([values], seed=1)
    assert s["median_s"] == np.median(values)
    q1, q3 = np.percentile(values, [25, 75])
    assert s["iqr_s"] == pytest.approx(q3 - q1)
    assert s["mean_s"] == pytest.approx(values.mean())
    assert s["stdev_s"] == pytest.approx(values.std(ddof=1))
    assert s["ci95_low_s"] < s["median_s"] < s["ci95_high_s"]
    assert stats.summary([values], seed=1) == s  # seeded bootstrap: reproducible
    with pytest.raises(ValueError, match="no values"):
        stats.summary([[]])


def test_llc_size_is_the_largest_data_cache():
    assert hostinfo._size_bytes("32768K") == 32 << 20
    assert hostinfo._size_bytes("1M") == 1 << 20 and hostinfo._size_bytes("junk") == 0
    caches = hostinfo.caches()
    sizes = [hostinfo._size_bytes(c["size"]) for c in caches if c["type"] in ("Unified", "Data")]
    assert hostinfo.llc_bytes() == (max(sizes) if sizes else 0) or not caches


def test_config_hash_is_canonical():
    assert common.config_hash({"a": 1, "b": 2}) == common.config_hash({"b": 2, "a": 1})
    assert common.config_hash({"a": 1}) != common.config_hash({"a": 2})


def _rows(n=2):
    names = common.column_names("perf")
    row = {c: 1 for c in names}
    row.update({c: "x" for c in ("host_id", "cpu_model", "torch_version", "compiler", "build_flags",
                                  "simd", "build_source", "git_commit", "config_hash", "timestamp",
                                  "benchmark", "method", "dtype", "source", "event")})
    return [dict(row) for _ in range(n)]


def test_write_csv_orders_and_validates(tmp_path):
    rows = _rows()
    rows[0] = dict(reversed(list(rows[0].items())))
    path = tmp_path / "perf.csv"
    common.write_csv(rows, path, "perf")
    frame = common.validate_csv(path, "perf")
    assert list(frame.columns) == common.column_names("perf")


@pytest.mark.parametrize("mutate,message", [
    (lambda f: f.drop(columns=["value"]), "missing \\['value'\\]"),
    (lambda f: f.assign(extra=1), "unexpected \\['extra'\\]"),
    (lambda f: f.assign(updates="many"), "line 2, column updates: not a number"),
    (lambda f: f.assign(updates=1.5), "line 2, column updates: not an integer"),
    (lambda f: f.assign(per_update="nan"), "line 2, column per_update: not a finite number"),
    (lambda f: f.assign(value="-inf"), "line 2, column value: not a finite number"),
    (lambda f: f.assign(gate="maybe"), "line 2, column gate: not true/false"),
    (lambda f: f.assign(host_id=None), "line 2, column host_id: empty, but the schema requires"),
    (lambda f: f.iloc[0:0], "no rows"),
])
def test_validate_refuses_broken_tables_naming_the_file(tmp_path, mutate, message):
    path = tmp_path / "perf.csv"
    common.write_csv(_rows(), path, "perf")
    broken = mutate(pd.read_csv(path))
    broken.to_csv(path, index=False)
    with pytest.raises(common.SchemaError, match=f"{path}.*{message}"):
        common.validate_csv(path, "perf")


def test_unreadable_csv_is_a_schema_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(common.SchemaError, match="unreadable"):
        common.validate_csv(path, "micro")


def test_every_schema_column_is_documented():
    for name in ("micro", "e2e", "perf", "autotune"):
        columns = common.load_schema(name)
        names = [c["name"] for c in columns]
        assert len(names) == len(set(names)), name
        for c in columns:
            assert c["type"] in {"string", "integer", "number", "boolean"}
            assert len(c["description"]) > 3


def test_hostinfo_cli_writes_the_host_description(tmp_path, monkeypatch):
    out = tmp_path / "hostinfo.json"
    env_host = "node-A.cluster"
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "hostinfo", "--out",
                           str(out)], capture_output=True, text=True,
                          env={**__import__("os").environ, "PAIRED_REPLACEMENT_HOST": env_host})
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    assert info["host_id"] == "node-A.cluster"
    for key in ("cpu_model", "logical_cpus", "caches", "isa_flags", "memory_gib", "os",
                "torch_version", "compiler", "governor"):
        assert key in info
    assert info["logical_cpus"] >= 1


def test_host_id_is_filesystem_safe(monkeypatch):
    monkeypatch.setenv("PAIRED_REPLACEMENT_HOST", "a b/c")
    assert hostinfo.host_id() == "a_b_c"


def test_dispatcher_lists_commands_and_rejects_unknown():
    ok = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "--help"],
                        capture_output=True, text=True)
    assert ok.returncode == 0
    for name in ("micro", "e2e", "sweep", "autotune", "perf", "hostinfo"):
        assert name in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "nope"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown command" in bad.stderr


@pytest.mark.parametrize("command", ["micro", "autotune", "hostinfo"])
def test_each_command_documents_its_options(command):
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", command, "--help"],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "--" in proc.stdout
