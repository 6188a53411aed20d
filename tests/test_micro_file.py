"""micro's file tier (pool in a pool file, packed block in memory) and the disk floor's reader.

Checked against independent counts: the bytes each method reads are the records of the rows it
writes (recomputed here from the masks with plain torch): the paired update's W, the full reload
all m' active ones (when anything changed), the disk floor all m' every step; the correctness gate covers the file
methods; bad arguments are refused with the argument named. No timing is asserted.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from paired_replacement.bench import common, diskread, masks, micro
from paired_replacement.pool_file import PoolFileError, read_header, write_pool_file

from test_bench_micro import bench, make_group

TINY_FILE = ["--tier", "file", "--rows", "256", "--m", "64", "--k", "8", "--hidden", "32", "--steps", "4",
             "--fast", "--quiet", "--queue-depth", "4"]


@pytest.fixture(scope="module")
def file_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro_file") / "micro_file.csv"
    bench("micro", *TINY_FILE, "--k", "0", "8", "32", "--threads", "1", "--out", str(out))
    return out


def test_file_tier_rows_validate_and_say_how_the_disk_was_read(file_csv):
    frame = common.validate_csv(file_csv, "micro")
    assert set(frame["method"]) == set(micro.FILE_METHODS)
    assert (frame["tier"] == "file").all() and (frame["queue_depth"] == 4).all()
    assert set(frame["io_mode"]) <= {diskread.DIRECT, diskread.BUFFERED}
    assert set(frame["role"]) == {"headline", "baseline", "floor"}
    # the pool files are the run's scratch: gone after it
    assert not file_csv.with_name("micro_file.pools").exists()


def _expected_rows(seq: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Rows read per step of the walk: by the paired update (an independent count: |added| when
    m is fixed), by a full reload (every active row, when anything changed) and by the disk floor
    (every active row)."""
    paired, full, floor = [], [], []
    current = 0
    for target in micro.walk(len(seq)):
        added = int((seq[target] & ~seq[current]).sum())
        paired.append(added)
        full.append(int(seq[target].sum()) if added else 0)
        floor.append(int(seq[target].sum()))
        current = target
    return paired, full, floor


def test_bytes_read_are_the_records_of_the_rows_written(file_csv):
    frame = pd.read_csv(file_csv)
    record = read_header_for(frame)
    for chash, rows in frame.groupby("config_hash"):
        by = rows.set_index("method")
        seq = torch.load(file_csv.with_name("micro_file.masks") / f"{chash}.pt")
        paired, full, floor = _expected_rows(seq)
        want_paired = sum(paired) / len(paired) * record
        want_full = sum(full) / len(full) * record
        for method in ("paired", "paired_indices"):
            assert by.loc[method, "slow_bytes_read_mean"] == pytest.approx(want_paired), method
        assert by.loc["full_reload", "slow_bytes_read_mean"] == pytest.approx(want_full)
        assert by.loc["disk_floor", "slow_bytes_read_mean"] == pytest.approx(
            sum(floor) / len(floor) * record)
        if want_paired:
            assert by.loc["paired", "bytes_ratio_vs_full_reload"] == pytest.approx(
                want_full / want_paired)
            assert by.loc["paired", "floor_method"] == "disk_floor"
            # efficiency: the disk floor's time scaled to paired's bytes over paired's time,
            # recomputed from the raw values round by round
            raw = _raw_values(file_csv)
            mine = np.concatenate(raw[f"paired/{chash}"])
            floor = np.concatenate(raw[f"disk_floor/{chash}"])
            scale = want_paired / by.loc["disk_floor", "slow_bytes_read_mean"]
            assert by.loc["paired", "efficiency_vs_floor"] == pytest.approx(
                float(np.median(floor / mine)) * scale, rel=1e-9)
            assert by.loc["paired", "read_mbps"] > 0
        else:  # k = 0: nothing to read, no ratio
            assert pd.isna(by.loc["paired", "bytes_ratio_vs_full_reload"])


def _raw_values(csv_path: Path) -> dict[str, list[list[float]]]:
    import pyperf

    suite = pyperf.BenchmarkSuite.load(str(csv_path.with_suffix(".pyperf.json")))
    return {b.get_name(): [list(run.values) for run in b.get_runs()]
            for b in suite.get_benchmarks()}


