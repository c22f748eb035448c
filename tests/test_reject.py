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
    assert len(refused) >= 0.7 * len(ps)  # validation: 88%; measured set: see scripts/measure_pictures.py
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
