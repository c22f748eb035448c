"""LeNet-5 (LeCun, Bottou, Bengio & Haffner, 1998), the classic MNIST convnet.

The common modern reading of the paper's architecture:
C1 conv 6@5×5 (padding 2, standing in for the paper's 32×32 padded input) →
S2 2×2 pooling → C3 conv 16@5×5 → S4 2×2 pooling → C5 120 → F6 84 → 10.

Deviations from the 1998 paper, as in most reimplementations:
  * C3 is fully connected to S2's six maps (the paper used a fixed sparse table);
  * S2/S4 are plain average pooling (the paper's subsampling had a trainable
    coefficient and bias per map);
  * the output is a linear layer returning logits (the paper used Euclidean RBF units);
  * activation: ``tanh`` by default (the paper's squashing function was the
    scaled ``1.7159·tanh(2x/3)``; plain tanh differs only by a fixed scale);
    ``activation="relu"`` and ``pool="max"`` give the popular modernised variant.
PyTorch's default initialisation is used.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from digitlab.errors import ConfigError
from digitlab.models.ops import MaxPool2x2
from digitlab.models.registry import AMP_CL, register_model

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "relu": lambda: nn.ReLU(inplace=True)}
# MaxPool2x2 is nn.MaxPool2d(2) with a faster CPU kernel (digitlab.models.ops)
_POOLS: dict[str, Callable[[], nn.Module]] = {"avg": lambda: nn.AvgPool2d(2), "max": MaxPool2x2}


@register_model(
    "lenet5", family="lenet", input_kind="image", recipe="lenet5", train_settings=AMP_CL,
    reference="LeCun et al. 1998: LeNet-5 0.95% test error (99.05%) without distortions; 61,706 params",
)
def lenet5(num_classes: int = 10, activation: str = "tanh", pool: str = "avg") -> nn.Module:
    """LeNet-5: conv6 5×5 (pad 2) → pool → conv16 5×5 → pool → fc120 → fc84 → 10 (tanh, avg-pool)."""
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"lenet5: activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    if pool not in _POOLS:
        raise ConfigError(f"lenet5: pool must be one of {sorted(_POOLS)}, got {pool!r}")
    act, pooling = _ACTIVATIONS[activation], _POOLS[pool]
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), act(), pooling(),     # 28 → 28 → 14
        nn.Conv2d(6, 16, 5), act(), pooling(),               # 14 → 10 → 5
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, num_classes),
    )
