"""micro's file tier (pool in a pool file, packed block in memory) and the disk floor's reader.

Checked against independent counts: the bytes each method reads are the records of the rows it
writes (recomputed here from the masks with plain torch): the paired update's W, the full reload
all m' active ones (when anything changed), the disk floor all m' every step, the disk update
floor the paired update's W (step by step, also in the correctness gate); each method's floor
and efficiency are recomputed from the raw values; the correctness gate covers the file methods;
bad arguments are refused with the argument named. The independent reader's engines (native AIO,
threads) are checked byte for byte against plain file reads. No timing is asserted.
"""

from __future__ import annotations

import ctypes
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


def test_file_tier_rows_validate_and_say_how_the_disk_was_read(file_csv, auto_engine):
    frame = common.validate_csv(file_csv, "micro")
    assert set(frame["method"]) == set(micro.FILE_METHODS)
    assert (frame["tier"] == "file").all() and (frame["queue_depth"] == 4).all()
    assert set(frame["io_mode"]) <= {diskread.DIRECT, diskread.BUFFERED}
    assert set(frame["role"]) == {"headline", "baseline", "floor"}
    # every file row names the engine of its floor's reader: this host's (auto) engine
    assert set(frame["floor_engine"]) == {auto_engine}
    # the pool files are the run's scratch: gone after it
    assert not file_csv.with_name("micro_file.pools").exists()


@pytest.fixture(scope="module")
def auto_engine(tmp_path_factory) -> str:
    """The engine a RecordReader picks on this host (``engine="auto"``)."""
    path = tmp_path_factory.mktemp("probe") / "p.pool"
    write_pool_file(path, torch.zeros(4, 8), torch.zeros(4, 8), torch.zeros(8, 4))
    with diskread.RecordReader(path, queue_depth=2) as reader:
        return reader.engine


def _expected_rows(seq: torch.Tensor) -> tuple[list[int], list[int], list[int]]:
    """Rows read per step of the walk: by the paired update (an independent count: |added| when
    m is fixed; the disk update floor reads the same), by a full reload (every active row, when
    anything changed) and by the disk floor (every active row)."""
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
        for method in ("paired", "paired_indices", "disk_update_floor"):
            assert by.loc[method, "slow_bytes_read_mean"] == pytest.approx(want_paired), method
        assert by.loc["full_reload", "slow_bytes_read_mean"] == pytest.approx(want_full)
        assert by.loc["disk_floor", "slow_bytes_read_mean"] == pytest.approx(
            sum(floor) / len(floor) * record)
        for method in ("disk_floor", "disk_update_floor"):  # floors have no floor
            assert by.loc[method, "floor_method"] == "none"
            assert pd.isna(by.loc[method, "efficiency_vs_floor"])
        # paired's floor: the disk's time for its own records (the update floor), unless the
        # reader ran on threads (a small batch would time the threads): the big batch, scaled
        aio = by.loc["disk_update_floor", "floor_engine"] == diskread.AIO
        paired_floor = "disk_update_floor" if aio else "disk_floor"
        if want_paired:
            assert by.loc["paired", "bytes_ratio_vs_full_reload"] == pytest.approx(
                want_full / want_paired)
            raw = _raw_values(file_csv)
            for method, floor_method, want in (("paired", paired_floor, want_paired),
                                               ("paired_indices", paired_floor, want_paired),
                                               ("full_reload", "disk_floor", want_full)):
                assert by.loc[method, "floor_method"] == floor_method, method
                assert by.loc[method, "floor_engine"] == by.loc[floor_method, "floor_engine"]
                # efficiency: the floor's time, scaled to this method's bytes (1 for the same
                # records), over its time, recomputed from the raw values round by round
                mine = np.concatenate(raw[f"{method}/{chash}"])
                theirs = np.concatenate(raw[f"{floor_method}/{chash}"])
                scale = want / by.loc[floor_method, "slow_bytes_read_mean"]
                if floor_method == DISK_FLOORS_OWN[method]:
                    assert scale == pytest.approx(1.0), method
                assert by.loc[method, "efficiency_vs_floor"] == pytest.approx(
                    float(np.median(theirs / mine)) * scale, rel=1e-9), method
            assert by.loc["paired", "read_mbps"] > 0
        else:  # k = 0: nothing to read, no ratio, no efficiency
            assert pd.isna(by.loc["paired", "bytes_ratio_vs_full_reload"])
            assert pd.isna(by.loc["paired", "efficiency_vs_floor"])


