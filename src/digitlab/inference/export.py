"""Export a trained model to ONNX (fp32, optionally int8) and verify it on the test set.

The exporter is torch's ``torch.export``-based ONNX exporter (``dynamo=True``,
the default since torch 2.9, opset 18, needs ``onnxscript``); if it cannot
capture a model we fall back to the legacy TorchScript exporter and say so in
the report. Either way the batch axis is dynamic, the graph is checked with
``onnx.checker`` (full check, with shape inference) and the result is compared
with the PyTorch model on the whole test set of the model's own dataset (from
its checkpoint metadata; ``dataset=`` overrides it): argmax agreement and the
largest probability difference. Needs the ``digitlab[onnx]`` extra.

int8 uses onnxruntime's static quantization (QDQ format, per-channel int8
weights, uint8 activations, MinMax calibration over training images) — for a
conv net this quantizes convolutions too, which dynamic quantization doesn't.

Outputs are written atomically (mode 0644 under the usual umask) and never
overwrite an existing file.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.checkpoint import (
    DEFAULT_MODEL,
    checkpoint_file,
    dataset_of,
    is_default,
    load_checkpoint,
    resolve_dataset,
    weights_sha256,
)
from digitlab.errors import CheckpointError, ConfigError
from digitlab.inference.predictor import ONNX_CLASSES_KEY, ONNX_META_KEY
from digitlab.numerics import softmax
from digitlab.utils import refuse_existing, write_bytes_atomic, write_new_bytes_atomic

__all__ = ["benchmark_inference", "default_onnx_path", "export_onnx", "int8_path"]

DEFAULT_OPSET = 18
INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
EXPORTERS = ("auto", "dynamo", "torchscript")

log = logging.getLogger(__name__)


def default_onnx_path(source: str | os.PathLike[str]) -> Path:
    """``RUN/model.onnx`` for a run directory, ``X.onnx`` next to ``X.safetensors``,
    ``default.onnx`` in the current folder for the shipped model (never inside the package)."""
    if is_default(source):
        return Path(f"{DEFAULT_MODEL}.onnx")
    return checkpoint_file(source).with_suffix(".onnx")


def require_onnx() -> None:
    """A one-line :class:`MissingExtraError` naming ``digitlab[onnx]`` when onnx or onnxruntime is missing."""
    from digitlab.cli import require_extra

    for module in ("onnx", "onnxruntime"):
        require_extra(module, "onnx")


def int8_path(onnx_path: str | os.PathLike[str]) -> Path:
    """``model.onnx`` → ``model.int8.onnx``."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".int8.onnx")


# --------------------------------------------------------------------------- export


