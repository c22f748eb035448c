"""Calibration: expected calibration error and reliability-diagram data.

Confidence is the maximum predicted probability of each sample; a prediction
is correct when its argmax equals the label. Samples are put into ``n_bins``
equal-width bins over [0, 1], bin ``i`` holding confidences in
``(i/n_bins, (i+1)/n_bins]`` (a confidence of exactly 0 goes to the first bin),
following Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017):

    ECE = sum_i (n_i / N) * |accuracy_i - confidence_i|
    MCE = max_i over non-empty bins |accuracy_i - confidence_i|

:func:`fit_temperature` / :func:`calibrate` fit temperature scaling on held-out logits
(stored in checkpoint metadata as ``meta["calibration"]``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from digitlab.evaluate.metrics import ArrayLike, _labels, _scores
from digitlab.numerics import softmax

DEFAULT_BINS = 15


def _bins(probs: ArrayLike, labels: ArrayLike, n_bins: int
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p = _scores(probs).astype(np.float64)
    y = _labels(labels)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # right-closed bins: searchsorted(side="left") on the inner edges maps e to bin i with e_i < c <= e_{i+1}
    idx = np.clip(np.searchsorted(edges[1:-1], conf, side="left"), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    return edges, count, conf_sum, acc_sum


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of max-probability confidence with ``n_bins`` equal-width bins (0 = perfectly calibrated)."""
    _, count, conf_sum, acc_sum = _bins(probs, labels, n_bins)
    n = count.sum()
    return float(np.abs(acc_sum - conf_sum).sum() / n) if n else 0.0


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, n_bins: int = DEFAULT_BINS
                        ) -> dict[str, Any]:
    """Per-bin data for a reliability diagram, JSON-able.

    Returns ``{"n_bins", "bin_lower", "bin_upper", "confidence", "accuracy",
    "count", "ece", "mce"}``: lists of length ``n_bins``; ``confidence`` and
    ``accuracy`` are the bin means, ``None`` for empty bins.
    """
    edges, count, conf_sum, acc_sum = _bins(probs, labels, n_bins)
    nonempty = count > 0
    conf = np.divide(conf_sum, count, out=np.zeros(n_bins), where=nonempty)
    acc = np.divide(acc_sum, count, out=np.zeros(n_bins), where=nonempty)
    n = int(count.sum())
    gaps = np.abs(acc - conf)[nonempty]
    return {
        "n_bins": int(n_bins),
        "bin_lower": edges[:-1].tolist(),
        "bin_upper": edges[1:].tolist(),
        "confidence": [float(c) if e else None for c, e in zip(conf, nonempty, strict=True)],
        "accuracy": [float(a) if e else None for a, e in zip(acc, nonempty, strict=True)],
        "count": count.astype(int).tolist(),
        "ece": float(np.abs(acc_sum - conf_sum).sum() / n) if n else 0.0,
        "mce": float(gaps.max()) if gaps.size else 0.0,
    }


# --------------------------------------------------------------------------- temperature scaling

TEMPERATURE_RANGE = (0.01, 100.0)
"""Bounds of the temperature search: far outside anything a trained classifier needs."""


def _nll_at(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    s = z / temperature
    m = s.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(s - m).sum(axis=1))
    return float(np.mean(lse - s[np.arange(y.size), y]))


def fit_temperature(logits: ArrayLike, labels: ArrayLike) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al. 2017): one scalar fitted after training on held-out
    data; it changes confidences, never the predicted class. The NLL is convex in ``1/T``,
    hence unimodal in ``log T``: a golden-section search over ``log T`` in
    :data:`TEMPERATURE_RANGE` finds the minimum to 1e-6 relative precision (numpy, float64).
    ``T < 1`` sharpens under-confident probabilities (label smoothing), ``T > 1`` softens
    over-confident ones.
    """
    z = _scores(logits).astype(np.float64)
    y = _labels(labels)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or y.size == 0:
        raise ValueError(f"need N×K logits and N labels with N >= 1; got {z.shape} and {y.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinite values")
    if y.min() < 0 or y.max() >= z.shape[1]:
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo + (1 - ratio) * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _nll_at(z, y, float(np.exp(a))), _nll_at(z, y, float(np.exp(b)))
    while hi - lo > 1e-6:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = lo + (1 - ratio) * (hi - lo)
            fa = _nll_at(z, y, float(np.exp(a)))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _nll_at(z, y, float(np.exp(b)))
    return float(np.exp((lo + hi) / 2))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and what it did on the data it was fitted on (``meta["calibration"]``)."""

    temperature: float
    fitted_on: str
    """Which data: ``"validation"`` for a run's validation split."""
    n: int
    """Number of samples fitted on."""
    ece_before: float
    """ECE of ``softmax(logits)`` on that data."""
    ece_after: float
    """ECE of ``softmax(logits / temperature)`` on that data."""
    note: str | None = None
    """Why the data is what it is, when it is not a held-out validation split."""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def calibrate(logits: ArrayLike, labels: ArrayLike, fitted_on: str = "validation",
              n_bins: int = DEFAULT_BINS, note: str | None = None) -> TemperatureFit:
    """Fit the temperature on ``logits``/``labels`` and report the ECE before and after."""
    z = _scores(logits).astype(np.float64)
    t = fit_temperature(z, labels)
    return TemperatureFit(temperature=t, fitted_on=fitted_on, n=int(z.shape[0]),
                          ece_before=expected_calibration_error(softmax(z), labels, n_bins),
                          ece_after=expected_calibration_error(softmax(z / t), labels, n_bins), note=note)
