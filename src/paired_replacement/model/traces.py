"""Mask traces on disk: bit-packed masks with JSON metadata, one pair of files per policy.

Layout under a folder (the pipeline uses ``results/traces/``)::

    run.json                           the run: model, corpus, token ids, timings
    <policy>-d<density>-w<W>.npy       np.packbits over neurons: uint8 [L, T, ceil(N/8)]
    <policy>-d<density>-w<W>.json      metadata: format, shape, sha256 of the .npy, policy,
                                       params, density asked / measured per layer, model, corpus

Each (policy, density, W) is one file holding every layer (``Trace.layer(i)`` unpacks one): 24
policies x 30 layers as separate files cost more time to create than computing the masks did
(measured: 0.45 s of 1.0 s for 256 tokens), and a pipeline tracks 48 files more easily than 1440.
A trace reads back bit-exact; a truncated or altered ``.npy`` (its sha256 is in the ``.json``) or a
damaged ``.json`` raises :class:`TraceError` naming the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "paired-replacement-mask-trace/2"
RUN_FILE = "run.json"


class TraceError(ValueError):
    """A trace file is missing, damaged or not a trace; the message names the file."""


@dataclass
class Trace:
    """One (policy, density, window): packed masks of every layer and the metadata."""

    packed: np.ndarray  # uint8 [L, T, ceil(N/8)]
    meta: dict

    @property
    def num_layers(self) -> int:
        return int(self.packed.shape[0])

    def layer(self, i: int) -> np.ndarray:
        """Layer ``i``'s masks, bool ``[T, N]``."""
        return np.unpackbits(self.packed[i], axis=1, count=self.meta["num_neurons"]).astype(bool)

    @property
    def masks(self) -> np.ndarray:
        """All masks, bool ``[L, T, N]``."""
        return np.unpackbits(self.packed, axis=2, count=self.meta["num_neurons"]).astype(bool)


class TraceBuilder:
    """Collects one policy's masks layer by layer (packed, 1 bit each) and writes them."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.layers: list[np.ndarray] = []
        self.densities: list[float] = []
        self.shape: tuple[int, int] | None = None

    def add(self, masks: np.ndarray) -> None:
        """Append the next layer's masks, bool ``[T, N]``."""
        masks = np.asarray(masks)
        if masks.dtype != np.bool_ or masks.ndim != 2:
            raise TypeError(f"masks must be a 2-D bool array, got {masks.dtype} {masks.shape}")
        if self.shape is not None and masks.shape != self.shape:
            raise ValueError(f"layer {len(self.layers)} has shape {masks.shape}, not {self.shape}")
        self.shape = masks.shape
        self.layers.append(np.packbits(masks, axis=1))
        self.densities.append(np.count_nonzero(masks) / masks.size if masks.size else 0.0)

    def write(self, folder: Path, meta: dict) -> Path:
        """Write ``<key>.npy`` and ``<key>.json`` into ``folder``; return the ``.json`` path."""
        if self.shape is None:
            raise ValueError(f"trace {self.key}: no layers added")
        npy, js = trace_files(folder, self.key)
        npy.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.stack(self.layers), allow_pickle=False)
        data = buf.getvalue()
        full = {
            **meta,
            "format": FORMAT,
            "key": self.key,
            "num_layers": len(self.layers),
            "num_tokens": int(self.shape[0]),
            "num_neurons": int(self.shape[1]),
            "density_measured": float(np.mean(self.densities)),
            "density_measured_per_layer": self.densities,
            "mask_file": npy.name,
            "mask_sha256": hashlib.sha256(data).hexdigest(),
        }
        _atomic_write(npy, data)
        _write_json(js, full)
        return js


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def trace_files(folder: Path, key: str) -> tuple[Path, Path]:
    """The ``.npy`` and ``.json`` paths of one trace."""
    base = Path(folder) / key
    return base.with_name(key + ".npy"), base.with_name(key + ".json")


def write_trace(folder: Path, key: str, masks: np.ndarray, meta: dict) -> Path:
    """Write bool ``masks[L, T, N]`` (every layer of one policy) and ``meta``; the ``.json``."""
    builder = TraceBuilder(key)
    for layer_masks in np.asarray(masks):
        builder.add(layer_masks)
    return builder.write(folder, meta)


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
    want = (meta["num_layers"], meta["num_tokens"], (meta["num_neurons"] + 7) // 8)
    try:
        packed = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise TraceError(f"{npy}: unreadable ({exc})") from None
    if packed.dtype != np.uint8 or packed.shape != want:
        raise TraceError(f"{npy}: shape {packed.shape} {packed.dtype}, metadata says {want}")
    return Trace(packed, {**meta, "path": str(js)})


def write_run(folder: Path, meta: dict) -> Path:
    path = Path(folder) / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, meta)
    return path


def list_traces(folder: Path) -> list[Path]:
    """Every trace's ``.json`` in ``folder`` (sorted), without ``run.json``."""
    found = sorted(p for p in Path(folder).glob("*.json") if p.name != RUN_FILE)
    if not found:
        raise TraceError(f"{folder}: no traces (<policy>-d<density>-w<W>.json)")
    return found
