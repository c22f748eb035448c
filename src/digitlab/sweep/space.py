"""Search spaces for ``digitlab sweep``: a YAML file parsed into dataclasses and validated up front.

A space file::

    description: notebook 000's basic-MLP width sweep
    model: {type: categorical, choices: [mlp-basic-128, mlp-basic-256, mlp-basic-512]}
    model_kwargs:                 # keyword arguments of the model: fixed values or searched
      dropout: {type: float, low: 0.1, high: 0.6}
    config:                       # any TrainConfig field (or augment.X): fixed values or searched
      lr: {type: float, low: 3.0e-4, high: 1.0e-2, log: true}
      batch_size: {type: categorical, choices: [32, 64, 128]}
      epochs: 2
    reports: 10                   # intermediate validation reports per trial (for pruning)
    pruner: {type: successive-halving, min_resource: auto, reduction_factor: 3, startup_trials: 2}
    first_trials:                 # optional: parameter sets tried first (e.g. the published recipe)
      - {model: mlp-basic-128, lr: 0.001}

A searched value is a mapping with a ``type``: ``categorical`` (``choices``), ``int`` (``low``,
``high``, optional ``step``, ``log``), ``float`` (``low``, ``high``, optional ``step``, ``log``) or
``log-float`` (a float on a log scale). Anything else is a fixed value. Parameter names in the
study are the config field (``lr``), ``model`` and ``model_kwargs.NAME`` for model arguments.
Every error is a one-line :class:`~digitlab.errors.ConfigError` naming the bad key.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from digitlab.errors import ConfigError
from digitlab.sweep import list_spaces
from digitlab.train.config import TrainConfig

__all__ = ["PARAM_TYPES", "PRUNER_TYPES", "Param", "PrunerSpec", "SearchSpace", "list_spaces",
           "load_space", "parse_space", "space_dir"]

PARAM_TYPES = ("categorical", "int", "float", "log-float")
PRUNER_TYPES = ("successive-halving", "hyperband", "none")
TOP_KEYS = ("description", "model", "model_kwargs", "config", "reports", "pruner", "first_trials")
MODEL_KWARGS_PREFIX = "model_kwargs."
Scalar = bool | int | float | str | None


@dataclass(frozen=True)
class Param:
    """One searched parameter: its study name, kind and range."""

    name: str
    """``model``, a TrainConfig field (``lr``, ``augment.rotation``) or ``model_kwargs.NAME``."""
    type: str
    """categorical, int or float (``log-float`` is parsed into float with ``log=True``)."""
    choices: tuple[Scalar, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def extremes(self) -> list[Any]:
        """The values that bound the range (every choice, or low and high): used to validate the space."""
        if self.type == "categorical":
            return list(self.choices)
        return [self.low, self.high]

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices / within [low, high]."""
        if self.type == "categorical":
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        assert self.low is not None and self.high is not None
        return self.low <= value <= self.high and (self.type == "float" or value == int(value))

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name} in {list(self.choices)}"
        scale = ", log" if self.log else ""
        step = f", step {self.step:g}" if self.step is not None else ""
        return f"{self.name} {self.type} [{self.low:g}, {self.high:g}{step}{scale}]"


@dataclass(frozen=True)
class PrunerSpec:
    """How poor trials are stopped early, from their intermediate validation accuracy."""

    type: str = "successive-halving"
    """successive-halving, hyperband or none."""
    min_resource: int | None = None
    """Optimizer steps before the first rung (None: Optuna's ``auto``)."""
    reduction_factor: int = 3
    """Keep the best 1/reduction_factor of the trials at each rung."""
    min_early_stopping_rate: int = 0
    """Successive halving: skip this many lowest rungs."""
    startup_trials: int = 2
    """No trial is stopped before this many trials completed (their values are still recorded)."""


