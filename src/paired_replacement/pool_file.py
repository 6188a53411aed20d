"""Pool files: the weights of one FFN on disk, one record per neuron, for the file tier.

    python -m paired_replacement.pool_file write --weights layer.pt --out layer.pool
    python -m paired_replacement.pool_file write --random 8192 4096 --dtype float32 --out big.pool
    python -m paired_replacement.pool_file write --weights layer.pt --dtype int8 --out layer.q.pool
    python -m paired_replacement.pool_file info layer.pool

A record holds one neuron's gate row, up row and down column together (LLM in a flash's
row-column bundling), so a cache on the file (``WeightCache.from_pool_file``) reads everything a
neuron needs with one aligned read. The format is the C++ core's
(``csrc/paired_replacement/file_pool.hpp``): a 4 KiB header (magic ``PRPOOL01``, version, shape,
element size and dtype, record layout, CRC-32 of the header), then N records of ``record_bytes``
(a multiple of 4 KiB, zero padded). :func:`write_pool_file` writes it from torch tensors
(atomically: a temporary file renamed into place, streamed a block of records at a time so that
a large pool never sits in memory twice); :func:`read_pool_file` reads it back.

``dtype=torch.int8`` (``--dtype int8``) writes the weights quantised per row
(:mod:`paired_replacement.quant`): dtype code 5, each gate row, up row and down column stored as
its int8 values followed by its float32 scale, so a record holds about a quarter of a float32
record's data (records are still rounded up to 4 KiB).
The header keeps the logical G, U, H (multiples of 4); such a file is opened by
``QuantizedWeightCache.from_pool_file`` (``WeightCache.from_pool_file`` refuses it), and
:func:`read_pool_file` returns its :class:`~paired_replacement.quant.QuantizedWeights`.
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

from .quant import SCALE_BYTES, QuantizedWeights, pack_rows, quantize_ffn, unpack_rows

MAGIC = b"PRPOOL01"
VERSION = 1
ALIGN = 4096  # header, records and reads (kPoolFileAlign)
#: the largest read of adjacent records (kPoolFileMaxReadBytes, file_pool.hpp F6; build_info says)
MAX_READ_BYTES = 128 * 1024
_FIELDS = struct.Struct("<8sIIqqqqIIQQQ")  # the 80 bytes the CRC covers; the CRC follows
DTYPE_CODES = {torch.float32: 1, torch.float16: 2, torch.bfloat16: 3, torch.int8: 5}
CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_WRITE_BLOCK_BYTES = 64 << 20  # records assembled per write


class PoolFileError(ValueError):
    """A pool file that is missing, damaged or not a pool file; the message names the file."""


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


@dataclass(frozen=True)
class PoolFileHeader:
    """What a pool file's header says. ``concat`` is a neuron's gate then up row (G + U
    elements) at ``concat_offset`` of its record; ``down`` its column of down (H elements).
    For ``dtype=torch.int8`` (code 5) G, U, H are the logical sizes and each segment is followed
    by its float32 scale (:attr:`row_scale_bytes`): ``concat_bytes`` and ``down_bytes`` count
    them."""

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

    @property
    def row_scale_bytes(self) -> int:
        """Bytes of the float32 scale after each row segment: 4 for int8 files, else 0."""
        return SCALE_BYTES if self.dtype == torch.int8 else 0

    @property
    def concat_bytes(self) -> int:
        """Bytes of a record's gate|up data (with their scales for int8)."""
        scale = self.row_scale_bytes
        return ((self.gate_cols * self.elem_size + scale if self.gate_cols else 0)
                + self.up_cols * self.elem_size + scale)

    @property
    def down_bytes(self) -> int:
        """Bytes of a record's down column (with its scale for int8)."""
        return self.hidden * self.elem_size + self.row_scale_bytes

    @classmethod
    def for_shape(cls, rows: int, gate_cols: int, up_cols: int, hidden: int,
                  dtype: torch.dtype) -> "PoolFileHeader":
        """The layout this module writes: gate|up at 0, down at the next 64-byte boundary, the
        record rounded up to 4 KiB."""
        header = cls(rows, gate_cols, up_cols, hidden, dtype, 0, 0, 0)
        down_offset = _round_up(header.concat_bytes, 64)
        record = _round_up(down_offset + header.down_bytes, ALIGN)
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
        if rows < 1 or up < 1 or hidden < 1 or gate < 0:
            raise PoolFileError(f"pool file {path}: bad shape in header (rows {rows}, gate_cols "
                                f"{gate}, up_cols {up}, hidden {hidden})")
        if header.dtype == torch.int8:
            for name, value in (("gate_cols", gate), ("up_cols", up), ("hidden", hidden)):
                if value % SCALE_BYTES:
                    raise PoolFileError(
                        f"pool file {path}: {name} {value} is not a multiple of 4 (dtype code 5 "
                        f"keeps the float32 row scales 4-byte aligned)")
        concat, down = header.concat_bytes, header.down_bytes
        if (header_bytes % ALIGN or record % ALIGN or record == 0
                or concat_off + concat > record or down_off + down > record
                or (concat_off + concat > down_off if concat_off < down_off
                    else down_off + down > concat_off)):
            raise PoolFileError(f"pool file {path}: inconsistent record layout in header")
        return header


