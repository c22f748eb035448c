"""Networks designed for this project's speed and accuracy recipes (``digitlab bench``)."""

from __future__ import annotations

from torch import nn

from digitlab.models.ops import Flatten, MaxPool2x2
from digitlab.models.registry import AMP_CL, register_model


def _conv_bn(cin: int, cout: int, k: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


@register_model("fast-cnn", family="fast", reference="bench recipe `fast` (time to 99%)", recipe="fast-cnn",
                train_settings=AMP_CL)
def fast_cnn(c1: int = 8, c2: int = 32, hidden: int = 64, num_classes: int = 10) -> nn.Module:
    """Two 5×5 conv stages with batch norm and a small head: few FLOPs, quick to converge.

    Pooling comes before batch norm and ReLU (max-pool commutes with the
    monotone ReLU; BN after pooling is a different but equally good
    normalisation) so the elementwise work runs at a quarter of the resolution.
    Pooling uses ``MaxPool2x2`` (see ``digitlab.models.ops``). The first conv
    follows autocast like the others: with the registered channels-last layout its
    bf16 form trained ~10% faster than a float32 ``Float32Conv2d`` (variant
    ``fp32-first-conv`` of ``scripts/measure_fast_variants.py``, which
    measures the alternatives: narrower, fp32, channels-last, bigger batches, cropping).
    """
    return nn.Sequential(
        nn.Conv2d(1, c1, 5, bias=False), MaxPool2x2(), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        nn.Conv2d(c1, c2, 5, bias=False), MaxPool2x2(), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
        Flatten(), nn.Linear(c2 * 16, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes),
    )


@register_model("best-cnn", family="fast", reference="bench recipe `best`; the shipped default model",
                recipe="best-cnn", train_settings=AMP_CL)
def best_cnn(width: int = 32, dropout: float = 0.2, kernel_size: int = 3, num_classes: int = 10) -> nn.Module:
    """VGG-style: (conv-BN-ReLU)×2 at 28² and 14², one conv at 7², pooling to 3² + linear head.

    ``kernel_size`` (odd; "same" padding) exists for ensembles: members with
    different receptive fields make less correlated mistakes than seeds of
    one network (An et al. 2020 ensemble 3×3, 5×5 and 7×7 models).
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"best-cnn kernel_size must be a positive odd number, got {kernel_size}")
    w, k = width, kernel_size
    return nn.Sequential(
        *_conv_bn(1, w, k), *_conv_bn(w, w, k), MaxPool2x2(),
        *_conv_bn(w, 2 * w, k), *_conv_bn(2 * w, 2 * w, k), MaxPool2x2(),
        *_conv_bn(2 * w, 4 * w, k), MaxPool2x2(),
        Flatten(), nn.Dropout(dropout), nn.Linear(4 * w * 9, num_classes),
    )
