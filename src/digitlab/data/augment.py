"""Batch augmentation with torch ops: one affine grid per batch, no per-image loop.

Each image gets its own random rotation, zoom, shift and shear, composed into a
2×3 matrix; ``affine_grid`` + ``grid_sample`` warp the whole batch at once.
Optional elastic distortion adds a smoothed random displacement field.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from digitlab.errors import ConfigError


@dataclass
class AugmentConfig:
    """Ranges of random transforms; zero disables a transform."""

    rotation: float = 10.0
    """Maximum rotation in degrees (uniform in ±rotation)."""
    zoom: float = 0.1
    """Maximum relative zoom (scale uniform in 1±zoom)."""
    shift: float = 0.1
    """Maximum translation as a fraction of the image size."""
    shear: float = 0.0
    """Maximum shear angle in degrees."""
    brightness: float = 0.0
    """Maximum additive brightness change (pixel values in [0, 1])."""
    contrast: float = 0.0
    """Maximum relative contrast change (factor uniform in 1±contrast)."""
    elastic_alpha: float = 0.0
    """Elastic displacement magnitude in pixels; 0 disables elastic distortion."""
    elastic_sigma: float = 4.0
    """Smoothing (Gaussian sigma, pixels) of the elastic displacement field."""
    p: float = 1.0
    """Probability that an image is augmented at all."""

    def __post_init__(self) -> None:
        for name in ("rotation", "zoom", "shift", "shear", "brightness", "contrast",
                     "elastic_alpha", "elastic_sigma"):
            if getattr(self, name) < 0:
                raise ConfigError(f"augment.{name} must be >= 0, got {getattr(self, name)}")
        if self.zoom >= 1:
            raise ConfigError(f"augment.zoom must be < 1, got {self.zoom}")
        if not 0 <= self.p <= 1:
            raise ConfigError(f"augment.p must be in [0, 1], got {self.p}")

    def to_dict(self) -> dict:
        return asdict(self)


def _uniform(n: int, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) * 2 - 1) * bound


def random_affine_matrices(n: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """``n×2×3`` matrices mapping output to input coordinates (affine_grid convention)."""
    angle = _uniform(n, math.radians(cfg.rotation), gen)
    scale = 1 + _uniform(n, cfg.zoom, gen)
    shear = _uniform(n, math.radians(cfg.shear), gen)
    tx = _uniform(n, 2 * cfg.shift, gen)  # grid coordinates span [-1, 1]: 2 units per image
    ty = _uniform(n, 2 * cfg.shift, gen)
    cos, sin = torch.cos(angle), torch.sin(angle)
    tan = torch.tan(shear)
    # rotation · shear, then divide by scale (the grid samples input at output coords)
    a = cos / scale
    b = (cos * tan - sin) / scale
    c = sin / scale
    d = (sin * tan + cos) / scale
    theta = torch.stack([torch.stack([a, b, tx], 1), torch.stack([c, d, ty], 1)], 1)
    if cfg.p < 1:
        keep = torch.rand(n, generator=gen) >= cfg.p
        theta[keep] = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    return theta


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def elastic_offsets(n: int, h: int, w: int, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Smoothed random displacement fields ``n×h×w×2`` in grid units."""
    field = torch.rand(n, 2, h, w, generator=gen) * 2 - 1
    k = _gaussian_kernel(cfg.elastic_sigma)
    pad = k.numel() // 2
    kx = k.view(1, 1, 1, -1).repeat(2, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(2, 1, 1, 1)
    field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode="reflect"), kx, groups=2)
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="reflect"), ky, groups=2)
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    scale = torch.tensor([2.0 / w, 2.0 / h]).view(1, 2, 1, 1) * cfg.elastic_alpha
    return (field * scale).permute(0, 2, 3, 1)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Randomly transform a float batch ``N×C×H×W`` in [0, 1]; same seed, same result.

    Random numbers are drawn on the CPU from ``gen`` (so results do not depend on
    the device) and the warp runs wherever ``x`` lives.
    """
    n, _, h, w = x.shape
    theta = random_affine_matrices(n, cfg, gen).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.elastic_alpha > 0:
        grid = grid + elastic_offsets(n, h, w, cfg, gen).to(x.device, x.dtype)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.contrast > 0 or cfg.brightness > 0:
        c = (1 + _uniform(n, cfg.contrast, gen)).view(n, 1, 1, 1).to(x.device, x.dtype)
        b = _uniform(n, cfg.brightness, gen).view(n, 1, 1, 1).to(x.device, x.dtype)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * c + mean + b).clamp_(0.0, 1.0)
    return out


class BatchAugmenter:
    """Callable wrapper so a config can be passed where an ``AugmentFn`` is expected."""

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return augment_batch(x, self.cfg, gen)
