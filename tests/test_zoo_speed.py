"""``digitlab bench zoo`` (issue 16): engine vs plain loop per model, measured alternately in one process.

Timings on a shared test machine are noise; these tests check what is measured and reported
(structure, settings, the alternation, errors), with a handful of steps on a few hundred images.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from digitlab.bench import zoo
from digitlab.bench.zoo import PLAIN, EngineVariant, bench_zoo, engine_config, measure_model, measure_variants
from digitlab.errors import ConfigError
from digitlab.models import TrainSettings, list_models, model_info, train_settings

N_IMAGES = 512
ROW_KEYS = {"model", "engine_ms_per_step", "plain_ms_per_step", "ratio", "settings"}


@pytest.fixture(scope="module")
def small(mnist):
    return mnist.train_images[:N_IMAGES], mnist.train_labels[:N_IMAGES]


def test_zoo_models_are_the_gradient_models():
    names = zoo.zoo_models()
    assert "logreg" not in names and "random-forest" not in names
    assert {"cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini", "fast-cnn"} <= set(names)
    assert names == [n for n in list_models() if model_info(n).uses_gradient]


def test_engine_config_is_the_recipe_step_with_the_registered_settings():
    cfg = engine_config("cnn-deep", 32)
    assert (cfg.model, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.grad_clip) == ("cnn-deep", 32, "adam", 1e-3, 1.0)
    assert cfg.augment is None and not cfg.early_stopping and cfg.val_fraction == 0.0
    assert cfg.schedule == "constant"  # cnn-deep's plateau schedule needs validation; per step it is constant
    assert (cfg.amp, cfg.channels_last) == (True, True) == (train_settings("cnn-deep").amp,
                                                             train_settings("cnn-deep").channels_last)
    off = engine_config("se-cnn", 64, settings=TrainSettings())
    assert (off.amp, off.channels_last, off.schedule) == (False, False, "cosine")


def test_measure_model_times_both_loops_alternately(small, monkeypatch):
    order: list[str] = []
    real_clock, real_batches = zoo._StepClock, zoo._plain_batches

    class Clock(real_clock):  # type: ignore[misc,valid-type]
        def __init__(self, steps: int, cuda: bool) -> None:
            order.append(f"engine:{steps}")
            super().__init__(steps, cuda)

    def batches(*args, **kwargs):
        for item in real_batches(*args, **kwargs):
            order.append("plain")
            yield item

    monkeypatch.setattr(zoo, "_StepClock", Clock)
    monkeypatch.setattr(zoo, "_plain_batches", batches)
    row = measure_model("se-cnn", *small, steps=4, batch_size=16, device="cpu", rounds=2, warmup=1)
    # warm-up (1 step each), then engine block (2 counted + 1), plain block (3), engine block, plain block
    assert order == ["engine:1", "plain", "engine:3", "plain", "plain", "plain", "engine:3", "plain", "plain", "plain"]
    assert row.model == "se-cnn" and row.engine_ms_per_step > 0 and row.plain_ms_per_step > 0
    assert row.ratio == pytest.approx(row.engine_ms_per_step / row.plain_ms_per_step)
    assert len(row.engine_block_ms) == len(row.plain_block_ms) == 2
    s = row.settings
    from digitlab.utils import native_bf16

    # the settings as run: registered ones, bf16 autocast only where this CPU computes bf16 natively
    registered = train_settings("se-cnn")
    assert (s.amp, s.channels_last) == (registered.amp and native_bf16("cpu"), registered.channels_last)
    assert (s.batch_size, s.optimizer, s.grad_clip, s.l2_penalty, s.device) == (16, "adam", 1.0, True, "cpu")
    assert (s.steps, s.rounds, s.warmup_steps, s.threads) == (4, 2, 1, torch.get_num_threads())


def test_engine_variants_train_their_own_copies_from_the_same_weights(small):
    variants = {"fp32": EngineVariant(TrainSettings()),
                "bf16+cl, plain layers": EngineVariant(TrainSettings(True, True), fast_layers=False)}
    result, settings = measure_variants("lenet5", *small, variants, steps=2, batch_size=8, device="cpu",
                                        rounds=1, warmup=0)
    assert set(result) == {"fp32", "bf16+cl, plain layers", PLAIN}
    assert all(ms > 0 and len(blocks) == 1 for ms, blocks in result.values())
    assert (settings.amp, settings.channels_last) == (False, False)  # the first variant's


def test_bench_zoo_result_and_json(mnist):
    seen = []
    result = bench_zoo(["lenet5", "mlp-selected"], steps=2, batch_size=16, device="cpu", dataset=mnist, rounds=1,
                       warmup=0, threads=1, on_row=lambda row: seen.append(row.model))
    assert seen == ["lenet5", "mlp-selected"]
    d = json.loads(json.dumps(result.to_dict()))
    assert [r["model"] for r in d["models"]] == ["lenet5", "mlp-selected"]
    for r in d["models"]:
        assert ROW_KEYS <= set(r)
        assert r["ratio"] == pytest.approx(r["engine_ms_per_step"] / r["plain_ms_per_step"])
        assert r["settings"]["threads"] == 1 and r["settings"]["batch_size"] == 16
    assert {"cpu", "torch", "cuda"} <= set(d["machine"])


@pytest.mark.parametrize("models,message", [
    (["logreg"], "without gradient steps"), (["no-such-model"], "unknown model"), ([], "at least one"),
])
def test_bench_zoo_usage_errors(models, message):
    with pytest.raises(ConfigError, match=message):
        bench_zoo(models, steps=2, batch_size=8, device="cpu")


def test_bad_step_counts_are_config_errors(small):
    with pytest.raises(ConfigError, match="steps >= 1"):
        measure_model("lenet5", *small, steps=0, batch_size=8, device="cpu")


def test_measure_script_tabulates_every_setting(capsys, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "scripts" / "measure_zoo_speed.py"
    spec = importlib.util.spec_from_file_location("measure_zoo_speed", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--models", "lenet5", "--steps", "1", "--rounds", "1", "--batch-size", "8", "--json"]) == 0
    table = json.loads(capsys.readouterr().out)
    (row,) = table["models"]
    registered = train_settings("lenet5")
    assert row["model"] == "lenet5" and row["registered"] == registered.to_dict()
    variants = {v["variant"]: v for v in row["variants"]}
    assert set(variants) == {"fp32", "channels-last", "bf16", "bf16+channels-last", "registered, plain layers"}
    assert [(v["amp"], v["channels_last"]) for v in variants.values() if v["registered"]] == [
        (registered.amp, registered.channels_last)]
    assert variants["registered, plain layers"]["fast_layers"] is False
    assert row["best"] in variants and row["plain_ms_per_step"] > 0
    assert variants["fp32"]["speedup_vs_engine_fp32"] == pytest.approx(1.0)
    assert script.main(["--models", "logreg"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
@pytest.mark.parametrize("name", ["se-cnn", "densenet-mini"])
def test_bench_zoo_on_cuda(name, small):
    """Data resident on the GPU, the registered settings (bf16 where supported), one sync per block."""
    row = measure_model(name, *small, steps=4, batch_size=32, device="cuda", rounds=2, warmup=1)
    assert row.settings.device.startswith("cuda")
    assert row.engine_ms_per_step > 0 and row.plain_ms_per_step > 0
    model = model_info(name).builder().cuda().to(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=torch.cuda.is_bf16_supported()):
        out = model(torch.rand(8, 1, 28, 28, device="cuda"))
    assert out.shape == (8, 10) and out.device.type == "cuda" and torch.isfinite(out.float()).all()


def test_bench_zoo_command_prints_the_documented_json(capsys):
    from digitlab.cli import main

    rc = main(["bench", "zoo", "--models", "mlp-128-64", "--steps", "2", "--rounds", "1", "--threads", "1",
               "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"models", "machine"}
    (row,) = out["models"]
    assert row["model"] == "mlp-128-64"
    assert row["engine_ms_per_step"] > 0 and row["plain_ms_per_step"] > 0
    assert row["ratio"] == pytest.approx(row["engine_ms_per_step"] / row["plain_ms_per_step"])


@pytest.mark.parametrize("argv, message", [
    (["bench", "zoo", "--vs", "plain"], "not --vs"),
    (["bench", "fast", "--models", "cnn-deep"], "only apply to `digitlab bench zoo`"),
    (["bench", "zoo", "--steps", "0"], "--steps must be >= 1"),
])
def test_bench_zoo_command_usage_errors(argv, message, capsys):
    from digitlab.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def _script(name: str):
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_speed_options_script_tabulates_each_option(capsys):
    script = _script("measure_speed_options")
    chosen = ["shipped", "before", "se-in-order", "torch-flatten", "unfused-optimizer"]
    assert script.main(["--models", "se-cnn", "--options", ",".join(chosen), "--steps", "1", "--rounds", "1",
                        "--batch-size", "8", "--threads", "1", "--cpu-time"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["models"]
    assert row["model"] == "se-cnn" and row["plain_ms_per_step"] > 0 and out["clock"] == "process CPU time"
    options = {r["option"]: r for r in row["options"]}
    assert list(options) == chosen and row["fastest"] in options
    assert options["shipped"]["speedup_vs_shipped"] == pytest.approx(1.0)
    for r in options.values():
        assert r["ms_per_step"] > 0
        assert r["ratio_vs_plain"] == pytest.approx(r["ms_per_step"] / row["plain_ms_per_step"])
    from digitlab.train import loop

    assert loop.build_optimizer.__module__ == "digitlab.train.loop"  # the option's context restored it
    assert script.main(["--options", "no-such-option"]) == 2


def test_speed_option_transforms_give_the_previous_form():
    from digitlab.models import create_model
    from digitlab.models.ops import Dropout, Flatten, GlobalAvgPool2d

    script = _script("measure_speed_options")
    model = create_model("se-cnn")
    before = script.previous_form(create_model("se-cnn"))
    assert any(isinstance(m, (Dropout, GlobalAvgPool2d, Flatten)) for m in model.modules())
    assert not any(isinstance(m, (Dropout, GlobalAvgPool2d, Flatten)) for m in before.modules())
    assert model.scale_after_pool and not before.scale_after_pool
    assert model.scale_after_average and not before.scale_after_average
    from digitlab.train import loop
    from digitlab.train.config import TrainConfig

    with script.unfused_optimizer():
        unfused = loop.build_optimizer(model, TrainConfig(model="se-cnn"))
    assert not unfused.param_groups[0]["fused"]
    assert loop.build_optimizer(model, TrainConfig(model="se-cnn")).param_groups[0]["fused"]
    assert list(before.state_dict()) == list(model.state_dict())
    deep = script.previous_form(create_model("cnn-deep"))
    assert any(isinstance(m, Flatten) for m in create_model("cnn-deep").modules())
    assert not any(isinstance(m, Flatten) for m in deep.modules())


def test_plain_loop_uses_torchs_default_optimizer():
    from digitlab.models import create_model
    from digitlab.train.loop import build_optimizer

    cfg = engine_config("cnn-deep", 32)
    model = create_model("cnn-deep")
    opt = zoo.textbook_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam and not opt.defaults["fused"] and not opt.defaults["foreach"]
    engine = build_optimizer(model, cfg)
    for key in ("lr", "betas", "weight_decay", "eps"):
        assert opt.defaults[key] == engine.defaults[key]
