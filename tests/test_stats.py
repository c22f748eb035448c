"""Statistics: McNemar against published values, bootstrap coverage, Friedman/Wilcoxon vs scipy."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats as sps

from digitlab.analysis import stats as St


def test_mcnemar_armitage_berry_example():
    # Armitage & Berry, "Statistical Methods in Medical Research" (3rd ed., 1994, p. 127), as
    # worked in the StatsDirect manual ("McNemar / exact matched pairs"): two culture media on
    # 50 sputum specimens; discordant pairs b = 12 (growth on A only), c = 2 (on B only).
    # Published: Yates-corrected chi² = 5.785714, P = 0.0162; exact (Liddell) two-sided P = 0.0129.
    corrected = St.mcnemar_from_counts(12, 2, exact=False)
    assert corrected["method"] == "chi2-corrected"
    assert corrected["statistic"] == pytest.approx(5.785714, abs=1e-6)
    assert corrected["statistic"] == pytest.approx((abs(12 - 2) - 1) ** 2 / 14)
    assert round(corrected["p_value"], 4) == 0.0162
    exact = St.mcnemar_from_counts(12, 2)  # b + c = 14 < 25 → exact by default
    assert exact["method"] == "exact-binomial" and exact["statistic"] == 2
    assert round(exact["p_value"], 4) == 0.0129
    # the exact p by hand: 2 · P(X ≤ 2), X ~ Bin(14, 1/2) = 2 · (1 + 14 + 91) / 2^14
    assert exact["p_value"] == pytest.approx(2 * (1 + 14 + 91) / 2**14)


def test_mcnemar_uncorrected_and_large_counts():
    # Chernick & Friis, "Introductory Biostatistics for the Health Sciences" (2003), §8.5:
    # smoking-cessation pairs with discordant counts 92 and 48 give W = 44²/140 = 13.83 (they
    # print 13.82), p slightly below 0.01 for their T = W/2; our statistic is W itself.
    res = St.mcnemar_from_counts(92, 48, correction=False)
    assert res["method"] == "chi2" and res["statistic"] == pytest.approx(44**2 / 140)
    assert res["p_value"] == pytest.approx(sps.chi2.sf(44**2 / 140, 1))
    auto = St.mcnemar_from_counts(92, 48)  # b + c ≥ 25 → corrected chi-square by default
    assert auto["method"] == "chi2-corrected" and auto["statistic"] == pytest.approx(43**2 / 140)
    # degenerate and symmetric cases
    assert St.mcnemar_from_counts(0, 0)["p_value"] == 1.0
    assert St.mcnemar_from_counts(30, 30)["p_value"] == 1.0
    assert St.mcnemar_from_counts(5, 5)["p_value"] == 1.0


def test_mcnemar_from_predictions_counts_discordant_pairs():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    a = np.array([0, 1, 2, 3, 4, 0, 0, 7])  # wrong on 5, 6
    b = np.array([0, 0, 0, 3, 4, 5, 0, 0])  # wrong on 1, 2, 6, 7
    res = St.mcnemar(labels, a, b)
    # A right & B wrong: samples 1, 2, 7 → b = 3; A wrong & B right: sample 5 → c = 1
    assert (res["b"], res["c"], res["n"]) == (3, 1, 8)
    assert res["accuracy_a"] == 6 / 8 and res["accuracy_b"] == 4 / 8
    assert res["p_value"] == pytest.approx(2 * (1 + 4) / 16)
    # scores work in place of predictions
    scores = np.eye(8)[a]
    assert St.mcnemar(labels, scores, b)["b"] == 3


def test_bootstrap_ci_covers_true_accuracy():
    rng = np.random.default_rng(2024)
    p_true, n, reps = 0.9, 500, 200
    hits, widths = 0, []
    for r in range(reps):
        correct = rng.random(n) < p_true
        ci = St.bootstrap_ci(correct, n_boot=1000, seed=r)
        hits += ci["low"] <= p_true <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    coverage = hits / reps
    assert 0.93 <= coverage <= 0.99, coverage
    # width ≈ 2 · 1.96 · sqrt(p(1-p)/n) ≈ 0.0526
    assert np.mean(widths) == pytest.approx(2 * 1.96 * math.sqrt(p_true * (1 - p_true) / n), rel=0.1)


def test_bootstrap_is_seeded_and_chunked_consistently():
    v = (np.arange(1000) % 7 == 0).astype(float)
    a = St.bootstrap_ci(v, seed=5)
    b = St.bootstrap_ci(v, seed=5)
    assert a == b and a["estimate"] == pytest.approx(v.mean())
    assert a["low"] < a["estimate"] < a["high"]
    # chunking changes memory use, not validity: the estimate and a similar width
    c = St.bootstrap_ci(v, seed=5, chunk_elements=5000)
    assert c["high"] - c["low"] == pytest.approx(a["high"] - a["low"], rel=0.15)
    acc = St.accuracy_ci([0, 1, 2, 3], [0, 1, 2, 0], n_boot=200)
    assert acc["estimate"] == 0.75 and acc["n"] == 4
    d = St.paired_bootstrap_ci(np.ones(50), np.zeros(50))
    assert d["low"] == d["high"] == 1.0


def test_bootstrap_by_counts_matches_resampling_indices():
    """The multinomial shortcut for few distinct values has the distribution of index resampling."""
    rng = np.random.default_rng(7)
    v = rng.choice([-1.0, 0.0, 1.0], size=400, p=[0.1, 0.8, 0.1])
    fast = St.bootstrap_ci(v, n_boot=20_000, seed=1)
    idx = np.random.default_rng(2).integers(0, v.size, size=(20_000, v.size))
    low, high = np.quantile(v[idx].mean(axis=1), [0.025, 0.975])
    assert fast["low"] == pytest.approx(low, abs=0.004) and fast["high"] == pytest.approx(high, abs=0.004)
    # many distinct values take the index-resampling path and agree with it as well
    w = rng.normal(size=400)
    slow = St.bootstrap_ci(w, n_boot=5000, seed=1)
    sd = w.std(ddof=0) / math.sqrt(w.size)
    assert slow["high"] - slow["low"] == pytest.approx(2 * 1.96 * sd, rel=0.08)


def test_mean_std_uses_sample_std():
    vals = [0.9911, 0.9932, 0.9903, 0.9951]
    ms = St.mean_std(vals)
    assert ms["mean"] == pytest.approx(statistics.mean(vals))
    assert ms["std"] == pytest.approx(statistics.stdev(vals))  # ddof = 1
    assert ms["n"] == 4 and ms["min"] == 0.9903 and ms["max"] == 0.9951
    assert St.mean_std([0.5])["std"] is None
    # mean 0.992425, sample std 0.0021624 (population std would be 0.0018727)
    assert St.format_mean_std(vals) == "99.24 ± 0.22"  # ddof=0 would print 0.19
    assert St.format_mean_std([0.5]) == "50.00"


def _designed_scores() -> dict[str, list[float]]:
    # 6 seeds × 4 models: "big" always best, "tiny" always worst, the middle two swap
    return {
        "tiny": [0.970, 0.972, 0.969, 0.971, 0.970, 0.968],
        "mid-a": [0.985, 0.982, 0.986, 0.981, 0.984, 0.983],
        "mid-b": [0.983, 0.984, 0.984, 0.983, 0.982, 0.985],
        "big": [0.992, 0.993, 0.991, 0.994, 0.992, 0.993],
    }


def test_friedman_matches_scipy_and_ranks():
    scores = _designed_scores()
    res = St.friedman(scores)
    ref = sps.friedmanchisquare(*scores.values())
    assert res["statistic"] == pytest.approx(ref.statistic)
    assert res["p_value"] == pytest.approx(ref.pvalue)
    assert res["k"] == 4 and res["n_blocks"] == 6
    ranks = res["mean_ranks"]
    assert ranks["big"] == 1.0 and ranks["tiny"] == 4.0
    assert ranks["mid-a"] + ranks["mid-b"] == pytest.approx(5.0)
    # hand formula (no ties): 12N/(k(k+1)) · (Σ R_j² − k(k+1)²/4)
    n, k = 6, 4
    r = np.array(list(ranks.values()))
    chi2 = 12 * n / (k * (k + 1)) * ((r**2).sum() - k * (k + 1) ** 2 / 4)
    assert res["statistic"] == pytest.approx(chi2)
    assert res["p_value"] < 0.01
    # matrix input with names gives the same result
    m = np.column_stack(list(scores.values()))
    assert St.friedman(m, names=list(scores))["statistic"] == pytest.approx(res["statistic"])
    with pytest.raises(ValueError):
        St.friedman({"a": [1, 2], "b": [2, 3]})


def test_holm_hand_computed():
    # sorted p: 0.01, 0.02, 0.03, 0.04 → ×4, ×3, ×2, ×1 = 0.04, 0.06, 0.06, 0.04
    # → made monotone: 0.04, 0.06, 0.06, 0.06
    adj = St.holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(adj, [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(St.holm([0.01, 0.9]), [0.02, 0.9])
    np.testing.assert_allclose(St.holm([0.5, 0.9]), [1.0, 1.0])  # capped at 1, kept monotone


def test_pairwise_wilcoxon_holm_matches_scipy():
    scores = _designed_scores()
    rows = St.pairwise_wilcoxon(scores)
    assert len(rows) == 6
    row = next(r for r in rows if r["a"] == "tiny" and r["b"] == "big")
    ref = sps.wilcoxon(scores["tiny"], scores["big"])
    assert row["p_value"] == pytest.approx(ref.pvalue) and row["statistic"] == pytest.approx(ref.statistic)
    assert row["mean_diff"] < 0
    np.testing.assert_allclose([r["p_holm"] for r in rows], St.holm([r["p_value"] for r in rows]))
    # 6 seeds: the smallest exact two-sided p is 2/64, Holm × 6 pushes it above 0.05
    assert row["p_value"] == pytest.approx(2 / 64) and not row["significant"]
    same = St.pairwise_wilcoxon({"a": [0.9, 0.91], "b": [0.9, 0.91]})
    assert same[0]["p_value"] == 1.0


def test_nemenyi_critical_difference():
    # Demšar (2006), JMLR 7:1–30, Table 5(a): q_0.05 = 2.343 (k=3), 2.569 (k=4), 2.850 (k=6), 3.164 (k=10)
    for k, q in ((3, 2.343), (4, 2.569), (6, 2.850), (10, 3.164)):
        cd = St.nemenyi_cd(k, 10)
        assert cd / math.sqrt(k * (k + 1) / 60) == pytest.approx(q, abs=2e-3)
    res = St.nemenyi(_designed_scores())
    assert res["cd"] == pytest.approx(St.nemenyi_cd(4, 6))
    pair = next(p for p in res["pairs"] if {p["a"], p["b"]} == {"tiny", "big"})
    assert pair["rank_diff"] == 3.0 and pair["significant"]  # CD for k=4, N=6 ≈ 1.91
    mids = next(p for p in res["pairs"] if {p["a"], p["b"]} == {"mid-a", "mid-b"})
    assert not mids["significant"]


def test_compare_models_bundle():
    out = St.compare_models(_designed_scores())
    assert set(out) == {"summary", "friedman", "wilcoxon_holm", "nemenyi"}
    assert out["summary"]["big"]["n"] == 6
    two = St.compare_models({"a": [0.9, 0.91, 0.92], "b": [0.8, 0.81, 0.82]})
    assert two["friedman"] is None and two["nemenyi"] is None and len(two["wilcoxon_holm"]) == 1
    one_seed = St.compare_models({"a": [0.9], "b": [0.8], "c": [0.7]})
    assert one_seed["wilcoxon_holm"] is None and one_seed["summary"]["a"]["std"] is None
