"""Building blocks shared by the model families: Keras-faithful layers and L2 bookkeeping.

The reference notebooks are Keras. To reproduce them layer for layer we copy the
Keras defaults PyTorch does not share:

* kernels start Glorot-uniform and biases at zero (PyTorch: Kaiming-uniform(a=√5)
  and a uniform bias), see :func:`keras_init_`;
* ``BatchNormalization`` uses ``epsilon=1e-3`` and ``momentum=0.99`` — PyTorch
  spells the same moving average ``momentum=0.01`` (its momentum weights the new
  batch, Keras' weights the old average), see :func:`keras_bn2d` / :func:`keras_bn1d`;
* ``padding='same'`` for a stride-1 3×3 convolution is ``padding=1``;
  ``MaxPooling2D()`` is ``MaxPool2d(2)`` (both floor odd sizes: 7 → 3).

Parameter counts: Keras' ``count_params()`` includes every weight, trainable or
not, so a ``BatchNormalization`` layer on ``c`` channels counts ``4c`` (gamma,
beta, moving mean, moving variance). PyTorch keeps the moving statistics as
buffers, so :func:`digitlab.models.count_parameters` reports ``2c`` for it.
:func:`count_parameters_keras` adds the running statistics back so the numbers
printed by the notebooks can be compared like with like.
"""

from __future__ import annotations

import torch
from torch import nn

KERAS_BN_EPS = 1e-3
KERAS_BN_MOMENTUM = 0.01  # = 1 - Keras' momentum 0.99


def keras_bn2d(channels: int) -> nn.BatchNorm2d:
    """``layers.BatchNormalization()`` after a convolution, with Keras' epsilon and momentum."""
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def keras_bn1d(features: int) -> nn.BatchNorm1d:
    """``layers.BatchNormalization()`` after a dense layer, with Keras' epsilon and momentum."""
    return nn.BatchNorm1d(features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def keras_init_(module: nn.Module) -> nn.Module:
    """Re-initialise every conv/linear layer the Keras way (Glorot-uniform kernel, zero bias).

    Layers that carry ``keras_init = "he_uniform"`` (set by :func:`he_uniform`) get
    He-uniform kernels instead, as ``kernel_initializer=HeUniform()`` does in Keras.
    Returns ``module`` for chaining.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if getattr(m, "keras_init", "glorot_uniform") == "he_uniform":
                # Keras HeUniform: U(±sqrt(6/fan_in)) == kaiming_uniform_ with the ReLU gain
                nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def he_uniform(layer: nn.Module) -> nn.Module:
    """Mark a layer for He-uniform initialisation by :func:`keras_init_`."""
    layer.keras_init = "he_uniform"  # type: ignore[assignment]
    return layer


def l2(layer: nn.Module) -> nn.Module:
    """Mark a layer as carrying ``kernel_regularizer=l2(λ)`` (its weight, not its bias)."""
    layer.keras_l2 = True  # type: ignore[assignment]
    return layer


class KerasL2:
    """Mixin for models whose notebook puts an L2 kernel regulariser on some layers.

    Keras adds ``λ·Σw²`` to the loss for each regularised kernel (biases, BN and
    unmarked layers are not regularised). The training engine can either add
    :meth:`l2_penalty` to the loss, or put :meth:`l2_params` in an optimizer
    parameter group with coupled weight decay ``2λ`` (``torch.optim.Adam``'s
    ``weight_decay`` adds ``wd·w`` to the gradient, and ``∂(λw²)/∂w = 2λw``).
    A config's global ``weight_decay`` is *not* equivalent: it would also decay
    biases, BN parameters and the unregularised layers.
    """

    l2_lambda: float = 1e-4

    def l2_params(self) -> list[nn.Parameter]:
        """The kernels the notebook regularises (in module order)."""
        return [m.weight for m in self.modules() if getattr(m, "keras_l2", False)]  # type: ignore[attr-defined]

    def l2_penalty(self) -> torch.Tensor:
        """``λ·Σw²`` over :meth:`l2_params`, the term Keras adds to the loss."""
        params = self.l2_params()
        if not params:
            return torch.zeros(())
        return self.l2_lambda * torch.stack([p.pow(2).sum() for p in params]).sum()


class KerasFeaturesHead(KerasL2, nn.Module):
    """A notebook's Keras model as ``head(features(x))``; subclasses build both parts."""

    features: nn.Module
    head: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def gap_head(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Keras ``GlobalAveragePooling2D → Dropout → Dense(num_classes)``, returning logits."""
    from digitlab.models.ops import Dropout, GlobalAvgPool2d  # local: keeps this module free of ops' imports

    return nn.Sequential(GlobalAvgPool2d(), nn.Flatten(), Dropout(dropout), nn.Linear(channels, num_classes))


def count_parameters_keras(model: nn.Module) -> int:
    """Parameter count as Keras' ``count_params()`` reports it.

    Trainable parameters plus the BatchNorm moving mean and variance (which
    PyTorch stores as buffers). ``num_batches_tracked`` has no Keras counterpart
    and is not counted.
    """
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for stat in (m.running_mean, m.running_var):
                n += stat.numel() if stat is not None else 0
    return n
