"""Find a dataset's files: data dir, user cache, system dir, then download.

Order: ``--data-dir`` / ``$DIGITLAB_DATA_DIR`` → the user cache dir →
``/usr/share/datasets/<name>/`` → download into the first writable of those.
A download goes to a temp file, is verified, and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import gzip
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from digitlab.data.registry import SPLIT_FILES, DatasetSpec, FileSpec, get_dataset_spec
from digitlab.errors import DataError
from digitlab.utils import atomic_path

ENV_DATA_DIR = "DIGITLAB_DATA_DIR"
ENV_CACHE_DIR = "DIGITLAB_CACHE_DIR"
ENV_OFFLINE = "DIGITLAB_OFFLINE"


def cache_root() -> Path:
    """User cache folder (``$DIGITLAB_CACHE_DIR`` overrides platformdirs)."""
    env = os.environ.get(ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("digitlab"))


@dataclass(frozen=True)
class Candidate:
    directory: Path
    origin: str  # "data-dir", "cache", "system"


def candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike[str] | None = None) -> list[Candidate]:
    """Directories searched, in order."""
    out: list[Candidate] = []
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR)
    if explicit:
        out.append(Candidate(Path(explicit).expanduser(), "data-dir"))
    out.append(Candidate(cache_root() / "datasets" / spec.name, "cache"))
    out.append(Candidate(Path(spec.system_dir), "system"))
    return out


def find_file(directory: Path, fspec: FileSpec) -> Path | None:
    """The file in ``directory`` under its .gz or uncompressed name, if present."""
    for name in (fspec.filename, fspec.raw_name):
        p = directory / name
        if p.is_file():
            return p
    return None


def files_in(directory: Path, spec: DatasetSpec) -> dict[str, Path] | None:
    found = {key: find_file(directory, spec.files[key]) for key in SPLIT_FILES}
    if all(found.values()):
        return found  # type: ignore[return-value]
    return None


@dataclass(frozen=True)
class ResolvedFiles:
    spec: DatasetSpec
    directory: Path
    origin: str
    paths: dict[str, Path]


def missing_files_message(spec: DatasetSpec, dirs: list[Candidate], reason: str) -> str:
    names = ", ".join(spec.files[k].filename for k in SPLIT_FILES)
    where = " or ".join(str(c.directory) for c in dirs if c.origin != "system")
    return f"{spec.name}: {reason}; put {names} in {where} (or pass --data-dir DIR)"


def resolve_files(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    progress: bool = True,
    mirrors: tuple[str, ...] | None = None,
) -> ResolvedFiles:
    """Locate the dataset's four files, downloading them if allowed and needed."""
    spec = get_dataset_spec(name)
    dirs = candidate_dirs(spec, data_dir)
    for cand in dirs:
        found = files_in(cand.directory, spec)
        if found:
            return ResolvedFiles(spec, cand.directory, cand.origin, found)
    if not download or os.environ.get(ENV_OFFLINE, "") not in ("", "0"):
        raise DataError(missing_files_message(spec, dirs, "files not found and downloads are off"))
    target = dirs[0].directory  # explicit data dir if given, else the cache
    paths = download_dataset(spec, target, mirrors=mirrors, progress=progress, dirs=dirs)
    return ResolvedFiles(spec, target, dirs[0].origin, paths)


def verify_bytes(fspec: FileSpec, data: bytes) -> bool:
    """True when ``data`` (a .gz or raw file) matches a known checksum."""
    if hashlib.sha256(data).hexdigest() in fspec.gz_sha256:
        return True
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError):
        return False
    return hashlib.sha256(raw).hexdigest() == fspec.raw_sha256


def download_dataset(
    spec: DatasetSpec,
    target: Path,
    mirrors: tuple[str, ...] | None = None,
    progress: bool = True,
    dirs: list[Candidate] | None = None,
    retries: int = 2,
    timeout: float = 30.0,
) -> dict[str, Path]:
    """Download every missing file of ``spec`` into ``target``; verify before renaming."""
    mirrors = mirrors or spec.mirrors
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target}: {exc.strerror or exc}") from None
    paths: dict[str, Path] = {}
    for key in SPLIT_FILES:
        fspec = spec.files[key]
        existing = find_file(target, fspec)
        if existing is not None:
            paths[key] = existing
            continue
        errors: list[str] = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + fspec.filename
            data = _fetch(url, retries, timeout, progress, fspec, errors)
            if data is None:
                continue
            if not verify_bytes(fspec, data):
                errors.append(f"{url}: checksum mismatch")
                continue
            dest = target / fspec.filename
            with atomic_path(dest) as tmp:
                tmp.write_bytes(data)
            paths[key] = dest
            break
        else:
            detail = "; ".join(errors[-len(mirrors):]) or "no mirrors"
            raise DataError(
                missing_files_message(spec, dirs or [Candidate(target, "data-dir")],
                                      f"could not download {fspec.filename} ({detail})")
            )
    return paths


def _fetch(url: str, retries: int, timeout: float, progress: bool, fspec: FileSpec,
           errors: list[str]) -> bytes | None:
    for attempt in range(retries):
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "digitlab"})
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                total = int(resp.headers.get("Content-Length") or fspec.gz_size or 0) or None
                return _read_with_progress(resp, total, fspec.filename, progress)
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            if 400 <= exc.code < 500:
                return None  # not there: retrying the same mirror won't help
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            errors.append(f"{url}: {reason}")
        if attempt + 1 < retries:
            time.sleep(0.2 * (attempt + 1))
    return None


def _read_with_progress(resp, total: int | None, desc: str, progress: bool) -> bytes:  # noqa: ANN001
    from tqdm import tqdm

    chunks: list[bytes] = []
    with tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress, leave=False) as bar:
        while True:
            chunk = resp.read(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
            bar.update(len(chunk))
    return b"".join(chunks)
