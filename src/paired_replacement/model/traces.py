"""Mask traces on disk: bit-packed masks with JSON metadata, one pair of files per layer.

Layout under a folder (the pipeline uses ``results/traces/``)::

    run.json                                  the run: model, corpus, token ids, timings
    <policy>-d<density>-w<W>/layer<LL>.npy    np.packbits(masks, axis=1): uint8 [T, ceil(N/8)]
    <policy>-d<density>-w<W>/layer<LL>.json   metadata (format, shape, sha256 of the .npy, policy,
                                              params, density asked/measured, model, corpus)

A trace reads back bit-exact; a truncated or altered ``.npy`` (its sha256 is in the ``.json``) or
a damaged ``.json`` raises :class:`TraceError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "paired-replacement-mask-trace/1"
RUN_FILE = "run.json"


class TraceError(ValueError):
    """A trace file is missing, damaged or not a trace; the message names the file."""


@dataclass
class Trace:
    masks: np.ndarray  # bool [T, N]
    meta: dict

    @property
    def path(self) -> str:
        return self.meta.get("path", "")


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _json_bytes(obj: dict) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def trace_files(folder: Path, key: str, layer: int) -> tuple[Path, Path]:
    """The ``.npy`` and ``.json`` paths of one trace."""
    base = Path(folder) / key / f"layer{layer:02d}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def write_trace(folder: Path, key: str, layer: int, masks: np.ndarray, meta: dict) -> Path:
    """Write ``masks`` (bool ``[T, N]``) and ``meta``; return the ``.json`` path."""
    masks = np.asarray(masks)
    if masks.dtype != np.bool_ or masks.ndim != 2:
        raise TypeError(f"masks must be a 2-D bool array, got {masks.dtype} {masks.shape}")
    npy, js = trace_files(folder, key, layer)
    npy.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.packbits(masks, axis=1), allow_pickle=False)
    data = buf.getvalue()
    t, n = masks.shape
    full = {
        **meta,
        "format": FORMAT,
        "key": key,
        "layer": int(layer),
        "num_tokens": int(t),
        "num_neurons": int(n),
        "density_measured": float(masks.mean()) if masks.size else 0.0,
        "mask_file": npy.name,
        "mask_sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic_write(npy, data)
    _atomic_write(js, _json_bytes(full))
    return js


def read_json(path: Path) -> dict:
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise TraceError(f"{path}: file missing") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TraceError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise TraceError(f"{path}: expected a JSON object")
    return meta


def read_trace(path: Path) -> Trace:
    """Read a trace from its ``.json`` (or ``.npy``) path; checks format, hash and shape."""
    js = Path(path).with_suffix(".json")
    meta = read_json(js)
    if meta.get("format") != FORMAT:
        raise TraceError(f"{js}: not a mask trace (format {meta.get('format')!r}, want {FORMAT})")
    npy = js.with_name(meta["mask_file"])
    try:
        data = npy.read_bytes()
    except FileNotFoundError:
        raise TraceError(f"{npy}: mask file missing (named by {js})") from None
    if hashlib.sha256(data).hexdigest() != meta["mask_sha256"]:
        raise TraceError(
            f"{npy}: damaged or truncated ({len(data)} bytes; sha256 differs from {js.name})"
        )
    t, n = meta["num_tokens"], meta["num_neurons"]
    try:
        packed = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise TraceError(f"{npy}: unreadable ({exc})") from None
    if packed.dtype != np.uint8 or packed.shape != (t, (n + 7) // 8):
        raise TraceError(f"{npy}: shape {packed.shape} {packed.dtype}, metadata says [{t}, {n}]")
    masks = np.unpackbits(packed, axis=1, count=n).astype(bool)
    return Trace(masks, {**meta, "path": str(js)})


def write_run(folder: Path, meta: dict) -> Path:
    path = Path(folder) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, _json_bytes(meta))
    return path


def list_traces(folder: Path) -> list[Path]:
    """Every trace's ``.json`` under ``folder`` (sorted), without ``run.json``."""
    found = sorted(Path(folder).glob("*/layer*.json"))
    if not found:
        raise TraceError(f"{folder}: no traces (*/layer*.json)")
    return found
