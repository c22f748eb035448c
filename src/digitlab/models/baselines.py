"""scikit-learn baselines of reference notebook 001, served as pure-torch modules.

``logreg`` (multinomial logistic regression) and ``random-forest`` are fitted by
scikit-learn in :meth:`fit_estimator` (``uses_gradient = False``: the training
engine calls that instead of running SGD). Everything prediction needs is then
copied into persistent buffers, so:

  * a checkpoint is plain safetensors (no pickled estimator);
  * ``forward`` runs in torch on any device, batched, with no scikit-learn;
  * the output agrees with the estimator's ``predict_proba`` (the forest's
    exactly, bit for bit, in float64; the logistic regression to float64 rounding).

Both take the standard model input (``N×1×28×28`` floats in [0, 1]) and fit on
exactly those values (``uint8 / 255`` in float32), as the notebook's
``X_train_flat`` did.

:func:`cross_validate_estimator` reproduces the notebook's stratified 5-fold CV.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from digitlab.errors import ConfigError, DataError
from digitlab.models.registry import create_model, model_info, register_model

NUM_PIXELS = 28 * 28
PROBA_FLOOR = 1e-6
"""Probabilities are clamped here before the log, so a forest's zero votes give finite logits."""


def _flat_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``N×28×28`` → float32 ``N×784`` in [0, 1], the same values the model's input holds."""
    return images_u8.reshape(images_u8.shape[0], -1).to("cpu", torch.float32).div_(255.0)


def _labels_np(labels: torch.Tensor, n: int, num_classes: int, who: str) -> np.ndarray:
    y = labels.to("cpu", torch.int64).reshape(-1).numpy()
    if y.shape[0] != n:
        raise DataError(f"{who}: {n} images but {y.shape[0]} labels")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{who}: labels must be in 0..{num_classes - 1}")
    return y


# --------------------------------------------------------------------------- logistic regression

