"""NumPy numerics shared by every layer, importable without torch (the light inference path needs it)."""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of ``N×K`` logits in float64, stable for large logits (max subtracted first)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax probabilities of ``N×K`` logits, computed in float64 and returned as float64."""
    return np.exp(log_softmax(logits))
