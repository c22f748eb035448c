"""Answer or abstain: is a preprocessed picture a digit at all?

A digit classifier answers with one of its ten classes whatever it is shown. For a picture
that holds no digit (a letter, a scribble, a texture) the right answer is none, so
:class:`~digitlab.inference.predictor.Predictor` abstains with ``rejected: "not-a-digit"`` when
the 28×28 image the model sees is unlike the digits of the classes the model finds most likely
and not read with high calibrated confidence. The evidence:

* **shape distance** — how far the preprocessed image lies from the MNIST training digits of
  the classes the model finds most likely: a per-class Gaussian in pixel space (mean + the top
  :data:`SHAPE_COMPONENTS` principal components, an isotropic residual), the Mahalanobis
  distance per pixel (:meth:`ShapeModel.distance`), the smaller of the distances to the two most
  probable classes (a digit the model hesitates over, a 4 or a 9, is judged against both).
  Stored in ``pretrained/mnist-shape.safetensors`` (:func:`fit_shape_model`).
* **feature distance** (the shipped model only) — how far the model's own penultimate-layer
  features (the 1,152 inputs of its last linear layer) lie from those of the training digits:
  class-conditional Gaussians with one shared covariance (the Mahalanobis score of Lee et al.
  2018), the top :data:`FEATURE_COMPONENTS` axes of the within-class covariance plus one isotropic
  variance for the rest, eigenvalues shrunk by :data:`FEATURE_SHRINK` × their mean, the distance to
  the nearest class mean (:meth:`FeatureModel.distance`). Stored, with the rule's constants, in
  ``pretrained/mnist-default-features.safetensors`` (:class:`FeatureModel`, tied to the shipped
  weights by their SHA-256). The ONNX copy of the shipped model has a second output, ``features``
  (:func:`add_features_output`), so both backends read the same evidence.
* **calibrated confidence** — the log-odds ``log(p / (1 - p))`` of the top class's
  probability after temperature scaling (so it means the same for every calibrated model).
* **holes** — ink enclosing :data:`MAX_HOLES` + 1 or more separate regions
  (:func:`enclosed_regions`) is refused whatever the scores: a digit closes at most two (an 8),
  a loopy one three; a scribble that crosses itself closes many.
* **learned detector** (the shipped model only) — a small digit-vs-not-a-digit discriminator trained
  by outlier exposure (Hendrycks et al. 2019), :class:`Detector`: one hidden layer of 16 ReLU units
  over the 1,152 penultimate-layer features and the three scores above (log shape distance, log
  feature distance, log-odds), each standardised; its output is the log-odds that the picture holds
  no digit. Plain numpy at predict time; its weights (≈75 KB) are stored in the same
  ``pretrained/mnist-default-features.safetensors``, tied to the same weights' SHA-256.

The shipped model: refused when ``log(shape distance) + 2.4 · log(feature distance) - 0.1 · log-odds >
3.241`` or when the detector's output exceeds 9.698, or for the holes (:class:`FeatureRule`; the two
margins are combined as their maximum by :func:`not_a_digit_scores`). Other digit models (a run
directory, an ONNX file without the ``features`` output): the pixel-space rule
``shape distance - CONFIDENCE_WEIGHT · (log-odds - CONFIDENCE_PIVOT) > REJECT_THRESHOLD``.

Everything is reproduced by ``scripts/fit_reject.py`` (seeded; its output is
``results/fit_reject.json``, where every figure below comes from):

* the shape and feature statistics come from the MNIST training split only,
  ``make_splits(mnist, 0.1, 0).train`` (54,001 images; the shipped model trained on all 60,000
  training images, never on the test set);
* the detector was trained on pictures of the script's own, none from the measured generator:
  12,000 digits of that same training split rendered by the digit renderers of
  :mod:`digitlab.data.pictures` (``user_picture``, ``photo_picture``, ``stroke_picture`` thin and
  thick, ``small_corner_picture``), and 12,000 non-digits — letters (the upper-case
  :data:`digitlab.data.pictures.LETTERS`, the lower-case letters that do not look like digits,
  ``acdefhkmnprtuvwxy``, and the marks ``#%@*+=<>``) drawn in 23 system TrueType fonts (DejaVu Sans,
  Serif, Mono, Condensed, ExtraLight; Liberation Sans, Narrow, Serif, Mono; regular, bold, italic),
  never in Pillow's built-in font that the measured letters use, at random sizes, places, slants and
  stroke weights; scribbles of random cubic Bézier strokes (the measured ones are straight
  polylines); textures (hatching, cross-hatching, dots, rings, waves, blobs); Fashion-MNIST training
  images — half drawn straight at high resolution on white, half in MNIST form through the same
  renderers as the digits. Every picture went through :func:`~digitlab.inference.preprocess.to_mnist`
  and the shipped model, as ``predict`` sees it.
* the rule was chosen on validation pictures made by
  :func:`digitlab.data.pictures.make_picture_sets` from MNIST **test** digits (which the model
  never trained on) with seeds 2, 5, 6, 7, 8, 9 — 300 per set and seed: 9,000 digit pictures
  (``user``, ``photo``, ``thin``, ``thick``, ``small-corner``) and 1,799 ``not-a-digit`` — never
  seed 0 (the sets ``scripts/measure_pictures.py`` reports) nor 11 (the tests'). The distance
  score's weights (grid: feature weight 0–2.5, confidence weight 0–0.8), then the two thresholds,
  were those refusing the most non-digits while false rejections stay at most 0.4% on the
  user-style digits and on all digits together and at most 1% on every digit set.
* On those pictures it refuses 0.40% of the digits (user 0.39%, photo 0.28%, thin 0.33%, thick
  0.78%, small-corner 0.22%) and 99.3% of the non-digits (letters 100%, scribbles 98.1%, textures
  100%). On held-out validation pictures (seeds 10, 12, 13, 14, 15; 7,499 digits, 1,499 non-digits)
  it refuses 0.37% of the digits (user 0.33%, photo 0.33%, thin 0.47%, thick 0.27%, small-corner
  0.47%) and 99.5% of the non-digits (letters 100%, scribbles 98.4%, textures 100%). The distance
  score alone at the same budget: 84.9% / 85.1% of the non-digits (letters 58% / 60%); the
  pixel-space rule alone: 88.8% / 90.2% of the non-digits, with 0.79% / 0.67% of the digits refused.
* What it does not refuse: about 1 scribble in 60 — on the 11 validation seeds, 20 of 1,119: zig-zag
  polylines that cross into an 8 or a 4 (read as 8 ×9, 4 ×5, and 9, 6, 5 ×2 each); all validation letters were
  refused, but they are typeset sans-serif capitals only: handwritten letters were not measured and a
  handwritten letter shaped like a digit (an O, an S, a Z) will be read as one. The distance rules
  alone refused none of the typeset A (read as 4), B (8), D (0), Y (4) and Z (2).

The pixel-space rule's constants (weight 0.2, pivot 12, threshold 3.4) were chosen earlier the same
way on seeds 2, 5 and 6 only.

The rule is for digit datasets only; models of other datasets never reject a picture as
not-a-digit, and a digit dataset without shape statistics uses no rule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["CONFIDENCE_PIVOT", "CONFIDENCE_WEIGHT", "FEATURES_OUTPUT", "FEATURE_COMPONENTS", "FEATURE_SHRINK",
           "MAX_HOLES", "REJECT_THRESHOLD", "SHAPE_COMPONENTS", "Detector", "FeatureModel", "FeatureRule",
           "ShapeModel", "add_features_output", "detector_inputs", "enclosed_regions", "feature_model_for",
           "feature_model_path", "fit_feature_model", "fit_shape_model", "not_a_digit", "not_a_digit_scores",
           "shape_model_for", "shape_model_path"]

SHAPE_COMPONENTS = 20
"""Principal components per class of the pixel-space shape model."""
CONFIDENCE_WEIGHT = 0.2
"""How much one unit of calibrated log-odds offsets one unit of shape distance."""
CONFIDENCE_PIVOT = 12.0
"""Log-odds at which confidence neither adds nor removes (p ≈ 0.999994)."""
REJECT_THRESHOLD = 3.4
"""A picture whose score exceeds this is answered ``rejected: "not-a-digit"`` (see the module docstring)."""
MAX_HOLES = 3
"""Ink enclosing more separate regions than this (28×28, ink > 127) is not a digit."""
MAX_LOG_ODDS = math.log((1 - 1e-7) / 1e-7)
"""Confidence is clipped at p = 1 - 1e-7 (float32 probabilities round to 1 earlier)."""
FEATURE_COMPONENTS = 64
"""Principal axes of the shared within-class covariance of the feature model (the rest: one isotropic variance)."""
FEATURE_SHRINK = 0.01
"""Shrinkage of the feature covariance: this × the mean eigenvalue is added to every eigenvalue."""
FEATURES_OUTPUT = "features"
"""Name of the ONNX graph output holding the penultimate-layer features (:func:`add_features_output`)."""

PRETRAINED = Path(__file__).resolve().parent.parent / "pretrained"


def feature_model_path(dataset: str, model: str = "default") -> Path:
    """Where the feature statistics of the shipped ``model`` of ``dataset`` are shipped
    (``pretrained/DATASET-MODEL-features.safetensors``)."""
    return PRETRAINED / f"{dataset}-{model}-features.safetensors"


def shape_model_path(dataset: str) -> Path:
    """Where the shape statistics of ``dataset`` are shipped (``pretrained/DATASET-shape.safetensors``)."""
    return PRETRAINED / f"{dataset}-shape.safetensors"


@dataclass(frozen=True)
class ShapeModel:
    """Per-class Gaussian over 28×28 pixels in [0, 1]: mean, principal axes, their variances,
    and the mean variance left outside them."""

    means: np.ndarray
    """``K×784`` float32."""
    components: np.ndarray
    """``K×C×784`` float32, orthonormal rows per class."""
    variances: np.ndarray
    """``K×C`` float32: variance along each component."""
    residual_variance: np.ndarray
    """``K`` float32: mean variance per pixel outside the components."""

    def distance(self, images: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Mahalanobis distance² per pixel of each ``N×28×28`` uint8 image from its class's Gaussian."""
        x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
        c = np.asarray(classes, dtype=np.int64)
        d = x - self.means[c]
        p = np.einsum("nkp,np->nk", self.components[c], d)
        residual = np.maximum((d * d).sum(axis=1) - (p * p).sum(axis=1), 0.0)
        inside = (p * p / self.variances[c]).sum(axis=1)
        return ((inside + residual / self.residual_variance[c]) / x.shape[1]).astype(np.float64)

    def save(self, path: str | Path) -> None:
        """Write as safetensors (components stored as float16: a third of the size, same scores to 1e-3)."""
        from safetensors.numpy import save_file

        from digitlab.utils import atomic_path

        arrays: dict[str, np.ndarray] = {
            "means": self.means.astype(np.float32), "components": self.components.astype(np.float16),
            "variances": self.variances.astype(np.float32),
            "residual_variance": self.residual_variance.astype(np.float32)}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> ShapeModel:
        from safetensors.numpy import load_file

        z = load_file(str(path))
        return cls(means=z["means"].astype(np.float32), components=z["components"].astype(np.float32),
                   variances=z["variances"].astype(np.float32),
                   residual_variance=z["residual_variance"].astype(np.float32))


