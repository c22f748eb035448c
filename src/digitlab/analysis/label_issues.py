"""Label issues by confident learning (Northcutt, Jiang & Chuang, JAIR 2021), in numpy.

Input: out-of-sample predicted probabilities ``P`` (``n×K``) and the given labels ``s``.

1. **Per-class thresholds** ``t_j``: the mean self-confidence ``P[i, j]`` over the
   examples *given* label ``j``.
2. **Confident joint** ``C[s, y]``: example ``i`` is counted in row ``s_i`` and column
   ``y`` = its confident class — the class with ``P[i, y] ≥ t_y`` (the most probable
   one when several pass; not counted when none does). The diagonal is kept ≥ 1 and the
   matrix is calibrated so row ``s`` sums to the number of examples given label ``s``
   (rounded preserving row totals).
3. **Flagging** (``method``):
   ``prune_by_noise_rate`` (default, cleanlab's default): for each off-diagonal cell
   ``(s, y)`` flag the ``C[s, y]`` examples given ``s`` with the largest margin
   ``P[y] − P[s]``; ``confident_learning``: flag the examples counted off the diagonal.
   Either way an example whose given label is also the model's top prediction is never
   flagged.
4. **Ranking**: flagged examples sorted by a label-quality score, lowest first:
   ``self_confidence`` = ``P[i, s_i]``, or ``normalized_margin`` =
   ``(P[i, s_i] − max_{k≠s_i} P[i, k] + 1) / 2``. The suggested label is the top prediction.

Probabilities must be out-of-sample: the given model's on the test split; for the
training split, :func:`cross_fit_probabilities` trains one model per fold (K-fold
cross-fitting) and predicts the held-out fold.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from digitlab.errors import ConfigError

METHODS = ("prune_by_noise_rate", "confident_learning")
RANK_BY = ("self_confidence", "normalized_margin")
CROSS_FIT_RECIPE = "fast-cnn"
"""The shipped recipe trained on each fold for training-split probabilities (configs/fast-cnn.yaml)."""


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.ndim != 1 or probs.shape[0] != labels.shape[0]:
        raise ConfigError(f"need n labels and an n×K probability matrix, got {labels.shape} and {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ConfigError(f"labels must be in 0..{probs.shape[1] - 1}")
    return labels.astype(np.int64), probs


def confident_thresholds(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``t_j`` = mean of ``P[i, j]`` over examples given label ``j`` (2.0, never reached, for an absent class)."""
    labels, probs = _check(labels, probs)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.bincount(labels, weights=probs[np.arange(len(labels)), labels], minlength=k)
    return np.where(counts > 0, sums / np.maximum(counts, 1), 2.0)


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Each example's confident class: the most probable class among those at or above their
    threshold; -1 when none is."""
    above = probs >= thresholds[None, :] - 1e-6
    masked = np.where(above, probs, -np.inf)
    guess = masked.argmax(axis=1)
    return np.where(above.any(axis=1), guess, -1)


def round_preserving_row_totals(matrix: np.ndarray) -> np.ndarray:
    """Round each row to integers summing to the row's rounded total.

    Each entry is rounded (half to even), then the entries whose rounding moved them
    furthest the wrong way take the ±1 corrections (cleanlab's convention, so the two
    agree on ties).
    """
    out = np.round(matrix).astype(np.int64)
    for r in range(matrix.shape[0]):  # K rows, not examples
        diff = int(round(matrix[r].sum())) - int(out[r].sum())
        if diff:
            rem = matrix[r] - out[r]
            order = np.argsort(rem)[::-1][:diff] if diff > 0 else np.argsort(rem)[:-diff]
            out[r, order] += 1 if diff > 0 else -1
    return out


def confident_joint(labels: np.ndarray, probs: np.ndarray, thresholds: np.ndarray | None = None,
                    calibrate: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(``K×K`` confident joint, rows = given label, columns = confident class; per-example confident class)."""
    labels, probs = _check(labels, probs)
    k = probs.shape[1]
    t = confident_thresholds(labels, probs) if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    guess = confident_classes(probs, t)
    counted = guess >= 0
    cj = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj, (labels[counted], guess[counted]), 1)
    np.fill_diagonal(cj, np.maximum(cj.diagonal(), 1))
    if calibrate:
        given = np.bincount(labels, minlength=k).astype(np.float64)
        # same memory layout and operation order as cleanlab (its joint is a transposed view), so the
        # floating-point sums agree and entries at exactly .5 round alike
        cj = np.asfortranarray(cj)
        row = (cj.T / np.maximum(cj.sum(axis=1), 1e-12) * given).T
        row = row / max(float(np.sum(row)), 1e-12) * given.sum()
        cj = round_preserving_row_totals(row)
    return cj, guess


