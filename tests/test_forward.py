"""The one batched forward pass: the same logits whatever memory layout it runs in."""

from __future__ import annotations

import pytest
import torch

from digitlab.models import create_model
from digitlab.models.forward import CHANNELS_LAST_MIN_IMAGES, predict_logits


@pytest.mark.parametrize("name", ["cnn-simple", "densenet-mini", "resnet-mini", "mlp-basic-128"])
def test_large_calls_match_the_plain_forward_and_leave_the_model_as_it_was(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = (torch.rand(CHANNELS_LAST_MIN_IMAGES + 44, 28, 28) * 255).to(torch.uint8)
    with torch.inference_mode():
        expected = model(images.float().div(255).unsqueeze(1))
    before = {k: (v.stride(), v.clone()) for k, v in model.state_dict().items()}
    got = predict_logits(model, images, batch_size=128)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for k, v in model.state_dict().items():
        assert v.stride() == before[k][0], k
        assert torch.equal(v, before[k][1]), k
    assert not model.training


def test_a_channels_last_model_stays_channels_last():
    model = create_model("cnn-simple").to(memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1)
    predict_logits(model, torch.zeros(CHANNELS_LAST_MIN_IMAGES, 28, 28, dtype=torch.uint8))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
