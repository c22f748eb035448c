"""Temperature scaling: the fit, its place in every training run's metadata, and the predictor using it."""

from __future__ import annotations

import numpy as np
import pytest

from digitlab.data import Dataset
from digitlab.errors import CheckpointError
from digitlab.evaluate.calibration import TEMPERATURE_RANGE, calibrate, fit_temperature
from digitlab.inference.predictor import Predictor, load_predictor, temperature_of
from digitlab.numerics import softmax


def _sampled(temperature: float, n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from softmax(logits / temperature): that T is the true one."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1, (n, 10))
    z[np.arange(n), rng.integers(0, 10, n)] += 2.5
    p = softmax(z / temperature)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


@pytest.mark.parametrize("true_t", [0.4, 1.0, 2.5])
def test_fit_temperature_recovers_the_temperature_that_generated_the_labels(true_t):
    z, y = _sampled(true_t)
    assert fit_temperature(z, y) == pytest.approx(true_t, rel=0.08)


def test_fit_temperature_minimises_the_nll():
    z, y = _sampled(0.5, seed=1)
    t = fit_temperature(z, y)

    def nll(temp: float) -> float:
        return float(-np.log(softmax(z / temp)[np.arange(y.size), y]).mean())

    assert all(nll(t) <= nll(t * f) + 1e-12 for f in (0.9, 0.99, 1.01, 1.1))


def test_calibrate_lowers_the_ece_and_keeps_the_labels():
    z, y = _sampled(0.4, seed=2)
    fit = calibrate(z, y, fitted_on="validation")
    assert fit.n == y.size and fit.fitted_on == "validation"
    assert fit.ece_after < fit.ece_before / 3
    assert set(fit.to_dict()) == {"temperature", "fitted_on", "n", "ece_before", "ece_after"}
    assert (softmax(z / fit.temperature).argmax(1) == z.argmax(1)).all()


def test_fit_temperature_refuses_bad_input():
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((0, 10)), np.zeros(0, int))
    with pytest.raises(ValueError):
        fit_temperature(np.full((3, 10), np.nan), np.zeros(3, int))
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 10)), np.array([0, 1, 10]))
    # separable data pushes T to the bottom of the range, never below it
    z = np.eye(10)[np.arange(50) % 10] * 5
    assert TEMPERATURE_RANGE[0] <= fit_temperature(z, np.arange(50) % 10) < 0.02


def test_temperature_of_metadata():
    assert temperature_of({}) == 1.0
    assert temperature_of({"calibration": {"temperature": 0.5}}) == 0.5
    for bad in (0, -1.0, float("nan"), "0.5", True, None, 1e9):
        with pytest.raises(CheckpointError, match="temperature"):
            temperature_of({"calibration": {"temperature": bad}})


def test_predictor_divides_logits_by_the_temperature():
    logits = np.array([[2.0, 1.0, 0.0] + [0.0] * 7], np.float32)
    plain = Predictor(lambda x: np.repeat(logits, x.shape[0], 0), {}, temperature=1.0)
    sharp = Predictor(lambda x: np.repeat(logits, x.shape[0], 0), {}, temperature=0.5)
    img = np.zeros((2, 28, 28), np.uint8)
    _, p1 = plain.predict(img)
    labels, p2 = sharp.predict(img)
    np.testing.assert_allclose(p1[0], softmax(logits.astype(np.float64))[0], rtol=1e-6)
    np.testing.assert_allclose(p2[0], softmax(logits.astype(np.float64) / 0.5)[0], rtol=1e-6)
    assert labels.tolist() == [0, 0] and p2[0, 0] > p1[0, 0]


@pytest.fixture(scope="module")
def small(mnist) -> Dataset:
    return Dataset(mnist.name, mnist.spec, mnist.source, mnist.train_images[:3000],
                   mnist.train_labels[:3000], mnist.test_images[:500], mnist.test_labels[:500],
                   mnist.checksums)