DISK_FLOORS_OWN = {"paired": "disk_update_floor", "paired_indices": "disk_update_floor",
                   "full_reload": "disk_floor"}


@pytest.mark.parametrize("engines, present, want", [
    ({"disk_update_floor": diskread.AIO, "disk_floor": diskread.AIO},
     {"paired", "disk_floor", "disk_update_floor", "full_reload"},
     {"paired": "disk_update_floor", "full_reload": "disk_floor", "disk_floor": None,
      "disk_update_floor": None}),
    # the thread engine cannot time a small batch: the big batch (scaled) instead
    ({"disk_update_floor": diskread.THREADS, "disk_floor": diskread.THREADS},
     {"paired", "disk_floor", "disk_update_floor", "full_reload"},
     {"paired": "disk_floor", "paired_indices": "disk_floor", "full_reload": "disk_floor"}),
    # a floor not measured: the other
    ({"disk_floor": diskread.AIO}, {"paired", "disk_floor"}, {"paired": "disk_floor"}),
    ({"disk_update_floor": diskread.AIO}, {"full_reload", "disk_update_floor"},
     {"full_reload": "disk_update_floor"}),
    ({"disk_update_floor": diskread.THREADS}, {"paired", "disk_update_floor"}, {"paired": None}),
    ({}, {"paired", "full_reload"}, {"paired": None, "full_reload": None}),
])
def test_file_floors_are_the_disks_time_for_the_same_records(engines, present, want):
    results = {name: None for name in present}
    for method, floor in want.items():
        assert micro.floor_of(method, results, "file", engines) == floor, method


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
    assert group.info["bytes_read"]["disk_update_floor"] == [r * record for r in paired]
    assert group.info["bytes_read"]["disk_floor"] == [r * record for r in floor]
    assert group.info["io_mode"] in (diskread.DIRECT, diskread.BUFFERED)
    assert set(group.info["reader_engine"]) == {"disk_floor", "disk_update_floor"}
    assert set(group.info["reader_engine"].values()) <= {diskread.AIO, diskread.THREADS}


@pytest.mark.parametrize("pattern", ["uniform", "clustered", "sticky"])
def test_the_update_floor_reads_the_paired_updates_records(tmp_path, pattern):
    """Row by row: at every step of the walk (two cycles, as the timing goes on) the update
    floor reads exactly the rows that enter the mask (m is fixed: the paired update writes just
    those), as many bytes as a paired cache on the same file reads at that step, in as many
    reads (records of consecutive rows together, as the cache reads them)."""
    task = make_group(tmp_path, ["paired", "disk_update_floor"], pattern=pattern, n=256,
                      m=96, k=24)
    task.update({"tier": "file", "queue_depth": 3})
    task["pool_path"] = str(micro.pool_file_for(task, tmp_path / "pools"))
    group = micro.make_group(task)
    seq = group.shared.seq
    paired, floor = group.methods["paired"], group.methods["disk_update_floor"]
    seen: list[list[int]] = []
    read_runs = floor.reader.read_runs
    floor.reader.read_runs = lambda runs: (
        seen.append([first + j for first, count in runs for j in range(count)]),
        read_runs(runs))[1]
    current, joined = 0, 0
    for target in micro.walk(len(seq)) * 2:
        reads = (paired.cache.tier_info.reads, floor.reader.reads)
        paired.step(target)
        floor.step(target)
        assert seen[-1] == (seq[target] & ~seq[current]).nonzero().squeeze(1).tolist()
        assert floor.bytes_read() == paired.bytes_read() == len(seen[-1]) * floor.reader.record
        assert floor.rows_written() == paired.rows_written()
        assert floor.reader.reads - reads[1] == paired.cache.tier_info.reads - reads[0]
        joined += len(seen[-1]) - (floor.reader.reads - reads[1])
        current = target
    if pattern == "clustered":  # the case the runs are for: consecutive rows were joined
        assert joined > 0


