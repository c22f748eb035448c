"""The model zoo: every registered model is checked by the parametrised tests below.

A new ``@register_model`` is picked up automatically. The ``mnist`` fixture
(conftest.py) loads the real dataset from ``$DIGITLAB_DATA_DIR``. Models with a
``prepare`` hook are prepared, and estimator models (``uses_gradient=False``)
are fitted, on 2,000 training images before they are exercised.
"""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from digitlab.checkpoint import build_meta, load_checkpoint, save_checkpoint
from digitlab.cli import main
from digitlab.data import to_float
from digitlab.errors import ConfigError
from digitlab.models import count_parameters, create_model, list_models, model_info
from digitlab.models._common import count_parameters_keras
from digitlab.models.baselines import cross_validate_estimator
from digitlab.models.mlp import f_classif_scores, select_pixels

ALL_MODELS = list_models()
GRADIENT_MODELS = [n for n in ALL_MODELS if model_info(n).uses_gradient]
# keep the default run fast: small forests, fewer lbfgs iterations on the 2k subset
FAST_KWARGS: dict[str, dict] = {"random-forest": {"n_estimators": 8, "n_jobs": 1},
                                "logreg": {"max_iter": 300}}
N_SUBSET = 2000


@pytest.fixture(scope="module")
def subset(mnist):
    return mnist.train_images[:N_SUBSET], mnist.train_labels[:N_SUBSET]


@pytest.fixture(scope="module")
def batch(mnist):
    return to_float(mnist.test_images[:16]), mnist.test_labels[:16]


def _make_ready(name: str, subset) -> nn.Module:
    model = create_model(name, **FAST_KWARGS.get(name, {}))
    if hasattr(model, "prepare"):
        model.prepare(*subset)
    if not model_info(name).uses_gradient:
        model.fit_estimator(*subset)
    return model


@pytest.fixture(scope="module")
def ready(subset):
    cache: dict[str, nn.Module] = {}

    def get(name: str) -> nn.Module:
        if name not in cache:
            cache[name] = _make_ready(name, subset)
        return cache[name]

    return get


def _normalised(out: torch.Tensor, tol: float = 1e-4) -> bool:
    """True if rows look like probabilities or log-probabilities rather than raw logits."""
    out = out.detach().double()
    probs = bool(((out >= 0) & (out <= 1)).all()) and bool(((out.sum(1) - 1).abs() < tol).all())
    log_probs = bool((out.logsumexp(1).abs() < tol).all())
    return probs or log_probs


def test_normalisation_check_is_meaningful():
    z = torch.randn(16, 10) * 3
    assert not _normalised(z)
    assert _normalised(torch.softmax(z, 1))
    assert _normalised(torch.log_softmax(z, 1))


# --------------------------------------------------------------------------- every model

def test_zoo_contains_required_models():
    required = {"mlp-basic-128", "mlp-basic-256", "mlp-basic-512", "mlp-selected", "mlp-128-64", "mlp-bn",
                "cnn-simple", "cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini", "lenet5",
                "logreg", "random-forest", "plain-cnn", "pytorch-example"}
    assert required <= set(ALL_MODELS)


