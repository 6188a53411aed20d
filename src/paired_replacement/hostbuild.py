"""Build the extension for *this host* into a chosen folder and describe it in a manifest.

The pipeline's per-host build rule calls this (``paired-replacement-build --out DIR`` or
``python -m paired_replacement.hostbuild --out DIR``); a process then uses that build with
``paired_replacement.load_extension(DIR)`` or ``PAIRED_REPLACEMENT_BUILD_DIR=DIR``.

``manifest.json`` records what a result was measured with: host, CPU, compiler, flags, torch
version and a hash of the sources. A folder whose manifest already matches (same sources, flags,
compiler and torch) is reused, so re-running the rule is cheap. A rebuild removes the old
manifest before compiling, so a failed one leaves a folder that ``load_extension`` refuses.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ._buildflags import parallel_flags, torch_parallel_backend
from ._extension import MANIFEST_NAME
from .bench.hostinfo import compiler_version, cpu_model

LIBRARY_NAME = "paired_replacement_ops"
# Sources are looked up next to the installed package first (editable install: the repository).
_REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["csrc/binding/weight_cache_torch.cpp"]
HEADERS = ["csrc/paired_replacement/weight_cache.hpp", "csrc/paired_replacement/row_ffn.hpp",
           "csrc/paired_replacement/file_pool.hpp"]
# Every header in here is hashed, listed in HEADERS or not, so that a header the binding starts
# to include cannot change the library without changing the hash.
HEADER_DIR = "csrc/paired_replacement"
HEADER_SUFFIXES = {".h", ".hh", ".hpp", ".hxx", ".inl", ".ipp"}
BASE_FLAGS = ["-O3", "-DNDEBUG"]


def host_flags(generic: bool) -> list[str]:
    """Compiler flags for this host: -march=native (x86) / -mcpu=native (arm64) unless generic,
    then torch's parallel backend (-fopenmp with OpenMP, see _buildflags)."""
    parallel = parallel_flags()[0]
    if generic:
        return [*BASE_FLAGS, *parallel]
    machine = platform.machine().lower()
    native = "-mcpu=native" if machine in {"aarch64", "arm64"} else "-march=native"
    return [*BASE_FLAGS, native, *parallel]


def source_root() -> Path:
    root = Path(os.environ.get("PAIRED_REPLACEMENT_SOURCE_ROOT", _REPO_ROOT))
    missing = [p for p in SOURCES + HEADERS if not (root / p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"C++ sources not found under {root} (missing {missing}); run from a checkout or set "
            "PAIRED_REPLACEMENT_SOURCE_ROOT"
        )
    return root


def hashed_files(root: Path) -> list[str]:
    """The files whose contents decide whether a build is current: SOURCES, HEADERS and every
    header under HEADER_DIR, as sorted paths relative to ``root``."""
    found = {p.relative_to(root).as_posix() for p in (root / HEADER_DIR).rglob("*")
             if p.is_file() and p.suffix in HEADER_SUFFIXES}
    return sorted({*SOURCES, *HEADERS, *found})


def source_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for rel in hashed_files(root):
        digest.update(rel.encode())
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()


def build(out_dir: str | os.PathLike, *, generic: bool = False, force: bool = False,
          verbose: bool = False) -> dict:
    """Compiles the ops library into ``out_dir`` (reusing a matching build) and returns its manifest."""
    import torch

    out_dir = Path(out_dir).resolve()
    root = source_root()
    flags = host_flags(generic)
    ldflags = parallel_flags()[1]
    wanted = {
        "source_sha256": source_hash(root),
        "cxxflags": flags,
        "ldflags": ldflags,
        "parallel_backend": torch_parallel_backend(),
        "compiler": compiler_version(),
        "torch_version": torch.__version__,
    }
    manifest_path = out_dir / MANIFEST_NAME
    if manifest_path.is_file() and not force:
        old = json.loads(manifest_path.read_text())
        if all(old.get(k) == v for k, v in wanted.items()) and (out_dir / old["library"]).is_file():
            return old

    # From here on the folder holds no current build: without its manifest a failed compile
    # cannot leave the previous library looking like the build of the sources just changed.
    manifest_path.unlink(missing_ok=True)
    work = out_dir / "ninja"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    # Compile in a child process: cpp_extension.load() also loads the library, and a process may
    # hold only one library registering the "paired" namespace (the caller may hold one already).
    load_call = (
        "from torch.utils.cpp_extension import load; "
        f"load(name={LIBRARY_NAME!r}, sources={[str(root / s) for s in SOURCES]!r}, "
        f"extra_cflags={[*flags, '-DPAIRED_REPLACEMENT_BUILD_FLAGS=' + ','.join(flags)]!r}, "
        f"extra_ldflags={ldflags!r}, extra_include_paths={[str(root / 'csrc')]!r}, "
        f"build_directory={str(work)!r}, is_python_module=False, verbose={verbose!r})"
    )
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", load_call], capture_output=not verbose, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"building {LIBRARY_NAME} in {work} failed (exit {result.returncode}):\n"
            f"{(result.stdout or '')[-4000:]}{(result.stderr or '')[-4000:]}"
        )
    seconds = time.perf_counter() - t0
    library = f"{LIBRARY_NAME}.so"
    # a new file renamed over the old: a process that has the old library mapped keeps its inode
    staged = out_dir / f".{library}.new"
    shutil.copy2(work / library, staged)
    os.replace(staged, out_dir / library)
    manifest = {
        **wanted,
        "library": library,
        "host": socket.gethostname(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "python_version": platform.python_version(),
        "build_seconds": round(seconds, 2),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(manifest_path)  # the manifest appears only once the library is in place
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="paired-replacement-build",
        description="Build the paired_replacement ops for this host into a folder with a manifest.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--generic", action="store_true",
                        help="no -march=native (portable; needed for valgrind/cachegrind)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest matches")
    parser.add_argument("--verbose", action="store_true", help="show compiler commands")
    args = parser.parse_args(argv)
    manifest = build(args.out, generic=args.generic, force=args.force, verbose=args.verbose)
    json.dump(manifest, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
