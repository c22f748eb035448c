"""Training engine: schedules, config, callbacks, the loop, checkpoints and exact resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from digitlab.data import Dataset
from digitlab.errors import ConfigError, RunExistsError
from digitlab.models import create_model, list_models, model_info
from digitlab.train import (
    EarlyStopping,
    LambdaCallback,
    ReduceLROnPlateau,
    TrainConfig,
    load_checkpoint,
    lr_at,
    one_cycle,
    train_run,
)
from digitlab.train.recipes import list_recipes, load_config


@pytest.fixture(scope="module")
def small(mnist) -> Dataset:
    """3,000 training and 1,000 test images of real MNIST: fast but meaningful."""
    return Dataset(mnist.name, mnist.spec, mnist.source, mnist.train_images[:3000],
                   mnist.train_labels[:3000], mnist.test_images[:1000], mnist.test_labels[:1000],
                   mnist.checksums)


# --- schedules ---------------------------------------------------------------

def test_one_cycle_matches_torch_onecyclelr():
    total, peak = 137, 0.01
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=0.25,
                                                cycle_momentum=False)
    for step in range(total):
        assert one_cycle(step, total, peak, 0.25) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_schedules_are_pure_functions_of_the_step():
    cfg = TrainConfig(schedule="step", lr=1.0, gamma=0.5, step_epochs=2)
    assert [lr_at(cfg, s * 10, 10, 100) for s in range(5)] == [1.0, 1.0, 0.5, 0.5, 0.25]
    cfg = TrainConfig(schedule="exponential", lr=1.0, gamma=0.5)
    assert lr_at(cfg, 25, 10, 100) == 0.25
    cfg = TrainConfig(schedule="cosine", lr=1.0, warmup_epochs=1, min_lr=0.0)
    assert lr_at(cfg, 0, 10, 110) == pytest.approx(0.1)  # warm-up: (step+1)/warmup
    assert lr_at(cfg, 9, 10, 110) == pytest.approx(1.0)
    assert lr_at(cfg, 60, 10, 110) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_at(cfg, 110, 10, 110) == pytest.approx(0.0)
    assert lr_at(TrainConfig(schedule="constant", lr=0.3), 999, 10, 100) == 0.3


# --- config ------------------------------------------------------------------

def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match="augment.rotation"):
        TrainConfig().override(**{"augment.rotation": -5})


def test_yaml_round_trip(tmp_path):
    cfg = TrainConfig(model="lenet5", lr=0.01, betas=(0.8, 0.99), augment={"rotation": 12, "shift": 0.05},
                      grad_clip=1.0, schedule="cosine", warmup_epochs=0.5)
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    again = TrainConfig.from_yaml(path)
    assert again == cfg
    assert again.augment.rotation == 12


@pytest.mark.parametrize("name", list_recipes())
def test_every_shipped_recipe_loads_and_names_a_registered_model(name):
    cfg = load_config(name)
    assert model_info(cfg.model).name == cfg.model
    assert cfg.model == name  # one recipe per model, named after it


def test_bad_yaml_is_a_config_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        TrainConfig.from_yaml(p)


# --- callbacks (unit level, on a stand-in trainer) -------------------------------

class _FakeTrainer:
    def __init__(self):
        self.raw_model = torch.nn.Linear(2, 1)
        self.stop = None
        self.notes = {}
        self.state = type("S", (), {"lr_scale": 1.0})()

    def request_stop(self, reason):
        self.stop = reason


def test_early_stopping_stops_and_restores_best_weights():
    tr, es = _FakeTrainer(), EarlyStopping("val_loss", patience=2)
    losses = [1.0, 0.4, 0.6, 0.7, 0.8]
    snapshots = []
    for epoch, loss in enumerate(losses, 1):
        with torch.no_grad():
            tr.raw_model.weight.fill_(epoch)
        snapshots.append(tr.raw_model.weight.clone())
        es.on_epoch_end(tr, {"epoch": epoch, "val_loss": loss})
        if tr.stop:
            break
    assert epoch == 5 and es.best_epoch == 2 and "did not improve" in tr.stop
    es.on_fit_end(tr)
    assert torch.equal(tr.raw_model.weight, snapshots[1])


def test_plateau_lowers_the_lr_after_patience():
    tr, cb = _FakeTrainer(), ReduceLROnPlateau("val_loss", patience=1, factor=0.5)
    for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.96, 0.97, 0.98], 1):
        cb.on_epoch_end(tr, {"epoch": epoch, "val_loss": loss})
    assert tr.state.lr_scale == 0.25  # two reductions: after epochs 4 and 6


# --- the loop on real data -------------------------------------------------------

def test_overfits_one_batch(small):
    x = Dataset(small.name, small.spec, small.source, small.train_images[:64], small.train_labels[:64],
                small.test_images[:64], small.test_labels[:64])
    cfg = TrainConfig(model="mlp-basic-128", epochs=150, batch_size=64, lr=3e-3, schedule="constant",
                      val_fraction=0, tensorboard=False)
    result = train_run(cfg, None, progress=False, dataset=x)
    assert result.metrics["train_accuracy"] == 1.0
    assert result.metrics["train_loss"] < 0.05


def test_plateau_schedule_changes_the_lr_in_the_loop(small):
    cfg = TrainConfig(model="mlp-basic-128", epochs=4, batch_size=500, lr=1e-6, schedule="plateau",
                      plateau_patience=0, plateau_factor=0.5, plateau_monitor="val_accuracy",
                      tensorboard=False)
    result = train_run(cfg, None, progress=False, dataset=small)
    lrs = [h["lr"] for h in result.fit.history]
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] < lrs[0]


def test_early_stopping_in_the_loop_restores_best_epoch(small):
    # lr so large the model gets worse after its first epoch: best epoch is early
    cfg = TrainConfig(model="mlp-basic-128", epochs=8, batch_size=100, lr=0.5, schedule="constant",
                      optimizer="sgd", momentum=0.0, early_stopping=True, patience=1,
                      monitor="val_accuracy", tensorboard=False)
    result = train_run(cfg, None, progress=False, dataset=small)
    hist = result.fit.history
    best = max(range(len(hist)), key=lambda i: hist[i]["val_accuracy"])
    assert result.metrics["restored_best_epoch"] == best + 1
    from digitlab.data import make_splits
    from digitlab.train import evaluate_split

    val = make_splits(small, cfg.val_fraction, cfg.seed).val
    assert evaluate_split(result.model, val)["accuracy"] == pytest.approx(hist[best]["val_accuracy"])


def test_run_directory_contents_and_checkpoint_round_trip(small, tmp_path):
    cfg = TrainConfig(model="cnn-simple", epochs=2, batch_size=128, max_steps=30, augment={"rotation": 10})
    run = tmp_path / "run"
    result = train_run(cfg, run, progress=False, dataset=small)
    assert {"config.yaml", "model.safetensors", "meta.json", "history.csv", "tensorboard"} <= {
        p.name for p in run.iterdir()}
    assert not (run / "resume.safetensors").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tensorboard").iterdir())
    # 2,700 training images / 128 = 22 steps per epoch: 30 steps end inside epoch 2
    rows = (run / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[2].startswith("2,30,")
    model, meta = load_checkpoint(run)
    assert meta["model"] == "cnn-simple" and meta["config"]["augment"]["rotation"] == 10
    assert meta["data"]["checksums"] == small.checksums
    assert meta["metrics"]["test_accuracy"] == pytest.approx(result.metrics["test_accuracy"])
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), result.model.eval()(x))
    with pytest.raises(RunExistsError):
        train_run(cfg, run, progress=False, dataset=small)


def test_epoch_train_metrics_are_per_epoch_with_a_run_directory(small, tmp_path):
    """Each epoch's train_loss/train_accuracy is that epoch's mean, with or without a run directory (the
    epoch-end save once carried one epoch's running sums into the next)."""
    cfg = TrainConfig(model="mlp-basic-128", epochs=3, batch_size=256, tensorboard=False, threads=1)
    saved = train_run(cfg, tmp_path / "run", progress=False, dataset=small, evaluate_test=False)
    memory = train_run(cfg, None, progress=False, dataset=small, evaluate_test=False)
    for key in ("train_loss", "train_accuracy"):
        assert [h[key] for h in saved.fit.history] == pytest.approx([h[key] for h in memory.fit.history], rel=1e-9)
    losses = [h["train_loss"] for h in saved.fit.history]
    assert losses[2] < 0.8 * losses[1]  # a later epoch's mean, not a mean over the run that includes epoch 1


# --- resume ------------------------------------------------------------------------

def _resume_cfg(**kw):
    # dropout (cnn-simple), augmentation and a schedule exercise every RNG and state
    base = dict(model="cnn-simple", epochs=2, batch_size=100, checkpoint_every=7,
                augment={"rotation": 10, "shift": 0.1}, tensorboard=False)
    base.update(kw)
    return TrainConfig(**base)


def test_resume_after_ctrl_c_matches_uninterrupted_run(small, tmp_path):
    full = train_run(_resume_cfg(), tmp_path / "full", progress=False, dataset=small)

    def interrupt(trainer, **_):
        if trainer.state.step == 33:  # mid-epoch, between checkpoints
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(_resume_cfg(), tmp_path / "cut", progress=False, dataset=small,
                  callbacks=[LambdaCallback(step_end=interrupt)])
    assert (tmp_path / "cut" / "resume.safetensors").exists()
    resumed = train_run(None, tmp_path / "cut", resume=True, progress=False, dataset=small)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert resumed.metrics["test_accuracy"] == full.metrics["test_accuracy"]
    assert [h["train_loss"] for h in resumed.fit.history] == pytest.approx(
        [h["train_loss"] for h in full.fit.history], rel=1e-9)


def test_resume_after_kill_9_matches_uninterrupted_run(tmp_path):
    """A real process killed with SIGKILL mid-run, resumed with the CLI."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    args = ["--model", "mlp-128-64", "--epochs", "1", "--max-steps", "80", "--batch-size", "64",
            "--set", "checkpoint_every=10", "--set", "tensorboard=false", "--quiet", "--json"]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "train", *args, "--out", str(cut)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (cut / "resume.safetensors").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (cut / "model.safetensors").exists()
    out = subprocess.run([sys.executable, "-m", "digitlab", "train", "--resume", str(cut), "--json",
                          "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    full = subprocess.run([sys.executable, "-m", "digitlab", "train", *args, "--out", str(tmp_path / "full")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr
    a, _ = load_checkpoint(cut)
    b, _ = load_checkpoint(tmp_path / "full")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_resume_refuses_a_finished_run(small, tmp_path):
    from digitlab.errors import CheckpointError

    train_run(TrainConfig(model="mlp-basic-128", epochs=1, max_steps=3, tensorboard=False), tmp_path / "r",
              progress=False, dataset=small)
    with pytest.raises(CheckpointError, match="already finished"):
        train_run(None, tmp_path / "r", resume=True, progress=False, dataset=small)


# --- CLI ---------------------------------------------------------------------------

def test_cli_train_then_refuse_overwrite(tmp_path, capsys):
    from digitlab.cli import main

    out = tmp_path / "a"
    assert main(["train", "--model", "mlp-basic-128", "--max-steps", "5", "--out", str(out), "--json",
                 "--set", "tensorboard=false"]) == 0
    assert '"test_accuracy"' in capsys.readouterr().out
    assert main(["train", "--model", "mlp-basic-128", "--max-steps", "5", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "--model", "mlp-basic-128", "--set", "lr"]) == 2
    assert main(["train", "--config", "no-such-recipe"]) == 2
    bad = tmp_path / "bad"
    assert main(["train", "--config", "best-cnn", "--set", "model_kwargs={kernel_size: 4}", "--dry-run",
                 "--out", str(bad)]) == 2
    assert "kernel_size" in capsys.readouterr().err and not bad.exists()  # nothing half-made left behind
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 5


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_leaves_no_run_directory(tmp_path, capsys):
    """`--device cuda` without CUDA is refused before the run directory exists, so the retry on
    another device is not blocked by a half-made directory."""
    from digitlab.cli import main

    out = tmp_path / "run"
    argv = ["train", "--model", "mlp-basic-128", "--max-steps", "2", "--out", str(out), "--set", "tensorboard=false"]
    assert main([*argv, "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err and not out.exists()
    assert main([*argv, "--device", "cpu"]) == 0 and (out / "model.safetensors").is_file()


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).uses_gradient])
def test_every_gradient_model_takes_training_steps(name, small):
    """Each registered model trains for a few steps through the real loop without NaNs."""
    micro = Dataset(small.name, small.spec, small.source, small.train_images[:64], small.train_labels[:64],
                    small.test_images[:32], small.test_labels[:32])
    cfg = TrainConfig(model=name, epochs=1, max_steps=2, batch_size=32, val_fraction=0, tensorboard=False)
    result = train_run(cfg, None, progress=False, dataset=micro)
    assert result.metrics["steps"] == 2
    assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
    params = torch.cat([p.detach().flatten() for p in result.model.parameters()])
    assert torch.isfinite(params).all()
    fresh = create_model(name)
    assert sum(p.numel() for p in fresh.parameters()) == params.numel()


# --- distributed ------------------------------------------------------------------

def test_ddp_two_processes_match_single_process(tmp_path):
    """2 gloo processes with half batches each == 1 process with the whole batch.

    No dropout or batch norm (their per-rank randomness/statistics legitimately
    differ), no augmentation. Gradients are averaged in a different order, so we
    allow float32 round-off: weights agree to 1e-5 absolute after 30 Adam steps
    (measured: 6e-7).
    """
    from digitlab.train.distributed import train_distributed

    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=30, batch_size=64, tensorboard=False,
                      val_fraction=0.1, device="cpu")
    metrics, run = train_distributed(cfg, tmp_path / "ddp", nproc=2, progress=False)
    single = train_run(cfg, tmp_path / "single", progress=False)
    a, meta = load_checkpoint(run)
    assert meta["world_size"] == 2 and metrics["steps"] == 30
    for (k, va), vb in zip(a.state_dict().items(), single.model.state_dict().values(), strict=True):
        assert torch.allclose(va, vb, atol=1e-5, rtol=0), (k, (va - vb).abs().max())
    assert abs(metrics["test_accuracy"] - single.metrics["test_accuracy"]) <= 0.002


def test_ranks_take_disjoint_halves_of_each_global_batch(small):
    from digitlab.data import BatchIterator, Split

    split = Split(small.train_images[:1000], torch.arange(1000))  # labels = sample ids
    single = BatchIterator(split, 64, seed=3)
    ranks = [BatchIterator(split, 64, seed=3, rank=r, world_size=2) for r in (0, 1)]
    for it in (single, *ranks):
        it.set_epoch(2)
    for (_, y), (_, y0), (_, y1) in zip(single, *ranks, strict=True):
        assert y0.numel() == y1.numel() == y.numel() // 2
        assert torch.equal(torch.cat([y0, y1]), y)


@pytest.mark.parametrize("name", [n for n in list_models() if model_info(n).recipe])
def test_every_model_recipe_is_a_shipped_config(name):
    assert model_info(name).recipe in list_recipes()


def test_bn_momentum_override_settles_running_stats_in_short_runs(small):
    """Keras' BN momentum (PyTorch 0.01) leaves eval-mode statistics unsettled after a few steps;
    the bn_momentum override applies to every BatchNorm layer during training."""
    cfg = TrainConfig(model="mlp-bn", epochs=1, max_steps=25, batch_size=100, tensorboard=False, bn_momentum=0.1)
    result = train_run(cfg, None, progress=False, dataset=small)
    bns = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert bns and all(m.momentum == 0.1 for m in bns)
    import dataclasses

    keras = train_run(dataclasses.replace(cfg, bn_momentum=None), None, progress=False, dataset=small)
    assert all(m.momentum == 0.01 for m in keras.model.modules() if isinstance(m, torch.nn.BatchNorm1d))
    # after 25 steps the 0.01 moving averages still hold (0.99^25 ≈) 78% of their initial values
    assert result.metrics["test_accuracy"] > keras.metrics["test_accuracy"]
    with pytest.raises(ConfigError, match="bn_momentum"):
        TrainConfig(bn_momentum=0)


@pytest.mark.parametrize("name", list_recipes())
def test_recipes_state_their_schedule_explicitly(name):
    """A recipe reproduces a publication: it must not inherit a default that may change."""
    from digitlab.train.recipes import recipe_dir

    raw = yaml.safe_load((recipe_dir() / f"{name}.yaml").read_text())
    if model_info(raw["model"]).uses_gradient:
        assert {"schedule", "lr", "optimizer", "batch_size", "epochs"} <= set(raw), name


# --- process-wide state, validation points, optional TensorBoard ----------------------------------------------

def test_fit_restores_the_process_wide_torch_state(small):
    from digitlab.data import make_splits
    from digitlab.train import fit

    model, splits = create_model("mlp-basic-128"), make_splits(small, 0.1, 0)
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    torch.use_deterministic_algorithms(False)
    threads = torch.get_num_threads()
    benchmark = torch.backends.cudnn.benchmark
    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=3, deterministic=True, tensorboard=False,
                      threads=1 if threads > 1 else 2)  # a different thread count while training
    seen = []
    fit(model, splits, cfg, callbacks=[LambdaCallback(step_end=lambda t, **_: seen.append(torch.get_num_threads()))])
    assert seen and set(seen) == {cfg.threads}
    assert not torch.are_deterministic_algorithms_enabled()  # switched on inside fit, restored after
    assert torch.get_num_threads() == threads and torch.backends.cudnn.benchmark == benchmark
    assert torch.equal(torch.rand(3), expected_next)  # the global RNG continues where it was


def test_train_run_restores_the_global_rng(small):
    torch.manual_seed(99)
    expected = torch.rand(2)
    torch.manual_seed(99)
    train_run(TrainConfig(model="mlp-basic-128", epochs=1, max_steps=2, tensorboard=False), None,
              dataset=small, progress=False, evaluate_test=False)
    assert torch.equal(torch.rand(2), expected)


def test_eval_every_steps_adds_history_rows(small, tmp_path):
    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=20, eval_every_steps=5, val_max_images=200,
                      tensorboard=False)
    result = train_run(cfg, tmp_path / "r", dataset=small, progress=False, evaluate_test=False)
    steps = [h["step"] for h in result.fit.history]
    assert steps == [5, 10, 15, 20]  # three mid-epoch points and the run's end
    assert all(h["val_accuracy"] is not None for h in result.fit.history)
    assert result.fit.val_seconds > 0 and result.metrics["val_seconds"] == result.fit.val_seconds
    rows = (tmp_path / "r" / "history.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    with pytest.raises(ConfigError, match="eval_every_steps"):
        TrainConfig(eval_every_steps=-1)
    with pytest.raises(ConfigError, match="val_max_images"):
        TrainConfig(val_max_images=0)


def test_train_without_tensorboard_says_so_once(small, tmp_path, monkeypatch, capsys):
    import digitlab.train.run as run_module

    monkeypatch.setattr(run_module, "tensorboard_available", lambda: False)
    monkeypatch.setattr(run_module, "_told_tensorboard_off", False)
    for name in ("a", "b"):
        train_run(TrainConfig(model="mlp-basic-128", epochs=1, max_steps=2), tmp_path / name, dataset=small,
                  progress=False)
    err = capsys.readouterr().err
    assert err.count("TensorBoard logging is off") == 1 and "digitlab[tensorboard]" in err
    assert "Traceback" not in err
    assert not (tmp_path / "a" / "tensorboard").exists() and (tmp_path / "a" / "model.safetensors").is_file()


# --- issue 15: user errors in the config are one-line errors naming the field ------------------------

@pytest.mark.parametrize("item, field", [
    ("lr=abc", "lr"), ("lr=1e999", "lr"), ("lr=nan", "lr"), ("lr=.inf", "lr"), ("epochs=1.5", "epochs"),
    ("batch_size=0", "batch_size"), ("epochs=true", "epochs"), ("weight_decay=[1]", "weight_decay"),
    ("augment=5", "augment"), ("augment={spin: 3}", "augment"), ("betas=[a, b]", "betas"),
    ("grad_clip=-inf", "grad_clip"), ("adversarial=cw", "adversarial"), ("adv_eps=2", "adv_eps"),
    ("adv_steps=0", "adv_steps"), ("adv_ramp=-1", "adv_ramp"), ("deterministic=3", "deterministic"),
])
def test_set_values_of_the_wrong_type_or_range_name_the_field(item, field):
    from digitlab.train.config import parse_set_option

    with pytest.raises(ConfigError, match=rf"^{field}\b") as info:
        TrainConfig().override(**parse_set_option([item]))
    assert "\n" not in str(info.value) and "not supported between" not in str(info.value)


def test_numbers_are_read_as_the_declared_types():
    from digitlab.train.config import parse_set_option

    cfg = TrainConfig().override(**parse_set_option(["lr=1e-3", "epochs=2.0", "max_lr=1", "final_div_factor=1e4"]))
    assert cfg.lr == 0.001 and isinstance(cfg.lr, float)  # YAML 1.1 reads "1e-3" as text
    assert cfg.epochs == 2 and isinstance(cfg.epochs, int)
    assert cfg.max_lr == 1.0 and isinstance(cfg.max_lr, float)
    assert cfg.final_div_factor == 1e4


def test_set_with_invalid_yaml_is_one_config_error():
    from digitlab.train.config import parse_set_option

    with pytest.raises(ConfigError, match=r"--set augment: .* is not valid YAML") as info:
        parse_set_option(["augment={rotation: [1"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv, needle", [
    (["--set", "augment={rotation: [1"], "--set augment"),
    (["--set", "lr=abc"], "lr must be a finite number"),
    (["--set", "lr=1e999"], "lr must be a finite number, got '1e999'"),
    (["--set", "lr=nan"], "lr must be a finite number"),
    (["--set", "epochs=1.5"], "epochs must be an integer, got 1.5"),
    (["--set", "batch_size=0"], "batch_size must be >= 1"),
    (["--nproc", "0"], "--nproc must be >= 1"),
    (["--adversarial", "pgd", "--set", "adv_eps=0"], "adv_eps must be in (0, 1]"),
])
def test_cli_train_config_errors_are_one_line(argv, needle, tmp_path, capsys):
    from digitlab.cli import main

    out = tmp_path / "never"
    assert main(["train", "--model", "mlp-basic-128", "--max-steps", "1", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_epoch_seconds_spans_the_whole_epoch_across_checkpoints_and_resume(small, tmp_path):
    """Issue 15: with checkpoint_every, history's epoch_seconds restarted at every intermediate save."""
    pause = 0.02

    def slow(trainer, **_):
        time.sleep(pause)

    # 2,700 training images / 90 = 30 steps per epoch; saves at steps 7, 14, 21, 28
    cfg = TrainConfig(model="mlp-basic-128", epochs=2, batch_size=90, checkpoint_every=7, val_max_images=100,
                      tensorboard=False)
    full = train_run(cfg, tmp_path / "full", progress=False, dataset=small, evaluate_test=False,
                     callbacks=[LambdaCallback(step_end=slow)])
    seconds = [h["epoch_seconds"] for h in full.fit.history]
    assert len(seconds) == 2 and all(s >= 30 * pause for s in seconds), seconds
    assert sum(seconds) == pytest.approx(full.fit.train_seconds, rel=1e-9)
    rows = (tmp_path / "full" / "history.csv").read_text().strip().splitlines()
    assert [float(r.split(",")[-1]) for r in rows[1:]] == pytest.approx(seconds)

    def interrupt(trainer, **_):
        time.sleep(pause)
        if trainer.state.step == 45:  # epoch 2, after the save at step 42
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", progress=False, dataset=small, evaluate_test=False,
                  callbacks=[LambdaCallback(step_end=interrupt)])
    resumed = train_run(None, tmp_path / "cut", resume=True, progress=False, dataset=small, evaluate_test=False,
                        callbacks=[LambdaCallback(step_end=slow)])
    # epoch 2 ran steps 31-42 before the cut (saved) and 43-60 after it: at least 30 pauses in all
    assert resumed.fit.history[1]["epoch_seconds"] >= 30 * pause