@pytest.mark.parametrize("name", ALL_MODELS)
def test_registry_metadata(name):
    info = model_info(name)
    model = create_model(name)
    assert info.family and info.reference
    assert info.input_kind in {"image", "flat", "selected"}
    assert info.recipe in (None, name)
    assert getattr(model, "uses_gradient", True) == info.uses_gradient
    assert model.digitlab_name == name
    if not info.uses_gradient:
        assert callable(getattr(model, "fit_estimator", None))
    if info.input_kind == "selected":
        assert callable(getattr(model, "prepare", None))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_forward_shape_and_logits(name, ready, batch):
    model = ready(name).eval()
    x, _ = batch
    with torch.no_grad():
        out = model(x)
    assert out.shape == (16, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    if model_info(name).uses_gradient:
        assert not _normalised(out), "models must return raw logits, not (log-)probabilities"
    else:
        # estimator logits: their softmax is the estimator's predicted distribution
        proba = model.predict_proba(x)
        assert torch.allclose(torch.softmax(out.double(), 1), proba, atol=1e-4)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_backward_gives_finite_gradients(name, subset, batch):
    torch.manual_seed(0)
    model = _make_ready(name, subset).train()
    x, y = batch
    loss = nn.functional.cross_entropy(model(x), y)
    if hasattr(model, "l2_penalty"):
        loss = loss + model.l2_penalty()
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for pname, p in params:
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has non-finite gradient"
    assert sum(float(p.grad.abs().sum()) for _, p in params) > 0


@pytest.mark.parametrize("name", ALL_MODELS)
def test_eval_mode_is_deterministic(name, ready, batch):
    model = ready(name).eval()
    with torch.no_grad():
        assert torch.equal(model(batch[0]), model(batch[0]))


@pytest.mark.parametrize("name", ALL_MODELS)
def test_checkpoint_round_trip(name, ready, batch, tmp_path):
    torch.manual_seed(1)
    model = ready(name)
    if model_info(name).uses_gradient:
        with torch.no_grad():  # move BatchNorm statistics away from their initial values
            model.train()(batch[0])
    model.eval()
    with torch.no_grad():
        expected = model(batch[0])
    path = save_checkpoint(tmp_path / "m.safetensors", model, build_meta(model))
    loaded, meta = load_checkpoint(path)
    assert meta["model"] == name
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(batch[0]), expected)
    for (bname, buf), (_, buf2) in zip(model.named_buffers(), loaded.named_buffers(), strict=True):
        torch.testing.assert_close(buf, buf2, rtol=0, atol=0, equal_nan=True, msg=bname)


# --------------------------------------------------------------------------- parameter counts

# (PyTorch trainable parameters, Keras count_params()). Keras counts every weight, including
# BatchNormalization's moving mean and variance (non-trainable); PyTorch keeps those as buffers.
# count_parameters_keras() adds them back so notebook figures compare like with like.
PUBLISHED_COUNTS = {
    "mlp-128-64": (109_386, 109_386),        # notebook 003 README
    "mlp-selected": (84_618, 84_618),        # notebook 000 report
    "cnn-deep": (1_013_098, 1_015_530),      # notebook 000 report: 1,015,530 (2,432 BN statistics)
    "mlp-bn": (569_226, 571_018),            # notebook 004: 569,226 (it sums gamma/beta only)
    "mlp-basic-512": (407_050, 407_050),     # notebook 000 report ("Basic Model")
}
# no published figure: Keras' count of the notebook's architecture, derived by hand layer by layer.
# Notebook 001 prints 89,634 / 123,410 / 95,847 / 156,923 for its four CNNs, but those are hard-coded
# "simulated" values that do not match its own architectures, so we assert what the architecture gives.
DERIVED_COUNTS = {
    "cnn-simple": (93_322, 93_322),          # 320 + 18,496 + 36,928 + 36,928 + 650 ('valid' convs)
    "cnn-enhanced": (157_354, 158_058),
    "resnet-mini": (697_162, 699_402),
    "se-cnn": (97_336, 97_784),
    "densenet-mini": (68_994, 70_290),
    "lenet5": (61_706, 61_706),
    "plain-cnn": (147_146, 147_146),
    "pytorch-example": (1_199_882, 1_199_882),
}


@pytest.mark.parametrize("name", sorted({**PUBLISHED_COUNTS, **DERIVED_COUNTS}))
def test_parameter_counts(name):
    trainable, keras = {**PUBLISHED_COUNTS, **DERIVED_COUNTS}[name]
    model = create_model(name)
    assert count_parameters(model) == trainable
    assert count_parameters_keras(model) == keras


