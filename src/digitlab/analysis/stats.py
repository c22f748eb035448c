"""Statistics for comparing models: bootstrap CIs, McNemar, mean ± std, Friedman + post-hoc.

Conventions: "scores" for multi-model tests are a matrix ``n_blocks × k_models``
(rows = seeds or folds, the blocks; columns = models) or a dict
``{model: [score per seed]}`` with equal-length lists paired by seed. Higher
scores are better (accuracy); rank 1 is the best model. Every function returns
plain Python numbers in dicts, ready for JSON.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

from digitlab.evaluate.metrics import ArrayLike, predictions, to_numpy

# ---------------------------------------------------------------- bootstrap


MULTINOMIAL_MAX_DISTINCT = 64
"""Samples with at most this many distinct values are bootstrapped through multinomial counts."""


def bootstrap_ci(values: ArrayLike, n_boot: int = 1000, confidence: float = 0.95, seed: int = 0,
                 chunk_elements: int = 20_000_000) -> dict[str, Any]:
    """Percentile bootstrap CI for the mean of per-sample ``values`` (e.g. 0/1 correctness).

    Resamples ``n`` values with replacement ``n_boot`` times: for a sample of few distinct values
    (:data:`MULTINOMIAL_MAX_DISTINCT`) as multinomial counts of each value, otherwise as one vectorised
    ``rng.integers`` draw of indices per chunk (chunks bound memory to ``chunk_elements`` indices).
    Returns ``{"estimate", "low", "high", "confidence", "n_boot", "n", "method": "percentile"}``.
    """
    v = to_numpy(values).astype(np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("bootstrap of an empty sample")
    if not 0 < confidence < 1:
        raise ValueError("confidence must be in (0, 1)")
    rng = np.random.default_rng(seed)
    distinct, counts = np.unique(v, return_counts=True)
    if distinct.size <= MULTINOMIAL_MAX_DISTINCT:
        # Resampling n values with replacement draws how often each distinct value occurs, a
        # multinomial: the same distribution of means, at O(n_boot · distinct) instead of O(n_boot · n)
        # (0/1 correctness, and paired differences in {-1, 0, 1}).
        drawn = rng.multinomial(n, counts / n, size=n_boot)
        means = drawn @ distinct / n
    else:
        rows = max(1, chunk_elements // n)
        means = np.empty(n_boot)
        for s in range(0, n_boot, rows):
            e = min(n_boot, s + rows)
            means[s:e] = v[rng.integers(0, n, size=(e - s, n))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return {"estimate": float(v.mean()), "low": float(low), "high": float(high),
            "confidence": confidence, "n_boot": int(n_boot), "n": int(n), "method": "percentile"}


def accuracy_ci(labels: ArrayLike, preds_or_scores: ArrayLike, n_boot: int = 1000,
                confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """:func:`bootstrap_ci` of accuracy (``preds_or_scores`` are class indices or ``N×K`` scores)."""
    correct = predictions(preds_or_scores) == to_numpy(labels).astype(np.int64)
    return bootstrap_ci(correct, n_boot=n_boot, confidence=confidence, seed=seed)


def paired_bootstrap_ci(values_a: ArrayLike, values_b: ArrayLike, n_boot: int = 1000,
                        confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Percentile CI of ``mean(a) - mean(b)`` resampling the *same* indices for both (paired data)."""
    a = to_numpy(values_a).astype(np.float64).ravel()
    b = to_numpy(values_b).astype(np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError("paired samples must have the same length")
    return bootstrap_ci(a - b, n_boot=n_boot, confidence=confidence, seed=seed)


# ---------------------------------------------------------------- McNemar

EXACT_BELOW = 25
"""Use the exact binomial test when b + c is below this (a common rule of thumb)."""


def mcnemar_from_counts(b: int, c: int, exact: bool | None = None, correction: bool = True
                        ) -> dict[str, Any]:
    """McNemar's test from the discordant counts ``b`` (A right, B wrong) and ``c`` (A wrong, B right).

    * exact (default when ``b + c < 25``): two-sided binomial test of
      ``min(b, c)`` successes in ``b + c`` trials with p = 1/2,
      ``p = min(1, 2 · BinomCDF(min(b, c); b + c, 1/2))``; statistic = ``min(b, c)``;
    * otherwise chi-square with 1 degree of freedom,
      ``(|b − c| − 1)² / (b + c)`` with continuity correction (Edwards 1948;
      floored at 0 when b = c) or ``(b − c)² / (b + c)`` without.

    Returns ``{"b", "c", "statistic", "p_value", "method"}`` with method
    ``"exact-binomial"``, ``"chi2-corrected"`` or ``"chi2"``.
    """
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError("counts must be non-negative")
    n = b + c
    if exact is None:
        exact = n < EXACT_BELOW
    if exact:
        stat = float(min(b, c))
        p = 1.0 if n == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(b, c), n, 0.5)))
        method = "exact-binomial"
    else:
        if n == 0:
            stat, p = 0.0, 1.0
        else:
            diff = max(abs(b - c) - 1, 0) if correction else abs(b - c)
            stat = diff**2 / n
            p = float(sps.chi2.sf(stat, 1))
        method = "chi2-corrected" if correction else "chi2"
    return {"b": b, "c": c, "statistic": float(stat), "p_value": float(p), "method": method}


