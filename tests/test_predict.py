"""The Predictor API and ``digitlab predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import digitlab
from digitlab.cli import main
from digitlab.data import to_float
from digitlab.errors import CheckpointError, ImageError
from digitlab.inference import load_predictor
from digitlab.inference import predictor as predictor_mod
from digitlab.train.checkpoint import load_checkpoint
from inference_support import digit_png


@pytest.fixture(scope="module")
def confident(predictor, mnist):
    """Indices of 12 test digits the model gets right with > 99% confidence, several classes."""
    ds = mnist
    labels, probs = predictor.predict(ds.test_images[:300].numpy())
    ok = np.flatnonzero((labels == ds.test_labels[:300].numpy()) & (probs.max(1) > 0.99))
    assert len(ok) >= 12
    return ok[:12]


def test_predict_arrays(predictor, run_dir, mnist):
    ds = mnist
    x = ds.test_images[:1000].numpy()
    labels, probs = predictor.predict(x)
    assert labels.dtype == np.int64 and labels.shape == (1000,)
    assert probs.dtype == np.float32 and probs.shape == (1000, 10)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert (labels == probs.argmax(1)).all()
    # same answers as the checkpoint's model run directly
    model, _ = load_checkpoint(run_dir)
    with torch.inference_mode():
        direct = model(to_float(ds.test_images[:1000])).argmax(1).numpy()
    assert (labels == direct).all()
    assert (labels == ds.test_labels[:1000].numpy()).mean() > 0.85
    # one 28×28 image, a torch tensor, a float array, an empty batch
    one_label, one_probs = predictor.predict(x[0])
    assert one_label.shape == (1,) and one_label[0] == labels[0]
    np.testing.assert_allclose(one_probs[0], probs[0], atol=1e-6)
    assert predictor.predict(torch.from_numpy(x[:3]))[0].tolist() == labels[:3].tolist()
    assert predictor.predict(x[:3].astype(np.float64))[0].tolist() == labels[:3].tolist()
    assert predictor.predict(np.zeros((0, 28, 28), np.uint8))[1].shape == (0, 10)


@pytest.mark.parametrize("bad", [np.zeros((28, 27), np.uint8), np.zeros((2, 3, 28, 28)),
                                 np.full((28, 28), 300.0), np.full((28, 28), np.nan), np.array(["a"] * 784)])
def test_predict_rejects_bad_arrays(predictor, bad):
    with pytest.raises(ImageError):
        predictor.predict(bad)


def test_predict_image(predictor, confident, tmp_path, mnist):
    ds = mnist
    i = int(confident[0])
    digit, label = ds.test_images[i].numpy(), int(ds.test_labels[i])
    path = tmp_path / "digit.png"
    path.write_bytes(digit_png(digit, size=200))
    for src in (path, str(path), path.read_bytes(), Image.open(path)):
        r = predictor.predict_image(src)
        assert r["label"] == label
        assert 0.9 < r["confidence"] <= 1.0 and len(r["probabilities"]) == 10
        assert r["preprocessed"].shape == (28, 28) and r["preprocessed"].dtype == np.uint8
    top = predictor.predict_image(path, top_k=3)["top_k"]
    assert [t["label"] for t in top][0] == label and len(top) == 3
    assert top[0]["probability"] >= top[1]["probability"] >= top[2]["probability"]
    assert "blank" not in r
    assert predictor.predict_image(Image.new("L", (50, 50), 255))["blank"] is True
    with pytest.raises(ImageError):
        predictor.predict_image(b"not an image")


def test_info(predictor, run_dir):
    info = predictor.info
    assert info["model"] == "cnn-simple" and info["backend"] == "torch"
    assert info["source"] == str(run_dir)
    assert 0.85 < info["metrics"]["test_accuracy"] <= 1
    json.dumps(info)


def test_load_predictor_sources(run_dir, monkeypatch, tmp_path):
    p = load_predictor(run_dir / "model.safetensors")
    assert p.info["model"] == "cnn-simple"
    assert isinstance(digitlab.load_model(str(run_dir)), predictor_mod.Predictor)
    with pytest.raises(CheckpointError, match="no such model"):
        load_predictor(tmp_path / "nope")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError):
        load_predictor(tmp_path / "junk.safetensors")
    # "default" is the shipped model; a clear error while it is not installed
    monkeypatch.setattr(predictor_mod, "DEFAULT_MODEL_PATH", tmp_path / "missing" / "default.safetensors")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        load_predictor("default")
    monkeypatch.setattr(predictor_mod, "DEFAULT_MODEL_PATH", run_dir / "model.safetensors")
    assert load_predictor("default").info["source"] == "default"


# ------------------------------------------------------------------ CLI


@pytest.fixture()
def image_dir(tmp_path, confident, mnist):
    ds = mnist
    folder = tmp_path / "digits"
    folder.mkdir()
    expected = {}
    for k, i in enumerate(confident[:5]):
        name = f"d{k}_{int(ds.test_labels[i])}.png"
        (folder / name).write_bytes(digit_png(ds.test_images[i].numpy(), size=120))
        expected[name] = int(ds.test_labels[i])
    (folder / "broken.png").write_bytes(digit_png(ds.test_images[0].numpy())[:60])  # truncated
    (folder / "notes.txt").write_text("not an image, and not picked up from a directory")
    sub = folder / "more"
    sub.mkdir()
    (sub / "deep.png").write_bytes(digit_png(ds.test_images[int(confident[5])].numpy()))
    return folder, expected


def test_cli_predict_json(run_dir, image_dir, capsys):
    folder, expected = image_dir
    code = main(["predict", str(folder), "--model", str(run_dir), "--json", "--top-k", "3"])
    out = capsys.readouterr().out.splitlines()
    records = [json.loads(line) for line in out]
    names = [r["file"].rsplit("/", 1)[-1] for r in records]
    assert names == sorted(list(expected) + ["broken.png"])  # sorted, .txt and subfolder skipped
    assert code == 1
    for r in records:
        name = r["file"].rsplit("/", 1)[-1]
        if name == "broken.png":
            assert set(r) == {"file", "error"} and "truncated" in r["error"]
            continue
        assert r["label"] == expected[name]
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert r["confidence"] == max(r["probabilities"])
        assert len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"]


def test_cli_predict_recursive_and_human(run_dir, image_dir, capsys):
    folder, expected = image_dir
    (folder / "broken.png").unlink()
    assert main(["predict", str(folder), "--model", str(run_dir), "--recursive", "--json"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(expected) + 1  # + more/deep.png
    one = sorted(expected)[0]
    assert main(["predict", str(folder / one), "--model", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip().startswith(f"{folder / one}: {expected[one]}  (")
    # a file named explicitly that does not exist: error line, exit 1
    assert main(["predict", str(folder / one), str(folder / "missing.png"), "--model", str(run_dir)]) == 1
    captured = capsys.readouterr()
    assert "missing.png: error:" in captured.err and f"{expected[one]}  (" in captured.out


def test_cli_predict_usage_errors(run_dir, image_dir, tmp_path, capsys):
    folder, _ = image_dir
    assert main(["predict", str(folder), "--model", str(tmp_path / "no-such-run")]) == 2
    assert "digitlab: error:" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(empty), "--model", str(run_dir)]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["predict", str(folder), "--model", str(run_dir), "--top-k", "11"]) == 2