def fit_shape_model(images: np.ndarray, labels: np.ndarray, components: int = SHAPE_COMPONENTS) -> ShapeModel:
    """Fit the per-class pixel Gaussians on ``N×28×28`` uint8 images and their labels."""
    x = images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)
    y = np.asarray(labels, dtype=np.int64)
    k = int(y.max()) + 1
    means, comps, vars_, resid = [], [], [], []
    for c in range(k):
        xc = x[y == c]
        mu = xc.mean(axis=0)
        _, s, vt = np.linalg.svd(xc - mu, full_matrices=False)
        var = (s.astype(np.float64) ** 2) / max(1, xc.shape[0] - 1)
        means.append(mu)
        comps.append(vt[:components])
        vars_.append(var[:components])
        # variance outside the kept axes, spread over every remaining pixel direction
        resid.append(var[components:].sum() / (x.shape[1] - components))
    return ShapeModel(np.stack(means).astype(np.float32), np.stack(comps).astype(np.float32),
                      np.stack(vars_).astype(np.float32), np.asarray(resid, np.float32))


@functools.lru_cache(maxsize=4)
def shape_model_for(dataset: str) -> ShapeModel | None:
    """The shipped shape statistics of ``dataset``, or ``None`` when there are none."""
    path = shape_model_path(dataset)
    return ShapeModel.load(path) if path.is_file() else None


