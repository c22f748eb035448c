"""Find a dataset's files: data dir, user cache, system dir, then download.

Order: ``$DIGITLAB_DATA_DIR`` → the user cache dir → ``/usr/share/datasets/<name>/``
→ download into the first writable of the data dir and the cache. An explicit
``data_dir`` argument (``--data-dir``) replaces that search: only that folder is
looked at, and a download goes there, so a mistyped path is reported instead of
silently falling back to another copy.
A download goes to a temp file, is verified, and only then renamed into place.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from digitlab.data.idx import GZIP_MAGIC, gunzip_idx
from digitlab.data.registry import DATASETS, SPLIT_FILES, DatasetSpec, FileSpec, get_dataset_spec
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
    """Directories searched, in order (only ``data_dir`` itself when it is given)."""
    if data_dir is not None and str(data_dir) != "":
        return [Candidate(Path(data_dir).expanduser(), "data-dir")]
    out: list[Candidate] = []
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        root = Path(env).expanduser()
        # $DIGITLAB_DATA_DIR may be one dataset's folder or a parent of <name>/ folders.
        # MNIST and Fashion-MNIST share file names, so a folder named after another
        # dataset is not searched for this one (it would only fail its checksums), and
        # a download goes into <root>/<name>/ unless the folder is named after this dataset.
        if root.name == spec.name:
            out.append(Candidate(root, "data-dir"))
        else:
            out.append(Candidate(root / spec.name, "data-dir"))
            if root.name not in DATASETS:
                out.append(Candidate(root, "data-dir"))
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
    """One line: what went wrong, the four file names and where to put them."""
    names = ", ".join(spec.files[k].filename for k in SPLIT_FILES)
    where = " or ".join(str(c.directory) for c in dirs if c.origin != "system")
    explicit = len(dirs) == 1 and dirs[0].origin == "data-dir"  # --data-dir given: that is the place
    hint = "" if explicit else " (or pass --data-dir DIR)"
    return f"{spec.name}: {reason}; put {names} in {where}{hint}"


def _writable_target(dirs: list[Candidate]) -> Candidate | None:
    """The first non-system candidate folder we can create and write into."""
    for cand in dirs:
        if cand.origin == "system":
            continue
        try:
            cand.directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(cand.directory, os.W_OK | os.X_OK):
            return cand
    return None


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
    target = _writable_target(dirs)
    if target is None:
        raise DataError(missing_files_message(
            spec, dirs, "files not found and no writable folder to download them into"))
    paths = download_dataset(spec, target.directory, mirrors=mirrors, progress=progress, dirs=dirs)
    return ResolvedFiles(spec, target.directory, target.origin, paths)


def verify_bytes(fspec: FileSpec, data: bytes) -> bool:
    """True when ``data`` (a .gz or raw file) matches a known checksum."""
    if hashlib.sha256(data).hexdigest() in fspec.gz_sha256:
        return True
    try:
        # bounded like every IDX read: a hostile mirror's gzip bomb stops at the header's size
        raw = gunzip_idx(data, fspec.filename) if data[:2] == GZIP_MAGIC else data
    except DataError:
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
        failures: list[str] = []  # the last error of each mirror
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + fspec.filename
            errors: list[str] = []
            data = _fetch(url, retries, timeout, progress, fspec, errors)
            if data is None:
                failures.append(errors[-1] if errors else f"{url}: no data")
                continue
            if not verify_bytes(fspec, data):
                failures.append(f"{url}: checksum mismatch")
                continue
            dest = target / fspec.filename
            try:
                with atomic_path(dest) as tmp:
                    tmp.write_bytes(data)
            except OSError as exc:
                raise DataError(f"{dest}: cannot write ({exc.strerror or exc})") from None
            paths[key] = dest
            break
        else:
            detail = "; ".join(failures) or "no mirrors"
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
                declared = resp.headers.get("Content-Length")
                total = int(declared or fspec.gz_size or 0) or None
                data = _read_with_progress(resp, total, fspec.filename, progress)
            # read(amt) returns a short body without raising when the server hangs up early
            if declared and declared.isdigit() and len(data) != int(declared):
                errors.append(f"{url}: incomplete download ({len(data)} of {declared} bytes)")
            else:
                return data
        except urllib.error.HTTPError as exc:
            errors.append(f"{url}: HTTP {exc.code}")
            if 400 <= exc.code < 500:
                return None  # not there: retrying the same mirror won't help
        except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException, ValueError) as exc:
            # HTTPException: e.g. IncompleteRead when the server hangs up mid-body;
            # ValueError: a malformed mirror URL
            reason = getattr(exc, "reason", None) or exc.__class__.__name__ + (f" {exc}" if str(exc) else "")
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
