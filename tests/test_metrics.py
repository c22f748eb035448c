"""Metrics, calibration and speed: cross-checked against scikit-learn and hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from digitlab.evaluate import calibration as C
from digitlab.evaluate import metrics as M
from digitlab.evaluate import speed as S

K = 10


@pytest.fixture(scope="module")
def random_case():
    """Random 10-class scores where class 7 is never predicted and class 3 never occurs as a label."""
    rng = np.random.default_rng(123)
    n = 600
    logits = rng.normal(0, 2.0, size=(n, K))
    logits[:, 7] = -8.0  # never the argmax (but p ≫ eps, so log-loss needs no clipping)
    labels = rng.integers(0, K, size=n)
    labels[labels == 3] = 4  # class 3 absent from the labels (but still predicted)
    # make the predictions better than chance so the numbers are not degenerate
    boost = rng.random(n) < 0.5
    logits[boost, labels[boost]] += 4.0
    logits[:, 7] = -8.0
    probs = M.softmax(logits)
    return logits, probs, labels


def test_random_case_is_as_designed(random_case):
    logits, _, labels = random_case
    preds = logits.argmax(1)
    assert 7 not in preds and 7 in labels
    assert 3 not in labels and 3 in preds


def test_accuracy_matches_sklearn(random_case):
    logits, probs, labels = random_case
    expected = skm.accuracy_score(labels, logits.argmax(1))
    assert M.accuracy(logits, labels) == pytest.approx(expected)
    assert M.accuracy(probs, labels) == pytest.approx(expected)
    assert M.accuracy(logits.argmax(1), labels) == pytest.approx(expected)
    assert M.accuracy(torch.from_numpy(logits), torch.from_numpy(labels)) == pytest.approx(expected)


def test_precision_recall_f1_matches_sklearn_zero_division(random_case):
    logits, _, labels = random_case
    preds = logits.argmax(1)
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=list(range(K)),
                                                     average=None, zero_division=0)
    prf = M.precision_recall_f1(labels, preds, num_classes=K)
    np.testing.assert_allclose(prf["precision"], p)
    np.testing.assert_allclose(prf["recall"], r)
    np.testing.assert_allclose(prf["f1"], f)
    np.testing.assert_array_equal(prf["support"], s)
    assert prf["precision"][7] == 0 and prf["recall"][3] == 0  # the zero-division cases
    avg = M.averages(prf)
    for average in ("macro", "weighted"):
        ep, er, ef, _ = skm.precision_recall_fscore_support(labels, preds, labels=list(range(K)),
                                                            average=average, zero_division=0)
        assert avg[average]["precision"] == pytest.approx(ep)
        assert avg[average]["recall"] == pytest.approx(er)
        assert avg[average]["f1"] == pytest.approx(ef)
        assert avg[average]["support"] == len(labels)


def test_confusion_matrix_matches_sklearn(random_case):
    logits, _, labels = random_case
    preds = logits.argmax(1)
    np.testing.assert_array_equal(M.confusion_matrix(labels, preds, K),
                                  skm.confusion_matrix(labels, preds, labels=list(range(K))))
    # scores are accepted in place of predictions
    np.testing.assert_array_equal(M.confusion_matrix(labels, logits, K),
                                  skm.confusion_matrix(labels, preds, labels=list(range(K))))
    norm = M.confusion_matrix(labels, preds, K, normalize="true")
    np.testing.assert_allclose(norm, skm.confusion_matrix(labels, preds, labels=list(range(K)),
                                                          normalize="true"))
    assert np.all(norm[3] == 0)  # absent class: zero row, not NaN


def test_log_loss_and_cross_entropy_match_sklearn(random_case):
    logits, probs, labels = random_case
    expected = skm.log_loss(labels, probs, labels=list(range(K)))
    assert M.log_loss(probs, labels) == pytest.approx(expected, rel=1e-9)
    assert M.cross_entropy(logits, labels) == pytest.approx(expected, rel=1e-6)
    # against torch's own implementation too
    ce = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(labels))
    assert M.cross_entropy(logits, labels) == pytest.approx(ce.item(), rel=1e-9)


@pytest.mark.parametrize("k", [3, 5])
def test_top_k_matches_sklearn(random_case, k):
    logits, _, labels = random_case
    expected = skm.top_k_accuracy_score(labels, logits, k=k, labels=list(range(K)))
    assert M.top_k_accuracy(logits, labels, k) == pytest.approx(expected)
    assert M.top_k_accuracy(logits, labels, k) > M.accuracy(logits, labels)


def test_classification_report_matches_sklearn(random_case):
    logits, _, labels = random_case
    preds = logits.argmax(1)
    names = [f"digit{i}" for i in range(K)]
    ours = M.classification_report(labels, preds, K, class_names=names)
    ref = skm.classification_report(labels, preds, labels=list(range(K)), target_names=names,
                                    output_dict=True, zero_division=0)
    assert set(ours) == set(ref)
    assert ours["accuracy"] == pytest.approx(ref["accuracy"])
    for key in names + ["macro avg", "weighted avg"]:
        for field in ("precision", "recall", "f1-score", "support"):
            assert ours[key][field] == pytest.approx(ref[key][field]), (key, field)
    text = skm.classification_report(labels, preds, labels=list(range(K)), target_names=names,
                                     digits=4, zero_division=0)
    assert M.format_classification_report(ours, digits=4) == text


def test_hand_computed_tiny_case():
    labels = [0, 0, 1, 1, 2]
    preds = [0, 1, 1, 1, 0]
    # true\pred: 0 -> {0, 1}; 1 -> {1, 1}; 2 -> {0}
    cm = M.confusion_matrix(labels, preds, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    prf = M.precision_recall_f1(labels, preds, 3)
    np.testing.assert_allclose(prf["precision"], [1 / 2, 2 / 3, 0.0])
    np.testing.assert_allclose(prf["recall"], [1 / 2, 1.0, 0.0])
    np.testing.assert_allclose(prf["f1"], [0.5, 0.8, 0.0])
    avg = M.averages(prf)
    assert avg["macro"]["f1"] == pytest.approx(1.3 / 3)
    assert avg["weighted"]["f1"] == pytest.approx((2 * 0.5 + 2 * 0.8 + 0) / 5)
    assert M.accuracy(np.array(preds), labels) == pytest.approx(0.6)
    table = M.per_class_table(labels, preds, 3, class_names=["a", "b", "c"])
    assert table[1] == {"class": "b", "index": 1, "precision": pytest.approx(2 / 3), "recall": 1.0,
                        "f1": pytest.approx(0.8), "support": 2}
    # cross-entropy: p(true) = 3/4 for logits [0, ln 3]
    assert M.cross_entropy([[0.0, math.log(3)]], [1]) == pytest.approx(-math.log(0.75))
    # top-k: sample 0's label is 2nd best, sample 1's label is last
    scores = [[0.1, 0.5, 0.4], [0.6, 0.3, 0.1]]
    assert M.top_k_accuracy(scores, [2, 2], 1) == 0.0
    assert M.top_k_accuracy(scores, [2, 2], 2) == 0.5
    assert M.top_k_accuracy(scores, [2, 2], 3) == 1.0
    conf = M.top_confusions(cm, 5, class_names=["a", "b", "c"])
    assert [(c["true"], c["pred"], c["count"]) for c in conf] == [(0, 1, 1), (2, 0, 1)]
    assert conf[1]["true_name"] == "c" and conf[1]["pred_name"] == "a"


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert M.cross_entropy(logits, [1, 0]) == pytest.approx((1000.0 + 0.0) / 2)
    assert np.isfinite(M.log_softmax(logits)).all()
    # log-loss from a saturated probability stays finite thanks to eps clipping, like sklearn
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert M.log_loss(probs, [1, 0]) == pytest.approx(skm.log_loss([1, 0], probs, labels=[0, 1]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        M.cross_entropy(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError):
        M.accuracy(np.zeros((0, 3)), [])
    with pytest.raises(ValueError):
        M.per_class_table([0, 1], [0, 1], 2, class_names=["only-one"])


# ---------------------------------------------------------------- calibration


def _binary_probs(conf: np.ndarray) -> np.ndarray:
    return np.stack([conf, 1 - conf], axis=1)


def test_ece_perfectly_calibrated_is_near_zero():
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    labels = np.where(rng.random(n) < conf, 0, 1)  # class 0 (the argmax) is right with prob = conf
    ece = C.expected_calibration_error(_binary_probs(conf), labels)
    assert ece < 0.01
    # the same probabilities with correctness 0.2 lower everywhere are overconfident by ~0.2
    labels_over = np.where(rng.random(n) < conf - 0.2, 0, 1)
    assert C.expected_calibration_error(_binary_probs(conf), labels_over) == pytest.approx(0.2, abs=0.01)


def test_ece_overconfident_hand_computed():
    # 4 samples at confidence 0.9 with 2 right; 4 at confidence 0.6 with 3 right
    conf = np.array([0.9] * 4 + [0.6] * 4)
    labels = np.array([0, 0, 1, 1, 0, 0, 0, 1])
    probs = _binary_probs(conf)
    # ECE = 4/8·|0.5 − 0.9| + 4/8·|0.75 − 0.6| = 0.2 + 0.075
    assert C.expected_calibration_error(probs, labels) == pytest.approx(0.275)
    rel = C.reliability_diagram(probs, labels)
    assert rel["n_bins"] == 15 and len(rel["count"]) == 15 and sum(rel["count"]) == 8
    filled = [i for i, c in enumerate(rel["count"]) if c]
    assert len(filled) == 2
    assert [rel["accuracy"][i] for i in filled] == [0.75, 0.5]
    assert [rel["confidence"][i] for i in filled] == pytest.approx([0.6, 0.9])
    assert rel["ece"] == pytest.approx(0.275) and rel["mce"] == pytest.approx(0.4)
    assert all(rel["confidence"][i] is None for i in range(15) if i not in filled)
    # 0.9 lies in (13/15, 14/15]
    assert rel["bin_lower"][filled[1]] < 0.9 <= rel["bin_upper"][filled[1]]


# ---------------------------------------------------------------- speed


@pytest.fixture(scope="module")
def small_model():
    from digitlab.models import create_model

    torch.manual_seed(0)
    return create_model("cnn-simple").eval()


def test_latency_and_throughput(small_model):
    images = torch.randint(0, 256, (64, 28, 28), dtype=torch.uint8)
    lat = S.latency(small_model, images[0], repeats=5, warmup=1)
    assert set(lat) == {"p50_ms", "p95_ms", "mean_ms", "min_ms", "repeats"}
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p95_ms"] and lat["repeats"] == 5
    thr = S.throughput(small_model, images, batch_size=32, repeats=2)
    assert thr["batch_size"] == 32 and thr["images_per_s"] > 0
    assert thr["images_per_s"] == pytest.approx(32 / thr["seconds_per_batch"])
    prof = S.speed_profile(small_model, images, repeats=3, warmup=1, batch_size=32, throughput_repeats=1)
    assert prof.latency_ms_p50 > 0 and prof.throughput_per_s > 0 and prof.device == "cpu"
    assert prof.latency_ms_low <= prof.latency_ms_p50 <= prof.latency_ms_high and prof.latency_repeats == 3
    assert S.predict_seconds(small_model, images, batch_size=16) > 0
    with pytest.raises(ValueError):
        S.latency(small_model, images[0], repeats=0)


def test_speed_is_measured_in_interleaved_rounds(small_model, monkeypatch):
    """Every round times every model in turn, so a burst of load hits all of them."""
    images = torch.randint(0, 256, (16, 28, 28), dtype=torch.uint8)
    order = []
    real = S._timed_calls

    def spy(model, x, repeats, warmup):
        order.append((id(model), x.shape[0]))
        return real(model, x, repeats, warmup)

    monkeypatch.setattr(S, "_timed_calls", spy)
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()
    profiles = S.measure_speed({"a": small_model, "b": other}, images, repeats=6, rounds=3, warmup=1, batch_size=8)
    assert set(profiles) == {"a", "b"} and profiles["a"].rounds == 3 and profiles["a"].latency_repeats == 6
    timed = [mid for mid, n in order[4:] if n == 1]  # after the warm-up calls: batch-1 timings per round
    assert timed == [id(small_model), id(other)] * 3
    for p in profiles.values():
        assert p.latency_ms_low <= p.latency_ms_p50 <= p.latency_ms_high
        assert p.throughput_low <= p.throughput_per_s <= p.throughput_high and p.throughput_batch_size == 8


def test_parameter_count_and_checkpoint_bytes(small_model, tmp_path):
    from digitlab.checkpoint import build_meta, save_run_checkpoint

    expected = sum(p.numel() for p in small_model.parameters())
    assert S.parameter_count(small_model) == expected == 93322
    path = save_run_checkpoint(tmp_path, small_model, build_meta(small_model))
    assert S.checkpoint_bytes(tmp_path) == path.stat().st_size == S.checkpoint_bytes(path)
    assert S.checkpoint_bytes(tmp_path) > 4 * expected  # float32 weights + header
