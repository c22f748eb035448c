"""An MNIST-C style corruption suite: 15 corruptions as seeded batch tensor operations.

Mu & Gilmer (2019, "MNIST-C: A Robustness Benchmark for Computer Vision") apply 15
corruptions to the MNIST test set and report accuracy per corruption and their mean.
This module implements them in digitlab's own code, with the published descriptions
as the specification: every corruption takes a float batch ``N×1×H×W`` in [0, 1],
a severity multiplier and a ``torch.Generator``, and returns a batch of the same shape
in [0, 1]. Random numbers are drawn on the CPU from the generator (same seed, same
images, on any device); the work is whole-batch tensor operations, never a loop over
images.

``severity`` scales each corruption's strength parameter; ``1.0`` is the setting
MNIST-C published for it (listed in :data:`CORRUPTIONS` with what it scales).
Differences from the reference code are deliberate simplifications: glass blur
displaces pixels with a random local gather instead of sequential swaps, motion blur
is a one-sided Gaussian streak built from shifted copies, fog is spectral 1/f noise
instead of a diamond-square plasma fractal, and the Canny detector uses 4-direction
non-maximum suppression with an iterated-dilation hysteresis.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.analysis.plots import fig_to_png, pyplot
from digitlab.data.augment import affine_matrices, smoothing_matrix, warp
from digitlab.errors import ConfigError

CorruptionFn = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption of the suite."""

    name: str
    description: str
    """What it does to the image."""
    parameter: str
    """The parameter ``severity`` scales, and its value at severity 1 (MNIST-C's setting)."""
    stochastic: bool
    """True when the result depends on the random generator (False: a fixed transform)."""
    fn: CorruptionFn


# --------------------------------------------------------------------------- helpers

