"""digitlab: train, compare, understand and use handwritten-digit classifiers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load_model"]


def load_model(source: str = "default", device: str = "cpu"):  # noqa: ANN201 - lazy import
    """Load a trained classifier: ``"default"`` (shipped), a run directory, a checkpoint or an ONNX file.

    Returns a :class:`digitlab.inference.Predictor` with ``.predict(images)`` and
    ``.predict_image(path_or_pil)``.
    """
    from digitlab.inference.predictor import load_predictor

    return load_predictor(source, device=device)
