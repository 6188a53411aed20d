"""The disk's own speed for the file tier: random reads of whole pool-file records, independent
of the cache.

A cache on a pool file (``WeightCache.from_pool_file``) reads the records of the rows it writes,
with direct I/O, ``queue_depth`` reads in flight; records of consecutive rows are read together,
in runs of at most ``pool_file.MAX_READ_BYTES`` (file_pool.hpp F6). What the disk allows for those
reads is measured here by a second reader that shares nothing with the C++ one: its own file
descriptor opened with ``O_DIRECT``, its own page-aligned buffers, the same reads (the rows
sorted, consecutive ones joined into runs of at most ``max_read_bytes``: :func:`plan_runs`),
``queue_depth`` of them in flight. micro's file tier uses it twice: ``disk_update_floor`` reads
exactly the records the paired update reads at each step (the time the disk needs for them: the
paired update's floor), ``disk_floor`` every active record of the step's mask (a large batch:
the disk's random-read throughput, and the full reload's floor). An update far slower than its
floor wastes the disk; one much faster than it read from somewhere else (a measurement bug, or a
cache).

Two engines (:attr:`RecordReader.engine`):

- ``"linux-aio"`` (Linux native AIO, ``io_submit``/``io_getevents`` through ``ctypes``, on x86_64
  and aarch64): ``queue_depth`` requests are kept in flight from one thread, a completed one
  replaced at once by the next; every structure is allocated when the reader is built, so reading
  a few records costs a few system calls (one submit, one wait for a batch of at most
  ``queue_depth`` reads), not thread wake-ups. This is what lets an independent reader time a
  batch as small as one update's records (16 records take about one read latency on a disk; a
  thread pool's own per-call cost, about a millisecond in Python, would be most of that). Every
  completion is checked (``res`` must be the read's size; a negative ``res`` is ``-errno``).
- ``"threads"``: plain ``os.preadv`` calls from ``queue_depth`` Python threads (the GIL is
  released during the read). Used where native AIO is unavailable (another platform, or
  ``io_setup`` refused, e.g. ``fs.aio-max-nr`` exhausted or a sandbox without the call); it
  measures the throughput of a large batch as well, but not the time of a small one.

``engine="auto"`` (the default) takes native AIO where it works and the threads otherwise;
``"aio"`` and ``"threads"`` force one (``"aio"`` raises :class:`AioUnavailableError` where it
does not work).

Where the file system refuses ``O_DIRECT`` the reader falls back to buffered reads and drops the
file's pages after each batch (``posix_fadvise(DONTNEED)``), as the cache does:
:attr:`RecordReader.io_mode` says which (``"direct"`` or ``"buffered+dontneed"``), and the
benchmarks write it to their CSV. (Native AIO on a buffered file runs each read inside
``io_submit``: correct, but without overlap.)
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Sequence

from ..pool_file import MAX_READ_BYTES, read_header

DIRECT = "direct"
BUFFERED = "buffered+dontneed"
AIO = "linux-aio"
THREADS = "threads"
ENGINES = ("auto", "aio", "threads")

#: (io_setup, io_destroy, io_getevents, io_submit) by platform.machine() (asm-generic numbers on
#: aarch64); a machine not listed has no native AIO engine here
AIO_SYSCALLS = {"x86_64": (206, 207, 208, 209), "aarch64": (0, 1, 4, 2)}
IOCB_CMD_PREAD = 0

#: called with (row, the record's bytes) as each record arrives, before its buffer is reused:
#: a test hook (the bytes are only valid during the call)
RecordHook = Callable[[int, memoryview], None]
#: reads of one batch: (first row, records) of runs of consecutive rows, in row order
Runs = list[tuple[int, int]]


class AioUnavailableError(OSError):
    """``engine="aio"`` was asked for where Linux native AIO cannot be used (the message says
    why)."""


class _IOCB(ctypes.Structure):
    """struct iocb of linux/aio_abi.h (64 bytes; little-endian order of key and rw_flags)."""

    _fields_ = [("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32),
                ("aio_rw_flags", ctypes.c_int32), ("aio_lio_opcode", ctypes.c_uint16),
                ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
                ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64),
                ("aio_offset", ctypes.c_int64), ("aio_reserved2", ctypes.c_uint64),
                ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32)]


class _IOEvent(ctypes.Structure):
    """struct io_event of linux/aio_abi.h (32 bytes)."""

    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]


assert ctypes.sizeof(_IOCB) == 64 and ctypes.sizeof(_IOEvent) == 32


def aio_unavailable_reason() -> str | None:
    """Why this platform has no native AIO engine here, or None when it may have one (io_setup
    can still be refused when the reader is built)."""
    if not sys.platform.startswith("linux"):
        return f"Linux native AIO needs Linux (this is {sys.platform})"
    machine = platform.machine()
    if machine not in AIO_SYSCALLS:
        return (f"no io_* system call numbers for machine {machine!r} "
                f"(known: {', '.join(sorted(AIO_SYSCALLS))})")
    if sys.byteorder != "little":
        return "struct iocb is laid out here for little-endian machines"
    return None


def plan_runs(rows: Sequence[int], run_records: int) -> Runs:
    """The reads of a batch as the cache plans them (file_pool.hpp F6): ``rows`` in row order,
    consecutive rows joined into runs of at most ``run_records`` records."""
    runs: Runs = []
    first = count = 0
    for row in sorted(rows):
        if count and row == first + count and count < run_records:
            count += 1
        else:
            if count:
                runs.append((first, count))
            first, count = row, 1
    if count:
        runs.append((first, count))
    return runs


def _short_read(path: Path, first: int, count: int, got: int, record: int) -> OSError:
    """A read of ``count`` records from row ``first`` that returned ``got`` bytes: names the
    first row it did not return whole."""
    row = first + got // record
    run = f" (a read of {count} records from row {first})" if count > 1 else ""
    return OSError(f"{path}: short read of row {row} ({got - (row - first) * record} of "
                   f"{record} B){run}")


def _call_hook(hook: RecordHook, buffer: mmap.mmap, first: int, count: int, record: int) -> None:
    """``hook`` on each record of a run read into ``buffer`` (views released after each call,
    so the buffer can still be unmapped)."""
    with memoryview(buffer) as view:
        for j in range(count):
            with view[j * record:(j + 1) * record] as data:
                hook(first + j, data)


class _LinuxAio:
    """``queue_depth`` reads in flight through io_submit/io_getevents on one context; the
    iocbs, the pointer array, the events and one page-aligned buffer of ``run_records`` records
    per slot are allocated once. Raises AioUnavailableError when the platform or io_setup
    refuses."""

    def __init__(self, fd: int, record: int, run_records: int, queue_depth: int) -> None:
        reason = aio_unavailable_reason()
        if reason:
            raise AioUnavailableError(errno.ENOSYS, reason)
        self._setup, self._destroy, self._getevents, self._submit = \
            AIO_SYSCALLS[platform.machine()]
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self.queue_depth, self.record = queue_depth, record
        self.ctx = ctypes.c_ulong(0)
        if self._call(self._setup, ctypes.c_long(queue_depth), ctypes.byref(self.ctx)) < 0:
            err = ctypes.get_errno()
            raise AioUnavailableError(err, f"io_setup({queue_depth}) refused: "
                                           f"{os.strerror(err)}")
        size = record * run_records
        self.buffers = [mmap.mmap(-1, size) for _ in range(queue_depth)]  # page-aligned
        # the buffers' addresses (views kept while the buffers live; released before closing)
        self._views = [(ctypes.c_char * size).from_buffer(b) for b in self.buffers]
        self.iocbs = (_IOCB * queue_depth)()
        self._iocb = [self.iocbs[s] for s in range(queue_depth)]
        for s, iocb in enumerate(self._iocb):
            iocb.aio_data = s
            iocb.aio_lio_opcode = IOCB_CMD_PREAD
            iocb.aio_fildes = fd
            iocb.aio_buf = ctypes.addressof(self._views[s])
        self._addr = [ctypes.addressof(iocb) for iocb in self._iocb]
        self.ptrs = (ctypes.c_void_p * queue_depth)()
        self._ptr_size = ctypes.sizeof(ctypes.c_void_p)
        self.events = (_IOEvent * queue_depth)()
        self._slot_run = [(0, 0)] * queue_depth  # the run each slot is reading
        self._batch_slots = [0] * queue_depth  # the slots of the batch being submitted

    def _call(self, number: int, *args) -> int:
        return self._syscall(ctypes.c_long(number), *args)

    def _submit_batch(self, count: int) -> None:
        """Submits ptrs[:count]; raises _SubmitError (the caller drains what went in) if the
        kernel refuses one (io_submit returns how many it took, then -errno for the one it
        refuses)."""
        done = 0
        base = ctypes.addressof(self.ptrs)
        while done < count:
            got = self._call(self._submit, self.ctx, ctypes.c_long(count - done),
                             ctypes.c_void_p(base + done * self._ptr_size))
            if got < 0:
                err = ctypes.get_errno()
                if err == errno.EINTR:
                    continue
                raise _SubmitError(done, err)
            done += got

    def _wait(self, least: int) -> int:
        """Waits for at least ``least`` completions (at most queue_depth); returns how many."""
        while True:
            got = self._call(self._getevents, self.ctx, ctypes.c_long(least),
                             ctypes.c_long(self.queue_depth), self.events, None)
            if got >= 0:
                return got
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, f"io_getevents: {os.strerror(err)}")

    def read(self, runs: Runs, offset: Callable[[int], int], path: Path,
             hook: RecordHook | None) -> int:
        n, qd, record = len(runs), self.queue_depth, self.record
        iocb, addr, ptrs, slot_run = self._iocb, self._addr, self.ptrs, self._slot_run
        batch_slots = self._batch_slots
        free = list(range(qd - 1, -1, -1))  # slot 0 first
        nxt = inflight = total = 0
        error: OSError | None = None
        while inflight or (nxt < n and error is None):
            batch = 0
            while free and nxt < n and error is None:
                slot = free.pop()
                first, count = run = runs[nxt]
                cb = iocb[slot]
                cb.aio_offset = offset(first)
                cb.aio_nbytes = count * record
                slot_run[slot] = run
                ptrs[batch] = addr[slot]
                batch_slots[batch] = slot
                batch += 1
                nxt += 1
            if batch:
                try:
                    self._submit_batch(batch)
                    inflight += batch
                except _SubmitError as exc:  # the first exc.done went in: drain them, then raise
                    inflight += exc.done
                    free.extend(batch_slots[exc.done:batch])
                    row = slot_run[batch_slots[exc.done]][0]
                    error = OSError(exc.err, f"{path}: io_submit of row {row} refused: "
                                             f"{os.strerror(exc.err)}")
                    continue
            # nothing more to submit: wait for every read in flight at once
            least = 1 if (nxt < n and error is None) else inflight
            if not least:
                break
            got = self._wait(least)
            for e in self.events[:got]:
                slot, res = e.data, e.res
                inflight -= 1
                free.append(slot)
                first, count = slot_run[slot]
                if res == count * record:
                    total += res
                    if hook is not None:
                        _call_hook(hook, self.buffers[slot], first, count, record)
                elif error is None:
                    error = (OSError(-res, f"{path}: read of row {first} failed: "
                                           f"{os.strerror(-res)}") if res < 0 else
                             _short_read(path, first, count, res, record))
        if error is not None:
            raise error
        return total

    def close(self) -> None:
        if self.ctx.value:
            self._call(self._destroy, self.ctx)  # cancels/waits for anything in flight
            self.ctx.value = 0
        self._views = []  # release the exported buffers, then unmap them
        for buf in self.buffers:
            buf.close()
        self.buffers = []


class _SubmitError(Exception):
    def __init__(self, done: int, err: int) -> None:
        super().__init__(done, err)
        self.done, self.err = done, err


class RecordReader:
    """Reads whole records of a pool file by row id, ``queue_depth`` reads in flight, records of
    consecutive rows together in reads of at most ``max_read_bytes`` (at least one record; the
    default is the cache's, ``pool_file.MAX_READ_BYTES``; see the module doc). ``read(rows)``
    returns the bytes read; the data lands in per-slot staging buffers and is thrown away (the
    floor moves bytes from the disk, nothing else).

    ``engine``: ``"auto"`` (native AIO where it works, else threads), ``"aio"`` (native AIO or
    :class:`AioUnavailableError`), ``"threads"``. :attr:`engine` says which runs (``"linux-aio"``
    or ``"threads"``); :attr:`engine_note` why AIO was not used (empty when it is)."""

    def __init__(self, path: str | os.PathLike, queue_depth: int = 16, engine: str = "auto",
                 max_read_bytes: int = MAX_READ_BYTES) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        self.fd = -1
        self._aio: _LinuxAio | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._buffers: list[mmap.mmap] = []
        self.path = Path(path)
        self.header = read_header(self.path)
        self.record = self.header.record_bytes
        self.queue_depth = queue_depth
        #: most records one read takes (as the cache: max(1, max_read_bytes // record))
        self.run_records = max(1, int(max_read_bytes) // self.record)
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags | os.O_DIRECT)
            self.io_mode = DIRECT
        except (OSError, AttributeError):  # tmpfs and some others refuse O_DIRECT
            self.fd = os.open(self.path, flags)
            self.io_mode = BUFFERED
        self.engine_note = ""
        if engine in ("auto", "aio"):
            try:
                self._aio = _LinuxAio(self.fd, self.record, self.run_records, queue_depth)
            except AioUnavailableError as exc:
                if engine == "aio":
                    os.close(self.fd)
                    self.fd = -1
                    raise AioUnavailableError(exc.errno, f"{self.path}: engine='aio': "
                                                         f"{exc.strerror}") from None
                self.engine_note = exc.strerror or str(exc)
        if self._aio is not None:
            self.engine = AIO
            self._buffers = self._aio.buffers
        else:
            self.engine = THREADS
            # one page-aligned staging run per thread (anonymous mmaps are page-aligned)
            self._buffers = [mmap.mmap(-1, self.record * self.run_records)
                             for _ in range(queue_depth)]
            self._pool = ThreadPoolExecutor(max_workers=queue_depth,
                                            thread_name_prefix="diskread")
        self.bytes_read = 0
        self.reads = 0  # reads issued (a run of consecutive records is one)

    def _offset(self, row: int) -> int:
        return self.header.header_bytes + row * self.record

    def plan(self, rows: Sequence[int]) -> Runs:
        """The reads of ``rows`` (:func:`plan_runs`), for :meth:`read_runs`; raises IndexError
        for a row outside the file."""
        rows = [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < self.header.rows:
                raise IndexError(f"{self.path}: row {r} out of range [0, {self.header.rows})")
        return plan_runs(rows, self.run_records)

    def _read_share(self, thread: int, runs: Runs, hook: RecordHook | None) -> int:
        done, record = 0, self.record
        buffer = self._buffers[thread]
        with memoryview(buffer) as buf:  # released also when a read fails
            for first, count in runs[thread :: self.queue_depth]:
                with buf[: count * record] as view:
                    got = os.preadv(self.fd, [view], self._offset(first))
                if got != count * record:
                    raise _short_read(self.path, first, count, got, record)
                if hook is not None:
                    _call_hook(hook, buffer, first, count, record)
                done += got
        return done

    def read(self, rows: Sequence[int], hook: RecordHook | None = None) -> int:
        """Reads the records of ``rows`` (:meth:`plan`, then :meth:`read_runs`); returns the bytes
        read. ``hook(row, data)``, if given, sees each record's bytes as it arrives (tests)."""
        return self.read_runs(self.plan(rows), hook)

    def read_runs(self, runs: Runs, hook: RecordHook | None = None) -> int:
        """Issues the reads ``runs`` (from :meth:`plan`) with queue_depth in flight (native AIO: a
        new read submitted as each one completes; threads: each thread takes every
        queue_depth-th read); returns the bytes read. Raises OSError naming the row for a failed
        or short read (after every read in flight has ended)."""
        if self.fd < 0:
            raise ValueError(f"{self.path}: the reader is closed")
        if self._aio is not None:
            total = self._aio.read(runs, self._offset, self.path, hook) if runs else 0
        else:
            shares = [self._pool.submit(self._read_share, t, runs, hook)
                      for t in range(min(self.queue_depth, len(runs)))]
            wait(shares)  # all of them, also when one fails: no read outlives the call
            total = sum(share.result() for share in shares)
        if self.io_mode == BUFFERED:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.bytes_read += total
        self.reads += len(runs)
        return total

    def close(self) -> None:
        """Destroys the AIO context (or stops the threads), closes the file; a second call does
        nothing."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._aio is not None:
            self._aio.close()
            self._aio = None
        else:
            for buf in self._buffers:
                buf.close()
        self._buffers = []
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown, or a constructor that raised early
            pass
