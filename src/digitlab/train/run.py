"""A training run on disk: config → run directory with checkpoint, history, logs.

Layout of a run directory::

    config.yaml         the resolved TrainConfig
    model.safetensors   final weights + metadata (model name/kwargs, config, metrics, …)
    meta.json           the same metadata, readable
    history.csv         metrics per epoch end and per ``eval_every_steps`` validation
    tensorboard/        TensorBoard event files (with the digitlab[tensorboard] extra)
    resume.safetensors  resumable state while the run is unfinished
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from digitlab.checkpoint import (
    CONFIG_FILE,
    HISTORY_FILE,
    META_FILE,
    RESUME_FILE,
    TENSORBOARD_DIR,
    build_meta,
    save_run_checkpoint,
)
from digitlab.errors import CheckpointError
from digitlab.train.callbacks import (
    TENSORBOARD_OFF_MESSAGE,
    Callback,
    History,
    ProgressBar,
    TensorBoardLogger,
    tensorboard_available,
)
from digitlab.train.config import TrainConfig
from digitlab.train.loop import FitResult, Trainer, evaluate_split, preserved_torch_state
from digitlab.utils import ensure_new_dir, resolve_device, write_text_atomic

if TYPE_CHECKING:
    from digitlab.evaluate.calibration import TemperatureFit

__all__ = ["CONFIG_FILE", "RunResult", "default_run_dir", "load_run_config", "remove_stale_temp_files",
           "train_run"]

_told_tensorboard_off = False


@dataclass
class RunResult:
    run_dir: Path | None
    metrics: dict[str, Any]
    meta: dict[str, Any]
    fit: FitResult
    model: torch.nn.Module


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_run_config(run_dir: str | os.PathLike[str]) -> TrainConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no {CONFIG_FILE})")
    return TrainConfig.from_yaml(path)


def remove_stale_temp_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the ``.NAME.*.tmp`` files an interrupted atomic write left in ``run_dir``; returns them.

    :func:`digitlab.utils.atomic_path` writes ``.NAME.XXXX.tmp`` next to ``NAME`` and renames it;
    a ``kill -9`` between the two leaves the temporary file behind. Only files of that pattern
    directly inside the run directory (and its ``tensorboard`` folder is left alone) are removed.
    """
    removed = []
    for p in Path(run_dir).glob(".*.tmp"):
        if p.is_file() and not p.is_symlink() and p.name.count(".") >= 3:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _fit_calibration(model: torch.nn.Module, val: Any, batch_size: int) -> TemperatureFit | None:
    """Temperature scaling fitted on the validation images the run validates on (one forward pass:
    the whole validation split, or its first ``val_max_images``; one scalar is well determined by a
    thousand images, and a big net's pass over all of them would cost a budgeted run more than its training).

    ``None`` when there is no validation split or the model is not gradient-trained
    (the scikit-learn-style baselines output probabilities of their own).
    """
    if val is None or len(val) == 0 or not getattr(model, "uses_gradient", True):
        return None
    from digitlab.evaluate.calibration import calibrate
    from digitlab.models.forward import predict_logits

    logits = predict_logits(model, val.images, batch_size=batch_size)
    if not bool(torch.isfinite(logits).all()):
        return None
    return calibrate(logits.double().numpy(), val.labels.cpu().numpy(), fitted_on="validation")


def _tensorboard_off() -> None:
    """Say once per process (one line on stderr) that TensorBoard logging is off."""
    global _told_tensorboard_off
    if not _told_tensorboard_off:
        import sys

        print(TENSORBOARD_OFF_MESSAGE, file=sys.stderr, flush=True)
        _told_tensorboard_off = True


def train_run(
    config: TrainConfig | None,
    out: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    data_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    callbacks: list[Callback] | None = None,
    rank: int = 0,
    world_size: int = 1,
    dataset: Any = None,
    evaluate_test: bool = True,
) -> RunResult:
    """Train as ``config`` says, writing a run directory at ``out`` (None: in memory only).

    ``resume=True`` continues the unfinished run in ``out`` with its saved config.
    ``evaluate_test=False`` skips scoring the test set (for callers that evaluate it themselves).
    The process-wide torch state (global RNG, deterministic flags) is the same afterwards.
    """
    with preserved_torch_state():
        return _train_run(config, out, resume=resume, data_dir=data_dir, progress=progress,
                          callbacks=callbacks, rank=rank, world_size=world_size, dataset=dataset,
                          evaluate_test=evaluate_test)


