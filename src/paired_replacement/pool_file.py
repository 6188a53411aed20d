"""Pool files: the weights of one FFN on disk, one record per neuron, for the file tier.

    python -m paired_replacement.pool_file write --weights layer.pt --out layer.pool
    python -m paired_replacement.pool_file write --random 8192 4096 --dtype float32 --out big.pool
    python -m paired_replacement.pool_file info layer.pool

A record holds one neuron's gate row, up row and down column together (LLM in a flash's
row-column bundling), so a cache on the file (``WeightCache.from_pool_file``) reads everything a
neuron needs with one aligned read. The format is the C++ core's
(``csrc/paired_replacement/file_pool.hpp``): a 4 KiB header (magic ``PRPOOL01``, version, shape,
element size and dtype, record layout, CRC-32 of the header), then N records of ``record_bytes``
(a multiple of 4 KiB, zero padded). :func:`write_pool_file` writes it from torch tensors
(atomically: a temporary file renamed into place, streamed a block of records at a time so that
a large pool never sits in memory twice); :func:`read_pool_file` reads it back.
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

MAGIC = b"PRPOOL01"
VERSION = 1
ALIGN = 4096  # header, records and reads (kPoolFileAlign)
_FIELDS = struct.Struct("<8sIIqqqqIIQQQ")  # the 80 bytes the CRC covers; the CRC follows
DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
_WRITE_BLOCK_BYTES = 64 << 20  # records assembled per write


class PoolFileError(ValueError):
    """A pool file that is missing, damaged or not a pool file; the message names the file."""


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class PoolFileHeader:
    """What a pool file's header says. ``concat`` is a neuron's gate then up row (G + U
    elements) at ``concat_offset`` of its record; ``down`` its column of down (H elements)."""

    rows: int
    gate_cols: int
    up_cols: int
    hidden: int
    dtype: torch.dtype
    record_bytes: int
    concat_offset: int
    down_offset: int
    header_bytes: int = ALIGN

    @property
    def elem_size(self) -> int:
        return torch.tensor([], dtype=self.dtype).element_size()

    @classmethod
    def for_shape(cls, rows: int, gate_cols: int, up_cols: int, hidden: int,
                  dtype: torch.dtype) -> "PoolFileHeader":
        """The layout this module writes: gate|up at 0, down at the next 64-byte boundary, the
        record rounded up to 4 KiB."""
        elem = torch.tensor([], dtype=dtype).element_size()
        down_offset = _round_up((gate_cols + up_cols) * elem, 64)
        record = _round_up(down_offset + hidden * elem, ALIGN)
        return cls(rows, gate_cols, up_cols, hidden, dtype, record, 0, down_offset)

    def pack(self) -> bytes:
        fields = _FIELDS.pack(MAGIC, VERSION, self.header_bytes, self.rows, self.gate_cols,
                              self.up_cols, self.hidden, self.elem_size, DTYPE_CODES[self.dtype],
                              self.record_bytes, self.concat_offset, self.down_offset)
        return (fields + struct.pack("<I", zlib.crc32(fields))).ljust(self.header_bytes, b"\0")

    @classmethod
    def unpack(cls, data: bytes, path: Path) -> "PoolFileHeader":
        if len(data) < _FIELDS.size + 4:
            raise PoolFileError(f"pool file {path}: shorter than a header")
        fields = data[: _FIELDS.size]
        (magic, version, header_bytes, rows, gate, up, hidden, elem, code, record, concat_off,
         down_off) = _FIELDS.unpack(fields)
        if magic != MAGIC:
            raise PoolFileError(f"pool file {path}: not a pool file (magic differs)")
        if struct.unpack("<I", data[_FIELDS.size:_FIELDS.size + 4])[0] != zlib.crc32(fields):
            raise PoolFileError(f"pool file {path}: damaged header (CRC-32 differs)")
        if version != VERSION:
            raise PoolFileError(f"pool file {path}: version {version}, this code reads {VERSION}")
        if code not in CODE_DTYPES:
            raise PoolFileError(f"pool file {path}: unknown dtype code {code}")
        header = cls(rows, gate, up, hidden, CODE_DTYPES[code], record, concat_off, down_off,
                     header_bytes)
        if header.elem_size != elem:
            raise PoolFileError(f"pool file {path}: element size {elem} for {header.dtype}")
        return header


def _as_weights(gate, up, down) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    up = torch.as_tensor(up)
    down = torch.as_tensor(down)
    gate = None if gate is None or torch.as_tensor(gate).numel() == 0 else torch.as_tensor(gate)
    if up.dim() != 2:
        raise ValueError(f"up must be 2-D [N, hidden], got shape {tuple(up.shape)}")
    n, h = up.shape
    if n < 1 or h < 1:
        raise ValueError(f"up must have at least one row and column, got shape {tuple(up.shape)}")
    if up.dtype not in DTYPE_CODES:
        raise TypeError(f"up must be float32, float16 or bfloat16, got {up.dtype}")
    if gate is not None and (gate.shape != up.shape or gate.dtype != up.dtype):
        raise ValueError(f"gate must match up ({tuple(up.shape)}, {up.dtype}), got "
                         f"{tuple(gate.shape)}, {gate.dtype}")
    if down.dim() != 2 or down.shape[1] != n or down.dtype != up.dtype:
        raise ValueError(f"down must be [hidden, N] = [{h}, {n}] of {up.dtype}, got "
                         f"{tuple(down.shape)}, {down.dtype}")
    return gate, up, down


def write_pool_file(path: str | os.PathLike, gate, up, down) -> PoolFileHeader:
    """Write ``gate`` [N, H] (or None), ``up`` [N, H] and ``down`` [Hd, N] as a pool file.
    Returns its header. The file appears only when complete (tmp + rename)."""
    gate, up, down = _as_weights(gate, up, down)
    n = up.shape[0]
    header = PoolFileHeader.for_shape(n, 0 if gate is None else gate.shape[1], up.shape[1],
                                      down.shape[0], up.dtype)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    concat = up if gate is None else torch.cat([gate, up], dim=1)
    down_t = down.t()
    per_block = max(1, _WRITE_BLOCK_BYTES // header.record_bytes)
    elem = header.elem_size
    try:
        with open(tmp, "wb") as fh:
            fh.write(header.pack())
            for start in range(0, n, per_block):
                stop = min(n, start + per_block)
                block = torch.zeros(stop - start, header.record_bytes, dtype=torch.uint8)
                c = concat[start:stop].contiguous().view(torch.uint8)
                d = down_t[start:stop].contiguous().view(torch.uint8)
                block[:, header.concat_offset:header.concat_offset + c.shape[1]] = c
                block[:, header.down_offset:header.down_offset + d.shape[1]] = d
                assert c.shape[1] == (concat.shape[1]) * elem and d.shape[1] == header.hidden * elem
                fh.write(block.numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return header


def read_header(path: str | os.PathLike) -> PoolFileHeader:
    """The checked header of a pool file (PoolFileError naming the file when it is not one)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(_FIELDS.size + 4)
    except FileNotFoundError:
        raise PoolFileError(f"pool file {path}: missing") from None
    header = PoolFileHeader.unpack(data, path)
    need = header.header_bytes + header.rows * header.record_bytes
    size = path.stat().st_size
    if size < need:
        raise PoolFileError(f"pool file {path}: truncated ({size} bytes, the header needs {need})")
    return header


