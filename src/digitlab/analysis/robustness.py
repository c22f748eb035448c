"""Robustness: accuracy under Gaussian pixel noise, rotation and translation.

Perturbations are applied to whole batches with torch ops, on the model's
device: rotations with the augmentation warp (:func:`digitlab.data.augment.warp`,
the same affine convention as training-time augmentation), translations with
:func:`digitlab.data.augment.shift_images` (exact copies for whole pixels). The
perturbed images are scored by the one batched forward pass,
:func:`digitlab.models.forward.predict_logits`.

Noise uses *common random numbers*: one standard-normal tensor ``z`` is drawn
from ``seed`` for the whole set and every level uses ``clip(x + std·z, 0, 1)``,
so curves are smooth in ``std`` and two models evaluated with the same seed see
exactly the same noisy images (a paired comparison).

Robustness score (noise)::

    score = ∫ acc(σ) dσ / (clean_acc · (σ_max − σ_min))

the trapezoidal area under the accuracy-vs-σ curve over the tested range,
divided by the area of a model that kept its clean accuracy at every level.
1.0 = no degradation over the range; a model collapsing to chance (0.1 on 10
classes) right away scores about 0.1 / clean_acc. Only compare scores computed
over the same σ levels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.data.augment import affine_matrices, shift_images, warp
from digitlab.models.forward import as_float_batch, model_device, predict_logits

DEFAULT_STDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
DEFAULT_ANGLES = (-45.0, -30.0, -15.0, 0.0, 15.0, 30.0, 45.0)
DEFAULT_SHIFTS = (0, 1, 2, 3, 4)
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}

Transform = Callable[[torch.Tensor, slice], torch.Tensor]
"""``transform(x_batch, batch_slice)``: a perturbation of a float ``N×1×H×W`` batch."""


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate float ``N×1×H×W`` images about their centre, counter-clockwise for positive degrees.

    Bilinear, through the augmentation warp; corners that come from outside the
    image are filled with 0 (background).
    """
    if not degrees % 360:
        return x.clone()
    n = x.shape[0]
    one, zero = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    theta = affine_matrices(torch.full((n,), math.radians(degrees), dtype=torch.float64), one, zero, zero, zero)
    return warp(x, theta)


def gaussian_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``clip(x + std·N(0, 1), 0, 1)`` with noise from ``generator`` (on CPU)."""
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return (x + std * z).clamp_(0.0, 1.0)


def transformed_accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         transform: Transform, batch_size: int = 1000) -> float:
    """Accuracy of ``model`` on ``transform(x_batch, batch_slice)`` over the whole set, batched.

    ``transform`` receives the float batch on the model's device and the slice of
    the dataset it covers (so per-sample noise can be indexed consistently); the
    perturbed batch is scored with :func:`~digitlab.models.forward.predict_logits`.
    """
    dev = model_device(model)
    correct = 0
    for s in range(0, images.shape[0], batch_size):
        sl = slice(s, s + batch_size)
        with torch.inference_mode():
            x = transform(as_float_batch(images[sl]).to(dev), sl)
        pred = predict_logits(model, x, batch_size=batch_size).argmax(dim=1)
        correct += int((pred == labels[sl].cpu()).sum())
    return correct / max(1, images.shape[0])


def _identity(x: torch.Tensor, sl: slice) -> torch.Tensor:
    return x


def _noisy(x: torch.Tensor, sl: slice, z: torch.Tensor, std: float) -> torch.Tensor:
    return (x + std * z[sl].to(x.device)).clamp_(0.0, 1.0) if std else x


def _rotated(x: torch.Tensor, sl: slice, degrees: float) -> torch.Tensor:
    return rotate(x, degrees)


def _shifted(x: torch.Tensor, sl: slice, dx: float, dy: float) -> torch.Tensor:
    return shift_images(x, dx, dy)


def robustness_score(stds: Sequence[float], accuracies: Sequence[float],
                     clean_accuracy: float | None = None) -> float:
    """Normalised area under accuracy-vs-noise (see module docstring for the formula).

    ``clean_accuracy`` defaults to the accuracy at ``std == 0``, which must then be among ``stds``.
    """
    s = np.asarray(stds, dtype=np.float64)
    a = np.asarray(accuracies, dtype=np.float64)
    if s.size < 2 or s.shape != a.shape:
        raise ValueError("need at least two (std, accuracy) points of equal length")
    order = np.argsort(s)
    s, a = s[order], a[order]
    if clean_accuracy is None:
        zero = np.flatnonzero(s == 0)
        if zero.size == 0:
            raise ValueError("no std == 0 level: pass clean_accuracy")
        clean_accuracy = float(a[zero[0]])
    span = float(s[-1] - s[0])
    if span <= 0 or clean_accuracy <= 0:
        raise ValueError("std range and clean accuracy must be positive")
    area = float(np.sum((a[1:] + a[:-1]) * np.diff(s)) / 2)  # trapezoid rule
    return area / (clean_accuracy * span)


def noise_robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     stds: Sequence[float] = DEFAULT_STDS, seed: int = 0,
                     batch_size: int = 1000) -> dict[str, Any]:
    """Accuracy at each Gaussian noise ``std`` (pixel scale [0, 1]) and the robustness score.

    Returns ``{"std", "accuracy", "clean_accuracy", "score", "seed"}``; ``score``
    is None when fewer than two levels are given.
    """
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((images.shape[0], 1, *images.shape[-2:]), generator=gen)
    accs = [transformed_accuracy(model, images, labels, partial(_noisy, z=z, std=float(std)), batch_size)
            for std in stds]
    clean = accs[list(stds).index(0.0)] if 0.0 in list(stds) else \
        transformed_accuracy(model, images, labels, _identity, batch_size)
    score = robustness_score(stds, accs, clean) if len(stds) >= 2 and clean > 0 else None
    return {"std": [float(s) for s in stds], "accuracy": accs, "clean_accuracy": clean,
            "score": score, "seed": int(seed)}


def rotation_robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                        angles: Sequence[float] = DEFAULT_ANGLES, batch_size: int = 1000) -> dict[str, Any]:
    """Accuracy with every image rotated by each angle (degrees, positive = counter-clockwise).

    Returns ``{"angle": [...], "accuracy": [...]}``.
    """
    accs = [transformed_accuracy(model, images, labels, partial(_rotated, degrees=float(a)), batch_size)
            for a in angles]
    return {"angle": [float(a) for a in angles], "accuracy": accs}


def shift_robustness(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                     shifts: Sequence[int] = DEFAULT_SHIFTS, batch_size: int = 1000) -> dict[str, Any]:
    """Accuracy with every image translated by each shift (pixels) in the four directions.

    Returns ``{"shift": [...], "accuracy": [mean over directions], "by_direction":
    {"right": [...], "left": [...], "down": [...], "up": [...]}}``.
    """
    by_dir: dict[str, list[float]] = {d: [] for d in DIRECTIONS}
    for px in shifts:
        if px == 0:  # all four directions are the clean set
            clean = transformed_accuracy(model, images, labels, _identity, batch_size)
            for name in DIRECTIONS:
                by_dir[name].append(clean)
            continue
        for name, (ux, uy) in DIRECTIONS.items():
            by_dir[name].append(transformed_accuracy(
                model, images, labels, partial(_shifted, dx=ux * px, dy=uy * px), batch_size))
    mean = [float(np.mean([by_dir[d][i] for d in DIRECTIONS])) for i in range(len(shifts))]
    return {"shift": [float(s) for s in shifts], "accuracy": mean, "by_direction": by_dir}
