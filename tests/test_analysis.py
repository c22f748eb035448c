"""Error analysis, sensitivity maps, robustness and plots on a briefly trained CNN and exact toy models."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from digitlab.analysis import mistakes as E
from digitlab.analysis import plots as P
from digitlab.analysis import robustness as R
from digitlab.analysis import sensitivity as SE
from digitlab.data.augment import shift_images
from digitlab.evaluate import predict_logits
from inference_support import train_cnn

N_EVAL = 300  # test images used by the model-based tests (keeps the file fast on 2 cores)


@pytest.fixture(scope="module")
def ds(mnist):
    """The real MNIST dataset (session fixture ``mnist`` in conftest.py; fails if the data is missing)."""
    return mnist


@pytest.fixture(scope="module")
def model(ds):
    return train_cnn(ds)


@pytest.fixture(scope="module")
def subset(ds):
    return ds.test_images[:N_EVAL], ds.test_labels[:N_EVAL]


def linear_model(seed: int = 0) -> nn.Module:
    """logits = W·x + b: gradients and integrated gradients are known in closed form."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()


# ---------------------------------------------------------------- errors


def test_error_functions_hand_case():
    probs = np.array([
        [0.9, 0.05, 0.05],  # right, confident
        [0.2, 0.7, 0.1],    # wrong: true 0 → 1 (0.7)
        [0.1, 0.1, 0.8],    # wrong: true 1 → 2 (0.8)
        [0.3, 0.3, 0.4],    # right (label 2), unsure
        [0.1, 0.6, 0.3],    # wrong: true 0 → 1 (0.6)
    ])
    labels = np.array([0, 0, 1, 2, 0])
    mis = E.misclassified(probs, labels)
    assert mis["index"].tolist() == [2, 1, 4]  # most confident mistake first
    assert mis["true"].tolist() == [1, 0, 0] and mis["pred"].tolist() == [2, 1, 1]
    np.testing.assert_allclose(mis["confidence"], [0.8, 0.7, 0.6])
    np.testing.assert_allclose(mis["true_prob"], [0.1, 0.2, 0.1])
    assert E.misclassified(probs, labels, order="index")["index"].tolist() == [1, 2, 4]
    assert E.misclassified(probs, labels, limit=1)["index"].tolist() == [2]
    pairs = E.most_confused_pairs(labels, probs, num_classes=3)
    assert [(p["true"], p["pred"], p["count"]) for p in pairs] == [(0, 1, 2), (1, 2, 1)]
    cr = E.confidence_right_wrong(probs, labels)
    np.testing.assert_allclose(cr["correct"], [0.9, 0.4])
    np.testing.assert_allclose(cr["wrong"], [0.7, 0.8, 0.6])
    hard = E.hardest_examples(probs, labels, k=2)
    # losses −log p(true): 0.105, 1.609, 2.303, 0.916, 2.303 → ties (2, 4) by index
    assert hard["index"].tolist() == [2, 4]
    np.testing.assert_allclose(hard["loss"], [-np.log(0.1)] * 2)
    summary = E.error_summary(probs, labels, k=2)
    assert summary["errors"] == 3 and summary["error_rate"] == 0.6
    assert summary["mean_confidence_wrong"] == pytest.approx(0.7)


def test_errors_on_trained_model(model, subset):
    images, labels = subset
    probs = torch.softmax(predict_logits(model, images), 1)
    correct = int((probs.argmax(1) == labels).sum())
    mis = E.misclassified(probs, labels)
    assert len(mis["index"]) == N_EVAL - correct > 0
    assert np.all(mis["pred"] != mis["true"]) and np.all(np.diff(mis["confidence"]) <= 0)
    hard = E.hardest_examples(probs, labels, k=10)
    assert np.all(np.diff(hard["loss"]) <= 0)
    cr = E.confidence_right_wrong(probs, labels)
    assert cr["correct"].size == correct and cr["correct"].mean() > cr["wrong"].mean()


# ---------------------------------------------------------------- sensitivity


def test_saliency_linear_model_is_abs_weight_row():
    m = linear_model()
    x = torch.rand(5, 1, 28, 28)
    targets = torch.tensor([0, 3, 3, 9, 1])
    sal = SE.saliency_maps(m, x, targets, batch_size=2)
    w = m[1].weight.detach()
    np.testing.assert_allclose(sal, w[targets].abs().view(5, 28, 28).numpy(), rtol=1e-6)