@pytest.mark.parametrize("width", [128, 256, 512])
def test_basic_mlp_counts(width):
    assert count_parameters(create_model(f"mlp-basic-{width}")) == 784 * width + width + 10 * width + 10


def test_baseline_parameter_counts(ready):
    assert create_model("logreg").parameter_count() == 7_850  # notebook 001: 7,850
    assert create_model("random-forest").parameter_count() is None
    assert ready("random-forest").parameter_count() > 0


# --------------------------------------------------------------------------- L2 bookkeeping

@pytest.mark.parametrize("name, n_kernels", [("cnn-enhanced", 1), ("resnet-mini", 15), ("se-cnn", 6),
                                             ("densenet-mini", 12)])
def test_l2_params_are_the_notebook_kernels(name, n_kernels):
    model = create_model(name)
    params = model.l2_params()
    assert len(params) == n_kernels
    assert all(p.dim() >= 2 for p in params)  # kernels only, no biases or BN parameters
    expected = model.l2_lambda * sum(float(p.detach().pow(2).sum()) for p in params)
    assert model.l2_penalty().item() == pytest.approx(expected, rel=1e-5)
    assert create_model(name, l2_lambda=0.0).l2_penalty().item() == 0.0


# --------------------------------------------------------------------------- feature selection

def test_f_classif_matches_sklearn_and_selection(subset):
    from sklearn.feature_selection import f_classif

    images, labels = subset
    scores = f_classif_scores(images, labels).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about the constant pixels
        ref, _ = f_classif(images.reshape(len(images), -1).numpy().astype(np.float64), labels.numpy())
    assert np.array_equal(np.isnan(scores), np.isnan(ref)) and np.isnan(ref).any()
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(scores[ok], ref[ok], rtol=1e-9)
    top = set(np.argsort(np.nan_to_num(ref, nan=-np.inf))[-196:].tolist())
    assert set(select_pixels(torch.from_numpy(scores), 196).tolist()) == top


def test_mlp_selected_uses_only_selected_pixels(ready, batch):
    model = ready("mlp-selected").eval()
    assert model.is_prepared and not create_model("mlp-selected").is_prepared
    sel = model.selected
    assert sel.shape == (196,) and torch.equal(sel, select_pixels(model.pixel_scores, 196))
    x = batch[0].clone()
    unselected = torch.ones(784, dtype=torch.bool)
    unselected[sel] = False
    flat = x.view(16, -1)
    with torch.no_grad():
        before = model(x)
        flat[:, unselected] = torch.rand(16, int(unselected.sum()))
        assert torch.equal(model(x), before)
        flat[:, sel[:5]] += 0.5
        assert not torch.equal(model(x), before)


# --------------------------------------------------------------------------- baselines vs scikit-learn

def _flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(x.shape[0], -1).numpy()


@pytest.mark.parametrize("kwargs", [{"n_estimators": 10}, {"n_estimators": 6, "max_depth": 4}])
def test_random_forest_walk_equals_sklearn_exactly(subset, mnist, kwargs):
    model = create_model("random-forest", n_jobs=1, **kwargs)
    est = model.fit_estimator(*subset)
    x = to_float(mnist.test_images[:1000])
    # adversarial inputs: pixels set exactly to (float32-rounded) split thresholds
    rng = np.random.default_rng(0)
    feats = np.concatenate([t.tree_.feature[t.tree_.children_left != -1] for t in est.estimators_])
    thrs = np.concatenate([t.tree_.threshold[t.tree_.children_left != -1] for t in est.estimators_])
    pick = rng.integers(0, feats.size, size=1000)
    x_edge = x.clone().view(1000, -1)
    edge_values = torch.from_numpy(thrs[pick].astype(np.float32))
    x_edge[torch.arange(1000), torch.from_numpy(feats[pick])] = edge_values
    for inputs in (x, x_edge.view(1000, 1, 28, 28)):
        ref = est.predict_proba(_flat(inputs))
        mine = model.predict_proba(inputs).numpy()
        assert np.array_equal(mine, ref)  # bit-identical, not merely close
        assert np.array_equal(model(inputs).argmax(1).numpy(), est.predict(_flat(inputs)))


