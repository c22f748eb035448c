"""Every command honours the dataset a model was trained on: bench, export, ensemble, predict, serve on Fashion-MNIST.

The Fashion-MNIST model is made by ``digitlab bench fast --dataset fashion-mnist`` itself
(190 steps, a few seconds), which is the first thing under test.
"""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from digitlab.checkpoint import dataset_of, load_checkpoint, read_meta, resolve_dataset
from digitlab.cli import main
from digitlab.data.registry import FASHION_MNIST, MNIST
from digitlab.inference import load_predictor
from digitlab.models.forward import predict_logits


@pytest.fixture(scope="module")
def fashion_bench(fashion, tmp_path_factory):
    """``digitlab bench fast --dataset fashion-mnist --seeds 1 --json`` with the run kept: (JSON, run dir)."""
    import contextlib

    out = tmp_path_factory.mktemp("fashion-bench") / "runs"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["bench", "fast", "--dataset", "fashion-mnist", "--seeds", "1", "--json", "--quiet",
                     "--out", str(out)])
    assert code == 0
    result = json.loads(buf.getvalue())
    return result, Path(result["runs"][0]["run_dir"])


def test_bench_trains_and_scores_on_fashion_mnist(fashion_bench, fashion):
    result, run = fashion_bench
    assert result["dataset"] == "fashion-mnist"
    assert "dataset: fashion-mnist" in (run / "config.yaml").read_text()
    meta = read_meta(run)
    assert dataset_of(meta) == "fashion-mnist" and meta["data"]["checksums"] == fashion.checksums
    # the reported accuracy is the model's accuracy on the Fashion-MNIST test set (not MNIST's)
    model, _ = load_checkpoint(run)
    pred = predict_logits(model, fashion.test_images).argmax(1)
    accuracy = float((pred == fashion.test_labels).float().mean())
    assert result["runs"][0]["test_accuracy"] == pytest.approx(accuracy, abs=1e-4)
    assert 0.75 < accuracy < 0.97  # a Fashion-MNIST figure: MNIST models score ~99%, MNIST-on-fashion ~10%


def test_plain_loop_uses_the_dataset_it_is_given(fashion):
    from digitlab.bench.plain import PLAIN, train_plain
    from digitlab.data import Dataset

    small = Dataset(fashion.name, fashion.spec, fashion.source, fashion.train_images[:3000],
                    fashion.train_labels[:3000], fashion.test_images[:1000], fashion.test_labels[:1000])
    result = train_plain(PLAIN, small, seed=0, device="cpu")
    assert 0.6 < result["test_accuracy"] < 0.95


def test_dataset_resolution_helpers():
    assert dataset_of({"config": {"dataset": "fashion-mnist"}}) == "fashion-mnist"
    assert dataset_of({"data": {"dataset": "fashion-mnist"}}) == "fashion-mnist"
    assert dataset_of({"config": {}}) == "mnist" and dataset_of({}) == "mnist"
    meta = {"config": {"dataset": "fashion-mnist"}}
    assert resolve_dataset(meta, None) == "fashion-mnist" and resolve_dataset(meta, "mnist") == "mnist"
    assert dataset_of(read_meta("default")) == "mnist"  # "default" is accepted wherever a checkpoint is
    assert FASHION_MNIST.digits is False and MNIST.digits is True


