"""Training budgets: the same amount of training for every model of a comparison.

A budget is wall-clock time (``30s``, ``2m``), passes over the training split
(``2epochs``) or images seen (``60000`` / ``60000images``). Whatever the kind, the
run is fixed as a step count (``max_steps``), so the learning-rate schedule ends
exactly at the end of the budget ("Budgeted Training", Li et al., ICLR 2020) and a
re-run of the saved config repeats the run step for step:

* images/epochs: ``steps = ceil(images / batch_size)``;
* time: a short warm-up measures the model's seconds per step (and per validation)
  on this machine, and the step count that fills the budget is written into the
  config (``max_steps``, ``eval_every_steps``, ``budget``). The budget counts the
  seconds spent in optimizer steps; validation (for learning curves) is measured
  separately (``val_seconds``) and kept to a fraction of it. A warm-up cannot foresee
  the machine slowing down (or speeding up) later in the run, which moves cheap ~1 ms
  steps most, so the run holds the budget
  (``hold_budget``): it re-plans its step count from its own step times as it goes,
  the schedule following continuously, and its saved config records the re-plan
  points (``step_plan``), so a re-run still repeats it step for step.

The scikit-learn baselines have no steps: under a time budget a small timed fit
caps their work (``max_iter`` of logistic regression, ``n_estimators`` of the
random forest) so the fit ends within the budget; under an images/epochs budget
they fit as configured, and say so.
"""

from __future__ import annotations

import itertools
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from digitlab.errors import ConfigError
from digitlab.train.config import TrainConfig

BudgetKind = Literal["seconds", "epochs", "images"]

_UNITS: dict[str, tuple[BudgetKind, float]] = {
    "s": ("seconds", 1.0), "sec": ("seconds", 1.0), "secs": ("seconds", 1.0), "second": ("seconds", 1.0),
    "seconds": ("seconds", 1.0), "m": ("seconds", 60.0), "min": ("seconds", 60.0), "mins": ("seconds", 60.0),
    "minute": ("seconds", 60.0), "minutes": ("seconds", 60.0), "h": ("seconds", 3600.0),
    "epoch": ("epochs", 1.0), "epochs": ("epochs", 1.0), "ep": ("epochs", 1.0),
    "": ("images", 1.0), "img": ("images", 1.0), "images": ("images", 1.0), "image": ("images", 1.0),
}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)\s*$")

#: Number of validation points a time-budgeted run aims for (learning curves, "still improving").
EVAL_POINTS = 8
#: Share of a time budget that validation may add on top of it at most (validation is measurement,
#: not training: a time budget counts the seconds spent in optimizer steps).
EVAL_SHARE = 0.3
#: Windows the warm-up's step times are split into; the step time is the median of their means.
WARMUP_CHUNKS = 5
#: How far a run holding a time budget may grow beyond its planned steps (a machine faster than in the
#: warm-up); its ``epochs`` allow this many times the planned steps.
HOLD_HEADROOM = 2.0


@dataclass(frozen=True)
class Budget:
    """A training budget: ``kind`` seconds, epochs or images, and its ``value``."""

    kind: BudgetKind
    value: float

    @property
    def label(self) -> str:
        """Canonical short form: ``30s``, ``2m``, ``1.5epochs``, ``60000images``."""
        if self.kind == "seconds":
            if self.value >= 60 and self.value % 60 == 0:
                return f"{int(self.value // 60)}m"
            return f"{self.value:g}s"
        if self.kind == "epochs":
            return f"{self.value:g}epochs"
        return f"{int(self.value)}images"

    def describe(self) -> str:
        """Words for reports: ``30 s of training``, ``2 epochs``, ``60,000 images``."""
        if self.kind == "seconds":
            return f"{self.value:g} s of training"
        if self.kind == "epochs":
            return f"{self.value:g} epoch" + ("" if self.value == 1 else "s")
        return f"{int(self.value):,} images"

    def __str__(self) -> str:
        return self.label


def parse_budget(text: str | Budget) -> Budget:
    """``"30s"``, ``"2m"``, ``"2epochs"``, ``"60000"`` (images) → :class:`Budget`; one-line error otherwise."""
    if isinstance(text, Budget):
        return text
    match = _PATTERN.match(str(text).lower())
    if not match or match.group(2) not in _UNITS:
        raise ConfigError(f"budget {text!r} not understood: give a time (30s, 2m), passes (2epochs) "
                          f"or images seen (60000)")
    kind, scale = _UNITS[match.group(2)]
    value = float(match.group(1)) * scale
    if value <= 0:
        raise ConfigError(f"budget must be positive, got {text!r}")
    if kind == "images" and value < 1:
        raise ConfigError(f"an images budget needs at least one image, got {text!r}")
    return Budget(kind, value)


