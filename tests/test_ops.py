"""Fast layers in digitlab.models.ops give PyTorch's values and gradients exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from digitlab.models.ops import Float32Conv2d, MaxPool2x2, max_pool_2x2


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
