"""The engine's optimisers: torch's fused kernels, their state laid out like the parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from digitlab.models import create_model
from digitlab.train import TrainConfig
from digitlab.train.loop import _lay_out_like_params, build_optimizer


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


@pytest.mark.parametrize("optimizer, kind", [("adam", "fused"), ("adamw", "fused"), ("sgd", "fused"),
                                             ("adadelta", "foreach")])
def test_build_optimizer_uses_the_multi_tensor_kernels(optimizer, kind):
    model = create_model("fast-cnn")
    opt = build_optimizer(model, TrainConfig(model="fast-cnn", optimizer=optimizer, lr=0.01, momentum=0.9))
    assert opt.defaults[kind] is True
    assert [p for g in opt.param_groups for p in g["params"]] == list(model.parameters())


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_fused_update_is_the_per_parameter_update(optimizer):
    """Three steps of the fused optimiser and of torch's default (per-parameter) one from the same weights:
    the same weights up to float rounding — within 1e-5, a thousandth of one step's size (lr 0.01): Adam
    divides by sqrt(v), which magnifies rounding where a gradient is tiny (measured up to 7e-6)."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    cfg = TrainConfig(model="fast-cnn", optimizer=optimizer, lr=0.01, momentum=0.9, weight_decay=1e-4)
    fused_model = create_model("fast-cnn")
    loop_model = copy.deepcopy(fused_model)
    fused = build_optimizer(fused_model, cfg)
    cls = type(fused)
    keys = ("lr", "betas", "weight_decay", "momentum", "nesterov")
    kwargs = {k: v for k, v in fused.defaults.items() if k in keys}
    per_param = cls(loop_model.parameters(), **kwargs)
    assert not per_param.defaults["fused"]
    for _ in range(3):
        _step(fused_model, fused, x, y)
        _step(loop_model, per_param, x, y)
    for (name, a), b in zip(fused_model.state_dict().items(), loop_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=name)


def test_loaded_state_gets_the_parameters_channels_last_layout():
    """Saved optimizer state is contiguous; for a channels-last model it is laid out like the parameters
    again, or the fused kernel (which walks memory in order) would pair moments with the wrong weights:
    a step from the reloaded state equals a step from the original state."""
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    cfg = TrainConfig(model="fast-cnn", optimizer="adam", lr=0.01)
    model = create_model("fast-cnn").to(memory_format=torch.channels_last)
    opt = build_optimizer(model, cfg)
    _step(model, opt, x, y)
    saved = copy.deepcopy(opt.state_dict())
    for state in saved["state"].values():  # as the resume file stores it
        for key, value in state.items():
            state[key] = value.contiguous()
    twin = copy.deepcopy(model)
    reloaded = build_optimizer(twin, cfg)
    reloaded.load_state_dict(saved)
    conv = next(p for p in twin.parameters() if p.dim() == 4 and p.shape[1] > 1)
    assert reloaded.state[conv]["exp_avg"].stride() != conv.stride()  # what the function is for
    _lay_out_like_params(reloaded)
    assert reloaded.state[conv]["exp_avg"].stride() == conv.stride()
    _step(model, opt, x, y)
    _step(twin, reloaded, x, y)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("native", [True, False])
def test_bf16_autocast_only_where_the_device_computes_bf16(monkeypatch, native):
    """amp (asked for, or a model's registered setting) autocasts to bfloat16 only on hardware with native
    bf16; elsewhere (an AVX2 CPU, where bf16 convolutions were 10-50x slower) the run is float32 and says so."""
    import digitlab.train.loop as loop
    from digitlab.data.splits import DataSplits, Split

    monkeypatch.setattr(loop, "native_bf16", lambda device: native)
    images, labels = torch.zeros(8, 28, 28, dtype=torch.uint8), torch.zeros(8, dtype=torch.long)
    splits = DataSplits(Split(images, labels), None, Split(images, labels))
    for amp in (True, None):  # fast-cnn's registered setting is bf16 autocast
        trainer = loop.Trainer(create_model("fast-cnn"), splits, TrainConfig(model="fast-cnn", amp=amp,
                                                                            tensorboard=False))
        assert trainer.amp is native
        assert ("amp" in trainer.notes) is (not native)
        with trainer._autocast():
            assert torch.is_autocast_enabled("cpu") is native
