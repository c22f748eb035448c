"""Reader and writer for the IDX format used by MNIST-style datasets.

Layout: two zero bytes, a dtype code, the number of dimensions, then one
big-endian uint32 per dimension, then the row-major payload (big-endian).
Every check failure raises :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digitlab.errors import DataError

#: IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class IdxFile:
    """A decoded IDX file: its array and the SHA-256 of its decompressed bytes."""

    array: np.ndarray
    raw_sha256: str


def read_raw_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the decompressed content of an IDX file (gzip detected by magic bytes)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: file is empty")
    if data[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(data)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
        if not raw:
            raise DataError(f"{path}: gzip stream decompresses to an empty file")
        return raw
    if path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but is not gzip-compressed")
    return data


def parse_idx(data: bytes, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
    """Decode IDX bytes into a native-endian array, validating every header field."""
    if len(data) < 4:
        raise DataError(f"{name}: too short for an IDX header ({len(data)} bytes)")
    zero, code, dims = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise DataError(f"{name}: bad magic number 0x{data[:4].hex()} (expected 0x0000 + dtype + ndim)")
    if code not in IDX_DTYPES:
        raise DataError(f"{name}: unknown IDX dtype code 0x{code:02x}")
    if dims == 0:
        raise DataError(f"{name}: IDX header declares zero dimensions")
    if ndim is not None and dims != ndim:
        raise DataError(f"{name}: expected {ndim} dimensions, header declares {dims}")
    header_len = 4 + 4 * dims
    if len(data) < header_len:
        raise DataError(f"{name}: truncated header (need {header_len} bytes, have {len(data)})")
    shape = struct.unpack(f">{dims}I", data[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: a hostile header cannot overflow
    actual = len(data) - header_len
    if actual != expected:
        kind = "truncated" if actual < expected else "trailing bytes after"
        raise DataError(
            f"{name}: payload {kind} data: shape {tuple(shape)} needs {expected} bytes, file has {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_len).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable, native-endian copy


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> IdxFile:
    """Read an IDX file (raw or gzip) and return its array plus content checksum."""
    raw = read_raw_bytes(path)
    array = parse_idx(raw, name=str(path), ndim=ndim)
    return IdxFile(array=array, raw_sha256=hashlib.sha256(raw).hexdigest())


def encode_idx(array: np.ndarray) -> bytes:
    """Encode an array as IDX bytes (big-endian payload)."""
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in _CODES:
        raise ValueError(f"dtype {array.dtype} has no IDX code")
    header = struct.pack(">HBB", 0, _CODES[native], array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_DTYPES[_CODES[native]]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, compress: bool | None = None) -> None:
    """Write ``array`` as IDX; gzip when ``compress`` is true or the name ends in ``.gz``."""
    from digitlab.utils import write_bytes_atomic

    path = Path(path)
    data = encode_idx(array)
    if compress or (compress is None and path.suffix == ".gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    write_bytes_atomic(path, data)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
