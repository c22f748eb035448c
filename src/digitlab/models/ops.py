"""Layers with a faster CPU implementation than PyTorch's generic kernel, and identical results.

:class:`MaxPool2x2` (below), :class:`Dropout` (a cheaper mask draw: same distribution, scaling and
gradient as ``nn.Dropout``), :class:`GlobalAvgPool2d` (``nn.AdaptiveAvgPool2d(1)`` whose gradient keeps
the input's memory format), :class:`Flatten` (the same for ``nn.Flatten``) and :class:`Float32Conv2d`.
:func:`plain_copy` turns a model back into textbook layers (the plain loop of ``digitlab bench zoo``);
``scripts/measure_speed_options.py`` times each.

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

import contextlib
from collections.abc import Iterator
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

    For a one-channel input layer in NCHW, oneDNN's bfloat16 weight gradient was
    slower than float32 on our CPU. In channels-last (fast-cnn's registered layout)
    it is the other way round (fast-cnn's step ~10% faster with a bf16 first
    conv), so no shipped model uses this layer now; variant ``fp32-first-conv`` of
    ``scripts/measure_fast_variants.py`` and option ``fp32-first-conv`` of
    ``scripts/measure_speed_options.py`` measure it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.to(self.weight.dtype))


_BYTE_LEVELS = 256
_reference_draws = False


@contextlib.contextmanager
def reference_dropout() -> Iterator[None]:
    """Within this block :class:`Dropout` draws its mask as ``F.dropout`` does (``bernoulli_``), so a model
    with fast layers and its textbook form see the same dropout masks from the same seed (tests)."""
    global _reference_draws
    previous, _reference_draws = _reference_draws, True
    try:
        yield
    finally:
        _reference_draws = previous


def _fast_drop_threshold(p: float) -> int | None:
    """``p·256`` when it is a whole number in 1..255 (then a random byte below it is an exact Bernoulli(p))."""
    t = p * _BYTE_LEVELS
    return int(t) if 0 < t < _BYTE_LEVELS and t == int(t) else None


class _DropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(noise)
        return x * noise

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (noise,) = ctx.saved_tensors
        return grad * noise, None


def dropout_noise(x: torch.Tensor, p: float) -> torch.Tensor | None:
    """The multiplier ``F.dropout(x, p)`` applies — 0 with probability ``p``, else ``1/(1-p)`` rounded to
    ``x``'s dtype — drawn from random bytes (four per 32-bit draw of the global generator) instead of one
    ``bernoulli_`` draw per element; in ``x``'s memory layout. None where that is not exact (``p`` not a
    multiple of 1/256) or ``x`` is not dense: use ``F.dropout`` then."""
    threshold = _fast_drop_threshold(p)
    dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
    if threshold is None or not dense or x.numel() == 0:
        return None
    n = x.numel()
    words = torch.randint(-(2 ** 31), 2 ** 31, (-(-n // 4),), dtype=torch.int32, device=x.device)
    keep = words.view(torch.uint8)[:n] >= threshold  # P(byte < p·256) = p, exactly
    noise = torch.empty_like(x)  # same strides as x (channels-last stays channels-last)
    flat = noise.as_strided((n,), (1,), noise.storage_offset())
    flat.copy_(keep)
    return noise.div_(1 - p)  # F.dropout's scale, rounded to x's dtype as F.dropout rounds it


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout(x, p, training)`` with a cheaper mask draw on CPU (same distribution, values and
    gradient routing; a different random stream). See :class:`Dropout`."""
    if (not training or p == 0.0 or _reference_draws or x.device.type != "cpu"
            or torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()):
        return F.dropout(x, p, training)
    noise = dropout_noise(x, p)
    if noise is None:
        return F.dropout(x, p, training)
    if torch.is_grad_enabled() and x.requires_grad:
        return _DropoutFunction.apply(x, noise)
    return x * noise


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask costs ~20× less to draw.

    PyTorch draws a dropout mask with one ``bernoulli_`` call per element from the
    Mersenne-Twister generator (its vectorised MKL path runs on Intel CPUs only):
    at batch 128 it was 10–15% of cnn-deep's training step on our AMD CPU. Here one
    32-bit draw gives four random bytes, and an element is dropped when its byte is
    below ``p·256`` — an exact Bernoulli(p) for every ``p`` that is a multiple of
    1/256 (0.25, 0.5, 0.2 is not: other rates, CUDA and export use ``F.dropout``).
    The kept values are scaled by ``1/(1-p)`` in the input's dtype, as ``F.dropout``
    does, and the gradient is routed through the same mask: the layer computes what
    ``nn.Dropout`` computes, with different (equally distributed) random draws.
    No state: state dicts are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace:
            return F.dropout(x, self.p, self.training, inplace=True)
        return dropout(x, self.p, self.training)


