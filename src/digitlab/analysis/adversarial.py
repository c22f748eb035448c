"""Adversarial robustness: FGSM and PGD under an L∞ budget ε on [0, 1] pixels.

FGSM (Goodfellow et al. 2015) takes one step of size ε along the sign of the input
gradient of the cross-entropy. PGD (Madry et al. 2018) starts at a uniformly random
point of the ε-ball, takes ``steps`` signed-gradient steps of ``step_size`` and projects
back onto the ball and the [0, 1] pixel range after each step.

Robust accuracy here is the fraction of images the model classifies correctly both
clean *and* under the attack; for PGD an image counts as broken as soon as any iterate
is misclassified (each iterate is a valid adversarial example inside the ball), which
also lets the evaluation stop attacking broken images early. Two sanity checks are
reported, not enforced: accuracy must not rise with ε, and PGD must be at least as
strong as FGSM at every ε; a violation (a sign of gradient masking, too few steps or
too few images) becomes a warning in the result.

:func:`pgd_attack` is the plain attack a training loop can call (adversarial training).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.errors import ConfigError

DEFAULT_EPS = (0.1, 0.2, 0.3)
DEFAULT_STEPS = 40
DEFAULT_STEP_SIZE = 0.01


def _input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, ∂ sum-cross-entropy / ∂x) without touching the parameters' ``.grad``."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        logits = model(xr)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, xr)
    return logits.detach(), grad


def fgsm_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """``clip(x + ε·sign(∇ₓ loss), 0, 1)`` for a float batch ``x`` in [0, 1] (the model's mode is left as is)."""
    _, grad = _input_grad(model, x, y)
    return (x.detach() + eps * grad.sign()).clamp(0.0, 1.0)


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.max(torch.min(x_adv, x + eps), x - eps).clamp(0.0, 1.0)


def _random_start(x: torch.Tensor, eps: float, generator: torch.Generator | None) -> torch.Tensor:
    noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps  # drawn on the CPU: same on any device
    return (x + noise.to(x.device, x.dtype)).clamp(0.0, 1.0)


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
               generator: torch.Generator | None = None, *, random_start: bool = True) -> torch.Tensor:
    """L∞ PGD: adversarial versions of the float batch ``x`` (``N×C×H×W`` in [0, 1]) for labels ``y``.

    Starts uniformly in the ε-ball (``random_start``, noise from ``generator`` on the CPU),
    then ``steps`` times: ``x ← Π(x + step_size·sign(∇ₓ CE))``, Π projecting onto
    ``‖x − x₀‖∞ ≤ ε`` and [0, 1]. Returns a detached tensor like ``x``. Only input
    gradients are computed (parameters' ``.grad`` are untouched); the model is used in
    its current mode, so a training loop should call it with the model in eval mode (or
    accept that batch-norm statistics see the attack's forward passes). digitlab's own
    adversarial training (:meth:`digitlab.train.loop.Trainer.adversarial_batch`) attacks in
    eval mode with the parameters' ``requires_grad`` off, then trains in train mode.
    """
    if eps < 0 or steps < 0 or step_size < 0:
        raise ConfigError(f"pgd_attack needs eps, steps, step_size >= 0, got {eps}, {steps}, {step_size}")
    x = x.detach()
    x_adv = _random_start(x, eps, generator) if random_start and eps > 0 else x.clone()
    for _ in range(steps):
        _, grad = _input_grad(model, x_adv, y)
        x_adv = _project(x_adv + step_size * grad.sign(), x, eps)
    return x_adv.detach()


def _pgd_robust(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
                generator: torch.Generator, robust: torch.Tensor) -> torch.Tensor:
    """Which images of ``x`` survive every PGD iterate (only the ``robust`` ones are attacked).

    Same iterates as :func:`pgd_attack`, but an image leaves the batch as soon as an
    iterate fools the model (counted broken), so late steps only run on survivors.
    """
    robust = robust.clone()
    x = x.detach()
    x_adv = _random_start(x, eps, generator)  # drawn for the whole batch: independent of who survives
    active = torch.nonzero(robust, as_tuple=False).flatten()
    for step in range(steps + 1):
        if active.numel() == 0:
            break
        xa, ya = x_adv[active], y[active]
        if step == steps:
            with torch.no_grad():
                wrong = model(xa).argmax(1) != ya
            robust[active[wrong]] = False
            break
        logits, grad = _input_grad(model, xa, ya)
        wrong = logits.argmax(1) != ya
        robust[active[wrong]] = False
        keep = ~wrong
        active, xa, grad = active[keep], xa[keep], grad[keep]
        x_adv[active] = _project(xa + step_size * grad.sign(), x[active], eps)
    return robust


@dataclass
class AdversarialResult:
    """Robust accuracy under FGSM and PGD at each ε (fractions of ``n`` images)."""

    eps: list[float]
    clean_accuracy: float
    fgsm: list[float]
    pgd: list[float]
    steps: int
    step_size: float
    random_start: bool
    seed: int
    n: int
    seconds: float
    monotone: bool
    """Accuracy does not rise with ε, for both attacks."""
    pgd_at_most_fgsm: bool
    """PGD accuracy ≤ FGSM accuracy at every ε."""
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["fgsm"] = {f"{e:g}": a for e, a in zip(self.eps, self.fgsm, strict=True)}
        d["pgd"] = {f"{e:g}": a for e, a in zip(self.eps, self.pgd, strict=True)}
        d["attack"] = (f"L∞ PGD, {self.steps} steps of {self.step_size:g}, "
                       f"{'random start' if self.random_start else 'no random start'}; FGSM one step of ε")
        return d