def _as_weights(gate, up, down) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The weights as tensors of one float dtype, checked: gate [N, H] or None, up [N, H],
    down [Hd, N]."""
    up = torch.as_tensor(up)
    down = torch.as_tensor(down)
    gate = None if gate is None or torch.as_tensor(gate).numel() == 0 else torch.as_tensor(gate)
    if up.dim() != 2:
        raise ValueError(f"up must be 2-D [N, hidden], got shape {tuple(up.shape)}")
    n, h = up.shape
    if n < 1 or h < 1:
        raise ValueError(f"up must have at least one row and column, got shape {tuple(up.shape)}")
    if up.dtype not in FLOAT_DTYPES:
        raise TypeError(f"up must be float32, float16 or bfloat16, got {up.dtype}")
    if gate is not None and (gate.shape != up.shape or gate.dtype != up.dtype):
        raise ValueError(f"gate must match up ({tuple(up.shape)}, {up.dtype}), got "
                         f"{tuple(gate.shape)}, {gate.dtype}")
    if down.dim() != 2 or down.shape[1] != n or down.dtype != up.dtype:
        raise ValueError(f"down must be [hidden, N] = [{h}, {n}] of {up.dtype}, got "
                         f"{tuple(down.shape)}, {down.dtype}")
    return gate, up, down


def drop_cached_pages(path: str | os.PathLike) -> None:
    """Flush a pool file just written and drop its pages from the page cache, so that what a
    benchmark reads next comes from the disk (the readers bypass the cache anyway where the file
    system allows O_DIRECT; this keeps the written pages from occupying memory either way)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def remove_pool_files(directory: str | os.PathLike, pattern: str = "*.pool") -> None:
    """Delete a benchmark's scratch pool files (``pattern`` in ``directory``) and the directory
    when nothing else is left in it."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for f in directory.glob(pattern):
        f.unlink()
    try:
        directory.rmdir()
    except OSError:
        pass  # something else lives there: leave it


def write_pool_file(path: str | os.PathLike, gate, up, down, *,
                    dtype: torch.dtype | None = None) -> PoolFileHeader:
    """Write ``gate`` [N, H] (or None), ``up`` [N, H] and ``down`` [Hd, N] as a pool file.
    Returns its header. The file appears only when complete (tmp + rename).

    ``dtype``: None keeps the weights' dtype; float32 / float16 / bfloat16 convert;
    ``torch.int8`` quantises each gate row, up row and down column symmetrically with its own
    float32 scale (:func:`paired_replacement.quant.quantize_rows`; H and Hd must be multiples of
    4, the weights finite) and stores the scale after the row's values (dtype code 5).
    """
    gate, up, down = _as_weights(gate, up, down)
    if dtype is not None and dtype not in DTYPE_CODES:
        raise TypeError(f"dtype must be None, float32, float16, bfloat16 or int8, got {dtype}")
    if dtype in FLOAT_DTYPES and dtype != up.dtype:
        gate = None if gate is None else gate.to(dtype)
        up, down = up.to(dtype), down.to(dtype)
    n = up.shape[0]
    header = PoolFileHeader.for_shape(n, 0 if gate is None else gate.shape[1], up.shape[1],
                                      down.shape[0], dtype if dtype == torch.int8 else up.dtype)
    if dtype == torch.int8:
        for name, value in (("gate columns", header.gate_cols), ("up columns", header.up_cols),
                            ("hidden (down rows)", header.hidden)):
            if value % SCALE_BYTES:
                raise ValueError(f"int8 pool file: {name} = {value} is not a multiple of 4 (the "
                                 f"float32 row scales must stay 4-byte aligned)")
        q = quantize_ffn(gate, up, down)
        gate_rows = None if q.gate is None else pack_rows(q.gate, q.gate_scale)
        up_rows = pack_rows(q.up, q.up_scale)
        concat = up_rows if gate_rows is None else torch.cat([gate_rows, up_rows], dim=1)
        down_t = pack_rows(q.down.t(), q.down_scale)
    else:
        concat = up if gate is None else torch.cat([gate, up], dim=1)
        down_t = down.t()
    _write_records(Path(path), header, concat, down_t)
    return header


def _write_records(path: Path, header: PoolFileHeader, concat: torch.Tensor,
                   down_t: torch.Tensor) -> None:
    """The header, then one record per row of ``concat`` (gate|up rows) and ``down_t`` (down^T
    rows), each row's bytes as they are in memory, atomically (tmp + rename), a block of records
    at a time (only a block is made contiguous)."""
    n = header.rows
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    per_block = max(1, _WRITE_BLOCK_BYTES // header.record_bytes)
    try:
        with open(tmp, "wb") as fh:
            fh.write(header.pack())
            for start in range(0, n, per_block):
                stop = min(n, start + per_block)
                block = torch.zeros(stop - start, header.record_bytes, dtype=torch.uint8)
                c = concat[start:stop].contiguous().view(torch.uint8)
                d = down_t[start:stop].contiguous().view(torch.uint8)
                assert c.shape[1] == header.concat_bytes and d.shape[1] == header.down_bytes
                block[:, header.concat_offset:header.concat_offset + c.shape[1]] = c
                block[:, header.down_offset:header.down_offset + d.shape[1]] = d
                fh.write(block.numpy().tobytes())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def read_pool_file(path: str | os.PathLike) -> (
        tuple[torch.Tensor | None, torch.Tensor, torch.Tensor] | QuantizedWeights):
    """(gate [N, G] or None, up [N, U], down [H, N]) of a pool file (a plain buffered read).

    An int8 file (dtype code 5) gives its :class:`~paired_replacement.quant.QuantizedWeights`
    instead: the int8 values in the same layouts with their float32 per-neuron scales, bit for
    bit as written; ``.dequantize()`` gives float32 (gate, up, down).
    """
    header = read_header(path)
    raw = torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)
    records = raw[header.header_bytes:header.header_bytes + header.rows * header.record_bytes]
    records = records.view(header.rows, header.record_bytes)
    if header.dtype == torch.int8:
        concat = records[:, header.concat_offset:header.concat_offset + header.concat_bytes]
        down_rows = records[:, header.down_offset:header.down_offset + header.down_bytes]
        gate_bytes = header.gate_cols + SCALE_BYTES if header.gate_cols else 0
        gate_q, gate_s = (unpack_rows(concat[:, :gate_bytes].contiguous()) if gate_bytes
                          else (None, None))
        up_q, up_s = unpack_rows(concat[:, gate_bytes:].contiguous())
        down_q, down_s = unpack_rows(down_rows.contiguous())
        return QuantizedWeights(gate_q, gate_s, up_q, up_s, down_q.t().contiguous(), down_s)
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
    w.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "int8"], default=None,
                   help="element type (default: the weights' own, float32 for --random); int8 "
                        "quantises each row with a float32 scale stored after it (H a "
                        "multiple of 4)")
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
            scales = " + a float32 scale per row" if h.row_scale_bytes else ""
            print(f"{args.path}: N={h.rows} gate={h.gate_cols} up={h.up_cols} hidden={h.hidden} "
                  f"dtype={str(h.dtype).removeprefix('torch.')}{scales} record={h.record_bytes} B "
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
            dtype = torch.float32 if args.dtype in (None, "int8") else getattr(torch, args.dtype)
            gen = torch.Generator().manual_seed(args.seed)
            gate = None if args.no_gate else torch.randn(n, h, generator=gen).to(dtype)
            up = torch.randn(n, h, generator=gen).to(dtype)
            down = torch.randn(h, n, generator=gen).to(dtype)
        header = write_pool_file(args.out, gate, up, down,
                                 dtype=None if args.dtype is None else getattr(torch, args.dtype))
    except (PoolFileError, ValueError, TypeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: N={header.rows}, record {header.record_bytes} B, "
          f"{header.header_bytes + header.rows * header.record_bytes} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
