"""Resumable training state in one safetensors file (tensors + a JSON skeleton).

Nested dicts/lists holding tensors (optimizer state, callback state) are
flattened: every tensor gets a dotted key, and the JSON skeleton records
``{"__tensor__": key}`` where it stood. Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from digitlab.errors import CheckpointError
from digitlab.utils import atomic_path

_TENSOR = "__tensor__"
_INTKEYS = "__intkeys__"


def flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in ``obj`` by references, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        tensors[key] = obj.detach().contiguous().cpu()
        return {_TENSOR: key}
    if isinstance(obj, dict):
        int_keys = bool(obj) and all(isinstance(k, int) for k in obj)
        out = {str(k): flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()}
        if int_keys:
            out[_INTKEYS] = True
        return out
    if isinstance(obj, (list, tuple)):
        return [flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        int_keys = obj.get(_INTKEYS, False)
        return {(int(k) if int_keys else k): unflatten(v, tensors)
                for k, v in obj.items() if k != _INTKEYS}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, "s", tensors)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"digitlab_state": json.dumps(skeleton)})


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resumable state found")
    try:
        with safe_open(str(path), framework="pt") as f:
            skeleton = json.loads((f.metadata() or {})["digitlab_state"])
        tensors = load_file(str(path))
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt resumable state ({exc})") from None
    return unflatten(skeleton, tensors)
