"""The MNIST-C style corruption suite, FGSM/PGD attacks and ``digitlab robustness``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from digitlab.analysis import adversarial, corruptions
from digitlab.analysis.corruptions import CORRUPTION_NAMES, CORRUPTIONS, corrupt
from digitlab.data import to_float
from digitlab.errors import ConfigError
from inference_support import torch_threads

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def batch(mnist) -> torch.Tensor:
    return to_float(mnist.test_images[:48])


@pytest.fixture(scope="module")
def default_model():
    from digitlab.checkpoint import load_checkpoint

    model, meta = load_checkpoint("default")
    assert meta["config"]["dataset"] == "mnist"
    return model


def test_the_fifteen_mnist_c_corruptions_are_all_there():
    assert CORRUPTION_NAMES == (
        "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate", "brightness",
        "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges")
    for c in CORRUPTIONS.values():
        assert c.description and c.parameter and callable(c.fn)


@pytest.mark.parametrize("name", CORRUPTION_NAMES)
def test_each_corruption_changes_images_keeps_shape_range_and_is_seeded(batch, name):
    before = batch.clone()
    out = corrupt(batch, name, 1.0, torch.Generator().manual_seed(1))
    assert out.shape == batch.shape and out.dtype == batch.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.isnan(out).any()
    changed = (out - batch).abs().amax(dim=(1, 2, 3)) > 0.05
    assert changed.float().mean() > 0.9, f"{name} left most images unchanged"
    again = corrupt(batch, name, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(out, again), f"{name} is not deterministic for a seed"
    other = corrupt(batch, name, 1.0, torch.Generator().manual_seed(2))
    assert torch.equal(out, other) != CORRUPTIONS[name].stochastic  # random ones differ across seeds
    assert torch.equal(batch, before)  # the input is untouched


@pytest.mark.parametrize("name", ["impulse_noise", "brightness", "rotate", "fog", "stripe", "shot_noise"])
def test_severity_scales_the_damage(batch, name):
    def damage(s: float) -> float:
        return float((corrupt(batch, name, s, torch.Generator().manual_seed(3)) - batch).abs().mean())

    assert damage(0.5) < damage(1.0) < damage(2.0)


def test_corruptions_run_on_fashion_mnist():
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_DIR}")
    from digitlab.data import load_dataset

    ds = load_dataset("fashion-mnist", FASHION_DIR, download=False, progress=False)
    x = to_float(ds.test_images[:16])
    for name in CORRUPTION_NAMES:
        out = corrupt(x, name, 1.0, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and 0 <= float(out.min()) and float(out.max()) <= 1


def test_bad_names_and_severities_are_config_errors(batch):
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(batch, "snow")
    with pytest.raises(ConfigError, match="unknown corruption"):
        corruptions.parse_corruptions("fog,snow")
    for s in (0.0, -1.0, 3.5, float("nan")):
        with pytest.raises(ConfigError, match="severity"):
            corrupt(batch, "fog", s)
    assert corruptions.parse_corruptions("all") == list(CORRUPTION_NAMES)
    assert corruptions.parse_corruptions("fog, stripe,fog") == ["fog", "stripe"]


def test_corruption_accuracy_below_clean_under_severe_noise(mnist, default_model):
    with torch_threads(1):
        r = corruptions.evaluate_corruptions(default_model, mnist.test_images[:200], mnist.test_labels[:200],
                                             ["impulse_noise", "translate"], severity=2.0, seed=0, batch_size=100)
    assert r.clean_accuracy > 0.95
    assert r.per_corruption["impulse_noise"] < r.clean_accuracy - 0.2
    assert r.mean == pytest.approx(sum(r.per_corruption.values()) / 2)
    assert r.n == 200 and set(r.parameters) == {"impulse_noise", "translate"}


def test_pgd_stays_in_the_ball_is_seeded_and_leaves_parameter_grads_alone(mnist, default_model):
    x, y = to_float(mnist.test_images[:16]), mnist.test_labels[:16]
    eps = 0.1
    with torch_threads(1):
        a = adversarial.pgd_attack(default_model, x, y, eps, 5, 0.03, torch.Generator().manual_seed(0))
        b = adversarial.pgd_attack(default_model, x, y, eps, 5, 0.03, torch.Generator().manual_seed(0))
        c = adversarial.pgd_attack(default_model, x, y, eps, 5, 0.03, torch.Generator().manual_seed(1))
        with torch.no_grad():
            loss_clean = torch.nn.functional.cross_entropy(default_model(x), y)
            loss_adv = torch.nn.functional.cross_entropy(default_model(a), y)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float((a - x).abs().max()) <= eps + 1e-6
    assert float(a.min()) >= 0 and float(a.max()) <= 1
    assert not a.requires_grad
    assert all(p.grad is None for p in default_model.parameters())
    assert loss_adv > loss_clean + 0.5


def test_pgd_is_at_most_fgsm_is_at_most_clean_on_the_default_model(mnist, default_model):
    with torch_threads(1):
        r = adversarial.evaluate_adversarial(default_model, mnist.test_images[:48], mnist.test_labels[:48],
                                             eps=(0.3, 0.05), steps=10, step_size=0.04, seed=0)
    assert r.eps == [0.05, 0.3]
    for f, p in zip(r.fgsm, r.pgd, strict=True):
        assert p <= f <= r.clean_accuracy
    assert r.pgd[1] <= r.pgd[0] and r.pgd[1] <= 0.1  # a standard CNN falls to near 0 at ε = 0.3
    assert r.monotone and r.pgd_at_most_fgsm and r.warnings == []
    d = r.to_dict()
    assert set(d["fgsm"]) == {"0.05", "0.3"} and "10 steps of 0.04" in d["attack"]


def test_sanity_check_reports_violations_instead_of_hiding_them():
    monotone, at_most, warnings = adversarial.sanity_warnings([0.1, 0.2], fgsm=[0.3, 0.5], pgd=[0.4, 0.1],
                                                              steps=40, step_size=0.01)
    assert not monotone and not at_most
    assert any("FGSM accuracy rises" in w for w in warnings)
    assert any("PGD is weaker than FGSM at ε=0.1" in w for w in warnings)
    *_, short = adversarial.sanity_warnings([0.3], [0.1], [0.0], steps=5, step_size=0.01)
    assert any("may not reach" in w for w in short)


@pytest.mark.parametrize("text", ["0", "1.5", "a,b", "", "-0.1"])
def test_bad_eps_is_a_config_error(text):
    with pytest.raises(ConfigError):
        adversarial.parse_eps(text)


def test_cli_all_suites_json_and_plots(mnist_dir, tmp_path, capsys):
    from digitlab.cli import main

    plots = tmp_path / "plots"
    with torch_threads(1):
        code = main(["robustness", "default", "--suite", "all", "--limit", "24", "--corruptions",
                     "brightness,stripe", "--eps", "0.1,0.3", "--steps", "4", "--step-size", "0.08",
                     "--data-dir", str(mnist_dir), "--plots", str(plots), "--json", "--quiet"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert {"model", "dataset", "n", "corruptions", "adversarial"} <= set(out)
    assert out["model"] == "default" and out["dataset"] == "mnist" and out["n"] == 24
    c = out["corruptions"]
    assert set(c["per_corruption"]) == {"brightness", "stripe"}
    assert c["mean"] == pytest.approx(sum(c["per_corruption"].values()) / 2)
    a = out["adversarial"]
    assert a["eps"] == [0.1, 0.3] and set(a["pgd"]) == {"0.1", "0.3"} and a["steps"] == 4
    assert a["pgd"]["0.3"] <= a["fgsm"]["0.3"] <= a["clean_accuracy"]
    names = sorted(Path(p).name for p in out["plots"])
    assert names == ["adversarial_accuracy.png", "corruption_accuracy.png", "corruption_examples.png"]
    for p in out["plots"]:
        assert Path(p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_text_summary(mnist_dir, capsys):
    from digitlab.cli import main

    with torch_threads(1):
        assert main(["robustness", "--model", "default", "--limit", "16", "--corruptions", "fog",
                     "--data-dir", str(mnist_dir), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "fog" in text and "mean" in text and "haze strength" in text


@pytest.mark.parametrize("argv, message", [
    (["--severity", "0"], "severity"),
    (["--eps", "2"], "ε"),
    (["--corruptions", "snow"], "unknown corruption"),
    (["--limit", "0"], "--limit"),
    (["--steps", "0", "--suite", "adversarial"], "--steps"),
    (["--model", "nowhere/run"], "no checkpoint"),
])
def test_cli_bad_arguments_are_one_line_errors(mnist_dir, capsys, argv, message):
    from digitlab.cli import main

    assert main(["robustness", *argv, "--data-dir", str(mnist_dir), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("digitlab: error:") and message in err and "\n" not in err


def test_cli_refuses_a_non_empty_plots_folder(mnist_dir, tmp_path, capsys):
    from digitlab.cli import main

    (tmp_path / "keep.txt").write_text("x")
    assert main(["robustness", "default", "--limit", "8", "--plots", str(tmp_path),
                 "--data-dir", str(mnist_dir), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.fixture(scope="module")
def fashion_run(tmp_path_factory) -> Path:
    """A cnn-simple trained for 80 steps on Fashion-MNIST, saved as a run (its meta names the dataset)."""
    if not (FASHION_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed at {FASHION_DIR}")
    from digitlab.checkpoint import build_meta, save_run_checkpoint
    from digitlab.data import load_dataset
    from inference_support import train_cnn

    ds = load_dataset("fashion-mnist", FASHION_DIR, download=False, progress=False)
    model = train_cnn(ds, steps=80, lr=2e-3)
    run = tmp_path_factory.mktemp("fashion-run")
    save_run_checkpoint(run, model, build_meta(model, config={"dataset": "fashion-mnist"}))
    return run


def test_both_commands_run_on_a_fashion_mnist_model(fashion_run, capsys):
    from digitlab.cli import main

    with torch_threads(1):
        assert main(["robustness", str(fashion_run), "--suite", "all", "--limit", "64", "--eps", "0.1",
                     "--steps", "5", "--step-size", "0.03", "--data-dir", str(FASHION_DIR), "--json",
                     "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "fashion-mnist"  # the run's own dataset
    c, a = out["corruptions"], out["adversarial"]
    assert c["clean_accuracy"] > 0.5 and len(c["per_corruption"]) == 15
    assert a["pgd"]["0.1"] <= a["fgsm"]["0.1"] <= a["clean_accuracy"]
    with torch_threads(1):
        assert main(["label-issues", "--model", str(fashion_run), "--limit", "500", "--top", "3",
                     "--data-dir", str(FASHION_DIR), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dataset"] == "fashion-mnist" and out["split"] == "test" and out["n"] == 500
    assert len(out["issues"]) <= 3 and out["n_flagged"] >= len(out["issues"])
    assert all(r["name"] != r["suggested_name"] for r in out["issues"])


def test_training_description_names_adversarial_training():
    from digitlab.cli.robustness import training_description

    std = training_description({"config": {"dataset": "mnist"}})
    assert std["adversarial"] is None and "standard" in std["description"]
    pgd = training_description({"config": {"adversarial": "pgd", "adv_eps": 0.3, "adv_steps": 10,
                                           "adv_step_size": None, "adv_ramp": 1.0}})
    assert (pgd["adversarial"], pgd["eps"], pgd["steps"]) == ("pgd", 0.3, 10)
    assert pgd["step_size"] == pytest.approx(0.075)
    assert "PGD-10 at ε=0.3" in pgd["description"] and "ramped over 1 epoch" in pgd["description"]
    fgsm = training_description({"config": {"adversarial": "fgsm", "adv_eps": 0.2}})
    assert fgsm["steps"] == 1 and fgsm["step_size"] == pytest.approx(0.25)


def test_cli_shows_how_an_adversarially_trained_run_was_trained(mnist_dir, tmp_path, capsys):
    from digitlab.cli import main

    run = tmp_path / "robust"
    with torch_threads(1):
        assert main(["train", "--model", "mlp-basic-128", "--adversarial", "pgd", "--set", "adv_eps=0.2",
                     "--set", "adv_steps=2", "--max-steps", "3", "--set", "tensorboard=false",
                     "--data-dir", str(mnist_dir), "--out", str(run), "--quiet"]) == 0
        capsys.readouterr()
        assert main(["robustness", str(run), "--suite", "adversarial", "--limit", "8", "--eps", "0.2",
                     "--steps", "2", "--step-size", "0.1", "--data-dir", str(mnist_dir), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["training"]["adversarial"] == "pgd" and out["training"]["eps"] == 0.2
    assert out["training"]["steps"] == 2
    with torch_threads(1):
        assert main(["robustness", str(run), "--limit", "8", "--corruptions", "fog",
                     "--data-dir", str(mnist_dir), "--quiet"]) == 0
    assert "adversarial training: L∞ PGD-2 at ε=0.2" in capsys.readouterr().out


def test_a_corrupted_set_scores_like_the_streaming_evaluation(mnist, default_model):
    """The study corrupts a subset once and scores every model on it: same numbers as the CLI's path."""
    images, labels = mnist.test_images[:120], mnist.test_labels[:120]
    names = ["shot_noise", "fog", "rotate", "canny_edges"]
    with torch_threads(1):
        data = corruptions.corrupt_set(images, labels, names, seed=3, batch_size=50)
        shared = corruptions.score_corrupted(default_model, data, batch_size=50)
        direct = corruptions.evaluate_corruptions(default_model, images, labels, names, seed=3, batch_size=50)
    assert shared.per_corruption == direct.per_corruption and shared.mean == direct.mean
    assert shared.clean_accuracy == direct.clean_accuracy and shared.n == 120
    assert set(data.corrupted) == set(names) and data.corrupted["fog"].shape == (120, 1, 28, 28)
    assert not torch.equal(data.corrupted["fog"], corruptions.corrupt_set(images, labels, ["fog"], seed=4,
                                                                          batch_size=50).corrupted["fog"])