def test_export_verifies_on_the_runs_own_dataset(fashion_bench, fashion, tmp_path, capsys):
    result, run = fashion_bench

    def fashion_item() -> np.ndarray:
        return fashion.test_images[0].numpy()

    target = tmp_path / "fashion.onnx"
    old = os.umask(0o022)
    try:
        assert main(["export", str(run), "--format", "onnx", "--out", str(target), "--json", "--quiet"]) == 0
    finally:
        os.umask(old)
    report = json.loads(capsys.readouterr().out)
    assert report["dataset"] == "fashion-mnist" and report["verification"]["dataset"] == "fashion-mnist"
    assert report["verification"]["images"] == 10_000
    assert report["verification"]["accuracy_torch"] == pytest.approx(result["runs"][0]["test_accuracy"], abs=1e-4)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # readable by other users like every output
    # the text report names the dataset too
    assert main(["export", str(run), "--out", str(tmp_path / "b.onnx"), "--quiet"]) == 0
    assert "10000 fashion-mnist test images" in capsys.readouterr().out
    # the ONNX file still knows its dataset: class names through the ONNX backend
    onnx_pred = load_predictor(target)
    assert onnx_pred.dataset == "fashion-mnist" and onnx_pred.class_names == FASHION_MNIST.class_names
    # ...and runs a picture without importing torch at all (the light path for ONNX models)
    import subprocess
    import sys

    png = tmp_path / "item.png"
    png.write_bytes(_render_item(fashion_item(), np.random.default_rng(3), 0))
    script = ("import sys\nfrom digitlab.inference.predictor import load_predictor\n"
              "r = load_predictor(sys.argv[1]).predict_image(sys.argv[2])\n"
              "print(r['name'], 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", script, str(target), str(png)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out[-1] == "False" and " ".join(out[:-1]) in FASHION_MNIST.class_names


def test_export_default_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["export", "default", "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnx"]["path"] == "default.onnx" and (tmp_path / "default.onnx").is_file()
    assert report["dataset"] == "mnist"
    assert main(["export", "--model", "default", "--out", "again.onnx", "--no-verify"]) == 0
    assert main(["export"]) == 2
    assert "give the model" in capsys.readouterr().err


def test_ensemble_uses_the_members_dataset_and_refuses_mixed_ones(fashion_bench, fashion, tmp_path, capsys):
    _, run = fashion_bench
    assert main(["ensemble", str(run), str(run), "--json", "--plots", str(tmp_path / "figs")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "fashion-mnist" and result["class_names"] == list(FASHION_MNIST.class_names)
    model, _ = load_checkpoint(run)
    accuracy = float((predict_logits(model, fashion.test_images).argmax(1) == fashion.test_labels).float().mean())
    assert result["accuracy"] == pytest.approx(accuracy) and result["members"][0]["accuracy"] == pytest.approx(accuracy)
    assert (tmp_path / "figs" / "mistakes.png").read_bytes().startswith(b"\x89PNG")
    first = result["mistakes"][0]
    assert first["name"] == FASHION_MNIST.class_names[first["label"]]
    assert first["prediction_name"] == FASHION_MNIST.class_names[first["prediction"]]
    # an MNIST model and a Fashion-MNIST model are not an ensemble: one line, exit 2
    assert main(["ensemble", "default", str(run)]) == 2
    err = capsys.readouterr().err
    assert "different datasets" in err and "fashion-mnist" in err and len(err.strip().splitlines()) == 1


def _render_item(item: np.ndarray, rng: np.random.Generator, kind: int) -> bytes:
    """A Fashion-MNIST item as a product photo: dark-on-white (inverted back), upscaled, off-centre."""
    s = int(rng.integers(84, 200))
    buf = io.BytesIO()
    if kind == 2:  # already in dataset form: light object on black, just larger
        Image.fromarray(item).resize((s, s), Image.Resampling.BICUBIC).save(buf, "PNG")
        return buf.getvalue()
    big = Image.fromarray(255 - item).resize((s, s), Image.Resampling.BICUBIC)
    w, h = s + int(rng.integers(10, 120)), s + int(rng.integers(10, 120))
    canvas = Image.new("L", (w, h), 255)
    canvas.paste(big, (int(rng.integers(0, w - s)), int(rng.integers(0, h - s))))
    canvas.convert("RGB").save(buf, "PNG" if kind == 0 else "JPEG", quality=85)
    return buf.getvalue()


def test_pictures_of_clothing_are_fitted_not_digit_cleaned(fashion_bench, fashion):
    """predict_image on rendered Fashion test items is about as accurate as predict(arrays)."""
    _, run = fashion_bench
    predictor = load_predictor(run, device="cpu")
    assert predictor.dataset == "fashion-mnist" and not predictor.digits
    rng = np.random.default_rng(0)
    idx = rng.choice(fashion.test_images.shape[0], 150, replace=False)
    items, truth = fashion.test_images.numpy()[idx], fashion.test_labels.numpy()[idx]
    labels_arrays, _ = predictor.predict(items)
    results = [predictor.predict_image(_render_item(it, rng, i % 3)) for i, it in enumerate(items)]
    labels_images = np.array([r["label"] for r in results])
    acc_arrays, acc_images = (labels_arrays == truth).mean(), (labels_images == truth).mean()
    assert acc_images >= acc_arrays - 0.05, (acc_images, acc_arrays)
    assert (labels_images == labels_arrays).mean() >= 0.85
    assert all(r["name"] == FASHION_MNIST.class_names[r["label"]] for r in results)
    # the digit clean-up would have wrecked them (the issue measured 30.7% vs 83.3%)
    from digitlab.inference.preprocess import to_mnist

    digit_cleaned = np.stack([to_mnist(_render_item(it, rng, 0)) for it in items[:60]])
    assert (predictor.predict(digit_cleaned)[0] == truth[:60]).mean() < acc_images - 0.15


def test_predict_cli_gives_class_names(fashion_bench, fashion, tmp_path, capsys):
    _, run = fashion_bench
    rng = np.random.default_rng(1)
    items = fashion.test_images.numpy()[:4]
    for i, it in enumerate(items):
        (tmp_path / f"item{i}.png").write_bytes(_render_item(it, rng, 0))
    assert main(["predict", str(tmp_path), "--model", str(run), "--json", "--top-k", "2"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 4
    for r in records:
        assert isinstance(r["label"], int) and r["name"] == FASHION_MNIST.class_names[r["label"]]
        assert r["top_k"][0]["name"] == r["name"]
    assert main(["predict", str(tmp_path / "item0.png"), "--model", str(run)]) == 0
    line = capsys.readouterr().out.strip()
    assert any(f": {name}  (" in line for name in FASHION_MNIST.class_names), line


def test_serve_gives_class_names(fashion_bench, fashion):
    from fastapi.testclient import TestClient

    from digitlab.serve import create_app

    _, run = fashion_bench
    predictor = load_predictor(run, device="cpu")
    item = fashion.test_images[0].numpy()
    with TestClient(create_app(predictor)) as client:
        models = client.get("/api/models").json()["models"][0]
        assert models["dataset"] == "fashion-mnist" and models["class_names"] == list(FASHION_MNIST.class_names)
        body = client.post("/api/predict", json={"pixels": item.tolist()}).json()
        assert body["name"] == FASHION_MNIST.class_names[body["label"]]
        assert body["label"] == int(predictor.predict(item)[0][0])
        png = _render_item(item, np.random.default_rng(2), 0)
        body = client.post("/api/predict", files={"file": ("item.png", png, "image/png")}).json()
        assert body["name"] == FASHION_MNIST.class_names[body["label"]]
