"""Which pixels matter: gradient saliency, occlusion sensitivity, integrated gradients.

All three work on batches: images are uint8 ``N×28×28`` (dataset layout) or
float ``N×1×28×28`` / ``N×28×28`` in [0, 1]; ``targets`` are the classes to
explain (None = the model's own prediction). Results are numpy ``N×28×28``
maps. The model runs on its own device, in eval mode, with batched forward
passes — never one call per pixel, patch or path step. Forward passes that need
no gradient (predictions, occlusion scores, the end points of the IG path) go
through :func:`digitlab.models.forward.predict_logits` / ``predict_proba``;
only the gradient passes run the model directly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from digitlab.models.forward import as_float_batch, model_device, predict_logits, predict_proba


def _prepare(model: nn.Module, images: torch.Tensor, targets: Any | None
             ) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_float_batch(torch.as_tensor(images))
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"images must be N×28×28 or N×1×28×28, got {tuple(x.shape)}")
    if targets is None:
        t = predict_logits(model, x).argmax(dim=1)
    else:
        t = torch.as_tensor(np.asarray(targets) if not isinstance(targets, torch.Tensor) else targets)
        t = t.reshape(-1).long().cpu()
        if t.numel() == 1 and x.shape[0] > 1:
            t = t.expand(x.shape[0])
        if t.numel() != x.shape[0]:
            raise ValueError(f"{t.numel()} targets for {x.shape[0]} images")
    return x, t


def _target_output(model: nn.Module, x: torch.Tensor, t: torch.Tensor, output: str) -> torch.Tensor:
    logits = model(x)
    if output == "logit":
        return logits.gather(1, t[:, None]).squeeze(1)
    if output == "prob":
        return torch.softmax(logits, dim=1).gather(1, t[:, None]).squeeze(1)
    raise ValueError(f"output must be 'logit' or 'prob', got {output!r}")


def _target_values(model: nn.Module, x: torch.Tensor, t: torch.Tensor, output: str,
                   batch_size: int) -> torch.Tensor:
    """``f_t(x)`` for every image without gradients (CPU), through the one batched forward pass."""
    if output == "logit":
        scores = predict_logits(model, x, batch_size=batch_size)
    elif output == "prob":
        scores = predict_proba(model, x, batch_size=batch_size)
    else:
        raise ValueError(f"output must be 'logit' or 'prob', got {output!r}")
    if scores.shape[0] == 0:
        return torch.zeros(0)
    return scores.gather(1, t.cpu()[:, None]).squeeze(1)


def _grad_batch(model: nn.Module, x: torch.Tensor, t: torch.Tensor, output: str = "logit"
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(d f_t / d x, f_t) for a batch; samples are independent in eval mode, so one
    backward of the summed outputs gives every per-sample gradient."""
    with torch.enable_grad():
        xr = x.detach().clone().requires_grad_(True)
        f = _target_output(model, xr, t, output)
        (g,) = torch.autograd.grad(f.sum(), xr)
    return g.detach(), f.detach()


class _EvalMode:
    def __init__(self, model: nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> nn.Module:
        self.model.eval()
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def saliency_maps(model: nn.Module, images: torch.Tensor, targets: Any | None = None,
                  batch_size: int = 256) -> np.ndarray:
    """Gradient saliency ``|d logit_target / d x|`` per pixel, ``N×28×28`` float32."""
    x, t = _prepare(model, images, targets)
    dev = model_device(model)
    out = []
    with _EvalMode(model):
        for s in range(0, x.shape[0], batch_size):
            g, _ = _grad_batch(model, x[s:s + batch_size].to(dev), t[s:s + batch_size].to(dev))
            out.append(g.abs()[:, 0].cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 28, 28), np.float32)


def occlusion_positions(size: int, patch: int, stride: int) -> list[int]:
    """Patch start offsets along one axis; the last patch always touches the far edge."""
    if not 1 <= patch <= size or stride < 1:
        raise ValueError(f"need 1 <= patch <= {size} and stride >= 1 (patch={patch}, stride={stride})")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return starts