def test_saliency_batched_equals_single(model, subset):
    images, labels = subset
    a = SE.saliency_maps(model, images[:6], labels[:6], batch_size=6)
    b = np.concatenate([SE.saliency_maps(model, images[i:i + 1], labels[i:i + 1]) for i in range(6)])
    assert a.shape == (6, 28, 28) and (a >= 0).all() and a.max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)
    # targets default to the predicted class
    pred = predict_logits(model, images[:6]).argmax(1)
    np.testing.assert_allclose(SE.saliency_maps(model, images[:6]), SE.saliency_maps(model, images[:6], pred))


class CallCounter:
    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        model.register_forward_hook(self)

    def __call__(self, *args: object) -> None:
        self.calls += 1


def test_occlusion_batched_matches_naive_loop(model, subset):
    model = copy.deepcopy(model)  # own copy: the hook below stays on it
    counter = CallCounter(model)
    images, labels = subset[0][:3], subset[1][:3]
    res = SE.occlusion(model, images, labels, patch=4, stride=4, batch_size=64)
    assert res["rows"] == res["cols"] == [0, 4, 8, 12, 16, 20, 24]
    assert res["grid"].shape == (3, 7, 7) and res["map"].shape == (3, 28, 28)
    # 3 × 49 variants in chunks of 64 → 3 forward calls, plus one for the unoccluded images
    assert counter.calls == 4
    # the same numbers one patch at a time (test-only reference loop)
    x = images.float().div(255).unsqueeze(1)
    with torch.inference_mode():
        base = torch.softmax(model(x), 1)[torch.arange(3), labels]
        for i, r in enumerate(res["rows"]):
            for j, c in enumerate(res["cols"]):
                xo = x.clone()
                xo[:, :, r:r + 4, c:c + 4] = 0.0
                drop = base - torch.softmax(model(xo), 1)[torch.arange(3), labels]
                np.testing.assert_allclose(res["grid"][:, i, j], drop.numpy(), atol=1e-5)
    np.testing.assert_allclose(res["base_prob"], base.numpy(), atol=1e-6)
    # non-overlapping patches: each pixel's map value is its patch's drop
    np.testing.assert_allclose(res["map"][:, 5, 9], res["grid"][:, 1, 2], atol=1e-6)


def test_occlusion_overlap_positions_and_sweep(model, subset):
    images, labels = subset
    assert SE.occlusion_positions(28, 10, 4) == [0, 4, 8, 12, 16, 18]  # last patch reaches the edge
    res = SE.occlusion(model, images[:2], labels[:2], patch=10, stride=4)
    assert res["grid"].shape == (2, 6, 6)
    # pixel (0, 0) is covered only by the patch at (0, 0)
    np.testing.assert_allclose(res["map"][:, 0, 0], res["grid"][:, 0, 0], atol=1e-6)
    # pixel (5, 5) is covered by the patches starting at rows/cols 0 and 4: mean of 4 drops
    np.testing.assert_allclose(res["map"][:, 5, 5], res["grid"][:, :2, :2].mean(axis=(1, 2)), atol=1e-6)
    sweep = SE.occlusion_sweep(model, images[:1], labels[:1], settings=((4, 2), (7, 7)))
    assert [(s["patch"], s["stride"]) for s in sweep] == [(4, 2), (7, 7)]
    assert sweep[1]["grid"].shape == (1, 4, 4)
    # blanking the digit's centre hurts more than blanking an empty corner
    big = SE.occlusion(model, images[:20], labels[:20], patch=14, stride=14)["grid"]
    assert big.mean(axis=0).max() > abs(SE.occlusion(model, images[:20], labels[:20], patch=4,
                                                     stride=24)["grid"][:, 0, 0]).mean()


def test_integrated_gradients_linear_is_exact():
    m = linear_model(3)
    x = torch.rand(4, 1, 28, 28)
    t = torch.tensor([2, 5, 5, 0])
    res = SE.integrated_gradients(m, x, t, steps=8)
    w = m[1].weight.detach()
    np.testing.assert_allclose(res["attributions"], (x[:, 0] * w[t].view(4, 28, 28)).numpy(),
                               rtol=1e-5, atol=1e-7)
    assert np.abs(res["delta"]).max() < 1e-4


