"""Classify images with a trained model: PyTorch checkpoint or ONNX file behind one API.

>>> p = load_predictor("runs/a")                 # or "default", "model.safetensors", "model.onnx"
>>> labels, probs = p.predict(images_u8)          # N×28×28 uint8 0..255, or float 0..1
>>> p.predict_image("photo_of_a_7.jpg")["label"]
7

A predictor knows the dataset its model was trained on (from the checkpoint's
metadata): results carry the class ``name`` beside the integer ``label``, and
pictures are prepared the way that dataset was made (the digit clean-up of
:func:`~digitlab.inference.preprocess.to_mnist` for digit datasets,
:func:`~digitlab.inference.preprocess.fit_picture` for others).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from digitlab.checkpoint import DEFAULT_MODEL_PATH, checkpoint_file, dataset_of, is_default
from digitlab.errors import CheckpointError, ConfigError, ImageError
from digitlab.inference.preprocess import MAX_IMAGE_PIXELS, ImageSource, fit_picture, split_digit_boxes, to_mnist
from digitlab.inference.reject import (
    FEATURES_OUTPUT,
    FeatureModel,
    ShapeModel,
    feature_model_for,
    not_a_digit,
    shape_model_for,
)
from digitlab.numerics import softmax

__all__ = ["DEFAULT_MODEL_PATH", "DEFAULT_ONNX_PATH", "IMAGE_EXTENSIONS", "INPUT_SHAPES", "ONNX_META_KEY",
           "Predictor", "collect_image_files", "load_predictor", "predict_files", "temperature_of"]

DEFAULT_ONNX_PATH = DEFAULT_MODEL_PATH.with_suffix(".onnx")
"""The shipped model exported to ONNX (same weights and metadata): runs without torch."""

ONNX_META_KEY = "digitlab"
"""ONNX ``metadata_props`` key holding the checkpoint's metadata JSON (written by export)."""
ONNX_CLASSES_KEY = "classes"
"""Key, inside that metadata, of ``{class_names, digits}`` of the model's dataset (written by export)."""

CHUNK = 1024
"""Images per forward pass: bounds memory for large batches."""

INPUT_SHAPES = "28×28, N×28×28, N×1×28×28, 784 or N×784"
"""The array shapes :meth:`Predictor.predict` accepts."""