# --- adversarial training ---------------------------------------------------------------------------

def test_adversarial_config_is_recorded_and_validated(tmp_path):
    import argparse

    from digitlab.cli.train import build_config, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["train", "--model", "cnn-simple", "--adversarial", "pgd", "--set", "adv_eps=0.2",
                              "--set", "adv_ramp=0.5"])
    cfg = build_config(args)
    assert (cfg.adversarial, cfg.adv_eps, cfg.adv_ramp, cfg.adv_steps) == ("pgd", 0.2, 0.5, 7)
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert TrainConfig().adversarial is None
    with pytest.raises(ConfigError, match="adv_step_size"):
        TrainConfig(adversarial="pgd", adv_step_size=0)


def test_adversarial_batches_stay_in_the_ball_and_are_seeded(small):
    from digitlab.data.splits import make_splits
    from digitlab.train.loop import Trainer

    splits = make_splits(small, 0.1, 0)
    cfg = TrainConfig(model="cnn-simple", epochs=1, batch_size=50, adversarial="pgd", adv_eps=0.1,
                      adv_steps=3, adv_ramp=1.0, tensorboard=False)
    torch.manual_seed(0)
    trainer = Trainer(create_model("cnn-simple"), splits, cfg, device="cpu")
    x = splits.train.images[:50].unsqueeze(1).float() / 255
    y = splits.train.labels[:50]
    per_epoch = trainer.steps_per_epoch
    assert trainer.adversarial_eps(per_epoch - 1) == pytest.approx(0.1)
    assert trainer.adversarial_eps(per_epoch // 2 - 1) == pytest.approx(0.05)
    eps, steps, size = trainer.adversarial_attack_settings(per_epoch)
    assert (eps, steps) == (pytest.approx(0.1), 3) and size == pytest.approx(2.5 * 0.1 / 3)
    trainer.state.step = per_epoch  # full ε
    trainer.raw_model.train()
    grads_before = [p.grad for p in trainer.raw_model.parameters()]
    a = trainer.adversarial_batch(x, y)
    assert trainer.raw_model.training  # mode restored
    assert all(p.requires_grad for p in trainer.raw_model.parameters())
    assert [p.grad for p in trainer.raw_model.parameters()] == grads_before  # parameters' .grad untouched
    assert (a - x).abs().max() <= 0.1 + 1e-6 and (a - x).abs().max() > 0.05
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, trainer.adversarial_batch(x, y))  # a function of (seed, step)
    trainer.state.step += 1
    assert not torch.equal(a, trainer.adversarial_batch(x, y))
    with torch.no_grad():
        trainer.raw_model.eval()
        loss_clean = torch.nn.functional.cross_entropy(trainer.raw_model(x), y)
        loss_adv = torch.nn.functional.cross_entropy(trainer.raw_model(a), y)
    assert loss_adv > loss_clean  # it is an attack