class _GlobalAvgPoolFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        ctx.channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return F.adaptive_avg_pool2d(x, 1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        n, c, h, w = ctx.shape
        fmt = torch.channels_last if ctx.channels_last else torch.contiguous_format
        out = torch.empty((n, c, h, w), dtype=grad.dtype, device=grad.device, memory_format=fmt)
        return out.copy_((grad / (h * w)).expand(n, c, h, w))


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)`` whose gradient keeps ``x``'s memory format (see :class:`GlobalAvgPool2d`)."""
    if (x.dim() != 4 or not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.jit.is_scripting()):
        return F.adaptive_avg_pool2d(x, 1)
    return _GlobalAvgPoolFunction.apply(x)


class GlobalAvgPool2d(nn.AdaptiveAvgPool2d):
    """``nn.AdaptiveAvgPool2d(1)`` whose backward hands back a gradient in the input's memory format.

    PyTorch's backward writes an NCHW gradient even for a channels-last input, so every
    layer before the global pooling (BatchNorm, the SE scaling) then ran its backward on
    mixed layouts, the slow path: in se-cnn's last stage BatchNorm's backward took ~8 ms
    instead of ~1 ms at batch 128. Same forward (``F.adaptive_avg_pool2d``), and the
    gradient is PyTorch's ``grad / (H·W)`` broadcast, only laid out like the input.
    """

    def __init__(self) -> None:
        super().__init__(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return global_avg_pool(x)


class _FlattenFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


def flatten(x: torch.Tensor) -> torch.Tensor:
    """``x.flatten(1)`` whose gradient keeps a channels-last input's memory format (see :class:`Flatten`)."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if (not channels_last or not (torch.is_grad_enabled() and x.requires_grad) or torch.compiler.is_compiling()
            or torch.jit.is_tracing() or torch.jit.is_scripting()):
        return x.flatten(1)
    return _FlattenFunction.apply(x)


class Flatten(nn.Flatten):
    """``nn.Flatten()`` (dims 1..-1, the usual CHW order) whose backward hands a channels-last input its gradient
    channels-last.

    Flattening a channels-last ``N×C×H×W`` map copies it into CHW order (what the next ``Linear`` expects);
    the gradient comes back as a plain ``N×C×H×W`` view, and every layer before (ReLU, BatchNorm, pooling
    backward) then runs on mixed layouts, their slow path: at fast-cnn's ``256×32×4×4`` (bf16, 2 threads)
    BN → ReLU → flatten → Linear, forward and backward, took ~0.8 ms instead of ~0.5 ms with the one small
    layout copy here.
    Same values and gradient values as ``nn.Flatten``; other dims fall back to it.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.start_dim == 1 and self.end_dim == -1:
            return flatten(x)
        return super().forward(x)


def plain_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in textbook PyTorch form: same architecture, weights and state-dict keys.

    ``MaxPool2x2`` becomes ``nn.MaxPool2d(2)``, :class:`Dropout` ``nn.Dropout``,
    :class:`GlobalAvgPool2d` ``nn.AdaptiveAvgPool2d(1)``, :class:`Flatten` ``nn.Flatten``, ``Float32Conv2d``
    a plain ``nn.Conv2d`` (so it follows autocast like any conv) and every module with an ``inplace`` flag
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
            elif isinstance(child, GlobalAvgPool2d):
                setattr(parent, child_name, nn.AdaptiveAvgPool2d(1))
            elif isinstance(child, Flatten):
                setattr(parent, child_name, nn.Flatten(child.start_dim, child.end_dim))
            elif isinstance(child, Dropout):
                setattr(parent, child_name, nn.Dropout(child.p, inplace=child.inplace))
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
