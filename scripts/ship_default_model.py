"""Package a finished run as the model shipped inside digitlab (``load_model("default")``).

    python scripts/ship_default_model.py RUN_DIR [--min-accuracy 0.995] [--max-bytes 2000000] [--replace]
    python scripts/ship_default_model.py --update      # re-derive the shipped model's metadata and ONNX copy

Re-measures the run's test accuracy on its own dataset (it does not trust the stored number),
checks the size limit, fits the calibration temperature, and writes
src/digitlab/pretrained/default.safetensors with the measurement and the temperature added to
its metadata (plus the weights' SHA-256, checked on every load), default.json (the same
metadata, readable), mnist-shape.safetensors (the pixel statistics of the not-a-digit test,
``digitlab.inference.reject``, fitted on the MNIST training split) and default.onnx (the same
model for ONNX Runtime, carrying the same metadata: ``load_predictor("default", prefer_onnx=True)``
runs it without torch). Refuses to overwrite an existing shipped model unless --replace is given.

``--update`` keeps the shipped weights (the tensors are re-written byte for byte, which the
script verifies) and only re-derives what comes from them: the temperature, the weights hash,
default.json, default.onnx and the shape statistics.

The feature statistics of the not-a-digit test (``mnist-default-features.safetensors``) belong to
one set of weights (they record its hash): after shipping new weights, refit them with
``python scripts/fit_reject.py --write --onnx``; until then the pixel rule alone applies.

The temperature is fitted on the validation split the model's own training config held out
(``make_splits(dataset, config.val_fraction, config.seed).val``), never on the test set. When
the run held out none (``val_fraction: 0``, as the shipped best-cnn run, which trained on all
60,000 images), it is fitted on the split ``digitlab train`` holds out by default
(``val_fraction`` 0.1, same seed); those images were seen in training, which the metadata says
(``fitted_on: "train-subset"`` and a note), and the test-set ECE printed afterwards is the check.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from digitlab.checkpoint import WEIGHTS_HASH_KEY, dataset_of, load_checkpoint, save_checkpoint, weights_sha256
from digitlab.data import load_dataset, make_splits
from digitlab.evaluate.calibration import TemperatureFit, calibrate, expected_calibration_error
from digitlab.evaluate.evaluator import score_logits
from digitlab.models.forward import predict_logits
from digitlab.numerics import softmax
from digitlab.utils import write_bytes_atomic, write_json_atomic

TARGET = Path(__file__).resolve().parent.parent / "src" / "digitlab" / "pretrained"
FALLBACK_VAL_FRACTION = 0.1
"""``digitlab train``'s default validation fraction: the split used when the run held out none."""


def fit_shipped_temperature(model: Any, meta: dict[str, Any], ds: Any) -> TemperatureFit:
    """The calibration of a model about to be shipped (see the module docstring for the data)."""
    cfg = meta.get("config", {})
    seed = int(cfg.get("seed", 0))
    val = make_splits(ds, float(cfg.get("val_fraction", 0.0)), seed).val
    fitted_on, note = "validation", None
    if val is None or len(val) == 0:
        val = make_splits(ds, FALLBACK_VAL_FRACTION, seed).val
        fitted_on = "train-subset"
        note = (f"the run trained on every training image (val_fraction 0): fitted on the stratified "
                f"{FALLBACK_VAL_FRACTION:g} split of the training set (seed {seed}) that digitlab train holds "
                "out by default; these images were seen in training")
    assert val is not None
    logits = predict_logits(model, val.images).double().numpy()
    return calibrate(logits, val.labels.numpy(), fitted_on=fitted_on, note=note)


