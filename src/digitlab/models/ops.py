"""Layers with a faster CPU implementation than PyTorch's generic kernel, and identical results.

``MaxPool2x2`` is ``nn.MaxPool2d(2)`` (kernel 2, stride 2, odd sizes floored).
PyTorch's CPU kernel for contiguous NCHW tensors spends much of its time on
index bookkeeping. Here the forward is four strided views and three ``torch.maximum``
calls; the backward routes the gradient with three 0/1 masks saved in the
forward, choosing the same element as PyTorch when values tie (the first
maximum in row-major order), so outputs and gradients are bit-identical
(tested). ``scripts/measure_fast_variants.py`` times both kernels. For channels-last
tensors PyTorch's own kernel is the faster one (measured forward + backward at
128×32×28×28: 25 vs 33 ms in float32, 15 vs 29 ms in bfloat16; NCHW: 22 vs 42 and
24 vs 49 ms), so they go to it. Under
``torch.export``/ONNX export, TorchScript tracing and ``torch.compile`` the
standard operator is used, so exported graphs keep a plain MaxPool.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def _ge_mask(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 where ``a >= b`` else 0, in ``a``'s dtype (on our CPU, multiplying by a float mask beat bool ops)."""
    return torch.sub(a, b).sign_().add_(1).clamp_(max=1)


def _quadrants(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]


def _max4(x: torch.Tensor) -> torch.Tensor:
    a00, a01, a10, a11 = _quadrants(x)
    return torch.maximum(torch.maximum(a00, a01), torch.maximum(a10, a11))


class _MaxPool2x2Function(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        a00, a01, a10, a11 = _quadrants(x)
        top, bottom = torch.maximum(a00, a01), torch.maximum(a10, a11)
        # ties go to the earlier element, as in PyTorch's kernel: left over right, top over bottom
        ctx.save_for_backward(_ge_mask(a00, a01), _ge_mask(a10, a11), _ge_mask(top, bottom))
        return torch.maximum(top, bottom)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        left_top, left_bottom, top_wins = ctx.saved_tensors
        g_top = grad * top_wins
        g_bottom = grad - g_top
        g00 = g_top * left_top
        g10 = g_bottom * left_bottom
        n, c, h, w = grad.shape
        out = grad.new_empty(n, c, 2 * h, 2 * w)
        quad = out.view(n, c, h, 2, w, 2)  # quad[:, :, i, r, j, s] is input pixel (2i + r, 2j + s)
        quad[:, :, :, 0, :, 0] = g00
        quad[:, :, :, 0, :, 1] = g_top - g00
        quad[:, :, :, 1, :, 0] = g10
        quad[:, :, :, 1, :, 1] = g_bottom - g10
        return out


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` for N×C×H×W tensors, faster on CPU, same values and gradients."""
    if x.dim() != 4 or x.device.type != "cpu" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return F.max_pool2d(x, 2)
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return F.max_pool2d(x, 2)  # PyTorch's channels-last kernel is the faster one (fp32 and bf16)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    if h == 0 or w == 0:
        return F.max_pool2d(x, 2)  # let PyTorch raise its usual error
    if (h, w) != x.shape[-2:]:
        x = x[:, :, :h, :w]  # floor mode: the last odd row/column is dropped
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2Function.apply(x)
    return _max4(x)


class MaxPool2x2(nn.Module):
    """Drop-in for ``nn.MaxPool2d(2)``; see the module docstring for why it exists."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)

    def extra_repr(self) -> str:
        return "kernel_size=2, stride=2"


class Float32Conv2d(nn.Conv2d):
    """A ``Conv2d`` that stays in float32 under autocast.

    For a one-channel input layer, oneDNN's bfloat16 weight gradient was slower
    than float32 on our CPU, so the first layer opts out: the `fast` recipe trains
    faster this way (variant ``bf16-first-conv`` of ``scripts/measure_fast_variants.py``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in textbook PyTorch form: same architecture, weights and state-dict keys.

    ``MaxPool2x2`` becomes ``nn.MaxPool2d(2)``, ``Float32Conv2d`` a plain ``nn.Conv2d``
    (so it follows autocast like any conv) and every module with an ``inplace`` flag
    (``nn.ReLU``, the residual blocks' in-place add) computes out of place. In float32
    the copy computes what ``model`` computes; ``digitlab bench zoo`` trains it as the
    plain loop's network and the tests compare the two.
    """
    import copy

    plain = copy.deepcopy(model)
    for parent in plain.modules():
        for child_name, child in list(parent.named_children()):
            if isinstance(child, MaxPool2x2):
                setattr(parent, child_name, nn.MaxPool2d(2))
            elif isinstance(child, Float32Conv2d):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,  # type: ignore[arg-type]
                                 stride=child.stride, padding=child.padding,  # type: ignore[arg-type]
                                 dilation=child.dilation, groups=child.groups,  # type: ignore[arg-type]
                                 bias=child.bias is not None, padding_mode=child.padding_mode)
                conv.load_state_dict(child.state_dict())
                setattr(parent, child_name, conv.to(child.weight.device))
    for module in plain.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False  # type: ignore[assignment]
    return plain
