"""The data layer: IDX files, resolver, downloads, cache, splits, batches, augmentation, ``digitlab data``."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from digitlab.cli import main as cli_main
from digitlab.data import (
    AugmentConfig,
    BatchIterator,
    augment_batch,
    load_dataset,
    make_splits,
    read_idx,
    stratified_indices,
    to_float,
    write_idx,
)
from digitlab.data import dataset as dataset_mod
from digitlab.data import resolve as resolve_mod
from digitlab.data.augment import (
    _gaussian_kernel,
    affine_grid,
    affine_matrices,
    random_affine_matrices,
    smoothing_matrix,
    warp,
)
from digitlab.data.idx import encode_idx
from digitlab.data.registry import DATASETS, MNIST, SPLIT_FILES, DatasetSpec, FileSpec
from digitlab.data.splits import Split
from digitlab.errors import ConfigError, DataError

MNIST_INFO = {
    "dataset": "mnist",
    "splits": {
        "train": {"count": 60000,
                  "class_counts": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]},
        "test": {"count": 10000,
                 "class_counts": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]},
    },
}


# --------------------------------------------------------------------------- synthetic datasets

def synth_arrays(n_train: int = 40, n_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random MNIST-shaped arrays with every class present."""
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }


def write_dataset(folder: Path, arrays: dict[str, np.ndarray], spec: DatasetSpec = MNIST) -> Path:
    """Write the four files under ``spec``'s canonical .gz names."""
    folder.mkdir(parents=True, exist_ok=True)
    for key in SPLIT_FILES:
        write_idx(folder / spec.files[key].filename, arrays[key])
    return folder


def synth_spec(arrays: dict[str, np.ndarray], name: str = "synth", mirrors: tuple[str, ...] = (),
               system_dir: str = "/nonexistent/digitlab-system") -> DatasetSpec:
    """A dataset spec whose checksums match ``arrays`` (so downloads and verification accept them)."""
    files = {}
    for key in SPLIT_FILES:
        raw = encode_idx(arrays[key])
        files[key] = FileSpec(MNIST.files[key].filename, raw_sha256=hashlib.sha256(raw).hexdigest(),
                              raw_size=len(raw))
    return DatasetSpec(name=name, files=files, mirrors=mirrors, class_names=MNIST.class_names,
                       system_dir=system_dir, train_count=len(arrays["train_labels"]),
                       test_count=len(arrays["test_labels"]))


