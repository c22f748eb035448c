"""digitlab: train, compare, understand and use handwritten-digit classifiers."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


if TYPE_CHECKING:
    from digitlab.inference.predictor import Predictor


def load_model(source: str | os.PathLike[str] = "default", device: str = "auto") -> Predictor:
    """Load a trained classifier: ``"default"`` (shipped), a run directory, a checkpoint or an ONNX file.

    Returns a :class:`digitlab.inference.Predictor`: ``.predict(images)`` takes uint8 pixels
    0..255 or floats in [0, 1], shaped 28×28, N×28×28, N×1×28×28, 784 or N×784, and
    returns ``(labels, probabilities)``; ``.predict_image(path_or_pil)`` prepares and
    classifies one picture. ``device``: auto (CUDA when available), cpu, cuda.
    An ``.onnx`` file needs the ``digitlab[onnx]`` extra.
    """
    from digitlab.inference.predictor import load_predictor

    return load_predictor(source, device=device)
