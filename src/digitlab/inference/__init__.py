"""Using a trained model: preprocessing real pictures, the Predictor API, ONNX export.

``load_predictor(source)`` accepts ``"default"``, a run directory, a
``.safetensors`` checkpoint or an ``.onnx`` file. ``to_mnist(picture)`` turns a
photo/scan/drawing of a digit into the 28×28 form the models expect;
``fit_picture(picture)`` does the same for other objects (Fashion-MNIST clothing).
"""

from digitlab.inference.predictor import DEFAULT_MODEL_PATH, Predictor, load_predictor
from digitlab.inference.preprocess import (
    ImageTooLargeError,
    fit_picture,
    ink_map,
    load_image,
    split_digits,
    to_mnist,
)

__all__ = ["DEFAULT_MODEL_PATH", "ImageTooLargeError", "Predictor", "benchmark_inference", "export_onnx",
           "fit_picture", "ink_map", "load_image", "load_predictor", "split_digits", "to_mnist"]


def __getattr__(name: str):  # export pulls in onnx/onnxruntime: import it only when used
    if name in ("export_onnx", "benchmark_inference"):
        from digitlab.inference import export

        return getattr(export, name)
    raise AttributeError(f"module 'digitlab.inference' has no attribute {name!r}")