@dataclass(frozen=True)
class SearchSpace:
    """A parsed, validated search space (see the module docstring for the file format)."""

    name: str
    """Shipped space name or the file's stem."""
    source: str
    """Where it came from: ``shipped:NAME`` or the file path."""
    description: str
    fixed_model: str | None
    """The model when it is not searched."""
    fixed_model_kwargs: dict[str, Any]
    fixed_config: dict[str, Any]
    params: tuple[Param, ...]
    reports: int = 10
    """Intermediate validation reports per trial (equally spaced in optimizer steps)."""
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    first_trials: tuple[dict[str, Any], ...] = ()
    """Parameter sets tried first (Optuna's enqueue_trial), keyed by parameter name."""

    @property
    def model_param(self) -> Param | None:
        return next((p for p in self.params if p.name == "model"), None)

    def model_names(self) -> list[str]:
        param = self.model_param
        if param is not None:
            return [str(c) for c in param.choices]
        assert self.fixed_model is not None
        return [self.fixed_model]

    def base_config(self) -> TrainConfig:
        """The config every trial starts from: defaults, then the space's fixed values."""
        changes: dict[str, Any] = {"model": self.fixed_model or self.model_names()[0],
                                   "model_kwargs": dict(self.fixed_model_kwargs), **self.fixed_config}
        return _override(TrainConfig(), changes, "space")

    def config_for(self, values: dict[str, Any], overrides: dict[str, Any] | None = None) -> TrainConfig:
        """The TrainConfig of one trial: base config, the trial's ``values`` (by parameter name), then
        ``overrides`` (``--set``, applied to every trial and winning over the space)."""
        cfg = self.base_config()
        changes: dict[str, Any] = {}
        kwargs = dict(cfg.model_kwargs)
        for name, value in values.items():
            if name.startswith(MODEL_KWARGS_PREFIX):
                kwargs[name[len(MODEL_KWARGS_PREFIX):]] = value
            else:
                changes[name] = value
        overrides = dict(overrides or {})
        for name in [k for k in overrides if k.startswith(MODEL_KWARGS_PREFIX)]:
            kwargs[name[len(MODEL_KWARGS_PREFIX):]] = overrides.pop(name)
        if isinstance(overrides.get("model_kwargs"), dict):
            kwargs.update(overrides.pop("model_kwargs"))
        changes["model_kwargs"] = kwargs
        cfg = _override(cfg, changes, "space")
        return _override(cfg, overrides, "--set") if overrides else cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def check(self, overrides: dict[str, Any] | None = None) -> None:
        """Validate the space together with ``overrides``: every bound of every parameter gives a valid
        config, every model exists and accepts the model arguments, and validation data exists."""
        from digitlab.models import model_info

        for model in self.model_names():
            model_info(model)
        for name in overrides or {}:
            if name in {p.name for p in self.params}:
                raise ConfigError(f"--set {name}: {name} is searched by the space; fix it in the space file "
                                  "instead (or drop it from --set)")
        base = self.config_for({}, overrides)
        if base.val_fraction <= 0:
            raise ConfigError("a sweep scores trials on the validation split: val_fraction must be > 0 "
                              f"(got {base.val_fraction})")
        for param in self.params:
            for value in param.extremes():
                try:
                    cfg = self.config_for({param.name: value}, overrides)
                except ConfigError as exc:
                    raise ConfigError(f"space parameter {param.name}: value {value!r} is invalid ({exc})") from None
                if param.name == "val_fraction" and cfg.val_fraction <= 0:
                    raise ConfigError("space parameter val_fraction: must stay > 0 (trials are scored on it)")
        by_name = {p.name: p for p in self.params}
        for i, trial in enumerate(self.first_trials):
            for name, value in trial.items():
                if not by_name[name].contains(value):
                    raise ConfigError(f"first_trials[{i}].{name}: {value!r} is outside the space "
                                      f"({by_name[name].describe()})")
        kwarg_names = {p.name[len(MODEL_KWARGS_PREFIX):] for p in self.params
                       if p.name.startswith(MODEL_KWARGS_PREFIX)}
        kwarg_names |= set(base.model_kwargs)
        for model in self.model_names():
            accepted = _accepted_kwargs(model)
            if accepted is None:
                continue
            unknown = sorted(kwarg_names - accepted)
            if unknown:
                raise ConfigError(f"model_kwargs.{unknown[0]}: model {model!r} takes no argument {unknown[0]!r} "
                                  f"(it takes: {', '.join(sorted(accepted - {'num_classes'})) or 'none'})")


