"""``digitlab export``: ONNX fp32 + int8, verified against PyTorch on the MNIST test set."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from digitlab.cli import main
from digitlab.errors import ConfigError, RunExistsError
from digitlab.inference import load_predictor
from digitlab.inference.export import benchmark_inference, export_onnx, int8_path
from inference_support import torch_threads


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory, mnist_dir):
    out = tmp_path_factory.mktemp("export") / "digits.onnx"
    with torch_threads(1):
        report = export_onnx(run_dir, out, quantize="int8", data_dir=str(mnist_dir))
    return out, report


def test_fp32_matches_pytorch_on_the_test_set(exported):
    out, report = exported
    assert report["exporter"] in ("dynamo", "torchscript")
    v = report["verification"]
    assert v["images"] == 10_000 and v["split"] == "test"
    assert v["argmax_agreement"] >= 0.999
    assert v["max_abs_prob_diff"] < 1e-3
    assert abs(v["accuracy"] - v["accuracy_torch"]) <= 0.001
    assert out.is_file() and report["onnx"]["bytes"] == out.stat().st_size
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    meta = json.loads({p.key: p.value for p in model.metadata_props}["digitlab"])
    assert meta["model"] == "cnn-simple" and meta["export"]["exporter"] == report["exporter"]
    json.dumps(report)


def test_int8_accuracy_and_size(exported):
    out, report = exported
    q = report["int8"]
    assert q["path"] == str(int8_path(out)) and int8_path(out).is_file()
    assert abs(q["accuracy_change_points"]) <= 1.0, q
    assert q["argmax_agreement_with_torch"] >= 0.98
    assert q["bytes"] < 0.5 * report["onnx"]["bytes"], q
    ops = {n.op_type for n in onnx.load(q["path"]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_onnx_predictor(exported, run_dir, mnist):
    out, _ = exported
    torch_pred, onnx_pred = load_predictor(run_dir), load_predictor(out)
    assert onnx_pred.info["backend"] == "onnxruntime" and onnx_pred.info["model"] == "cnn-simple"
    assert onnx_pred.info["metrics"]["test_accuracy"] == torch_pred.info["metrics"]["test_accuracy"]
    x = mnist.test_images[:537].numpy()  # any batch size: the batch axis is dynamic
    (l_t, p_t), (l_o, p_o) = torch_pred.predict(x), onnx_pred.predict(x)
    assert (l_t == l_o).all() and np.abs(p_t - p_o).max() < 1e-4
    assert onnx_pred.predict(x[0])[0][0] == l_t[0]
    q_labels = load_predictor(int8_path(out)).predict(x)[0]
    assert (q_labels == l_t).mean() > 0.97


def test_refuses_to_overwrite(exported, run_dir):
    out, _ = exported
    before = out.read_bytes()
    with pytest.raises(RunExistsError):
        export_onnx(run_dir, out, verify=False)
    with pytest.raises(ConfigError):
        export_onnx(run_dir, out.with_suffix(".txt"), verify=False)
    assert out.read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]  # no temp files left behind


def test_cli_export(run_dir, tmp_path, capsys):
    target = tmp_path / "cli.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(target), "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["onnx"]["path"] == str(target) and target.is_file()
    assert report["verification"]["inputs"] == "random" and report["verification"]["argmax_agreement"] == 1.0
    assert main(["export", str(run_dir), "--out", str(target), "--no-verify"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "no-run"), "--no-verify"]) == 2


def test_benchmark(exported, run_dir):
    out, report = exported
    b = benchmark_inference(run_dir, {"onnx-fp32": out, "onnx-int8": report["int8"]["path"]},
                            warmup=2, iters=20, min_seconds=0.05, batch_size=64)
    assert set(b["backends"]) == {"torch-eager", "onnx-fp32", "onnx-int8"}
    for r in b["backends"].values():
        assert 0 < r["batch1_p50_ms"] <= r["batch1_p95_ms"] and r["throughput_images_per_s"] > 0


def test_rerun_after_a_kill_between_the_two_writes_replaces_the_leftover(exported, run_dir, tmp_path, mnist_dir):
    """The int8 file is written first: a kill before the fp32 write leaves only it, and the rerun
    recognises it as half of an export of the same weights instead of refusing forever."""
    out, _ = exported
    leftover = tmp_path / int8_path(out).name
    leftover.write_bytes(int8_path(out).read_bytes())
    again = tmp_path / out.name
    with torch_threads(1):
        report = export_onnx(run_dir, again, quantize="int8", data_dir=str(mnist_dir), verify=False)
    assert report["int8"]["replaced_interrupted_export"] is True
    assert again.is_file() and onnx.load(str(leftover)) is not None


def test_an_unrelated_int8_file_is_not_replaced(run_dir, tmp_path, mnist_dir):
    out = tmp_path / "digits.onnx"
    int8_path(out).write_bytes(b"not an export of these weights")
    with pytest.raises(RunExistsError):
        export_onnx(run_dir, out, quantize="int8", data_dir=str(mnist_dir), verify=False)
    assert int8_path(out).read_bytes() == b"not an export of these weights" and not out.exists()
