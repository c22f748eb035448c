"""evaluate_model / evaluate_run and the ``digitlab evaluate`` command on a saved, briefly trained CNN."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn import metrics as skm
from torch import nn

from digitlab.checkpoint import dataset_of as run_dataset_name
from digitlab.cli import main
from digitlab.evaluate import evaluate_logits, evaluate_model, evaluate_run, predict_logits
from inference_support import train_cnn

LIMIT = 1000


@pytest.fixture(scope="module")
def ds(mnist):
    """The real MNIST dataset (session fixture ``mnist`` in conftest.py; fails if the data is missing)."""
    return mnist


@pytest.fixture(scope="module")
def run_dir(ds, tmp_path_factory):
    """A run directory with cnn-simple after 100 Adam steps (the real checkpoint format)."""
    from digitlab.checkpoint import build_meta, save_run_checkpoint

    model = train_cnn(ds)
    path = tmp_path_factory.mktemp("run")
    save_run_checkpoint(path, model.eval(), build_meta(model, data={"dataset": "mnist"}))
    return path


EXPECTED_KEYS = {
    "n", "num_classes", "class_names", "accuracy", "loss", "log_loss", "top3", "top5", "ece", "macro_avg",
    "weighted_avg", "per_class", "confusion_matrix", "confusion_matrix_normalized", "top_confusions",
    "reliability", "classification_report", "parameters", "checkpoint_bytes", "predict_seconds",
    "latency_ms_p50", "latency_ms_p95", "throughput_per_s", "speed", "temperature", "ece_uncalibrated",
    "loss_uncalibrated",
}


def test_evaluate_run_matches_direct_computation(run_dir, ds):
    from digitlab.checkpoint import load_checkpoint

    evaluation = evaluate_run(run_dir, split="test", limit=LIMIT, speed_repeats=3, batch_size=256)
    assert evaluation.quality.accuracy == evaluation.accuracy  # typed fields...
    res = evaluation.to_dict()  # ...and the JSON view with the same numbers
    assert EXPECTED_KEYS | {"model", "model_kwargs", "checkpoint", "dataset", "split"} == set(res)
    assert res["model"] == "cnn-simple" and res["dataset"] == "mnist" and res["n"] == LIMIT
    json.dumps(res, allow_nan=False)  # strictly JSON-able
    model, _ = load_checkpoint(run_dir)
    logits = predict_logits(model, ds.test_images[:LIMIT]).double()
    labels = ds.test_labels[:LIMIT].numpy()
    preds = logits.argmax(1).numpy()
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds))
    assert res["accuracy"] > 0.8  # 100 training steps reach ~90%
    assert res["loss"] == pytest.approx(nn.functional.cross_entropy(logits, ds.test_labels[:LIMIT]).item(),
                                        rel=1e-6)
    assert res["top5"] >= res["top3"] >= res["accuracy"]
    assert np.array(res["confusion_matrix"]).sum() == LIMIT
    assert res["confusion_matrix"] == skm.confusion_matrix(labels, preds, labels=list(range(10))).tolist()
    assert [r["support"] for r in res["per_class"]] == np.bincount(labels, minlength=10).tolist()
    assert res["parameters"] == 93322
    assert res["checkpoint_bytes"] == (run_dir / "model.safetensors").stat().st_size
    assert res["latency_ms_p50"] > 0 and res["latency_ms_p95"] >= res["latency_ms_p50"]
    assert res["throughput_per_s"] > 0 and res["predict_seconds"] > 0
    assert res["speed"]["latency_repeats"] == 3
    assert "weighted avg" in res["classification_report"]


def test_evaluate_model_without_speed_and_train_split(run_dir, ds):
    from digitlab.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run_dir)
    res = evaluate_model(model, ds.train_images[:500], ds.train_labels[:500], speed=False).to_dict()
    assert res["latency_ms_p50"] is None and res["throughput_per_s"] is None and res["speed"] is None
    assert res["checkpoint_bytes"] is None and res["class_names"] == [str(i) for i in range(10)]
    train = evaluate_run(run_dir, split="train", limit=500, speed=False)
    assert train.split == "train" and train.accuracy == pytest.approx(res["accuracy"])


def test_evaluate_logits_on_random_model_is_chance_level():
    # untrained weights on random images: accuracy near 10%, ECE defined, everything JSON-able
    torch.manual_seed(0)
    logits = torch.randn(2000, 10) * 0.1
    labels = torch.randint(0, 10, (2000,))
    res = evaluate_logits(logits, labels)
    assert 0.05 < res["accuracy"] < 0.15
    assert res["loss"] == pytest.approx(np.log(10), rel=0.01)
    json.dumps(res, allow_nan=False)


def test_run_dataset_name_reads_meta():
    assert run_dataset_name({"data": {"dataset": "fashion-mnist"}}) == "fashion-mnist"
    assert run_dataset_name({"config": {"dataset": "fashion-mnist"}}) == "fashion-mnist"
    assert run_dataset_name({"config": {"data": {"dataset": "fashion-mnist"}}}) == "fashion-mnist"
    assert run_dataset_name({}) == "mnist"


def test_cli_json(run_dir, capsys):
    code = main(["evaluate", str(run_dir), "--json", "--no-speed", "--limit", str(LIMIT)])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"accuracy", "loss"} <= set(out)
    assert out["n"] == LIMIT and out["latency_ms_p50"] is None and out["accuracy"] > 0.8


def test_cli_model_positional_or_option_and_default(run_dir, capsys):
    args = ["--json", "--no-speed", "--limit", "200"]
    assert main(["evaluate", "--model", str(run_dir), *args]) == 0
    by_option = json.loads(capsys.readouterr().out)
    assert main(["evaluate", str(run_dir), *args]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == by_option["accuracy"]
    assert main(["evaluate", str(run_dir), "--model", "default", *args]) == 2  # two different models
    assert "given twice" in capsys.readouterr().err
    # the shipped model, on its own dataset
    assert main(["evaluate", "default", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "mnist" and out["accuracy"] > 0.98 and out["n"] == 200


def test_cli_text_summary(run_dir, capsys):
    code = main(["evaluate", str(run_dir / "model.safetensors"), "--limit", "500", "--speed-repeats", "2"])
    assert code == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "loss" in out and "latency" in out
    assert "precision" in out and "most confused" in out
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) >= 10  # class rows


def test_cli_plots(run_dir, tmp_path, capsys):
    plots = tmp_path / "plots"
    assert main(["evaluate", str(run_dir), "--no-speed", "--limit", "500", "--plots", str(plots),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["confusion_matrix.png", "per_class.png", "reliability.png"]
    assert len(out["plots"]) == 3
    for p in plots.iterdir():
        assert p.read_bytes()[:4] == b"\x89PNG"
    # an existing, non-empty plots folder is never overwritten
    assert main(["evaluate", str(run_dir), "--no-speed", "--limit", "10", "--plots", str(plots)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error:") and "already exists" in err


def test_cli_not_a_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error:") and str(tmp_path) in err and len(err.splitlines()) == 1
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    assert main(["evaluate", str(junk), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.safetensors" in err and len(err.splitlines()) == 1


def test_cli_entry_point_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "digitlab", "evaluate", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert proc.returncode == 2
    assert proc.stderr.startswith("digitlab: error:") and "Traceback" not in proc.stderr


def test_evaluate_default_reports_calibrated_and_uncalibrated_ece(ds, capsys):
    """The shipped model carries a temperature: evaluate scores softmax(logits / T) and keeps the raw ECE."""
    from digitlab.checkpoint import load_checkpoint
    from digitlab.evaluate import expected_calibration_error, softmax

    assert main(["evaluate", "default", "--limit", "2000", "--no-speed", "--json", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    model, meta = load_checkpoint("default")
    t = meta["calibration"]["temperature"]
    assert res["temperature"] == t and 0 < t < 1  # label smoothing made it under-confident
    z = predict_logits(model, ds.test_images[:2000]).double().numpy()
    y = ds.test_labels[:2000].numpy()
    assert res["ece_uncalibrated"] == pytest.approx(expected_calibration_error(softmax(z), y))
    assert res["ece"] == pytest.approx(expected_calibration_error(softmax(z / t), y))
    assert res["ece"] < res["ece_uncalibrated"] / 5
    assert res["accuracy"] == pytest.approx(float((z.argmax(1) == y).mean()))  # T never changes a label
    assert res["loss"] < res["loss_uncalibrated"]


def test_evaluate_run_without_calibration_is_unchanged(run_dir):
    res = evaluate_run(run_dir, limit=300, speed=False).to_dict()
    assert res["temperature"] == 1.0
    assert res["ece"] == pytest.approx(res["ece_uncalibrated"])
    assert res["loss"] == pytest.approx(res["loss_uncalibrated"])