def test_adversarial_training_resumes_exactly(small, tmp_path):
    cfg = _resume_cfg(adversarial="pgd", adv_steps=2, adv_eps=0.2, max_steps=20, augment=None)
    full = train_run(cfg, tmp_path / "full", progress=False, dataset=small, evaluate_test=False)

    def interrupt(trainer, **_):
        if trainer.state.step == 10:  # between the saves at 7 and 14
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "cut", progress=False, dataset=small, evaluate_test=False,
                  callbacks=[LambdaCallback(step_end=interrupt)])
    resumed = train_run(None, tmp_path / "cut", resume=True, progress=False, dataset=small, evaluate_test=False)
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert resumed.meta["config"]["adversarial"] == "pgd"


def test_adversarial_training_buys_robustness(small):
    """A small MLP trained on PGD batches keeps more accuracy under PGD than the same MLP trained on
    clean batches (same data, steps and seed)."""
    from digitlab.analysis.adversarial import evaluate_adversarial

    accs = {}
    for mode in (None, "pgd"):
        cfg = TrainConfig(model="mlp-basic-128", epochs=3, batch_size=100, adversarial=mode, adv_eps=0.1,
                          adv_steps=3, val_fraction=0, tensorboard=False)
        result = train_run(cfg, None, progress=False, dataset=small, evaluate_test=False)
        adv = evaluate_adversarial(result.model, small.test_images[:300], small.test_labels[:300], eps=[0.1],
                                   steps=10, step_size=0.025)
        accs[mode] = (adv.clean_accuracy, adv.pgd[0])
    assert accs["pgd"][1] > accs[None][1] + 0.2, accs
    assert accs["pgd"][0] > 0.6, accs  # and it still learned the digits