def _rand(shape: Sequence[int], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.rand(tuple(shape), generator=gen).to(like.device, like.dtype)


def _signs(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random ±1 values (float, CPU)."""
    return torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (reflect padding) of ``…×H×W`` images, separable, as two small matmuls."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    my = smoothing_matrix(h, float(sigma)).to(x.device, x.dtype)
    mx = smoothing_matrix(w, float(sigma)).to(x.device, x.dtype)
    return my @ x @ mx.T


def _affine(x: torch.Tensor, *, angle: torch.Tensor | None = None, scale: torch.Tensor | None = None,
            shear: torch.Tensor | None = None, tx: torch.Tensor | None = None,
            ty: torch.Tensor | None = None) -> torch.Tensor:
    """Warp each image about its centre (parameters 1-D of length N; None = identity part)."""
    n = x.shape[0]
    zeros, ones = torch.zeros(n), torch.ones(n)
    theta = affine_matrices(zeros if angle is None else angle, ones if scale is None else scale,
                            zeros if shear is None else shear, zeros if tx is None else tx,
                            zeros if ty is None else ty)
    return warp(x, theta)


def _line_profile(dist: torch.Tensor, half_width: float) -> torch.Tensor:
    """Stroke intensity at distance ``dist`` from a line's centre: ``log(1 − d/w) + 1`` clipped to [0, 1]
    (MNIST-C's profile, ``w`` = 2.3 px at severity 1)."""
    if half_width <= 0:
        return torch.zeros_like(dist)
    d = (dist / half_width).clamp(max=1 - 1e-6)
    return (torch.log1p(-d) + 1).clamp(0.0, 1.0)


def _grid(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Column and row coordinates (``1×1×1×W`` and ``1×1×H×1``) of ``x``'s pixels."""
    h, w = x.shape[-2:]
    cols = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, 1, w)
    rows = torch.arange(h, device=x.device, dtype=x.dtype).view(1, 1, h, 1)
    return cols, rows


# --------------------------------------------------------------------------- the corruptions

def shot_noise(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    lam = 3.0 / max(severity, 1e-6)
    counts = torch.poisson(x.detach().cpu().float() * lam, generator=gen)
    return (counts / lam).to(x.device, x.dtype).clamp(0.0, 1.0)


def impulse_noise(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    amount = min(1.0, 0.17 * severity)
    hit = _rand(x.shape, gen, x) < amount
    salt = (_rand(x.shape, gen, x) < 0.5).to(x.dtype)
    return torch.where(hit, salt, x)


def glass_blur(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    sigma, delta, iterations = 0.7 * severity, max(1, round(severity)), 2
    n, c, h, w = x.shape
    out = blur(x, sigma)
    cols = torch.arange(w).view(1, 1, w)
    rows = torch.arange(h).view(1, h, 1)
    for _ in range(iterations):
        # half the pixels take the value of a random neighbour within ±delta (a local shuffle)
        move = torch.rand(n * c, h, w, generator=gen) < 0.5
        dy = torch.randint(-delta, delta + 1, (n * c, h, w), generator=gen) * move
        dx = torch.randint(-delta, delta + 1, (n * c, h, w), generator=gen) * move
        src = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        out = out.reshape(n * c, h * w).gather(1, src.view(n * c, h * w).to(x.device)).view(n, c, h, w)
    return blur(out, sigma).clamp(0.0, 1.0)


def motion_blur(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    sigma = 3.0 * severity
    radius = max(1, round(10 * severity))
    n, w = x.shape[0], x.shape[-1]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(45)
    out = torch.zeros_like(x)
    total = 0.0
    for d in range(radius + 1):  # a loop over the taps of the streak, each a whole-batch warp
        weight = math.exp(-(d ** 2) / (2 * sigma ** 2)) if sigma > 0 else float(d == 0)
        if weight < 1e-4:
            break
        shifted = x if d == 0 else _affine(x, tx=2 * d * torch.cos(angle) / w, ty=-2 * d * torch.sin(angle) / w)
        out = out + weight * shifted
        total += weight
    return (out / total).clamp(0.0, 1.0)


def shear(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    return _affine(x, shear=_signs(x.shape[0], gen) * 0.4 * severity).clamp(0.0, 1.0)


def scale(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    zoom = max(0.05, 1.0 - 0.3 * severity)
    return _affine(x, scale=torch.full((x.shape[0],), zoom)).clamp(0.0, 1.0)


def rotate(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    return _affine(x, angle=_signs(x.shape[0], gen) * 0.4 * severity).clamp(0.0, 1.0)


def brightness(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    return (x + 0.5 * severity).clamp(0.0, 1.0)


def translate(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    px = 3.0 * severity
    sx, sy = _signs(n, gen), _signs(n, gen)
    return _affine(x, tx=sx * 2 * px / w, ty=sy * 2 * px / h).clamp(0.0, 1.0)


def stripe(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    w = x.shape[-1]
    k = min(w // 2, round(0.25 * w * severity))
    if k <= 0:
        return x.clone()
    out = x.clone()
    out[..., :k] = 1 - x[..., :k]
    out[..., w - k:] = 1 - x[..., w - k:]
    return out


def fractal_noise(n: int, h: int, w: int, gen: torch.Generator, exponent: float = 2.0) -> torch.Tensor:
    """``n×h×w`` smooth random fields in [0, 1]: Gaussian noise with amplitude spectrum ``1/f^exponent``,
    made on a 4× larger canvas and cropped (the haze varies on scales larger than the image, as a crop
    of MNIST-C's 256×256 plasma fractal does)."""
    hh, ww = 4 * h, 4 * w
    z = torch.randn(n, hh, ww, generator=gen)
    fy = torch.fft.fftfreq(hh).view(hh, 1)
    fx = torch.fft.fftfreq(ww).view(1, ww)
    f = torch.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    amp = f ** -exponent
    amp[0, 0] = 0.0
    field = torch.fft.ifft2(torch.fft.fft2(z) * amp).real[:, :h, :w]
    lo = field.amin(dim=(1, 2), keepdim=True)
    hi = field.amax(dim=(1, 2), keepdim=True)
    return (field - lo) / (hi - lo).clamp_min(1e-8)


def fog(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    strength = 3.0 * severity
    n, c, h, w = x.shape
    haze = fractal_noise(n * c, h, w, gen).view(n, c, h, w).to(x.device, x.dtype)
    top = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + strength * haze) * top / (top + strength).clamp_min(1e-8)).clamp(0.0, 1.0)


def spatter(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    liquid = blur(torch.randn(n * c, h, w, generator=gen), 1.0)
    liquid = (liquid - liquid.mean(dim=(1, 2), keepdim=True)) / liquid.std(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    wet = min(0.999, 0.5 * severity)
    threshold = float(torch.special.ndtri(torch.tensor(1.0 - wet)))
    mask = blur((liquid > threshold).float(), 1.5)
    mask = torch.where(mask < 0.8, torch.zeros_like(mask), mask).view(n, c, h, w).to(x.device, x.dtype)
    mud = 63 / 255
    return (x * (1 - mask) + mud * mask).clamp(0.0, 1.0)


def dotted_line(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    r0 = torch.randint(0, h - 1, (n,), generator=gen).float().view(n, 1, 1, 1).to(x.device, x.dtype)
    r1 = torch.randint(0, h - 1, (n,), generator=gen).float().view(n, 1, 1, 1).to(x.device, x.dtype)
    cols, rows = _grid(x)
    centre = r0 + (r1 - r0) * cols / (w - 1)
    line = _line_profile((rows - centre).abs(), 2.3 * severity)
    dotted = ((torch.arange(w, device=x.device) // 2) % 2 == 1).to(x.dtype).view(1, 1, 1, w)
    return (x + line * dotted).clamp(0.0, 1.0)


def zigzag(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    a, b = 2.0, 2.0  # half-period and amplitude of the zigzag, pixels
    c0, c1 = 2.0, float(w - 3)
    r0 = torch.randint(0, h - 1, (n,), generator=gen).float()
    r1 = r0 + torch.randint(-5, 5, (n,), generator=gen).float()
    theta = torch.atan((r1 - r0) / (c1 - c0))
    length = ((c1 - c0) / torch.cos(theta)).view(n, 1, 1, 1).to(x.device, x.dtype)
    cos = torch.cos(theta).view(n, 1, 1, 1).to(x.device, x.dtype)
    sin = torch.sin(theta).view(n, 1, 1, 1).to(x.device, x.dtype)
    cols, rows = _grid(x)
    dc, dr = cols - c0, rows - r0.view(n, 1, 1, 1).to(x.device, x.dtype)
    u = dc * cos + dr * sin  # along the line
    v = -dc * sin + dr * cos  # across it (rows down)
    phase = torch.frac((u + a) / (4 * a))
    phase = torch.where(phase < 0, phase + 1, phase)
    wave = b * (1 - 4 * (phase - 0.5).abs())  # 0 at u=0, +b at u=a, −b at u=3a, …
    line = _line_profile((v - wave).abs(), 2.3 * severity)
    line = line * ((u >= 0) & (u <= length)).to(x.dtype)
    return (x + line).clamp(0.0, 1.0)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def canny_edges(x: torch.Tensor, severity: float, gen: torch.Generator) -> torch.Tensor:
    n, c, h, w = x.shape
    sm = blur(x.reshape(n * c, 1, h, w), 1.0 * severity)
    kx = _SOBEL_X.to(x.device, x.dtype).view(1, 1, 3, 3)
    padded = F.pad(sm, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, kx)
    gy = F.conv2d(padded, kx.transpose(2, 3))
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    p = F.pad(mag, (1, 1, 1, 1))

    def nb(dy: int, dx: int) -> torch.Tensor:
        return p[..., 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ang = torch.rad2deg(torch.atan2(gy, gx)) % 180
    d0 = (ang < 22.5) | (ang >= 157.5)
    d45 = (ang >= 22.5) & (ang < 67.5)
    d90 = (ang >= 67.5) & (ang < 112.5)
    d135 = (ang >= 112.5) & (ang < 157.5)
    n1 = torch.where(d0, nb(0, 1), torch.where(d45, nb(1, 1), torch.where(d90, nb(1, 0), nb(1, -1))))
    n2 = torch.where(d0, nb(0, -1), torch.where(d45, nb(-1, -1), torch.where(d90, nb(-1, 0), nb(-1, 1))))
    del d135
    peak = (mag >= n1) & (mag >= n2) & (mag > 0)
    border = torch.zeros_like(peak)
    border[..., 1:-1, 1:-1] = True
    peak &= border
    weak = peak & (mag >= 0.1)
    edges = peak & (mag >= 0.2)
    for _ in range(h * w):  # hysteresis: grow strong edges through connected weak ones
        grown = weak & (F.max_pool2d(edges.to(x.dtype), 3, stride=1, padding=1) > 0)
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.to(x.dtype).view(n, c, h, w)


CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("shot_noise", "Poisson photon noise: each pixel becomes Poisson(λ·x)/λ",
               "photons at full intensity λ = 3 / severity", True, shot_noise),
    Corruption("impulse_noise", "salt-and-pepper: a fraction of pixels set to 0 or 1 at random",
               "fraction of pixels = 0.17 × severity", True, impulse_noise),
    Corruption("glass_blur", "Gaussian blur, local random pixel shuffle (2 passes), Gaussian blur again",
               "blur σ = 0.7 px × severity; displacement up to max(1, round(severity)) px", True, glass_blur),
    Corruption("motion_blur", "one-sided Gaussian streak in a random direction within ±45°",
               "streak σ = 3 px × severity (taps up to 10 px × severity)", True, motion_blur),
    Corruption("shear", "horizontal shear about the centre, random sign",
               "shear angle = 0.4 rad (≈23°) × severity", True, shear),
    Corruption("scale", "shrink the digit about the centre",
               "zoom = 1 − 0.3 × severity (0.7 at severity 1)", False, scale),
    Corruption("rotate", "rotation about the centre, random sign",
               "angle = 0.4 rad (≈23°) × severity", True, rotate),
    Corruption("brightness", "add a constant to every pixel (the background turns grey)",
               "offset = 0.5 × severity", False, brightness),
    Corruption("translate", "shift by the same number of pixels in x and in y, random signs",
               "shift = 3 px × severity on each axis", True, translate),
    Corruption("stripe", "invert the pixels of a band at the left and right edges",
               "band width = ¼ of the image (7 px) × severity", False, stripe),
    Corruption("fog", "add a smooth random haze and rescale: (x + s·haze)·max/(max + s)",
               "haze strength s = 3 × severity", True, fog),
    Corruption("spatter", "grey mud blobs from thresholded smoothed noise, occluding the digit",
               "wet fraction before smoothing = 0.5 × severity", True, spatter),
    Corruption("dotted_line", "a dashed line (2 px on, 2 px off) across the image between random rows",
               "stroke half-width = 2.3 px × severity", True, dotted_line),
    Corruption("zigzag", "a zigzag line (amplitude 2 px, period 8 px) across the image at a random row/slope",
               "stroke half-width = 2.3 px × severity", True, zigzag),
    Corruption("canny_edges", "replace the image by its Canny edge map (binary)",
               "pre-blur σ = 1 px × severity", False, canny_edges),
)}
"""The 15 MNIST-C corruptions, in the paper's order."""

CORRUPTION_NAMES: tuple[str, ...] = tuple(CORRUPTIONS)


def parse_corruptions(text: str | Sequence[str] | None) -> list[str]:
    """Corruption names from ``"a,b"`` or a list; None/empty/"all" = all 15 (unknown names are an error)."""
    if text is None:
        return list(CORRUPTION_NAMES)
    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names or names == ["all"]:
        return list(CORRUPTION_NAMES)
    unknown = [s for s in names if s not in CORRUPTIONS]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown)}; known: {', '.join(CORRUPTION_NAMES)}")
    return list(dict.fromkeys(names))


def check_severity(severity: float) -> float:
    if not math.isfinite(severity) or not 0 < severity <= 3:
        raise ConfigError(f"severity must be in (0, 3], got {severity}")
    return float(severity)


def corrupt(x: torch.Tensor, name: str, severity: float = 1.0,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply corruption ``name`` to a float batch ``N×1×H×W`` in [0, 1]; returns a new batch in [0, 1]."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTION_NAMES)}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"corrupt expects a float N×C×H×W batch, got {tuple(x.shape)} {x.dtype}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    return CORRUPTIONS[name].fn(x, check_severity(severity), gen)


def corruption_seed(seed: int, name: str) -> int:
    """The generator seed of corruption ``name`` under run seed ``seed`` (fixed, independent per corruption)."""
    return seed * 1_000_003 + 7919 * (CORRUPTION_NAMES.index(name) + 1)


# --------------------------------------------------------------------------- evaluation

@dataclass
class CorruptionSuiteResult:
    """Accuracy of one model under each corruption, and their mean (the MNIST-C summary)."""

    clean_accuracy: float
    per_corruption: dict[str, float]
    mean: float
    """Mean accuracy over the corruptions evaluated (all 15 unless a subset was asked for)."""
    severity: float
    seed: int
    n: int
    seconds: float
    parameters: dict[str, str] = field(default_factory=dict)
    """Per corruption: the parameter severity scales and its value at severity 1."""

    def to_dict(self) -> dict:
        return asdict(self)


def corrupted_batches(images: torch.Tensor, name: str, severity: float = 1.0, seed: int = 0,
                      batch_size: int = 1000) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, corrupted float batch)`` of ``images`` under corruption ``name``, batch by batch.

    Corruption ``name`` draws from its own generator seeded with :func:`corruption_seed`,
    consumed batch by batch, so the result depends on ``seed`` and ``batch_size`` (and on
    nothing else: every model scored on these batches sees the same corrupted images).
    """
    from digitlab.models.forward import as_float_batch

    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTION_NAMES)}")
    severity = check_severity(severity)
    gen = torch.Generator().manual_seed(corruption_seed(seed, name))
    for start in range(0, int(images.shape[0]), batch_size):
        x = as_float_batch(images[start:start + batch_size].cpu())
        yield start, CORRUPTIONS[name].fn(x, severity, gen)


@dataclass
class CorruptedSet:
    """A test subset and its corrupted versions, made once and scored for many models
    (:func:`score_corrupted` gives the numbers :func:`evaluate_corruptions` gives for one model)."""

    clean: torch.Tensor
    """The images as given (uint8 ``N×28×28`` or float)."""
    labels: torch.Tensor
    corrupted: dict[str, torch.Tensor]
    """Per corruption: float ``N×1×28×28`` in [0, 1]."""
    severity: float
    seed: int
    seconds: float
    """Time spent corrupting."""


def corrupt_set(images: torch.Tensor, labels: torch.Tensor, names: Sequence[str] | None = None,
                severity: float = 1.0, seed: int = 0, batch_size: int = 1000) -> CorruptedSet:
    """Every corruption of ``images`` at once (memory: 15 × N × 784 floats; meant for a subset)."""
    names = parse_corruptions(names)
    severity = check_severity(severity)
    if int(labels.shape[0]) == 0:
        raise ConfigError("no images to evaluate")
    t0 = time.perf_counter()
    corrupted = {name: torch.cat([xc for _, xc in corrupted_batches(images, name, severity, seed, batch_size)])
                 for name in names}
    return CorruptedSet(images, labels.cpu(), corrupted, severity, seed, time.perf_counter() - t0)


def score_corrupted(model: nn.Module, data: CorruptedSet, batch_size: int = 1000) -> CorruptionSuiteResult:
    """Accuracy of ``model`` on each corruption of ``data`` (the corruption time counts in ``seconds``)."""
    from digitlab.models.forward import predict_logits

    t0 = time.perf_counter()
    labels = data.labels
    n = int(labels.shape[0])

    def accuracy(x: torch.Tensor) -> float:
        return int((predict_logits(model, x, batch_size).argmax(1) == labels).sum()) / n

    clean = accuracy(data.clean)
    accs = {name: accuracy(xc) for name, xc in data.corrupted.items()}
    return CorruptionSuiteResult(clean, accs, sum(accs.values()) / len(accs), data.severity, data.seed,
                                 n, data.seconds + time.perf_counter() - t0,
                                 {k: CORRUPTIONS[k].parameter for k in accs})


def evaluate_corruptions(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         names: Sequence[str] | None = None, severity: float = 1.0, seed: int = 0,
                         batch_size: int = 1000,
                         progress: Callable[[str], None] | None = None) -> CorruptionSuiteResult:
    """Accuracy of ``model`` on ``images`` (uint8 ``N×28×28`` or float) under each corruption.

    Corruption ``k`` draws from its own generator seeded with :func:`corruption_seed`,
    consumed batch by batch (so results depend on ``seed`` and ``batch_size``); the batches
    are made and scored one at a time (see :func:`corrupt_set` to score many models).
    """
    from digitlab.models.forward import predict_logits

    names = parse_corruptions(names)
    severity = check_severity(severity)
    labels = labels.cpu()
    n = int(labels.shape[0])
    if n == 0:
        raise ConfigError("no images to evaluate")
    t0 = time.perf_counter()
    clean = float((predict_logits(model, images, batch_size).argmax(1) == labels).float().mean())
    accs: dict[str, float] = {}
    for name in names:
        if progress:
            progress(name)
        correct = 0
        for start, xc in corrupted_batches(images, name, severity, seed, batch_size):
            pred = predict_logits(model, xc, batch_size).argmax(1)
            correct += int((pred == labels[start:start + batch_size]).sum())
        accs[name] = correct / n
    mean = sum(accs.values()) / len(accs)
    return CorruptionSuiteResult(clean, accs, mean, severity, seed, n, time.perf_counter() - t0,
                                 {k: CORRUPTIONS[k].parameter for k in names})


# --------------------------------------------------------------------------- figures

def examples_png(images: torch.Tensor, names: Sequence[str] | None = None, severity: float = 1.0,
                 seed: int = 0, title: str = "Corruptions") -> bytes:
    """A grid: one row per example image, the clean image then each corruption in a column."""
    from digitlab.models.forward import as_float_batch

    names = parse_corruptions(names)
    x = as_float_batch(images.cpu())
    columns = [("clean", x)] + [(k, corrupt(x, k, severity, torch.Generator().manual_seed(corruption_seed(seed, k))))
                                for k in names]
    plt = pyplot()
    rows, cols = x.shape[0], len(columns)
    fig, axes = plt.subplots(rows, cols, figsize=(0.95 * cols, 1.05 * rows + 0.5), squeeze=False)
    for j, (name, batch) in enumerate(columns):
        for i in range(rows):
            ax = axes[i][j]
            ax.imshow(batch[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name.replace("_", "\n"), fontsize=7)
    fig.suptitle(f"{title} (severity {severity:g})", fontsize=10)
    return fig_to_png(fig)


def accuracy_bars_png(result: CorruptionSuiteResult, title: str = "Accuracy per corruption") -> bytes:
    """Bars of accuracy per corruption, with the clean accuracy and the mean as horizontal lines."""
    plt = pyplot()
    names = list(result.per_corruption)
    values = [100 * result.per_corruption[k] for k in names]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * len(names) + 1.5), 3.8))
    ax.bar(range(len(names)), values, color="tab:blue", alpha=0.85)
    ax.axhline(100 * result.clean_accuracy, color="tab:green", ls="--", lw=1,
               label=f"clean {100 * result.clean_accuracy:.1f}%")
    ax.axhline(100 * result.mean, color="tab:red", ls=":", lw=1.2, label=f"mean {100 * result.mean:.1f}%")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 102)
    ax.set_title(f"{title} (n={result.n}, severity {result.severity:g})", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return fig_to_png(fig)