LogitsFn = Callable[[np.ndarray], np.ndarray]
FeaturesFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""Model input ``N×1×28×28`` → ``(logits N×K, penultimate-layer features N×D)`` in one forward pass."""

if TYPE_CHECKING:  # torch is imported only for checkpoint models: an ONNX model runs without it
    import torch


class Predictor:
    """A classifier for 28×28 images, independent of the backend that runs it.

    Build one with :func:`load_predictor`. ``logits_fn`` maps float32
    ``N×1×28×28`` in [0, 1] to logits ``N×K``. ``dataset`` names the data the model
    was trained on: it gives the class names and how pictures are prepared.
    ``features_fn`` (optional) gives the same logits plus the penultimate-layer features in one
    pass; with ``weights_sha256`` naming the shipped model's weights, the not-a-digit test also reads
    the features (:class:`~digitlab.inference.reject.FeatureModel`).
    """

    def __init__(self, logits_fn: LogitsFn, info: dict[str, Any], dataset: str = "mnist",
                 class_names: Sequence[str] | None = None, digits: bool | None = None,
                 temperature: float = 1.0, features_fn: FeaturesFn | None = None,
                 weights_sha256: str | None = None) -> None:
        self._logits = logits_fn
        self._features_fn = features_fn
        self._last = threading.local()  # this thread's last batch and its features (predict → result)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ConfigError(f"temperature must be a positive finite number, got {temperature!r}")
        self.temperature: float = float(temperature)
        """Logits are divided by this before the softmax (temperature scaling; 1 = uncalibrated)."""
        if class_names is None or digits is None:  # from the registry (its package imports torch)
            from digitlab.data.registry import DATASETS

            spec = DATASETS.get(dataset)
            class_names = class_names or (spec.class_names if spec else tuple(str(i) for i in range(10)))
            digits = digits if digits is not None else (spec.digits if spec else True)
        self.dataset: str = dataset
        """The dataset the model was trained on (``mnist``, ``fashion-mnist``)."""
        self.class_names: tuple[str, ...] = tuple(str(c) for c in class_names)
        """Name of each class, indexed by label."""
        self.digits: bool = bool(digits)
        """True for digit datasets: pictures get the digit clean-up (:func:`to_mnist`)."""
        self.info: dict[str, Any] = {**info, "dataset": dataset, "class_names": list(self.class_names),
                                     "temperature": self.temperature}
        """Model name, source, backend, dataset, class names, parameters and metrics (from the metadata)."""
        self.max_image_pixels = MAX_IMAGE_PIXELS
        self.shape: ShapeModel | None = shape_model_for(dataset) if self.digits else None
        """Pixel statistics of the dataset's digits for the not-a-digit test (:mod:`digitlab.inference.reject`);
        ``None`` (never rejects as not-a-digit) for other datasets. Set to ``None`` to turn the test off."""
        self.feature_model: FeatureModel | None = (
            feature_model_for(dataset, weights_sha256) if self.digits and features_fn is not None else None)
        """Feature statistics of the shipped model for the not-a-digit test, when this predictor runs those
        weights and can compute features; ``None`` otherwise (the pixel-space rule alone)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # ------------------------------------------------------------------ arrays

    def predict(self, images: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Classify images in the dataset's form (light object on black).

        ``images``: uint8 (or any integer type) with values 0..255, or float with values
        in [0, 1]; shape 28×28, N×28×28, N×1×28×28, 784 or N×784 (numpy or torch).
        Anything else — floats outside [0, 1] (divide by 255 first), NaN, other shapes or
        dtypes — raises :class:`ImageError` naming the shape and dtype received.
        Probabilities are calibrated: ``softmax(logits / temperature)`` (:attr:`temperature`).
        Returns ``(labels int64 N, probabilities float32 N×K)``.
        """
        labels, probs, _ = self.predict_with_logits(images)
        return labels, probs

    def predict_with_logits(self, images: np.ndarray | torch.Tensor
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`predict` plus the raw (uncalibrated) logits ``N×K`` float32."""
        x = as_model_input(images)
        if x.shape[0] == 0:
            k = self.num_classes
            return np.zeros(0, np.int64), np.zeros((0, k), np.float32), np.zeros((0, k), np.float32)
        if self.feature_model is not None and self._features_fn is not None and self.shape is not None:
            raw, feats = self._features_fn(x)
            logits = np.asarray(raw, dtype=np.float32)
            self._last.batch = (x, np.asarray(feats, dtype=np.float32))  # read back by not_a_digit
        else:
            logits = np.asarray(self._logits(x), dtype=np.float32)
        probs = softmax(logits.astype(np.float64) / self.temperature).astype(np.float32)
        return probs.argmax(axis=1).astype(np.int64), probs, logits

    # ------------------------------------------------------------------ pictures

    def preprocess(self, image: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
        """The 28×28 uint8 image the model sees for ``image``.

        Digit datasets: the digit clean-up (:func:`to_mnist`); others: the whole
        picture fitted into 28×28 (:func:`fit_picture`). ``max_pixels`` overrides
        :attr:`max_image_pixels` for this call.
        """
        limit = self.max_image_pixels if max_pixels is None else max_pixels
        if self.digits:
            return to_mnist(image, max_pixels=limit)
        return fit_picture(image, max_pixels=limit)

    def predict_image(self, image: ImageSource, top_k: int | None = None) -> dict[str, Any]:
        """Preprocess and classify one picture (path, bytes, PIL image or array).

        Returns ``{label, name, confidence, probabilities, preprocessed (28×28 uint8)}`` and
        ``top_k`` (``[{label, name, probability}]``, best first) when asked. A picture that holds
        nothing is answered with an abstention: ``label``, ``name``, ``confidence`` and ``probabilities`` are ``None``,
        ``rejected`` is ``"blank"`` (and ``blank`` is ``True``). A digit model also abstains, with
        ``rejected: "not-a-digit"``, on a picture that holds something other than a digit (a letter, a
        scribble, a texture): see :mod:`digitlab.inference.reject`. ``confidence`` is calibrated
        (temperature scaling); an answered picture has no ``rejected`` key.
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

    def features(self, images: np.ndarray) -> np.ndarray:
        """Penultimate-layer features ``N×D`` float32 of images in the form :meth:`predict` takes.

        :class:`ConfigError` for a predictor whose backend cannot give them.
        """
        if self._features_fn is None:
            raise ConfigError(f"this predictor ({self.info.get('backend')}) cannot compute features")
        x = as_model_input(images)
        last = getattr(self._last, "batch", None)
        if last is not None and last[0].shape == x.shape and np.array_equal(last[0], x):
            return np.asarray(last[1])  # the batch predict() just ran: no second forward pass
        return np.asarray(self._features_fn(x)[1], dtype=np.float32)

    def not_a_digit(self, pre: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Boolean ``N``: which preprocessed images (``N×28×28`` uint8) to answer ``rejected: "not-a-digit"``.

        ``probs`` are the calibrated probabilities :meth:`predict` returned for them. All ``False``
        for models of non-digit datasets and without shape statistics (:attr:`shape`).
        """
        if self.shape is None or pre.shape[0] == 0:
            return np.zeros(pre.shape[0], bool)
        if self.feature_model is None:
            return not_a_digit(self.shape, pre, probs)
        return not_a_digit(self.shape, pre, probs, self.features(pre), self.feature_model)

    def result(self, pre: np.ndarray, labels: np.ndarray, probs: np.ndarray, top_k: int | None = None,
               reject: bool = True) -> list[dict[str, Any]]:
        """Per-image result dicts from a batch of preprocessed images and its predictions.

        ``reject=False`` skips the not-a-digit test (blank images are always refused).
        """
        names = self.class_names
        out = []
        refuse = self.not_a_digit(pre, probs) if reject else np.zeros(len(pre), bool)
        for img, label, p, odd in zip(pre, labels, probs, refuse, strict=True):
            r: dict[str, Any] = {"label": int(label), "name": names[int(label)], "confidence": float(p[label]),
                                 "probabilities": [float(v) for v in p], "preprocessed": img}
            if not img.any():  # nothing drawn: abstain rather than hand out a digit nobody wrote
                r.update(label=None, name=None, confidence=None, probabilities=None, blank=True, rejected="blank")
            elif odd:  # something drawn, but not a digit
                r.update(label=None, name=None, confidence=None, probabilities=None, rejected="not-a-digit")
            elif top_k:
                order = np.argsort(-p, kind="stable")[:top_k]
                r["top_k"] = [{"label": int(k), "name": names[int(k)], "probability": float(p[k])}
                              for k in order]
            out.append(r)
        return out

    def read_number(self, image: ImageSource) -> dict[str, Any]:
        """Read a multi-digit number: split into digits (connected components), classify each.

        Returns ``{number: str, confidence: product of the digits' confidences, digits: [...]}``;
        each digit carries its ``box`` ``[left, top, right, bottom]`` in the picture's pixels.
        Touching digits are cut where a group is too wide for one digit. Only for models of a
        digit dataset.
        """
        if not self.digits:
            raise ConfigError(f"read_number needs a digit model; this one is trained on {self.dataset}")
        found = split_digit_boxes(image, max_pixels=self.max_image_pixels)
        if not found:
            return {"number": "", "confidence": 0.0, "digits": []}
        pre = np.stack([digit for digit, _ in found])
        results = self.result(pre, *self.predict(pre), reject=False)
        for r, (_, box) in zip(results, found, strict=True):
            r["box"] = list(box)
        return {"number": "".join(str(r["label"]) for r in results),
                "confidence": float(np.prod([r["confidence"] for r in results])),
                "digits": results}

    def __repr__(self) -> str:
        return f"Predictor({self.info.get('model')!r}, backend={self.info.get('backend')!r}, " \
               f"dataset={self.dataset!r}, source={self.info.get('source')!r})"


def as_model_input(images: np.ndarray | torch.Tensor) -> np.ndarray:
    """Check and convert images to the model's input: float32 ``N×1×28×28`` in [0, 1].

    Accepts integers 0..255 (uint8 above all) or floats in [0, 1], shaped as
    :data:`INPUT_SHAPES`; raises :class:`ImageError` naming the shape and dtype otherwise.
    """
    torch_mod = sys.modules.get("torch")  # a torch tensor can only exist once torch is imported
    if torch_mod is not None and isinstance(images, torch_mod.Tensor):
        images = images.detach().cpu().numpy()
    x = np.asarray(images)
    got = f"got shape {tuple(x.shape)} and dtype {x.dtype}"
    if x.dtype == np.bool_ or x.dtype.kind not in "uif":
        raise ImageError(f"expected uint8 pixels 0..255 or float pixels 0..1; {got}")
    if x.shape == (784,):
        x = x.reshape(1, 28, 28)
    elif x.shape == (28, 28):
        x = x[None]
    elif x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 28, 28)
    elif x.ndim == 4 and x.shape[1:] == (1, 28, 28):
        x = x[:, 0]
    elif not (x.ndim == 3 and x.shape[1:] == (28, 28)):
        raise ImageError(f"expected images of shape {INPUT_SHAPES}; {got}")
    if x.dtype.kind in "ui":
        if x.dtype != np.uint8 and x.size and (int(x.min()) < 0 or int(x.max()) > 255):
            raise ImageError(f"integer pixels must be in 0..255; {got}, values {int(x.min())}..{int(x.max())}")
        return (x[:, None].astype(np.float32) / np.float32(255.0))
    if x.size and not np.isfinite(x).all():
        raise ImageError(f"pixel values must be finite (no NaN or infinity); {got}")
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ImageError(f"float pixels must be in [0, 1]; {got}, values {float(x.min()):g}..{float(x.max()):g}: "
                         "divide by 255, or pass uint8 0..255")
    return np.ascontiguousarray(x[:, None], dtype=np.float32)


# --------------------------------------------------------------------------- backends


def temperature_of(meta: dict[str, Any], where: str = "checkpoint") -> float:
    """The calibration temperature recorded in checkpoint metadata (``meta["calibration"]["temperature"]``).

    1.0 (no calibration) when the metadata has none; :class:`CheckpointError` when it holds
    something other than a positive finite number (edited metadata).
    """
    block = meta.get("calibration")
    if block is None:
        return 1.0
    t = block.get("temperature") if isinstance(block, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 0 < t <= 1000:
        raise CheckpointError(f"{where}: metadata calibration.temperature must be a positive number, got {t!r}")
    return float(t)


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
        **{k: meta[k] for k in ("shipped", "export", "quantization", "calibration") if k in meta},
    }


def _torch_predictor(source: str | Path, device: str, label: str) -> Predictor:
    import torch

    from digitlab.checkpoint import load_checkpoint
    from digitlab.models.forward import predict_logits
    from digitlab.utils import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(source, device=dev)

    def logits(x: np.ndarray) -> np.ndarray:  # the one batched forward pass
        return predict_logits(model, torch.from_numpy(x), batch_size=CHUNK).numpy()

    features = _torch_features_fn(model)
    pred = Predictor(logits, _info_from_meta(meta, label, "torch"), dataset=dataset_of(meta),
                     temperature=temperature_of(meta, label), features_fn=features,
                     weights_sha256=meta.get("weights_sha256"))
    pred.model = model  # type: ignore[attr-defined]  # for callers that need the nn.Module
    return pred


def _torch_features_fn(model: Any) -> FeaturesFn | None:
    """Logits and the input of the final linear layer in one forward pass, for a model whose last module
    is ``nn.Linear`` (a hook that records only while this thread asks for features); else ``None``."""
    import torch

    from digitlab.models.forward import predict_logits

    last = list(model.children())[-1] if isinstance(model, torch.nn.Sequential) and len(model) else None
    if not isinstance(last, torch.nn.Linear):
        return None
    local = threading.local()

    def record(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        store = getattr(local, "store", None)
        if store is not None:
            store.append(args[0].float().cpu())

    last.register_forward_pre_hook(record)

    def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        local.store = []
        try:
            out = predict_logits(model, torch.from_numpy(x), batch_size=CHUNK).numpy()
            feats = torch.cat(local.store).reshape(x.shape[0], -1).numpy()
        finally:
            local.store = None
        return out, feats

    return features


def _onnx_predictor(path: Path, label: str, threads: int | None = None) -> Predictor:
    from digitlab.cli import require_extra

    require_extra("onnxruntime", "onnx")
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        # a fixed small pool that sleeps when idle: the default spinning threads cost CPU that
        # server workers and request threads on the same cores need
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
    if not isinstance(meta, dict):
        meta = {}
    meta.setdefault("model", path.stem)
    # export records the classes, so an ONNX model needs neither torch nor the dataset registry
    classes = meta.get(ONNX_CLASSES_KEY)
    names = classes.get("class_names") if isinstance(classes, dict) else None
    digits = classes.get("digits") if isinstance(classes, dict) else None
    if not (isinstance(names, list) and names and isinstance(digits, bool)):
        names, digits = None, None

    out_names = [o.name for o in session.get_outputs()]

    def logits(x: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(out_names[:1], {in_name: x[i:i + CHUNK]})[0]
                               for i in range(0, x.shape[0], CHUNK)])

    features: FeaturesFn | None = None
    if FEATURES_OUTPUT in out_names[1:]:  # the shipped copy carries its penultimate-layer features
        wanted = [out_names[0], FEATURES_OUTPUT]

        def features(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            parts = [session.run(wanted, {in_name: x[i:i + CHUNK]}) for i in range(0, x.shape[0], CHUNK)]
            return (np.concatenate([p[0] for p in parts]),
                    np.concatenate([np.asarray(p[1]).reshape(p[1].shape[0], -1) for p in parts]))

    pred = Predictor(logits, _info_from_meta(meta, label, "onnxruntime"), dataset=dataset_of(meta),
                     class_names=names, digits=digits, temperature=temperature_of(meta, str(path)),
                     features_fn=features, weights_sha256=meta.get("weights_sha256"))
    pred.session = session  # type: ignore[attr-defined]
    return pred


def onnx_runtime_available() -> bool:
    """True when onnxruntime can be imported (checked without importing it)."""
    return importlib.util.find_spec("onnxruntime") is not None


def load_predictor(source: str | os.PathLike[str] = "default", device: str = "auto",
                   prefer_onnx: bool = False, threads: int | None = None) -> Predictor:
    """Load a predictor from ``"default"`` (the shipped model), a run directory,
    a ``.safetensors`` checkpoint or an ``.onnx`` file (run with onnxruntime on CPU).

    ``prefer_onnx=True``: the shipped model runs from its ONNX copy (:data:`DEFAULT_ONNX_PATH`)
    on ONNX Runtime when onnxruntime is installed and the copy exists, without importing
    torch (fast start-up for one-picture predictions); otherwise, and for every other
    source, as without it. The probabilities agree with the PyTorch predictor within 1e-3.
    ``threads``: ONNX Runtime's thread count (non-spinning), e.g. 1 per server worker.
    """
    if is_default(source):
        if prefer_onnx and DEFAULT_ONNX_PATH.is_file() and onnx_runtime_available():
            return _onnx_predictor(DEFAULT_ONNX_PATH, "default", threads)
        checkpoint_file(source)  # a clear error when the shipped model is missing
        return _torch_predictor("default", device, "default")
    path = Path(source)
    if not path.exists():
        raise CheckpointError(f"{source}: no such model (expected 'default', a run directory, "
                              ".safetensors or .onnx file)")
    if path.suffix.lower() == ".onnx":
        return _onnx_predictor(path, str(source), threads)
    return _torch_predictor(path, device, str(source))


# --------------------------------------------------------------------------- files

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""Files picked up from directories (files named explicitly are tried whatever their name; the
content decides the format, and only PNG, JPEG, GIF, BMP, TIFF and WebP are decoded)."""


def collect_image_files(paths: Sequence[str | os.PathLike[str]], recursive: bool = False) -> list[Path]:
    """Expand directories into the image files inside them (sorted); keep other paths as given.

    Paths that don't exist are kept, so the caller reports them per file. Inside a
    directory, every entry with an image extension that is not a directory is kept,
    including FIFOs, broken links and symlink loops: reading them fails with a
    per-file error instead of the entry being skipped without a word.
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = p.rglob("*") if recursive else p.iterdir()
            out.extend(sorted(f for f in found if f.suffix.lower() in IMAGE_EXTENSIONS and not f.is_dir()))
        else:
            out.append(p)
    return out


def predict_files(predictor: Predictor, files: Sequence[str | os.PathLike[str]], top_k: int | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """Preprocess each file, then classify all readable ones in one batched call.

    Returns one record per file, in order: ``{file, label, name, confidence, probabilities[, top_k]}``
    or ``{file, error}`` for a file that cannot be read as an image.
    """
    records: list[dict[str, Any]] = []
    ok_images: list[np.ndarray] = []
    ok_index: list[int] = []
    items: Iterable[str | os.PathLike[str]] = files
    if progress:  # tqdm costs start-up time a one-picture call should not pay
        from tqdm import tqdm

        items = tqdm(files, desc="preprocess", unit="img")
    for f in items:
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
        for i, r in zip(ok_index, predictor.result(pre, *predictor.predict(pre), top_k=top_k), strict=True):
            del r["preprocessed"]
            records[i].update(r)
    return records
