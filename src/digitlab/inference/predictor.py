"""Predict digits with a trained model: PyTorch checkpoint or ONNX file behind one API.

>>> p = load_predictor("runs/a")                 # or "default", "model.safetensors", "model.onnx"
>>> labels, probs = p.predict(images_u8)          # N×28×28 uint8 (MNIST form)
>>> p.predict_image("photo_of_a_7.jpg")["label"]
7
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.errors import CheckpointError, ImageError
from digitlab.inference.preprocess import MAX_IMAGE_PIXELS, ImageSource, split_digits, to_mnist

__all__ = ["DEFAULT_MODEL_PATH", "IMAGE_EXTENSIONS", "ONNX_META_KEY", "Predictor", "collect_image_files",
           "load_predictor", "predict_files", "softmax"]

DEFAULT_MODEL_PATH = Path(__file__).resolve().parent.parent / "pretrained" / "default.safetensors"
"""The model shipped with the package (``load_predictor("default")``)."""

ONNX_META_KEY = "digitlab"
"""ONNX ``metadata_props`` key holding the checkpoint's metadata JSON (written by export)."""

CHUNK = 1024
"""Images per forward pass: bounds memory for large batches."""

LogitsFn = Callable[[np.ndarray], np.ndarray]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 for accuracy, returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Predictor:
    """A classifier for MNIST-form images, independent of the backend that runs it.

    Build one with :func:`load_predictor`. ``logits_fn`` maps float32
    ``N×1×28×28`` in [0, 1] to logits ``N×10``.
    """

    def __init__(self, logits_fn: LogitsFn, info: dict[str, Any]) -> None:
        self._logits = logits_fn
        self.info: dict[str, Any] = info
        """Model name, source, backend, parameters and metrics (from the checkpoint's metadata)."""
        self.max_image_pixels = MAX_IMAGE_PIXELS

    # ------------------------------------------------------------------ arrays

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Classify MNIST-form images (white ink on black, 0..255).

        ``images``: ``N×28×28`` or ``28×28`` (uint8, or numbers in 0..255).
        Returns ``(labels int64 N, probabilities float32 N×10)``.
        """
        x = _as_batch(images)
        if x.shape[0] == 0:
            return np.zeros(0, np.int64), np.zeros((0, 10), np.float32)
        x = x[:, None].astype(np.float32) / np.float32(255.0)  # model convention: N×1×28×28 in [0, 1]
        logits = np.concatenate([self._logits(x[i:i + CHUNK]) for i in range(0, x.shape[0], CHUNK)])
        probs = softmax(logits)
        return probs.argmax(axis=1).astype(np.int64), probs

    # ------------------------------------------------------------------ pictures

    def preprocess(self, image: ImageSource) -> np.ndarray:
        """The MNIST-form 28×28 uint8 image the model sees for ``image``."""
        return to_mnist(image, max_pixels=self.max_image_pixels)

    def predict_image(self, image: ImageSource, top_k: int | None = None) -> dict[str, Any]:
        """Preprocess and classify one picture of a digit (path, bytes, PIL image or array).

        Returns ``{label, confidence, probabilities (10 floats), preprocessed (28×28 uint8)}``,
        ``top_k`` (``[{label, probability}]``, best first) when asked, and ``blank: True``
        when the picture holds no ink (the label is then meaningless).
        """
        pre = self.preprocess(image)
        return self.result(pre[None], *self.predict(pre[None]), top_k=top_k)[0]

    def predict_images(self, images: Sequence[ImageSource], top_k: int | None = None
                       ) -> list[dict[str, Any]]:
        """Like :meth:`predict_image` for many pictures, with one batched model call."""
        if not len(images):
            return []
        pre = np.stack([self.preprocess(im) for im in images])
        return self.result(pre, *self.predict(pre), top_k=top_k)

    @staticmethod
    def result(pre: np.ndarray, labels: np.ndarray, probs: np.ndarray, top_k: int | None = None
               ) -> list[dict[str, Any]]:
        """Per-image result dicts from a batch of preprocessed images and its predictions."""
        out = []
        for img, label, p in zip(pre, labels, probs, strict=True):
            r: dict[str, Any] = {"label": int(label), "confidence": float(p[label]),
                                 "probabilities": [float(v) for v in p], "preprocessed": img}
            if not img.any():  # nothing drawn: the label is meaningless, say so
                r["blank"] = True
            if top_k:
                order = np.argsort(-p, kind="stable")[:top_k]
                r["top_k"] = [{"label": int(k), "probability": float(p[k])} for k in order]
            out.append(r)
        return out

    def read_number(self, image: ImageSource) -> dict[str, Any]:
        """Read a multi-digit number: split into digits (connected components), classify each.

        Returns ``{number: str, confidence: product of the digits' confidences, digits: [...]}``.
        """
        digits = split_digits(image, max_pixels=self.max_image_pixels)
        if not digits:
            return {"number": "", "confidence": 0.0, "digits": []}
        pre = np.stack(digits)
        results = self.result(pre, *self.predict(pre))
        return {"number": "".join(str(r["label"]) for r in results),
                "confidence": float(np.prod([r["confidence"] for r in results])),
                "digits": results}

    def __repr__(self) -> str:
        return f"Predictor({self.info.get('model')!r}, backend={self.info.get('backend')!r}, " \
               f"source={self.info.get('source')!r})"


def _as_batch(images: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    if x.ndim == 2:
        x = x[None]
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ImageError(f"expected MNIST-form images of shape N×28×28 or 28×28, got {x.shape}")
    if x.dtype == np.uint8:
        return x
    if x.dtype.kind not in "uif" or x.dtype == np.bool_:
        raise ImageError(f"expected numeric pixel values, got dtype {x.dtype}")
    if x.size and (not np.isfinite(x).all() or x.min() < 0 or x.max() > 255):
        raise ImageError("pixel values must be finite numbers in 0..255")
    return np.rint(x).astype(np.uint8)


# --------------------------------------------------------------------------- backends


def _info_from_meta(meta: dict[str, Any], source: str, backend: str) -> dict[str, Any]:
    return {
        "model": meta.get("model"),
        "source": source,
        "backend": backend,
        "parameters": meta.get("parameters"),
        "metrics": meta.get("metrics", {}),
        "created": meta.get("created"),
        "model_kwargs": meta.get("model_kwargs", {}),
        # provenance when present: how the shipped model was measured, how an ONNX file was made
        **{k: meta[k] for k in ("shipped", "export", "quantization") if k in meta},
    }


def _torch_predictor(source: Path, device: str, label: str) -> Predictor:
    from digitlab.train.checkpoint import load_checkpoint
    from digitlab.utils import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(source, device=dev)

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x).to(dev)).float().cpu().numpy()

    pred = Predictor(logits, _info_from_meta(meta, label, "torch"))
    pred.model = model  # type: ignore[attr-defined]  # for callers that need the nn.Module
    return pred


def _onnx_predictor(path: Path, label: str, threads: int | None = None) -> Predictor:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise CheckpointError(f"{path}: cannot load ONNX model ({exc})") from None
    inputs = session.get_inputs()
    if len(inputs) != 1 or list(inputs[0].shape[1:]) != [1, 28, 28]:
        raise CheckpointError(f"{path}: ONNX model must take one N×1×28×28 input, "
                              f"got {[(i.name, i.shape) for i in inputs]}")
    in_name = inputs[0].name
    raw = session.get_modelmeta().custom_metadata_map.get(ONNX_META_KEY)
    try:
        meta = json.loads(raw) if raw else {}
    except ValueError:
        meta = {}
    meta.setdefault("model", path.stem)

    def logits(x: np.ndarray) -> np.ndarray:
        return session.run(None, {in_name: x})[0]

    pred = Predictor(logits, _info_from_meta(meta, label, "onnxruntime"))
    pred.session = session  # type: ignore[attr-defined]
    return pred


def load_predictor(source: str | os.PathLike[str] = "default", device: str = "cpu") -> Predictor:
    """Load a predictor from ``"default"`` (the shipped model), a run directory,
    a ``.safetensors`` checkpoint or an ``.onnx`` file (run with onnxruntime on CPU).
    """
    if str(source) == "default":
        if not DEFAULT_MODEL_PATH.is_file():
            raise CheckpointError(
                f"the default model is not installed ({DEFAULT_MODEL_PATH} is missing); "
                "pass a run directory, .safetensors or .onnx file instead (--model)")
        return _torch_predictor(DEFAULT_MODEL_PATH, device, "default")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{source}: no such model (expected 'default', a run directory, "
                              ".safetensors or .onnx file)")
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path, str(source))
    return _torch_predictor(path, device, str(source))


# --------------------------------------------------------------------------- files

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff",
                              ".pgm", ".ppm", ".pbm", ".pnm"})
"""Files picked up from directories (files named explicitly are tried whatever their name)."""


def collect_image_files(paths: Sequence[str | os.PathLike[str]], recursive: bool = False) -> list[Path]:
    """Expand directories into the image files inside them (sorted); keep other paths as given.

    Paths that don't exist are kept, so the caller reports them per file.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(f for f in found if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS))
        else:
            out.append(p)
    return out


def predict_files(predictor: Predictor, files: Sequence[str | os.PathLike[str]], top_k: int | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Preprocess each file, then classify all readable ones in one batched call.

    Returns one record per file, in order: ``{file, label, confidence, probabilities[, top_k]}``
    or ``{file, error}`` for a file that cannot be read as an image.
    """
    from tqdm import tqdm

    records: list[dict[str, Any]] = []
    ok_images: list[np.ndarray] = []
    ok_index: list[int] = []
    for f in tqdm(files, desc="preprocess", unit="img", disable=not progress):
        try:
            ok_images.append(predictor.preprocess(f))
            ok_index.append(len(records))
            records.append({"file": str(f)})
        except ImageError as exc:
            msg = str(exc)
            msg = msg[len(str(f)) + 2:] if msg.startswith(f"{f}: ") else msg  # the record names the file
            records.append({"file": str(f), "error": msg})
    if ok_images:
        pre = np.stack(ok_images)
        for i, r in zip(ok_index, Predictor.result(pre, *predictor.predict(pre), top_k=top_k), strict=True):
            del r["preprocessed"]
            records[i].update(r)
    return records
