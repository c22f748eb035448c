"""Answer or abstain: the not-a-digit test (digitlab.inference.reject) and how predictors use it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from digitlab.data.pictures import make_picture_sets
from digitlab.inference.predictor import Predictor, load_predictor
from digitlab.inference.reject import (
    MAX_HOLES,
    ShapeModel,
    enclosed_regions,
    fit_shape_model,
    not_a_digit,
    shape_model_for,
    shape_model_path,
)

PRETRAINED = Path(__file__).resolve().parent.parent / "src" / "digitlab" / "pretrained"

SEED = 11  # neither the measured sets (0) nor the validation seeds of scripts/fit_reject.py


@pytest.fixture(scope="module")
def default():
    return load_predictor("default", device="cpu")


@pytest.fixture(scope="module")
def sets(mnist):
    return make_picture_sets(mnist.test_images.numpy(), mnist.test_labels.numpy(), n=40, seed=SEED,
                             names=("user", "photo", "not-a-digit"))


def test_non_digits_are_refused_with_the_blank_fields(default, sets):
    ps = sets["not-a-digit"]
    results = default.predict_images(ps.images)
    refused = [r for r in results if r.get("rejected") == "not-a-digit"]
    assert len(refused) >= 0.9 * len(ps)  # validation: see results/fit_reject.json; measured: measure_pictures.py
    for r in refused:
        assert r["label"] is None and r["name"] is None and r["confidence"] is None and r["probabilities"] is None
        assert "blank" not in r and r["preprocessed"].any()
    textures = [r for r, k in zip(results, ps.kinds, strict=True) if k == "texture"]
    assert textures and all(r.get("rejected") == "not-a-digit" for r in textures)


def test_digits_are_answered(default, sets, mnist):
    for name in ("user", "photo"):
        ps = sets[name]
        results = default.predict_images(ps.images)
        answered = [r for r in results if r["label"] is not None]
        assert len(answered) >= len(ps) - 1, name
        assert all("rejected" not in r for r in answered)
        right = sum(r["label"] == a for r, a in zip(results, ps.answers, strict=True))
        assert right >= len(ps) - 2, name
    # the MNIST test digits themselves: few refused (35 of these 2,000, 4 of them misread anyway)
    pre = mnist.test_images[:2000].numpy()
    results = default.result(pre, *default.predict(pre))
    assert sum(r["label"] is None for r in results) <= 50


def test_read_number_never_refuses_a_split_digit(default, mnist):
    from digitlab.data.pictures import number_picture

    rng = np.random.default_rng(SEED)
    got = default.read_number(number_picture([mnist.test_images[i].numpy() for i in (0, 1, 2)], rng))
    assert all(d["label"] is not None for d in got["digits"])


def test_non_digit_datasets_never_refuse_as_not_a_digit():
    logits = np.zeros((1, 10), np.float32)
    fashion = Predictor(lambda x: np.repeat(logits, x.shape[0], 0), {}, dataset="fashion-mnist")
    assert fashion.shape is None and not fashion.digits
    grid = np.zeros((28, 28), np.uint8)
    grid[::4] = 255
    grid[:, ::4] = 255  # a texture a digit model refuses
    r = fashion.result(grid[None], *fashion.predict(grid[None]))[0]
    assert r["label"] is not None and "rejected" not in r
    digits = Predictor(lambda x: np.repeat(logits, x.shape[0], 0), {}, dataset="mnist")
    assert digits.shape is not None
    assert digits.result(grid[None], *digits.predict(grid[None]))[0]["rejected"] == "not-a-digit"


def test_enclosed_regions():
    ring = np.zeros((28, 28), np.uint8)
    yy, xx = np.mgrid[:28, :28]
    r = np.hypot(yy - 14, xx - 14)
    ring[(r > 6) & (r < 9)] = 255
    assert enclosed_regions(ring) == 1
    eight = np.zeros((28, 28), np.uint8)
    for cy in (8, 19):
        rr = np.hypot(yy - cy, xx - 14)
        eight[(rr > 3) & (rr < 5.5)] = 255
    assert enclosed_regions(eight) == 2
    grid = np.zeros((28, 28), np.uint8)
    grid[2:26:5, 2:26] = 255
    grid[2:26, 2:26:5] = 255
    assert enclosed_regions(grid) > MAX_HOLES
    assert enclosed_regions(np.zeros((28, 28), np.uint8)) == 0


def test_shape_model_fit_save_load_and_distance(mnist, tmp_path):
    images, labels = mnist.train_images[:3000].numpy(), mnist.train_labels[:3000].numpy()
    model = fit_shape_model(images, labels, components=8)
    assert model.means.shape == (10, 784) and model.components.shape == (10, 8, 784)
    comps = model.components[3]
    np.testing.assert_allclose(comps @ comps.T, np.eye(8), atol=1e-4)  # orthonormal axes
    model.save(tmp_path / "s.safetensors")
    back = ShapeModel.load(tmp_path / "s.safetensors")
    x = mnist.test_images[:200].numpy()
    y = mnist.test_labels[:200].numpy()
    np.testing.assert_allclose(back.distance(x, y), model.distance(x, y), rtol=2e-2)
    # a digit is closer to its own class than to the others, on average
    own = model.distance(x, y).mean()
    other = model.distance(x, (y + 1) % 10).mean()
    assert own < other / 2


def test_shipped_shape_model_is_present_and_used_by_the_shipped_predictors(mnist):
    assert shape_model_path("mnist").is_file()
    shape = shape_model_for("mnist")
    assert isinstance(shape, ShapeModel) and shape.components.shape[0] == 10
    probs = np.eye(10, dtype=np.float32)[mnist.test_labels[:50].numpy()]
    assert not_a_digit(shape, mnist.test_images[:50].numpy(), probs).sum() <= 1


def test_feature_model_fit_save_load_and_distance(tmp_path):
    from digitlab.inference.reject import FeatureModel, FeatureRule, fit_feature_model

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, (3, 12))
    labels = np.repeat(np.arange(3), 400)
    feats = centres[labels] + rng.normal(0, 1, (1200, 12)) * np.linspace(0.2, 2, 12)
    rule = FeatureRule(0.5, 0.1, 1.0)
    model = fit_feature_model(feats, labels, "abc", rule, components=4, shrink=0.0, info={"fitted_on": "toy"})
    assert model.axes.shape == (12, 4) and model.means.shape == (3, 12)
    np.testing.assert_allclose(model.axes.T @ model.axes, np.eye(4), atol=1e-5)
    # the distance is the full Mahalanobis distance when no axis is left out
    full = fit_feature_model(feats, labels, "abc", rule, components=12, shrink=0.0)
    x = centres[[0, 2]] + rng.normal(0, 1, (2, 12))
    cov = np.cov((feats - full.means[labels]).T, bias=True)
    inv = np.linalg.inv(cov)
    want = np.min([[(v - m) @ inv @ (v - m) for m in full.means.astype(np.float64)] for v in x], axis=1) / 12
    np.testing.assert_allclose(full.distance(x), want, rtol=1e-3)
    # far from every class is far
    assert model.distance(centres[:1] + 30).item() > 10 * model.distance(centres[:1]).item()
    model.save(tmp_path / "f.safetensors")
    back = FeatureModel.load(tmp_path / "f.safetensors")
    assert back.rule == rule and back.weights_sha256 == "abc" and back.info == {"fitted_on": "toy"}
    np.testing.assert_allclose(back.distance(x), model.distance(x), rtol=1e-6)


def _toy_detector(d: int, hidden: int = 3, seed: int = 0):
    from digitlab.inference.reject import Detector

    rng = np.random.default_rng(seed)
    return Detector(mean=rng.normal(0, 1, d + 3).astype(np.float32),
                    scale=rng.uniform(0.5, 2, d + 3).astype(np.float32),
                    w1=rng.normal(0, 1, (d + 3, hidden)).astype(np.float32),
                    b1=rng.normal(0, 1, hidden).astype(np.float32),
                    w2=rng.normal(0, 1, hidden).astype(np.float32), b2=0.25)


def test_detector_scores_are_a_relu_network_of_standardised_inputs():
    det = _toy_detector(4)
    rng = np.random.default_rng(1)
    f = rng.normal(0, 1, (5, 4))
    sd, fd, lo = rng.uniform(0.5, 3, 5), rng.uniform(0.5, 3, 5), rng.normal(5, 2, 5)
    x = np.concatenate([f, np.log(sd)[:, None], np.log(fd)[:, None], lo[:, None]], axis=1)
    want = [float(np.maximum((v - det.mean) / det.scale @ det.w1 + det.b1, 0) @ det.w2 + det.b2) for v in x]
    np.testing.assert_allclose(det.score(f, sd, fd, lo), want, rtol=1e-4, atol=1e-4)


def test_feature_model_keeps_its_detector_and_refuses_when_either_score_fires(tmp_path):
    from digitlab.inference.reject import FeatureModel, FeatureRule, fit_feature_model, not_a_digit_scores

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 50)
    feats = rng.normal(0, 1, (500, 6)) + labels[:, None]
    det = _toy_detector(6)
    rule = FeatureRule(1.0, 0.1, 2.0, detector_threshold=0.5)
    model = fit_feature_model(feats, labels, "abc", rule, components=3, info={"fitted_on": "toy"}, detector=det)
    model.save(tmp_path / "f.safetensors")
    back = FeatureModel.load(tmp_path / "f.safetensors")
    assert back.rule == rule and back.info == {"fitted_on": "toy"} and back.detector is not None
    for name in ("mean", "scale", "w1", "b1", "w2"):
        np.testing.assert_array_equal(getattr(back.detector, name), getattr(det, name))
    assert back.detector.b2 == det.b2
    # the score is the larger of the two margins: each rule alone, then both
    shape = fit_shape_model(rng.integers(0, 256, (40, 28, 28)).astype(np.uint8), np.arange(40) % 10, components=2)
    images = rng.integers(0, 256, (6, 28, 28)).astype(np.uint8)
    probs = np.full((6, 10), 0.01, np.float32)
    probs[:, 3] = 0.91
    x = feats[:6]
    both = not_a_digit_scores(shape, images, probs, x, back)
    distance_only = not_a_digit_scores(shape, images, probs, x, FeatureModel(
        back.means, back.axes, back.variances, back.residual_variance, "abc", FeatureRule(1.0, 0.1, 2.0)))
    order = np.argsort(-probs, axis=1, kind="stable")
    sd = np.minimum(shape.distance(images, order[:, 0]), shape.distance(images, order[:, 1]))
    p = probs[:, 3].astype(np.float64)
    learned = det.score(x, sd, back.distance(x), np.log(p / (1 - p))) - 0.5
    np.testing.assert_allclose(both, np.maximum(distance_only, learned), rtol=1e-5, atol=1e-5)


def test_the_shipped_rule_has_a_learned_detector_and_refuses_typeset_letters(default):
    """A, B, D, Y and Z were refused by none of the distance rules (read as 4, 8, 0, 4, 2)."""
    from PIL import Image, ImageDraw, ImageFont

    fm = default.feature_model
    assert fm is not None and fm.detector is not None and np.isfinite(fm.rule.detector_threshold)
    pictures = []
    for size in (150, 210):
        for letter in "ABDYZ":  # Pillow's built-in font: the measured letters' font, never trained on
            img = Image.new("L", (size, size), 255)
            ImageDraw.Draw(img).text((size * 0.25, size * 0.08), letter, fill=0,
                                     font=ImageFont.load_default(size=int(size * 0.7)))
            pictures.append(img)
    results = default.predict_images(pictures)
    assert sum(r.get("rejected") == "not-a-digit" for r in results) >= 8, [r["label"] for r in results]


def test_feature_statistics_apply_only_to_the_weights_they_were_computed_with():
    from digitlab.inference.reject import feature_model_for, feature_model_path

    assert feature_model_path("mnist").is_file()
    meta = json.loads((PRETRAINED / "default.json").read_text())
    shipped = feature_model_for("mnist", meta["weights_sha256"])
    assert shipped is not None and shipped.weights_sha256 == meta["weights_sha256"]
    assert feature_model_for("mnist", "0" * 64) is None and feature_model_for("mnist", None) is None
    assert feature_model_for("fashion-mnist", meta["weights_sha256"]) is None


def test_both_backends_of_the_shipped_model_refuse_the_same_pictures(default, sets):
    pytest.importorskip("onnxruntime")
    onnx = load_predictor("default", prefer_onnx=True)
    assert onnx.info["backend"] == "onnxruntime" and default.info["backend"] == "torch"
    assert onnx.feature_model is not None and default.feature_model is not None
    for name in ("user", "photo", "not-a-digit"):
        pre = np.stack([default.preprocess(im) for im in sets[name].images])
        np.testing.assert_allclose(onnx.features(pre), default.features(pre), atol=1e-3)
        a = [r["label"] for r in default.result(pre, *default.predict(pre))]
        b = [r["label"] for r in onnx.result(pre, *onnx.predict(pre))]
        assert a == b, name


def test_features_come_from_the_forward_pass_predict_just_ran(default, mnist):
    calls = []
    inner = default._features_fn

    def counting(x):
        calls.append(x.shape[0])
        return inner(x)

    default._features_fn = counting
    try:
        pre = mnist.test_images[:5].numpy()
        labels, probs = default.predict(pre)
        default.result(pre, labels, probs)
        assert calls == [5]  # result() reused the features of predict()'s pass
        default.result(pre[:2], *default.predict(pre[:2]))
        assert calls == [5, 2]
        default.not_a_digit(pre[2:4], probs[2:4])  # not the last batch: computed afresh
        assert calls == [5, 2, 2]
    finally:
        default._features_fn = inner


def test_other_models_use_the_pixel_rule(run_dir):
    other = load_predictor(run_dir, device="cpu")
    assert other.feature_model is None and other.shape is not None


def _fit_reject_script():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "scripts" / "fit_reject.py"
    spec = importlib.util.spec_from_file_location("fit_reject_script", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fit_reject_needs_its_fonts_and_says_so_in_one_line(tmp_path, monkeypatch):
    script = _fit_reject_script()
    monkeypatch.setattr(script, "FONT_ROOT", tmp_path)
    with pytest.raises(SystemExit) as exc:
        script.require_fonts()
    message = str(exc.value)
    assert "\n" not in message and "fonts missing" in message and "fonts-liberation" in message


def test_fit_reject_training_pictures_are_seeded_and_labelled(mnist):
    script = _fit_reject_script()
    fonts = script.require_fonts()  # scripts/bootstrap.sh installs them
    digits = mnist.train_images[:50].numpy()
    a = script.training_pictures(digits, 6, 10, 3, fonts, None)
    b = script.training_pictures(digits, 6, 10, 3, fonts, None)
    assert a[0] == b[0] and a[2] == b[2]  # same seed, same bytes
    assert a[1].tolist() == [False] * 6 + [True] * 10
    assert set(a[2][6:]) <= {"letter", "scribble", "texture"} and a[2][:6] == ["digit"] * 6
