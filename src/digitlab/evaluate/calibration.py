"""Calibration: expected calibration error and reliability-diagram data.

Confidence is the maximum predicted probability of each sample; a prediction
is correct when its argmax equals the label. Samples are put into ``n_bins``
equal-width bins over [0, 1], bin ``i`` holding confidences in
``(i/n_bins, (i+1)/n_bins]`` (a confidence of exactly 0 goes to the first bin),
following Guo et al., "On Calibration of Modern Neural Networks" (ICML 2017):

    ECE = sum_i (n_i / N) * |accuracy_i - confidence_i|
    MCE = max_i over non-empty bins |accuracy_i - confidence_i|
"""

from __future__ import annotations

from typing import Any

import numpy as np

from digitlab.evaluate.metrics import ArrayLike, _labels, _scores

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
