"""Checkpoints: safetensors weights with the metadata needed to rebuild the model.

A checkpoint is one ``.safetensors`` file whose header metadata holds a JSON
document (key ``digitlab``): model name and kwargs, training config, metrics,
data checksums, package versions and git commit. A run directory keeps it as
``model.safetensors`` with a readable copy in ``meta.json``. Loading needs no
flags and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError

from digitlab.errors import CheckpointError, ConfigError
from digitlab.utils import atomic_path, to_jsonable, write_json_atomic

if TYPE_CHECKING:  # torch is imported where it is used: reading metadata must not need it
    import torch
    from torch import nn

FORMAT = "digitlab-checkpoint/1"
META_KEY = "digitlab"
WEIGHTS_HASH_KEY = "weights_sha256"
"""Metadata key of the SHA-256 of the weights (:func:`weights_sha256`), checked on load when present."""
# The files of a run directory, named here once for every module that reads or writes them.
MODEL_FILE = "model.safetensors"
"""Final weights with their metadata (the file every command loads)."""
META_FILE = "meta.json"
"""Readable copy of the checkpoint metadata."""
CONFIG_FILE = "config.yaml"
"""The resolved training config; ``digitlab train --config RUN/config.yaml`` repeats the run."""
RESUME_FILE = "resume.safetensors"
"""Training state (weights, optimizer, progress) for ``--resume``; removed when the run completes."""
HISTORY_FILE = "history.csv"
"""One row per epoch (and per validation point) of losses, accuracies and learning rate."""
TENSORBOARD_DIR = "tensorboard"
"""TensorBoard event files (with the ``digitlab[tensorboard]`` extra)."""

DEFAULT_MODEL = "default"
"""The name that stands for the shipped model wherever a model or run is accepted."""
DEFAULT_MODEL_PATH = Path(__file__).resolve().parent / "pretrained" / "default.safetensors"
"""The model shipped with the package (``"default"``)."""
DEFAULT_DATASET = "mnist"
"""The dataset of a checkpoint whose metadata does not name one (older runs)."""


def package_versions() -> dict[str, str]:
    import numpy
    import torch

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


def weights_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict: every tensor's name, dtype, shape and bytes, in name order."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _write_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any]) -> dict[str, Any]:
    from safetensors.torch import save_file
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {**meta, WEIGHTS_HASH_KEY: weights_sha256(state)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    return meta


def save_checkpoint(path: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """Write weights + metadata atomically to ``path`` (a ``.safetensors`` file).

    The stored metadata gains ``weights_sha256`` (:func:`weights_sha256`), checked on load.
    """
    path = Path(path)
    _write_checkpoint(path, model, meta)
    return path


def save_run_checkpoint(run_dir: str | os.PathLike[str], model: nn.Module, meta: dict[str, Any]) -> Path:
    """``RUN/model.safetensors`` plus its readable metadata ``RUN/meta.json`` (with the weights' hash)."""
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    stored = _write_checkpoint(path, model, meta)
    write_json_atomic(run_dir / META_FILE, stored)
    return path


def is_default(source: str | os.PathLike[str]) -> bool:
    """True when ``source`` is the name ``"default"`` (the shipped model), not a path such as ``./default``."""
    return isinstance(source, str) and source == DEFAULT_MODEL


def checkpoint_file(source: str | os.PathLike[str]) -> Path:
    """Resolve ``"default"`` (the shipped model), a run directory or a file to the ``.safetensors`` checkpoint.

    The string ``"default"`` always means the shipped model; a run directory that happens
    to be called ``default`` is reached as ``./default``.
    """
    if is_default(source):
        if not DEFAULT_MODEL_PATH.is_file():
            raise CheckpointError(f"the default model is not installed ({DEFAULT_MODEL_PATH} is missing); "
                                  "give a run directory or a .safetensors checkpoint instead")
        return DEFAULT_MODEL_PATH
    p = Path(source)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.is_file():
        raise CheckpointError(f"{source}: no checkpoint found (expected 'default', a run directory "
                              "or a .safetensors file)")
    return p


def dataset_of(meta: dict[str, Any], default: str = DEFAULT_DATASET) -> str:
    """The dataset a checkpoint was trained on, read from its metadata: THE one dataset resolution.

    Looks at ``data.dataset`` (the data actually loaded), ``data.name``, ``config.dataset`` and
    ``config.data.dataset``, in that order; ``default`` when none is set.
    """
    def block(parent: dict[str, Any], key: str) -> dict[str, Any]:
        value = parent.get(key)
        return value if isinstance(value, dict) else {}

    data, config = block(meta, "data"), block(meta, "config")
    nested = block(config, "data")
    for value in (data.get("dataset"), data.get("name"), config.get("dataset"), nested.get("dataset")):
        if isinstance(value, str) and value:
            return value
    return default


def resolve_dataset(meta: dict[str, Any], override: str | None) -> str:
    """The dataset to score a saved model on: ``override`` (``--dataset``) when given, else its own."""
    return override if override else dataset_of(meta)


def read_meta(source: str | os.PathLike[str]) -> dict[str, Any]:
    path = checkpoint_file(source)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:  # the header only: no tensor is read
            raw = (f.metadata() or {}).get(META_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
    if raw is None:
        raise CheckpointError(f"{path}: safetensors file has no digitlab metadata")
    try:
        meta = json.loads(raw)
    except ValueError:
        raise CheckpointError(f"{path}: digitlab metadata is not valid JSON") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: digitlab metadata is not a JSON object")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    return meta


def load_checkpoint(source: str | os.PathLike[str], device: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a checkpoint; returns ``(model in eval mode, meta)``."""
    from safetensors.torch import load_file

    from digitlab.models import create_model

    path = checkpoint_file(source)
    meta = read_meta(path)
    name, kwargs = meta.get("model"), meta.get("model_kwargs", {})
    if not isinstance(name, str) or not isinstance(kwargs, dict):
        raise CheckpointError(f"{path}: metadata must name the model (a string) and its kwargs (an object)")
    _check_size_before_building(path, name, kwargs)
    try:
        model = create_model(name, **kwargs)
    except RuntimeError as exc:  # e.g. a negative layer size in edited metadata
        raise CheckpointError(f"{path}: metadata does not describe a valid {name!r} model: {exc}") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    _check_weights(path, state, meta, nan_allowed=_nan_allowed(model))
    _resize_buffers(model, state)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not match model {meta['model']!r}: {exc}") from None
    return model.to(device).eval(), meta


def _stored_elements(path: Path) -> int:
    """Number of values stored in a safetensors file, from its header (nothing is loaded)."""
    from safetensors import safe_open

    total = 0
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                total += math.prod(f.get_slice(key).get_shape())
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot read the weights' header ({exc})") from None
    return total


def _check_size_before_building(path: Path, name: str, kwargs: dict[str, Any]) -> None:
    """Refuse metadata that describes a model far larger than the stored weights, before allocating it.

    The model is first built on PyTorch's ``meta`` device, which allocates no memory;
    builders that cannot run there are checked by the normal load instead.
    """
    import torch

    from digitlab.models import create_model

    try:
        with torch.device("meta"):
            probe = create_model(name, **kwargs)
        wanted = sum(t.numel() for t in probe.state_dict().values())
    except Exception:  # noqa: BLE001 - any failure here is reported by the real build just after
        return
    stored = _stored_elements(path)
    if wanted > 2 * stored + 1_000_000:
        raise CheckpointError(f"{path}: metadata describes a {name!r} model of {wanted:,} values but the file "
                              f"stores {stored:,}; the metadata was edited or belongs to another file")


def _nan_allowed(model: nn.Module) -> AbstractSet[str]:
    """State keys that may hold NaN by design: buffers a module lists in ``nan_buffers``
    (e.g. mlp-selected's F statistics, NaN for constant pixels as in scikit-learn)."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        for name in getattr(module, "nan_buffers", ()):
            keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def _check_weights(path: Path, state: dict[str, torch.Tensor], meta: dict[str, Any],
                   nan_allowed: AbstractSet[str] = frozenset()) -> None:
    """The weights' recorded hash must match (when recorded) and every float value must be finite
    (NaN is accepted only in the buffers of ``nan_allowed``; infinities never)."""
    import torch

    recorded = meta.get(WEIGHTS_HASH_KEY)
    if recorded is not None and recorded != weights_sha256(state):
        raise CheckpointError(f"{path}: the weights do not match the hash recorded in the checkpoint "
                              "(the file is corrupted or was modified)")
    for key, t in state.items():
        if not t.is_floating_point():
            continue
        values = t[~torch.isnan(t)] if key in nan_allowed else t
        if not bool(torch.isfinite(values).all()):
            raise CheckpointError(f"{path}: weight {key!r} contains NaN or infinite values")


def _resize_buffers(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Data-dependent buffers (fitted pixel selections, tree arrays) take the stored shape."""
    for name, buf in list(model.named_buffers()):
        if name in state and buf.shape != state[name].shape:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name) if module_name else model
            module.register_buffer(attr, state[name].new_empty(state[name].shape),
                                   persistent=True)
