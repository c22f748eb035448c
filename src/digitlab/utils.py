"""Small helpers shared across the package: atomic writes, JSON, devices."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the destination's folder; rename it over ``path`` on success.

    A reader never sees a half-written file: either the old content or the new.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _fsync_file(path: Path) -> None:
    """Flush a file's data to disk, so a rename never exposes an empty file after a power loss."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_files_atomic(folder: str | os.PathLike[str], files: dict[str, bytes]) -> list[str]:
    """Write ``{name: bytes}`` into ``folder``, each file atomically; returns the paths written."""
    paths = []
    for name, data in files.items():
        write_bytes_atomic(Path(folder) / name, data)
        paths.append(str(Path(folder) / name))
    return paths


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op torch threads, then restore the previous setting."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_new_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a new file atomically; refuse if ``path`` exists (even if created meanwhile)."""
    from digitlab.errors import RunExistsError

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        try:
            os.link(tmp, path)  # atomic and no-clobber
        except FileExistsError:
            raise RunExistsError(exists_message(path)) from None
        except OSError:  # filesystem without hard links
            if path.exists():
                raise RunExistsError(exists_message(path)) from None
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def refuse_existing(path: str | os.PathLike[str]) -> None:
    """Raise ``RunExistsError`` if an output file is already there (checked before any work is done)."""
    if Path(path).exists():
        from digitlab.errors import RunExistsError

        raise RunExistsError(exists_message(path))


def exists_message(path: str | os.PathLike[str], what: str | None = None) -> str:
    """The one-line error for an output that already exists."""
    return f"{what + ' ' if what else ''}{path} already exists; choose another --out or delete it first"


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def to_jsonable(obj: Any) -> Any:
    """Round-trip through JSON so numpy/torch scalars become plain Python values."""
    return json.loads(json.dumps(obj, default=_json_default))


def resolve_device(device: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a torch device; ``auto`` picks CUDA when present."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        from digitlab.errors import ConfigError

        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        from digitlab.errors import ConfigError

        raise ConfigError(f"unknown device {device!r}") from exc


def ensure_new_dir(path: str | os.PathLike[str], what: str = "output directory") -> Path:
    """Create ``path`` as a new directory; refuse if it exists and is not empty."""
    from digitlab.errors import RunExistsError

    path = Path(path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunExistsError(exists_message(path, what))
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine_summary() -> dict[str, Any]:
    """CPU model, core count, Python and platform, without importing torch (for result files)."""
    import platform

    cpu = platform.processor() or ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            lines = fh.read().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), cpu)
        flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    except OSError:
        pass
    # two hosts sold under one model name ("AMD EPYC") differ in what decides training speed here:
    # the vector width, and bfloat16 instructions (AVX-512 BF16 / AMX) or none
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else None
    bf16 = bool(flags & {"avx512_bf16", "amx_bf16"}) if flags else None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "simd": simd, "bf16_instructions": bf16}


def native_bf16(device: Any) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, or a CPU with
    AVX-512 BF16 / AMX (oneDNN's bf16 kernels). Elsewhere bf16 autocast falls back to generic
    convolution kernels, many times slower than float32 (on an AVX2 CPU, for example)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False