def test_training_run_stores_a_validation_temperature_that_the_predictor_uses(small, tmp_path):
    from digitlab.checkpoint import load_checkpoint, read_meta
    from digitlab.data import make_splits
    from digitlab.models.forward import predict_logits
    from digitlab.train import TrainConfig, train_run

    cfg = TrainConfig(model="cnn-simple", epochs=1, max_steps=20, batch_size=64, tensorboard=False)
    result = train_run(cfg, tmp_path / "run", progress=False, dataset=small)
    cal = read_meta(tmp_path / "run")["calibration"]
    val = make_splits(small, cfg.val_fraction, cfg.seed).val
    assert cal["fitted_on"] == "validation" and cal["n"] == len(val) == 300
    model, _ = load_checkpoint(tmp_path / "run")
    z = predict_logits(model, val.images).double().numpy()
    assert cal["temperature"] == pytest.approx(fit_temperature(z, val.labels.numpy()), rel=1e-6)
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9
    assert result.meta["calibration"] == cal
    pred = load_predictor(tmp_path / "run", device="cpu")
    assert pred.temperature == cal["temperature"]
    _, probs = pred.predict(small.test_images[:20].numpy())
    zt = predict_logits(model, small.test_images[:20]).double().numpy()
    np.testing.assert_allclose(probs, softmax(zt / cal["temperature"]), atol=1e-5)


def test_temperature_is_fitted_on_the_validation_images_the_run_validates_on(small, tmp_path):
    """With ``val_max_images`` the fit uses the same first N validation images as validation does."""
    from digitlab.checkpoint import load_checkpoint, read_meta
    from digitlab.data import make_splits
    from digitlab.models.forward import predict_logits
    from digitlab.train import TrainConfig, train_run

    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=10, val_max_images=120, tensorboard=False)
    train_run(cfg, tmp_path / "run", progress=False, dataset=small)
    cal = read_meta(tmp_path / "run")["calibration"]
    assert cal["n"] == 120
    val = make_splits(small, cfg.val_fraction, cfg.seed).val
    model, _ = load_checkpoint(tmp_path / "run")
    z = predict_logits(model, val.images[:120]).double().numpy()
    assert cal["temperature"] == pytest.approx(fit_temperature(z, val.labels[:120].numpy()), rel=1e-6)


def test_run_without_validation_split_has_no_temperature(small, tmp_path):
    from digitlab.checkpoint import read_meta
    from digitlab.train import TrainConfig, train_run

    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=5, val_fraction=0.0, tensorboard=False)
    train_run(cfg, tmp_path / "run", progress=False, dataset=small)
    assert "calibration" not in read_meta(tmp_path / "run")
    assert load_predictor(tmp_path / "run", device="cpu").temperature == 1.0


def test_resume_removes_temp_files_left_by_a_kill_during_an_atomic_write(small, tmp_path):
    from digitlab.train import LambdaCallback, TrainConfig, train_run

    cfg = TrainConfig(model="mlp-basic-128", epochs=1, max_steps=30, batch_size=64, checkpoint_every=5,
                      tensorboard=False)

    def interrupt(trainer, **_):
        if trainer.state.step == 12:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, run, progress=False, dataset=small, callbacks=[LambdaCallback(step_end=interrupt)])
    # what kill -9 between atomic_path's write and its rename leaves behind
    stale = [run / ".resume.safetensors.k3j_x9q1.tmp", run / ".history.csv.abcd1234.tmp",
             run / ".model.safetensors.zz.tmp"]
    for p in stale:
        p.write_bytes(b"partial")
    keep = [run / "notes.tmp", run / ".keep"]  # not atomic_path's pattern: left alone
    for p in keep:
        p.write_text("user file")
    train_run(None, run, resume=True, progress=False, dataset=small)
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in keep)
    assert not list(run.glob(".*.tmp"))
    assert (run / "model.safetensors").is_file()
