"""Plain convolutional networks from the reference notebooks (002, 000, 001).

All three follow their Keras source layer for layer, including Keras'
initialisation and BatchNorm settings (see :mod:`digitlab.models._common`).
"""

from __future__ import annotations

from torch import nn

from digitlab.models._common import KerasFeaturesHead, keras_bn1d, keras_bn2d, keras_init_, l2
from digitlab.models.ops import Dropout, Flatten, GlobalAvgPool2d, MaxPool2x2
from digitlab.models.registry import AMP_CL, register_model


@register_model(
    "cnn-simple", family="cnn", input_kind="image", recipe="cnn-simple", train_settings=AMP_CL,
    reference="notebook 002: 99.23% test; 93,322 params (Keras count of its architecture, "
              "the notebook prints no summary)",
)
def cnn_simple(num_classes: int = 10, dropout: float = 0.5, width: int = 32) -> nn.Module:
    """Conv32 → Pool → Conv64 → Pool → Conv64 → Dense64 → Dropout → 10 (Keras 'valid' padding).

    ``width`` is the first conv's filter count; the later convs and the dense layer take twice it
    (the notebook's network is ``width=32``).
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    w1, w2 = width, 2 * width
    # notebook 002 gives its Conv2D no padding argument: Keras' default 'valid'
    # (28 → 26 → 13 → 11 → 5 → 3), hence the 64·3·3 flatten
    return keras_init_(nn.Sequential(
        nn.Conv2d(1, w1, 3), nn.ReLU(inplace=True), MaxPool2x2(),
        nn.Conv2d(w1, w2, 3), nn.ReLU(inplace=True), MaxPool2x2(),
        nn.Conv2d(w2, w2, 3), nn.ReLU(inplace=True),
        Flatten(), nn.Linear(w2 * 3 * 3, w2), nn.ReLU(inplace=True), Dropout(dropout),
        nn.Linear(w2, num_classes),
    ))


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    # notebook 000: Conv2D(padding='same') → BatchNormalization → ReLU
    return [nn.Conv2d(cin, cout, 3, padding=1), keras_bn2d(cout), nn.ReLU(inplace=True)]


@register_model(
    "cnn-deep", family="cnn", input_kind="image", recipe="cnn-deep", train_settings=AMP_CL,
    reference="notebook 000: 99.71% test (99.68% val); 1,015,530 params in Keras' count "
              "(1,013,098 trainable + 2,432 BN moving statistics)",
)
def cnn_deep(num_classes: int = 10, conv_dropout: float = 0.25, dense_dropout: float = 0.5) -> nn.Module:
    """Three blocks of 2×(3×3 conv, BN, ReLU) at 32/64/128 filters, then Dense 512 and 256 with BN."""
    layers: list[nn.Module] = []
    cin = 1
    for width in (32, 64, 128):
        layers += _conv_bn_relu(cin, width) + _conv_bn_relu(width, width)
        layers += [MaxPool2x2(), Dropout(conv_dropout)]
        cin = width
    # 28 → 14 → 7 → 3 (Keras' MaxPooling2D floors odd sizes, as MaxPool2d does)
    # notebook 000's dense head: Dense(relu) → BatchNormalization → Dropout
    layers += [
        Flatten(),
        nn.Linear(128 * 3 * 3, 512), nn.ReLU(inplace=True), keras_bn1d(512), Dropout(dense_dropout),
        nn.Linear(512, 256), nn.ReLU(inplace=True), keras_bn1d(256), Dropout(dense_dropout),
        nn.Linear(256, num_classes),
    ]
    return keras_init_(nn.Sequential(*layers))


class EnhancedCNN(KerasFeaturesHead):
    """Notebook 001's ``Enhanced_CNN``: conv pairs with BN and dropout, global pooling, L2 dense head.

    Keras order is kept: ``Conv2D(activation='relu')`` then ``BatchNormalization``
    (BN after the activation) and BN only after the first conv of each pair.
    Only the Dense(128) kernel has ``l2(1e-4)`` — see :meth:`l2_params`.
    """

    def __init__(self, num_classes: int = 10, l2_lambda: float = 1e-4) -> None:
        super().__init__()
        self.l2_lambda = l2_lambda
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(inplace=True), keras_bn2d(32),
            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(inplace=True),
            MaxPool2x2(), Dropout(0.25),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), keras_bn2d(64),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(inplace=True),
            MaxPool2x2(), Dropout(0.25),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(inplace=True), keras_bn2d(128),
            GlobalAvgPool2d(), nn.Flatten(), Dropout(0.5),
        )
        self.head = nn.Sequential(
            l2(nn.Linear(128, 128)), nn.ReLU(inplace=True), keras_bn1d(128), Dropout(0.5),
            nn.Linear(128, num_classes),
        )
        keras_init_(self)


@register_model(
    "cnn-enhanced", family="cnn", input_kind="image", recipe="cnn-enhanced", train_settings=AMP_CL,
    reference="notebook 001 'Enhanced_CNN' (architecture and recipe; its printed 99.21% and "
              "89,634 params are hard-coded 'simulated' values, not measurements)",
)
def cnn_enhanced(num_classes: int = 10, l2_lambda: float = 1e-4) -> nn.Module:
    """Notebook 001's enhanced CNN: BN, dropout, global average pooling, L2 on the dense layer."""
    return EnhancedCNN(num_classes=num_classes, l2_lambda=l2_lambda)
