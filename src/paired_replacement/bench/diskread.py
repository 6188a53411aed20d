"""The disk's own speed for the file tier: random reads of whole pool-file records, independent
of the cache.

A cache on a pool file (``WeightCache.from_pool_file``) reads one record per row it writes, with
direct I/O, ``queue_depth`` reads in flight. What the disk allows for those bytes is measured here
by a second reader that shares nothing with the C++ one: plain ``os.preadv`` calls from
``queue_depth`` Python threads (the GIL is released during the read), on a file descriptor of its
own opened with ``O_DIRECT``, into page-aligned buffers. Reading a large batch of records at
the same queue depth, it measures the disk's random-read throughput, the floor the file tier's
update is compared with (``disk_floor`` in micro's file tier: the time that throughput allows for
the bytes an update reads): an update far slower than it wastes the disk; one much faster than it
read from somewhere else (a measurement bug, or a cache). (Its per-call overhead, a Python thread
pool, is about a millisecond: a batch of a few records would measure that, not the disk.)

Where the file system refuses ``O_DIRECT`` both readers fall back to buffered reads and drop the
file's pages after each batch (``posix_fadvise(DONTNEED)``): :attr:`RecordReader.io_mode` says
which (``"direct"`` or ``"buffered+dontneed"``), and the benchmarks write it to their CSV.
"""

from __future__ import annotations

import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from ..pool_file import read_header

DIRECT = "direct"
BUFFERED = "buffered+dontneed"


class RecordReader:
    """Reads whole records of a pool file by row id, ``queue_depth`` at a time (see the module
    doc). ``read(rows)`` returns the bytes read; the data lands in per-thread staging buffers and
    is thrown away (the floor moves bytes from the disk, nothing else)."""

    def __init__(self, path: str | os.PathLike, queue_depth: int = 16) -> None:
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be >= 1, got {queue_depth}")
        self.path = Path(path)
        self.header = read_header(self.path)
        self.record = self.header.record_bytes
        self.queue_depth = queue_depth
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
        try:
            self.fd = os.open(self.path, flags | os.O_DIRECT)
            self.io_mode = DIRECT
        except (OSError, AttributeError):  # tmpfs and some others refuse O_DIRECT
            self.fd = os.open(self.path, flags)
            self.io_mode = BUFFERED
        # one page-aligned staging record per thread (anonymous mmaps are page-aligned)
        self._buffers = [mmap.mmap(-1, self.record) for _ in range(queue_depth)]
        self._pool = ThreadPoolExecutor(max_workers=queue_depth, thread_name_prefix="diskread")
        self.bytes_read = 0

    def _offset(self, row: int) -> int:
        return self.header.header_bytes + row * self.record

    def _read_share(self, thread: int, rows: Sequence[int]) -> int:
        view = memoryview(self._buffers[thread])
        done = 0
        for row in rows[thread :: self.queue_depth]:
            got = os.preadv(self.fd, [view], self._offset(int(row)))
            if got != self.record:
                raise OSError(f"{self.path}: short read of row {row} ({got} of {self.record} B)")
            done += got
        return done

    def read(self, rows: Sequence[int]) -> int:
        """Reads the records of ``rows`` (each thread takes every queue_depth-th row, so the
        disk sees queue_depth reads in flight); returns the bytes read."""
        rows = [int(r) for r in rows]
        for r in rows:
            if not 0 <= r < self.header.rows:
                raise IndexError(f"{self.path}: row {r} out of range [0, {self.header.rows})")
        shares = self._pool.map(lambda t: self._read_share(t, rows), range(self.queue_depth))
        total = sum(shares)
        if self.io_mode == BUFFERED:
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.bytes_read += total
        return total

    def close(self) -> None:
        if self.fd >= 0:
            self._pool.shutdown(wait=True)
            os.close(self.fd)
            self.fd = -1
            for buf in self._buffers:
                buf.close()

    def __enter__(self) -> "RecordReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