def test_logreg_matches_sklearn(subset, mnist):
    model = create_model("logreg", max_iter=300)
    est = model.fit_estimator(*subset)
    assert model.weight.shape == (10, 784) and model.bias.shape == (10,)
    x = to_float(mnist.test_images[:1000])
    ref = est.predict_proba(_flat(x).astype(np.float64))
    np.testing.assert_allclose(model.predict_proba(x).numpy(), ref, rtol=0, atol=1e-9)
    assert np.array_equal(model(x).argmax(1).numpy(), est.predict(_flat(x)))
    assert model.fit_info_["converged"]


@pytest.mark.parametrize("name", [n for n in ALL_MODELS if not model_info(n).uses_gradient])
def test_baseline_probabilities_through_the_one_forward_pass(name, ready, mnist):
    from digitlab.models.forward import predict_proba

    model = ready(name).train()  # predict_proba switches to eval and back
    images = mnist.test_images[:500]
    batched = predict_proba(model, images, batch_size=128)
    assert model.training and batched.shape == (500, 10) and batched.dtype == torch.float32
    exact = model.predict_proba(to_float(images))  # the estimator's own float64 probabilities
    torch.testing.assert_close(batched.double(), exact, atol=1e-4, rtol=0)
    assert torch.equal(batched.argmax(1), exact.argmax(1))


def test_unfitted_forest_refuses_to_predict(batch):
    with pytest.raises(RuntimeError, match="not fitted"):
        create_model("random-forest")(batch[0])


def test_bad_model_arguments_are_config_errors():
    with pytest.raises(ConfigError):
        create_model("lenet5", activation="gelu")
    with pytest.raises(ConfigError):
        create_model("random-forest", n_estimators=0)
    with pytest.raises(ConfigError):
        create_model("mlp-basic-128", no_such_argument=1)
    with pytest.raises(ConfigError, match="odd"):
        create_model("best-cnn", kernel_size=4)


@pytest.mark.parametrize("kernel_size", [5, 7])
def test_best_cnn_kernel_size_changes_receptive_field_not_shapes(kernel_size, batch):
    model = create_model("best-cnn", kernel_size=kernel_size, width=8).eval()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(c.kernel_size == (kernel_size, kernel_size) for c in convs)
    assert model(batch[0]).shape == (len(batch[0]), 10)


def test_cross_validation_matches_sklearn(subset):
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    images, labels = subset[0][:600], subset[1][:600]
    result = cross_validate_estimator("random-forest", images, labels, folds=3, seed=0,
                                      n_estimators=5, n_jobs=1)
    assert result["folds"] == 3 and len(result["fold_accuracies"]) == 3 and len(result["fit_seconds"]) == 3
    assert result["mean"] == pytest.approx(np.mean(result["fold_accuracies"]))
    assert result["std"] == pytest.approx(np.std(result["fold_accuracies"]))
    ref = cross_val_score(RandomForestClassifier(n_estimators=5, random_state=0, n_jobs=1),
                          _flat(to_float(images)), labels.numpy(),
                          cv=StratifiedKFold(n_splits=3, shuffle=True, random_state=0))
    np.testing.assert_allclose(result["fold_accuracies"], ref, rtol=0, atol=1e-12)
    assert result["mean"] > 0.6
    with pytest.raises(ConfigError):
        cross_validate_estimator("mlp-128-64", images, labels)


# --------------------------------------------------------------------------- CLI

