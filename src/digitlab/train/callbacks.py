"""Callbacks: objects notified at named events of the training loop.

Events, in order: ``fit_start``, then per epoch ``epoch_start``, ``step_end``
(every optimizer step), ``validation_end`` (every ``eval_every_steps`` steps, with
that history row), ``epoch_end`` (with the epoch's metrics), and finally
``fit_end``. ``interrupt`` fires on Ctrl-C before the resumable state is saved.
A callback implements ``on_<event>(trainer, **payload)`` for the events it
wants; ``state_dict``/``load_state_dict`` carry its state across a resume.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from digitlab.utils import write_text_atomic

if TYPE_CHECKING:
    from digitlab.train.loop import Trainer

EVENTS = ("fit_start", "epoch_start", "step_end", "validation_end", "epoch_end", "fit_end", "interrupt")
HISTORY_FIELDS = ("epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                  "epoch_seconds")


class Callback:
    """Base class: every hook is a no-op. ``main_only`` callbacks run on rank 0 only."""

    name = "callback"
    main_only = False

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _better(mode: str, value: float, best: float | None, min_delta: float) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _mode(monitor: str) -> str:
    return "max" if monitor.endswith("accuracy") else "min"


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best`` the model ends with the weights of its best epoch.
    """

    name = "early_stopping"

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0,
                 restore_best: bool = True) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.restore_best = restore_best
        self.mode = _mode(monitor)
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.wait = 0
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.stopped_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            return
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = value, metrics["epoch"], 0
            if self.restore_best:
                self.best_weights = {k: v.detach().clone() for k, v in trainer.raw_model.state_dict().items()}
        else:
            self.wait += 1
            if self.wait > self.patience:
                self.stopped_epoch = metrics["epoch"]
                trainer.request_stop(f"early stopping: {self.monitor} did not improve for "
                                     f"{self.patience} epochs (best {self.best:.4f} at epoch {self.best_epoch})")

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.restore_best and self.best_weights is not None:
            trainer.raw_model.load_state_dict(self.best_weights)
            trainer.notes["restored_best_epoch"] = self.best_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped_epoch": self.stopped_epoch, "best_weights": self.best_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped_epoch = state["wait"], state["stopped_epoch"]
        self.best_weights = state.get("best_weights")


class ReduceLROnPlateau(Callback):
    """Multiply the LR by ``factor`` after ``patience`` epochs without improvement."""

    name = "plateau"

    def __init__(self, monitor: str = "val_loss", patience: int = 3, factor: float = 0.5,
                 min_delta: float = 1e-4, min_scale: float = 1e-4) -> None:
        self.monitor, self.patience, self.factor = monitor, patience, factor
        self.min_delta, self.min_scale = min_delta, min_scale
        self.mode = _mode(monitor)
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        value = metrics.get(self.monitor)
        if value is None:
            return
        if _better(self.mode, value, self.best, self.min_delta):
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait > self.patience:
                trainer.state.lr_scale = max(self.min_scale, trainer.state.lr_scale * self.factor)
                self.wait = 0

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class History(Callback):
    """Writes ``history.csv`` (one row per epoch end and per ``eval_every_steps`` validation)
    after every epoch and every validation."""

    name = "history"
    main_only = True

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.path is None:
            return
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in trainer.state.history:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in HISTORY_FIELDS})
        write_text_atomic(self.path, buf.getvalue())

    def on_validation_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        self.on_epoch_end(trainer, metrics)


def tensorboard_available() -> bool:
    """Whether the optional ``tensorboard`` package (``digitlab[tensorboard]``) is installed."""
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


TENSORBOARD_OFF_MESSAGE = ("digitlab: TensorBoard logging is off (the tensorboard package is not installed; "
                           "pip install 'digitlab[tensorboard]' turns it on, config tensorboard: false "
                           "silences this)")


class TensorBoardLogger(Callback):
    """Scalars per step (loss, LR) and per epoch (all metrics) as TensorBoard events.

    Needs the optional ``tensorboard`` package; :func:`digitlab.train.run.train_run` only adds this
    callback when :func:`tensorboard_available`.
    """

    name = "tensorboard"
    main_only = True

    def __init__(self, log_dir: str | os.PathLike[str], every: int = 50) -> None:
        self.log_dir, self.every = str(log_dir), every
        self.writer: Any = None

    def on_fit_start(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(self.log_dir)

    def on_step_end(self, trainer: Trainer, loss: torch.Tensor, **_: Any) -> None:
        if self.writer is not None and trainer.state.step % self.every == 0:
            self.writer.add_scalar("train/loss_step", float(loss), trainer.state.step)
            self.writer.add_scalar("train/lr", trainer.state.lr, trainer.state.step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key not in ("epoch", "step") and isinstance(value, (int, float)):
                group, _, name = key.partition("_")
                self.writer.add_scalar(f"{group}/{name}" if name else key, value, metrics["epoch"])
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.writer is not None:
            self.writer.close()

    on_interrupt = on_fit_end


class ProgressBar(Callback):
    """A tqdm bar per epoch showing loss, accuracy and LR; a line per finished epoch."""

    name = "progress"
    main_only = True

    def __init__(self, every: int = 10, stream: Any = None) -> None:
        self.every = every
        self.stream = stream or sys.stderr
        self.bar = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        cfg = trainer.config
        self.bar = tqdm(total=trainer.steps_per_epoch, initial=trainer.state.batch, leave=False,
                        desc=f"epoch {trainer.state.epoch + 1}/{cfg.epochs}", file=self.stream,
                        dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, **_: Any) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        if trainer.state.step % self.every == 0:
            loss, acc = trainer.running_metrics()
            self.bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.4f}", lr=f"{trainer.state.lr:.2e}")

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        parts = [f"epoch {metrics['epoch']}/{trainer.config.epochs}"]
        for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            if metrics.get(key) is not None:
                parts.append(f"{key} {metrics[key]:.4f}")
        parts.append(f"lr {metrics['lr']:.2e}  {metrics['epoch_seconds']:.1f}s")
        print("  ".join(parts), file=self.stream, flush=True)

    def on_interrupt(self, trainer: Trainer) -> None:
        if self.bar is not None:
            self.bar.close()


class LambdaCallback(Callback):
    """Build a callback from functions, e.g. ``LambdaCallback(step_end=fn)`` (used in tests)."""

    def __init__(self, name: str = "lambda", **hooks: Any) -> None:
        self.name = name
        for event, fn in hooks.items():
            if event not in EVENTS:
                raise ValueError(f"unknown event {event!r}; events: {', '.join(EVENTS)}")
            setattr(self, f"on_{event}", fn)


def clone_state(obj: Any) -> Any:
    return copy.deepcopy(obj)
