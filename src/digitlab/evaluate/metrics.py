"""Classification metrics as pure functions of scores and labels.

Every function takes numpy arrays or torch tensors (any device) and returns
plain Python floats / numpy arrays. ``scores`` means an ``N×K`` array of logits
or probabilities (only its argmax / ordering matters unless stated), and
``labels`` an ``N`` array of integer class indices. Results agree with
scikit-learn (``zero_division=0`` semantics: a ratio with an empty denominator is
0), which the tests check; the implementations are vectorised numpy, not sklearn
calls, so they work without fitting anything and on any array type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from digitlab import numerics

ArrayLike = np.ndarray | torch.Tensor | Sequence


def to_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view/copy of ``x`` (torch tensors are detached and moved to CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _labels(labels: ArrayLike) -> np.ndarray:
    y = to_numpy(labels)
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    return y.astype(np.int64, copy=False)


def _scores(scores: ArrayLike) -> np.ndarray:
    s = to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be N×K, got shape {s.shape}")
    return s


def predictions(scores_or_preds: ArrayLike) -> np.ndarray:
    """Predicted classes: argmax of an ``N×K`` score array, or a 1-D array returned as is."""
    a = to_numpy(scores_or_preds)
    if a.ndim == 2:
        return a.argmax(axis=1).astype(np.int64)
    return _labels(a)


def log_softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise log-softmax in float64 (see :func:`digitlab.numerics.log_softmax`)."""
    return numerics.log_softmax(_scores(logits))


def softmax(logits: ArrayLike) -> np.ndarray:
    """Row-wise softmax probabilities in float64 (see :func:`digitlab.numerics.softmax`)."""
    return numerics.softmax(_scores(logits))


def _num_classes(*arrays: np.ndarray, num_classes: int | None) -> int:
    if num_classes is not None:
        return int(num_classes)
    return int(max((int(a.max()) + 1 if a.size else 0) for a in arrays))


def accuracy(scores_or_preds: ArrayLike, labels: ArrayLike) -> float:
    """Fraction of samples whose prediction (argmax if 2-D) equals the label."""
    y = _labels(labels)
    if y.size == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((predictions(scores_or_preds) == y).mean())