def occlusion(model: nn.Module, images: torch.Tensor, targets: Any | None = None, patch: int = 4,
              stride: int = 2, baseline: float = 0.0, batch_size: int = 1024) -> dict[str, Any]:
    """Occlusion sensitivity: the drop in target-class probability when a patch is blanked.

    Every (image, patch position) variant is built by one masked ``torch.where``
    per chunk of ``batch_size`` variants and scored in that chunk's single forward
    pass. Returns ``{"grid": N×P×Q drops per position, "map": N×28×28 (each
    pixel = mean drop over the patches covering it), "base_prob": N target
    probabilities of the unoccluded images, "rows", "cols": patch start offsets,
    "patch", "stride"}``. Positive = occluding that region hurts the prediction.
    """
    x, t = _prepare(model, images, targets)
    n, _, h, w = x.shape
    rows, cols = occlusion_positions(h, patch, stride), occlusion_positions(w, patch, stride)
    masks = torch.zeros(len(rows) * len(cols), h, w, dtype=torch.bool)
    for i, r in enumerate(rows):  # at most a few hundred masks, built once
        for j, c in enumerate(cols):
            masks[i * len(cols) + j, r:r + patch, c:c + patch] = True
    npos = masks.shape[0]
    dev = model_device(model)
    x_dev, t_dev, m_dev = x.to(dev), t.to(dev), masks.to(dev)
    base = _target_values(model, x_dev, t_dev, "prob", batch_size).to(dev)
    probs = torch.empty(n * npos, device=dev)
    for s in range(0, n * npos, batch_size):
        flat = torch.arange(s, min(s + batch_size, n * npos), device=dev)
        img, pos = flat // npos, flat % npos
        variants = torch.where(m_dev[pos][:, None], torch.tensor(baseline, device=dev), x_dev[img])
        probs[s:s + flat.numel()] = _target_values(model, variants, t_dev[img], "prob", batch_size).to(dev)
    drop = (base[:, None] - probs.view(n, npos)).cpu()
    coverage = masks.sum(0).clamp_min(1).float()
    pixel_map = torch.einsum("np,pxy->nxy", drop, masks.float()) / coverage
    return {"grid": drop.view(n, len(rows), len(cols)).numpy(), "map": pixel_map.numpy(),
            "base_prob": base.cpu().numpy(), "rows": rows, "cols": cols, "patch": patch,
            "stride": stride}


def occlusion_sweep(model: nn.Module, images: torch.Tensor, targets: Any | None = None,
                    settings: tuple[tuple[int, int], ...] = ((2, 1), (4, 2), (7, 3), (10, 4)),
                    baseline: float = 0.0, batch_size: int = 1024) -> list[dict[str, Any]]:
    """:func:`occlusion` for each ``(patch, stride)`` in ``settings`` (same targets throughout)."""
    x, t = _prepare(model, images, targets)
    return [occlusion(model, x, t, patch=p, stride=s, baseline=baseline, batch_size=batch_size)
            for p, s in settings]


def _path_weights(steps: int, method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Quadrature nodes alpha in [0, 1] and weights for the path integral."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if method == "trapezoid":
        alphas = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
        w = torch.full((steps + 1,), 1.0 / steps, dtype=torch.float64)
        w[0] = w[-1] = 0.5 / steps
        return alphas, w
    if method == "riemann_middle":
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        return alphas, torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    if method == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return torch.from_numpy((nodes + 1) / 2), torch.from_numpy(weights / 2)
    raise ValueError(f"method must be trapezoid, riemann_middle or gausslegendre, got {method!r}")


def integrated_gradients(model: nn.Module, images: torch.Tensor, targets: Any | None = None,
                         baseline: torch.Tensor | float = 0.0, steps: int = 64,
                         method: str = "trapezoid", output: str = "logit",
                         batch_size: int = 512) -> dict[str, Any]:
    """Integrated gradients (Sundararajan et al., 2017) along the straight path baseline → x.

    ``attr = (x - b) * ∫_0^1 ∂f(b + α(x - b))/∂x dα`` with ``f`` the target logit
    (``output="logit"``) or probability (``"prob"``); the integral uses
    ``steps`` quadrature intervals, evaluated in batches of ``batch_size`` path
    points across all images. Completeness says ``attr.sum() == f(x) - f(b)``;
    ``delta`` reports the numerical gap (shrinks as ``steps`` grows).

    Returns ``{"attributions": N×28×28, "delta": N, "f_x": N, "f_baseline": N}``.
    """
    x, t = _prepare(model, images, targets)
    n = x.shape[0]
    b = torch.as_tensor(baseline)
    if b.ndim == 2:  # one 28×28 baseline for every image
        b = b.unsqueeze(0)
    b = (as_float_batch(b) if b.ndim >= 3 else b.to(x.dtype)).expand_as(x)
    alphas, weights = _path_weights(steps, method)
    npts = alphas.numel()
    dev = model_device(model)
    xd, bd, td = x.to(dev), b.to(dev), t.to(dev)
    a_dev, w_dev = alphas.to(dev, x.dtype), weights.to(dev, x.dtype)
    avg_grad = torch.zeros_like(xd)
    with _EvalMode(model):
        for s in range(0, n * npts, batch_size):
            flat = torch.arange(s, min(s + batch_size, n * npts), device=dev)
            img, k = flat // npts, flat % npts
            a = a_dev[k].view(-1, 1, 1, 1)
            pts = bd[img] + a * (xd[img] - bd[img])
            g, _ = _grad_batch(model, pts, td[img], output)
            avg_grad.index_add_(0, img, g * w_dev[k].view(-1, 1, 1, 1))
    f_x = _target_values(model, xd, td, output, batch_size).to(dev)
    f_b = _target_values(model, bd, td, output, batch_size).to(dev)
    attr = ((xd - bd) * avg_grad)[:, 0]
    delta = attr.sum(dim=(1, 2)) - (f_x - f_b)
    return {"attributions": attr.cpu().numpy(), "delta": delta.cpu().numpy(),
            "f_x": f_x.cpu().numpy(), "f_baseline": f_b.cpu().numpy()}
