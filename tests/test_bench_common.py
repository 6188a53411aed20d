"""Shared benchmark machinery: statistics, schemas, hostinfo, the command dispatcher."""

import json
import re
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


# ---------------------------------------------------------------------------------------------
# Host identity
# ---------------------------------------------------------------------------------------------
def test_default_host_id_is_the_label_plus_a_machine_hash(monkeypatch):
    monkeypatch.delenv("PAIRED_REPLACEMENT_HOST", raising=False)
    monkeypatch.setattr(hostinfo.socket, "gethostname", lambda: "vm.example.org")
    monkeypatch.setattr(hostinfo, "machine_key", lambda: "machine A")
    first = hostinfo.host_id()
    assert re.fullmatch(r"vm-[0-9a-f]{6}", first), first
    assert hostinfo.host_id() == first  # stable
    assert hostinfo.host_label() == "vm"
    monkeypatch.setattr(hostinfo, "machine_key", lambda: "machine B")
    second = hostinfo.host_id()
    assert second != first and second.startswith("vm-")  # two generic "vm"s differ
    monkeypatch.setenv("PAIRED_REPLACEMENT_HOST", "node-7")
    assert hostinfo.host_id() == "node-7"  # chosen ids win


def test_machine_key_reads_the_machine_id_and_physical_nics(tmp_path, monkeypatch):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    net = tmp_path / "net"
    for nic, mac, physical in (("eth0", "02:fc:00:00:00:01", True),
                               ("ifb0", "aa:03:e7:92:b1:e4", False)):
        (net / nic).mkdir(parents=True)
        (net / nic / "address").write_text(mac + "\n")
        if physical:
            (net / nic / "device").mkdir()
    monkeypatch.setattr(hostinfo, "MACHINE_ID_FILES", (str(tmp_path / "absent"), str(machine_id)))
    monkeypatch.setattr(hostinfo, "_SYS_NET", net)
    key = hostinfo.machine_key()
    assert "3d1219c7c4c5404aaa1f6d2a48adfda4" in key and "02:fc:00:00:00:01" in key
    assert "aa:03:e7:92:b1:e4" not in key  # virtual interfaces change between boots
    machine_id.write_text("another installation\n")
    assert hostinfo.machine_key() != key


def test_hostinfo_records_the_label(tmp_path):
    out = tmp_path / "hostinfo.json"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PAIRED_REPLACEMENT_HOST"}
    proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "hostinfo", "--out",
                           str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(out.read_text())
    assert info["host_id"] == hostinfo.host_id() and info["host_id"].startswith(
        info["host_label"] + "-")


# ---------------------------------------------------------------------------------------------
# One benchmark per host, across processes
# ---------------------------------------------------------------------------------------------
HOLD_LOCK = """
import sys, time
from pathlib import Path
from paired_replacement.bench.__main__ import host_lock
with host_lock(Path(sys.argv[1]), "micro --out held"):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_benchmark_on_the_host_is_refused(tmp_path):
    from paired_replacement.bench.__main__ import LOCK_NAME, LOCKED_EXIT, host_lock

    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        for command in ("micro", "e2e", "sweep", "autotune", "perf"):
            out = tmp_path / f"{command}.csv"
            proc = subprocess.run([sys.executable, "-m", "paired_replacement.bench", command,
                                   "--out", str(out)], capture_output=True, text=True)
            assert proc.returncode == LOCKED_EXIT, (command, proc.stderr)
            assert f"pid {holder.pid}" in proc.stderr and LOCK_NAME in proc.stderr
            assert "another benchmark is running on this host" in proc.stderr
            assert not out.exists()
        # describing the host measures nothing: never locked
        info = subprocess.run([sys.executable, "-m", "paired_replacement.bench", "hostinfo",
                               "--out", str(tmp_path / "hostinfo.json")], capture_output=True)
        assert info.returncode == 0
    finally:
        holder.kill()  # as a killed job dies: the kernel releases the lock
        holder.wait()
    with host_lock(tmp_path, "after the holder died"):
        pass
    # another host's folder is never blocked by this one's lock
    with host_lock(tmp_path, "here"), host_lock(tmp_path / "other-host", "there"):
        pass
