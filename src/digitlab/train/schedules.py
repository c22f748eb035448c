"""Learning-rate schedules as pure functions of the step.

``lr_at(config, step, steps_per_epoch, total_steps)`` gives the LR before the
plateau factor (ReduceLROnPlateau is inherently stateful and lives in a
callback that scales this value).
"""

from __future__ import annotations

import math

from digitlab.train.config import TrainConfig


def lr_at(cfg: TrainConfig, step: float, steps_per_epoch: int, total_steps: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based; fractional for a re-planned run, see
    :class:`StepPlan`)."""
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


def cosine_with_warmup(step: float, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warm-up to ``peak`` over ``warmup`` steps, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


def one_cycle(step: float, total: int, peak: float, pct_start: float = 0.25,
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


class StepPlan:
    """Where optimizer step ``step`` lies on the schedule of a run whose length was re-planned.

    ``points`` are ``[step, total]`` pairs: from ``step`` on, the run aimed to end at ``total``. The
    schedule is laid out for the first total; each re-plan keeps the schedule's progress where it
    was and spreads what is left of it over the new remaining steps, so the learning rate stays
    continuous and the run's last step (``total - 1``) is still the schedule's last step. A single
    point is the ordinary run (position = step). A pure function of the step and the points: a run
    given the same points repeats the same learning rates.
    """

    def __init__(self, points: list[list[int]]) -> None:
        if not points or points[0][0] != 0:
            raise ValueError("a step plan starts at step 0")
        self.points = [(int(s), int(t)) for s, t in points]
        self.planned = self.points[0][1]
        # progress (0..1, 1 = the schedule's last step) at the start of each segment
        self.starts = [0.0]
        for (s, t), (s_next, _) in zip(self.points, self.points[1:], strict=False):
            self.starts.append(self._progress(self.starts[-1], s, t, s_next))

    @staticmethod
    def _progress(start: float, s: int, t: int, step: int) -> float:
        # from ``start`` at step s to 1 at the segment's last step t - 1 (at once if that is s itself)
        return 1.0 if t - 1 <= s else start + (step - s) * (1.0 - start) / (t - 1 - s)

    @property
    def total(self) -> int:
        """The step the run ends at."""
        return self.points[-1][1]

    def position(self, step: int) -> float:
        """Step on the first plan's schedule (``0 .. planned - 1``) that step ``step`` runs at."""
        if len(self.points) == 1:
            return step
        i = len(self.points) - 1
        while i > 0 and step < self.points[i][0]:
            i -= 1
        s, t = self.points[i]
        return self._progress(self.starts[i], s, t, step) * (self.planned - 1)
