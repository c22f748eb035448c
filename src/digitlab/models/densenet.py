"""DenseNet-style network from reference notebook 001 (``DenseNet_Inspired``)."""

from __future__ import annotations

import torch
from torch import nn

from digitlab.models._common import KerasFeaturesHead, gap_head, keras_bn2d, keras_init_, l2
from digitlab.models.ops import MaxPool2x2
from digitlab.models.registry import AMP_CL, register_model


class DenseLayer(nn.Module):
    """BN → ReLU → 1×1 conv (4·k) → BN → ReLU → 3×3 conv (k), concatenated to its input (DenseNet-B)."""

    def __init__(self, cin: int, growth_rate: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            keras_bn2d(cin), nn.ReLU(inplace=True), l2(nn.Conv2d(cin, 4 * growth_rate, 1)),
            keras_bn2d(4 * growth_rate), nn.ReLU(inplace=True),
            l2(nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


def dense_block(cin: int, growth_rate: int, num_layers: int) -> tuple[nn.Sequential, int]:
    """``num_layers`` dense layers; returns the block and its output channel count."""
    layers = []
    for i in range(num_layers):
        layers.append(DenseLayer(cin + i * growth_rate, growth_rate))
    return nn.Sequential(*layers), cin + num_layers * growth_rate


class DenseNetMini(KerasFeaturesHead):
    """Conv32 → dense block → 1×1 conv 64 → pool → dense block → 1×1 conv 128 → GAP → dropout → 10.

    The notebook's "transition layers" are bare 1×1 convolutions (no BN/ReLU
    before them and no L2), the first followed by max pooling, the second by
    global average pooling; we keep that. L2 (``λ=1e-4``) covers the dense-layer
    convs only.
    """

    def __init__(self, num_classes: int = 10, growth_rate: int = 12, layers_per_block: int = 3,
                 dropout: float = 0.5, l2_lambda: float = 1e-4) -> None:
        super().__init__()
        self.l2_lambda = l2_lambda
        block1, c1 = dense_block(32, growth_rate, layers_per_block)
        block2, c2 = dense_block(64, growth_rate, layers_per_block)
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            block1, nn.Conv2d(c1, 64, 1), MaxPool2x2(),
            block2, nn.Conv2d(c2, 128, 1),
        )
        self.head = gap_head(128, num_classes, dropout)
        keras_init_(self)


@register_model(
    "densenet-mini", family="densenet", input_kind="image", recipe="densenet-mini",
    train_settings=AMP_CL,
    reference="notebook 001 'DenseNet_Inspired' (architecture and recipe; its printed 99.34% and "
              "156,923 params are hard-coded 'simulated' values, not measurements)",
)
def densenet_mini(num_classes: int = 10, growth_rate: int = 12, layers_per_block: int = 3,
                  dropout: float = 0.5, l2_lambda: float = 1e-4) -> nn.Module:
    """Notebook 001's DenseNet-inspired CNN: two dense blocks (growth rate 12) with 1×1 transitions."""
    return DenseNetMini(num_classes=num_classes, growth_rate=growth_rate,
                        layers_per_block=layers_per_block, dropout=dropout, l2_lambda=l2_lambda)