def test_the_gate_trips_on_an_update_floor_that_reads_other_records(tmp_path, monkeypatch):
    task = make_group(tmp_path, ["paired", "disk_update_floor"])
    task.update({"tier": "file", "queue_depth": 2})
    task["pool_path"] = str(micro.pool_file_for(task, tmp_path / "pools"))
    real = micro.paired_reads
    monkeypatch.setattr(micro, "paired_reads",
                        lambda t, seq: [(target, rows[:-1]) for target, rows in real(t, seq)])
    with pytest.raises(common.CorrectnessError, match="disk_update_floor read"):
        micro.make_group(task).check()


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


def _aio_works(path) -> bool:
    try:
        diskread.RecordReader(path, queue_depth=1, engine="aio").close()
        return True
    except diskread.AioUnavailableError:
        return False


@pytest.fixture(params=["aio", "threads"])
def engine(request, small_pool):
    if request.param == "aio" and not _aio_works(small_pool):
        pytest.skip("Linux native AIO is not available here")
    return request.param


def _records(path, rows) -> dict[int, bytes]:
    """The records of ``rows`` read with plain buffered file reads."""
    header = read_header(path)
    with open(path, "rb") as fh:
        out = {}
        for row in rows:
            fh.seek(header.header_bytes + row * header.record_bytes)
            out[row] = fh.read(header.record_bytes)
    return out