def read_header_for(frame: pd.DataFrame) -> int:
    """The record size of the run's pool files: 3 x hidden float32 rounded up to 4 KiB."""
    hidden = int(frame["hidden"].iloc[0])
    return -(-3 * hidden * 4 // 4096) * 4096


def test_file_tier_speedups_are_against_the_full_reload(file_csv):
    frame = pd.read_csv(file_csv)
    full = frame[frame["method"] == "full_reload"]
    assert (full["speedup_vs_full_reload"] == 1.0).all()
    assert frame["speedup_vs_torch_delta"].isna().all()  # no dram baselines on this tier


def test_correctness_gate_covers_the_file_methods(tmp_path):
    task = make_group(tmp_path, micro.FILE_METHODS)
    task.update({"tier": "file", "queue_depth": 3})
    task["pool_path"] = str(micro.pool_file_for(task, tmp_path / "pools"))
    group = micro.make_group(task)
    group.check()
    record = read_header(task["pool_path"]).record_bytes
    seq = torch.load(task["masks_path"])
    paired, _, floor = _expected_rows(seq)
    assert group.info["bytes_read"]["paired"] == [r * record for r in paired]
    assert group.info["bytes_read"]["disk_floor"] == [r * record for r in floor]
    assert group.info["io_mode"] in (diskread.DIRECT, diskread.BUFFERED)


def test_the_gate_trips_on_a_file_cache_that_reads_the_wrong_rows(tmp_path, monkeypatch):
    """A pool file of other weights than the workers' (a stale file): every copied row differs."""
    task = make_group(tmp_path, ["paired"])
    stale = tmp_path / "stale.pool"
    n, h = task["N"], task["hidden"]
    write_pool_file(stale, torch.zeros(n, h), torch.zeros(n, h), torch.zeros(h, n))
    task.update({"tier": "file", "queue_depth": 2, "pool_path": str(stale)})
    with pytest.raises(common.CorrectnessError, match="paired"):
        micro.make_group(task).check()


@pytest.mark.parametrize("args, message", [
    (["--pattern", "trace", "--trace", "x.json"], "--tier file measures synthetic patterns"),
    (["--methods", "torch_delta"], "none applies to --tier file"),
    (["--queue-depth", "0"], "--queue-depth must be >= 1"),
])
def test_bad_file_tier_arguments_are_refused(tmp_path, args, message):
    proc = bench("micro", *TINY_FILE, *args, "--out", str(tmp_path / "x.csv"), check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]


def test_tiers_of_one_run_take_their_own_methods(tmp_path):
    out = tmp_path / "both.csv"
    bench("micro", "--tier", "dram", "file", "--rows", "128", "--m", "32", "--hidden", "16",
          "--steps", "3", "--warm", "--fast", "--quiet", "--k", "4", "--threads", "1",
          "--methods", "paired", "full_reload", "index_select", "--out", str(out))
    frame = pd.read_csv(out)
    got = {(t, m) for t, m in zip(frame["tier"], frame["method"])}
    assert got == {("dram", "paired"), ("dram", "index_select"), ("file", "paired"),
                   ("file", "full_reload")}
    assert (frame[frame["tier"] == "dram"]["io_mode"] == "memory").all()


# ---------------------------------------------------------------------------------------------
# The disk floor's reader
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def small_pool(tmp_path):
    gen = torch.Generator().manual_seed(3)
    n, h = 40, 24
    path = tmp_path / "p.pool"
    write_pool_file(path, torch.randn(n, h, generator=gen), torch.randn(n, h, generator=gen),
                    torch.randn(h, n, generator=gen))
    return path


def test_reader_reads_whole_records_of_the_rows_given(small_pool):
    record = read_header(small_pool).record_bytes
    with diskread.RecordReader(small_pool, queue_depth=3) as reader:
        assert reader.read([5, 0, 39, 7]) == 4 * record
        assert reader.read([]) == 0
        assert reader.bytes_read == 4 * record
        assert reader.io_mode in (diskread.DIRECT, diskread.BUFFERED)
        # each thread's staging buffer holds the last record it read: thread 0 read row 5
        # (rows are dealt round-robin), so its buffer must be record 5 of the file
        reader.read([5])
        with open(small_pool, "rb") as fh:
            fh.seek(reader.header.header_bytes + 5 * record)
            assert bytes(reader._buffers[0][:record]) == fh.read(record)


def test_reader_refuses_bad_rows_and_short_files(small_pool, tmp_path):
    with diskread.RecordReader(small_pool, queue_depth=2) as reader:
        with pytest.raises(IndexError, match="row 40 out of range"):
            reader.read([1, 40])
    with pytest.raises(ValueError, match="queue_depth"):
        diskread.RecordReader(small_pool, queue_depth=0)
    cut = tmp_path / "cut.pool"
    data = small_pool.read_bytes()
    record = read_header(small_pool).record_bytes
    cut.write_bytes(data[: len(data) - record])  # last record gone: refused at open
    with pytest.raises(PoolFileError, match="truncated"):
        diskread.RecordReader(cut, queue_depth=1)
    cut.write_bytes(data)
    with diskread.RecordReader(cut, queue_depth=1) as reader:
        os.truncate(cut, len(data) - record)  # truncated under an open reader
        with pytest.raises(OSError, match="short read of row 39"):
            reader.read([39])


def test_pool_file_for_writes_the_workers_weights_once(tmp_path):
    task = {"N": 32, "hidden": 8, "gate": True, "dtype": "float32", "seed": 5}
    path = micro.pool_file_for(task, tmp_path)
    stamp = os.stat(path).st_mtime_ns
    assert micro.pool_file_for({**task, "k_target": 4}, tmp_path) == path  # shared by every k
    assert os.stat(path).st_mtime_ns == stamp
    gate, up, down = micro.make_weights(task)
    from paired_replacement.pool_file import read_pool_file

    got = read_pool_file(path)
    assert torch.equal(got[0], gate) and torch.equal(got[1], up) and torch.equal(got[2], down)
    assert Path(micro.pool_file_for({**task, "seed": 6}, tmp_path)) != path
