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


def test_shipped_model_carries_its_temperature_and_weights_hash():
    import torch
    from safetensors.torch import load_file

    from digitlab.checkpoint import WEIGHTS_HASH_KEY, load_checkpoint, weights_sha256

    meta = read_meta(DEFAULT_MODEL_PATH)
    cal = meta["calibration"]
    assert 0 < cal["temperature"] < 1  # label smoothing 0.1 made it under-confident
    assert cal["ece_after"] < cal["ece_before"] and cal["n"] >= 5000
    assert cal["fitted_on"] in ("validation", "train-subset")  # never the test set
    assert meta[WEIGHTS_HASH_KEY] == weights_sha256(load_file(str(DEFAULT_MODEL_PATH)))
    readable = json.loads((DEFAULT_MODEL_PATH.parent / "default.json").read_text())
    assert readable == meta  # the readable copy is the stored metadata
    _, loaded = load_checkpoint("default")  # the hash is checked on load
    assert loaded[WEIGHTS_HASH_KEY] == meta[WEIGHTS_HASH_KEY]
    assert digitlab.load_model("default", device="cpu").temperature == cal["temperature"]
    assert torch.is_tensor(next(iter(load_file(str(DEFAULT_MODEL_PATH)).values())))


ONNX_PATH = DEFAULT_MODEL_PATH.with_suffix(".onnx")


def test_shipped_onnx_copy_has_the_same_metadata():
    pytest.importorskip("onnxruntime")
    from digitlab.inference import load_predictor

    meta = read_meta(DEFAULT_MODEL_PATH)
    pred = load_predictor("default", prefer_onnx=True)
    assert pred.info["backend"] == "onnxruntime" and pred.info["source"] == "default"
    assert pred.temperature == meta["calibration"]["temperature"]
    assert pred.info["export"]["weights_sha256"] == meta["weights_sha256"]  # exported from these weights
    assert pred.dataset == "mnist" and pred.digits and pred.class_names == tuple(str(i) for i in range(10))
    assert load_predictor("default").info["backend"] == "torch"  # without prefer_onnx: as before


def test_shipped_onnx_and_torch_predictors_agree(mnist):
    pytest.importorskip("onnxruntime")
    from digitlab.inference import load_predictor

    images = mnist.test_images[:300].numpy()
    onnx_labels, onnx_probs = load_predictor("default", prefer_onnx=True).predict(images)
    torch_labels, torch_probs = load_predictor("default", device="cpu").predict(images)
    assert (onnx_labels == torch_labels).all()
    assert np.abs(onnx_probs - torch_probs).max() < 1e-3
    assert (onnx_labels == mnist.test_labels[:300].numpy()).mean() > 0.99


def test_prefer_onnx_predicts_a_png_without_importing_torch(tmp_path):
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    from PIL import Image

    page = np.full((112, 112), 255, np.uint8)
    page[20:92, 52:60] = 0  # a "1"
    Image.fromarray(page).save(tmp_path / "one.png")
    code = ("import sys, json\n"
            "from digitlab.inference.predictor import load_predictor\n"
            "p = load_predictor('default', prefer_onnx=True)\n"
            f"r = p.predict_image({str(tmp_path / 'one.png')!r})\n"
            "print(json.dumps({'label': r['label'], 'backend': p.info['backend'], "
            "'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"label": 1, "backend": "onnxruntime", "torch": False}
