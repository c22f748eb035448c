"""A table of the model zoo: what ``digitlab models`` prints."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from digitlab.models._common import count_parameters_keras
from digitlab.models.registry import count_parameters, create_model, list_models, model_info


def model_catalog(pattern: str = "*") -> list[dict[str, Any]]:
    """One record per registered model whose name matches the glob ``pattern``.

    Keys: ``name``, ``family``, ``input_kind``, ``uses_gradient``, ``params``
    (trainable parameters; for the scikit-learn baselines the number of stored
    values when that is fixed before fitting, e.g. logreg's 7,850, else ``None``),
    ``params_keras`` (``params`` plus BatchNorm moving statistics, the number
    Keras' ``count_params()`` — and hence the notebooks — report; ``None`` where
    ``params`` is), ``reference``, ``recipe`` and ``description``.
    """
    rows = []
    for name in list_models(pattern):
        info = model_info(name)
        model = create_model(name)
        if info.uses_gradient:
            params: int | None = count_parameters(model)
            params_keras: int | None = count_parameters_keras(model)
        else:
            params = params_keras = _stored_values(model)
        rows.append({
            "name": name, "family": info.family, "input_kind": info.input_kind,
            "uses_gradient": info.uses_gradient, "params": params, "params_keras": params_keras,
            "reference": info.reference, "recipe": info.recipe, "description": info.description,
        })
    return rows


def _stored_values(model: nn.Module) -> int | None:
    """An estimator baseline's stored-value count, or None where it is unknown before fitting."""
    counter = getattr(model, "parameter_count", None)
    return counter() if callable(counter) else None


# --------------------------------------------------------------------------- per-layer summary

@dataclass(frozen=True)
class LayerRow:
    """One layer of :func:`model_summary`."""

    name: str
    """Dotted module path inside the model (``features.0``); the model's own class for a one-row model."""
    kind: str
    """Module class name (``Conv2d``)."""
    output_shape: tuple[int, ...] | None
    """Output shape for one image (no batch axis); None when the layer did not run."""
    params: int | None
    """Trainable parameters held directly by this layer (None: unknown, an unfitted forest)."""


@dataclass(frozen=True)
class ModelSummary:
    """What ``digitlab models --summary NAME`` prints."""

    model: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None
    layers: list[LayerRow]
    params: int | None
    """Total, as ``digitlab models`` reports it (the sum of ``layers``; None for an unfitted forest)."""
    params_keras: int | None
    """``params`` plus BatchNorm moving statistics (Keras' ``count_params()``)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shape"] = list(self.input_shape)
        d["output_shape"] = None if self.output_shape is None else list(self.output_shape)
        for row in d["layers"]:
            row["output_shape"] = None if row["output_shape"] is None else list(row["output_shape"])
        return d


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for item in out:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def model_summary(name: str, input_shape: tuple[int, ...] = (1, 28, 28)) -> ModelSummary:
    """Per-layer output shapes and parameter counts of a freshly built registered model.

    One image of ``input_shape`` (zeros) runs through the model in eval mode;
    forward hooks record each layer's output shape. The rows are the leaf
    modules and any module holding parameters of its own, in definition order;
    their ``params`` add up to the registry's count. The scikit-learn baselines
    (no trainable layers; the forest has no size before fitting) are one row
    with their stored-value count (None when unknown before fitting, as in
    :func:`model_catalog`).
    """
    info = model_info(name)
    model = create_model(name).eval()
    shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())
    hooks = []
    for mod_name, module in modules.items():
        def record(mod: nn.Module, args: Any, out: Any, key: str = mod_name) -> None:
            t = _first_tensor(out)
            if t is not None:
                shapes[key] = tuple(int(d) for d in t.shape[1:])
        hooks.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            model(torch.zeros((1, *input_shape)))
    except RuntimeError:
        pass  # e.g. an unfitted forest: shapes stay unknown
    finally:
        for h in hooks:
            h.remove()
    if not info.uses_gradient:
        total = keras = _stored_values(model)
        rows = [LayerRow(type(model).__name__, type(model).__name__, shapes.get(""), total)]
    else:
        total = count_parameters(model)
        rows = []
        for mod_name, module in modules.items():
            own = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
            leaf = next(module.children(), None) is None
            if mod_name and (leaf or own):
                rows.append(LayerRow(mod_name, type(module).__name__, shapes.get(mod_name), own))
        keras = count_parameters_keras(model)
        if sum(r.params or 0 for r in rows) != total:  # every trainable parameter belongs to one row
            raise AssertionError(f"{name}: layer parameters do not add up to {total}")
    return ModelSummary(model=name, input_shape=tuple(input_shape), output_shape=shapes.get(""), layers=rows,
                        params=total, params_keras=keras)
