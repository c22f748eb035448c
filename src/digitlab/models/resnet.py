"""ResNet-style network from reference notebook 001 (``ResNet_Inspired``)."""

from __future__ import annotations

import torch
from torch import nn

from digitlab.models._common import KerasFeaturesHead, gap_head, keras_bn2d, keras_init_, l2
from digitlab.models.ops import MaxPool2x2
from digitlab.models.registry import AMP_CL, register_model


class ResidualBlock(nn.Module):
    """Two 3×3 conv+BN with an identity (or 1×1 conv+BN projection) shortcut, ReLU after the add.

    Mirrors notebook 001's ``create_residual_block``: every conv carries
    ``l2(1e-4)``, the projection is used only when the channel count (or stride) changes.
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            l2(nn.Conv2d(cin, cout, 3, stride=stride, padding=1)), keras_bn2d(cout), nn.ReLU(inplace=True),
            l2(nn.Conv2d(cout, cout, 3, padding=1)), keras_bn2d(cout),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(l2(nn.Conv2d(cin, cout, 1, stride=stride)), keras_bn2d(cout))
        self.act = nn.ReLU(inplace=True)
        # add the shortcut into the body's output in place (its last op is BN, whose backward does
        # not need its output); digitlab.models.ops.plain_copy turns this off
        self.inplace = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        out = out.add_(self.shortcut(x)) if self.inplace else out + self.shortcut(x)
        return self.act(out)


class ResNetMini(KerasFeaturesHead):
    """Stem conv32 → 2 blocks@32 → pool → 2 blocks@64 → pool → 2 blocks@128 → GAP → dropout → 10.

    No strided convolutions (the notebook keeps ``stride=1`` "for small images"
    and downsamples with max pooling). L2 (``λ=1e-4``) applies to the stem and
    every block/shortcut conv, not to the final dense layer.
    """

    def __init__(self, num_classes: int = 10, widths: tuple[int, ...] = (32, 64, 128),
                 blocks_per_stage: int = 2, dropout: float = 0.5, l2_lambda: float = 1e-4) -> None:
        super().__init__()
        self.l2_lambda = l2_lambda
        layers: list[nn.Module] = [l2(nn.Conv2d(1, widths[0], 3, padding=1)), keras_bn2d(widths[0]),
                                   nn.ReLU(inplace=True)]
        cin = widths[0]
        for i, width in enumerate(widths):
            if i > 0:
                layers.append(MaxPool2x2())
            for _ in range(blocks_per_stage):
                layers.append(ResidualBlock(cin, width))
                cin = width
        self.features = nn.Sequential(*layers)
        self.head = gap_head(cin, num_classes, dropout)
        keras_init_(self)


@register_model(
    "resnet-mini", family="resnet", input_kind="image", recipe="resnet-mini", train_settings=AMP_CL,
    reference="notebook 001 'ResNet_Inspired' (architecture and recipe; its printed 99.47% and "
              "123,410 params are hard-coded 'simulated' values, not measurements)",
)
def resnet_mini(num_classes: int = 10, widths: list[int] | tuple[int, ...] = (32, 64, 128),
                blocks_per_stage: int = 2, dropout: float = 0.5, l2_lambda: float = 1e-4) -> nn.Module:
    """Notebook 001's ResNet-inspired CNN: six residual blocks (32/64/128), L2 on every conv."""
    return ResNetMini(num_classes=num_classes, widths=tuple(widths), blocks_per_stage=blocks_per_stage,
                      dropout=dropout, l2_lambda=l2_lambda)
