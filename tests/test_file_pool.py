"""The file tier: pool files (one record per neuron on disk) and caches that read their rows from
one with direct I/O. Every check compares with an in-memory cache built from the same weights or
with the weights themselves, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from paired_replacement import WeightCache
from paired_replacement.pool_file import (ALIGN, MAX_READ_BYTES, PoolFileError, main,
                                          read_header, read_pool_file, write_pool_file)


ENGINES = ("aio", "threads")  # file_pool.hpp F7: the same reads from either engine
AIO = "linux-aio"


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch):
    """Each test that takes it runs once per read engine (PAIRED_REPLACEMENT_IO_ENGINE); the
    AIO run is skipped where this kernel has no native AIO."""
    if request.param == "aio" and not sys.platform.startswith("linux"):
        pytest.skip("Linux native AIO needs Linux")
    monkeypatch.setenv("PAIRED_REPLACEMENT_IO_ENGINE", request.param)
    return request.param


def _check_engine(cache, engine):
    info = cache.tier_info
    if engine == "threads":
        assert info.io_engine == "threads"
    else:
        assert info.io_engine == AIO


def _weights(n=96, h=40, dtype=torch.float32, gate=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, h, generator=gen).to(dtype) if gate else None
    return g, torch.randn(n, h, generator=gen).to(dtype), torch.randn(h, n, generator=gen).to(dtype)


def _masks(n, steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    density = torch.rand(steps, generator=gen) * 0.9
    return [torch.rand(n, generator=gen) < float(d) for d in density]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("gate", [True, False])
def test_pool_file_round_trip_is_bit_exact(tmp_path, dtype, gate):
    g, u, d = _weights(dtype=dtype, gate=gate)
    header = write_pool_file(tmp_path / "p.pool", g, u, d)
    assert header.record_bytes % ALIGN == 0 and header.rows == 96
    size = (tmp_path / "p.pool").stat().st_size
    assert size == header.header_bytes + 96 * header.record_bytes
    g2, u2, d2 = read_pool_file(tmp_path / "p.pool")
    assert (g2 is None) == (not gate)
    if gate:
        assert torch.equal(g2.view(torch.uint8), g.view(torch.uint8))
    assert torch.equal(u2.view(torch.uint8), u.view(torch.uint8))
    assert torch.equal(d2.view(torch.uint8), d.view(torch.uint8))
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left


@pytest.mark.parametrize("hidden, scatter", [(1024, True), (1000, False)])
def test_reads_straight_into_the_packed_slots_where_aligned(tmp_path, engine, hidden, scatter):
    """Rows of 4 KiB multiples (hidden 1024 fp32: gate|up 8 KiB, down 4 KiB, no record padding)
    are read straight into their packed slots, no staging copy (file_pool.hpp F5); hidden 1000
    goes through the staging record. Both give the in-memory cache's block bit for bit."""
    n = 512  # packed blocks of >= 1 MiB: page-aligned mappings
    g, u, d = _weights(n=n, h=hidden, seed=4)
    header = write_pool_file(tmp_path / "p.pool", g, u, d)
    assert (header.record_bytes == 3 * hidden * 4) == scatter
    masks = _masks(n, 6, seed=5)
    memory = WeightCache(masks[0], hidden, g, u, d, hybrid_tau_frac=2.0)
    tiered = WeightCache.from_pool_file(tmp_path / "p.pool", masks[0], queue_depth=3)
    _check_engine(tiered, engine)
    if not tiered.tier_info.direct_io:
        pytest.skip("this file system refuses O_DIRECT: no direct scatter reads")
    written = int(masks[0].sum())  # the initial fill
    for mask in masks[1:]:
        memory.update_active_weights(mask)
        tiered.update_active_weights(mask)
        written += tiered.last_update_stats().rows_written
        assert torch.equal(tiered.get_concat_weight().view(torch.int32),
                           memory.get_concat_weight().view(torch.int32))
        assert torch.equal(tiered.get_active_down_weight().view(torch.int32),
                           memory.get_active_down_weight().view(torch.int32))
    # (check_invariants' own reads go to scratch rows through the staging record)
    assert tiered.tier_info.scatter_reads == (written if scatter else 0)
    tiered.check_invariants()


def _runs(rows, run_records):
    """Reads a fetch of ``rows`` should take (file_pool.hpp F6), counted independently: the rows
    in order, split where a row is not the previous one + 1 or a run is full."""
    runs, last, length = 0, None, 0
    for r in sorted(int(x) for x in rows):
        if last is not None and r == last + 1 and length < run_records:
            length += 1
        else:
            runs, length = runs + 1, 1
        last = r
    return runs


