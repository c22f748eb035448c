"""Squeeze-and-Excitation CNN from reference notebook 001 (``SE_CNN``)."""

from __future__ import annotations

import torch
from torch import nn

from digitlab.models._common import KerasFeaturesHead, gap_head, keras_bn2d, keras_init_, l2
from digitlab.models.ops import GlobalAvgPool2d, MaxPool2x2, global_avg_pool
from digitlab.models.registry import AMP_CL, register_model


class SqueezeExcitation(nn.Module):
    """Hu et al. 2018: global average → Dense(c/r, ReLU) → Dense(c, sigmoid) → channel-wise scale.

    As in notebook 001's ``create_squeeze_excitation_block``, both dense layers
    have biases and ``l2(1e-4)`` kernels; ``c // ratio`` (at least 1) bottleneck units.
    """

    def __init__(self, channels: int, ratio: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // ratio)
        self.fc = nn.Sequential(
            l2(nn.Linear(channels, hidden)), nn.ReLU(inplace=True),
            l2(nn.Linear(hidden, channels)), nn.Sigmoid(),
        )

    def gate(self, squeezed: torch.Tensor) -> torch.Tensor:
        """The per-channel scale ``N×C`` (in (0, 1): a sigmoid) from the ``N×C`` channel means, in their dtype."""
        if not torch.is_autocast_enabled(squeezed.device.type):
            return self.fc(squeezed)
        # under autocast the two tiny dense layers run in float32: casting the N×C means (and the gate
        # back) is two small copies where autocast casts all four weights and biases each step, forward
        # and backward, and the gate is computed more precisely
        with torch.autocast(squeezed.device.type, enabled=False):
            weights = self.fc(squeezed.float())
        return weights.to(squeezed.dtype)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale ``N×C×1×1`` (in (0, 1): a sigmoid), in ``x``'s dtype."""
        # the global average as sum × (1/HW): the same value to float rounding, and its backward is a
        # broadcast view where mean's backward writes a full-size divided copy (measured ~20% faster
        # for the 28×28 block's forward + backward in bf16)
        return self.gate(x.sum(dim=(2, 3)) * (1.0 / (x.shape[2] * x.shape[3])))[:, :, None, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_weights(x)

    def forward_pooled(self, x: torch.Tensor, pool: nn.Module) -> torch.Tensor:
        """``pool(self(x))`` for a max-pool, computed as ``pool(x) · weights``: the weights are positive
        and constant over each channel's map, so the scaling commutes with the maximum (exactly: rounding
        of a product by a positive number is monotone), and it runs at a quarter of the resolution."""
        return pool(x) * self.channel_weights(x)

    def forward_averaged(self, x: torch.Tensor) -> torch.Tensor:
        """``global_average(self(x))`` as ``N×C``, computed as ``m · gate(m)`` with ``m = global_average(x)``:
        the scale is constant over each channel's map, so it commutes with the average (the same value up
        to float rounding), and the SE squeeze *is* that average: one average instead of two, and no
        full-size scaling (forward and backward)."""
        squeezed = global_avg_pool(x).flatten(1)
        return squeezed * self.gate(squeezed)


class SECNN(KerasFeaturesHead):
    """Three stages of conv(ReLU) → BN → SE at 32/64/128 filters, pooling between, GAP → dropout → 10.

    L2 applies only to the SE dense kernels, as in the notebook (its convs have none).
    """

    def __init__(self, num_classes: int = 10, ratio: int = 16, dropout: float = 0.5,
                 l2_lambda: float = 1e-4) -> None:
        super().__init__()
        self.l2_lambda = l2_lambda
        layers: list[nn.Module] = []
        cin = 1
        for i, width in enumerate((32, 64, 128)):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True), keras_bn2d(width),
                       SqueezeExcitation(width, ratio)]
            if i < 2:
                layers.append(MaxPool2x2())
            cin = width
        self.features = nn.Sequential(*layers)
        self.head = gap_head(cin, num_classes, dropout)
        keras_init_(self)
        self.scale_after_pool = True
        """Scale after the fast max-pool (``MaxPool2x2``); False: in ``features``' order (same function, exactly).
        ``digitlab.models.ops.plain_copy`` swaps in ``nn.MaxPool2d``, which always runs in order."""
        self.scale_after_average = True
        """The last SE block scales the head's global average (``GlobalAvgPool2d``) instead of its full-size
        input; False: in order (same function up to float rounding). ``plain_copy``'s
        ``nn.AdaptiveAvgPool2d`` always runs in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``features`` in order, except that an SE block followed by max-pooling scales after the
        # pooling (SqueezeExcitation.forward_pooled): same function, a quarter of the scaling work; and the
        # last SE block scales the head's global average (SqueezeExcitation.forward_averaged)
        layers = list(self.features.children())
        head = list(self.head.children())
        i = 0
        while i < len(layers):
            layer = layers[i]
            if isinstance(layer, SqueezeExcitation):
                if self.scale_after_pool and i + 1 < len(layers) and isinstance(layers[i + 1], MaxPool2x2):
                    x = layer.forward_pooled(x, layers[i + 1])
                    i += 2
                    continue
                if (self.scale_after_average and i + 1 == len(layers) and len(head) > 2
                        and isinstance(head[0], GlobalAvgPool2d) and isinstance(head[1], nn.Flatten)):
                    x = layer.forward_averaged(x)
                    for module in head[2:]:
                        x = module(x)
                    return x
            x = layer(x)
            i += 1
        return self.head(x)


@register_model(
    "se-cnn", family="senet", input_kind="image", recipe="se-cnn", train_settings=AMP_CL,
    reference="notebook 001 'SE_CNN' (architecture and recipe; its printed 99.38% and 95,847 params "
              "are hard-coded 'simulated' values, not measurements)",
)
def se_cnn(num_classes: int = 10, ratio: int = 16, dropout: float = 0.5,
           l2_lambda: float = 1e-4) -> nn.Module:
    """Notebook 001's squeeze-and-excitation CNN (SE ratio 16 after each conv stage)."""
    return SECNN(num_classes=num_classes, ratio=ratio, dropout=dropout, l2_lambda=l2_lambda)