def mcnemar(labels: ArrayLike, preds_a: ArrayLike, preds_b: ArrayLike, exact: bool | None = None,
            correction: bool = True) -> dict[str, Any]:
    """McNemar's test comparing two models' predictions (indices or ``N×K`` scores) on the same labels.

    Adds ``"n"`` and ``"accuracy_a"``, ``"accuracy_b"`` to :func:`mcnemar_from_counts`.
    """
    y = to_numpy(labels).astype(np.int64).ravel()
    ra = predictions(preds_a) == y
    rb = predictions(preds_b) == y
    if ra.shape != rb.shape:
        raise ValueError("both models must be evaluated on the same samples")
    out = mcnemar_from_counts(int(np.sum(ra & ~rb)), int(np.sum(~ra & rb)), exact, correction)
    out.update(n=int(y.size), accuracy_a=float(ra.mean()), accuracy_b=float(rb.mean()))
    return out


# ---------------------------------------------------------------- seeds


def mean_std(values: Sequence[float] | ArrayLike) -> dict[str, Any]:
    """``{"mean", "std", "n", "min", "max"}`` with the *sample* std (ddof=1); std None when n < 2."""
    v = to_numpy(values).astype(np.float64).ravel()
    if v.size == 0:
        raise ValueError("mean of no values")
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else None,
            "n": int(v.size), "min": float(v.min()), "max": float(v.max())}


def format_mean_std(values: Sequence[float] | ArrayLike, scale: float = 100.0, digits: int = 2,
                    unit: str = "") -> str:
    """``"99.12 ± 0.05"`` (values × ``scale``); a single value prints without ``±``."""
    ms = mean_std(values)
    text = f"{ms['mean'] * scale:.{digits}f}"
    if ms["std"] is not None:
        text += f" ± {ms['std'] * scale:.{digits}f}"
    return text + unit


# ---------------------------------------------------------------- multi-model


def _score_matrix(scores: Mapping[str, Sequence[float]] | ArrayLike, names: Sequence[str] | None
                  ) -> tuple[np.ndarray, list[str]]:
    if isinstance(scores, Mapping):
        keys = list(scores)
        lengths = {len(scores[k]) for k in keys}
        if len(lengths) != 1:
            raise ValueError("every model needs one score per seed (paired); lengths differ")
        m = np.column_stack([np.asarray(scores[k], dtype=np.float64) for k in keys])
        return m, [str(k) for k in keys]
    m = to_numpy(scores).astype(np.float64)
    if m.ndim != 2:
        raise ValueError("scores must be a 2-D matrix n_blocks × k_models")
    if names is None:
        names = [f"model{i}" for i in range(m.shape[1])]
    if len(names) != m.shape[1]:
        raise ValueError(f"{len(names)} names for {m.shape[1]} models")
    return m, [str(n) for n in names]


def mean_ranks(scores: Mapping[str, Sequence[float]] | ArrayLike,
               names: Sequence[str] | None = None) -> dict[str, float]:
    """Average rank of each model over blocks (1 = best, ties share the mean rank)."""
    m, names = _score_matrix(scores, names)
    ranks = sps.rankdata(-m, axis=1)
    return {n: float(r) for n, r in zip(names, ranks.mean(axis=0), strict=True)}


def friedman(scores: Mapping[str, Sequence[float]] | ArrayLike, names: Sequence[str] | None = None
             ) -> dict[str, Any]:
    """Friedman test that all ``k >= 3`` models perform alike (``scipy.stats.friedmanchisquare``).

    Returns ``{"statistic", "p_value", "k", "n_blocks", "mean_ranks": {name: rank}}``.
    Raises ValueError for fewer than 3 models or 2 blocks (use Wilcoxon / McNemar instead).
    """
    m, names = _score_matrix(scores, names)
    n, k = m.shape
    if k < 3:
        raise ValueError("the Friedman test needs at least 3 models")
    if n < 2:
        raise ValueError("the Friedman test needs at least 2 blocks (seeds)")
    res = sps.friedmanchisquare(*m.T)
    return {"statistic": float(res.statistic), "p_value": float(res.pvalue), "k": int(k),
            "n_blocks": int(n), "mean_ranks": mean_ranks(m, names)}