@pytest.fixture
def synth(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A registered synthetic dataset ``synth`` with its own system dir; yields (spec, arrays)."""
    arrays = synth_arrays()
    spec = synth_spec(arrays, system_dir=str(tmp_path / "system"))
    monkeypatch.setitem(DATASETS, spec.name, spec)
    monkeypatch.delenv("DIGITLAB_DATA_DIR", raising=False)
    monkeypatch.delenv("DIGITLAB_OFFLINE", raising=False)
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    return spec, arrays


def leftovers(folder: Path) -> list[str]:
    """Temp files an interrupted or failed write could leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


# --------------------------------------------------------------------------- IDX round trip

@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", "<i2", "i4", "f4", ">f8"])
@pytest.mark.parametrize("suffix", [".gz", ""])
def test_idx_round_trip(tmp_path: Path, dtype: str, suffix: str) -> None:
    rng = np.random.default_rng(1)
    array = (rng.standard_normal((3, 5, 7)) * 100).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    is_gzip = path.read_bytes()[:2] == b"\x1f\x8b"
    assert is_gzip == (suffix == ".gz")
    got = read_idx(path)
    assert got.array.shape == array.shape
    assert got.array.dtype == np.dtype(dtype).newbyteorder("=")
    np.testing.assert_array_equal(got.array, array)
    assert got.array.flags.writeable  # callers may modify what they read
    assert got.raw_sha256 == hashlib.sha256(encode_idx(array)).hexdigest()
    assert leftovers(tmp_path) == []


def test_idx_layout_is_big_endian_with_header(tmp_path: Path) -> None:
    path = tmp_path / "x.idx"
    write_idx(path, np.array([[1, 2, 3], [4, 5, 256]], dtype=np.int16))
    data = path.read_bytes()
    assert data[:4] == bytes([0, 0, 0x0B, 2])
    assert struct.unpack(">II", data[4:12]) == (2, 3)
    assert struct.unpack(">6h", data[12:]) == (1, 2, 3, 4, 5, 256)


def test_write_idx_compress_flag_overrides_name(tmp_path: Path) -> None:
    a = np.arange(10, dtype=np.uint8)
    write_idx(tmp_path / "plain", a, compress=True)
    assert (tmp_path / "plain").read_bytes()[:2] == b"\x1f\x8b"
    np.testing.assert_array_equal(read_idx(tmp_path / "plain").array, a)


# --------------------------------------------------------------------------- malformed files

def _idx(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(">HBB", 0, code, len(shape)) + struct.pack(f">{len(shape)}I", *shape) + payload


GOOD_LABELS = _idx(0x08, (10,), bytes(range(10)))

MALFORMED = {
    # case: (file name, content, ndim expected by the reader, words the message must contain)
    "truncated payload": ("l.idx", GOOD_LABELS[:-3], 1, ["truncated", "10 bytes", "has 7"]),
    "trailing bytes": ("l.idx", GOOD_LABELS + b"xx", 1, ["trailing"]),
    "truncated gzip": ("l.idx.gz", gzip.compress(GOOD_LABELS * 50)[:-30], 1, ["gzip"]),
    "corrupt gzip": ("l.idx.gz", b"\x1f\x8b\x08\x00" + b"\xff" * 64, 1, ["gzip"]),
    "wrong magic": ("l.idx", b"\x12\x34" + GOOD_LABELS[2:], 1, ["magic"]),
    "unknown dtype code": ("l.idx", _idx(0x07, (10,), bytes(10)), 1, ["dtype", "0x07"]),
    "labels with 3 dims": ("l.idx", _idx(0x08, (2, 2, 2), bytes(8)), 1, ["expected 1 dimensions", "3"]),
    "zero dims": ("l.idx", b"\x00\x00\x08\x00", None, ["zero dimensions"]),
    "truncated header": ("l.idx", b"\x00\x00\x08\x03\x00\x00", None, ["header"]),
    "too short": ("l.idx", b"\x00\x00", None, ["too short"]),
    ".gz that is not gzip": ("l.idx.gz", GOOD_LABELS, 1, ["not gzip"]),
    "empty file": ("l.idx", b"", 1, ["empty"]),
    "empty .gz file": ("l.idx.gz", b"", 1, ["empty"]),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_idx_raises_data_error_naming_file(tmp_path: Path, case: str) -> None:
    name, content, ndim, words = MALFORMED[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path, ndim=ndim)
    msg = str(info.value)
    assert str(path) in msg
    for word in words:
        assert word in msg, f"{case}: {word!r} not in {msg!r}"
    assert "\n" not in msg


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.gz: file not found"):
        read_idx(tmp_path / "nope.gz")
    (tmp_path / "adir").mkdir()
    with pytest.raises(DataError, match=r"adir: cannot read"):
        read_idx(tmp_path / "adir")


def test_hostile_header_shape_does_not_overflow(tmp_path: Path) -> None:
    path = tmp_path / "big.idx"
    path.write_bytes(_idx(0x0E, (2**32 - 1,) * 4, b"\x00" * 8))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def _gzip_of_zeros(head: bytes, zeros: int) -> bytes:
    """A gzip stream of ``head`` followed by ``zeros`` zero bytes, compressed piecewise (~1 kB per MB)."""
    import zlib

    c = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [c.compress(head)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        parts.append(c.compress(block))
    parts.append(c.compress(bytes(zeros & ((1 << 20) - 1))))
    parts.append(c.flush())
    return b"".join(parts)


def test_gzip_bomb_stops_at_the_header_size(tmp_path: Path) -> None:
    import tracemalloc

    # issue 15: a small .gz whose header declares 10 labels but that inflates to 300 MB
    bomb = _gzip_of_zeros(_idx(0x08, (10,), b""), 300 << 20)
    assert len(bomb) < 1 << 20  # under a megabyte on disk
    path = tmp_path / "bomb-labels.idx.gz"
    path.write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="decompresses beyond the 18 bytes its IDX header declares"):
            read_idx(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB while refusing the bomb"  # one chunk, not 300 MB


def test_downloaded_gzip_bomb_is_rejected_without_inflating() -> None:
    # a hostile mirror serving a bomb in place of train-labels: checked with the same bounded inflate
    fspec = MNIST.files["train_labels"]
    bomb = _gzip_of_zeros(_idx(0x08, (60000,), b""), 200 << 20)
    assert resolve_mod.verify_bytes(fspec, bomb) is False
    real = encode_idx(np.zeros(3, np.uint8))
    assert resolve_mod.verify_bytes(FileSpec(fspec.filename, hashlib.sha256(real).hexdigest(), len(real)),
                                    gzip.compress(real)) is True


def test_gzip_idx_size_caps(tmp_path: Path) -> None:
    # a header declaring more than the hard cap is refused before its payload is inflated
    huge = tmp_path / "huge.idx.gz"
    huge.write_bytes(gzip.compress(_idx(0x08, (60000, 28, 28), bytes(1000))))
    with pytest.raises(DataError, match="declares 47040016 bytes, more than the 1000000-byte limit"):
        read_idx(huge, max_bytes=1_000_000)
    # without an IDX header to go by, the hard cap bounds the stream itself
    headerless = tmp_path / "x.idx.gz"
    headerless.write_bytes(gzip.compress(bytes(3)))  # shorter than a header: parse_idx says why
    with pytest.raises(DataError, match="too short"):
        read_idx(headerless)
    # a well-formed file exactly at its declared size still reads, also as two gzip members
    arr = np.arange(30, dtype=np.uint8).reshape(3, 10)
    raw = encode_idx(arr)
    two = tmp_path / "two.idx.gz"
    two.write_bytes(gzip.compress(raw[:20]) + gzip.compress(raw[20:]) + b"\x00" * 8)
    np.testing.assert_array_equal(read_idx(two).array, arr)
    two.write_bytes(gzip.compress(raw) + b"junk")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(two)
    # an uncompressed file larger than the cap is refused before it is read
    big = tmp_path / "big.idx"
    big.write_bytes(raw)
    with pytest.raises(DataError, match="more than the 40-byte limit"):
        read_idx(big, max_bytes=40)


def test_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "labels.idx"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        read_idx(fifo)


def _load_dir(folder: Path):
    return load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False,
                        use_cache=False)


def test_dataset_level_checks_name_the_file(tmp_path: Path) -> None:
    arrays = synth_arrays()
    folder = write_dataset(tmp_path / "ok", arrays)
    ds = _load_dir(folder)  # the synthetic set itself loads
    assert ds.train_images.shape == (40, 28, 28) and ds.test_labels.dtype == torch.int64

    # images/labels count mismatch
    bad = dict(arrays, train_labels=arrays["train_labels"][:-1])
    folder = write_dataset(tmp_path / "count", bad)
    with pytest.raises(DataError) as info:
        _load_dir(folder)
    msg = str(info.value)
    assert "train-labels-idx1-ubyte.gz" in msg and "39 labels" in msg and "40 images" in msg

    # a label outside 0..9
    labels = arrays["test_labels"].copy()
    labels[7] = 10
    folder = write_dataset(tmp_path / "label", dict(arrays, test_labels=labels))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: label 10 at index 7 is outside 0\.\.9"):
        _load_dir(folder)

    # a labels file with three dimensions under the canonical name
    folder = write_dataset(tmp_path / "dims", arrays)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros((40, 1, 1), np.uint8))
    with pytest.raises(DataError, match=r"labels-idx1-ubyte\.gz: expected 1 dimensions, header declares 3"):
        _load_dir(folder)

    # images that are not 28x28
    folder = write_dataset(tmp_path / "size", dict(arrays, test_images=np.zeros((20, 27, 28), np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: images are \(27, 28\)"):
        _load_dir(folder)

    # non-uint8 data
    wide_labels = arrays["train_labels"].astype(np.int32)
    folder = write_dataset(tmp_path / "dtype", dict(arrays, train_labels=wide_labels))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz: expected uint8"):
        _load_dir(folder)


def test_cli_truncated_file_one_line_exit_2_no_traceback(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "data", synth_arrays())
    target = folder / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])  # an interrupted copy
    proc = subprocess.run(
        [sys.executable, "-m", "digitlab", "data", "info", "--data-dir", str(folder)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("digitlab: error: ")
    assert str(target) in lines[0] and "gzip" in lines[0]
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_cli_truncated_raw_payload_in_process(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    arrays = synth_arrays()
    for key in SPLIT_FILES:  # uncompressed files under the raw names are accepted too
        (folder / MNIST.files[key].raw_name).write_bytes(encode_idx(arrays[key]))
    target = folder / "train-images-idx3-ubyte"
    target.write_bytes(target.read_bytes()[:-100])
    assert cli_main(["data", "info", "--data-dir", str(folder)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(target) in err[0] and "truncated" in err[0]


# --------------------------------------------------------------------------- checksums

def test_checksum_mismatch_under_canonical_name(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = write_dataset(tmp_path / "fake", synth_arrays())  # valid IDX, not MNIST's content
    with pytest.raises(DataError) as info:
        load_dataset("mnist", data_dir=folder, download=False, progress=False)
    msg = str(info.value)
    assert "checksum" in msg and "train-images-idx3-ubyte.gz" in msg
    assert cli_main(["data", "verify", "--data-dir", str(folder)]) == 2
    assert "checksum" in capsys.readouterr().err


def test_unverified_cache_entry_is_not_served_to_a_verifying_load(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_dataset(tmp_path / "fake", synth_arrays())
    load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False)  # caches it
    with pytest.raises(DataError, match="checksum"):
        load_dataset("mnist", data_dir=folder, download=False, progress=False)


# --------------------------------------------------------------------------- resolver

def test_resolver_order(synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec, arrays = synth
    explicit = write_dataset(tmp_path / "explicit", arrays)
    env = write_dataset(tmp_path / "env", arrays)
    cache = write_dataset(resolve_mod.cache_root() / "datasets" / spec.name, arrays)
    system = write_dataset(Path(spec.system_dir), arrays)
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(env))

    def boom(*a, **k):
        raise AssertionError("download attempted although files exist")

    monkeypatch.setattr(resolve_mod, "download_dataset", boom)
    resolve = resolve_mod.resolve_files
    assert resolve("synth", data_dir=explicit).directory == explicit      # --data-dir beats everything
    assert resolve("synth").directory == env                              # then $DIGITLAB_DATA_DIR
    monkeypatch.delenv("DIGITLAB_DATA_DIR")
    assert resolve("synth").directory == cache                            # then the cache
    assert resolve("synth").origin == "cache"
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "empty"))  # an env dir without files is skipped
    for p in cache.iterdir():
        p.unlink()
    got = resolve("synth")
    assert (got.directory, got.origin) == (system, "system")              # then the system dir
    assert got.paths["train_images"] == system / "train-images-idx3-ubyte.gz"

    # only when nothing is found anywhere is a download attempted (into the first writable dir)
    for p in system.iterdir():
        p.unlink()
    calls = []

    def fake_download(spec_, target, mirrors=None, progress=True, dirs=None):
        calls.append(target)
        write_dataset(target, arrays)
        return {k: target / spec_.files[k].filename for k in SPLIT_FILES}

    monkeypatch.setattr(resolve_mod, "download_dataset", fake_download)
    got = resolve("synth", progress=False)
    # a generic $DIGITLAB_DATA_DIR gets a per-dataset sub-folder, so datasets sharing file names never mix
    assert calls == [tmp_path / "empty" / "synth"] and got.directory == tmp_path / "empty" / "synth"
    assert resolve("synth").directory == got.directory and len(calls) == 1  # found now: no new download
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(tmp_path / "synth"))  # a folder named after the dataset
    assert resolve("synth", progress=False).directory == tmp_path / "synth"
    assert calls[-1] == tmp_path / "synth"
    # the cache is the fallback target when there is no data dir
    monkeypatch.delenv("DIGITLAB_DATA_DIR")
    assert resolve("synth", progress=False).directory == resolve_mod.cache_root() / "datasets" / "synth"
    assert len(calls) == 3


def test_explicit_data_dir_does_not_fall_back(synth, tmp_path: Path) -> None:
    spec, arrays = synth
    write_dataset(resolve_mod.cache_root() / "datasets" / spec.name, arrays)
    typo = tmp_path / "typo"
    with pytest.raises(DataError) as info:
        resolve_mod.resolve_files("synth", data_dir=typo, download=False)
    msg = str(info.value)
    assert str(typo) in msg and "cache" not in msg


def test_env_dir_named_after_another_dataset_is_skipped(synth, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """MNIST and Fashion-MNIST share file names: $DIGITLAB_DATA_DIR=.../mnist must not serve fashion-mnist."""
    spec, arrays = synth
    other = write_dataset(tmp_path / "mnist", synth_arrays(seed=5))  # "mnist" is another registered name
    system = write_dataset(Path(spec.system_dir), arrays)
    monkeypatch.setenv("DIGITLAB_DATA_DIR", str(other))
    assert resolve_mod.resolve_files("synth", download=False).directory == system
    # a parent folder with one sub-folder per dataset works as well
    sub = write_dataset(tmp_path / "mnist" / "synth", arrays)
    assert resolve_mod.resolve_files("synth", download=False).directory == sub


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_message_names_files_and_places(synth, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                how: str) -> None:
    spec, _ = synth
    kwargs = {}
    if how == "env":
        monkeypatch.setenv("DIGITLAB_OFFLINE", "1")
    else:
        kwargs["download"] = False
    with pytest.raises(DataError) as info:
        load_dataset("synth", progress=False, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "downloads are off" in msg
    for key in SPLIT_FILES:
        assert spec.files[key].filename in msg
    assert str(resolve_mod.cache_root() / "datasets" / "synth") in msg and "--data-dir" in msg


# --------------------------------------------------------------------------- downloads

class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server API
        status, body, length = self.server.routes.get(self.path, (404, b"not found", None))  # type: ignore[attr-defined]
        self.send_response(status)
        self.send_header("Content-Length", str(length if length is not None else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_server():
    """A local HTTP server on an ephemeral port; tests fill ``server.routes``; yields the base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.routes = {}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _refused_url() -> str:
    """A URL on a port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/mnist/"


def _serve(server, prefix: str, spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> None:
    for key in SPLIT_FILES:
        body = gzip.compress(encode_idx(arrays[key]))
        server.routes[f"{prefix}{spec.files[key].filename}"] = (200, body, None)


def _serve_corrupt(server, prefix: str, spec: DatasetSpec, arrays: dict[str, np.ndarray]) -> None:
    good = {k: gzip.compress(encode_idx(arrays[k])) for k in SPLIT_FILES}
    f = {k: spec.files[k].filename for k in SPLIT_FILES}
    # connection dropped mid-body: declares the full length, sends half
    server.routes[prefix + f["train_images"]] = (200, good["train_images"][:500], len(good["train_images"]))
    # gzip magic followed by garbage
    server.routes[prefix + f["train_labels"]] = (200, b"\x1f\x8b\x08\x00" + os.urandom(300), None)
    # a valid gzip IDX with other content
    other = synth_arrays(seed=9)
    server.routes[prefix + f["test_images"]] = (200, gzip.compress(encode_idx(other["test_images"])), None)
    # an HTML error page served with 200
    server.routes[prefix + f["test_labels"]] = (200, b"<html>gateway says no</html>", None)


def test_download_skips_bad_mirrors_and_verifies(synth, http_server, tmp_path: Path) -> None:
    spec, arrays = synth
    server, base = http_server
    _serve_corrupt(server, "/corrupt/", spec, arrays)
    _serve(server, "/good/", spec, arrays)
    mirrors = (_refused_url(), base + "/missing/", base + "/corrupt/", base + "/good/")
    target = tmp_path / "dl"
    got = resolve_mod.resolve_files("synth", data_dir=target, progress=False, mirrors=mirrors)
    assert got.directory == target
    assert sorted(p.name for p in target.iterdir()) == sorted(spec.files[k].filename for k in SPLIT_FILES)
    assert leftovers(target) == []
    ds = load_dataset("synth", data_dir=target, download=False, progress=False)  # verifies checksums
    np.testing.assert_array_equal(ds.train_images.numpy(), arrays["train_images"])
    np.testing.assert_array_equal(ds.test_labels.numpy(), arrays["test_labels"])


def test_download_all_mirrors_bad_leaves_nothing(synth, http_server, tmp_path: Path) -> None:
    spec, arrays = synth
    server, base = http_server
    _serve_corrupt(server, "/corrupt/", spec, arrays)
    target = tmp_path / "dl"
    with pytest.raises(DataError) as info:
        resolve_mod.resolve_files("synth", data_dir=target, progress=False,
                                  mirrors=(_refused_url(), base + "/missing/", base + "/corrupt/"))
    msg = str(info.value)
    assert "could not download train-images-idx3-ubyte.gz" in msg
    assert "Connection refused" in msg and "HTTP 404" in msg and "\n" not in msg
    assert "incomplete download (500 of" in msg
    assert list(target.iterdir()) == []  # no final file, no temp file


def test_download_partial_failure_keeps_only_verified_files(synth, http_server, tmp_path: Path) -> None:
    spec, arrays = synth
    server, base = http_server
    _serve(server, "/good/", spec, arrays)
    del server.routes["/good/t10k-images-idx3-ubyte.gz"]
    target = tmp_path / "dl"
    with pytest.raises(DataError, match=r"could not download t10k-images-idx3-ubyte\.gz \(.*HTTP 404"):
        resolve_mod.resolve_files("synth", data_dir=target, progress=False, mirrors=(base + "/good/",))
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"])
    for name in names:  # what is there is complete and verified
        key = next(k for k in SPLIT_FILES if spec.files[k].filename == name)
        assert read_idx(target / name).raw_sha256 == spec.files[key].raw_sha256


def test_cli_data_download_from_local_mirror(synth, http_server, tmp_path: Path,
                                             capsys: pytest.CaptureFixture) -> None:
    spec, arrays = synth
    server, base = http_server
    _serve(server, "/good/", spec, arrays)
    target = tmp_path / "dl"
    rc = cli_main(["data", "download", "--dataset", "synth", "--data-dir", str(target),
                   "--mirror", base + "/missing/", "--mirror", base + "/good/", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == str(target)
    assert set(out["files"]) == set(SPLIT_FILES)
    assert all(Path(p).is_file() and Path(p).parent == target for p in out["files"].values())
    assert cli_main(["data", "verify", "--dataset", "synth", "--data-dir", str(target), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


# --------------------------------------------------------------------------- cache

def test_second_load_is_served_from_cache(mnist_dir: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    first = load_dataset("mnist", data_dir=mnist_dir, download=False, progress=False)
    parse_s = time.perf_counter() - t0

    def no_parse(*a, **k):
        raise AssertionError("parse_files called although the cache is valid")

    monkeypatch.setattr(dataset_mod, "parse_files", no_parse)
    t0 = time.perf_counter()
    second = load_dataset("mnist", data_dir=mnist_dir, download=False, progress=False)
    cached_s = time.perf_counter() - t0
    assert torch.equal(first.train_images, second.train_images)
    assert torch.equal(first.test_labels, second.test_labels)
    assert second.checksums == first.checksums
    assert second.train_images.dtype == torch.uint8 and second.train_labels.dtype == torch.int64
    # the target is 0.1 s; the bound leaves room for a loaded 2-core CI machine
    assert cached_s < 0.5, f"cached load took {cached_s:.3f} s (full parse {parse_s:.3f} s)"
    # cached tensors are private (copy-on-write): writing one never touches the cache file
    second.train_images[0, 0, 0] = 77
    third = load_dataset("mnist", data_dir=mnist_dir, download=False, progress=False)
    assert int(third.train_images[0, 0, 0]) == int(first.train_images[0, 0, 0])


def test_cache_invalidated_when_files_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    folder = write_dataset(tmp_path / "d", synth_arrays(seed=1))
    a = load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False)
    new = synth_arrays(seed=2)
    write_idx(folder / "train-images-idx3-ubyte.gz", new["train_images"])
    b = load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False)
    assert not torch.equal(a.train_images, b.train_images)
    np.testing.assert_array_equal(b.train_images.numpy(), new["train_images"])
    entries = list((tmp_path / "cache" / "arrays" / "mnist").iterdir())
    assert len(entries) == 1  # the stale entry is removed


def test_damaged_cache_entry_is_reparsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DIGITLAB_CACHE_DIR", str(tmp_path / "cache"))
    arrays = synth_arrays()
    folder = write_dataset(tmp_path / "d", arrays)
    load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False)
    (entry,) = (tmp_path / "cache" / "arrays" / "mnist").iterdir()
    npy = entry / "train_images.npy"
    npy.write_bytes(npy.read_bytes()[:200])
    ds = load_dataset("mnist", data_dir=folder, download=False, progress=False, verify=False)
    np.testing.assert_array_equal(ds.train_images.numpy(), arrays["train_images"])


# --------------------------------------------------------------------------- splits

def test_split_stratified_deterministic_disjoint_complete(mnist) -> None:
    labels = mnist.train_labels
    tr, va = stratified_indices(labels, 0.1, seed=0)
    assert torch.unique(torch.cat([tr, va])).numel() == labels.numel() == tr.numel() + va.numel()
    assert not set(tr.tolist()) & set(va.tolist())
    counts = torch.bincount(labels, minlength=10)
    val_counts = torch.bincount(labels[va], minlength=10)
    for c in range(10):
        assert abs(int(val_counts[c]) - 0.1 * int(counts[c])) <= 1, (c, int(val_counts[c]), int(counts[c]))
    tr2, va2 = stratified_indices(labels, 0.1, seed=0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    _, va3 = stratified_indices(labels, 0.1, seed=1)
    assert not torch.equal(va, va3)
    assert torch.equal(torch.bincount(labels[va3], minlength=10), val_counts)


def test_make_splits(mnist) -> None:
    s = make_splits(mnist, val_fraction=0.1, seed=0)
    assert len(s.train) + len(s.val) == 60000 and abs(len(s.val) - 6000) <= 10
    assert len(s.test) == 10000 and s.train.images.shape[1:] == (28, 28)
    assert s.train.images.dtype == torch.uint8 and s.val.labels.dtype == torch.int64
    tr, va = stratified_indices(mnist.train_labels, 0.1, 0)
    assert torch.equal(s.val.images, mnist.train_images[va])
    none = make_splits(mnist, val_fraction=0.0)
    assert none.val is None and len(none.train) == 60000
    with pytest.raises(ConfigError):
        make_splits(mnist, val_fraction=1.0)


# --------------------------------------------------------------------------- batches

def _indexed_split(n: int) -> Split:
    """Images whose first pixel encodes the sample index (mod 256); labels are the index."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, 0] = torch.arange(n) % 256
    images[:, 5, 5] = 255
    return Split(images, torch.arange(n))


def test_batch_iterator_epochs() -> None:
    split = _indexed_split(103)
    it = BatchIterator(split, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert len(it) == 11
    epochs = []
    for _ in range(2):
        ys = []
        for x, y in it:
            assert x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) and x.shape[0] == y.shape[0]
            assert float(x.min()) >= 0.0 and float(x.max()) == 1.0
            assert torch.equal((x[:, 0, 0, 0] * 255).round().long(), y % 256)  # x and y stay paired
            ys.append(y)
        order = torch.cat(ys)
        assert sorted(order.tolist()) == list(range(103))  # every sample once per epoch
        epochs.append(order)
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled
    again = BatchIterator(split, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([y for _, y in again]), epochs[0])  # deterministic given the seed
    other = BatchIterator(split, batch_size=10, shuffle=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(torch.cat([y for _, y in other]), epochs[0])


def test_batch_iterator_drop_last_and_order() -> None:
    split = _indexed_split(25)
    it = BatchIterator(split, batch_size=10, shuffle=False, drop_last=True)
    batches = [y for _, y in it]
    assert len(it) == len(batches) == 2 and [b.numel() for b in batches] == [10, 10]
    assert torch.equal(torch.cat(batches), torch.arange(20))
    it = BatchIterator(split, batch_size=10, shuffle=False, drop_last=False)
    assert [y.numel() for _, y in it] == [10, 10, 5] and len(it) == 3
    assert len(BatchIterator(split, batch_size=30, drop_last=True)) == 0


def test_batch_iterator_applies_augment() -> None:
    split = _indexed_split(20)
    seen = []

    def aug(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        seen.append(x.shape[0])
        return 1 - x

    it = BatchIterator(split, batch_size=8, shuffle=False, augment=aug)
    xs = [x for x, _ in it]
    assert seen == [8, 8, 4] and float(xs[0][0, 0, 5, 5]) == 0.0


def test_to_float() -> None:
    u8 = torch.tensor([[[0, 128, 255]]], dtype=torch.uint8)
    x = to_float(u8)
    assert x.shape == (1, 1, 1, 3) and x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 128 / 255, 1.0]))
    f = torch.tensor([[[255.0]]])
    to_float(f)
    assert float(f) == 255.0  # a float input is not modified in place


# --------------------------------------------------------------------------- augmentation

ZERO = dict(rotation=0.0, zoom=0.0, shift=0.0, shear=0.0, brightness=0.0, contrast=0.0, elastic_alpha=0.0)


@pytest.fixture(scope="module")
def digits(mnist) -> torch.Tensor:
    return to_float(mnist.train_images[:64])


def test_augment_shape_range_determinism(digits: torch.Tensor) -> None:
    cfg = AugmentConfig(rotation=15, zoom=0.15, shift=0.1, shear=10, brightness=0.2, contrast=0.2,
                        elastic_alpha=2.0)
    before = digits.clone()
    a = augment_batch(digits, cfg, torch.Generator().manual_seed(0))
    b = augment_batch(digits, cfg, torch.Generator().manual_seed(0))
    c = augment_batch(digits, cfg, torch.Generator().manual_seed(1))
    assert a.shape == digits.shape and a.dtype == digits.dtype
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert torch.equal(a, b)
    assert (a - c).abs().amax(dim=(1, 2, 3)).min() > 0.05  # every image differs between seeds
    assert (a - digits).abs().amax(dim=(1, 2, 3)).min() > 0.05  # and from the original
    assert torch.equal(digits, before)  # the input batch is not modified


def test_augment_identity_config_returns_input(digits: torch.Tensor) -> None:
    out = augment_batch(digits, AugmentConfig(**ZERO), torch.Generator().manual_seed(0))
    assert (out - digits).abs().max() < 1e-5
    skipped = AugmentConfig(rotation=30, zoom=0.2, shift=0.2, brightness=0.3, contrast=0.3,
                            elastic_alpha=3.0, p=0.0)
    assert (augment_batch(digits, skipped, torch.Generator().manual_seed(0)) - digits).abs().max() < 1e-5
    half = augment_batch(digits, AugmentConfig(rotation=30, elastic_alpha=3.0, brightness=0.3, p=0.5),
                         torch.Generator().manual_seed(0))
    unchanged = ((half - digits).abs().amax(dim=(1, 2, 3)) < 1e-5).float().mean()
    assert 0.2 < float(unchanged) < 0.8  # about half the images are left alone entirely


def _centre_of_mass(img: torch.Tensor) -> tuple[float, float]:
    rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    m = img.sum()
    return float((img * rows).sum() / m), float((img * cols).sum() / m)


def test_rotation_by_known_angle() -> None:
    bar = torch.zeros(1, 1, 28, 28)
    bar[0, 0, 13:15, 6:22] = 1.0  # horizontal bar through the centre
    zero, one = torch.zeros(1), torch.ones(1)
    vertical = warp(bar, affine_matrices(torch.tensor([math.pi / 2]), one, zero, zero, zero))[0, 0]
    assert torch.allclose(vertical, bar[0, 0].T, atol=1e-5)  # 90° of a centred bar is its transpose
    row_mass, col_mass = vertical.sum(1), vertical.sum(0)
    assert int((row_mass > 0.5).sum()) == 16 and int((col_mass > 0.5).sum()) == 2

    dot = torch.zeros(1, 1, 28, 28)
    dot[0, 0, 13:15, 20:22] = 1.0  # right of centre
    up = warp(dot, affine_matrices(torch.tensor([math.pi / 2]), one, zero, zero, zero))[0, 0]
    r, c = _centre_of_mass(up)
    assert abs(r - 6.5) < 0.01 and abs(c - 13.5) < 0.01  # positive angle = counter-clockwise on screen
    moved = warp(dot, affine_matrices(zero, one, zero, torch.tensor([6 / 28]), torch.tensor([-4 / 28])))[0, 0]
    r, c = _centre_of_mass(moved)
    assert abs(r - 11.5) < 0.01 and abs(c - 23.5) < 0.01  # +x right by 3 px, -y up by 2 px


def test_elastic_on_off(digits: torch.Tensor) -> None:
    off = augment_batch(digits, AugmentConfig(**ZERO), torch.Generator().manual_seed(0))
    on_cfg = AugmentConfig(**dict(ZERO, elastic_alpha=3.0))
    on = augment_batch(digits, on_cfg, torch.Generator().manual_seed(0))
    assert (off - digits).abs().max() < 1e-5
    diff = (on - digits).abs().amax(dim=(1, 2, 3))
    assert bool((diff > 0.1).all())
    mass_ratio = on.sum(dim=(1, 2, 3)) / digits.sum(dim=(1, 2, 3))
    assert bool(((mass_ratio > 0.6) & (mass_ratio < 1.4)).all())  # a distortion, not a wipe-out
    # a large sigma (kernel wider than the image) and odd sizes work too
    wide = AugmentConfig(**dict(ZERO, elastic_alpha=3.0, elastic_sigma=20.0))
    odd = augment_batch(torch.rand(3, 1, 9, 11), wide, torch.Generator().manual_seed(0))
    assert odd.shape == (3, 1, 9, 11)


@pytest.mark.parametrize("h,w", [(28, 28), (9, 13)])
def test_fast_grid_and_blur_match_torch_reference(h: int, w: int) -> None:
    """The broadcast affine grid and matmul blur are drop-in replacements for the slow torch ops."""
    gen = torch.Generator().manual_seed(0)
    theta = random_affine_matrices(16, AugmentConfig(rotation=40, zoom=0.3, shift=0.2, shear=20), gen)
    ref = torch.nn.functional.affine_grid(theta, [16, 1, h, w], align_corners=False)
    assert torch.allclose(affine_grid(theta, h, w), ref, atol=1e-6)
    field = torch.rand(3, 2, h, w, generator=gen)
    for sigma in (1.0, 4.0, 30.0):
        r = min(h, w) - 1
        k = _gaussian_kernel(sigma, max_radius=r)
        pad = k.numel() // 2
        conv = torch.nn.functional.conv2d
        ref = conv(torch.nn.functional.pad(field, (pad, pad, 0, 0), mode="reflect"),
                   k.view(1, 1, 1, -1).repeat(2, 1, 1, 1), groups=2)
        ref = conv(torch.nn.functional.pad(ref, (0, 0, pad, pad), mode="reflect"),
                   k.view(1, 1, -1, 1).repeat(2, 1, 1, 1), groups=2)
        mine = smoothing_matrix(h, sigma, r) @ field @ smoothing_matrix(w, sigma, r).T
        assert torch.allclose(mine, ref, atol=1e-6), sigma


def test_augment_config_validation() -> None:
    with pytest.raises(ConfigError, match="rotation"):
        AugmentConfig(rotation=-1)
    with pytest.raises(ConfigError, match="zoom"):
        AugmentConfig(zoom=1.0)
    with pytest.raises(ConfigError, match="elastic_sigma"):
        AugmentConfig(elastic_alpha=1.0, elastic_sigma=0.0)
    with pytest.raises(ConfigError, match="p must"):
        AugmentConfig(p=1.5)
    AugmentConfig(**dict(ZERO, elastic_sigma=0.0))  # fine while elastic is off


# --------------------------------------------------------------------------- digitlab data (real MNIST)

def test_cli_data_info_json(mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "info", "--dataset", "mnist", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = dict(MNIST_INFO, source=str(mnist_dir.expanduser()))
    assert {k: out[k] for k in expected} == expected


def test_cli_data_info_text(capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "train: 60000 images" in out and "test: 10000 images" in out
    assert cli_main(["data", "info", "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.out == out and captured.err == ""


def test_cli_data_verify_mnist(mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "verify", "--data-dir", str(mnist_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is True and out["source"] == str(mnist_dir)
    assert {k: v["content_sha256"] for k, v in out["files"].items()} == {
        k: MNIST.files[k].raw_sha256 for k in SPLIT_FILES}


def test_cli_data_download_existing_files_is_a_no_op(mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["data", "download", "--data-dir", str(mnist_dir), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["source"] == str(mnist_dir) and set(out["files"]) == set(SPLIT_FILES)


def test_mnist_fixture_matches_spec(mnist) -> None:
    assert mnist.train_images.shape == (60000, 28, 28) and mnist.test_images.shape == (10000, 28, 28)
    assert mnist.train_images.dtype == torch.uint8 and mnist.train_labels.dtype == torch.int64
    assert torch.bincount(mnist.train_labels).tolist() == MNIST_INFO["splits"]["train"]["class_counts"]
    assert mnist.checksums == {k: MNIST.files[k].raw_sha256 for k in SPLIT_FILES}
