"""Training engine: config, schedules, callbacks, the loop, checkpoints, runs."""

from digitlab.checkpoint import build_meta, load_checkpoint, read_meta, save_checkpoint
from digitlab.train.callbacks import (
    Callback,
    EarlyStopping,
    History,
    LambdaCallback,
    ProgressBar,
    ReduceLROnPlateau,
    TensorBoardLogger,
)
from digitlab.train.config import TrainConfig
from digitlab.train.loop import FitResult, Trainer, evaluate_split, fit
from digitlab.train.run import RunResult, train_run
from digitlab.train.schedules import cosine_with_warmup, lr_at, one_cycle

__all__ = [
    "Callback", "EarlyStopping", "FitResult", "History", "LambdaCallback", "ProgressBar",
    "ReduceLROnPlateau", "RunResult", "TensorBoardLogger", "TrainConfig", "Trainer", "build_meta",
    "cosine_with_warmup", "evaluate_split", "fit", "load_checkpoint", "lr_at", "one_cycle",
    "read_meta", "save_checkpoint", "train_run",
]