def test_cli_models_json(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ALL_MODELS
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        assert {"family", "params", "params_keras", "input_kind", "reference", "recipe"} <= set(r)
    assert by_name["mlp-128-64"]["params"] == 109_386
    assert by_name["cnn-deep"]["params_keras"] == 1_015_530
    assert by_name["logreg"]["params"] == 7_850
    assert by_name["random-forest"]["params"] is None
    assert by_name["mlp-selected"]["input_kind"] == "selected"


def test_cli_models_pattern_and_table(capsys):
    assert main(["models", "--pattern", "mlp-basic-*", "--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == [
        "mlp-basic-128", "mlp-basic-256", "mlp-basic-512"]
    assert main(["models", "--pattern", "cnn-*"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAME", "FAMILY", "PARAMS"]
    assert "1,013,098" in out and "mlp-" not in out


def test_cli_models_summary_of_cnn_deep(capsys):
    assert main(["models", "--summary", "cnn-deep", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    registry_total = count_parameters(create_model("cnn-deep"))
    assert s["params"] == registry_total == 1_013_098  # the notebook's trainable count
    assert s["params_keras"] == 1_015_530
    assert sum(r["params"] for r in s["layers"]) == registry_total
    assert s["input_shape"] == [1, 28, 28] and s["output_shape"] == [10]
    first, last = s["layers"][0], s["layers"][-1]
    assert (first["kind"], first["output_shape"], first["params"]) == ("Conv2d", [32, 28, 28], 3 * 3 * 32 + 32)
    assert (last["kind"], last["output_shape"]) == ("Linear", [10])
    assert all(r["output_shape"] is not None for r in s["layers"])  # every layer ran
    assert main(["models", "--summary", "cnn-deep"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["LAYER", "TYPE", "OUTPUT", "PARAMS"]
    assert "32×28×28" in out and "total parameters: 1,013,098" in out


@pytest.mark.parametrize("name", ALL_MODELS)
def test_summary_totals_match_the_catalog(name):
    from digitlab.models.catalog import model_catalog, model_summary

    s = model_summary(name)
    row = model_catalog(name)[0]
    assert (s.params, s.params_keras) == (row["params"], row["params_keras"])
    if s.params is not None:
        assert sum(r.params or 0 for r in s.layers) == s.params


def test_cli_models_summary_unknown_model(capsys):
    assert main(["models", "--summary", "no-such-net"]) == 2
    assert "unknown model 'no-such-net'" in capsys.readouterr().err


# --------------------------------------------------------------------------- issue 16: fast forms, same maths
# The speed rewrites (MaxPool2x2 for nn.MaxPool2d, in-place ReLUs, the residual blocks' in-place add,
# lenet5's max pool) must compute what the textbook form computes. The references below are the
# previous forms, written out with plain PyTorch layers; the same state dict loads into both (so the
# keys are unchanged too) and outputs, gradients and BatchNorm statistics agree in float32.
FP32_ATOL = 1e-5


def _bn2d(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


def _bn1d(c: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(c, eps=1e-3, momentum=0.01)


class _RefFeaturesHead(nn.Module):
    def __init__(self, features: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.features, self.head = features, head

    def forward(self, x):
        return self.head(self.features(x))


def _ref_gap_head(c: int) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(c, 10))


class _RefResidual(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), _bn2d(cout), nn.ReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), _bn2d(cout))
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1), _bn2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class _RefSE(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, max(1, c // 16)), nn.ReLU(), nn.Linear(max(1, c // 16), c), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean(dim=(2, 3)))[:, :, None, None]


class _RefDenseLayer(nn.Module):
    def __init__(self, cin: int, k: int = 12) -> None:
        super().__init__()
        self.body = nn.Sequential(_bn2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * k, 1),
                                  _bn2d(4 * k), nn.ReLU(), nn.Conv2d(4 * k, k, 3, padding=1))

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


def _ref_cnn_deep() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for w in (32, 64, 128):
        layers += [nn.Conv2d(cin, w, 3, padding=1), _bn2d(w), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), _bn2d(w),
                   nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)]
        cin = w
    layers += [nn.Flatten(), nn.Linear(1152, 512), nn.ReLU(), _bn1d(512), nn.Dropout(0.5),
               nn.Linear(512, 256), nn.ReLU(), _bn1d(256), nn.Dropout(0.5), nn.Linear(256, 10)]
    return nn.Sequential(*layers)


def _ref_cnn_enhanced() -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), _bn2d(32), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), _bn2d(64), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Dropout(0.25),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), _bn2d(128), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.5))
    head = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), _bn1d(128), nn.Dropout(0.5), nn.Linear(128, 10))
    return _RefFeaturesHead(features, head)


