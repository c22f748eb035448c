"""Fast layers in digitlab.models.ops give PyTorch's values and gradients exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from digitlab.models.ops import (
    Dropout,
    Float32Conv2d,
    GlobalAvgPool2d,
    MaxPool2x2,
    dropout,
    max_pool_2x2,
    reference_dropout,
)


def _with_ties(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    x[0, 0, :2, :2] = 1.0  # four-way tie
    if min(shape[2:]) >= 6:
        x[0, 0, 2, 2:4] = 0.5  # tie in the top row ...
        x[0, 0, 3, 2:4] = -1.0
        x[0, 0, 4:6, 4] = 2.0  # ... and in the left column
    x = torch.relu(x) if shape[1] > 1 else x  # ReLU before pooling: many tied zeros
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (2, 5, 7, 9), (3, 1, 28, 28), (2, 2, 2, 2)])
def test_max_pool_matches_pytorch_values_and_gradients(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    x = _with_ties(shape, dtype)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_ref = max_pool_2x2(ours), F.max_pool2d(ref, 2)
    assert y_ours.shape == y_ref.shape and torch.equal(y_ours, y_ref)
    grad = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    y_ours.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(ours.grad, ref.grad)


def test_max_pool_without_grad_and_module_form() -> None:
    x = torch.randn(2, 4, 10, 10)
    with torch.no_grad():
        assert torch.equal(MaxPool2x2()(x), F.max_pool2d(x, 2))
    assert "kernel_size=2" in repr(MaxPool2x2())


def test_max_pool_rejects_what_pytorch_rejects() -> None:
    with pytest.raises(RuntimeError):
        max_pool_2x2(torch.randn(1, 1, 1, 1))


def test_float32_conv_stays_float32_under_autocast() -> None:
    conv = Float32Conv2d(1, 4, 3)
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).dtype == torch.float32
        assert torch.nn.functional.conv2d(x, conv.weight).dtype == torch.bfloat16
    assert torch.allclose(conv(x), F.conv2d(x, conv.weight, conv.bias))


def test_export_sees_the_standard_operator() -> None:
    """Exported graphs (ONNX goes through torch.export) keep a plain max-pool node."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), MaxPool2x2()).eval()
    graph = torch.export.export(model, (torch.randn(1, 1, 8, 8),)).graph
    targets = {str(node.target) for node in graph.nodes if node.op == "call_function"}
    assert any("max_pool2d" in t for t in targets), targets
    assert not any("maximum" in t for t in targets), targets


def test_channels_last_input_takes_pytorchs_faster_kernel() -> None:
    """Channels-last batches go to F.max_pool2d (faster there); NCHW batches to the fast kernel."""
    x = _with_ties((4, 3, 8, 8), torch.float32)
    cl = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    nchw = x.clone().requires_grad_()
    y_cl, y_nchw = max_pool_2x2(cl), max_pool_2x2(nchw)
    assert "MaxPool2DWithIndicesBackward" in type(y_cl.grad_fn).__name__
    assert "_MaxPool2x2Function" in type(y_nchw.grad_fn).__name__
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y_cl, y_nchw)
    grad = torch.randn(y_cl.shape, generator=torch.Generator().manual_seed(2))
    y_cl.backward(grad)
    y_nchw.backward(grad)
    assert torch.equal(cl.grad, nchw.grad)


# --------------------------------------------------------------------------- ops.Dropout (issue 16)
def _f_dropout_given_mask(x: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """What F.dropout computes once its mask is drawn: ``x * (mask / (1 - p))`` in x's dtype."""
    return x * keep.to(x.dtype).div_(1 - p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.25, 0.5])
