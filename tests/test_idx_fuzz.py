"""Property tests (Hypothesis) of the IDX reader: whatever the bytes, only ``DataError`` escapes.

Random bytes, and mutations (bit flips, byte overwrites, truncations, insertions)
of small valid IDX files, raw and gzip-compressed, are read with ``read_idx``;
it must either return an array consistent with the file's header or raise
:class:`digitlab.errors.DataError` — never another exception, never a hang.
Bounded to a few seconds: ``max_examples`` per test, no per-example deadline.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digitlab.data.idx import encode_idx, gunzip_idx, read_idx
from digitlab.errors import DataError

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])
CAP = 1 << 16
"""A small decompressed-size cap for the fuzzed reads: a mutated header may declare anything."""

VALID = [
    encode_idx(np.arange(20, dtype=np.uint8)),  # labels
    encode_idx(np.arange(2 * 5 * 4, dtype=np.uint8).reshape(2, 5, 4)),  # images
    encode_idx(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)),
    encode_idx(np.array([[1, -2], [300, -400]], dtype=np.int16)),
]


def _read(data: bytes, suffix: str, ndim: int | None = None) -> None:
    """``read_idx`` on ``data`` written to a temporary file: passes on success or DataError only."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f.idx{suffix}"
        path.write_bytes(data)
        try:
            got = read_idx(path, ndim=ndim, max_bytes=CAP)
        except DataError as exc:
            msg = str(exc)
            assert str(path) in msg and "\n" not in msg  # names the file, one line
            return
    # success: the array agrees with the header it came from
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    dims = raw[3]
    shape = struct.unpack(f">{dims}I", raw[4:4 + 4 * dims])
    assert got.array.shape == shape and got.array.dtype.isnative
    if ndim is not None:
        assert got.array.ndim == ndim


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
            continue
        if not data:
            data += draw(st.binary(min_size=1, max_size=4))
            continue
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[i] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from(["", ".gz"]), ndim=st.sampled_from([None, 1, 3]))
def test_random_bytes(data: bytes, suffix: str, ndim: int | None) -> None:
    _read(data, suffix, ndim)


@FUZZ
@given(data=st.binary(max_size=200))
def test_random_bytes_behind_a_gzip_magic(data: bytes) -> None:
    _read(b"\x1f\x8b" + data, ".gz")


@FUZZ
@given(data=mutated(), ndim=st.sampled_from([None, 1]))
def test_mutated_raw_files(data: bytes, ndim: int | None) -> None:
    _read(data, "", ndim)


@FUZZ
@given(data=mutated())
def test_valid_content_mutated_then_gzipped(data: bytes) -> None:
    _read(gzip.compress(data, mtime=0), ".gz")


@st.composite
def mutated_gzip(draw: st.DrawFn) -> bytes:
    data = bytearray(gzip.compress(draw(st.sampled_from(VALID)), mtime=0))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "append"]))
        if kind == "truncate":
            data = data[:draw(st.integers(0, len(data)))]
        elif kind == "append":
            data += draw(st.binary(min_size=1, max_size=16))
        elif data:
            i = draw(st.integers(0, len(data) - 1))
            if kind == "flip":
                data[i] ^= 1 << draw(st.integers(0, 7))
            else:
                data[i] = draw(st.integers(0, 255))
    return bytes(data)


@FUZZ
@given(data=mutated_gzip())
def test_mutated_gzip_streams(data: bytes) -> None:
    _read(data, ".gz")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(shape=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4),
       code=st.sampled_from([8, 9, 11, 12, 13, 14]), extra=st.integers(0, 4096))
def test_any_declared_shape_inflates_at_most_to_the_cap(shape: list[int], code: int, extra: int) -> None:
    head = struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape)
    stream = gzip.compress(head + bytes(extra), mtime=0)
    try:
        out = gunzip_idx(stream, "s", max_bytes=CAP)
    except DataError:
        return
    assert len(out) <= CAP


def test_unmutated_files_read_back() -> None:
    # the seeds of the mutations are themselves valid (so mutations start from real files)
    for data in VALID:
        for blob, suffix in ((data, ""), (gzip.compress(data), ".gz")):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"ok.idx{suffix}"
                path.write_bytes(blob)
                assert read_idx(path).array.size > 0
