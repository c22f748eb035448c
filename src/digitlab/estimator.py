"""A scikit-learn estimator around the training engine, for ``GridSearchCV`` & co.

``DigitClassifier(model="cnn-simple", epochs=2).fit(X, y)`` trains with the same
loop as ``digitlab train``. ``X`` is uint8 images (``N×28×28`` or ``N×784``) or
floats in [0, 1]; ``y`` holds integer labels 0–9.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from digitlab.data.splits import DataSplits, Split
from digitlab.errors import ConfigError


def as_uint8_images(X: Any) -> torch.Tensor:
    """Accept uint8 or [0, 1] float arrays shaped ``N×784`` or ``N×28×28``."""
    arr = np.asarray(X)
    if arr.ndim == 2 and arr.shape[1] == 784:
        arr = arr.reshape(-1, 28, 28)
    if arr.ndim != 3 or arr.shape[1:] != (28, 28):
        raise ConfigError(f"X must have shape N×784 or N×28×28, got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 1):
            raise ConfigError("float X must hold pixel values in [0, 1] (or pass uint8 0–255)")
        arr = np.rint(arr * 255).astype(np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr))


class DigitClassifier(ClassifierMixin, BaseEstimator):
    """scikit-learn classifier that trains a registered digitlab model."""

    def __init__(self, model: str = "cnn-simple", epochs: int = 1, batch_size: int = 128, lr: float = 3e-3,
                 optimizer: str = "adam", schedule: str = "onecycle", weight_decay: float = 0.0,
                 label_smoothing: float = 0.0, max_steps: int | None = None, seed: int = 0,
                 device: str = "cpu", model_kwargs: dict | None = None) -> None:
        self.model = model
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.schedule = schedule
        self.weight_decay = weight_decay
        self.label_smoothing = label_smoothing
        self.max_steps = max_steps
        self.seed = seed
        self.device = device
        self.model_kwargs = model_kwargs

    def _config(self):  # noqa: ANN202
        from digitlab.train.config import TrainConfig

        return TrainConfig(model=self.model, model_kwargs=dict(self.model_kwargs or {}), epochs=self.epochs,
                           batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           schedule=self.schedule, weight_decay=self.weight_decay,
                           label_smoothing=self.label_smoothing, max_steps=self.max_steps, seed=self.seed,
                           device=self.device, val_fraction=0.0, tensorboard=False)

    def fit(self, X: Any, y: Any) -> DigitClassifier:
        from digitlab.models import create_model
        from digitlab.train.loop import Trainer

        images = as_uint8_images(X)
        labels = torch.as_tensor(np.asarray(y), dtype=torch.int64)
        if labels.shape[0] != images.shape[0]:
            raise ConfigError(f"X has {images.shape[0]} samples but y has {labels.shape[0]}")
        cfg = self._config()
        torch.manual_seed(cfg.seed)
        net = create_model(cfg.model, **cfg.model_kwargs)
        empty = Split(images[:0], labels[:0])
        Trainer(net, DataSplits(Split(images, labels), None, empty), cfg).fit()
        self.model_ = net.eval()
        self.classes_ = np.arange(10)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``N×10`` (float32), from the one batched forward pass."""
        from digitlab.models.forward import predict_proba

        return predict_proba(self.model_, as_uint8_images(X)).numpy()

    def predict(self, X: Any) -> np.ndarray:
        return self.predict_proba(X).argmax(1)