def test_integrated_gradients_completeness_on_cnn(model, subset):
    images, labels = subset
    res = SE.integrated_gradients(model, images[:4], labels[:4], steps=64, batch_size=100)
    gap = res["f_x"] - res["f_baseline"]
    # completeness: Σ attributions = f(x) − f(baseline), up to quadrature error
    np.testing.assert_allclose(res["attributions"].sum(axis=(1, 2)), gap, rtol=0.02, atol=1e-3)
    assert np.all(np.abs(res["delta"]) <= 0.02 * np.abs(gap) + 1e-3)
    # batching along the path does not change the result
    small = SE.integrated_gradients(model, images[:2], labels[:2], steps=64, batch_size=7)
    np.testing.assert_allclose(small["attributions"], res["attributions"][:2], rtol=1e-4, atol=1e-6)
    # probability output and a non-zero baseline satisfy completeness too
    prob = SE.integrated_gradients(model, images[4:6], labels[4:6], steps=64, output="prob",
                                   baseline=0.1, method="gausslegendre")
    gap = prob["f_x"] - prob["f_baseline"]
    assert np.all(np.abs(prob["delta"]) <= 0.02 * np.abs(gap) + 1e-3)


# ---------------------------------------------------------------- robustness


def test_geometric_transforms_are_exact():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10, 20] = 1.0
    shifted = shift_images(x, 2, -3)  # 2 right, 3 up
    assert shifted[0, 0, 7, 22] == pytest.approx(1.0, abs=1e-6) and shifted.sum() == pytest.approx(1.0)
    img = torch.rand(3, 1, 28, 28)
    rolled = torch.roll(img, 1, dims=3)
    rolled[..., 0] = 0.0
    torch.testing.assert_close(shift_images(img, 1, 0), rolled, atol=1e-5, rtol=0)
    half = shift_images(x, 0.5, 0)  # fractional: bilinear, the mass splits between two columns
    assert half[0, 0, 10, 20:22].tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert half.sum() == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(R.rotate(img, 0), img)
    # 90° counter-clockwise: pixel right of centre (row 13.5, col 20) moves above centre
    y = torch.zeros(1, 1, 28, 28)
    y[0, 0, 13:15, 20] = 1.0
    rot = R.rotate(y, 90)
    assert rot[0, 0, 7, 13:15].sum() == pytest.approx(2.0, abs=1e-4)
    torch.testing.assert_close(R.rotate(R.rotate(y, 90), -90), y, atol=1e-4, rtol=0)


def test_robustness_score_formula():
    # area = 0.1·(1 + 0.8)/2 + 0.1·(0.8 + 0.6)/2 = 0.16; normaliser 1.0 × 0.2
    assert R.robustness_score([0, 0.1, 0.2], [1.0, 0.8, 0.6]) == pytest.approx(0.8)
    assert R.robustness_score([0.2, 0, 0.1], [0.6, 1.0, 0.8]) == pytest.approx(0.8)  # order-free
    assert R.robustness_score([0, 0.5], [0.9, 0.9]) == pytest.approx(1.0)
    assert R.robustness_score([0.1, 0.3], [0.5, 0.3], clean_accuracy=0.5) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        R.robustness_score([0.1, 0.3], [0.5, 0.3])  # no clean level and no clean_accuracy


def test_noise_robustness_on_model(model, subset):
    images, labels = subset
    clean = float((predict_logits(model, images).argmax(1) == labels).float().mean())
    res = R.noise_robustness(model, images, labels, stds=(0.0, 0.3, 0.8), seed=1, batch_size=128)
    assert res["accuracy"][0] == pytest.approx(clean) and res["clean_accuracy"] == pytest.approx(clean)
    assert res["accuracy"][2] < res["accuracy"][0] - 0.1  # heavy noise hurts
    assert res["score"] == pytest.approx(R.robustness_score(res["std"], res["accuracy"]))
    again = R.noise_robustness(model, images, labels, stds=(0.0, 0.3, 0.8), seed=1, batch_size=50)
    assert again["accuracy"] == res["accuracy"]  # seeded, and independent of the batch size
    g = torch.Generator().manual_seed(0)
    noisy = R.gaussian_noise(torch.full((2, 1, 28, 28), 0.5), 0.2, g)
    assert noisy.min() >= 0 and noisy.max() <= 1 and noisy.std() == pytest.approx(0.2, rel=0.15)