def test_the_read_cap_is_the_cores():
    from paired_replacement._extension import build_info

    assert int(build_info()["pool_file_max_read_bytes"]) == MAX_READ_BYTES


@pytest.mark.parametrize("hidden, scatter", [(1024, True), (1000, False), (8192, True)])
def test_adjacent_records_are_read_together(tmp_path, engine, hidden, scatter):
    """Consecutive rows of one fetch are read with one read per run of at most MAX_READ_BYTES
    (F6): the initial fill of a mask of blocks, a paired update adding a block, and a full
    rebuild each issue as many reads as there are runs, move exactly the records' bytes, and
    give the in-memory cache's block bit for bit -- on the direct path into the slots and on the
    staging path. hidden 8192 fp32 makes a record (96 KiB) larger than half the cap: runs of 1."""
    n = 256
    g, u, d = _weights(n=n, h=hidden, seed=7)
    header = write_pool_file(tmp_path / "p.pool", g, u, d)
    assert (header.record_bytes == 3 * hidden * 4) == scatter
    run_records = max(1, MAX_READ_BYTES // header.record_bytes)
    first = torch.zeros(n, dtype=torch.bool)
    for a, b in [(3, 40), (41, 42), (100, 101), (130, 150), (255, 256)]:
        first[a:b] = True
    second = first.clone()
    second[3:10] = False  # freed slots for the new rows
    second[60:66] = True   # a run of 6
    second[70] = True      # a single row
    memory = WeightCache(first, hidden, g, u, d, hybrid_tau_frac=2.0)
    tiered = WeightCache.from_pool_file(tmp_path / "p.pool", first, queue_depth=4)
    rebuilt = WeightCache.from_pool_file(tmp_path / "p.pool", first, queue_depth=4,
                                         hybrid_tau_frac=0.0)
    _check_engine(tiered, engine)
    _check_engine(rebuilt, engine)

    def reads(cache):
        return cache.tier_info.reads

    assert reads(tiered) == _runs(first.nonzero().squeeze(1), run_records)
    assert tiered.tier_info.bytes_read == int(first.sum()) * header.record_bytes
    before = reads(tiered), tiered.tier_info.bytes_read
    memory.update_active_weights(second)
    tiered.update_active_weights(second)
    added = (second & ~first).nonzero().squeeze(1)
    assert reads(tiered) - before[0] == _runs(added, run_records)
    assert tiered.tier_info.bytes_read - before[1] == added.numel() * header.record_bytes
    before = reads(rebuilt)
    rebuilt.update_active_weights(second)
    assert reads(rebuilt) - before == _runs(second.nonzero().squeeze(1), run_records)
    want = dict(zip(memory.active_indices().tolist(), memory.get_concat_weight()))
    for cache in (tiered, rebuilt):
        got = dict(zip(cache.active_indices().tolist(), cache.get_concat_weight()))
        assert got.keys() == want.keys()
        for row, packed in got.items():
            assert torch.equal(packed.view(torch.int32), want[row].view(torch.int32)), row
        down = cache.get_active_down_weight()
        assert torch.equal(down.view(torch.int32),
                           d[:, cache.active_indices()].view(torch.int32))
        cache.check_invariants()
    if tiered.tier_info.direct_io and scatter:
        assert tiered.tier_info.scatter_reads > 0


def test_a_run_with_a_lost_record_names_that_record(tmp_path, engine):
    """A run read that comes back short (the file ends inside it) is read again record by
    record: the error names the first row that is really gone, not the run's first row."""
    g, u, d = _weights()
    path = tmp_path / "p.pool"
    header = write_pool_file(path, g, u, d)
    cache = WeightCache.from_pool_file(path, torch.zeros(96, dtype=torch.bool))
    _check_engine(cache, engine)
    os.truncate(path, header.header_bytes + 45 * header.record_bytes)  # rows >= 45 are gone
    want = torch.zeros(96, dtype=torch.bool)
    want[40:50] = True  # one run: 40..44 readable, 45.. not
    with pytest.raises(RuntimeError, match=r"reading row 45 failed"):
        cache.update_active_weights(want)
    assert cache.num_active == 0
    cache.check_invariants()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("gate", [True, False])
@pytest.mark.parametrize("tau", [2.0, 0.5, 0.0])
def test_file_cache_equals_the_in_memory_cache(tmp_path, engine, dtype, gate, tau):
    """Same bookkeeping, rows from the file: after every update the packed rows, their order,
    the stats equal the in-memory cache's, and the bytes read are exactly the records of the rows
    written."""
    g, u, d = _weights(n=200, h=48, dtype=dtype, gate=gate)
    header = write_pool_file(tmp_path / "p.pool", g, u, d)
    masks = _masks(200, 25)
    memory = WeightCache(masks[0], 48, g, u, d, hybrid_tau_frac=tau)
    tiered = WeightCache.from_pool_file(tmp_path / "p.pool", masks[0], hybrid_tau_frac=tau,
                                        queue_depth=4)
    _check_engine(tiered, engine)
    info = tiered.tier_info
    assert info.tier == "file" and info.path == str(tmp_path / "p.pool") and info.queue_depth == 4
    assert info.bytes_read == int(masks[0].sum()) * header.record_bytes
    assert memory.tier_info.tier == "dram"
    for step, mask in enumerate(masks[1:]):
        if step % 3 == 2:  # also the index path
            added = (mask & ~tiered.mask).nonzero().squeeze(1)
            removed = (~mask & tiered.mask).nonzero().squeeze(1)
            memory.update_from_indices(added, removed)
            tiered.update_from_indices(added, removed)
        else:
            memory.update_active_weights(mask)
            tiered.update_active_weights(mask)
        stats = tiered.last_update_stats()
        assert stats == memory.last_update_stats()
        assert torch.equal(tiered.active_indices(), memory.active_indices())
        assert torch.equal(tiered.get_concat_weight().view(torch.uint8) if dtype == torch.float32
                           else tiered.get_concat_weight().view(torch.int16),
                           memory.get_concat_weight().view(torch.uint8) if dtype == torch.float32
                           else memory.get_concat_weight().view(torch.int16))
        assert torch.equal(tiered.get_active_down_weight().float(),
                           memory.get_active_down_weight().float())
        work = tiered.last_update_work()
        assert work.slow_bytes_read == stats.rows_written * header.record_bytes
        assert memory.last_update_work().slow_bytes_read == 0
    tiered.check_invariants()
    full = u if g is None else torch.cat([g, u], 1)
    assert torch.equal(tiered.get_concat_weight().float(),
                       full.index_select(0, tiered.active_indices()).float())


def test_file_cache_has_no_pool_in_memory_and_never_rebuilds_by_default(tmp_path):
    g, u, d = _weights()
    write_pool_file(tmp_path / "p.pool", g, u, d)
    cache = WeightCache.from_pool_file(tmp_path / "p.pool", torch.zeros(96, dtype=torch.bool))
    assert cache.hybrid_tau_frac == 2.0  # a rebuild would re-read every active record
    mask = torch.zeros(96, dtype=torch.bool)
    mask[:90] = True
    cache.update_active_weights(mask)
    mask[:90] = False
    mask[90:] = True
    cache.update_active_weights(mask)
    assert cache.last_update_stats().path == "paired"
    for getter in (cache.pool_concat_weight, cache.pool_down_weight_t):
        with pytest.raises(RuntimeError, match="pool file .*p.pool .*on disk"):
            getter()
    assert "pool file" in repr(cache)


_RESIDENT = r"""
import sys, torch
from paired_replacement import WeightCache
def rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("VmRSS:"))
n = 8192
mask = torch.zeros(n, dtype=torch.bool)
mask[:64] = True
before = rss()
cache = WeightCache.from_pool_file(sys.argv[1], mask)
mask[:1024] = True
cache.update_active_weights(mask)
print(before, rss(), cache.tier_info.bytes_read)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_file_cache_memory_is_the_packed_rows_not_the_pool(tmp_path):
    """A 96 MiB pool on disk, 1024 rows active: resident memory grows by about the 1024 packed
    rows (12 MiB), never by the pool (checked in a fresh process: RSS is per process)."""
    g, u, d = _weights(n=8192, h=1024)
    header = write_pool_file(tmp_path / "big.pool", g, u, d)
    del g, u, d
    out = subprocess.run([sys.executable, "-c", _RESIDENT, str(tmp_path / "big.pool")],
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    before, after, read = map(int, out)
    packed_kib = 1024 * 3 * 1024 * 4 // 1024
    pool_kib = 8192 * 3 * 1024 * 4 // 1024
    assert read == 1024 * header.record_bytes
    assert after - before < packed_kib + pool_kib // 4, (before, after)


def test_damaged_pool_files_are_named(tmp_path):
    g, u, d = _weights()
    path = tmp_path / "p.pool"
    write_pool_file(path, g, u, d)
    good = path.read_bytes()
    mask = torch.zeros(96, dtype=torch.bool)
    cases = {
        "truncated": good[:-1],
        "not a pool file": b"XXXXXXXX" + good[8:],
        "damaged header": good[:20] + bytes([good[20] ^ 1]) + good[21:],
        "shorter than a header": good[:50],
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(PoolFileError, match=what):
            read_header(path)
        with pytest.raises(RuntimeError, match=f"pool file .*p.pool: {what}"):
            WeightCache.from_pool_file(path, mask)
    with pytest.raises(RuntimeError, match="cannot open"):
        WeightCache.from_pool_file(tmp_path / "missing.pool", mask)
    path.write_bytes(good)
    with pytest.raises(ValueError, match="mask must have N = 96 entries"):
        WeightCache.from_pool_file(path, torch.zeros(95, dtype=torch.bool))
    with pytest.raises(ValueError, match="queue_depth must be in"):
        WeightCache.from_pool_file(path, mask, queue_depth=0)
    with pytest.raises(ValueError, match="down must be"):
        write_pool_file(tmp_path / "bad.pool", g, u, d[:, :10])
    assert not (tmp_path / "bad.pool").exists()


def test_the_engine_variable_is_checked_and_the_default_is_aio_on_linux(tmp_path, monkeypatch):
    g, u, d = _weights()
    write_pool_file(tmp_path / "p.pool", g, u, d)
    mask = torch.zeros(96, dtype=torch.bool)
    monkeypatch.setenv("PAIRED_REPLACEMENT_IO_ENGINE", "uring")
    with pytest.raises(ValueError, match="PAIRED_REPLACEMENT_IO_ENGINE must be auto, threads or "
                                         "aio, got 'uring'"):
        WeightCache.from_pool_file(tmp_path / "p.pool", mask)
    monkeypatch.delenv("PAIRED_REPLACEMENT_IO_ENGINE")
    cache = WeightCache.from_pool_file(tmp_path / "p.pool", mask)
    if sys.platform.startswith("linux") and cache.tier_info.direct_io:
        assert cache.tier_info.io_engine == AIO
    else:
        assert cache.tier_info.io_engine == "threads"


def test_a_read_error_resets_the_cache_and_a_later_update_recovers(tmp_path, engine):
    """The file shrinks under an open cache: the update that needs a lost record raises naming
    the file and the row, the cache is left with no active row (valid), and once the file is
    whole again the same update succeeds."""
    g, u, d = _weights()
    path = tmp_path / "p.pool"
    write_pool_file(path, g, u, d)
    good = path.read_bytes()
    first = torch.zeros(96, dtype=torch.bool)
    first[:10] = True
    cache = WeightCache.from_pool_file(path, first)
    _check_engine(cache, engine)
    header = read_header(path)
    os.truncate(path, header.header_bytes + 50 * header.record_bytes)  # rows >= 50 are gone
    want = first.clone()
    want[60] = True
    with pytest.raises(RuntimeError, match=r"p.pool: reading row 60 failed .*reset to no active"):
        cache.update_active_weights(want)
    assert cache.num_active == 0 and not cache.mask.any()
    cache.check_invariants()
    path.write_bytes(good)
    cache.update_active_weights(want)
    assert torch.equal(cache.active_indices().sort().values, want.nonzero().squeeze(1))
    cache.check_invariants()
    # the index path says the same
    os.truncate(path, header.header_bytes + 50 * header.record_bytes)
    with pytest.raises(RuntimeError, match=r"reading row 70 failed .*reset to no active"):
        cache.update_from_indices(torch.tensor([70]), torch.tensor([], dtype=torch.long))
    assert cache.num_active == 0
    cache.check_invariants()


def test_cli_writes_and_describes_a_pool_file(tmp_path, capsys):
    g, u, d = _weights(n=32, h=16)
    torch.save({"gate": g, "up": u, "down": d}, tmp_path / "w.pt")
    assert main(["write", "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "a.pool")]) == 0
    g2, u2, d2 = read_pool_file(tmp_path / "a.pool")
    assert torch.equal(g2, g) and torch.equal(u2, u) and torch.equal(d2, d)
    assert main(["write", "--random", "64", "24", "--no-gate", "--dtype", "float16", "--out",
                 str(tmp_path / "r.pool")]) == 0
    assert main(["info", str(tmp_path / "r.pool")]) == 0
    assert "N=64 gate=0 up=24 hidden=24 dtype=float16" in capsys.readouterr().out
    torch.save({"up": u}, tmp_path / "bad.pt")
    assert main(["write", "--weights", str(tmp_path / "bad.pt"), "--out", str(tmp_path / "b.pool")]) == 2
    assert "must hold a dict with 'up' and 'down'" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing.pool")]) == 1
    assert "missing" in capsys.readouterr().err