@pytest.mark.parametrize("channels_last", [False, True])
def test_dropout_scales_and_routes_gradients_as_f_dropout(dtype: torch.dtype, p: float, channels_last: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(8, 6, 5, 7, generator=g) + 0.5).to(dtype)  # no zeros: a zero output means dropped
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    torch.manual_seed(1)
    y = dropout(x, p, True)
    keep = y.detach() != 0
    assert torch.equal(y, _f_dropout_given_mask(x.detach(), keep, p))  # bit-identical given the mask
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last) == channels_last
    grad = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(grad)
    assert torch.equal(x.grad, _f_dropout_given_mask(grad, keep, p))
    torch.manual_seed(1)
    assert torch.equal(dropout(x.detach(), p, True), y.detach())  # a function of the global seed


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_dropout_drops_each_element_with_probability_p(p: float) -> None:
    torch.manual_seed(0)
    n = 1_000_000
    y = dropout(torch.ones(n), p, True)
    dropped = float((y == 0).float().mean())
    assert abs(dropped - p) < 5 * (p * (1 - p) / n) ** 0.5  # five standard errors
    assert y.unique().tolist() == [0.0, pytest.approx(1 / (1 - p))]
    # neighbours are independent: the four bytes of one 32-bit draw do not move together
    pairs = (y[0::2] == 0) & (y[1::2] == 0)
    assert abs(float(pairs.float().mean()) - p * p) < 5 * (p * p * (1 - p * p) / (n // 2)) ** 0.5


def test_dropout_falls_back_to_f_dropout_where_the_fast_draw_is_not_exact() -> None:
    x = torch.rand(4, 3, 5, 5) + 0.5
    for p, make in [(0.2, lambda t: t), (0.25, lambda t: t[:, :, ::2, ::2])]:  # p·256 not whole; not dense
        xx = make(x)
        torch.manual_seed(3)
        expected = F.dropout(xx, p, True)
        torch.manual_seed(3)
        assert torch.equal(dropout(xx, p, True), expected)
    torch.manual_seed(3)
    with reference_dropout():
        fast = dropout(x, 0.25, True)
    torch.manual_seed(3)
    assert torch.equal(fast, F.dropout(x, 0.25, True))  # reference_dropout(): torch's own draws


def test_dropout_module_is_nn_dropout_in_eval_and_state() -> None:
    layer = Dropout(0.5)
    assert isinstance(layer, torch.nn.Dropout) and not layer.state_dict()
    x = torch.rand(3, 4)
    assert torch.equal(layer.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Dropout(0.5)).eval()
    graph = torch.export.export(model, (torch.randn(2, 4),)).graph  # export sees no custom function
    assert not any("DropoutFunction" in str(node.target) for node in graph.nodes)


# --------------------------------------------------------------------------- ops.GlobalAvgPool2d (issue 16)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_global_avg_pool_is_adaptive_avg_pool_with_the_inputs_gradient_layout(dtype: torch.dtype,
                                                                                channels_last: bool) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 6, 7, 5, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    seen: dict[str, torch.Tensor] = {}  # the gradient reaching the layer before the pooling (not a leaf's:
    mid, mid_ref = ours * 1, ref * 1  # autograd lays a leaf's .grad out like the leaf anyway)
    mid.register_hook(lambda t: seen.__setitem__("ours", t))
    mid_ref.register_hook(lambda t: seen.__setitem__("ref", t))
    y, y_ref = GlobalAvgPool2d()(mid), torch.nn.AdaptiveAvgPool2d(1)(mid_ref)
    assert y.shape == y_ref.shape == (4, 6, 1, 1) and torch.equal(y, y_ref)
    grad = torch.randn(y.shape, generator=g).to(dtype)
    y.backward(grad)
    y_ref.backward(grad)
    assert torch.equal(seen["ours"], seen["ref"]) and torch.equal(ours.grad, ref.grad)  # PyTorch's values ...
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert seen["ours"].is_contiguous(memory_format=fmt)
    if channels_last:  # ... in the input's layout, where PyTorch's own backward writes NCHW
        assert not seen["ref"].is_contiguous(memory_format=torch.channels_last)


def test_global_avg_pool_without_grad_and_in_export() -> None:
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(GlobalAvgPool2d()(x), F.adaptive_avg_pool2d(x, 1))
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), GlobalAvgPool2d()).eval()
    graph = torch.export.export(model, (torch.randn(1, 1, 8, 8),)).graph
    assert any("adaptive_avg_pool2d" in str(node.target) or "mean" in str(node.target) for node in graph.nodes)
