"""Reference loops written the way most PyTorch MNIST code is: the "before" of every speed-up.

A ``TensorDataset`` of pre-normalised float images behind a shuffling
``DataLoader`` (per-sample indexing and collation), a model, an optimizer, a
scheduler, and the textbook loop. Nothing from digitlab's engine is used, so
the ratio against an engine recipe measures the engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from digitlab.data.dataset import Dataset

MEAN, STD = 0.1307, 0.3081


@dataclass(frozen=True)
class PlainRecipe:
    """One of the reference loops."""

    model: str
    batch_size: int
    epochs: int
    optimizer: str  # "adam" or "adadelta"
    lr: float
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: str = "onecycle"  # "onecycle" (per step) or "step" (per epoch, gamma)
    max_lr: float = 0.01
    pct_start: float = 0.25
    gamma: float = 0.7
    description: str = ""


def _normalised(images_u8: torch.Tensor) -> torch.Tensor:
    return ((images_u8.float() / 255.0 - MEAN) / STD).unsqueeze(1)


class _Standardised(torch.nn.Module):
    """The plain loops feed standardised inputs; digitlab models expect [0, 1]: undo it."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x * STD + MEAN)


def train_plain(recipe: PlainRecipe, dataset: Dataset, seed: int, epochs: int | None = None,
                device: str = "auto") -> dict[str, float]:
    """Train with the plain loop on ``dataset`` (any MNIST-format dataset); returns test accuracy and timings.

    The test set is scored with digitlab's one batched forward pass on the inner model
    (which takes [0, 1] pixels, so the standardisation is not needed there).
    """
    from digitlab.models import create_model
    from digitlab.models.forward import predict_logits
    from digitlab.utils import resolve_device

    dev = resolve_device(device)
    t_total = time.perf_counter()
    torch.manual_seed(seed)
    epochs = epochs or recipe.epochs
    train = TensorDataset(_normalised(dataset.train_images), dataset.train_labels)
    loader = DataLoader(train, batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    inner = create_model(recipe.model)
    model = _Standardised(inner).to(dev)
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    if recipe.optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=recipe.betas)
    else:
        opt = torch.optim.Adadelta(model.parameters(), lr=recipe.lr)
    if recipe.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.max_lr, pct_start=recipe.pct_start,
                                                    total_steps=epochs * len(loader))
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=recipe.gamma)
    t_train = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(dev), y.to(dev)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            if recipe.schedule == "onecycle":
                sched.step()
        if recipe.schedule != "onecycle":
            sched.step()
    train_seconds = time.perf_counter() - t_train
    pred = predict_logits(inner, dataset.test_images, batch_size=1000).argmax(1)
    correct = int((pred == dataset.test_labels).sum())
    return {"test_accuracy": correct / dataset.test_labels.numel(), "train_seconds": train_seconds,
            "total_seconds": time.perf_counter() - t_total, "epochs": epochs}


PLAIN = PlainRecipe(
    model="plain-cnn", batch_size=128, epochs=1, optimizer="adam", lr=1e-3, betas=(0.7, 0.9),
    schedule="onecycle", max_lr=0.01, pct_start=0.25,
    description="plain PyTorch loop: conv16-conv32-fc256 CNN, Adam(1e-3, betas 0.7/0.9), "
                "one-cycle (max 0.01, pct_start 0.25), batch 128, 1 epoch, DataLoader",
)
REFERENCE = PlainRecipe(
    model="pytorch-example", batch_size=64, epochs=14, optimizer="adadelta", lr=1.0,
    schedule="step", gamma=0.7,
    description="pytorch/examples MNIST: conv32-conv64-fc128 with dropout, Adadelta lr 1.0, "
                "StepLR gamma 0.7, batch 64, 14 epochs, DataLoader",
)