def _data_section(path: Path) -> bytes:
    """The tensor bytes of a safetensors file (everything after its JSON header)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return raw[8 + n:]


def write_onnx(dest: Path, data_dir: str | None) -> dict[str, Any]:
    """Export the shipped checkpoint to ``dest`` (ONNX, same metadata); returns the export report."""
    from digitlab.inference.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "default.onnx"
        report = export_onnx("default", out, verify=True, data_dir=data_dir)
        write_bytes_atomic(dest, out.read_bytes())
    report["onnx"] = {**report.get("onnx", {}), "path": str(dest)}
    return report


def write_shape_model(data_dir: str | None) -> Path:
    """Fit the not-a-digit test's pixel statistics on MNIST's training split (never the validation split its
    thresholds were chosen on, never the test set) and ship them."""
    from digitlab.inference.reject import fit_shape_model, shape_model_path

    train = make_splits(load_dataset("mnist", data_dir, progress=False), FALLBACK_VAL_FRACTION, 0).train
    path = shape_model_path("mnist")
    fit_shape_model(train.images.numpy(), train.labels.numpy()).save(path)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", help="finished run directory (or .safetensors checkpoint) to ship")
    ap.add_argument("--update", action="store_true",
                    help="keep the shipped weights; re-derive its temperature, hash, default.json and default.onnx")
    ap.add_argument("--min-accuracy", type=float, default=0.995, help="refuse below this measured test accuracy")
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="refuse a checkpoint larger than this")
    ap.add_argument("--replace", action="store_true", help="overwrite the shipped model")
    ap.add_argument("--data-dir", help="folder with the dataset's four IDX files (default: the usual search)")
    args = ap.parse_args()
    if bool(args.run) == bool(args.update):
        ap.error("give either RUN or --update")
    dest = TARGET / "default.safetensors"
    if args.run and dest.exists() and not args.replace:
        sys.exit(f"{dest} exists; pass --replace to overwrite it")
    source = "default" if args.update else args.run
    model, meta = load_checkpoint(source)
    dataset = dataset_of(meta)
    ds = load_dataset(dataset, args.data_dir, progress=False)
    test_logits = predict_logits(model, ds.test_images)
    result = score_logits(test_logits, ds.test_labels)
    accuracy = result.accuracy
    print(f"{source}: {dataset} test accuracy {accuracy:.4f} ({result.n} images), loss {result.loss:.4f}")
    if accuracy < args.min_accuracy:
        sys.exit(f"accuracy {accuracy:.4f} is below the required {args.min_accuracy}")
    fit = fit_shipped_temperature(model, meta, ds)
    z, y = test_logits.double().numpy(), ds.test_labels.numpy()
    check = {"ece_test_before": expected_calibration_error(softmax(z), y),
             "ece_test_after": expected_calibration_error(softmax(z / fit.temperature), y)}
    print(f"temperature {fit.temperature:.4f} fitted on {fit.n} images ({fit.fitted_on}); "
          f"test ECE {check['ece_test_before']:.4f} -> {check['ece_test_after']:.4f}")
    meta["calibration"] = fit.to_dict()
    if not args.update:
        meta["shipped"] = {
            "source_run": str(Path(args.run).name),
            "measured_test_accuracy": accuracy, "measured_test_loss": result.loss,
            "measured_by": f"scripts/ship_default_model.py (re-evaluated on the {result.n:,} {dataset} test images)",
            "reproduce": f"digitlab train --config {meta['model']} --seed {meta['config'].get('seed', 0)}",
        }
    meta.pop(WEIGHTS_HASH_KEY, None)  # save_checkpoint records the hash of what it writes
    before = hashlib.sha256(_data_section(dest)).hexdigest() if args.update else None
    old_hash = weights_sha256(model.state_dict())
    TARGET.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, model, meta)
    size = dest.stat().st_size
    if size > args.max_bytes:
        dest.unlink()
        sys.exit(f"checkpoint is {size} bytes, over the {args.max_bytes} limit")
    _, stored = load_checkpoint("default")  # checks the recorded hash against the weights
    if stored.get(WEIGHTS_HASH_KEY) != old_hash:
        sys.exit("the re-written checkpoint's weights hash differs from the source's")
    if before is not None and hashlib.sha256(_data_section(dest)).hexdigest() != before:
        sys.exit("the re-written checkpoint's tensor bytes differ from the shipped ones")
    write_json_atomic(TARGET / "default.json", stored)
    report = write_onnx(TARGET / "default.onnx", args.data_dir)
    from digitlab.inference.reject import add_features_output

    add_features_output(TARGET / "default.onnx")  # the not-a-digit test reads the penultimate features
    shape_path = write_shape_model(args.data_dir)
    print(json.dumps({"checkpoint": str(dest), "bytes": size, "weights_sha256": old_hash,
                      "tensor_bytes_unchanged": before is not None or None,
                      "calibration": fit.to_dict(), **check,
                      "onnx": report.get("onnx"), "shape_model": str(shape_path),
                      "onnx_verification": report.get("verification")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
