"""Small PyTorch-native CNNs used by the training-speed benchmark.

These are not from the reference notebooks; they keep PyTorch's default
initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

from digitlab.models.registry import AMP, AMP_CL, register_model


@register_model("plain-cnn", family="plain", input_kind="image", train_settings=AMP_CL,
                reference="speed-benchmark network (no published accuracy); 147,146 params", recipe="plain-cnn")
def plain_cnn(num_classes: int = 10) -> nn.Module:
    """conv16 5×5 → maxpool → ReLU → conv32 5×5 → maxpool → ReLU → fc256 → ReLU → fc10 (no padding)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 5), nn.MaxPool2d(2), nn.ReLU(),     # 28 → 24 → 12
        nn.Conv2d(16, 32, 5), nn.MaxPool2d(2), nn.ReLU(),    # 12 → 8 → 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 256), nn.ReLU(),
        nn.Linear(256, num_classes),
    )


class PyTorchExampleNet(nn.Module):
    """The network of pytorch/examples ``mnist/main.py``, returning logits instead of log-softmax.

    Layer names (``conv1``, ``conv2``, ``fc1``, ``fc2``) match the example so its
    state dict keys line up.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))                 # 28 → 26
        x = torch.relu(self.conv2(x))                 # 26 → 24
        x = torch.nn.functional.max_pool2d(x, 2)      # 24 → 12
        x = self.dropout1(x)
        x = torch.flatten(x, 1)                       # 64·12·12 = 9216
        x = self.dropout2(torch.relu(self.fc1(x)))
        return self.fc2(x)


@register_model("pytorch-example", family="plain", input_kind="image", recipe="pytorch-example", train_settings=AMP,
                reference="pytorch/examples mnist/main.py (Adadelta lr 1.0, StepLR γ=0.7, 14 epochs, "
                          "batch 64); 1,199,882 params")
def pytorch_example(num_classes: int = 10) -> nn.Module:
    """pytorch/examples MNIST net: conv32 → conv64 → maxpool → dropout → fc128 → dropout → fc10."""
    return PyTorchExampleNet(num_classes=num_classes)