class LogisticRegressionModel(nn.Module):
    """Multinomial logistic regression on the 784 raw [0, 1] pixels (scikit-learn, lbfgs).

    Buffers: ``weight`` (classes×784, float64), ``bias`` (classes, float64),
    ``fitted`` (bool). ``forward`` returns ``x·Wᵀ + b`` — the estimator's decision
    function, whose softmax *is* ``predict_proba`` (so these are proper logits; no
    clamping is needed). An unfitted model returns zeros (uniform probabilities).
    The weights are buffers, not parameters: nothing here is trained by SGD.
    """

    uses_gradient = False
    weight: torch.Tensor
    bias: torch.Tensor
    fitted: torch.Tensor

    def __init__(self, C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, seed: int = 0,
                 num_classes: int = 10) -> None:
        super().__init__()
        if C <= 0:
            raise ConfigError(f"logreg: C must be positive, got {C}")
        if max_iter < 1:
            raise ConfigError(f"logreg: max_iter must be at least 1, got {max_iter}")
        self.C, self.max_iter, self.tol, self.seed = float(C), int(max_iter), float(tol), int(seed)
        self.num_classes = num_classes
        self.register_buffer("weight", torch.zeros(num_classes, NUM_PIXELS, dtype=torch.float64))
        self.register_buffer("bias", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))
        self.fit_info_: dict[str, Any] = {}

    def fit_estimator(self, images_u8: torch.Tensor, labels: torch.Tensor) -> Any:
        """Fit scikit-learn's ``LogisticRegression`` and copy its coefficients into the buffers.

        Returns the fitted estimator. ``fit_info_`` records iterations, convergence
        and wall time (a convergence warning is recorded there rather than printed).
        """
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        # float64 so lbfgs runs in double precision; the values are the float32 model inputs
        x = _flat_float(images_u8).to(torch.float64).numpy()
        y = _labels_np(labels, x.shape[0], self.num_classes, "logreg")
        missing = sorted(set(range(self.num_classes)) - set(np.unique(y).tolist()))
        if missing:
            raise DataError(f"logreg: training labels lack classes {missing}; every class is needed")
        est = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol, random_state=self.seed)
        start = time.perf_counter()
        # one BLAS thread: lbfgs does thin (N×784)·(784×10) products, and on a busy machine
        # multi-threaded OpenBLAS spin-waits — we measured a 12× slower fit with 2 threads
        with warnings.catch_warnings(record=True) as caught, threadpool_limits(limits=1, user_api="blas"):
            warnings.simplefilter("always", ConvergenceWarning)
            est.fit(x, y)
        seconds = time.perf_counter() - start
        n_iter = int(np.max(est.n_iter_))
        self.fit_info_ = {"n_iter": n_iter,
                          "converged": not any(issubclass(w.category, ConvergenceWarning) for w in caught),
                          "fit_seconds": seconds, "n_samples": int(x.shape[0])}
        with torch.no_grad():
            self.weight.copy_(torch.from_numpy(np.asarray(est.coef_, dtype=np.float64)))
            self.bias.copy_(torch.from_numpy(np.asarray(est.intercept_, dtype=np.float64)))
            self.fitted.fill_(True)
        return est

    def decision_function(self, x: torch.Tensor) -> torch.Tensor:
        """float64 ``N×classes`` scores, as the estimator's ``decision_function``."""
        flat = x.reshape(x.shape[0], -1).to(torch.float32).to(torch.float64)
        return flat @ self.weight.T + self.bias

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """float64 class probabilities, as the estimator's ``predict_proba``."""
        return torch.softmax(self.decision_function(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decision_function(x).to(torch.float32)

    def parameter_count(self) -> int:
        """Stored coefficients (classes·784 + classes = 7,850 for MNIST), fitted or not."""
        return self.weight.numel() + self.bias.numel()


@register_model("logreg", family="baseline", input_kind="flat", recipe="logreg", uses_gradient=False,
                reference="notebook 001: 92.48% (printed constant; its code runs 5-fold CV); 7,850 params")
def logreg(C: float = 1.0, max_iter: int = 1000, tol: float = 1e-4, seed: int = 0,
           num_classes: int = 10) -> nn.Module:
    """Multinomial logistic regression baseline (scikit-learn lbfgs) with a torch forward."""
    return LogisticRegressionModel(C=C, max_iter=max_iter, tol=tol, seed=seed, num_classes=num_classes)


# --------------------------------------------------------------------------- random forest

def _round_down_float32(threshold: np.ndarray) -> np.ndarray:
    """Largest float32 ``≤`` each float64 threshold: for float32 ``v``, ``v ≤ t ⇔ v ≤ that``."""
    t32 = threshold.astype(np.float32)
    above = t32.astype(np.float64) > threshold
    t32[above] = np.nextafter(t32[above], np.float32(-np.inf))
    return t32


def _sklearn_normalises_tree_values() -> bool:
    # scikit-learn >= 1.4 stores class fractions in tree_.value and predict_proba returns
    # them as is; older versions stored (weighted) counts and normalised in predict_proba
    import sklearn

    major, minor = (int(p) for p in sklearn.__version__.split(".")[:2])
    return (major, minor) < (1, 4)


class RandomForestModel(nn.Module):
    """scikit-learn ``RandomForestClassifier`` on raw [0, 1] pixels, predicted by a torch tree walk.

    After :meth:`fit_estimator` the forest lives in flat buffers, concatenated over trees:

    * internal nodes (``I`` of them): ``feature`` (int32 pixel index),
      ``threshold`` (float32, see below), ``left`` / ``right`` (int32 child pointers);
    * leaves (``L``): ``leaf_proba`` (float64 ``L×classes``, the tree's class
      fractions, exactly what its ``predict_proba`` returns);
    * per tree: ``roots`` (int64 pointer), ``node_offsets`` / ``leaf_offsets``
      (int64 ``T+1``: tree ``t`` owns internal nodes ``node_offsets[t]:node_offsets[t+1]``);
    * ``depth`` (int64 scalar): the deepest path, i.e. the number of walk steps.

    A pointer ``p ≥ 0`` is an internal node; ``p < 0`` is leaf ``-p-1``.
    :meth:`leaf_indices` walks all (sample, tree) pairs at once, one tree level
    per step, dropping pairs that reached a leaf (at most ``depth`` steps, no
    per-sample loop). scikit-learn compares ``float32(x) ≤ threshold`` with a
    float64 threshold; for a float32 ``x`` that is the same as comparing against
    the threshold rounded *down* to float32, which is what we store — exact, and
    the walk stays in float32. Per-tree probabilities are summed in tree order,
    then divided by ``T``: the same float64 operations as ``predict_proba`` with
    ``n_jobs=1``, so the results are bit-identical. ``forward`` returns
    ``log(max(p, 1e-6))``.
    """

    uses_gradient = False
    roots: torch.Tensor
    feature: torch.Tensor
    threshold: torch.Tensor
    left: torch.Tensor
    right: torch.Tensor
    leaf_proba: torch.Tensor
    node_offsets: torch.Tensor
    leaf_offsets: torch.Tensor
    depth: torch.Tensor

    def __init__(self, n_estimators: int = 100, max_depth: int | None = None,
                 max_features: str | int | float = "sqrt", min_samples_leaf: int = 1, seed: int = 0,
                 n_jobs: int = -1, num_classes: int = 10) -> None:
        super().__init__()
        if n_estimators < 1:
            raise ConfigError(f"random-forest: n_estimators must be at least 1, got {n_estimators}")
        if max_depth is not None and max_depth < 1:
            raise ConfigError(f"random-forest: max_depth must be None or at least 1, got {max_depth}")
        self.n_estimators, self.max_depth = int(n_estimators), max_depth
        self.max_features, self.min_samples_leaf = max_features, int(min_samples_leaf)
        self.seed, self.n_jobs, self.num_classes = int(seed), int(n_jobs), num_classes
        i64, i32, f64 = torch.int64, torch.int32, torch.float64
        self.register_buffer("roots", torch.zeros(0, dtype=i64))
        self.register_buffer("feature", torch.zeros(0, dtype=i32))
        self.register_buffer("threshold", torch.zeros(0, dtype=torch.float32))
        self.register_buffer("left", torch.zeros(0, dtype=i32))
        self.register_buffer("right", torch.zeros(0, dtype=i32))
        self.register_buffer("leaf_proba", torch.zeros(0, num_classes, dtype=f64))
        self.register_buffer("node_offsets", torch.zeros(1, dtype=i64))
        self.register_buffer("leaf_offsets", torch.zeros(1, dtype=i64))
        self.register_buffer("depth", torch.zeros((), dtype=i64))
        # walk length as a Python int, refreshed on fit/load, so forward has no data-dependent int()
        self._depth = 0
        self.register_load_state_dict_post_hook(RandomForestModel._after_load)
        self.fit_info_: dict[str, Any] = {}

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: Any) -> None:
        if isinstance(module, RandomForestModel):
            module._depth = int(module.depth)

    @property
    def is_fitted(self) -> bool:
        return self.roots.numel() > 0

    def fit_estimator(self, images_u8: torch.Tensor, labels: torch.Tensor) -> Any:
        """Fit scikit-learn's ``RandomForestClassifier`` and copy its trees into the buffers.

        Returns the fitted estimator; ``fit_info_`` records the wall time and the forest size.
        """
        from sklearn.ensemble import RandomForestClassifier

        x = _flat_float(images_u8).numpy()
        y = _labels_np(labels, x.shape[0], self.num_classes, "random-forest")
        est = RandomForestClassifier(
            n_estimators=self.n_estimators, max_depth=self.max_depth, max_features=self.max_features,
            min_samples_leaf=self.min_samples_leaf, random_state=self.seed, n_jobs=self.n_jobs,
        )
        start = time.perf_counter()
        est.fit(x, y)
        seconds = time.perf_counter() - start
        self.load_estimator(est)
        self.fit_info_ = {"fit_seconds": seconds, "n_samples": int(x.shape[0]),
                          "internal_nodes": int(self.feature.numel()),
                          "leaves": int(self.leaf_proba.shape[0]), "depth": self._depth}
        return est

    def load_estimator(self, est: Any) -> None:
        """Copy a fitted ``RandomForestClassifier``'s trees into the flat buffers."""
        normalise = _sklearn_normalises_tree_values()
        classes = np.asarray(est.classes_, dtype=np.int64)
        roots, feats, thrs, lefts, rights, probas = [], [], [], [], [], []
        node_off, leaf_off = [0], [0]
        for tree in est.estimators_:
            t = tree.tree_
            is_leaf = t.children_left == -1
            internal, leaves = np.flatnonzero(~is_leaf), np.flatnonzero(is_leaf)
            rank = np.empty(t.node_count, dtype=np.int64)
            rank[internal] = np.arange(internal.size) + node_off[-1]
            rank[leaves] = -(np.arange(leaves.size) + leaf_off[-1]) - 1  # leaf pointer encoding
            roots.append(rank[0])
            feats.append(t.feature[internal])
            thrs.append(t.threshold[internal])
            lefts.append(rank[t.children_left[internal]])
            rights.append(rank[t.children_right[internal]])
            value = np.asarray(t.value[leaves, 0, :], dtype=np.float64)
            if normalise:
                norm = value.sum(axis=1, keepdims=True)
                norm[norm == 0.0] = 1.0
                value = value / norm
            proba = np.zeros((leaves.size, self.num_classes), dtype=np.float64)
            proba[:, classes] = value
            probas.append(proba)
            node_off.append(node_off[-1] + internal.size)
            leaf_off.append(leaf_off[-1] + leaves.size)
        depth = max(int(tree.tree_.max_depth) for tree in est.estimators_)
        if node_off[-1] >= 2**31 or leaf_off[-1] >= 2**31:
            raise ConfigError("random-forest: too many nodes for int32 pointers")
        cat = np.concatenate
        state = {
            "roots": torch.from_numpy(np.asarray(roots, dtype=np.int64)),
            "feature": torch.from_numpy(cat(feats).astype(np.int32)),
            "threshold": torch.from_numpy(_round_down_float32(cat(thrs))),
            "left": torch.from_numpy(cat(lefts).astype(np.int32)),
            "right": torch.from_numpy(cat(rights).astype(np.int32)),
            "leaf_proba": torch.from_numpy(cat(probas)),
            "node_offsets": torch.tensor(node_off, dtype=torch.int64),
            "leaf_offsets": torch.tensor(leaf_off, dtype=torch.int64),
            "depth": torch.tensor(depth, dtype=torch.int64),
        }
        device = self.depth.device
        for name, tensor in state.items():
            setattr(self, name, tensor.to(device))  # re-registers the buffer with its new shape
        self._depth = depth

    def leaf_indices(self, x: torch.Tensor) -> torch.Tensor:
        """int64 ``N×T``: the global leaf each sample reaches in each tree."""
        if not self.is_fitted:
            raise RuntimeError("random-forest is not fitted: call fit_estimator(images_u8, labels) first")
        n, trees = x.shape[0], self.roots.numel()
        flat = x.reshape(n, -1).to(torch.float32)  # scikit-learn predicts on float32 inputs
        width = flat.shape[1]
        flat = flat.reshape(-1)
        ptr = self.roots.repeat(n)  # pair (sample s, tree t) at s·T + t
        active = torch.nonzero(ptr >= 0).squeeze(1)
        base = active // trees * width  # offset of the pair's sample in `flat`
        for _ in range(self._depth):
            if active.numel() == 0:
                break
            node = ptr[active]
            go_left = flat[base + self.feature[node]] <= self.threshold[node]
            nxt = torch.where(go_left, self.left[node], self.right[node]).long()
            ptr[active] = nxt
            inner = nxt >= 0  # pairs still at an internal node take another step
            active, base = active[inner], base[inner]
        return (-ptr - 1).view(n, trees)

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """float64 class probabilities, bit-identical to the estimator's ``predict_proba``."""
        leaf = self.leaf_indices(x)
        proba = torch.zeros(x.shape[0], self.num_classes, dtype=torch.float64, device=leaf.device)
        for t in range(leaf.shape[1]):  # sequential sum over trees: scikit-learn's order
            proba += self.leaf_proba[leaf[:, t]]
        return proba / leaf.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict_proba(x).clamp_min(PROBA_FLOOR).log().to(torch.float32)

    def parameter_count(self) -> int | None:
        """Stored values of the fitted forest (node and leaf arrays); ``None`` before fitting."""
        if not self.is_fitted:
            return None
        return sum(b.numel() for b in (self.roots, self.feature, self.threshold, self.left, self.right,
                                       self.leaf_proba))


@register_model("random-forest", family="baseline", input_kind="flat", recipe="random-forest",
                uses_gradient=False,
                reference="notebook 001: 97.21% (printed constant; its code runs 5-fold CV), "
                          "100 trees")
def random_forest(n_estimators: int = 100, max_depth: int | None = None,
                  max_features: str | int | float = "sqrt", min_samples_leaf: int = 1, seed: int = 0,
                  n_jobs: int = -1, num_classes: int = 10) -> nn.Module:
    """Random-forest baseline (scikit-learn) whose trees are walked in torch."""
    return RandomForestModel(n_estimators=n_estimators, max_depth=max_depth, max_features=max_features,
                             min_samples_leaf=min_samples_leaf, seed=seed, n_jobs=n_jobs,
                             num_classes=num_classes)


# --------------------------------------------------------------------------- cross-validation

@runtime_checkable
class FittedEstimator(Protocol):
    """A model fitted in closed form (``uses_gradient = False``) rather than by SGD."""

    def fit_estimator(self, images_u8: torch.Tensor, labels: torch.Tensor) -> Any: ...


def cross_validate_estimator(name: str, images_u8: torch.Tensor, labels: torch.Tensor, folds: int = 5,
                             seed: int = 0, progress: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Stratified ``folds``-fold cross-validation of an estimator model (``uses_gradient=False``).

    As notebook 001: ``StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)``;
    each fold builds ``create_model(name, **kwargs)``, fits it on the other folds
    and scores accuracy on the held-out fold through the torch ``forward``.
    ``std`` is the population standard deviation (``ddof=0``), like
    ``cross_val_score(...).std()`` in the notebook.

    Returns ``{"model", "kwargs", "folds", "seed", "n_samples", "fold_accuracies",
    "mean", "std", "fit_seconds"}``.
    """
    from sklearn.model_selection import StratifiedKFold

    from digitlab.models.forward import predict_logits

    info = model_info(name)
    if info.uses_gradient:
        raise ConfigError(f"cross_validate_estimator: {name!r} is trained by gradient descent, "
                          "not a fitted estimator (use e.g. 'logreg' or 'random-forest')")
    if folds < 2:
        raise ConfigError(f"cross_validate_estimator: folds must be at least 2, got {folds}")
    images_u8 = images_u8.cpu()
    y = labels.to("cpu", torch.int64).reshape(-1)
    if images_u8.shape[0] != y.shape[0]:
        raise DataError(f"cross_validate_estimator: {images_u8.shape[0]} images but {y.shape[0]} labels")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    try:
        splits = list(splitter.split(np.zeros(y.shape[0]), y.numpy()))
    except ValueError as exc:
        raise DataError(f"cross_validate_estimator: cannot make {folds} stratified folds: {exc}") from None
    if progress:
        from tqdm import tqdm

        splits = tqdm(splits, desc=f"CV {name}", unit="fold")
    accuracies, seconds = [], []
    for train_idx, test_idx in splits:
        tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
        model = create_model(name, **kwargs)
        if not isinstance(model, FittedEstimator):
            raise ConfigError(f"cross_validate_estimator: {name!r} has no fit_estimator()")
        start = time.perf_counter()
        model.fit_estimator(images_u8[tr], y[tr])
        seconds.append(time.perf_counter() - start)
        pred = predict_logits(model, images_u8[te], batch_size=8192).argmax(1)
        accuracies.append(float((pred == y[te]).double().mean()))
    acc = np.asarray(accuracies)
    return {"model": name, "kwargs": dict(kwargs), "folds": folds, "seed": seed, "n_samples": int(y.shape[0]),
            "fold_accuracies": accuracies, "mean": float(acc.mean()), "std": float(acc.std()),
            "fit_seconds": seconds}