@dataclass
class BudgetPlan:
    """How a model spends a budget: the config changes and what was measured to choose them."""

    model: str
    budget: str
    changes: dict[str, Any]
    """Config overrides (``max_steps``, ``epochs``, ``eval_every_steps``, ``budget``, ``model_kwargs``)."""
    steps: int | None = None
    """Optimizer steps (None for the scikit-learn baselines)."""
    seconds_per_step: float | None = None
    seconds_per_validation: float | None = None
    calibration_seconds: float = 0.0
    """Wall time the warm-up / timed small fit took (not part of the budget)."""
    reduced: bool = False
    """A baseline's solver was capped (fewer iterations / trees than its default) to fit the budget."""
    note: str = ""
    """One sentence for the report: how the budget was applied."""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetPlan:
        return cls(**data)


def steps_per_epoch(train_count: int, batch_size: int) -> int:
    return max(1, -(-int(train_count) // int(batch_size)))


def _eval_every(steps: int, points: int = EVAL_POINTS) -> int:
    """Validate about ``points`` times over ``steps`` (the run's end validates anyway)."""
    return max(1, steps // max(1, points)) if steps > 1 else 0


def plan_fixed(cfg: TrainConfig, budget: Budget, train_count: int) -> BudgetPlan:
    """Plan an images/epochs budget: the step count follows from the training-set size."""
    if budget.kind == "seconds":
        raise ValueError("plan_fixed takes an images or epochs budget")
    spe = steps_per_epoch(train_count, cfg.batch_size)
    if budget.kind == "epochs":
        steps = max(1, round(budget.value * spe))
    else:
        steps = max(1, math.ceil(budget.value / cfg.batch_size))
    changes = {"max_steps": steps, "epochs": max(1, math.ceil(steps / spe)), "budget": budget.label,
               "eval_every_steps": _eval_every(steps)}
    return BudgetPlan(cfg.model, budget.label, changes, steps=steps,
                      note=f"{steps:,} steps of {cfg.batch_size} images ({steps / spe:.2f} epochs)")


def plan_budget(cfg: TrainConfig, budget: Budget | str, dataset: Any, *, device: str | None = None,
                warmup_seconds: float | None = None) -> BudgetPlan:
    """The config changes that make ``cfg`` spend ``budget`` on ``dataset`` (a loaded Dataset).

    Time budgets are measured here (a warm-up of a throw-away copy of the model); the
    process-wide torch state is left as it was.
    """
    from digitlab.models import model_info

    budget = parse_budget(budget)
    gradient = model_info(cfg.model).uses_gradient
    if not gradient:
        return plan_baseline(cfg, budget, dataset)
    from digitlab.data import make_splits

    train_count = len(make_splits(dataset, cfg.val_fraction, cfg.seed).train)
    if budget.kind != "seconds":
        return plan_fixed(cfg, budget, train_count)
    return plan_time(cfg, budget, dataset, device=device, warmup_seconds=warmup_seconds)


def step_time(stamps: list[float], chunks: int = WARMUP_CHUNKS) -> float:
    """Seconds per step from the step-end times ``stamps``: the median over ``chunks`` consecutive
    windows of each window's mean step time.

    Within a window the mean keeps the slow steps a run really has (the run's total is steps × the
    mean, so dropping slow steps would make every run overshoot); the median across windows drops a
    window that another process on the machine slowed down, which for cheap (~1 ms) steps moved a
    1.5 s warm-up's estimate by more than 15%.
    """
    steps = len(stamps) - 1
    if steps < 1:
        raise ValueError("need at least two step times")
    k = max(1, min(chunks, steps // 10))  # at least 10 steps per window
    bounds = [round(i * steps / k) for i in range(k + 1)]
    means = sorted((stamps[b] - stamps[a]) / (b - a) for a, b in itertools.pairwise(bounds))
    mid = len(means) // 2
    return means[mid] if len(means) % 2 else 0.5 * (means[mid - 1] + means[mid])


def plan_time(cfg: TrainConfig, budget: Budget, dataset: Any, *, device: str | None = None,
              warmup_seconds: float | None = None) -> BudgetPlan:
    """Measure seconds per step and per validation, then the step count that fills ``budget``.

    The warm-up trains a throw-away model built like the real one for ``warmup_seconds``
    (default: 10% of the budget, between 1.5 and 4 s, and at least 10 steps), timing the steps after the first
    three (allocation and kernel selection), then times one validation pass.
    """
    from digitlab.data import make_splits
    from digitlab.models import create_model
    from digitlab.train.callbacks import LambdaCallback
    from digitlab.train.loop import Trainer, evaluate_split, preserved_torch_state

    if budget.kind != "seconds":
        raise ValueError("plan_time takes a time budget")
    seconds = budget.value
    warm = warmup_seconds if warmup_seconds is not None else min(4.0, max(1.5, 0.1 * seconds))
    t_start = time.perf_counter()
    splits = make_splits(dataset, cfg.val_fraction, cfg.seed)
    stamps: list[float] = []

    def on_step(trainer: Trainer, **_: Any) -> None:
        stamps.append(time.perf_counter())
        timed = len(stamps) - 4
        elapsed = stamps[-1] - stamps[3] if timed > 0 else 0.0
        # at least 10 timed steps and ``warm`` seconds; never more than a quarter of the budget
        if timed >= 10 and (elapsed >= warm or elapsed >= 0.25 * seconds):
            trainer.request_stop("warm-up done")

    probe = cfg.override(max_steps=100_000, epochs=1_000, eval_every_steps=0, tensorboard=False,
                         checkpoint_every=0, **({"device": device} if device else {}))
    with preserved_torch_state():
        model = create_model(probe.model, **probe.model_kwargs)
        trainer = Trainer(model, splits, probe, [LambdaCallback("warmup", step_end=on_step)])
        val = trainer.val_split  # already cut to val_max_images
        trainer.val_split = None  # the validation pass is timed on its own below
        trainer.fit()
        t_val = 0.0
        if val is not None and len(val):
            v0 = time.perf_counter()
            evaluate_split(trainer.raw_model, val, cfg.eval_batch_size)
            t_val = time.perf_counter() - v0
    if len(stamps) < 5:
        raise ConfigError(f"{cfg.model}: could not time the warm-up (only {len(stamps)} steps)")
    t_step = step_time(stamps[3:])
    spe = steps_per_epoch(len(splits.train), cfg.batch_size)
    # validations: EVAL_POINTS points, fewer when they would add more than EVAL_SHARE of the budget
    points = EVAL_POINTS
    if t_val > 0:
        points = max(2, min(EVAL_POINTS, int(EVAL_SHARE * seconds / t_val)))
    steps = max(1, int(seconds / t_step))
    every = _eval_every(steps, points) if t_val > 0 else 0
    # the run holds the budget (re-plans its length from its own step times); ``epochs`` only caps
    # how far it may grow if the machine turns out faster than in the warm-up
    changes = {"max_steps": steps, "epochs": max(1, math.ceil(HOLD_HEADROOM * steps / spe)),
               "budget": budget.label, "eval_every_steps": every, "hold_budget": True}
    return BudgetPlan(cfg.model, budget.label, changes, steps=steps, seconds_per_step=t_step,
                      seconds_per_validation=t_val, calibration_seconds=time.perf_counter() - t_start,
                      note=f"{steps:,} steps ({steps / spe:.2f} epochs) planned at {t_step * 1e3:.1f} ms/step "
                           f"measured in a {warm:.1f} s warm-up, re-planned during the run to hold "
                           f"{budget.label}; validation every {every or '—'} steps")


#: Solver knob and default of each baseline that a time budget may cap.
BASELINE_KNOBS = {"logreg": ("max_iter", 1000, 3), "random-forest": ("n_estimators", 100, 2)}


def plan_baseline(cfg: TrainConfig, budget: Budget, dataset: Any) -> BudgetPlan:
    """A scikit-learn baseline under ``budget``: cap its solver from a timed small fit (time budgets)."""
    knob = BASELINE_KNOBS.get(cfg.model)
    if budget.kind != "seconds" or knob is None:
        return BudgetPlan(cfg.model, budget.label, {"budget": budget.label},
                          note="fitted by its solver as configured (an images/epochs budget has no "
                               "equivalent for it)" if knob else "fitted as configured")
    from digitlab.data import make_splits
    from digitlab.models import create_model

    name, default, probe_units = knob
    configured = int(cfg.model_kwargs.get(name, default))
    splits = make_splits(dataset, cfg.val_fraction, cfg.seed)
    images, labels = splits.train.images.cpu(), splits.train.labels.cpu()
    t_start = time.perf_counter()
    # a tiny fit first pays for importing scikit-learn, which would otherwise be billed to the probe
    create_model(cfg.model, **{**cfg.model_kwargs, name: 1}).fit_estimator(  # type: ignore[operator]
        images[:500], labels[:500])
    t0 = time.perf_counter()
    model = create_model(cfg.model, **{**cfg.model_kwargs, name: probe_units})
    model.fit_estimator(images, labels)  # type: ignore[operator]
    probe_seconds = time.perf_counter() - t0
    per_unit = probe_seconds / probe_units
    allowed = max(1, int(budget.value / per_unit))
    units = min(configured, allowed)
    reduced = units < configured
    what = "iterations" if name == "max_iter" else "trees"
    note = (f"{name}={units} (configured {configured}): a timed {probe_units}-{what[:-1]} fit took "
            f"{probe_seconds:.2f} s, so about {allowed} {what} fit in {budget.label}"
            if reduced else f"{name}={units} fits within {budget.label} (a timed {probe_units}-{what[:-1]} fit "
                            f"took {probe_seconds:.2f} s)")
    return BudgetPlan(cfg.model, budget.label,
                      {"budget": budget.label, "model_kwargs": {**cfg.model_kwargs, name: units}},
                      calibration_seconds=time.perf_counter() - t_start, reduced=reduced, note=note,
                      extra={"knob": name, "units": units, "configured": configured,
                             "seconds_per_unit": per_unit})


__all__ = ["BASELINE_KNOBS", "Budget", "BudgetPlan", "parse_budget", "plan_baseline", "plan_budget",
           "plan_fixed", "plan_time", "step_time", "steps_per_epoch"]