def test_rotation_and_shift_robustness_on_model(model, subset):
    images, labels = subset
    clean = float((predict_logits(model, images).argmax(1) == labels).float().mean())
    rot = R.rotation_robustness(model, images, labels, angles=(-60, 0, 60), batch_size=100)
    assert rot["angle"] == [-60.0, 0.0, 60.0] and rot["accuracy"][1] == pytest.approx(clean)
    assert max(rot["accuracy"][0], rot["accuracy"][2]) < clean - 0.2
    sh = R.shift_robustness(model, images, labels, shifts=(0, 5), batch_size=100)
    assert sh["accuracy"][0] == pytest.approx(clean) and sh["accuracy"][1] < clean - 0.1
    assert set(sh["by_direction"]) == {"right", "left", "down", "up"}
    assert sh["accuracy"][1] == pytest.approx(np.mean([v[1] for v in sh["by_direction"].values()]))


# ---------------------------------------------------------------- plots


def _check_png(data: bytes, min_size: int = 200) -> None:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(io.BytesIO(data))
    img.load()
    assert min(img.size) >= min_size


def test_all_plots_render_png():
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, (10, 10)) + np.diag(np.full(10, 900))
    per_class = [{"class": str(i), "precision": 0.9 + 0.01 * i, "recall": 0.95, "f1": 0.92}
                 for i in range(10)]
    conf = rng.uniform(0.1, 1, 500)
    from digitlab.evaluate.calibration import reliability_diagram

    rel = reliability_diagram(np.stack([conf, 1 - conf], 1), (rng.random(500) > conf).astype(int))
    imgs = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.1 / e, "val_loss": 1.2 / e,
                "val_acc": 1 - 0.12 / e, "lr": 1e-3 * 0.5**e} for e in range(1, 6)]
    history[0]["val_loss"] = None
    points = [{"name": "a", "accuracy": 0.99, "parameters": 1e5, "latency_ms": 0.5},
              {"name": "b", "accuracy": 0.98, "parameters": 1e4, "latency_ms": 0.2},
              {"name": "c", "accuracy": 0.97, "parameters": 2e5, "latency_ms": None}]
    figures = [
        P.confusion_matrix_png(cm),
        P.confusion_matrix_png(cm, [f"class {i}" for i in range(10)], normalize=True),
        P.per_class_metrics_png(per_class),
        P.reliability_png(rel),
        P.misclassified_grid_png(imgs, [1, 2, 3, 4, 5, 6], [7, 7, 7, 7, 7, 7], [0.9] * 6),
        P.confidence_hist_png(conf[:400], conf[400:]),
        P.heatmap_grid_png(imgs, rng.normal(size=(6, 28, 28)), titles=list("abcdef"), signed=True),
        P.heatmap_grid_png(imgs[:1], np.abs(rng.normal(size=(1, 28, 28)))),
        P.noise_curve_png([0, 0.1, 0.2], {"m1": [0.99, 0.98, 0.9], "m2": [0.98, 0.9, 0.7]}),
        P.curves_png([-30, 0, 30], {"m": [0.7, 0.99, 0.7]}, xlabel="angle"),
        P.training_curves_png(history),
        P.pareto_png(points),
        P.bar_errorbars_png(["a", "b", "c"], [0.99, 0.985, 0.97], [0.001, None, 0.002]),
    ]
    for fig in figures:
        _check_png(fig)
    assert P.pareto_front([1e5, 1e4, 2e5], [0.99, 0.98, 0.97]) == [1, 0]


def test_fig_to_png_is_the_one_figure_writer():
    import matplotlib.pyplot as plt

    from digitlab.analysis import explore as ex

    assert ex.fig_to_png is P.fig_to_png  # explore saves through the same helper
    fig, ax = P.pyplot().subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    number = fig.number
    data = P.fig_to_png(fig)
    _check_png(data, min_size=100)
    assert number not in plt.get_fignums()  # closed
    img = Image.open(io.BytesIO(data))
    # tight bounding box at DPI: never larger than the 3×2-inch canvas at that resolution
    assert img.size[0] <= 3 * P.DPI + 2 and img.size[1] <= 2 * P.DPI + 2
    assert img.size[0] > 2 * P.DPI  # ...and rendered at DPI, not matplotlib's default 100
    dpi = img.info.get("dpi")
    assert dpi is not None and round(dpi[0]) == P.DPI
