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
Each model also records the training settings that measured fastest for it
(:class:`TrainSettings`, :func:`train_settings`); ``digitlab bench zoo`` times them,
``scripts/measure_zoo_speed.py`` tabulates each setting on and off and
``scripts/measure_speed_options.py`` every option tried (settings, fast layers, engine changes).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from digitlab.errors import ConfigError


@dataclass(frozen=True)
class TrainSettings:
    """How a model trains fastest, measured per model (``scripts/measure_zoo_speed.py``).

    Neither setting changes what the model computes beyond floating-point precision;
    the training engine applies them as ``TrainConfig.amp`` / ``TrainConfig.channels_last``.
    """

    amp: bool = False
    """bfloat16 autocast (on CPUs with AVX-512 BF16/AMX, CUDA GPUs that support bf16)."""
    channels_last: bool = False
    """Model weights and input batches in the channels-last memory format."""

    def to_dict(self) -> dict[str, bool]:
        return asdict(self)


AMP = TrainSettings(amp=True)
"""bf16 autocast only (measured faster than float32 and than adding channels-last)."""
AMP_CL = TrainSettings(amp=True, channels_last=True)
"""bf16 autocast and channels-last (each measured faster)."""


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
    train_settings: TrainSettings = field(default_factory=TrainSettings)
    """The settings that measured fastest for this model (see :class:`TrainSettings`)."""


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    family: str,
    input_kind: str = "image",
    reference: str = "",
    recipe: str | None = None,
    uses_gradient: bool = True,
    train_settings: TrainSettings | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a builder function under ``name`` (``train_settings``: its fastest settings, default all off)."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelInfo(
            name=name, family=family, builder=fn, input_kind=input_kind, reference=reference,
            recipe=recipe, uses_gradient=uses_gradient, train_settings=train_settings or TrainSettings(),
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


def train_settings(name: str) -> TrainSettings:
    """The fastest measured training settings of model ``name`` (ConfigError for an unknown name)."""
    return model_info(name).train_settings


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; the model remembers ``(name, kwargs)`` for checkpoints."""
    info = model_info(name)
    try:
        model = info.builder(**kwargs)
    except (TypeError, ValueError) as exc:  # unknown keyword, or a value the builder rejects
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from None
    # plain attributes (not parameters or buffers): object.__setattr__ says so to the type checker too
    object.__setattr__(model, "digitlab_name", name)
    object.__setattr__(model, "digitlab_kwargs", dict(kwargs))
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