def _accepted_kwargs(model: str) -> set[str] | None:
    """Keyword arguments a registered model's builder accepts (None: it takes ``**kwargs``)."""
    from digitlab.models import model_info

    try:
        sig = inspect.signature(model_info(model).builder)
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return None
    return set(sig.parameters)


def _override(cfg: TrainConfig, changes: dict[str, Any], where: str) -> TrainConfig:
    try:
        return cfg.override(**changes)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


# --------------------------------------------------------------------------- parsing

def _number(key: str, what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: {what} must be a number, got {value!r}")
    return float(value)


def _is_search(value: Any) -> bool:
    return isinstance(value, dict) and "type" in value


def parse_param(name: str, spec: dict[str, Any], key: str | None = None) -> Param:
    """One search specification (``{type: float, low: .., high: .., log: true}``) → :class:`Param`."""
    key = key or name
    kind = spec.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{key}: type must be one of {', '.join(PARAM_TYPES)}, got {kind!r}")
    allowed = {"categorical": {"type", "choices"},
               "int": {"type", "low", "high", "step", "log"},
               "float": {"type", "low", "high", "step", "log"},
               "log-float": {"type", "low", "high"}}[kind]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"{key}: unknown field {extra[0]!r} for type {kind} (allowed: {', '.join(sorted(allowed))})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{key}: categorical needs a non-empty list 'choices'")
        for choice in choices:
            if not (choice is None or isinstance(choice, (bool, int, float, str))):
                raise ConfigError(f"{key}: choices must be numbers, strings, booleans or null, got {choice!r}")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{key}: choices repeat a value")
        return Param(name, "categorical", choices=tuple(choices))
    for bound in ("low", "high"):
        if bound not in spec:
            raise ConfigError(f"{key}: {kind} needs '{bound}'")
    low, high = _number(key, "low", spec["low"]), _number(key, "high", spec["high"])
    log = kind == "log-float" or bool(spec.get("log", False))
    if not isinstance(spec.get("log", False), bool):
        raise ConfigError(f"{key}: log must be true or false, got {spec['log']!r}")
    step = None if spec.get("step") is None else _number(key, "step", spec["step"])
    if not low < high:
        raise ConfigError(f"{key}: low must be < high, got low={low:g} high={high:g}")
    if log and low <= 0:
        raise ConfigError(f"{key}: a log scale needs low > 0, got {low:g}")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{key}: step must be > 0 and cannot be combined with log")
    if kind == "int":
        if low != int(low) or high != int(high) or (step is not None and step != int(step)):
            raise ConfigError(f"{key}: int bounds and step must be whole numbers")
        return Param(name, "int", low=int(low), high=int(high), step=int(step) if step else None, log=log)
    return Param(name, "float", low=low, high=high, step=step, log=log)