def label_quality(labels: np.ndarray, probs: np.ndarray, rank_by: str = "self_confidence") -> np.ndarray:
    """Per-example label quality in [0, 1]; low = the given label is likely wrong."""
    labels, probs = _check(labels, probs)
    idx = np.arange(len(labels))
    self_conf = probs[idx, labels]
    if rank_by == "self_confidence":
        return self_conf
    if rank_by == "normalized_margin":
        others = probs.copy()
        others[idx, labels] = -np.inf
        return (self_conf - others.max(axis=1) + 1) / 2
    raise ConfigError(f"unknown ranking {rank_by!r}; use {' or '.join(RANK_BY)}")


@dataclass
class LabelIssues:
    """Flagged examples of a confident-learning pass, most suspicious first."""

    indices: np.ndarray
    """Positions (in the arrays given) of the flagged examples, most suspicious first."""
    scores: np.ndarray
    """Their label-quality scores (ascending)."""
    suggested: np.ndarray
    """Their most probable class."""
    thresholds: np.ndarray
    confident_joint: np.ndarray
    method: str
    rank_by: str
    n: int
    """Number of examples examined."""

    @property
    def mask(self) -> np.ndarray:
        """Boolean flags over all ``n`` examples."""
        out = np.zeros(self.n, dtype=bool)
        out[self.indices] = True
        return out


def find_label_issues(labels: np.ndarray, probs: np.ndarray, method: str = "prune_by_noise_rate",
                      rank_by: str = "self_confidence") -> LabelIssues:
    """Flag and rank the examples whose given label is most likely wrong (see the module docstring)."""
    labels, probs = _check(labels, probs)
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; use {' or '.join(METHODS)}")
    n, k = probs.shape
    thresholds = confident_thresholds(labels, probs)
    cj, guess = confident_joint(labels, probs, thresholds)
    flagged = np.zeros(n, dtype=bool)
    if method == "confident_learning":
        flagged = (guess >= 0) & (guess != labels)
    else:
        for s in range(k):  # loops over class pairs; the examples are handled as arrays
            members = np.flatnonzero(labels == s)
            if members.size <= 1:
                continue
            for y in range(k):
                count = int(cj[s, y])
                if y == s or count <= 0:
                    continue
                margin = probs[members, y] - probs[members, s]
                order = np.argsort(-margin, kind="stable")[:count]
                flagged[members[order]] = True
    top = probs.argmax(axis=1)
    flagged &= top != labels
    idx = np.flatnonzero(flagged)
    scores = label_quality(labels, probs, rank_by)[idx]
    order = np.lexsort((idx, scores))  # by score, ties by index
    idx = idx[order]
    return LabelIssues(idx, scores[order], top[idx], thresholds, cj, method, rank_by, n)


# --------------------------------------------------------------------------- temperature