@dataclass(frozen=True)
class FeatureRule:
    """The combined rule of a :class:`FeatureModel`: ``score = log(shape distance) + feature_weight ·
    log(feature distance) - confidence_weight · log-odds``; rejected when ``score > threshold``, or when
    the model's :class:`Detector` scores above ``detector_threshold`` (infinite: no detector)."""

    feature_weight: float
    confidence_weight: float
    threshold: float
    detector_threshold: float = math.inf


@dataclass(frozen=True)
class Detector:
    """A learned digit-vs-not-a-digit discriminator (outlier exposure, Hendrycks et al. 2019): a one-hidden-layer
    ReLU network over the penultimate-layer features and three scores (log shape distance, log feature
    distance, calibrated log-odds), each standardised; its output is the log-odds that the picture holds no
    digit. Plain numpy at inference (no torch)."""

    mean: np.ndarray
    """``D+3`` float32: the inputs' training means."""
    scale: np.ndarray
    """``D+3`` float32: the inputs' training standard deviations."""
    w1: np.ndarray
    """``(D+3)×H`` float32."""
    b1: np.ndarray
    """``H`` float32."""
    w2: np.ndarray
    """``H`` float32."""
    b2: float

    ARRAYS = ("mean", "scale", "w1", "b1", "w2")

    def score(self, features: np.ndarray, shape_distance: np.ndarray, feature_distance: np.ndarray,
              log_odds: np.ndarray) -> np.ndarray:
        """Not-a-digit log-odds of each picture from its ``N×D`` features and its three ``N`` scores."""
        x = detector_inputs(features, shape_distance, feature_distance, log_odds)
        h = np.maximum(((x - self.mean) / self.scale) @ self.w1 + self.b1, 0.0)
        return np.asarray(h @ self.w2 + self.b2, dtype=np.float64)


