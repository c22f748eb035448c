"""Batched inference: the one place that turns images into logits for evaluation."""

from __future__ import annotations

import torch
from torch import nn

from digitlab.data.batches import to_float
from digitlab.utils import resolve_device


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter or buffer (CPU for a model with neither)."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def as_float_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×28×28`` → float ``N×1×28×28`` in [0, 1]; float ``N×28×28`` gains the channel axis.

    A float ``N×1×28×28`` tensor is returned unchanged (it is assumed to be in [0, 1]).
    """
    if images.dtype == torch.uint8:
        return to_float(images)
    if images.ndim == 3:
        return images.unsqueeze(1).float()
    return images.float()


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                   device: str | torch.device | None = None, progress: bool = False) -> torch.Tensor:
    """Logits ``N×K`` (float32, on CPU) for ``images`` in batches under ``torch.inference_mode``.

    ``images`` is uint8 ``N×28×28`` (the dataset layout) or float in [0, 1].
    ``device`` None runs on the model's own device; otherwise the model is moved
    there (``model.to`` mutates the module, as usual in torch). The model is put
    in eval mode and restored to its previous mode afterwards.
    """
    if device is not None:
        dev = resolve_device(device) if isinstance(device, str) else device
        model.to(dev)
    dev = model_device(model)
    was_training = model.training
    model.eval()
    n = images.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="predict", unit="batch", leave=False)
    out = []
    try:
        with torch.inference_mode():
            for start in starts:
                x = as_float_batch(images[start:start + batch_size]).to(dev, non_blocking=True)
                out.append(model(x).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return torch.empty((0, 0))
    return torch.cat(out)


def predict_proba(model: nn.Module, images: torch.Tensor, batch_size: int = 1000,
                  device: str | torch.device | None = None) -> torch.Tensor:
    """Softmax probabilities ``N×K`` (float32, CPU)."""
    return torch.softmax(predict_logits(model, images, batch_size, device), dim=1)
