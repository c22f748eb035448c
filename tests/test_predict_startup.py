"""``digitlab predict one.png`` without torch: the shipped default model and .onnx files run on onnxruntime.

Each case runs the real command line (``python -m digitlab``) in a fresh interpreter and checks
``sys.modules`` afterwards: importing torch costs more than a second, three times what the
whole one-picture prediction may take (issue 15; ``scripts/measure_predict_startup.py`` times it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from inference_support import digit_png

RUN_CLI = """
import runpy, sys
sys.argv = ["digitlab", *sys.argv[1:]]
try:
    runpy.run_module("digitlab", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "torchvision", "onnx", "fastapi", "uvicorn", "pandas", "matplotlib")
               if m in sys.modules)
print(json.dumps({"code": code, "heavy": heavy, "onnxruntime": "onnxruntime" in sys.modules}))
""".replace("import runpy, sys", "import json, runpy, sys")


def _run(*argv: str) -> tuple[list[dict], dict]:
    proc = subprocess.run([sys.executable, "-c", RUN_CLI, *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return [json.loads(line) for line in lines[:-1]], json.loads(lines[-1])


@pytest.fixture(scope="module")
def picture(tmp_path_factory, mnist):
    path = tmp_path_factory.mktemp("startup") / "digit.png"
    path.write_bytes(digit_png(mnist.test_images[0].numpy(), size=112))
    return path, int(mnist.test_labels[0])


@pytest.fixture(scope="module")
def onnx_model(run_dir, tmp_path_factory):
    from digitlab.inference import export_onnx

    out = tmp_path_factory.mktemp("startup-onnx") / "model.onnx"
    export_onnx(run_dir, out, verify=False)
    return out


def test_default_model_predicts_one_picture_without_torch(picture):
    from digitlab.inference.predictor import DEFAULT_ONNX_PATH

    assert DEFAULT_ONNX_PATH.is_file(), f"the shipped model's ONNX copy {DEFAULT_ONNX_PATH} is missing"
    path, label = picture
    records, state = _run("predict", str(path), "--json")
    assert state == {"code": 0, "heavy": [], "onnxruntime": True}
    assert records[0]["label"] == label and records[0]["confidence"] > 0.9


def test_default_model_reads_a_number_without_torch(picture, tmp_path, mnist):
    import numpy as np

    from digitlab.data.pictures import number_picture

    page = tmp_path / "page.png"
    page.write_bytes(number_picture([mnist.test_images[i].numpy() for i in (0, 1)], np.random.default_rng(0)))
    records, state = _run("predict", str(page), "--number", "--json")
    assert state == {"code": 0, "heavy": [], "onnxruntime": True}
    assert records[0]["number"] == "".join(str(int(mnist.test_labels[i])) for i in (0, 1))


def test_onnx_file_predicts_without_torch(picture, onnx_model, predictor):
    path, _ = picture
    records, state = _run("predict", str(path), "--model", str(onnx_model), "--json")
    assert state == {"code": 0, "heavy": [], "onnxruntime": True}
    expected = predictor.predict_image(path)  # the PyTorch model it was exported from
    assert records[0]["label"] == expected["label"]
    assert records[0]["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-4)


def test_a_checkpoint_still_runs_on_torch(picture, run_dir):
    path, _ = picture
    records, state = _run("predict", str(path), "--model", str(run_dir), "--json")
    assert state["code"] == 0 and "torch" in state["heavy"]
    assert records[0]["label"] is not None