def _parse_pruner(value: Any) -> PrunerSpec:
    if value is None or value == "none" or value is False:
        return PrunerSpec(type="none")
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, dict):
        raise ConfigError(f"pruner: expected a mapping or one of {', '.join(PRUNER_TYPES)}, got {value!r}")
    known = {f.name for f in dataclasses.fields(PrunerSpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"pruner.{unknown[0]}: unknown pruner setting (known: {', '.join(sorted(known))})")
    kind = value.get("type", "successive-halving")
    if kind not in PRUNER_TYPES:
        raise ConfigError(f"pruner.type: must be one of {', '.join(PRUNER_TYPES)}, got {kind!r}")
    out: dict[str, Any] = {"type": kind}
    for key in ("min_resource", "reduction_factor", "min_early_stopping_rate", "startup_trials"):
        if key not in value or (key == "min_resource" and value[key] in ("auto", None)):
            continue
        v = value[key]
        minimum = {"min_resource": 1, "reduction_factor": 2}.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise ConfigError(f"pruner.{key}: must be a whole number >= {minimum}, got {v!r}")
        out[key] = v
    return PrunerSpec(**out)


def parse_space(data: Any, name: str, source: str) -> SearchSpace:
    """A space from its parsed YAML mapping (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a search space must be a mapping, got {type(data).__name__}")
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    try:
        return _parse_space(data, name, source)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def _parse_space(data: dict[str, Any], name: str, source: str) -> SearchSpace:
    params: list[Param] = []
    model = data.get("model")
    fixed_model: str | None = None
    if model is None:
        raise ConfigError("model: required (a model name, or {type: categorical, choices: [...]})")
    if _is_search(model):
        param = parse_param("model", model)
        if param.type != "categorical" or not all(isinstance(c, str) for c in param.choices):
            raise ConfigError("model: a searched model must be categorical over model names")
        params.append(param)
    elif isinstance(model, str):
        fixed_model = model
    else:
        raise ConfigError(f"model: expected a model name or a categorical choice, got {model!r}")

    fixed_kwargs: dict[str, Any] = {}
    kwargs = data.get("model_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"model_kwargs: expected a mapping, got {kwargs!r}")
    for key, value in kwargs.items():
        if _is_search(value):
            params.append(parse_param(f"{MODEL_KWARGS_PREFIX}{key}", value))
        else:
            fixed_kwargs[str(key)] = value

    fixed_config: dict[str, Any] = {}
    config = data.get("config") or {}
    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping, got {config!r}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    from digitlab.data.augment import AugmentConfig

    augment_known = {f.name for f in dataclasses.fields(AugmentConfig)}
    for key, value in config.items():
        key = str(key)
        head, dot, tail = key.partition(".")
        if (dot and (head != "augment" or tail not in augment_known)) or (not dot and key not in known):
            raise ConfigError(f"config.{key}: not a TrainConfig field (see `digitlab train --help`)")
        if key in ("model", "model_kwargs"):
            raise ConfigError(f"config.{key}: give the model with the top-level 'model' and 'model_kwargs' keys")
        if _is_search(value):
            params.append(parse_param(key, value, f"config.{key}"))
        else:
            fixed_config[key] = value

    reports = data.get("reports", 10)
    if isinstance(reports, bool) or not isinstance(reports, int) or reports < 1:
        raise ConfigError(f"reports: must be a whole number >= 1, got {reports!r}")
    if not params:
        raise ConfigError("nothing to search: give at least one {type: ...} parameter")

    first = data.get("first_trials") or []
    if not isinstance(first, list) or not all(isinstance(t, dict) for t in first):
        raise ConfigError("first_trials: expected a list of mappings (parameter name: value)")
    names = {p.name for p in params}
    for trial in first:
        bad = sorted(set(trial) - names)
        if bad:
            raise ConfigError(f"first_trials: {bad[0]!r} is not a searched parameter "
                              f"(searched: {', '.join(sorted(names))})")
    description = data.get("description") or ""
    return SearchSpace(name=name, source=source, description=str(description).strip(),
                       fixed_model=fixed_model, fixed_model_kwargs=fixed_kwargs, fixed_config=fixed_config,
                       params=tuple(params), reports=reports, pruner=_parse_pruner(data.get("pruner", {})),
                       first_trials=tuple(dict(t) for t in first))


# --------------------------------------------------------------------------- loading

def space_dir() -> Path:
    """Folder of the shipped spaces (``digitlab/sweep/spaces/*.yaml``)."""
    from digitlab.sweep import SPACES_DIR

    return SPACES_DIR


def load_space(name_or_path: str | os.PathLike[str]) -> SearchSpace:
    """A shipped space by name (``mlp-width``) or a YAML file."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        source, name = str(path), path.stem
    else:
        shipped = space_dir() / f"{name_or_path}.yaml"
        if not shipped.is_file():
            raise ConfigError(f"no space file or shipped space named {str(name_or_path)!r}; "
                              f"shipped spaces: {', '.join(list_spaces())}")
        path, source, name = shipped, f"shipped:{name_or_path}", str(name_or_path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: space file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a space file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    return parse_space(data, name, source)