@pytest.mark.parametrize("queue_depth", [1, 3, 16])
@pytest.mark.parametrize("max_read_bytes", [0, 3 * 4096, diskread.MAX_READ_BYTES])
def test_reader_reads_whole_records_of_the_rows_given(small_pool, engine, queue_depth,
                                                     max_read_bytes):
    """Every record that arrives is the file's record of its row, byte for byte (fewer rows than
    the queue depth, more, every row of the file, a row twice; one record per read, or runs of
    consecutive records), in the reads planned (runs of at most max_read_bytes)."""
    record = read_header(small_pool).record_bytes
    with diskread.RecordReader(small_pool, queue_depth=queue_depth, engine=engine,
                               max_read_bytes=max_read_bytes) as reader:
        assert reader.run_records == max(1, max_read_bytes // record)
        assert reader.engine == (diskread.AIO if engine == "aio" else diskread.THREADS)
        assert reader.io_mode in (diskread.DIRECT, diskread.BUFFERED)
        want = _records(small_pool, range(40))
        total = reads = 0
        for rows in ([5, 0, 39, 7], list(range(39, -1, -1)), [12, 12, 3], [17], [8, 6, 7, 9]):
            reads += len(reader.plan(rows))
            got: list[tuple[int, bytes]] = []
            assert reader.read(rows, hook=lambda row, data: got.append((row, bytes(data)))) \
                == len(rows) * record
            total += len(rows) * record
            assert sorted(row for row, _ in got) == sorted(rows)
            for row, data in got:
                assert data == want[row], row
        assert reader.read([]) == 0
        assert reader.bytes_read == total and reader.reads == reads


def test_reads_are_planned_as_the_cache_plans_them():
    """Rows in row order, consecutive ones joined into runs of at most run_records (the
    cache's F6; a row given twice is read twice)."""
    assert diskread.plan_runs([5, 3, 4, 9, 10, 11, 12, 1, 12], 2) == [
        (1, 1), (3, 2), (5, 1), (9, 2), (11, 2), (12, 1)]
    assert diskread.plan_runs([4, 3, 2, 1, 0], 8) == [(0, 5)]
    assert diskread.plan_runs([4, 3, 2, 1, 0], 1) == [(r, 1) for r in range(5)]
    assert diskread.plan_runs([], 4) == []


def test_reader_refuses_bad_rows_and_short_files(small_pool, tmp_path, engine):
    with diskread.RecordReader(small_pool, queue_depth=2, engine=engine) as reader:
        with pytest.raises(IndexError, match="row 40 out of range"):
            reader.read([1, 40])
        with pytest.raises(IndexError, match="row -1 out of range"):
            reader.read([-1])
        assert reader.bytes_read == 0
    with pytest.raises(ValueError, match="queue_depth"):
        diskread.RecordReader(small_pool, queue_depth=0, engine=engine)
    cut = tmp_path / "cut.pool"
    data = small_pool.read_bytes()
    record = read_header(small_pool).record_bytes
    cut.write_bytes(data[: len(data) - record])  # last record gone: refused at open
    with pytest.raises(PoolFileError, match="truncated"):
        diskread.RecordReader(cut, queue_depth=1, engine=engine)
    cut.write_bytes(data)
    with diskread.RecordReader(cut, queue_depth=3, engine=engine) as reader:
        os.truncate(cut, len(data) - 2 * record)  # truncated under an open reader
        with pytest.raises(OSError, match="short read of row 39"):
            reader.read([39])
        with pytest.raises(OSError, match="short read of row 38"):
            reader.read([1, 2, 38, 3, 4, 5])  # the other reads complete first (drained)
        # still usable after the error: nothing of the failed batch is left in flight
        got = []
        assert reader.read([1, 2], hook=lambda row, d: got.append((row, bytes(d)))) == 2 * record
        assert dict(got) == _records(small_pool, [1, 2])


def test_reader_close_twice_and_read_after_close(small_pool, engine):
    reader = diskread.RecordReader(small_pool, queue_depth=2, engine=engine)
    reader.close()
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read([0])
    with diskread.RecordReader(small_pool, queue_depth=2, engine=engine) as reader:
        reader.read([0, 1])
    reader.close()  # after the context manager's


def test_forced_aio_where_it_is_unavailable_is_refused_auto_falls_back(small_pool, monkeypatch):
    with pytest.raises(ValueError, match="engine must be one of"):
        diskread.RecordReader(small_pool, engine="io_uring")
    # a machine without known system call numbers
    monkeypatch.setattr(diskread.platform, "machine", lambda: "mips64")
    with pytest.raises(diskread.AioUnavailableError, match="engine='aio'.*'mips64'"):
        diskread.RecordReader(small_pool, queue_depth=2, engine="aio")
    with diskread.RecordReader(small_pool, queue_depth=2) as reader:
        assert reader.engine == diskread.THREADS and "mips64" in reader.engine_note
        assert reader.read([3]) == reader.record
    monkeypatch.undo()
    # io_setup refused (here: a system call number the kernel does not have: ENOSYS)
    machine = diskread.platform.machine()
    if machine not in diskread.AIO_SYSCALLS:
        pytest.skip(f"no native AIO numbers for {machine}")
    monkeypatch.setitem(diskread.AIO_SYSCALLS, machine,
                        (100000, *diskread.AIO_SYSCALLS[machine][1:]))
    with pytest.raises(diskread.AioUnavailableError, match="engine='aio': io_setup"):
        diskread.RecordReader(small_pool, queue_depth=2, engine="aio")
    with diskread.RecordReader(small_pool, queue_depth=2, engine="auto") as reader:
        assert reader.engine == diskread.THREADS and "io_setup" in reader.engine_note
        assert reader.read([3, 4]) == 2 * reader.record


def test_aio_structures_match_linux_aio_abi():
    """struct iocb and struct io_event as linux/aio_abi.h lays them out (x86_64/aarch64)."""
    iocb = diskread._IOCB
    offsets = {name: getattr(iocb, name).offset for name, _ in iocb._fields_}
    assert offsets == {"aio_data": 0, "aio_key": 8, "aio_rw_flags": 12, "aio_lio_opcode": 16,
                       "aio_reqprio": 18, "aio_fildes": 20, "aio_buf": 24, "aio_nbytes": 32,
                       "aio_offset": 40, "aio_reserved2": 48, "aio_flags": 56, "aio_resfd": 60}
    assert ctypes.sizeof(iocb) == 64 and ctypes.sizeof(diskread._IOEvent) == 32
    assert diskread._IOEvent.res.offset == 16


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
