"""Error analysis from predicted probabilities: what a model gets wrong, and how confidently.

All functions take ``probs`` (``N×K`` probabilities; pass softmax of logits) and
``labels`` (``N`` ints) as numpy arrays or torch tensors, and return numpy
arrays in dicts (use :func:`digitlab.utils.to_jsonable` for JSON).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from digitlab.evaluate.metrics import ArrayLike, _labels, _scores, confusion_matrix, top_confusions


def _probs_labels(probs: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    p = _scores(probs).astype(np.float64)
    y = _labels(labels)
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"probs has {p.shape[0]} rows but labels has {y.shape[0]}")
    return p, y


def misclassified(probs: ArrayLike, labels: ArrayLike, limit: int | None = None,
                  order: str = "confidence") -> dict[str, np.ndarray]:
    """The misclassified samples.

    Returns ``{"index", "true", "pred", "confidence", "true_prob"}`` arrays, where
    ``confidence`` is the probability of the (wrong) predicted class.
    ``order="confidence"`` lists the most confident mistakes first (ties by
    index); ``order="index"`` keeps dataset order. ``limit`` keeps the first ``limit``.
    """
    p, y = _probs_labels(probs, labels)
    pred = p.argmax(axis=1)
    idx = np.flatnonzero(pred != y)
    conf = p[idx, pred[idx]]
    if order == "confidence":
        sort = np.lexsort((idx, -conf))
        idx, conf = idx[sort], conf[sort]
    elif order != "index":
        raise ValueError(f"order must be 'confidence' or 'index', got {order!r}")
    if limit is not None:
        idx, conf = idx[:limit], conf[:limit]
    return {"index": idx, "true": y[idx], "pred": pred[idx], "confidence": conf,
            "true_prob": p[idx, y[idx]]}


def most_confused_pairs(labels: ArrayLike, preds_or_probs: ArrayLike, k: int = 10,
                        class_names: Sequence[str] | None = None,
                        num_classes: int | None = None) -> list[dict[str, Any]]:
    """(true, pred) pairs with the most mistakes, sorted by count descending.

    Items: ``{"true", "pred", "true_name", "pred_name", "count"}`` (see
    :func:`digitlab.evaluate.metrics.top_confusions`).
    """
    cm = confusion_matrix(labels, preds_or_probs, num_classes=num_classes)
    return top_confusions(cm, k=k, class_names=class_names)


def confidence_right_wrong(probs: ArrayLike, labels: ArrayLike) -> dict[str, np.ndarray]:
    """Max-probability confidence split by correctness: ``{"correct": arr, "wrong": arr}``."""
    p, y = _probs_labels(probs, labels)
    conf = p.max(axis=1)
    ok = p.argmax(axis=1) == y
    return {"correct": conf[ok], "wrong": conf[~ok]}


def hardest_examples(probs: ArrayLike, labels: ArrayLike, k: int = 20) -> dict[str, np.ndarray]:
    """The ``k`` samples with the highest loss ``-log p(true)`` (right or wrong), hardest first.

    Returns ``{"index", "true", "pred", "loss", "true_prob", "confidence"}`` arrays.
    Probabilities are clipped at float64 eps so the loss stays finite.
    """
    p, y = _probs_labels(probs, labels)
    true_p = p[np.arange(y.size), y]
    loss = -np.log(np.clip(true_p, np.finfo(np.float64).eps, 1.0))
    k = min(int(k), y.size)
    idx = np.lexsort((np.arange(y.size), -loss))[:k]
    pred = p[idx].argmax(axis=1)
    return {"index": idx, "true": y[idx], "pred": pred, "loss": loss[idx], "true_prob": true_p[idx],
            "confidence": p[idx, pred]}


def error_summary(probs: ArrayLike, labels: ArrayLike, class_names: Sequence[str] | None = None,
                  k: int = 10) -> dict[str, Any]:
    """A JSON-able overview: error count/rate, mean confidence right vs wrong, top pairs, hardest."""
    p, y = _probs_labels(probs, labels)
    cr = confidence_right_wrong(p, y)
    hard = hardest_examples(p, y, k)
    return {
        "n": int(y.size),
        "errors": int(cr["wrong"].size),
        "error_rate": float(cr["wrong"].size / y.size) if y.size else 0.0,
        "mean_confidence_correct": float(cr["correct"].mean()) if cr["correct"].size else None,
        "mean_confidence_wrong": float(cr["wrong"].mean()) if cr["wrong"].size else None,
        "most_confused": most_confused_pairs(y, p, k=k, class_names=class_names,
                                             num_classes=p.shape[1]),
        "hardest": [{"index": int(i), "true": int(t), "pred": int(q), "loss": float(lo)}
                    for i, t, q, lo in zip(hard["index"], hard["true"], hard["pred"], hard["loss"],
                                           strict=True)],
    }
