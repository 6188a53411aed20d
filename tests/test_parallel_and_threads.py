"""The row copies really run on torch's threads, and two Python threads on one cache get an error.

* Parallelism is measured, not read from the code: per-thread CPU time (``/proc/self/task``)
  of large updates at 1 and 2 torch threads, and the core's count of the parallel copy tasks it
  ran (``last_update_work().copy_tasks``). A library built without torch's parallel backend
  (``-fopenmp``) runs every copy on the calling thread and fails these tests.
* Concurrency: the torch dispatcher releases the GIL, so two threads can be inside one cache at
  once. That must raise ``RuntimeError`` naming the problem, never corrupt the heap; the checks run
  in a child process so that a crash shows up as a failed test with its output.
* Work counts: an index update whose hybrid rebuild fires reads no mask word, whatever N.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from paired_replacement import WeightCache, load_extension
from paired_replacement._extension import build_info
from paired_replacement.bench.hostinfo import thread_cpu_ns

load_extension()

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def threads():
    old = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def big_cache():
    """N = 4096 rows of 2 x 2048 + 2048 float32 (24 KiB per row): 96 MiB of pools."""
    n, hidden = 4096, 2048
    gen = torch.Generator().manual_seed(0)
    gate, up = torch.randn(n, hidden, generator=gen), torch.randn(n, hidden, generator=gen)
    down = torch.randn(hidden, n, generator=gen)
    mask_a = torch.zeros(n, dtype=torch.bool)
    mask_a[: n // 2] = True
    mask_b = mask_a.clone()
    mask_b[: n // 4] = False
    mask_b[n // 2: 3 * n // 4] = True  # 1024 rows swapped: 24 MiB written per update
    cache = WeightCache(mask_a, hidden, gate, up, down, grain=1, par_threshold=1, hybrid_tau_frac=2.0)
    return cache, mask_a, mask_b, torch.cat([gate, up], 1), down


def _busy_threads(cache, mask_a, mask_b, rounds=6):
    before = thread_cpu_ns()
    for _ in range(rounds):
        cache.update_active_weights(mask_b)
        cache.update_active_weights(mask_a)
    after = thread_cpu_ns()
    used = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    return used, cache.last_update_work().copy_tasks


def test_library_is_built_with_torchs_parallel_backend():
    backend = torch.__config__.parallel_info()
    info = build_info()
    if "ATen parallel backend: OpenMP" in backend:
        assert info["parallel"] == "openmp", info
        assert "-fopenmp" in info["flags"], info
    assert not info["parallel"].startswith("serial"), info


def test_two_threads_share_a_large_update(big_cache, threads):
    cache, mask_a, mask_b, full, down = big_cache
    threads(2)
    used, tasks = _busy_threads(cache, mask_a, mask_b)
    assert tasks == 2, f"the last update ran {tasks} copy task(s) with 2 torch threads"
    # each of the two threads copied about half of the rows (OpenMP workers also spin a little
    # after a region, which only adds to the second thread's time)
    assert used[1] >= 0.25 * used[0], f"per-thread CPU ns: {used[:4]}"
    assert torch.equal(cache.get_concat_weight(), full.index_select(0, cache.active_indices()))
    assert torch.equal(cache.get_active_down_weight(), down.index_select(1, cache.active_indices()))


def test_one_thread_means_one_thread(big_cache, threads):
    cache, mask_a, mask_b, full, _ = big_cache
    threads(1)
    time.sleep(0.3)  # let OpenMP workers of earlier tests stop spinning
    used, tasks = _busy_threads(cache, mask_a, mask_b)
    assert tasks == 1
    assert used[1] <= 0.1 * used[0], f"per-thread CPU ns at 1 thread: {used[:4]}"
    assert torch.equal(cache.get_concat_weight(), full.index_select(0, cache.active_indices()))


def test_hybrid_rebuild_copies_in_parallel_too(big_cache, threads):
    cache, mask_a, mask_b, full, down = big_cache
    threads(2)
    cache.hybrid_tau_frac = 0.0
    try:
        cache.update_active_weights(mask_b)
        assert cache.last_update_stats().path == "rebuild"
        assert cache.last_update_work().copy_tasks == 2
        assert torch.equal(cache.get_concat_weight(), full.index_select(0, cache.active_indices()))
        assert torch.equal(cache.get_active_down_weight(), down.index_select(1, cache.active_indices()))
        cache.check_invariants()
    finally:
        cache.hybrid_tau_frac = 2.0
        cache.update_active_weights(mask_a)


@pytest.mark.parametrize("threshold,grain,rows,expect", [(65, 1, 64, 1), (64, 1, 64, 2), (1, 64, 64, 1),
                                                         (1, 32, 64, 2)])
def test_par_threshold_and_grain_decide_the_split(threads, threshold, grain, rows, expect):
    """Below par_threshold the copy stays on the caller; a grain >= the rows makes one task."""
    threads(2)
    n, hidden = 256, 8
    mask = torch.zeros(n, dtype=torch.bool)
    cache = WeightCache(mask, hidden, torch.randn(n, hidden), torch.randn(n, hidden),
                        torch.randn(hidden, n), grain=grain, par_threshold=threshold)
    cache.update_from_indices(torch.arange(rows), torch.empty(0, dtype=torch.int64))
    assert cache.last_update_stats().rows_written == rows
    assert cache.last_update_work().copy_tasks == expect


# --------------------------------------------------------------------------------------------
# work counts (item: no O(N) rebuild on the index path)
# --------------------------------------------------------------------------------------------


def test_index_update_rebuild_reads_no_mask_word_at_large_n():
    n = 1 << 20
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[5, 77_777]] = True
    cache = WeightCache(mask, 1, None, torch.randn(n, 1), torch.randn(1, n), hybrid_tau_frac=0.0)
    cache.update_from_indices([999_999], [5])  # 1 in, 1 out at m = 2: the rebuild fires
    stats, work = cache.last_update_stats(), cache.last_update_work()
    assert stats.path == "rebuild" and stats.rows_written == 2
    assert work.mask_words_scanned == 0
    assert cache.active_indices().tolist() == [77_777, 999_999]
    # the mask path reads every word once for its diff (and sorts rather than scans again)
    new = cache.mask
    new[3], new[77_777] = True, False
    cache.update_active_weights(new)
    assert cache.last_update_stats().path == "rebuild"
    assert cache.last_update_work().mask_words_scanned == n // 64
    assert cache.active_indices().tolist() == [3, 999_999]
    cache.check_invariants()


def test_rebuild_of_a_large_active_set_scans_the_mask():
    """Where m' log m' exceeds N/64 words, scanning is the cheaper order (and is counted)."""
    n = 4096
    mask = torch.zeros(n, dtype=torch.bool)
    mask[: n // 2] = True
    cache = WeightCache(mask, 2, None, torch.randn(n, 2), torch.randn(2, n), hybrid_tau_frac=0.0)
    cache.update_from_indices([n - 1], [0])
    assert cache.last_update_stats().path == "rebuild"
    assert cache.last_update_work().mask_words_scanned == n // 64
    assert cache.active_indices().tolist() == list(range(1, n // 2)) + [n - 1]


# --------------------------------------------------------------------------------------------
# two Python threads on one cache
# --------------------------------------------------------------------------------------------

CONCURRENT = textwrap.dedent(
    """
    import sys, threading, time, torch
    import paired_replacement as pr
    torch.set_num_threads(1)
    n, hidden = 2048, 1024
    gate, up, down = torch.randn(n, hidden), torch.randn(n, hidden), torch.randn(hidden, n)
    full = torch.cat([gate, up], 1)
    masks = [torch.rand(n, generator=torch.Generator().manual_seed(s)) < 0.5 for s in range(8)]
    cache = pr.WeightCache(masks[0], hidden, gate, up, down, hybrid_tau_frac=2.0)
    mode = sys.argv[1]
    errors, unexpected = [], []
    start = threading.Barrier(3)
    deadline = time.monotonic() + 20.0

    def updater(offset):
        start.wait()
        i = offset
        while time.monotonic() < deadline and len(errors) < 50:
            try:
                if i % 2:
                    cache.update_active_weights(masks[i % 8])
                else:
                    new = masks[i % 8]
                    cur = cache.mask
                    cache.update_from_indices((new & ~cur).nonzero().squeeze(1),
                                              (cur & ~new).nonzero().squeeze(1))
            except RuntimeError as e:
                if "being updated by another thread" in str(e) or "being read by another thread" in str(e):
                    errors.append(str(e))
                else:
                    unexpected.append(repr(e))
            except ValueError as e:
                # the index lists were computed from the mask before the other thread's update:
                # refused as stale ("already active" / "not active"), the cache unchanged. Not
                # catching it let this thread die early, and with it every later overlap.
                if "already active" not in str(e) and "is not active" not in str(e):
                    unexpected.append(repr(e))
            i += 1

    def reader():
        start.wait()
        while time.monotonic() < deadline and len(errors) < 50:
            try:
                cache.get_concat_weight(); cache.active_indices(); cache.last_update_stats()
            except RuntimeError as e:
                if "being updated by another thread" in str(e):
                    errors.append(str(e))
                else:
                    unexpected.append(repr(e))

    second = updater if mode == "update+update" else reader
    ts = [threading.Thread(target=updater, args=(0,)), threading.Thread(target=second, args=(1,)) if second is updater else threading.Thread(target=second)]
    for t in ts: t.start()
    start.wait()
    for t in ts: t.join()
    assert not unexpected, unexpected
    assert errors, "no overlapping call was ever refused in 20 s"
    # the cache is intact and equals a plain gather of its own active set
    cache.check_invariants()
    idx = cache.active_indices()
    assert torch.equal(idx.sort().values, cache.mask.nonzero().squeeze(1))
    assert torch.equal(cache.get_concat_weight(), full.index_select(0, idx))
    assert torch.equal(cache.get_active_down_weight(), down.index_select(1, idx))
    cache.update_active_weights(masks[3])  # and still usable
    assert torch.equal(cache.get_concat_weight(), full.index_select(0, cache.active_indices()))
    print("OK", len(errors), errors[0])
    """
)


@pytest.mark.parametrize("mode", ["update+update", "update+read"])
def test_overlapping_calls_raise_and_leave_the_cache_valid(mode):
    proc = subprocess.run([sys.executable, "-c", CONCURRENT, mode], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.stdout.startswith("OK"), proc.stdout
    assert "A WeightCache is not thread-safe" in proc.stdout


def test_concurrent_readers_without_an_update_all_succeed():
    import threading

    n, hidden = 512, 16
    gate, up, down = torch.randn(n, hidden), torch.randn(n, hidden), torch.randn(hidden, n)
    cache = WeightCache(torch.rand(n) < 0.5, hidden, gate, up, down)
    expect = torch.cat([gate, up], 1).index_select(0, cache.active_indices())
    failures = []

    def read():
        for _ in range(2000):
            try:
                if not torch.equal(cache.get_concat_weight(), expect):
                    failures.append("wrong content")
                cache.get_active_down_weight(), cache.active_indices(), cache.mask
                cache.last_update_stats(), cache.num_active, cache.grain
            except RuntimeError as e:  # readers never conflict with readers
                failures.append(repr(e))

    ts = [threading.Thread(target=read) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not failures, failures[:3]
