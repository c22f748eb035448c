"""Confident learning (label issues) and ``digitlab label-issues``."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest

from digitlab.analysis import label_issues as li
from digitlab.errors import ConfigError
from inference_support import torch_threads


def planted(seed: int = 0, n: int = 600, k: int = 5, flips: int = 12, signal: float = 3.0, boost: float = 3.0
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(given labels, probabilities, flipped positions): a model's probabilities of the true classes
    (true-class logit + ``signal``, so some clean images are ambiguous), and labels with ``flips``
    images changed to another class — images the model is sure of (their logit gets ``boost`` more)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += signal
    labels = true.copy()
    flipped = rng.choice(n, flips, replace=False)
    logits[flipped, true[flipped]] += boost
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels[flipped] = (true[flipped] + rng.integers(1, k, flips)) % k
    return labels, probs, flipped


def test_thresholds_are_the_mean_self_confidence_per_given_class():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.2, 0.8], [0.4, 0.6], [0.0, 1.0]])
    assert li.confident_thresholds(labels, probs) == pytest.approx([0.8, 0.8])
    t = li.confident_thresholds(np.array([0, 0]), probs[:2])
    assert t[1] == 2.0  # a class nobody was given can never be confident


def test_confident_joint_counts_the_confident_class_of_each_example():
    # class-0 threshold 0.8, class-1 threshold 0.75; example 1 (given 0) is confidently 1
    labels = np.array([0, 0, 0, 1, 1])
    probs = np.array([[0.95, 0.05], [0.1, 0.9], [0.85, 0.15], [0.3, 0.7], [0.2, 0.8]])
    cj, guess = li.confident_joint(labels, probs, calibrate=False)
    assert guess.tolist() == [0, 1, 0, -1, 1]  # example 3 (0.7 < 0.8) is confident in nothing
    assert cj.tolist() == [[2, 1], [0, 1]]
    calibrated, _ = li.confident_joint(labels, probs)
    assert calibrated.sum(axis=1).tolist() == [3, 2]  # rows sum to the given-label counts


@pytest.mark.parametrize("method", li.METHODS)
@pytest.mark.parametrize("rank_by", li.RANK_BY)
def test_planted_label_flips_are_found_first(method, rank_by):
    labels, probs, flipped = planted()
    found = li.find_label_issues(labels, probs, method=method, rank_by=rank_by)
    assert set(found.indices[:len(flipped)].tolist()) == set(flipped.tolist())  # found, and first
    extras = set(found.indices[len(flipped):].tolist())
    model_wrong = set(np.flatnonzero(probs.argmax(1) != labels).tolist()) - set(flipped.tolist())
    assert extras <= model_wrong and len(extras) < len(flipped)  # only clean images the model gets wrong
    assert np.all(np.diff(found.scores) >= 0)  # most suspicious (lowest quality) first
    true = probs.argmax(1)
    assert np.array_equal(found.suggested, true[found.indices])
    assert found.mask.sum() == len(found.indices) and found.mask.shape == labels.shape


def test_an_example_the_model_agrees_with_is_never_flagged():
    labels, probs, _ = planted(seed=3)
    found = li.find_label_issues(labels, probs)
    assert np.all(probs[found.indices].argmax(1) != labels[found.indices])


def test_cross_check_with_cleanlab():
    cleanlab_filter = pytest.importorskip(
        "cleanlab.filter", reason="cleanlab is not installed (pip install cleanlab) — the reference "
                                  "implementation this test compares with")
    from cleanlab.count import compute_confident_joint

    for seed in range(8):
        labels, probs, _ = planted(seed=seed, n=400, k=4, flips=15, signal=2.5, boost=0.0)
        assert np.array_equal(li.confident_joint(labels, probs)[0], compute_confident_joint(labels, probs))
        for method in li.METHODS:
            for rank_by in li.RANK_BY:
                theirs = cleanlab_filter.find_label_issues(labels, probs, filter_by=method,
                                                           return_indices_ranked_by=rank_by, n_jobs=1)
                ours = li.find_label_issues(labels, probs, method=method, rank_by=rank_by).indices
                assert ours.tolist() == list(theirs), (seed, method, rank_by)


def test_fit_temperature_recovers_an_overconfident_scale():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (4000, 5))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (p_true.cumsum(1) > rng.random((4000, 1))).argmax(1)
    overconfident = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    t = li.fit_temperature(labels, overconfident)
    assert t == pytest.approx(3.0, rel=0.15)
    assert li.apply_temperature(overconfident, t).argmax(1).tolist() == overconfident.argmax(1).tolist()
    with pytest.raises(ConfigError):
        li.apply_temperature(overconfident, 0.0)


def test_fold_indices_are_stratified_disjoint_and_complete():
    labels = np.repeat(np.arange(3), [30, 20, 10])
    folds = li.fold_indices(labels, 3, seed=1)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(60))
    counts = sorted(np.bincount(labels[f], minlength=3).tolist() for f in folds)
    assert counts == [[10, 6, 3], [10, 7, 3], [10, 7, 4]]  # each class dealt evenly over the folds
    assert [f.tolist() for f in li.fold_indices(labels, 3, seed=1)] == [f.tolist() for f in folds]
    with pytest.raises(ConfigError):
        li.fold_indices(labels, 1, seed=0)


def test_cross_fit_probabilities_are_out_of_sample(mnist):
    images, labels = mnist.train_images[:300], mnist.train_labels[:300]
    with torch_threads(1):
        probs = li.cross_fit_probabilities(images, labels, folds=2, seed=0, device="cpu",
                                           overrides={"max_steps": 15, "amp": False})
    assert probs.shape == (300, 10)
    assert np.allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == labels.numpy()).mean() > 0.5  # better than chance after 15 steps


def _fast_cross_fit(monkeypatch):
    quick = functools.partial(li.cross_fit_probabilities, overrides={"max_steps": 10, "amp": False})
    monkeypatch.setattr(li, "cross_fit_probabilities", quick)


def test_cli_test_split_finds_a_known_mnist_label_error(mnist_dir, tmp_path, capsys):
    from digitlab.cli import main

    with torch_threads(1):
        code = main(["label-issues", "--limit", "2000", "--top", "5", "--plots", str(tmp_path / "p"),
                     "--data-dir", str(mnist_dir), "--json", "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "mnist" and out["split"] == "test" and out["n"] == 2000
    assert out["model"] == "default" and out["temperature"] < 1  # label smoothing made it underconfident
    issues = out["issues"]
    assert 1 <= len(issues) <= 5
    for row in issues:
        assert set(row) == {"index", "label", "suggested", "score", "name", "suggested_name", "flagged"}
        assert row["flagged"] is True  # without --fill only flagged images are listed
        assert row["label"] != row["suggested"] and row["name"] == str(row["label"])
    assert [r["score"] for r in issues] == sorted(r["score"] for r in issues)
    assert 1901 in [r["index"] for r in issues]  # a '9' that reads as a 4 (flagged by cleanlab too)
    png = Path(out["plots"][0])
    assert png.name == "label_issues.png" and png.read_bytes()[:4] == b"\x89PNG"


def test_cli_fill_lists_runners_up_after_the_flagged_images(mnist_dir, tmp_path, capsys):
    from digitlab.cli import main

    args = ["label-issues", "--limit", "2000", "--top", "6", "--data-dir", str(mnist_dir), "--json", "--quiet"]
    with torch_threads(1):
        assert main(args) == 0
        plain = json.loads(capsys.readouterr().out)["issues"]
        assert main([*args, "--fill", "--plots", str(tmp_path / "grid")]) == 0
    out = json.loads(capsys.readouterr().out)
    filled = out["issues"]
    assert len(plain) < 6 and len(filled) == 6  # the shipped model flags few; --fill tops the list up
    assert filled[:len(plain)] == plain and not any(r["flagged"] for r in filled[len(plain):])
    rest = filled[len(plain):]
    assert all(r["label"] != r["suggested"] for r in rest)
    assert [r["score"] for r in rest] == sorted(r["score"] for r in rest)
    assert min(r["score"] for r in rest) >= 0 and len({r["index"] for r in filled}) == 6
    assert (tmp_path / "grid" / "label_issues.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_train_split_cross_fits_on_fashion_mnist(monkeypatch, capsys):
    from digitlab.cli import main

    fashion = Path("/usr/share/datasets/fashion-mnist")
    if not (fashion / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {fashion}")
    _fast_cross_fit(monkeypatch)
    with torch_threads(1):
        code = main(["label-issues", "--dataset", "fashion-mnist", "--data-dir", str(fashion), "--split", "train",
                     "--limit", "300", "--folds", "2", "--top", "0", "--json", "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "fashion-mnist" and out["split"] == "train" and out["n"] == 300
    assert out["model"] is None and "2-fold cross-fitting" in out["probabilities"]
    assert out["n_flagged"] == len(out["issues"])  # --top 0 lists every flagged image
    names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"}
    assert all(r["name"] in names and r["suggested_name"] in names for r in out["issues"])


@pytest.mark.parametrize("argv, message", [
    (["--split", "train", "--model", "default"], "cross-fitting"),
    (["--folds", "3"], "--folds applies to --split train"),
    (["--split", "train", "--folds", "1"], "--folds must be >= 2"),
    (["--temperature", "hot"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--top", "-1"], "--top"),
    (["--limit", "1"], "--limit"),
    (["--dataset", "fashion-mnist"], "trained on mnist"),
    (["--model", "nowhere/run"], "no checkpoint"),
])
def test_cli_bad_arguments_are_one_line_errors(capsys, argv, message):
    from digitlab.cli import main

    assert main(["label-issues", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error:") and message in err and "\n" not in err