def parse_eps(text: str | Sequence[float]) -> list[float]:
    """ε values from ``"0.1,0.2,0.3"`` (or a list): each in (0, 1], sorted, duplicates dropped."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text) if str(v).strip()]
    except ValueError:
        raise ConfigError(f"--eps must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise ConfigError("--eps needs at least one value")
    bad = [v for v in values if not (math.isfinite(v) and 0 < v <= 1)]
    if bad:
        raise ConfigError(f"every ε must be in (0, 1] (pixels are in [0, 1]), got {bad[0]:g}")
    return sorted(set(values))


def sanity_warnings(eps: Sequence[float], fgsm: Sequence[float], pgd: Sequence[float], steps: int,
                    step_size: float) -> tuple[bool, bool, list[str]]:
    """(monotone, pgd_at_most_fgsm, warnings) for accuracies at ascending ``eps``."""
    warnings: list[str] = []
    monotone = True
    for attack, accs in (("FGSM", fgsm), ("PGD", pgd)):
        for i in range(1, len(eps)):
            if accs[i] > accs[i - 1]:
                monotone = False
                warnings.append(f"{attack} accuracy rises with ε: {100 * accs[i - 1]:.2f}% at ε={eps[i - 1]:g} "
                                f"→ {100 * accs[i]:.2f}% at ε={eps[i]:g} (gradient masking or too few images?)")
    at_most = True
    for e, f_acc, p_acc in zip(eps, fgsm, pgd, strict=True):
        if p_acc > f_acc:
            at_most = False
            warnings.append(f"PGD is weaker than FGSM at ε={e:g}: {100 * p_acc:.2f}% > {100 * f_acc:.2f}% "
                            "(more steps or a larger step size needed, or gradient masking)")
    reach = steps * step_size
    if eps and reach < max(eps):
        warnings.append(f"PGD moves at most steps × step size = {reach:g} from its random start, "
                        f"less than ε={max(eps):g}: the attack may not reach the ball's boundary")
    return monotone, at_most, warnings


def evaluate_adversarial(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                         eps: Sequence[float] = DEFAULT_EPS, steps: int = DEFAULT_STEPS,
                         step_size: float = DEFAULT_STEP_SIZE, seed: int = 0, batch_size: int = 500,
                         progress: Callable[[str], None] | None = None) -> AdversarialResult:
    """Robust accuracy of ``model`` under FGSM and PGD at each ε (``images`` uint8 or float in [0, 1]).

    The model runs in eval mode on its own device (restored afterwards); the PGD random
    starts come from a generator seeded with ``seed`` per ε.
    """
    from digitlab.models.forward import as_float_batch, model_device

    eps = parse_eps(list(eps))
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    if not (math.isfinite(step_size) and step_size > 0):
        raise ConfigError(f"--step-size must be > 0, got {step_size}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if not getattr(model, "uses_gradient", True):
        raise ConfigError(f"model {getattr(model, 'digitlab_name', type(model).__name__)!r} is not differentiable; "
                          "gradient attacks need a neural network")
    n = int(labels.shape[0])
    if n == 0:
        raise ConfigError("no images to attack")
    dev = model_device(model)
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    clean_ok = torch.zeros(n, dtype=torch.bool)
    fgsm_ok = torch.zeros(len(eps), n, dtype=torch.bool)
    pgd_ok = torch.zeros(len(eps), n, dtype=torch.bool)
    gens = [torch.Generator().manual_seed(seed * 1_000_003 + 101 * (i + 1)) for i in range(len(eps))]
    try:
        for start in range(0, n, batch_size):
            sl = slice(start, start + batch_size)
            x = as_float_batch(images[sl].cpu()).to(dev)
            y = labels[sl].to(dev)
            with torch.no_grad():
                ok = model(x).argmax(1) == y
            clean_ok[sl] = ok.cpu()
            for i, e in enumerate(eps):
                if progress:
                    progress(f"images {start}–{min(n, start + batch_size)} of {n}, ε={e:g}")
                with torch.no_grad():
                    fooled = model(fgsm_attack(model, x, y, e)).argmax(1) != y
                fgsm_ok[i, sl] = (ok & ~fooled).cpu()
                pgd_ok[i, sl] = _pgd_robust(model, x, y, e, steps, step_size, gens[i], ok).cpu()
    finally:
        model.train(was_training)
    fgsm = [float(v) for v in fgsm_ok.float().mean(1)]
    pgd = [float(v) for v in pgd_ok.float().mean(1)]
    monotone, at_most, warnings = sanity_warnings(eps, fgsm, pgd, steps, step_size)
    return AdversarialResult(eps, float(clean_ok.float().mean()), fgsm, pgd, steps, step_size, True, seed, n,
                             time.perf_counter() - t0, monotone, at_most, warnings)


def accuracy_curve_png(result: AdversarialResult, title: str = "Accuracy under L∞ attacks") -> bytes:
    """Accuracy vs ε for FGSM and PGD (ε = 0 is the clean accuracy)."""
    from digitlab.analysis.plots import curves_png

    xs = [0.0, *result.eps]
    curves = {"FGSM": [result.clean_accuracy, *result.fgsm],
              f"PGD-{result.steps} (step {result.step_size:g})": [result.clean_accuracy, *result.pgd]}
    return curves_png(xs, curves, xlabel="ε (L∞, pixels in [0, 1])", title=f"{title} (n={result.n})")
