"""Evaluate a model (or a saved run) on a dataset split: the one evaluation path.

``digitlab evaluate``, ``digitlab compare`` and ``digitlab study`` all score models
with :func:`evaluate_model`; results are typed (:class:`QualityMetrics`,
:class:`Evaluation`) and become JSON through their ``to_dict()``.

* :func:`predict_logits` — batched inference;
* :func:`score_logits` — all quality metrics from logits + labels (pure);
  :func:`evaluate_logits` is its JSON-able dict;
* :func:`evaluate_model` — both, plus timing and size (the logits are kept on the
  result, e.g. for McNemar tests, so nothing is predicted twice);
* :func:`load_for_evaluation` / :func:`evaluate_run` — the same from a run
  directory or checkpoint file.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.evaluate import metrics as M
from digitlab.evaluate.calibration import DEFAULT_BINS, expected_calibration_error, reliability_diagram
from digitlab.evaluate.speed import SpeedProfile, checkpoint_bytes, parameter_count, speed_profile
from digitlab.models.forward import predict_logits

__all__ = ["EvalInputs", "Evaluation", "QualityMetrics", "evaluate_logits", "evaluate_model", "evaluate_run",
           "load_for_evaluation", "predict_logits", "score_logits"]


@dataclass
class QualityMetrics:
    """Every quality metric of one set of predictions (see :func:`score_logits`)."""

    n: int
    num_classes: int
    class_names: list[str]
    accuracy: float
    loss: float
    """Cross-entropy computed from the logits."""
    log_loss: float
    """Log-loss from the softmax probabilities (scikit-learn's clipping)."""
    top3: float
    top5: float
    ece: float
    macro_avg: dict[str, float]
    """``{precision, recall, f1, support}``."""
    weighted_avg: dict[str, float]
    per_class: list[dict[str, Any]]
    """One ``{class, index, precision, recall, f1, support}`` per class."""
    confusion_matrix: list[list[int]]
    """K×K counts, rows = true class."""
    confusion_matrix_normalized: list[list[float]]
    top_confusions: list[dict[str, Any]]
    reliability: dict[str, Any]
    classification_report: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Evaluation:
    """A model scored on one split: quality, size, prediction time and (optionally) speed."""

    quality: QualityMetrics
    parameters: int
    checkpoint_bytes: int | None
    predict_seconds: float
    """Wall time of the batched prediction of the whole split."""
    speed: SpeedProfile | None
    logits: torch.Tensor = field(repr=False)
    """``N×K`` float32 logits (CPU); not part of :meth:`to_dict`."""
    model: str | None = None
    model_kwargs: dict[str, Any] | None = None
    checkpoint: str | None = None
    dataset: str | None = None
    split: str | None = None
    meta: dict[str, Any] | None = field(default=None, repr=False)
    """The checkpoint's metadata when evaluated from a saved run; not part of :meth:`to_dict`."""
    temperature: float = 1.0
    """Calibration temperature the probability metrics (loss, log-loss, ECE, reliability) use:
    they score ``softmax(logits / temperature)``; 1.0 for an uncalibrated model."""
    ece_uncalibrated: float | None = None
    """ECE of ``softmax(logits)`` (without the temperature)."""
    loss_uncalibrated: float | None = None
    """Cross-entropy of the raw logits (without the temperature)."""

    @property
    def accuracy(self) -> float:
        return self.quality.accuracy

    def probabilities(self) -> np.ndarray:
        """Calibrated softmax of the logits, ``softmax(logits / temperature)`` (float64, N×K)."""
        return M.softmax(self.logits.double().numpy() / self.temperature)

    def to_dict(self) -> dict[str, Any]:
        """The JSON view (the keys ``digitlab evaluate --json`` prints)."""
        head: dict[str, Any] = {}
        if self.model is not None:
            head = {"model": self.model, "model_kwargs": self.model_kwargs or {}, "checkpoint": self.checkpoint,
                    "dataset": self.dataset, "split": self.split}
        sp = self.speed
        return {**head, **self.quality.to_dict(), "temperature": self.temperature,
                "ece_uncalibrated": self.ece_uncalibrated, "loss_uncalibrated": self.loss_uncalibrated,
                "parameters": self.parameters,
                "checkpoint_bytes": self.checkpoint_bytes, "predict_seconds": self.predict_seconds,
                "latency_ms_p50": sp.latency_ms_p50 if sp else None,
                "latency_ms_p95": sp.latency_ms_p95 if sp else None,
                "throughput_per_s": sp.throughput_per_s if sp else None,
                "speed": sp.to_dict() if sp else None}


def evaluate_logits(logits: M.ArrayLike, labels: M.ArrayLike, *, class_names: Sequence[str] | None = None,
                    n_bins: int = DEFAULT_BINS, top_confusions: int = 10) -> dict[str, Any]:
    """:func:`score_logits` as a JSON-able dict (same keys as :class:`QualityMetrics`)."""
    return score_logits(logits, labels, class_names=class_names, n_bins=n_bins,
                        top_confusions=top_confusions).to_dict()


def score_logits(logits: M.ArrayLike, labels: M.ArrayLike, *, class_names: Sequence[str] | None = None,
                 n_bins: int = DEFAULT_BINS, top_confusions: int = 10) -> QualityMetrics:
    """Quality metrics of ``N×K`` logits against labels.

    Fields: ``n, num_classes, class_names, accuracy, loss`` (cross-entropy from
    logits), ``log_loss`` (from softmax probabilities, sklearn's clipping),
    ``top3, top5, ece, macro_avg, weighted_avg`` (each ``{precision, recall, f1,
    support}``), ``per_class`` (list of ``{class, index, precision, recall, f1,
    support}``), ``confusion_matrix`` (K×K int lists, rows = true),
    ``confusion_matrix_normalized`` (row-normalised floats), ``top_confusions``
    (list of ``{true, pred, true_name, pred_name, count}``), ``reliability``
    (see :func:`reliability_diagram`), ``classification_report`` (text).
    """
    z = M.to_numpy(logits).astype(np.float64)
    y = M._labels(labels)
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match")
    k = z.shape[1]
    names = M.class_names_for(k, class_names)
    probs = M.softmax(z)
    preds = probs.argmax(axis=1)
    prf = M.precision_recall_f1(y, preds, num_classes=k)
    avg = M.averages(prf)
    cm = M.confusion_matrix(y, preds, num_classes=k)
    report = M.classification_report(y, preds, num_classes=k, class_names=names)
    rel = reliability_diagram(probs, y, n_bins=n_bins)
    return QualityMetrics(
        n=int(y.size), num_classes=int(k), class_names=list(names), accuracy=M.accuracy(preds, y),
        loss=M.cross_entropy(z, y), log_loss=M.log_loss(probs, y), top3=M.top_k_accuracy(z, y, 3),
        top5=M.top_k_accuracy(z, y, 5), ece=rel["ece"], macro_avg=avg["macro"], weighted_avg=avg["weighted"],
        per_class=M.per_class_table(y, preds, num_classes=k, class_names=names),
        confusion_matrix=cm.tolist(),
        confusion_matrix_normalized=M.confusion_matrix(y, preds, num_classes=k, normalize="true").tolist(),
        top_confusions=M.top_confusions(cm, top_confusions, class_names=names), reliability=rel,
        classification_report=M.format_classification_report(report))


def evaluate_model(model: nn.Module, images_u8: torch.Tensor, labels: torch.Tensor, *,
                   class_names: Sequence[str] | None = None, batch_size: int = 1000,
                   device: str | torch.device | None = None, speed: bool = True,
                   speed_repeats: int = 50, throughput_repeats: int = 3,
                   checkpoint_path: str | os.PathLike[str] | None = None,
                   n_bins: int = DEFAULT_BINS, progress: bool = False, temperature: float = 1.0) -> Evaluation:
    """Predict ``images_u8`` once and score it: :class:`Evaluation` (quality, size, time, speed).

    ``temperature`` (the model's calibration, :func:`digitlab.inference.predictor.temperature_of`)
    divides the logits before the probability metrics; accuracy does not depend on it, and
    ``ece_uncalibrated`` / ``loss_uncalibrated`` keep the raw logits' figures.

    ``predict_seconds`` is the wall time of the batched prediction of the whole set at
    ``batch_size``, after a one-image warm-up call. ``speed`` (None when ``speed=False``) is
    :func:`digitlab.evaluate.speed.speed_profile`: batch-1 latency and throughput timed in rounds,
    the protocol ``compare`` and ``study`` use for several models at once.
    """
    if images_u8.shape[0]:
        # one tiny call first so lazy initialisation (threads, allocators) is not billed to the set
        predict_logits(model, images_u8[:1], device=device)
    t0 = time.perf_counter()
    logits = predict_logits(model, images_u8, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    quality = score_logits(logits.double() / temperature, labels, class_names=class_names, n_bins=n_bins)
    raw_probs = M.softmax(logits.double().numpy())
    prof = None
    if speed and images_u8.shape[0] > 0:
        prof = speed_profile(model, images_u8, repeats=speed_repeats, warmup=min(10, speed_repeats),
                             batch_size=batch_size, throughput_repeats=throughput_repeats)
    return Evaluation(quality=quality, parameters=parameter_count(model),
                      checkpoint_bytes=checkpoint_bytes(checkpoint_path) if checkpoint_path is not None else None,
                      predict_seconds=seconds, speed=prof, logits=logits, temperature=float(temperature),
                      ece_uncalibrated=expected_calibration_error(raw_probs, labels, n_bins),
                      loss_uncalibrated=M.cross_entropy(logits.double().numpy(), labels))


@dataclass
class EvalInputs:
    """Everything needed to evaluate a saved model on one split."""

    model: nn.Module
    meta: dict[str, Any]
    checkpoint: Path
    dataset: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]


def load_for_evaluation(source: str | os.PathLike[str], dataset: str | None = None, split: str = "test",
                        data_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu",
                        limit: int | None = None, progress: bool = False) -> EvalInputs:
    """Load a run directory / checkpoint and the split to evaluate it on.

    ``dataset`` None uses the run's own dataset (:func:`digitlab.checkpoint.dataset_of`).
    ``limit`` keeps the first ``limit`` samples (for quick checks).
    """
    from digitlab.checkpoint import checkpoint_file, dataset_of, load_checkpoint
    from digitlab.data import load_dataset
    from digitlab.utils import resolve_device

    path = checkpoint_file(source)
    model, meta = load_checkpoint(path, device=resolve_device(device))
    name = dataset or dataset_of(meta)
    ds = load_dataset(name, data_dir, progress=progress)
    images, labels = ds.split(split)
    if limit is not None:
        if limit < 1:
            from digitlab.errors import ConfigError

            raise ConfigError(f"--limit must be >= 1, got {limit}")
        images, labels = images[:limit], labels[:limit]
    return EvalInputs(model=model, meta=meta, checkpoint=path, dataset=name, split=split,
                      images=images, labels=labels, class_names=list(ds.spec.class_names))


def evaluate_run(source: str | os.PathLike[str], dataset: str | None = None, split: str = "test",
                 data_dir: str | os.PathLike[str] | None = None, *, device: str = "cpu",
                 batch_size: int = 1000, speed: bool = True, speed_repeats: int = 50,
                 throughput_repeats: int = 3, limit: int | None = None, n_bins: int = DEFAULT_BINS,
                 progress: bool = False) -> Evaluation:
    """:func:`evaluate_model` on a saved run (or ``"default"``); fills ``model, model_kwargs,
    checkpoint, dataset, split, meta``. ``dataset`` None: the run's own. The probability
    metrics use the run's calibration temperature (``meta["calibration"]``) when it has one."""
    from digitlab.inference.predictor import temperature_of

    inp = load_for_evaluation(source, dataset, split, data_dir, device=device, limit=limit,
                              progress=progress)
    temperature = temperature_of(inp.meta, str(inp.checkpoint))
    result = evaluate_model(inp.model, inp.images, inp.labels, class_names=inp.class_names,
                            batch_size=batch_size, speed=speed, speed_repeats=speed_repeats,
                            throughput_repeats=throughput_repeats, checkpoint_path=inp.checkpoint,
                            n_bins=n_bins, progress=progress, temperature=temperature)
    result.model, result.model_kwargs = inp.meta.get("model"), inp.meta.get("model_kwargs", {})
    result.checkpoint, result.dataset, result.split, result.meta = str(inp.checkpoint), inp.dataset, split, inp.meta
    return result
