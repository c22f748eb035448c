"""Reader and writer for the IDX format used by MNIST-style datasets.

Layout: two zero bytes, a dtype code, the number of dimensions, then one
big-endian uint32 per dimension, then the row-major payload (big-endian).
Every check failure raises :class:`DataError` naming the file.

Size bounds: a file never yields more than :data:`MAX_IDX_BYTES` of content.
A gzip stream is inflated a chunk at a time and stopped as soon as it goes past
the size its own IDX header declares (or past the cap), so a small gzip bomb
costs at most one chunk more than the header's size, never gigabytes.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import stat
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
MAX_IDX_BYTES = 1 << 30
"""Hard cap on an IDX file's (decompressed) content: 1 GiB (MNIST's largest file is 47 MB,
EMNIST ByClass's 547 MB)."""
_CHUNK = 1 << 20
"""Inflate output per step (1 MiB)."""


@dataclass(frozen=True)
class IdxFile:
    """A decoded IDX file: its array and the SHA-256 of its decompressed bytes."""

    array: np.ndarray
    raw_sha256: str


def _declared_size(head: bytes) -> int | None:
    """Total bytes (header + payload) an IDX header declares; None until ``head`` holds the whole
    header, or when it is not a valid header at all (:func:`parse_idx` then reports why)."""
    if len(head) < 4:
        return None
    zero, code, dims = struct.unpack(">HBB", head[:4])
    if zero != 0 or code not in IDX_DTYPES or dims == 0:
        return -1
    header_len = 4 + 4 * dims
    if len(head) < header_len:
        return None
    shape = struct.unpack(f">{dims}I", head[4:header_len])
    return header_len + math.prod(shape) * IDX_DTYPES[code].itemsize


def gunzip_idx(data: bytes, name: str = "<bytes>", max_bytes: int = MAX_IDX_BYTES) -> bytearray:
    """Inflate gzip ``data`` holding an IDX file, bounded by what its header declares and ``max_bytes``.

    Output is produced at most :data:`_CHUNK` bytes at a time. As soon as the IDX
    header is out, the stream may yield no more than the header's declared size
    (and a header declaring more than ``max_bytes`` is refused at once); a stream
    that goes further raises :class:`DataError` without inflating the rest.
    Concatenated gzip members are read like :func:`gzip.decompress` does;
    trailing zero padding is ignored, other trailing bytes are an error.
    Returns the content as a ``bytearray`` (no second copy of a large file).
    """
    out = bytearray()
    limit = max_bytes
    header_known = False
    pending = data
    try:
        while True:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper: header, CRC-32 and size checked
            buf = pending
            while not d.eof:
                chunk = d.decompress(buf, max(1, min(_CHUNK, limit + 1 - len(out))))
                buf = d.unconsumed_tail
                out += chunk
                if not header_known:
                    declared = _declared_size(bytes(out[:4 + 4 * 255]))
                    if declared == -1:
                        return out  # not an IDX header: parse_idx names the problem
                    if declared is not None:
                        header_known = True
                        if declared > max_bytes:
                            raise DataError(f"{name}: IDX header declares {declared} bytes, more than the "
                                            f"{max_bytes}-byte limit")
                        limit = declared
                if len(out) > limit:
                    what = "its IDX header declares" if header_known else "the limit"
                    raise DataError(f"{name}: gzip data decompresses beyond the {limit} bytes {what}")
                if not chunk and not buf and not d.eof:
                    raise DataError(f"{name}: corrupt or truncated gzip data (stream ends early)")
            pending = d.unused_data
            if not pending.strip(b"\x00"):
                break
            if pending[:2] != GZIP_MAGIC:
                raise DataError(f"{name}: corrupt gzip data (trailing bytes after the stream)")
    except zlib.error as exc:
        raise DataError(f"{name}: corrupt or truncated gzip data ({exc})") from None
    return out


def read_raw_bytes(path: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> bytes | bytearray:
    """Return the decompressed content of an IDX file (gzip detected by magic bytes).

    Refuses what is not a regular file (a FIFO would block), a file larger than
    ``max_bytes``, and a gzip stream that inflates beyond its header's size
    (see :func:`gunzip_idx`).
    """
    path = Path(path)
    try:
        st = path.stat()
        if stat.S_ISDIR(st.st_mode):
            raise DataError(f"{path}: cannot read (is a directory)")
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise DataError(f"{path}: {st.st_size} bytes, more than the {max_bytes}-byte limit for an IDX file")
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data:
        raise DataError(f"{path}: file is empty")
    if data[:2] == GZIP_MAGIC:
        raw = gunzip_idx(data, str(path), max_bytes)
        if not raw:
            raise DataError(f"{path}: gzip stream decompresses to an empty file")
        return raw
    if path.suffix == ".gz":
        raise DataError(f"{path}: named .gz but is not gzip-compressed")
    return data


def parse_idx(data: bytes | bytearray, name: str = "<bytes>", ndim: int | None = None) -> np.ndarray:
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


def read_idx(path: str | os.PathLike[str], ndim: int | None = None, max_bytes: int = MAX_IDX_BYTES) -> IdxFile:
    """Read an IDX file (raw or gzip) and return its array plus content checksum.

    Any problem with the file — unreadable, malformed, corrupt gzip, larger than
    ``max_bytes`` decompressed — raises :class:`~digitlab.errors.DataError`.
    """
    raw = read_raw_bytes(path, max_bytes)
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
