"""Checkpoints: safetensors weights with the metadata needed to rebuild the model.

A checkpoint is one ``.safetensors`` file whose header metadata holds a JSON
document (key ``digitlab``): model name and kwargs, training config, metrics,
data checksums, package versions and git commit. A run directory keeps it as
``model.safetensors`` with a readable copy in ``meta.json``. Loading needs no
flags and never unpickles anything.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from digitlab.errors import CheckpointError
from digitlab.utils import atomic_path, to_jsonable, write_json_atomic

FORMAT = "digitlab-checkpoint/1"
META_KEY = "digitlab"
MODEL_FILE = "model.safetensors"
META_FILE = "meta.json"


def package_versions() -> dict[str, str]:
    import numpy

    import digitlab

    return {"digitlab": digitlab.__version__, "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def build_meta(model: nn.Module, config: dict | None = None, metrics: dict | None = None,
               data: dict | None = None, extra: dict | None = None) -> dict[str, Any]:
    """Metadata for ``model`` (which must come from :func:`create_model`)."""
    name = getattr(model, "digitlab_name", None)
    if name is None:
        raise CheckpointError("model was not built by digitlab.models.create_model")
    from digitlab.models import count_parameters

    meta = {
        "format": FORMAT,
        "model": name,
        "model_kwargs": getattr(model, "digitlab_kwargs", {}),
        "parameters": count_parameters(model),
        "config": config or {},
        "metrics": metrics or {},
        "data": data or {},
        "versions": package_versions(),
        "git_commit": git_commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta.update(extra or {})
    return to_jsonable(meta)


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights + metadata atomically to ``path`` (a ``.safetensors`` file)."""
    path = Path(path)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return path


def save_run_checkpoint(run_dir: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    run_dir = Path(run_dir)
    path = save_checkpoint(run_dir / MODEL_FILE, model, meta)
    write_json_atomic(run_dir / META_FILE, meta)
    return path


def checkpoint_file(source: str | os.PathLike[str]) -> Path:
    """Resolve a run directory or a file to the ``.safetensors`` checkpoint."""
    p = Path(source)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"{source}: no checkpoint found (expected a run directory or .safetensors file)")
    return p


def read_meta(source: str | os.PathLike[str]) -> dict[str, Any]:
    path = checkpoint_file(source)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no digitlab metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: digitlab metadata is not valid JSON") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def load_checkpoint(source: str | os.PathLike[str], device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns ``(model in eval mode, meta)``."""
    from digitlab.models import create_model

    path = checkpoint_file(source)
    meta = read_meta(path)
    model = create_model(meta["model"], **meta.get("model_kwargs", {}))
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    _resize_buffers(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model {meta['model']!r}: {exc}") from None
    return model.to(device).eval(), meta


def _resize_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Data-dependent buffers (fitted pixel selections, tree arrays) take the stored shape."""
    for name, buf in list(model.named_buffers()):
        if name in state and buf.shape != state[name].shape:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            module.register_buffer(attr, torch.empty_like(state[name]),
                                   persistent=True)