def cross_entropy(logits: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log-likelihood computed from *logits* via log-softmax (no overflow)."""
    y = _labels(labels)
    lp = log_softmax(logits)
    return float(-lp[np.arange(y.size), y].mean())


def log_loss(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean negative log of the true class's *probability*, as ``sklearn.metrics.log_loss``.

    Probabilities are clipped to ``[eps, 1-eps]`` with ``eps`` the machine epsilon
    of their dtype (sklearn's rule), so a confident mistake costs a large but
    finite amount instead of infinity.
    """
    p = _scores(probs)
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    y = _labels(labels)
    eps = np.finfo(p.dtype).eps
    true_p = np.clip(p[np.arange(y.size), y], eps, 1 - eps)
    return float(-np.log(true_p.astype(np.float64)).mean())


def top_k_accuracy(scores: ArrayLike, labels: ArrayLike, k: int = 5) -> float:
    """Fraction of samples whose label is among the ``k`` highest scores.

    Ties are broken like ``sklearn.metrics.top_k_accuracy_score`` (stable sort,
    reversed: among equal scores the higher class index ranks first).
    """
    s = _scores(scores)
    y = _labels(labels)
    if k >= s.shape[1]:
        return 1.0
    top = np.argsort(s, axis=1, kind="stable")[:, ::-1][:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def confusion_matrix(labels: ArrayLike, preds: ArrayLike, num_classes: int | None = None,
                     normalize: str | None = None) -> np.ndarray:
    """``K×K`` matrix, rows = true class, columns = predicted class.

    ``preds`` may be class indices or an ``N×K`` score array. ``normalize="true"``
    divides each row by its total (rows with no samples stay 0, as in sklearn);
    ``None`` returns integer counts.
    """
    y = _labels(labels)
    p = predictions(preds)
    k = _num_classes(y, p, num_classes=num_classes)
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    if normalize is None:
        return cm.astype(np.int64)
    if normalize != "true":
        raise ValueError(f"normalize must be None or 'true', got {normalize!r}")
    rows = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, rows, out=np.zeros((k, k), dtype=np.float64), where=rows > 0)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def precision_recall_f1(labels: ArrayLike, preds: ArrayLike, num_classes: int | None = None
                        ) -> dict[str, np.ndarray]:
    """Per-class arrays ``precision``, ``recall``, ``f1`` (float) and ``support`` (int).

    Same definitions as ``sklearn.metrics.precision_recall_fscore_support(...,
    average=None, zero_division=0)``: a class never predicted has precision 0, a
    class absent from the labels has recall 0, and F1 is 0 when P + R = 0.
    """
    cm = confusion_matrix(labels, preds, num_classes=num_classes)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support.astype(np.float64))
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def averages(prf: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Macro (unweighted mean over classes) and support-weighted averages.

    Returns ``{"macro": {precision, recall, f1, support}, "weighted": {...}}``;
    macro F1 is the mean of per-class F1 (sklearn's definition), not the F1 of the
    mean precision and recall. A weighted average with zero total support is 0.
    """
    support = prf["support"].astype(np.float64)
    total = float(support.sum())
    out: dict[str, dict[str, float]] = {"macro": {}, "weighted": {}}
    for key in ("precision", "recall", "f1"):
        out["macro"][key] = float(prf[key].mean())
        out["weighted"][key] = float((prf[key] * support).sum() / total) if total > 0 else 0.0
    out["macro"]["support"] = out["weighted"]["support"] = int(total)
    return out


def class_names_for(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    """``class_names`` as a list, or ``"0".."K-1"`` when not given."""
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return [str(c) for c in class_names]


def per_class_table(labels: ArrayLike, preds: ArrayLike, num_classes: int | None = None,
                    class_names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One dict per class: ``{"class", "index", "precision", "recall", "f1", "support"}``."""
    prf = precision_recall_f1(labels, preds, num_classes=num_classes)
    names = class_names_for(len(prf["support"]), class_names)
    return [{"class": names[i], "index": i, "precision": float(prf["precision"][i]),
             "recall": float(prf["recall"][i]), "f1": float(prf["f1"][i]),
             "support": int(prf["support"][i])} for i in range(len(names))]


def classification_report(labels: ArrayLike, preds: ArrayLike, num_classes: int | None = None,
                          class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The dict ``sklearn.metrics.classification_report(..., output_dict=True)`` returns.

    Keys: each class name → ``{"precision", "recall", "f1-score", "support"}``,
    then ``"accuracy"`` (float), ``"macro avg"`` and ``"weighted avg"`` (same
    four keys). Render it with :func:`format_classification_report`.
    """
    y = _labels(labels)
    prf = precision_recall_f1(y, preds, num_classes=num_classes)
    names = class_names_for(len(prf["support"]), class_names)
    report: dict[str, Any] = {}
    for i, name in enumerate(names):
        report[name] = {"precision": float(prf["precision"][i]), "recall": float(prf["recall"][i]),
                        "f1-score": float(prf["f1"][i]), "support": float(prf["support"][i])}
    report["accuracy"] = accuracy(preds, y)
    avg = averages(prf)
    for key, name in (("macro", "macro avg"), ("weighted", "weighted avg")):
        report[name] = {"precision": avg[key]["precision"], "recall": avg[key]["recall"],
                        "f1-score": avg[key]["f1"], "support": float(avg[key]["support"])}
    return report


def format_classification_report(report: dict[str, Any], digits: int = 4) -> str:
    """Text table laid out exactly like sklearn's ``classification_report`` string."""
    headers = ["precision", "recall", "f1-score", "support"]
    class_rows = [k for k in report if k not in ("accuracy", "macro avg", "weighted avg")]
    width = max(max((len(c) for c in class_rows), default=0), len("weighted avg"), digits)
    head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    text = head_fmt.format("", *headers, width=width) + "\n\n"
    for name in class_rows:
        r = report[name]
        text += row_fmt.format(name, r["precision"], r["recall"], r["f1-score"], int(r["support"]),
                               width=width, digits=digits)
    text += "\n"
    total = int(report["macro avg"]["support"])
    text += ("{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n").format(
        "accuracy", "", "", report["accuracy"], total, width=width, digits=digits)
    for name in ("macro avg", "weighted avg"):
        r = report[name]
        text += row_fmt.format(name, r["precision"], r["recall"], r["f1-score"], int(r["support"]),
                               width=width, digits=digits)
    return text


def top_confusions(cm: ArrayLike, k: int = 10, class_names: Sequence[str] | None = None
                   ) -> list[dict[str, Any]]:
    """The ``k`` largest off-diagonal cells of a count confusion matrix, largest first.

    Each item is ``{"true", "pred", "true_name", "pred_name", "count"}``; cells
    with count 0 are left out. Ties are ordered by (true, pred) for stable output.
    """
    m = np.asarray(to_numpy(cm)).copy()
    n = m.shape[0]
    names = class_names_for(n, class_names)
    np.fill_diagonal(m, 0)
    flat = m.ravel()
    order = np.lexsort((np.arange(flat.size), -flat))  # count desc, then index asc
    out = []
    for idx in order[:k]:
        if flat[idx] <= 0:
            break
        t, p = divmod(int(idx), n)
        out.append({"true": t, "pred": p, "true_name": names[t], "pred_name": names[p],
                    "count": int(flat[idx])})
    return out
