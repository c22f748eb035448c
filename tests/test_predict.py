"""The Predictor API and ``digitlab predict``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import digitlab
from digitlab.checkpoint import load_checkpoint
from digitlab.cli import main
from digitlab.data import to_float
from digitlab.errors import CheckpointError, ImageError
from digitlab.inference import load_predictor
from digitlab.inference import predictor as predictor_mod
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
    assert predictor.predict(x[:3].astype(np.float64) / 255.0)[0].tolist() == labels[:3].tolist()
    assert predictor.predict(np.zeros((0, 28, 28), np.uint8))[1].shape == (0, 10)


def test_predict_accepts_every_documented_layout(predictor, mnist):
    """uint8 0..255 or float 0..1; 28×28, N×28×28, N×1×28×28, 784 and N×784 all give the same answers."""
    x = mnist.test_images[:2].numpy()
    labels, probs = predictor.predict(x)
    as_float = x.astype(np.float32) / 255.0
    for variant in (x[:, None], x.reshape(2, 784), as_float, as_float.reshape(2, 784), as_float[:, None],
                    torch.from_numpy(as_float), x.astype(np.int64)):
        got_labels, got_probs = predictor.predict(variant)
        assert got_labels.tolist() == labels.tolist()
        np.testing.assert_allclose(got_probs, probs, atol=1e-5)
    assert predictor.predict(x[0].reshape(784))[0].tolist() == labels[:1].tolist()
    assert predictor.predict(as_float[0])[0].tolist() == labels[:1].tolist()


def test_predict_refuses_floats_scaled_to_255_and_names_what_it_got(predictor, mnist):
    x = mnist.test_images[:2].numpy().astype(np.float64)
    with pytest.raises(ImageError, match=r"divide by 255") as err:
        predictor.predict(x)
    assert "(2, 28, 28)" in str(err.value) and "float64" in str(err.value)
    with pytest.raises(ImageError, match=r"shape \(3, 785\) and dtype uint8"):
        predictor.predict(np.zeros((3, 785), np.uint8))
    with pytest.raises(ImageError, match=r"NaN"):
        predictor.predict(np.full((28, 28), np.nan, np.float32))
    with pytest.raises(ImageError, match=r"dtype bool"):
        predictor.predict(np.zeros((28, 28), bool))
    with pytest.raises(ImageError, match=r"0\.\.255"):
        predictor.predict(np.full((28, 28), 256, np.int32))


@pytest.mark.parametrize("bad", [np.zeros((28, 27), np.uint8), np.zeros((2, 3, 28, 28)),
                                 np.full((28, 28), 300.0), np.full((28, 28), np.nan), np.array(["a"] * 784),
                                 np.full((28, 28), 2.0), np.full((28, 28), -0.1), np.zeros((2, 783))])
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
    assert "blank" not in r and "rejected" not in r
    blank = predictor.predict_image(Image.new("L", (50, 50), 255))
    assert blank["blank"] is True and blank["rejected"] == "blank"
    assert blank["label"] is None and blank["name"] is None and blank["confidence"] is None
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
    import digitlab.checkpoint as checkpoint_mod

    monkeypatch.setattr(checkpoint_mod, "DEFAULT_MODEL_PATH", tmp_path / "missing" / "default.safetensors")
    with pytest.raises(CheckpointError, match="default model is not installed"):
        load_predictor("default")
    monkeypatch.setattr(checkpoint_mod, "DEFAULT_MODEL_PATH", run_dir / "model.safetensors")
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
        assert r["label"] == expected[name] and r["name"] == str(expected[name])  # MNIST's names are the digits
        assert len(r["probabilities"]) == 10 and abs(sum(r["probabilities"]) - 1) < 1e-4
        assert r["confidence"] == max(r["probabilities"])
        assert len(r["top_k"]) == 3 and r["top_k"][0]["label"] == r["label"]
        assert r["top_k"][0]["name"] == r["name"]


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


# ------------------------------------------------------------------ issue 15: files that are not plain images


def test_cli_nan_tiff_is_an_error_record_not_an_abort(run_dir, image_dir, capsys):
    folder, expected = image_dir
    (folder / "broken.png").unlink()
    pixels = np.zeros((40, 40), np.float32)
    pixels[10:30, 18:22] = 1.0
    pixels[5, 5] = np.nan
    Image.fromarray(pixels, "F").save(folder / "nan.tiff")
    assert main(["predict", str(folder), "--model", str(run_dir), "--json"]) == 1
    records = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "NaN" in records["nan.tiff"]["error"]
    assert all(records[name]["label"] == label for name, label in expected.items())  # the others still read


def test_cli_fifo_and_symlink_loop_are_reported_not_hung_or_skipped(run_dir, image_dir, tmp_path, capsys):
    import os
    import subprocess
    import sys

    folder, expected = image_dir
    (folder / "broken.png").unlink()
    os.mkfifo(folder / "pipe.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    # named explicitly, a FIFO must not block the command (run in a subprocess with a timeout)
    proc = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(folder / "pipe.png"),
                           "--model", str(run_dir)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "not a regular file (a FIFO)" in proc.stderr, proc.stderr
    # inside a directory, both are reported as errors beside the real results
    assert main(["predict", str(folder), "--model", str(run_dir), "--json"]) == 1
    records = {r["file"].rsplit("/", 1)[-1]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert "FIFO" in records["pipe.png"]["error"]
    assert "symbolic links" in records["loop.png"]["error"] or "loop" in records["loop.png"]["error"]
    assert all(records[name]["label"] == label for name, label in expected.items())


# ------------------------------------------------------------------ optional extras


@pytest.mark.parametrize("argv, missing, extra", [
    (["export", "default", "--no-verify"], "onnx", "digitlab[onnx]"),
    (["serve"], "fastapi", "digitlab[serve]"),
    (["predict", "x.png", "--model", "model.onnx"], "onnxruntime", "digitlab[onnx]"),
])
def test_missing_extra_is_one_line_and_exit_2(argv, missing, extra, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without the package looks like
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and extra in err and repr(missing) in err, err


def test_load_model_onnx_without_onnxruntime(monkeypatch, tmp_path):
    import sys

    from digitlab.errors import MissingExtraError

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "m.onnx").write_bytes(b"not really")
    with pytest.raises(MissingExtraError, match=r"digitlab\[onnx\]"):
        digitlab.load_model(tmp_path / "m.onnx")


def test_default_predict_imports_no_optional_extra(tmp_path, mnist):
    """`import digitlab` and `digitlab predict` with the shipped model never touch onnx, torch or the web stack:
    with onnxruntime installed the shipped ONNX copy runs on it (the fast path), else torch does."""
    import subprocess
    import sys

    png = tmp_path / "seven.png"
    png.write_bytes(digit_png(mnist.test_images[0].numpy()))
    script = (
        "import sys\n"
        "import digitlab\n"
        "from digitlab.cli import main\n"
        "code = main(['predict', sys.argv[1], '--json'])\n"
        "heavy = sorted(m for m in ('onnx', 'onnxruntime', 'onnxscript', 'fastapi', 'uvicorn', 'starlette')"
        " if m in sys.modules)\n"
        "print(code, heavy, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(png)], capture_output=True, text=True, timeout=120,
                         check=True).stdout.strip().splitlines()
    assert json.loads(out[0])["label"] == int(mnist.test_labels[0])
    from digitlab.inference.predictor import DEFAULT_ONNX_PATH, onnx_runtime_available

    if onnx_runtime_available() and DEFAULT_ONNX_PATH.is_file():
        assert out[-1] == "0 ['onnxruntime'] False"
    else:
        assert out[-1] == "0 [] True"


def test_my_commands_follow_the_option_vocabulary():
    """predict, serve, export, bench, ensemble: help on every option, examples, --device auto, no old names."""
    import argparse

    from digitlab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name in ("predict", "serve", "export", "bench", "ensemble"):
        p = sub.choices[name]
        options = {s: a for a in p._actions for s in a.option_strings}
        assert all(a.help for a in p._actions), name
        assert p.epilog and "examples:" in p.epilog, name
        assert options["--device"].default == "auto", name
        assert not {"--first-seed", "--plot", "--no-progress"} & set(options), name
        if name != "serve":
            assert "--json" in options, name
    assert {"--seeds", "--seed", "--quiet", "--out"} <= set(s for a in sub.choices["bench"]._actions
                                                           for s in a.option_strings)


# ------------------------------------------------------------------ issue 15: checkpoint integrity


def _tampered(src, dst, **changes) -> None:
    """Copy checkpoint ``src`` to ``dst`` with its metadata changed (weights untouched)."""
    from safetensors.torch import load_file, save_file

    from digitlab.checkpoint import META_KEY, read_meta

    meta = {**read_meta(src), **changes}
    save_file(load_file(str(src)), str(dst), metadata={META_KEY: json.dumps(meta)})


def test_checkpoint_integrity(tmp_path):
    from digitlab.checkpoint import read_meta, save_checkpoint, save_run_checkpoint, weights_sha256
    from digitlab.models import create_model
    from digitlab.train import build_meta

    torch.manual_seed(0)
    model = create_model("mlp-basic-128")
    run = tmp_path / "run"
    run.mkdir()
    path = save_run_checkpoint(run, model, build_meta(model))
    recorded = json.loads((run / "meta.json").read_text())["weights_sha256"]
    assert recorded == read_meta(path)["weights_sha256"] == weights_sha256(model.state_dict())
    loaded, _ = load_checkpoint(run)
    pairs = zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)

    # one flipped bit in the weights: refused (before it was a silent 9.8% model)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x01
    flipped = tmp_path / "flipped.safetensors"
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="do not match the hash"):
        load_checkpoint(flipped)
    assert main(["predict", "x.png", "--model", str(flipped)]) == 2

    # non-finite weights are refused even with a matching hash
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    nan_path = save_checkpoint(tmp_path / "nan.safetensors", model, build_meta(model))
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(nan_path)

    # edited metadata: checked before anything big is allocated, one-line errors
    for changes, words in (({"model_kwargs": {"num_classes": 10**8}}, "stores"),
                           ({"model_kwargs": {"num_classes": -5}}, "valid"),
                           ({"model_kwargs": [1, 2]}, "kwargs"),
                           ({"model": ["mlp"]}, "name the model")):
        bad = tmp_path / "bad.safetensors"
        _tampered(path, bad, **changes)
        with pytest.raises(CheckpointError, match=words):
            load_checkpoint(bad)
    # a checkpoint without a recorded hash (older runs, the shipped model) still loads
    _tampered(path, tmp_path / "old.safetensors", weights_sha256=None)
    assert load_checkpoint(tmp_path / "old.safetensors")[0] is not None


def _noisy_blank_page(seed: int, sigma: float = 6.0) -> Image.Image:
    rng = np.random.default_rng(seed)
    page = 230 + rng.normal(0, sigma, (200, 260))
    return Image.fromarray(page.clip(0, 255).astype(np.uint8))


def test_noisy_and_textured_blank_pages_get_no_label(predictor):
    """Sensor noise (σ = 6 grey levels on 230) used to be stretched into a filled square and read as a 0."""
    from digitlab.data.pictures import blank_picture

    pages = [_noisy_blank_page(s) for s in range(3)] + [blank_picture(np.random.default_rng(s)) for s in range(6)]
    for page in pages:
        r = predictor.predict_image(page)
        assert r["label"] is None and r["rejected"] == "blank", r.get("confidence")


def test_faint_but_real_digits_are_still_read(predictor, confident, mnist):
    """The blank test must not swallow real ink: a digit at 40% contrast on the same noisy paper is read."""
    i = int(confident[1])
    digit, label = mnist.test_images[i].numpy().astype(np.float32) / 255, int(mnist.test_labels[i])
    big = np.asarray(Image.fromarray((digit * 255).astype(np.uint8)).resize((140, 140), Image.Resampling.BICUBIC),
                     np.float32) / 255
    page = np.asarray(_noisy_blank_page(7), np.float32)
    page[30:170, 60:200] -= 0.4 * 230 * big
    r = predictor.predict_image(Image.fromarray(page.clip(0, 255).astype(np.uint8)))
    assert r["label"] == label


def test_cli_says_in_words_that_a_blank_page_has_no_digit(run_dir, tmp_path, capsys):
    path = tmp_path / "blank.png"
    _noisy_blank_page(1).save(path)
    assert main(["predict", str(path), "--model", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "no digit found" in out and "no label" in out
    assert main(["predict", str(path), "--model", str(run_dir), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["label"] is None and rec["rejected"] == "blank"