def holm(p_values: Sequence[float] | ArrayLike) -> np.ndarray:
    """Holm–Bonferroni step-down adjusted p-values (same order as the input)."""
    p = to_numpy(p_values).astype(np.float64).ravel()
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def pairwise_wilcoxon(scores: Mapping[str, Sequence[float]] | ArrayLike,
                      names: Sequence[str] | None = None, alpha: float = 0.05) -> list[dict[str, Any]]:
    """Wilcoxon signed-rank test for every model pair over the blocks, Holm-corrected.

    Items ``{"a", "b", "mean_diff" (a − b), "statistic", "p_value", "p_holm",
    "significant"}``. Pairs whose differences are all zero get p = 1. Note: with
    n blocks the smallest possible exact two-sided p is 2 / 2**n (0.25 for 3 seeds,
    0.0625 for 5), so a handful of seeds can never reach p < 0.05.
    """
    m, names = _score_matrix(scores, names)
    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            d = m[:, i] - m[:, j]
            if np.all(d == 0):
                stat, p = 0.0, 1.0
            else:
                res = sps.wilcoxon(m[:, i], m[:, j])
                stat, p = float(res.statistic), float(res.pvalue)
            rows.append({"a": names[i], "b": names[j], "mean_diff": float(d.mean()),
                         "statistic": stat, "p_value": p})
    if rows:
        for row, ph in zip(rows, holm([r["p_value"] for r in rows]), strict=True):
            row["p_holm"] = float(ph)
            row["significant"] = bool(ph < alpha)
    return rows


def nemenyi_cd(k: int, n_blocks: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks (Demšar 2006, JMLR 7, eq. in §3.2.2).

    ``CD = q_α · sqrt(k(k+1) / (6N))`` with ``q_α`` the studentized range quantile
    ``studentized_range.ppf(1 − α, k, ∞) / √2`` (Demšar's Table 5: 2.343 for k=3, 2.569 for k=4).
    """
    if k < 2 or n_blocks < 1:
        raise ValueError("need k >= 2 models and at least one block")
    q = float(sps.studentized_range.ppf(1 - alpha, k, np.inf)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n_blocks))


def nemenyi(scores: Mapping[str, Sequence[float]] | ArrayLike, names: Sequence[str] | None = None,
            alpha: float = 0.05) -> dict[str, Any]:
    """Nemenyi post-hoc test: model pairs whose mean ranks differ by more than the CD.

    Returns ``{"cd", "alpha", "mean_ranks", "pairs": [{"a", "b", "rank_diff", "significant"}]}``.
    """
    m, names = _score_matrix(scores, names)
    ranks = mean_ranks(m, names)
    cd = nemenyi_cd(len(names), m.shape[0], alpha)
    pairs = [{"a": a, "b": b, "rank_diff": abs(ranks[a] - ranks[b]),
              "significant": bool(abs(ranks[a] - ranks[b]) > cd)}
             for i, a in enumerate(names) for b in names[i + 1:]]
    return {"cd": cd, "alpha": alpha, "mean_ranks": ranks, "pairs": pairs}


def compare_models(scores: Mapping[str, Sequence[float]] | ArrayLike, names: Sequence[str] | None = None,
                   alpha: float = 0.05) -> dict[str, Any]:
    """Everything a seeds × models table supports, in one dict.

    ``{"summary": {name: mean_std}, "friedman": ... or None (k < 3 or one seed),
    "wilcoxon_holm": [...] or None (one seed), "nemenyi": ... or None (k < 3 or one seed)}``.
    """
    m, names = _score_matrix(scores, names)
    out: dict[str, Any] = {"summary": {n: mean_std(m[:, i]) for i, n in enumerate(names)},
                           "friedman": None, "wilcoxon_holm": None, "nemenyi": None}
    if m.shape[0] >= 2:
        out["wilcoxon_holm"] = pairwise_wilcoxon(m, names, alpha)
        if m.shape[1] >= 3:
            out["friedman"] = friedman(m, names)
            out["nemenyi"] = nemenyi(m, names, alpha)
    return out
