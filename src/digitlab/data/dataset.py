"""Load a dataset as resident uint8 tensors, with a fast decoded-array cache.

The first load parses the IDX files and verifies their content checksums; the
decoded arrays are then cached as ``.npy`` files keyed by the source files'
path, size and mtime, so later loads skip gzip and hashing entirely.

Each key gets its own folder (``arrays/<name>/<key hash>/``) so two processes
loading different copies never mix one copy's arrays with the other's manifest;
the manifest records the content checksums, and a verifying load only accepts
a cache entry whose checksums are the dataset's canonical ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from digitlab.data.idx import read_idx
from digitlab.data.registry import SPLIT_FILES, DatasetSpec
from digitlab.data.resolve import cache_root, resolve_files
from digitlab.errors import DataError
from digitlab.utils import atomic_path, write_json_atomic

CACHE_VERSION = 2


@dataclass
class Dataset:
    """A whole dataset held in memory: images ``N×28×28`` uint8, labels int64."""

    name: str
    spec: DatasetSpec
    source: Path
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    checksums: dict[str, str] = field(default_factory=dict)
    """SHA-256 of each file's decompressed content, by split-file key."""

    @property
    def num_classes(self) -> int:
        return self.spec.num_classes

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "train":
            return self.train_images, self.train_labels
        if name == "test":
            return self.test_images, self.test_labels
        raise DataError(f"unknown split {name!r}; use train or test")


def _file_key(paths: dict[str, Path]) -> dict[str, list]:
    out = {}
    for key, p in paths.items():
        st = p.stat()
        out[key] = [str(p.resolve()), st.st_size, st.st_mtime_ns]
    return out


def _cache_dir(name: str, key: dict[str, list] | None = None) -> Path:
    """The dataset's cache folder, or the entry folder for ``key``."""
    folder = cache_root() / "arrays" / name
    if key is None:
        return folder
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / digest


def _load_cached(name: str, key: dict[str, list], spec: DatasetSpec | None = None
                 ) -> tuple[dict[str, np.ndarray], dict[str, str]] | None:
    """The cached arrays for ``key`` and their raw-file checksums.

    None when absent, stale, damaged or (with ``spec``) unverified.
    """
    folder = _cache_dir(name, key)
    try:
        meta = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or meta.get("files") != key:
        return None
    checksums = meta.get("checksums")
    if not isinstance(checksums, dict):
        return None
    if spec is not None and any(checksums.get(k) != spec.files[k].raw_sha256 for k in SPLIT_FILES):
        return None  # stored by a load with verify=False: parse again so the check runs
    try:
        # copy-on-write maps: writable private arrays without reading 55 MB up front; safe because
        # cache files are only ever replaced by rename (an open map keeps the old inode alive)
        arrays = {k: np.load(folder / f"{k}.npy", mmap_mode="c", allow_pickle=False) for k in SPLIT_FILES}
    except (OSError, ValueError, EOFError):
        return None
    for k, a in arrays.items():
        want_ndim = 3 if k.endswith("images") else 1
        if a.dtype != np.uint8 or a.ndim != want_ndim:
            return None
    for split in ("train", "test"):
        if arrays[f"{split}_images"].shape[0] != arrays[f"{split}_labels"].shape[0]:
            return None
    return arrays, {str(k): str(v) for k, v in checksums.items()}


def _store_cache(name: str, key: dict[str, list], arrays: dict[str, np.ndarray],
                 checksums: dict[str, str]) -> None:
    folder = _cache_dir(name, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for k in SPLIT_FILES:
            with atomic_path(folder / f"{k}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arrays[k], allow_pickle=False)
        write_json_atomic(folder / "manifest.json",
                          {"version": CACHE_VERSION, "files": key, "checksums": checksums})
    except OSError:
        return  # a read-only cache only costs speed
    # keep one entry per dataset: older entries (other copies, replaced files) only take space
    # (this also clears files of the version-1 layout, which kept them directly in arrays/<name>/)
    for other in _cache_dir(name).iterdir():
        if other == folder:
            continue
        if other.is_dir():
            shutil.rmtree(other, ignore_errors=True)
        else:
            other.unlink(missing_ok=True)


def parse_files(spec: DatasetSpec, paths: dict[str, Path], verify: bool = True
                ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse and validate the four IDX files; check checksums and consistency."""
    arrays: dict[str, np.ndarray] = {}
    checksums: dict[str, str] = {}
    for key in SPLIT_FILES:
        ndim = 3 if key.endswith("images") else 1
        idx = read_idx(paths[key], ndim=ndim)
        if verify and idx.raw_sha256 != spec.files[key].raw_sha256:
            raise DataError(
                f"{paths[key]}: checksum mismatch (content SHA-256 {idx.raw_sha256[:12]}…, "
                f"expected {spec.files[key].raw_sha256[:12]}…); delete it to re-download"
            )
        if idx.array.dtype != np.uint8:
            raise DataError(f"{paths[key]}: expected uint8 data, found {idx.array.dtype}")
        arrays[key] = idx.array
        checksums[key] = idx.raw_sha256
    validate_arrays(arrays, paths, spec.num_classes)
    return arrays, checksums


def validate_arrays(arrays: dict[str, np.ndarray], paths: dict[str, Path], num_classes: int) -> None:
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.shape[1:] != (28, 28):
            raise DataError(f"{paths[f'{split}_images']}: images are {images.shape[1:]}, expected 28×28")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{paths[f'{split}_labels']}: {labels.shape[0]} labels but "
                f"{paths[f'{split}_images'].name} has {images.shape[0]} images"
            )
        if labels.size and int(labels.max()) >= num_classes:
            bad = int(np.argmax(labels >= num_classes))
            raise DataError(
                f"{paths[f'{split}_labels']}: label {int(labels[bad])} at index {bad} "
                f"is outside 0..{num_classes - 1}"
            )


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
    use_cache: bool = True,
    verify: bool = True,
) -> Dataset:
    """Load ``name`` into memory as uint8 tensors (see module docstring for caching)."""
    resolved = resolve_files(name, data_dir=data_dir, download=download, progress=progress)
    key = _file_key(resolved.paths)
    cached = _load_cached(name, key, resolved.spec if verify else None) if use_cache else None
    if cached is not None:
        arrays, checksums = cached
    else:
        arrays, checksums = parse_files(resolved.spec, resolved.paths, verify=verify)
        if use_cache:
            _store_cache(name, key, arrays, checksums)
    return Dataset(
        name=name,
        spec=resolved.spec,
        source=resolved.directory,
        train_images=torch.from_numpy(np.ascontiguousarray(arrays["train_images"])),
        train_labels=torch.from_numpy(arrays["train_labels"].astype(np.int64)),
        test_images=torch.from_numpy(np.ascontiguousarray(arrays["test_images"])),
        test_labels=torch.from_numpy(arrays["test_labels"].astype(np.int64)),
        checksums=dict(checksums),
    )


def class_counts(labels: torch.Tensor, num_classes: int = 10) -> list[int]:
    return torch.bincount(labels, minlength=num_classes).tolist()