def detector_inputs(features: np.ndarray, shape_distance: np.ndarray, feature_distance: np.ndarray,
                    log_odds: np.ndarray) -> np.ndarray:
    """The ``N×(D+3)`` float32 input of a :class:`Detector`."""
    f = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    extra = np.stack([np.log(np.maximum(shape_distance, 1e-12)), np.log(np.maximum(feature_distance, 1e-12)),
                      np.asarray(log_odds, dtype=np.float64)], axis=1).astype(np.float32)
    return np.concatenate([f, extra], axis=1)


@dataclass(frozen=True)
class FeatureModel:
    """Class-conditional Gaussians with one shared covariance over a model's penultimate-layer features
    (Lee et al. 2018): class means, the top principal axes of the within-class covariance with their
    (shrunk) variances, one isotropic variance for the rest; plus the rule that uses the distance and
    the SHA-256 of the weights whose features these are (the statistics mean nothing for other weights)."""

    means: np.ndarray
    """``K×D`` float32 class means."""
    axes: np.ndarray
    """``D×C`` float32, orthonormal columns."""
    variances: np.ndarray
    """``C`` float32: (shrunk) variance along each axis."""
    residual_variance: float
    """Mean (shrunk) variance of the directions outside the axes."""
    weights_sha256: str
    """The weights these statistics were computed with (``weights_sha256`` of the checkpoint metadata)."""
    rule: FeatureRule
    info: dict[str, str] = field(default_factory=dict)
    """Provenance (what data, which seeds, validation figures) stored beside the arrays."""
    detector: Detector | None = None
    """The learned discriminator the rule also reads (``None``: the distance rule alone)."""

    def __post_init__(self) -> None:
        means = self.means.astype(np.float64)
        object.__setattr__(self, "_means", means)
        object.__setattr__(self, "_axes", self.axes.astype(np.float64))
        object.__setattr__(self, "_mean_proj", means @ self.axes.astype(np.float64))
        object.__setattr__(self, "_mean_sq", (means * means).sum(axis=1))

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Squared Mahalanobis distance (shared covariance) of each ``N×D`` feature vector to the nearest
        class mean, per dimension."""
        f = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
        sq = (f * f).sum(axis=1)[:, None] - 2.0 * (f @ self._means.T) + self._mean_sq[None]  # type: ignore[attr-defined]
        p = (f @ self._axes)[:, None, :] - self._mean_proj[None]  # type: ignore[attr-defined]
        p2 = p * p
        inside = (p2 / self.variances.astype(np.float64)).sum(axis=2)
        residual = np.maximum(sq - p2.sum(axis=2), 0.0) / self.residual_variance
        return np.asarray((inside + residual).min(axis=1) / f.shape[1], dtype=np.float64)

    def save(self, path: str | Path) -> None:
        """Write as safetensors; the rule, hash and provenance go into its string metadata."""
        from safetensors.numpy import save_file

        from digitlab.utils import atomic_path

        arrays: dict[str, np.ndarray] = {"means": self.means.astype(np.float32),
                                         "axes": self.axes.astype(np.float32),
                                         "variances": self.variances.astype(np.float32)}
        meta = {**self.info, "residual_variance": repr(float(self.residual_variance)),
                "weights_sha256": self.weights_sha256,
                "feature_weight": repr(self.rule.feature_weight),
                "confidence_weight": repr(self.rule.confidence_weight), "threshold": repr(self.rule.threshold),
                "detector_threshold": repr(self.rule.detector_threshold)}
        if self.detector is not None:
            arrays.update({f"detector_{k}": np.asarray(getattr(self.detector, k), np.float32)
                           for k in Detector.ARRAYS})
            meta["detector_b2"] = repr(float(self.detector.b2))
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> FeatureModel:
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            arrays = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        rule = FeatureRule(float(meta.pop("feature_weight")), float(meta.pop("confidence_weight")),
                           float(meta.pop("threshold")), float(meta.pop("detector_threshold", "inf")))
        detector = None
        if "detector_b2" in meta:
            detector = Detector(**{k: arrays[f"detector_{k}"].astype(np.float32) for k in Detector.ARRAYS},
                                b2=float(meta.pop("detector_b2")))
        return cls(means=arrays["means"].astype(np.float32), axes=arrays["axes"].astype(np.float32),
                   variances=arrays["variances"].astype(np.float32),
                   residual_variance=float(meta.pop("residual_variance")),
                   weights_sha256=meta.pop("weights_sha256"), rule=rule, info=meta, detector=detector)


def fit_feature_model(features: np.ndarray, labels: np.ndarray, weights_sha256: str, rule: FeatureRule,
                      components: int = FEATURE_COMPONENTS, shrink: float = FEATURE_SHRINK,
                      info: dict[str, str] | None = None, detector: Detector | None = None) -> FeatureModel:
    """Fit the class means and the shared within-class covariance on ``N×D`` features and their labels."""
    f = np.asarray(features, dtype=np.float64).reshape(features.shape[0], -1)
    y = np.asarray(labels, dtype=np.int64)
    k = int(y.max()) + 1
    means = np.stack([f[y == c].mean(axis=0) for c in range(k)])
    centred = f - means[y]
    cov = centred.T @ centred / f.shape[0]
    eigvals, eigvecs = np.linalg.eigh(cov)  # ascending
    eigvals = np.maximum(eigvals, 0.0) + shrink * float(eigvals.mean())
    top = slice(eigvals.size - components, eigvals.size)
    rest = eigvals[:eigvals.size - components]
    return FeatureModel(means=means.astype(np.float32), axes=eigvecs[:, top][:, ::-1].astype(np.float32),
                        variances=eigvals[top][::-1].astype(np.float32),
                        residual_variance=float(rest.mean()) if rest.size else 1.0,
                        weights_sha256=weights_sha256, rule=rule, info=dict(info or {}), detector=detector)


@functools.lru_cache(maxsize=4)
def _load_feature_model(path: str) -> FeatureModel:
    return FeatureModel.load(path)


def feature_model_for(dataset: str, weights_sha256: str | None) -> FeatureModel | None:
    """The shipped feature statistics of ``dataset``'s shipped model when ``weights_sha256`` names its
    weights; ``None`` otherwise (another model: the pixel-space rule alone is used)."""
    path = feature_model_path(dataset)
    if not weights_sha256 or not path.is_file():
        return None
    fm = _load_feature_model(str(path))
    return fm if fm.weights_sha256 == weights_sha256 else None


def _log_odds(probs: np.ndarray, top: np.ndarray) -> np.ndarray:
    p = np.clip(probs[np.arange(top.size), top].astype(np.float64), 1e-12, 1 - 1e-7)
    return np.asarray(np.minimum(np.log(p / (1 - p)), MAX_LOG_ODDS), dtype=np.float64)


def not_a_digit_scores(shape: ShapeModel, images: np.ndarray, probs: np.ndarray,
                       features: np.ndarray | None = None, feature_model: FeatureModel | None = None) -> np.ndarray:
    """The rejection score of each preprocessed image (uint8 ``N×28×28``) given its calibrated
    probabilities ``N×K``, minus the rule's threshold: above 0 means not a digit.

    With ``features`` (``N×D`` penultimate-layer features) and the ``feature_model`` of the weights that
    computed them, the combined rule (:class:`FeatureRule`: the larger of the distance score's and the
    detector's margins over their thresholds); otherwise the pixel-space rule (:data:`REJECT_THRESHOLD`).
    """
    order = np.argsort(-probs, axis=1, kind="stable")
    top, second = order[:, 0], order[:, 1]
    log_odds = _log_odds(probs, top)
    distance = np.minimum(shape.distance(images, top), shape.distance(images, second))
    if features is None or feature_model is None:
        return distance - CONFIDENCE_WEIGHT * (log_odds - CONFIDENCE_PIVOT) - REJECT_THRESHOLD
    rule = feature_model.rule
    fd = feature_model.distance(features)
    score = (np.log(np.maximum(distance, 1e-12)) + rule.feature_weight * np.log(np.maximum(fd, 1e-12))
             - rule.confidence_weight * log_odds - rule.threshold)
    if feature_model.detector is None or not math.isfinite(rule.detector_threshold):
        return np.asarray(score, dtype=np.float64)
    learned = feature_model.detector.score(features, distance, fd, log_odds) - rule.detector_threshold
    return np.asarray(np.maximum(score, learned), dtype=np.float64)


def enclosed_regions(image: np.ndarray) -> int:
    """Number of background regions (4-connected) the ink (pixels > 127) of a 28×28 image encloses."""
    from digitlab.inference.imageops import label  # numpy only: scipy.ndimage is slow to import

    ink = image > 127
    background, n = label(~ink)
    if n == 0:
        return 0
    edge = np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    return n - int(np.unique(edge[edge > 0]).size)


def not_a_digit(shape: ShapeModel, images: np.ndarray, probs: np.ndarray, features: np.ndarray | None = None,
                feature_model: FeatureModel | None = None) -> np.ndarray:
    """Boolean ``N``: the rule of this module for preprocessed images and their calibrated probabilities
    (and, for the shipped model, their penultimate-layer features and its :class:`FeatureModel`)."""
    odd = not_a_digit_scores(shape, images, probs, features, feature_model) > 0
    return odd | np.array([enclosed_regions(im) > MAX_HOLES for im in images], dtype=bool)


def add_features_output(path: str | Path, dest: str | Path | None = None) -> bool:
    """Give an exported classifier's ONNX graph a second output, :data:`FEATURES_OUTPUT`: the input of its
    final ``Gemm`` (the penultimate-layer features). Weights, metadata and the first output are unchanged.
    Writes ``dest`` (default: ``path`` in place, atomically); False when the graph already has the output.
    Needs the ``onnx`` package."""
    import onnx
    from onnx import TensorProto, helper

    from digitlab.utils import write_bytes_atomic

    proto = onnx.load(str(path))
    graph = proto.graph
    if any(o.name == FEATURES_OUTPUT for o in graph.output):
        return False
    last = graph.output[0].name
    producer = next((n for n in graph.node if last in n.output), None)
    if producer is None or producer.op_type != "Gemm":
        raise ValueError(f"{path}: the output {last!r} does not come from a Gemm node")
    graph.node.append(helper.make_node("Identity", [producer.input[0]], [FEATURES_OUTPUT]))
    dims = graph.output[0].type.tensor_type.shape.dim
    batch = dims[0].dim_param or "N" if len(dims) else "N"
    graph.output.append(helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT, [batch, None]))
    onnx.checker.check_model(proto)
    write_bytes_atomic(Path(dest or path), proto.SerializeToString())
    return True