def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(P) / T)``: the probabilities of logits divided by ``T`` (T < 1 sharpens)."""
    from digitlab.numerics import softmax

    if not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    return softmax(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-300, None)) / temperature)


def fit_temperature(labels: np.ndarray, probs: np.ndarray, lo: float = 0.02, hi: float = 20.0) -> float:
    """The temperature minimising the mean negative log-likelihood of ``labels`` (golden-section on log T).

    Label smoothing caps a model's confidence (about 0.91 for the shipped model), which puts
    every per-class threshold at that cap and leaves confident learning nothing to count;
    one fitted scalar undoes it (and never changes a top prediction).
    """
    from digitlab.numerics import log_softmax

    labels, probs = _check(labels, probs)
    logp = np.log(np.clip(probs, 1e-300, None))
    idx = np.arange(len(labels))

    def nll(log_t: float) -> float:
        return float(-log_softmax(logp / math.exp(log_t))[idx, labels].mean())

    a, b = math.log(lo), math.log(hi)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp((a + b) / 2)


# --------------------------------------------------------------------------- probabilities

def fold_indices(labels: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """Stratified folds: each class's examples shuffled (seeded) and dealt round-robin into ``folds`` parts."""
    if folds < 2:
        raise ConfigError(f"--folds must be >= 2, got {folds}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(folds)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        for f in range(folds):
            parts[f].append(members[f::folds])
    return [np.sort(np.concatenate(p)) for p in parts]


def cross_fit_probabilities(images: torch.Tensor, labels: torch.Tensor, folds: int = 3, seed: int = 0,
                            recipe: str = CROSS_FIT_RECIPE, device: str = "auto",
                            progress: Callable[[str], None] | None = None,
                            overrides: dict[str, Any] | None = None) -> np.ndarray:
    """Out-of-sample probabilities ``n×K`` for a training set by K-fold cross-fitting.

    For each fold, a fresh model of ``recipe`` (a shipped config, ``fast-cnn`` by default:
    170 steps of batch 256) is trained on the other folds with the training engine and
    predicts the held-out fold. With few images the epochs are raised so every fold still
    gets the recipe's 170 steps. Costs ``folds`` short trainings. ``overrides`` replaces config
    fields (``{"max_steps": 20}`` for a quick run).
    """
    from digitlab.data import DataSplits, Split
    from digitlab.models import create_model
    from digitlab.models.forward import predict_logits
    from digitlab.numerics import softmax
    from digitlab.train.loop import Trainer
    from digitlab.train.recipes import load_config

    y = labels.cpu().numpy()
    n = len(y)
    k = int(y.max()) + 1 if n else 0
    parts = fold_indices(y, folds, seed)
    if min(len(p) for p in parts) == 0:
        raise ConfigError(f"too few images ({n}) for {folds} folds")
    base = load_config(recipe).override(val_fraction=0.0, tensorboard=False, device=device, **(overrides or {}))
    out = np.zeros((n, 0), dtype=np.float64)
    for f, held in enumerate(parts):
        t0 = time.perf_counter()
        train_idx = torch.from_numpy(np.setdiff1d(np.arange(n), held))
        held_idx = torch.from_numpy(held)
        steps = base.max_steps or math.ceil(len(train_idx) / base.batch_size) * base.epochs
        epochs = max(base.epochs, math.ceil(steps * base.batch_size / max(1, len(train_idx))))
        cfg = base.override(seed=seed + f, epochs=epochs)
        torch.manual_seed(cfg.seed)
        model = create_model(cfg.model, **cfg.model_kwargs)
        splits = DataSplits(Split(images[train_idx], labels[train_idx]), None,
                            Split(images[held_idx], labels[held_idx]))
        trainer = Trainer(model, splits, cfg)
        trainer.fit()
        logits = predict_logits(trainer.raw_model.eval(), images[held_idx]).numpy()
        probs = softmax(logits.astype(np.float64))
        if out.shape[1] == 0:
            out = np.zeros((n, max(k, probs.shape[1])), dtype=np.float64)
        out[held] = probs
        if progress:
            acc = float((probs.argmax(1) == y[held]).mean())
            progress(f"fold {f + 1}/{folds}: trained on {len(train_idx)}, held-out accuracy {100 * acc:.2f}% "
                     f"({time.perf_counter() - t0:.0f} s)")
    return out


def model_probabilities(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> np.ndarray:
    """Softmax probabilities ``n×K`` of a trained model (float64 numpy)."""
    from digitlab.models.forward import predict_logits
    from digitlab.numerics import softmax

    return softmax(predict_logits(model, images, batch_size).numpy().astype(np.float64))


# --------------------------------------------------------------------------- report

@dataclass
class LabelIssue:
    """One suspect, as printed and written to JSON."""

    index: int
    """Position in the split (the dataset's own order)."""
    label: int
    suggested: int
    score: float
    """Label quality (lower = more suspicious)."""
    name: str
    suggested_name: str


def issue_rows(issues: LabelIssues, labels: np.ndarray, class_names: Sequence[str],
               top: int | None = None) -> list[LabelIssue]:
    """The ``top`` most suspicious issues (all when ``top`` is None or 0) as rows."""
    count = len(issues.indices) if not top else min(top, len(issues.indices))
    rows = []
    for pos, score, sug in zip(issues.indices[:count], issues.scores[:count], issues.suggested[:count],
                               strict=True):
        lab = int(labels[pos])
        rows.append(LabelIssue(int(pos), lab, int(sug), float(score), str(class_names[lab]),
                               str(class_names[int(sug)])))
    return rows


def rows_as_dicts(rows: Sequence[LabelIssue]) -> list[dict]:
    return [asdict(r) for r in rows]


def suspects_png(images: torch.Tensor, rows: Sequence[LabelIssue], class_names: Sequence[str],
                 title: str = "Most likely label errors (given→suggested)",
                 notes: Sequence[str] | None = None) -> bytes:
    """Grid of the suspects titled ``given→suggested (quality %)`` with the index (or ``notes``) underneath."""
    from digitlab.analysis.plots import misclassified_grid_png

    return misclassified_grid_png(images, [r.label for r in rows], [r.suggested for r in rows],
                                  [r.score for r in rows], class_names=list(class_names), title=title,
                                  notes=list(notes) if notes is not None else [f"#{r.index}" for r in rows])


@dataclass
class RankedIssues:
    """Confident learning on one split's out-of-sample probabilities, ranked (see :func:`rank_issues`)."""

    found: LabelIssues
    rows: list[LabelIssue]
    """The ``top`` most suspicious, most suspicious first."""
    temperature: float
    """The temperature the logits were divided by (fitted or given)."""
    accuracy: float
    """Accuracy of the probabilities' top class against the given labels."""
    runners_up: list[LabelIssue] = field(default_factory=list)
    """With ``fill``: the next most suspicious images, not flagged by confident learning but whose given
    label the model rejects (its top class differs), up to ``top`` rows in all."""


def rank_issues(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], *,
                method: str = "prune_by_noise_rate", rank_by: str = "self_confidence",
                temperature: float | None = None, top: int | None = 25, fill: bool = False) -> RankedIssues:
    """The label issues of ``labels`` given out-of-sample ``probs`` (what ``digitlab label-issues`` prints).

    ``temperature`` None: fitted to the split by minimum log-loss (:func:`fit_temperature`), else
    used as given (1 = the probabilities as they are). ``top`` None or 0: every flagged image.
    ``fill``: when fewer than ``top`` are flagged (an accurate model flags few), also rank the images
    the model disagrees with that were not flagged, as ``runners_up``.
    """
    t = fit_temperature(labels, probs) if temperature is None else float(temperature)
    if t != 1.0:
        probs = apply_temperature(probs, t)
    found = find_label_issues(labels, probs, method=method, rank_by=rank_by)
    rows = issue_rows(found, labels, class_names, top=top or None)
    runners: list[LabelIssue] = []
    if fill and top and len(rows) < top:
        top_class = probs.argmax(1)
        quality = label_quality(labels, probs, rank_by)
        rest = np.flatnonzero((top_class != labels) & ~found.mask)
        rest = rest[np.lexsort((rest, quality[rest]))][: top - len(rows)]
        runners = [LabelIssue(int(i), int(labels[i]), int(top_class[i]), float(quality[i]),
                              str(class_names[int(labels[i])]), str(class_names[int(top_class[i])])) for i in rest]
    return RankedIssues(found, rows, t, float((probs.argmax(1) == labels).mean()), runners)


def stderr_progress(quiet: bool) -> Callable[[str], None] | None:
    if quiet:
        return None
    return lambda msg: print(f"label-issues: {msg}", file=sys.stderr, flush=True)
