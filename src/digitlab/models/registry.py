"""Model registry in the style of timm: ``@register_model``, ``create_model``, ``list_models``.

Conventions for every registered model:
  * input: float tensor ``N×1×28×28`` with pixel values in [0, 1] (any
    standardisation happens inside the model, so serving and export need none);
  * output: logits ``N×10`` (never softmax or log-softmax);
  * constructor arguments are JSON-serialisable keyword arguments, so a
    checkpoint can rebuild the model from ``(name, kwargs)`` alone.
Optional hooks, used by the training engine:
  * ``model.prepare(images_u8, labels)``: fit data-dependent state (e.g. pixel
    selection) on the training split before training; stored in buffers;
  * ``model.fit_estimator(images_u8, labels)`` and ``uses_gradient = False``:
    models fitted in closed form / by scikit-learn instead of by SGD.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from digitlab.errors import ConfigError


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model besides how to build it."""

    name: str
    family: str
    builder: Callable[..., nn.Module]
    input_kind: str = "image"
    """``image`` (uses the 2-D layout), ``flat`` (784 pixels) or ``selected`` (a pixel subset)."""
    reference: str = ""
    """The published recipe it reproduces, e.g. ``notebook 000: 99.23% test``."""
    recipe: str | None = None
    """Name of the shipped config under ``configs/`` that trains it as published."""
    uses_gradient: bool = True
    """False for scikit-learn style baselines fitted without the SGD loop."""
    description: str = ""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_kind: str = "image",
    reference: str = "",
    recipe: str | None = None,
    uses_gradient: bool = True,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder function under ``name``."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name, family=family, builder=fn, input_kind=input_kind, reference=reference,
            recipe=recipe, uses_gradient=uses_gradient,
            description=(fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else "",
        )
        return fn

    return decorator


def _ensure_loaded() -> None:
    # importing the package registers every family module
    import digitlab.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def model_info(name: str) -> ModelInfo:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown model {name!r}; see `digitlab models` (known: {', '.join(sorted(_REGISTRY))})"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the model remembers ``(name, kwargs)`` for checkpoints."""
    info = model_info(name)
    try:
        model = info.builder(**kwargs)
    except (TypeError, ValueError) as exc:  # unknown keyword, or a value the builder rejects
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from None
    model.digitlab_name = name  # type: ignore[attr-defined]
    model.digitlab_kwargs = dict(kwargs)  # type: ignore[attr-defined]
    return model


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Learned values of a model: trainable tensors, or the model's own ``parameter_count()``.

    The scikit-learn baselines keep their fitted coefficients in buffers and
    report them through ``parameter_count()`` (None for an unfitted forest: 0 here).
    """
    own = getattr(model, "parameter_count", None)
    if callable(own):
        return int(own() or 0)
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