def _ref_resnet_mini() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(1, 32, 3, padding=1), _bn2d(32), nn.ReLU()]
    cin = 32
    for i, w in enumerate((32, 64, 128)):
        if i:
            layers.append(nn.MaxPool2d(2))
        for _ in range(2):
            layers.append(_RefResidual(cin, w))
            cin = w
    return _RefFeaturesHead(nn.Sequential(*layers), _ref_gap_head(128))


def _ref_se_cnn() -> nn.Module:
    layers: list[nn.Module] = []
    cin = 1
    for i, w in enumerate((32, 64, 128)):
        layers += [nn.Conv2d(cin, w, 3, padding=1), nn.ReLU(), _bn2d(w), _RefSE(w)]
        if i < 2:
            layers.append(nn.MaxPool2d(2))
        cin = w
    return _RefFeaturesHead(nn.Sequential(*layers), _ref_gap_head(128))


def _ref_densenet_mini() -> nn.Module:
    block1 = nn.Sequential(*[_RefDenseLayer(32 + 12 * i) for i in range(3)])
    block2 = nn.Sequential(*[_RefDenseLayer(64 + 12 * i) for i in range(3)])
    features = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), block1, nn.Conv2d(68, 64, 1), nn.MaxPool2d(2),
                             block2, nn.Conv2d(100, 128, 1))
    return _RefFeaturesHead(features, _ref_gap_head(128))


def _ref_cnn_simple() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.Flatten(), nn.Linear(576, 64),
                         nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))


def _ref_lenet5_relu_max() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def _ref_fast_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 32, 5, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Flatten(), nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))


def _ref_best_cnn() -> nn.Module:
    def cbr(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*cbr(1, 32), *cbr(32, 32), nn.MaxPool2d(2), *cbr(32, 64), *cbr(64, 64), nn.MaxPool2d(2),
                         *cbr(64, 128), nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.2), nn.Linear(1152, 10))


REFERENCE_FORMS = {
    ("cnn-simple", ()): _ref_cnn_simple, ("cnn-deep", ()): _ref_cnn_deep,
    ("cnn-enhanced", ()): _ref_cnn_enhanced, ("resnet-mini", ()): _ref_resnet_mini,
    ("se-cnn", ()): _ref_se_cnn, ("densenet-mini", ()): _ref_densenet_mini,
    ("lenet5", (("activation", "relu"), ("pool", "max"))): _ref_lenet5_relu_max,
    ("fast-cnn", ()): _ref_fast_cnn, ("best-cnn", ()): _ref_best_cnn,
}


