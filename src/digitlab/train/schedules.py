"""Learning-rate schedules as pure functions of the step.

``lr_at(config, step, steps_per_epoch, total_steps)`` gives the LR before the
plateau factor (ReduceLROnPlateau is inherently stateful and lives in a
callback that scales this value).
"""

from __future__ import annotations

import math

from digitlab.train.config import TrainConfig


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based)."""
    epoch_float = step / max(1, steps_per_epoch)
    if cfg.schedule in ("constant", "plateau"):
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** (int(epoch_float) // cfg.step_epochs)
    if cfg.schedule == "exponential":
        return cfg.lr * cfg.gamma ** int(epoch_float)
    if cfg.schedule == "cosine":
        return cosine_with_warmup(step, total_steps, int(cfg.warmup_epochs * steps_per_epoch),
                                  cfg.lr, cfg.min_lr)
    if cfg.schedule == "onecycle":
        return one_cycle(step, total_steps, cfg.max_lr or cfg.lr, cfg.pct_start,
                         cfg.div_factor, cfg.final_div_factor)
    raise ValueError(f"unknown schedule {cfg.schedule!r}")


def cosine_with_warmup(step: int, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def one_cycle(step: int, total: int, peak: float, pct_start: float = 0.25,
              div_factor: float = 25.0, final_div_factor: float = 1e4) -> float:
    """One-cycle policy (Smith 2018) with cosine phases, as ``torch.optim.lr_scheduler.OneCycleLR``."""
    initial = peak / div_factor
    final = initial / final_div_factor
    up = max(1.0, pct_start * total - 1)
    if step <= up:
        return _cos_interp(initial, peak, step / up)
    down = max(1.0, total - 1 - up)
    return _cos_interp(peak, final, min(1.0, (step - up) / down))


def _cos_interp(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