def read_pool_file(path: str | os.PathLike) -> tuple[torch.Tensor | None, torch.Tensor,
                                                     torch.Tensor]:
    """(gate [N, G] or None, up [N, U], down [H, N]) of a pool file (a plain buffered read)."""
    header = read_header(path)
    raw = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    records = raw[header.header_bytes:header.header_bytes + header.rows * header.record_bytes]
    records = records.view(header.rows, header.record_bytes)
    elem = header.elem_size
    cols = header.gate_cols + header.up_cols
    concat = records[:, header.concat_offset:header.concat_offset + cols * elem].contiguous()
    concat = concat.view(header.dtype)
    down = records[:, header.down_offset:header.down_offset + header.hidden * elem].contiguous()
    down = down.view(header.dtype).t().contiguous()
    gate = concat[:, :header.gate_cols].contiguous() if header.gate_cols else None
    return gate, concat[:, header.gate_cols:].contiguous(), down


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m paired_replacement.pool_file",
                                description=__doc__.split("\n\n")[0] + ".")
    sub = p.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write", help="write a pool file from weights")
    src = w.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", type=Path,
                     help="torch.save'd dict with 'up' [N, H], 'down' [H, N] and optionally "
                          "'gate' [N, H]")
    src.add_argument("--random", type=int, nargs=2, metavar=("N", "HIDDEN"),
                     help="seeded random weights of this shape (benchmarks)")
    w.add_argument("--no-gate", action="store_true", help="--random: no gate rows")
    w.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32",
                   help="--random: element type")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--out", type=Path, required=True)
    i = sub.add_parser("info", help="print a pool file's header")
    i.add_argument("path", type=Path)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "info":
            h = read_header(args.path)
            print(f"{args.path}: N={h.rows} gate={h.gate_cols} up={h.up_cols} hidden={h.hidden} "
                  f"dtype={str(h.dtype).removeprefix('torch.')} record={h.record_bytes} B "
                  f"(concat at {h.concat_offset}, down at {h.down_offset})")
            return 0
        if args.weights is not None:
            data = torch.load(args.weights, map_location="cpu", weights_only=True)
            if not isinstance(data, dict) or "up" not in data or "down" not in data:
                print(f"error: {args.weights} must hold a dict with 'up' and 'down' (and 'gate')",
                      file=sys.stderr)
                return 2
            gate, up, down = data.get("gate"), data["up"], data["down"]
        else:
            n, h = args.random
            dtype = getattr(torch, args.dtype)
            gen = torch.Generator().manual_seed(args.seed)
            gate = None if args.no_gate else torch.randn(n, h, generator=gen).to(dtype)
            up = torch.randn(n, h, generator=gen).to(dtype)
            down = torch.randn(h, n, generator=gen).to(dtype)
        header = write_pool_file(args.out, gate, up, down)
    except (PoolFileError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: N={header.rows}, record {header.record_bytes} B, "
          f"{header.header_bytes + header.rows * header.record_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
