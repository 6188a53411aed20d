"""Loads the compiled ops (``torch.classes.paired`` / ``torch.ops.paired``) once per process.

Where the library comes from, first match wins:

1. ``load_extension(build_dir)`` called explicitly, before first use;
2. the environment variable ``PAIRED_REPLACEMENT_BUILD_DIR`` (a folder written by
   ``paired-replacement-build``, e.g. ``results/hosts/<host>/build``);
3. the extension built by ``pip install --no-build-isolation -e .`` (``paired_replacement._C``).

A process can hold only one library registering the ``paired`` namespace, so asking for a second,
different one is an error rather than a silent mix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from pathlib import Path

import torch

BUILD_DIR_ENV = "PAIRED_REPLACEMENT_BUILD_DIR"
MANIFEST_NAME = "manifest.json"

_loaded: Path | None = None


def library_in_build_dir(build_dir: str | os.PathLike) -> Path:
    """Path of the shared library a host build wrote into ``build_dir`` (read from its manifest)."""
    build_dir = Path(build_dir)
    manifest_path = build_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"{build_dir} is not a paired_replacement build folder: {MANIFEST_NAME} is missing "
            "(create one with `paired-replacement-build --out DIR`)"
        )
    manifest = json.loads(manifest_path.read_text())
    library = build_dir / manifest["library"]
    if not library.is_file():
        raise FileNotFoundError(f"{manifest_path} names {library.name}, which does not exist")
    return library


def _installed_library() -> Path:
    spec = importlib.util.find_spec("paired_replacement._C")
    if spec is None or spec.origin is None:
        raise ImportError(
            "the paired_replacement extension is not built: run "
            "`pip install --no-build-isolation -e .` or set "
            f"{BUILD_DIR_ENV} to a folder made by `paired-replacement-build`"
        )
    return Path(spec.origin)


def load_extension(build_dir: str | os.PathLike | None = None) -> Path:
    """Loads the ops library (see module doc for the search order); returns its path.

    Calling it again with the same library, or with no argument once one is loaded, is a no-op.
    """
    global _loaded
    if build_dir is not None:
        library = library_in_build_dir(build_dir)
    elif _loaded is not None:
        return _loaded
    elif os.environ.get(BUILD_DIR_ENV):
        library = library_in_build_dir(os.environ[BUILD_DIR_ENV])
    else:
        library = _installed_library()
    library = library.resolve()
    if _loaded is not None:
        if library != _loaded:
            raise RuntimeError(
                f"paired_replacement ops are already loaded from {_loaded}; "
                f"cannot also load {library} in the same process"
            )
        return _loaded
    torch.ops.load_library(str(library))
    _loaded = library
    _warn_if_serial(library)
    return library


def build_info() -> dict[str, str]:
    """What the loaded library was compiled with (compiler, flags, simd, parallel), as a dict."""
    load_extension()
    lines = torch.ops.paired.build_info().strip().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _warn_if_serial(library: Path) -> None:
    parallel = build_info().get("parallel", "unknown")
    if parallel.startswith("serial"):
        warnings.warn(
            f"{library} runs its row copies on one thread: {parallel}. Rebuild it "
            "(`pip install --no-build-isolation -e .` or `paired-replacement-build --force`).",
            RuntimeWarning, stacklevel=3,
        )


def loaded_library() -> Path | None:
    """The library loaded in this process, or None."""
    return _loaded