def _train_run(config: TrainConfig | None, out: str | os.PathLike[str] | None, *, resume: bool,
               data_dir: str | os.PathLike[str] | None, progress: bool, callbacks: list[Callback] | None,
               rank: int, world_size: int, dataset: Any, evaluate_test: bool) -> RunResult:
    from digitlab.data import load_dataset, make_splits
    from digitlab.models import create_model

    is_main = rank == 0
    run_dir = Path(out) if out is not None else None
    if resume:
        if run_dir is None:
            raise CheckpointError("--resume needs the run directory")
        if (run_dir / META_FILE).is_file() and not (run_dir / RESUME_FILE).is_file():
            raise CheckpointError(f"{run_dir}: run already finished; nothing to resume")
        if not (run_dir / RESUME_FILE).is_file():
            raise CheckpointError(f"{run_dir}: no {RESUME_FILE}; cannot resume")
        config = load_run_config(run_dir)
        if is_main:
            remove_stale_temp_files(run_dir)
    if config is None:
        raise CheckpointError("train_run needs a config unless it resumes a run")
    torch.manual_seed(config.seed)  # initialisation is part of the seed's promise
    # resolved and built before anything touches the disk: an unavailable device or bad model
    # arguments leave no half-made run directory that would block the retry
    device = resolve_device(config.device)
    if world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
    model = create_model(config.model, **config.model_kwargs)
    init_report = None
    if config.init_from is not None:  # fine-tuning: checked before the run directory exists too
        from digitlab.train.finetune import apply_freeze, init_from_run

        if resume:
            apply_freeze(model, config)  # the weights come from the resume state
        else:
            init_report = init_from_run(model, config)
    prepared = world_size > 1 and run_dir is not None and (run_dir / CONFIG_FILE).exists()
    if not resume and run_dir is not None and is_main and not prepared:
        # with --nproc the parent process prepared the directory; under torchrun nobody did
        ensure_new_dir(run_dir, "run directory")
        write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())

    ds = dataset if dataset is not None else load_dataset(config.dataset, data_dir, progress=progress and is_main)
    splits = make_splits(ds, config.val_fraction, config.seed)

    cbs: list[Callback] = []
    if run_dir is not None:
        cbs.append(History(run_dir / HISTORY_FILE))
        if config.tensorboard and is_main:
            if tensorboard_available():
                cbs.append(TensorBoardLogger(run_dir / TENSORBOARD_DIR))
            else:
                _tensorboard_off()
    if progress:
        cbs.append(ProgressBar())
    cbs.extend(callbacks or [])
    trainer = Trainer(model, splits, config, cbs, run_dir=run_dir, device=device,
                      rank=rank, world_size=world_size)
    if resume and run_dir is not None:
        trainer.resume_from(run_dir)
    t0 = time.perf_counter()
    result = trainer.fit()
    total_seconds = time.perf_counter() - t0
    followed = trainer.followed_config()
    if followed is not config:  # a run that held a time budget: record the plan it followed
        config = followed
        if run_dir is not None and is_main:
            write_text_atomic(run_dir / CONFIG_FILE, config.to_yaml())

    model = trainer.raw_model.eval()
    calibration = _fit_calibration(model, trainer.val_split, config.eval_batch_size)
    test = (evaluate_split(model, splits.test.to(device), config.eval_batch_size) if evaluate_test
            else {"accuracy": None, "loss": None})
    last = result.history[-1] if result.history else {}
    metrics: dict[str, Any] = {
        "test_accuracy": test["accuracy"], "test_loss": test["loss"],
        "val_accuracy": last.get("val_accuracy"), "val_loss": last.get("val_loss"),
        "train_accuracy": last.get("train_accuracy"), "train_loss": last.get("train_loss"),
        "train_seconds": result.train_seconds, "val_seconds": result.val_seconds,
        "fit_seconds": total_seconds,
        "epochs_completed": result.epochs_completed, "steps": result.steps,
        "stop_reason": result.stop_reason, **result.notes,
    }
    if config.cv_folds and not getattr(model, "uses_gradient", True):
        from digitlab.models.baselines import cross_validate_estimator

        metrics["cross_validation"] = cross_validate_estimator(
            config.model, ds.train_images, ds.train_labels, folds=config.cv_folds, seed=config.seed,
            **config.model_kwargs)
    meta = build_meta(model, config=config.to_dict(), metrics=metrics, data={
        "dataset": ds.name, "checksums": ds.checksums, "val_fraction": config.val_fraction,
        "split_seed": config.seed, "train_count": len(splits.train),
        "val_count": len(splits.val) if splits.val is not None else 0, "test_count": len(splits.test),
    }, extra={"history": result.history, "device": str(device), "world_size": world_size,
              **({"init_from": init_report.to_dict()} if init_report is not None else
                 {"init_from": {"source": config.init_from}} if config.init_from else {}),
              **({"calibration": calibration.to_dict()} if calibration is not None else {})})
    if run_dir is not None and is_main:
        save_run_checkpoint(run_dir, model, meta)
        (run_dir / RESUME_FILE).unlink(missing_ok=True)
    return RunResult(run_dir, metrics, meta, result, model)
