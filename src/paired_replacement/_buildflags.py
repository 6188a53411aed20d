"""Compiler and linker flags that let ``at::parallel_for`` really run in parallel in our library.

ATen's OpenMP backend (``torch.__config__.parallel_info()`` says ``ATen parallel backend: OpenMP``)
inlines its ``#pragma omp parallel`` region into the code of whoever calls ``at::parallel_for``.
A library compiled without ``-fopenmp`` therefore takes ATen's serial branch: every row copy runs
on the calling thread while torch's own ops use all threads. Compiled and linked with
``-fopenmp``, the library's GOMP calls bind to the ``libgomp.so.1`` that torch has already loaded
(same soname), so ``torch.set_num_threads`` governs both. With the native thread-pool backend
``at::parallel_for`` calls into libtorch and needs no flag.

Used by ``setup.py`` (loaded by path, before the package is installed) and by ``hostbuild``.
"""

from __future__ import annotations

import re
import sys


def torch_parallel_backend() -> str:
    """The installed torch's intra-op backend, e.g. "OpenMP" or "native thread pool"."""
    import torch

    match = re.search(r"ATen parallel backend: (.+)", torch.__config__.parallel_info())
    return match.group(1).strip() if match else "unknown"


def parallel_flags() -> tuple[list[str], list[str]]:
    """(compile flags, link flags) matching torch's parallel backend on this platform."""
    if torch_parallel_backend() == "OpenMP" and sys.platform.startswith("linux"):
        return ["-fopenmp"], ["-fopenmp"]
    return [], []
