"""Plain convolutional networks from the reference notebooks."""

from __future__ import annotations

from torch import nn

from digitlab.models.registry import register_model


@register_model("cnn-simple", family="cnn", reference="notebook 002: 99.23% test",
                recipe="cnn-simple")
def cnn_simple(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """Conv32 → Pool → Conv64 → Pool → Conv64 → Dense64 → Dropout → 10 (Keras 'valid' padding)."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ReLU(),
        nn.Flatten(), nn.Linear(64 * 3 * 3, 64), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(64, num_classes),
    )
