"""The model shipped inside the package: present, small, accurate, and right on real-world images."""

from __future__ import annotations

import json

import numpy as np
import pytest

import digitlab
from digitlab.checkpoint import read_meta
from digitlab.inference.predictor import DEFAULT_MODEL_PATH
from inference_support import render_real_world


def test_shipped_model_is_small_and_documents_its_recipe():
    assert DEFAULT_MODEL_PATH.is_file(), "src/digitlab/pretrained/default.safetensors is missing"
    assert DEFAULT_MODEL_PATH.stat().st_size < 2_000_000
    meta = read_meta(DEFAULT_MODEL_PATH)
    assert meta["config"]["model"] == meta["model"]  # the recipe that trained it travels with it
    assert meta["shipped"]["measured_test_accuracy"] >= 0.995
    assert meta["data"]["checksums"]  # which data it was trained on
    readable = json.loads((DEFAULT_MODEL_PATH.parent / "default.json").read_text())
    assert readable["shipped"] == meta["shipped"]


def test_shipped_model_accuracy_on_the_mnist_test_set(mnist):
    model = digitlab.load_model("default")
    labels, probs = model.predict(mnist.test_images.numpy())
    accuracy = float((labels == mnist.test_labels.numpy()).mean())
    assert accuracy >= 0.995
    recorded = read_meta(DEFAULT_MODEL_PATH)["shipped"]["measured_test_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=2e-4)  # the recorded figure is the measured one
    assert np.allclose(probs.sum(1), 1, atol=1e-4)


def test_predict_cli_on_real_world_style_pngs(mnist, tmp_path, capsys):
    """Dark digits on white, 100-300 px, off-centre, in six formats/modes: the issue's acceptance test."""
    from digitlab.cli import main

    rng = np.random.default_rng(7)
    idx = rng.choice(mnist.test_images.shape[0], 600, replace=False)
    images, truth = mnist.test_images.numpy()[idx], mnist.test_labels.numpy()[idx]
    ext = {0: "png", 1: "jpg", 2: "png", 3: "png", 4: "png", 5: "webp"}
    for i, digit in enumerate(images):
        (tmp_path / f"{i:04d}.{ext[i % 6]}").write_bytes(render_real_world(digit, i % 6, rng))
    (tmp_path / "broken.png").write_bytes(b"not an image")
    code = main(["predict", str(tmp_path), "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1  # one file failed, the others were still classified
    errors = [r for r in lines if "error" in r]
    assert len(errors) == 1 and errors[0]["file"].endswith("broken.png")
    results = {r["file"]: r for r in lines if "label" in r}
    assert len(results) == 600
    predicted = np.array([results[str(tmp_path / f"{i:04d}.{ext[i % 6]}")]["label"] for i in range(600)])
    accuracy = float((predicted == truth).mean())
    assert accuracy >= 0.98, accuracy