def _quiet():
    """Silence the exporters' chatter (stdout prints, warnings, torchvision notices)."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    import warnings

    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    for name in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    return stack


def _export_proto(model: torch.nn.Module, opset: int, exporter: str):
    """Export to an in-memory ``onnx.ModelProto``; returns ``(proto, exporter used, fallback reason)``."""
    import onnx

    dummy = torch.zeros(2, 1, 28, 28)
    reason = None
    if exporter in ("auto", "dynamo"):
        try:
            with _quiet():
                program = torch.onnx.export(
                    model, (dummy,), None, dynamo=True, opset_version=opset,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1 << 20)},),
                    optimize=True, verbose=False)
            if program is None:
                raise CheckpointError("torch.onnx.export returned no program")
            return program.model_proto, "dynamo", None
        except Exception as exc:  # noqa: BLE001 - the exporter raises many error types
            if exporter == "dynamo":
                raise CheckpointError(f"torch.export-based ONNX export failed: {exc}") from None
            first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()[0]  # no ANSI colours
            reason = f"{type(exc).__name__}: {first[:300]}"
            log.warning("dynamo ONNX export failed (%s); falling back to the TorchScript exporter", reason)
    buf = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(model, (dummy,), buf, dynamo=False,  # type: ignore[arg-type]  # file-like opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"ONNX export failed with both exporters: {exc}") from None
    return onnx.load_from_string(buf.getvalue()), "torchscript", reason


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    """Store the checkpoint metadata so an ONNX file still says what model it is."""
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = ONNX_META_KEY
    entry.value = json.dumps(meta)
    proto.doc_string = f"digitlab {meta.get('model')}: N×1×28×28 float pixels in [0,1] -> N×10 logits"


def _interrupted_int8(out: Path, int8: Path, source_hash: str) -> bool:
    """Is ``int8`` the leftover of an interrupted export of these same weights?

    The int8 file is written first and the fp32 file last, so an int8 file without its fp32
    partner whose metadata names the same source weights is half of an export that was killed
    in between; the rerun replaces it (it would write the same model), anything else is refused.
    """
    if out.exists() or not int8.is_file():
        return False
    try:
        import onnx

        proto = onnx.load(str(int8), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        meta = json.loads(props.get(ONNX_META_KEY, "{}"))
    except Exception:  # noqa: BLE001 - not a readable digitlab ONNX file: not ours to replace
        return False
    export = meta.get("export") if isinstance(meta, dict) else None
    return isinstance(export, dict) and export.get("weights_sha256") == source_hash


def _session(path_or_bytes: Path | bytes, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    src = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(src, sess_options=opts, providers=["CPUExecutionProvider"])


def _ort_probs(session, x: np.ndarray, batch: int = 1000) -> np.ndarray:
    return softmax(np.concatenate([session.run(None, {INPUT_NAME: x[i:i + batch]})[0]
                                   for i in range(0, x.shape[0], batch)]))


def _torch_probs(model: torch.nn.Module, x: np.ndarray, batch: int = 1000, device: str = "cpu") -> np.ndarray:
    from digitlab.models.forward import predict_proba  # the one batched forward pass

    try:
        return predict_proba(model, torch.from_numpy(x), batch, device=device).numpy().astype(np.float64)
    finally:
        model.to("cpu")


def _compare(ref: np.ndarray, probs: np.ndarray, labels: np.ndarray | None) -> dict[str, Any]:
    out = {"argmax_agreement": float((ref.argmax(1) == probs.argmax(1)).mean()),
           "max_abs_prob_diff": float(np.abs(ref - probs).max()),
           "mean_abs_prob_diff": float(np.abs(ref - probs).mean())}
    if labels is not None:
        out["accuracy"] = float((probs.argmax(1) == labels).mean())
    return out


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime.quantization (duck-types CalibrationDataReader)."""

    def __init__(self, x: np.ndarray, batch: int = 100) -> None:
        self._batches = iter([{INPUT_NAME: x[i:i + batch]} for i in range(0, x.shape[0], batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)

    def __iter__(self):
        return self

    def __next__(self):
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _quantize_int8(fp32_bytes: bytes, calib: np.ndarray) -> bytes:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_CalibrationReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="digitlab-quant-") as tmp:
        src, pre, dst = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(fp32_bytes)
        with _quiet():
            # shape inference + graph optimisation first, as onnxruntime recommends; some graphs
            # (tree ensembles with data-dependent shapes) defeat symbolic shape inference: go without
            try:
                quant_pre_process(str(src), str(pre))
            except Exception:  # noqa: BLE001
                pre = src
            quantize_static(str(pre), str(dst), Reader(calib), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
        return dst.read_bytes()


def export_onnx(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    quantize: str | None = None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    verify: bool = True,
    dataset: str | None = None,
    data_dir: str | None = None,
    calibration_size: int = 1000,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Export ``"default"``, a run directory or a ``.safetensors`` checkpoint to ONNX; returns a JSON-able report.

    ``out`` defaults to :func:`default_onnx_path`; with ``quantize="int8"`` the
    quantized model goes to :func:`int8_path` of it. ``verify`` runs both models
    on the whole test split of the model's own dataset, or of ``dataset`` when
    given (otherwise only on 64 random inputs); the report's ``dataset`` says which.
    ``device`` runs the PyTorch reference for the comparison (the export itself is on CPU).
    """
    t0 = time.perf_counter()
    require_onnx()
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r} is not supported (use int8)")
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown exporter {exporter!r} (use one of {', '.join(EXPORTERS)})")
    ckpt = checkpoint_file(source)
    out = Path(out) if out is not None else default_onnx_path(source)
    if out.suffix.lower() != ".onnx":
        raise ConfigError(f"--out {out}: the file name must end in .onnx")
    targets = [out] + ([int8_path(out)] if quantize else [])
    refuse_existing(out)  # fail before doing any work

    model, meta = load_checkpoint(ckpt, device="cpu")
    source_hash = weights_sha256(model.state_dict())
    replace_int8 = bool(quantize) and _interrupted_int8(out, targets[-1], source_hash)
    if quantize and not replace_int8:
        refuse_existing(targets[1])
    proto, used, fallback = _export_proto(model, opset, exporter)
    import onnx

    from digitlab.data.registry import DATASETS

    data_name = resolve_dataset(meta, dataset)
    own = DATASETS.get(dataset_of(meta))
    meta = {**meta, "export": {"exporter": used, "opset": opset, "source": str(source),
                               "weights_sha256": source_hash}}
    if own is not None:  # lets the ONNX model name its classes without torch or the registry
        meta[ONNX_CLASSES_KEY] = {"class_names": list(own.class_names), "digits": own.digits}
    _set_metadata(proto, meta)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise CheckpointError(f"exported ONNX graph fails onnx.checker: {exc}") from None
    fp32_bytes = proto.SerializeToString()
    session = _session(fp32_bytes)

    report: dict[str, Any] = {
        "source": str(source), "model": meta.get("model"), "dataset": data_name, "exporter": used, "opset": opset,
        "checkpoint_bytes": ckpt.stat().st_size,
    }
    if fallback:
        report["exporter_fallback_reason"] = fallback

    from digitlab.data import load_dataset, to_float

    ds = load_dataset(data_name, data_dir, progress=progress) if verify or quantize else None
    test_x = to_float(ds.test_images).numpy() if ds is not None else np.zeros((0, 1, 28, 28), np.float32)
    labels = ds.test_labels.numpy() if ds is not None else None
    if verify:
        ref = _torch_probs(model, test_x, device=device)
        fp32 = _compare(ref, _ort_probs(session, test_x), labels)
        report["verification"] = {"dataset": data_name, "split": "test", "images": int(test_x.shape[0]),
                                  "accuracy_torch": float((ref.argmax(1) == labels).mean()), **fp32}
    else:
        rnd = np.random.default_rng(seed).random((64, 1, 28, 28), dtype=np.float32)
        ref = _torch_probs(model, rnd)
        report["verification"] = {"dataset": None, "images": 64, "inputs": "random",
                                  **_compare(ref, _ort_probs(session, rnd), None)}

    int8_bytes = None
    if quantize and ds is not None:
        rng = np.random.default_rng(seed)
        train = ds.train_images
        idx = np.sort(rng.choice(train.shape[0], min(calibration_size, train.shape[0]), replace=False))
        calib = to_float(train[torch.from_numpy(idx)]).numpy()
        try:
            int8_bytes = _quantize_int8(fp32_bytes, calib)
        except Exception as exc:  # noqa: BLE001 - onnxruntime.quantization raises anything
            raise CheckpointError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from None
        q = onnx.load_from_string(int8_bytes)
        _set_metadata(q, {**meta, "quantization": {"dtype": "int8", "method": "static-qdq-per-channel",
                                                   "calibration_images": int(calib.shape[0])}})
        int8_bytes = q.SerializeToString()
        q_session = _session(int8_bytes)
        source_probs = ref if verify else _torch_probs(model, test_x)
        fp32_acc = float((_ort_probs(session, test_x).argmax(1) == labels).mean()) if not verify \
            else report["verification"]["accuracy"]
        q_cmp = _compare(source_probs, _ort_probs(q_session, test_x), labels)
        report["int8"] = {
            "path": str(targets[1]), "bytes": len(int8_bytes),
            "size_ratio": len(int8_bytes) / len(fp32_bytes),
            "method": "onnxruntime quantize_static, QDQ, per-channel int8 weights, uint8 activations, "
                      f"MinMax calibration on {calib.shape[0]} training images",
            "accuracy": q_cmp["accuracy"], "accuracy_fp32": fp32_acc,
            "accuracy_change_points": 100.0 * (q_cmp["accuracy"] - fp32_acc),
            "argmax_agreement_with_torch": q_cmp["argmax_agreement"],
            "max_abs_prob_diff": q_cmp["max_abs_prob_diff"],
        }

    # int8 first, fp32 last: a kill in between leaves an int8 file that the rerun recognises
    # (_interrupted_int8) and replaces, never an fp32 file that would block it
    if int8_bytes is not None:
        if replace_int8:
            report["int8"]["replaced_interrupted_export"] = True
            write_bytes_atomic(targets[1], int8_bytes)
        else:
            write_new_bytes_atomic(targets[1], int8_bytes)
    try:
        write_new_bytes_atomic(out, fp32_bytes)
    except BaseException:
        if int8_bytes is not None:
            targets[1].unlink(missing_ok=True)  # all or nothing
        raise
    report["onnx"] = {"path": str(out), "bytes": len(fp32_bytes)}
    report["seconds"] = round(time.perf_counter() - t0, 2)
    return report


# --------------------------------------------------------------------------- benchmark


def _timings(fn, x1: np.ndarray, xb: np.ndarray, warmup: int, iters: int, min_seconds: float
             ) -> dict[str, Any]:
    for _ in range(warmup):
        fn(x1)
    lat: list[float] = []
    start = time.perf_counter()
    while len(lat) < iters or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn(x1)
        lat.append(time.perf_counter() - t)
    fn(xb)
    n, start = 0, time.perf_counter()
    while n < 5 or time.perf_counter() - start < min_seconds:
        fn(xb)
        n += 1
    elapsed = time.perf_counter() - start
    lat_ms = np.asarray(lat) * 1000.0
    return {"batch1_p50_ms": float(np.percentile(lat_ms, 50)),
            "batch1_p95_ms": float(np.percentile(lat_ms, 95)), "batch1_runs": len(lat),
            "throughput_images_per_s": float(n * xb.shape[0] / elapsed),
            "throughput_batch": int(xb.shape[0])}


def benchmark_inference(
    source: str | os.PathLike[str],
    onnx_models: dict[str, str | os.PathLike[str]] | None = None,
    *,
    threads: int = 1,
    batch_size: int = 256,
    warmup: int = 20,
    iters: int = 300,
    min_seconds: float = 1.0,
) -> dict[str, Any]:
    """Latency (batch 1, p50/p95) and throughput (``batch_size``) of eager PyTorch vs ONNX models.

    ``onnx_models`` maps a name (``"onnx-fp32"``, ``"onnx-int8"``) to a file. Every
    backend gets ``threads`` intra-op threads so the comparison is fair.
    """
    require_onnx()
    model, meta = load_checkpoint(source, device="cpu")
    rng = np.random.default_rng(0)
    x1 = rng.random((1, 1, 28, 28), dtype=np.float32)
    xb = rng.random((batch_size, 1, 28, 28), dtype=np.float32)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        from digitlab.models.forward import predict_logits

        def run_torch(x: np.ndarray) -> None:  # the path every digitlab command takes
            predict_logits(model, torch.from_numpy(x), batch_size=x.shape[0])

        results = {"torch-eager": _timings(run_torch, x1, xb, warmup, iters, min_seconds)}
    finally:
        torch.set_num_threads(old_threads)
    for name, path in (onnx_models or {}).items():
        session = _session(Path(path), threads=threads)
        results[name] = _timings(lambda x, s=session: s.run(None, {INPUT_NAME: x}), x1, xb, warmup, iters,
                                 min_seconds)
        results[name]["bytes"] = Path(path).stat().st_size
    import onnxruntime

    return {"model": meta.get("model"), "threads": threads, "batch_size": batch_size,
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "backends": results}