def _train_step_outputs(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """Logits of one train-mode forward (dropout seeded), parameter gradients and BN running stats after it.

    ``ops.Dropout`` draws its masks from random bytes, ``nn.Dropout`` with ``bernoulli_``: under
    ``reference_dropout()`` both draw ``bernoulli_`` masks, so the same seed gives the same masks (the
    fast draw itself is tested in tests/test_ops.py: exact rate, F.dropout's scaling and gradient)."""
    from digitlab.models.ops import reference_dropout

    model.train()
    torch.manual_seed(123)
    with reference_dropout():
        out = model(x)
    model.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(out, y).backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    return out.detach(), grads, buffers


def _assert_same_computation(fast: nn.Module, ref: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    ref.load_state_dict(fast.state_dict())  # strict: the state-dict keys are unchanged
    assert list(ref.state_dict()) == list(fast.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), ref.eval()(x), atol=FP32_ATOL, rtol=0)
    out_f, grads_f, bufs_f = _train_step_outputs(fast, x, y)
    out_r, grads_r, bufs_r = _train_step_outputs(ref, x, y)
    torch.testing.assert_close(out_f, out_r, atol=FP32_ATOL, rtol=0)
    assert grads_f.keys() == grads_r.keys() and bufs_f.keys() == bufs_r.keys()
    for k in grads_f:
        torch.testing.assert_close(grads_f[k], grads_r[k], atol=FP32_ATOL, rtol=1e-4, msg=f"gradient of {k}")
    for k in bufs_f:
        torch.testing.assert_close(bufs_f[k], bufs_r[k], atol=FP32_ATOL, rtol=1e-5, equal_nan=True,
                                   msg=f"buffer {k}")


@pytest.mark.parametrize("name,kwargs", list(REFERENCE_FORMS), ids=[n for n, _ in REFERENCE_FORMS])
def test_fast_form_computes_what_the_previous_form_computed(name, kwargs, batch):
    """fp32, atol 1e-5: eval logits, train-mode logits (same dropout draws), every gradient, BN statistics."""
    x, y = batch[0][:6], batch[1][:6]
    torch.manual_seed(0)
    fast = create_model(name, **dict(kwargs))
    _assert_same_computation(fast, REFERENCE_FORMS[(name, kwargs)](), x, y)


def test_the_reference_comparison_catches_a_changed_model(batch):
    """A model that differs from its reference (here: average instead of max pooling) fails the comparison."""
    x, y = batch
    wrong = _ref_cnn_simple()
    wrong[2] = nn.AvgPool2d(2)
    with pytest.raises(AssertionError):
        _assert_same_computation(create_model("cnn-simple"), wrong, x, y)


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_plain_copy_is_the_same_network_in_textbook_form(name, ready, batch):
    """``plain_copy`` (the plain loop's network in ``digitlab bench zoo``): no fast layers, no in-place ops,
    same state-dict keys, and the same outputs and gradients in float32."""
    from digitlab.models.ops import Float32Conv2d, MaxPool2x2, plain_copy

    x, y = batch[0][:6], batch[1][:6]
    fast = ready(name)
    plain = plain_copy(fast)
    assert plain is not fast
    assert not any(isinstance(m, (MaxPool2x2, Float32Conv2d)) for m in plain.modules())
    assert not any(getattr(m, "inplace", False) for m in plain.modules())
    if any(isinstance(m, MaxPool2x2) for m in fast.modules()):
        assert any(isinstance(m, nn.MaxPool2d) for m in plain.modules())
    _assert_same_computation(fast, plain, x, y)


def test_train_settings_are_recorded_per_model():
    from digitlab.models import TrainSettings, train_settings

    for name in ("cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini", "fast-cnn", "best-cnn"):
        assert train_settings(name).amp, name
    assert train_settings("resnet-mini") == TrainSettings(amp=True, channels_last=True)
    assert train_settings("mlp-bn").to_dict() == {"amp": True, "channels_last": False}  # flat input
    assert train_settings("logreg") == TrainSettings()  # no training step: the defaults, all off
    assert model_info("densenet-mini").train_settings is train_settings("densenet-mini")
    with pytest.raises(ConfigError):
        train_settings("no-such-model")


def test_cnn_simple_width_scales_the_filters_and_keeps_the_notebook_default():
    from digitlab.errors import ConfigError

    assert count_parameters(create_model("cnn-simple")) == count_parameters(create_model("cnn-simple", width=32))
    narrow = create_model("cnn-simple", width=16)
    assert narrow[0].out_channels == 16 and narrow[3].out_channels == 32 and narrow[-1].in_features == 32
    assert narrow(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ConfigError):
        create_model("cnn-simple", width=0)


def test_se_cnn_scales_the_global_average_with_the_same_result(batch):
    """SECNN.scale_after_average: GAP(x·w) as GAP(x)·w (w constant per map, the SE squeeze is GAP(x) itself):
    the same function up to float rounding (fp32: logits, gradients, BN statistics within 1e-5; bf16
    autocast: logits within bf16 rounding), and it takes the place of the head's GAP and Flatten."""
    from digitlab.models.ops import GlobalAvgPool2d

    x, y = batch[0][:6], batch[1][:6]
    torch.manual_seed(0)
    fused = create_model("se-cnn").eval()
    in_order = copy.deepcopy(fused)
    in_order.scale_after_average = False
    assert fused.scale_after_average
    _assert_same_computation(fused, in_order, x, y)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out_f, out_r = fused.eval()(x).float(), in_order.eval()(x).float()
    torch.testing.assert_close(out_f, out_r, atol=0.02 * out_r.abs().max().item(), rtol=0)
    calls: list[str] = []
    for model in (fused, in_order):
        gap = next(m for m in model.modules() if isinstance(m, GlobalAvgPool2d))
        gap.register_forward_hook(lambda *a: calls.append("gap"))
        model(x)
    assert calls == ["gap"]  # only the in-order model runs the head's GAP


@pytest.mark.parametrize("autocast", [False, True])
def test_se_cnn_scales_after_pooling_with_the_same_result(batch, autocast):
    """SECNN.scale_after_pool: pool(x)·w for pool(x·w) (w > 0, constant per map) is exact, in bf16 too;
    the textbook copy (nn.MaxPool2d) runs the layers in order."""
    from digitlab.models.ops import plain_copy

    x, y = batch[0][:6], batch[1][:6]
    torch.manual_seed(0)
    fused = create_model("se-cnn").eval()
    fused.scale_after_average = False  # this test is about the pooling (exact); the average is tested below
    in_order = copy.deepcopy(fused)
    in_order.scale_after_pool = False
    assert fused.scale_after_pool
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert torch.equal(fused(x), in_order(x))
    _assert_same_computation(fused, in_order, x, y)
    calls: list[str] = []
    plain = plain_copy(fused)
    for m in plain.modules():
        if type(m).__name__ == "SqueezeExcitation":
            m.forward_pooled = lambda *a, **k: calls.append("pooled")  # type: ignore[method-assign]
    plain(x)
    assert calls == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flatten_keeps_the_gradient_channels_last(dtype):
    """ops.Flatten: nn.Flatten's values and gradient values; a channels-last input gets its gradient
    channels-last (nn.Flatten hands back a plain NCHW view); plain_copy turns it into nn.Flatten."""
    from digitlab.models.ops import Flatten, plain_copy

    torch.manual_seed(0)
    x = torch.randn(5, 6, 3, 4).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(5, 72).to(dtype)
    grads: dict[str, torch.Tensor] = {}
    outs = {}
    for name, layer in (("fast", Flatten()), ("torch", nn.Flatten())):
        mid = x.clone().requires_grad_() * 1  # a non-leaf: what the layer before sees (a leaf's .grad is
        mid.register_hook(lambda g, name=name: grads.__setitem__(name, g))  # re-laid out by autograd)
        outs[name] = layer(mid)
        outs[name].backward(grad)
    assert torch.equal(outs["fast"], outs["torch"]) and torch.equal(grads["fast"], grads["torch"])
    assert grads["fast"].is_contiguous(memory_format=torch.channels_last) and not grads["fast"].is_contiguous()
    assert not grads["torch"].is_contiguous(memory_format=torch.channels_last)  # what the layer is for
    plain = plain_copy(nn.Sequential(Flatten()))
    assert type(plain[0]) is nn.Flatten
    assert torch.equal(Flatten(0, 1)(x), nn.Flatten(0, 1)(x))  # other dims: nn.Flatten's own path
