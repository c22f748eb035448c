"""Data exploration: the numbers and figures of the reference notebooks' exploration sections.

Reproduces what notebooks 000 and 001 compute on the training set — class
distribution (train and test) with percentages, pixel-intensity histogram, mean
image, per-class mean and std images, pixel-variance map, constant/active pixel
counts, the per-pixel F-test (``f_classif``) importance map with its top-196
pixels, a one-way ANOVA of per-image mean intensity across classes, a sample
grid and augmentation examples — and what the notebooks' "clean, no anomalies"
missed: the most suspicious test labels, ranked by confident learning on the
shipped model's probabilities (:func:`explore_label_issues`).

Computation and plotting are separate:

* :func:`explore_dataset` returns every number as a JSON-ready dict. One pass over
  the images, grouped by class, gives exact integer per-class pixel sums, sums of
  squares and zero counts; everything else — means, stds, variances, constant
  pixels, F-scores — derives from those sums.
* :func:`explore_figures` renders PNG bytes (matplotlib Agg, imported lazily).
* :func:`run_explore` is what ``digitlab explore`` calls: load, compute, plot,
  write the PNGs, ``explore.html`` (every figure and table in one page) and
  ``explore.json`` atomically into a new directory.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from digitlab.analysis.plots import fig_to_png, pyplot
from digitlab.data.pixel_stats import class_sums, f_classif_from_sums

EXPLORE_VERSION = 1
DEFAULT_PIXELS = 196
"""Pixels kept by the feature-selected MLP of notebook 000 (a quarter of 784)."""
HIST_BINS = 50
AUG_DIGITS = (1, 3, 8)
"""Digits whose first training image gets augmentation examples (as in notebook 001)."""
AUG_VERSIONS = 7
SAMPLES_PER_CLASS = 10
JSON_NAME = "explore.json"
FIGURE_NAMES = (
    "class_distribution", "intensity_histogram", "mean_image", "class_mean_images",
    "class_std_images", "pixel_variance", "f_test_importance", "class_mean_intensity",
    "sample_grid", "augmentation_examples", "label_issues",
)
HTML_NAME = "explore.html"
LABEL_ISSUES_MODEL = "default"
"""The model whose test-set probabilities rank suspicious labels (the shipped model, trained on MNIST)."""
LABEL_ISSUES_TOP = 24
"""Suspects listed and shown in the grid."""
# keys holding whole images / maps: in explore.json, left out of the short summary
_MAP_KEYS = (("mean_image",), ("class_mean_images",), ("class_std_images",), ("pixel_variance", "map"),
             ("f_test", "scores"), ("f_test", "importance_map"), ("intensity_histogram", "value_counts"),
             ("pixels", "constant_pixel_indices"), ("f_test", "top_pixels"))


# --------------------------------------------------------------------------- pure computations

def log10_f_sf(f: float, dfn: int, dfd: int) -> float:
    """log10 of the F distribution's survival function, finite even where the p-value underflows.

    scipy's ``f.logsf`` returns -inf once the p-value is below ~1e-308 (MNIST's
    ANOVA is far beyond that); there, integrate the density relative to its value at ``f``.
    """
    from scipy import stats as sps

    lp = float(sps.f.logsf(f, dfn, dfd))
    if math.isfinite(lp) or not math.isfinite(f):
        return lp / math.log(10)
    return _log10_f_sf_tail(f, dfn, dfd)


def _log10_f_sf_tail(f: float, dfn: int, dfd: int) -> float:
    from scipy import integrate
    from scipy import stats as sps

    l0 = float(sps.f.logpdf(f, dfn, dfd))
    # p = pdf(f) · ∫_f^∞ pdf(t)/pdf(f) dt; the ratio is ≤ 1 and decays fast, so quad is accurate
    rel, _ = integrate.quad(lambda t: math.exp(float(sps.f.logpdf(t, dfn, dfd)) - l0), f, np.inf)
    return (l0 + math.log(rel)) / math.log(10)


def _clean(obj: Any) -> Any:
    """Replace NaN/inf floats by None throughout (JSON has no NaN; json.dumps would emit it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def _finite_or_none(a: np.ndarray, decimals: int | None = None) -> Any:
    """Nested lists with NaN/inf as None (JSON has no NaN), optionally rounded."""
    a = np.asarray(a, dtype=np.float64)
    if decimals is not None:
        a = np.round(a, decimals)
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def _distribution(labels: np.ndarray, num_classes: int) -> dict[str, Any]:
    counts = np.bincount(labels, minlength=num_classes)
    total = int(counts.sum())
    return {
        "count": total,
        "counts": counts.tolist(),
        "percent": [round(100.0 * c / total, 4) for c in counts.tolist()],
        # notebook 001's balance measure: std / mean of the class counts (0 = perfectly balanced)
        "balance_cv": float(counts.std() / counts.mean()),
        "min_class": int(counts.argmin()),
        "max_class": int(counts.argmax()),
    }


def _constant_mask(images: np.ndarray) -> np.ndarray:
    """Pixels with the same value in every image (max == min), flattened."""
    flat = images.reshape(images.shape[0], -1)
    return flat.max(axis=0) == flat.min(axis=0)


def augmentation_examples(dataset: Any, digits: Sequence[int] = AUG_DIGITS, versions: int = AUG_VERSIONS,
                          seed: int = 0, config: Any = None) -> tuple[list[int], Any, Any]:
    """First training image of each digit in ``digits`` and ``versions`` augmented copies of each.

    Returns ``(indices, originals N×1×28×28, augmented N×versions×28×28)`` (float in [0, 1]);
    deterministic for a given seed. Uses the library's default :class:`AugmentConfig`
    (rotation ±10°, zoom ±10 %, shift ±10 % — notebook 000's ImageDataGenerator).
    """
    import torch

    from digitlab.data import AugmentConfig, augment_batch, to_float

    labels = dataset.train_labels
    indices = []
    for d in digits:
        hits = torch.nonzero(labels == d).flatten()
        if hits.numel():
            indices.append(int(hits[0]))
    cfg = config or AugmentConfig()
    originals = to_float(dataset.train_images[indices])
    gen = torch.Generator().manual_seed(seed)
    # one batch: every original repeated `versions` times, each copy with its own random transform
    batch = originals.repeat_interleave(versions, dim=0)
    augmented = augment_batch(batch, cfg, gen).view(len(indices), versions, *originals.shape[-2:])
    return indices, originals, augmented


def explore_label_issues(dataset: Any, model: str = LABEL_ISSUES_MODEL,
                         top: int = LABEL_ISSUES_TOP) -> dict[str, Any]:
    """The ``top`` most suspicious labels of ``dataset``'s test split, by confident learning.

    Out-of-sample probabilities come from ``model`` (never trained on the test images), with a
    temperature fitted to the split, flagged by prune-by-noise-rate and ranked by self-confidence:
    the flagged rows (``"flagged": true``) are exactly what ``digitlab label-issues --model MODEL
    --top N`` prints. An accurate model flags few, so the list is filled up to ``top`` with the next
    lowest-quality images whose label the model rejects (``"flagged": false``). A model trained on
    another dataset says nothing about these labels: the result then only says why it was skipped.
    """
    from digitlab.analysis import label_issues as li
    from digitlab.checkpoint import dataset_of, load_checkpoint

    t0 = time.perf_counter()
    net, meta = load_checkpoint(model, device="cpu")
    trained_on = dataset_of(meta)
    command = f"digitlab label-issues --dataset {dataset.name} --model {model} --top {top} --plots DIR"
    if trained_on != dataset.name:
        return {"model": model, "split": "test", "issues": [], "command": command,
                "skipped": f"model {model} was trained on {trained_on}, not {dataset.name}; give a model trained "
                           f"on {dataset.name} (or run digitlab label-issues --dataset {dataset.name} "
                           "--split train, which cross-fits one)"}
    labels = dataset.test_labels.cpu().numpy()
    probs = li.model_probabilities(net, dataset.test_images)
    ranked = li.rank_issues(labels, probs, dataset.spec.class_names, top=top, fill=True)
    issues = ([{**r, "flagged": True} for r in li.rows_as_dicts(ranked.rows)]
              + [{**r, "flagged": False} for r in li.rows_as_dicts(ranked.runners_up)])
    return {
        "model": model, "split": "test", "n": int(labels.shape[0]), "method": "prune_by_noise_rate",
        "rank_by": "self_confidence", "temperature": ranked.temperature, "accuracy": ranked.accuracy,
        "n_flagged": int(len(ranked.found.indices)), "top": top, "issues": issues,
        "seconds": round(time.perf_counter() - t0, 3), "command": command, "skipped": None,
    }


def explore_dataset(dataset: Any, pixels: int = DEFAULT_PIXELS, hist_bins: int = HIST_BINS, seed: int = 0,
                    progress: bool = False, label_model: str | None = LABEL_ISSUES_MODEL) -> dict[str, Any]:
    """Every exploration number for ``dataset`` (a :class:`digitlab.data.Dataset`), JSON-ready.

    Pixel statistics are on the training set (as in the notebooks); class
    distributions cover train and test. Intensities are on the 0–255 scale.
    Images (mean, per-class mean/std, variance, F-score maps) are 28×28 nested
    lists; F-scores of constant pixels are ``None`` (NaN in scikit-learn).
    ``pixels`` is how many of the highest-scoring F-test pixels to keep and list.
    ``label_model``: the model whose test probabilities rank suspicious labels
    (:func:`explore_label_issues`; None: no label-issue section).
    """
    import torch
    from scipy import stats as sps
    from tqdm import tqdm

    from digitlab.data import AugmentConfig

    t0 = time.perf_counter()
    train = dataset.train_images.numpy()
    labels = dataset.train_labels.numpy()
    test = dataset.test_images.numpy()
    test_labels = dataset.test_labels.numpy()
    k = int(dataset.num_classes)
    n, h, w = train.shape
    p = h * w

    with tqdm(total=n + 4, desc="explore: statistics", unit="img", unit_scale=True, disable=not progress,
              leave=False) as bar:
        cs = class_sums(train, labels, k, on_chunk=bar.update)
        total_s, total_q = cs.sums.sum(axis=0), cs.sumsq.sum(axis=0)

        # overall pixel statistics (exact: Python ints for the grand totals)
        grand_s, grand_q, npx = int(total_s.sum()), int(total_q.sum()), n * p
        mean_all = grand_s / npx
        std_all = math.sqrt(max((grand_q * npx - grand_s * grand_s) / (npx * npx), 0.0))
        mean_image = total_s / n
        var_map = np.maximum((n * total_q - total_s * total_s) / (n * n), 0.0)  # population variance
        constant = var_map == 0
        # independent check with integer max == min (cheap on uint8): both must agree exactly
        if not np.array_equal(constant, _constant_mask(train)):
            raise AssertionError("constant-pixel computations disagree")  # a bug, never user error
        bar.update(1)

        n_k = np.maximum(cs.counts, 1)[:, None]
        class_means = cs.sums / n_k
        class_stds = np.sqrt(np.maximum(cs.sumsq / n_k - class_means**2, 0.0))
        per_class = []
        for c in range(k):
            cnt = int(cs.counts[c])
            m: float | None = None
            sd: float | None = None
            if cnt:
                mc = float(cs.sums[c].sum() / (cnt * p))
                m, sd = mc, math.sqrt(max(float(cs.sumsq[c].sum() / (cnt * p)) - mc * mc, 0.0))
            per_class.append({
                "class": c, "name": str(dataset.spec.class_names[c]), "count": cnt,
                "mean_intensity": m, "std_intensity": sd,
                "zero_percent": float(100.0 * cs.zeros[c].sum() / (cnt * p)) if cnt else None,
            })

        # intensity histogram: exact per-value counts, then notebook-style 50 bins over [0, 255]
        # (torch.bincount: ~10× faster than numpy's on 47M uint8 values)
        value_counts = torch.bincount(dataset.train_images.reshape(-1), minlength=256).numpy()
        edges = np.linspace(0.0, 255.0, hist_bins + 1)
        hist, _ = np.histogram(np.arange(256), bins=edges, weights=value_counts)
        bar.update(1)

        # F-test per pixel (sklearn's f_classif) and the `pixels` best pixels
        f_scores, f_p = f_classif_from_sums(cs.counts, cs.sums, cs.sumsq)
        ranked = np.where(np.isfinite(f_scores), f_scores, -np.inf)
        order = np.argsort(-ranked, kind="stable")
        top = order[:min(pixels, int(np.isfinite(f_scores).sum()))]
        finite = np.nan_to_num(f_scores, nan=0.0, posinf=0.0)
        span = finite.max() - finite.min()
        importance = (finite - finite.min()) / span if span > 0 else np.zeros_like(finite)
        bar.update(1)

        # one-way ANOVA of per-image mean intensity across classes (scipy.stats.f_oneway)
        image_means = cs.image_sums / p
        groups = [image_means[labels == c] for c in range(k) if cs.counts[c] > 0]
        anova = sps.f_oneway(*groups)
        df_b, df_w = len(groups) - 1, n - len(groups)
        log10_p = log10_f_sf(float(anova.statistic), df_b, df_w)

        var_flat = var_map.reshape(-1)
        var_sorted = np.sort(var_flat)
        sample_idx = [np.flatnonzero(labels == c)[:SAMPLES_PER_CLASS].tolist() for c in range(k)]
        aug_idx, aug_orig, aug = augmentation_examples(dataset, seed=seed)
        bar.update(1)

    const_idx = np.flatnonzero(constant)
    test_constant = _constant_mask(test)
    # constant over train and test together: constant in both, with the same value
    both_constant = test_constant & constant & (test.reshape(test.shape[0], -1)[0] == train.reshape(n, -1)[0])

    return _clean({
        "version": EXPLORE_VERSION,
        "dataset": dataset.name,
        "source": str(dataset.source),
        "data": {
            "train_shape": list(train.shape), "test_shape": list(test.shape), "dtype": str(train.dtype),
            "value_range": [int(train.min()), int(train.max())], "num_classes": k,
            "class_names": [str(c) for c in dataset.spec.class_names],
            "memory_mb": round((train.nbytes + test.nbytes) / 2**20, 2),
        },
        "class_distribution": {"train": _distribution(labels, k), "test": _distribution(test_labels, k)},
        "pixels": {
            "split": "train",
            "mean": mean_all, "std": std_all,
            "zero_percent": float(100.0 * cs.zeros.sum() / npx),
            "total_pixels": p,
            "constant_pixels": int(constant.sum()),
            "active_pixels": int(p - constant.sum()),
            "constant_pixel_indices": const_idx.tolist(),
            "constant_pixel_values": sorted({int(v) for v in train.reshape(n, -1)[0, const_idx]}),
            "constant_pixels_test": int(test_constant.sum()),
            "constant_pixels_train_and_test": int(both_constant.sum()),
        },
        "intensity_histogram": {
            "split": "train", "bins": hist_bins, "bin_edges": edges.tolist(),
            "counts": hist.astype(np.int64).tolist(), "value_counts": value_counts.tolist(),
        },
        "mean_image": _finite_or_none(mean_image.reshape(h, w), 4),
        "class_mean_images": _finite_or_none(class_means.reshape(k, h, w), 4),
        "class_std_images": _finite_or_none(class_stds.reshape(k, h, w), 4),
        "per_class": per_class,
        "pixel_variance": {
            "map": _finite_or_none(var_map.reshape(h, w), 3),
            "max": float(var_flat.max()), "mean": float(var_flat.mean()),
            "top100_min": float(var_sorted[-100]), "bottom100_max": float(var_sorted[99]),
            "argmax": int(var_flat.argmax()),
        },
        "f_test": {
            "method": "one-way ANOVA F per pixel (sklearn.feature_selection.f_classif), train set",
            "scores": _finite_or_none(f_scores.reshape(h, w), 4),
            "importance_map": _finite_or_none(importance.reshape(h, w), 5),
            "max_f": float(np.nanmax(np.where(np.isfinite(f_scores), f_scores, np.nan))),
            "pixels_scored": int(np.isfinite(f_scores).sum()),
            "pixels_p_below_0.05": int((f_p[np.isfinite(f_p)] < 0.05).sum()),
            "pixels": int(top.size),
            "top_pixel_indices": top.tolist(),
            "top_pixels": [{"index": int(i), "row": int(i // w), "col": int(i % w), "f": float(f_scores[i])}
                           for i in top],
            "pixels_min_f": float(f_scores[top[-1]]) if top.size else None,
        },
        "anova_mean_intensity": {
            "test": "scipy.stats.f_oneway of per-image mean intensity across classes (train)",
            "F": float(anova.statistic), "p_value": float(anova.pvalue), "log10_p_value": log10_p,
            "df_between": df_b, "df_within": df_w, "significant_at_0.05": bool(anova.pvalue < 0.05),
        },
        "samples": {"per_class": SAMPLES_PER_CLASS, "indices": sample_idx},
        "augmentation": {
            "config": AugmentConfig().to_dict(), "seed": seed, "digits": [int(labels[i]) for i in aug_idx],
            "indices": aug_idx, "versions": AUG_VERSIONS,
            "original_mean_std": [[float(o.mean()), float(o.std())] for o in aug_orig],
            "augmented_mean_std": [[[float(a.mean()), float(a.std())] for a in row] for row in aug],
        },
        "label_issues": explore_label_issues(dataset, label_model) if label_model else None,
        "timings": {"statistics_s": round(time.perf_counter() - t0, 3)},
    })


def summary(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` without the image-sized arrays (for ``--json`` on stdout and quick reading)."""
    import copy

    out = copy.deepcopy(stats)
    for path in _MAP_KEYS:
        node = out
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return out


# --------------------------------------------------------------------------- figures

def _image_grid(plt: Any, images: np.ndarray, titles: Sequence[str], rows: int, cols: int, title: str,
                cmap: str, colorbar: bool = True) -> bytes:
    fig, axes = plt.subplots(rows, cols, figsize=(1.7 * cols + 1, 1.8 * rows + 0.6), squeeze=False)
    vmin, vmax = float(np.min(images)), float(np.max(images))
    im = None
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            im = ax.imshow(images[i], cmap=cmap, vmin=vmin, vmax=vmax)
            ax.set_title(titles[i], fontsize=9)
    fig.suptitle(title)
    if colorbar and im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    return fig_to_png(fig)


def _mosaic(tiles: Sequence[Sequence[np.ndarray]], cols: int, gap: int = 2, fill: float = 1.0) -> np.ndarray:
    """Tiles (rows of equal-size images in [0, 1]) pasted into one image; each cell is ``h+gap`` square.

    Cell ``(r, c)`` spans rows ``r·(h+gap)`` … and columns ``c·(w+gap)`` …, the tile centred in it.
    """
    h, w = tiles[0][0].shape
    rows = len(tiles)
    out = np.full((rows * (h + gap), cols * (w + gap)), fill, np.float32)
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row[:cols]):
            out[r * (h + gap) + gap // 2:r * (h + gap) + gap // 2 + h,
                c * (w + gap) + gap // 2:c * (w + gap) + gap // 2 + w] = tile
    return out


def _arr(x: Any) -> np.ndarray:
    return np.array(x, dtype=np.float64)  # None (constant pixel F-scores) → nan


def explore_figures(dataset: Any, stats: dict[str, Any], progress: bool = False) -> dict[str, bytes]:
    """PNG bytes of every exploration figure, by name (see :data:`FIGURE_NAMES`).

    ``stats`` is the output of :func:`explore_dataset` for the same dataset; the
    dataset is needed only for the sample grid and the augmentation examples.
    """
    from tqdm import tqdm

    plt = pyplot()
    names = [str(c) for c in stats["data"]["class_names"]]
    k = len(names)
    figures: dict[str, bytes] = {}
    steps = tqdm(FIGURE_NAMES, desc="explore: figures", disable=not progress, leave=False)
    for name in steps:
        if name == "class_distribution":
            tr, te = stats["class_distribution"]["train"], stats["class_distribution"]["test"]
            fig, ax = plt.subplots(figsize=(9, 4))
            x = np.arange(k)
            b1 = ax.bar(x - 0.2, tr["percent"], 0.4, label=f"train (n={tr['count']})")
            ax.bar(x + 0.2, te["percent"], 0.4, label=f"test (n={te['count']})")
            for rect, cnt in zip(b1, tr["counts"], strict=True):
                ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height() + 0.1, str(cnt),
                        ha="center", va="bottom", fontsize=7)
            ax.axhline(100 / k, color="grey", linestyle="--", linewidth=0.8, label="uniform")
            ax.set_xticks(x, names, rotation=30 if max(map(len, names)) > 2 else 0)
            ax.set_ylabel("% of split")
            ax.set_title("Class distribution (train counts on the bars)")
            ax.legend(fontsize=8)
            figures[name] = fig_to_png(fig)
        elif name == "intensity_histogram":
            hist = stats["intensity_histogram"]
            edges, counts = np.array(hist["bin_edges"]), np.array(hist["counts"], dtype=float)
            fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
            for ax, log in zip(axes, (False, True), strict=True):
                ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:green")
                ax.set_xlabel("pixel intensity (0-255)")
                ax.set_ylabel("pixels" + (" (log scale)" if log else ""))
                if log:
                    ax.set_yscale("log")
            px = stats["pixels"]
            fig.suptitle(f"Pixel intensities, train: mean {px['mean']:.2f}, std {px['std']:.2f}, "
                         f"{px['zero_percent']:.1f}% zeros")
            figures[name] = fig_to_png(fig)
        elif name == "mean_image":
            fig, ax = plt.subplots(figsize=(4.5, 4))
            im = ax.imshow(_arr(stats["mean_image"]), cmap="gray")
            ax.set_title("Mean training image")
            ax.axis("off")
            fig.colorbar(im, ax=ax, shrink=0.8)
            figures[name] = fig_to_png(fig)
        elif name in ("class_mean_images", "class_std_images"):
            imgs = _arr(stats[name])
            what = "Mean" if name == "class_mean_images" else "Standard deviation"
            figures[name] = _image_grid(plt, imgs, names, 2, math.ceil(k / 2), f"{what} image per class",
                                        "viridis" if what == "Mean" else "plasma")
        elif name == "pixel_variance":
            pv = stats["pixel_variance"]
            var_map = _arr(pv["map"])
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            im = axes[0].imshow(var_map, cmap="hot")
            const = np.array(stats["pixels"]["constant_pixel_indices"], dtype=int)
            w = var_map.shape[1]
            axes[0].scatter(const % w, const // w, s=6, c="tab:cyan", marker="s",
                            label=f"constant ({len(const)})")
            axes[0].legend(loc="upper center", bbox_to_anchor=(0.5, 0.0), fontsize=7, frameon=False)
            axes[0].set_title("Pixel variance by position")
            axes[0].axis("off")
            fig.colorbar(im, ax=axes[0], shrink=0.8)
            axes[1].hist(var_map.ravel(), bins=50, color="purple", alpha=0.75)
            axes[1].axvline(pv["top100_min"], color="red", linestyle="--", label="top 100 most variable")
            axes[1].axvline(pv["bottom100_max"], color="blue", linestyle="--", label="100 least variable")
            axes[1].set_xlabel("pixel variance")
            axes[1].set_ylabel("pixels")
            axes[1].legend(fontsize=8)
            axes[1].set_title("Distribution of pixel variances")
            figures[name] = fig_to_png(fig)
        elif name == "f_test_importance":
            ft = stats["f_test"]
            imp = _arr(ft["importance_map"])
            mask = np.zeros(imp.size)
            mask[np.array(ft["top_pixel_indices"], dtype=int)] = 1
            fig, axes = plt.subplots(1, 2, figsize=(10, 4))
            im = axes[0].imshow(imp, cmap="hot")
            axes[0].set_title("Pixel importance (F-test, min-max scaled)")
            fig.colorbar(im, ax=axes[0], shrink=0.8)
            axes[1].imshow(mask.reshape(imp.shape), cmap="gray")
            axes[1].set_title(f"Top {ft['pixels']} pixels by F-score")
            for ax in axes:
                ax.axis("off")
            figures[name] = fig_to_png(fig)
        elif name == "class_mean_intensity":
            pc = stats["per_class"]
            an = stats["anova_mean_intensity"]
            fig, ax = plt.subplots(figsize=(8, 4))
            means = [c["mean_intensity"] or 0.0 for c in pc]
            bars = ax.bar(range(k), means, color="orange", alpha=0.85)
            for rect, m in zip(bars, means, strict=True):
                ax.text(rect.get_x() + rect.get_width() / 2, rect.get_height() + 0.5, f"{m:.1f}",
                        ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(k), names, rotation=30 if max(map(len, names)) > 2 else 0)
            ax.set_ylabel("mean pixel intensity")
            p_text = f"p = {an['p_value']:.2e}" if an["p_value"] > 0 else f"log10 p = {an['log10_p_value']:.0f}"
            ax.set_title(f"Mean intensity by class — one-way ANOVA F = {an['F']:.1f}, {p_text}")
            figures[name] = fig_to_png(fig)
        elif name == "sample_grid":
            idx = stats["samples"]["indices"]
            cols = stats["samples"]["per_class"]
            images = dataset.train_images.numpy().astype(np.float32) / 255.0
            tiles = [[images[i] for i in row] for row in idx]
            # one image for the whole grid: a hundred axes would take most of the command's time
            mosaic = _mosaic(tiles, cols)
            fig, ax = plt.subplots(figsize=(cols * 0.75 + 1.0, k * 0.75 + 0.6))
            ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
            step = images.shape[1] + 2
            ax.set_yticks([r * step + step / 2 for r in range(k)], names)
            ax.set_xticks([])
            ax.set_title(f"First {cols} training images of each class")
            figures[name] = fig_to_png(fig)
        elif name == "augmentation_examples":
            aug = stats["augmentation"]
            _, orig, augmented = augmentation_examples(dataset, aug["digits"], aug["versions"], aug["seed"])
            rows, cols = orig.shape[0], aug["versions"] + 1
            tiles = [[orig[r, 0].numpy()] + [augmented[r, v].numpy() for v in range(aug["versions"])]
                     for r in range(rows)]
            mosaic = _mosaic(tiles, cols)
            fig, ax = plt.subplots(figsize=(cols * 1.25, rows * 1.45 + 0.5))
            ax.imshow(mosaic, cmap="gray", vmin=0, vmax=1)
            step = orig.shape[-1] + 2
            for r in range(rows):
                for c in range(cols):
                    t = tiles[r][c]
                    ax.text(c * step + step / 2, r * step + 0.5, f"{t.mean():.2f}±{t.std():.2f}", color="yellow",
                            ha="center", va="top", fontsize=6)
            ax.set_xticks([c * step + step / 2 for c in range(cols)],
                          ["original"] + [f"aug {c}" for c in range(1, cols)], fontsize=8)
            ax.set_yticks([r * step + step / 2 for r in range(rows)], [f"digit {d}" for d in aug["digits"]],
                          fontsize=8)
            ax.xaxis.tick_top()
            cfg = aug["config"]
            ax.set_title(f"Augmentation (rotation ±{cfg['rotation']:g}°, zoom ±{cfg['zoom']:g}, "
                         f"shift ±{cfg['shift']:g}; seed {aug['seed']}); mean±std per image", fontsize=9,
                         pad=22)
            figures[name] = fig_to_png(fig)
        elif name == "label_issues":
            png = label_issues_png(dataset, stats.get("label_issues"))
            if png is not None:
                figures[name] = png
    return figures


def label_issues_png(dataset: Any, found: dict[str, Any] | None) -> bytes | None:
    """The grid of the suspects of :func:`explore_label_issues` (given→suggested, label quality, index);
    None when there is nothing to show."""
    if not found or not found.get("issues"):
        return None
    from digitlab.analysis import label_issues as li

    rows = [li.LabelIssue(**{k: v for k, v in r.items() if k != "flagged"}) for r in found["issues"]]
    notes = [f"#{r['index']}" + (" flagged" if r.get("flagged") else "") for r in found["issues"]]
    return li.suspects_png(dataset.test_images[[r.index for r in rows]], rows, dataset.spec.class_names,
                           title=f"{dataset.name} test: the {len(rows)} most suspicious labels "
                                 f"(given→suggested; flagged = by confident learning; {found['model']} model)",
                           notes=notes)


def explore_html(stats: dict[str, Any], figures: dict[str, bytes]) -> str:
    """One self-contained page: the class table, pixel facts, every figure and the suspicious labels."""
    from digitlab.report.html import Report

    names = [str(c) for c in stats["data"]["class_names"]]
    tr, te = stats["class_distribution"]["train"], stats["class_distribution"]["test"]
    rep = Report(f"digitlab explore: {stats['dataset']}",
                 f"{stats['dataset']} from {stats['source']}: {tr['count']:,} training and {te['count']:,} test "
                 "images")
    s = rep.section("classes", "Classes")
    s.table(["class", "train", "train %", "test", "test %"],
            [[names[c], tr["counts"][c], tr["percent"][c], te["counts"][c], te["percent"][c]]
             for c in range(len(names))], digits=2)
    px, an, ft = stats["pixels"], stats["anova_mean_intensity"], stats["f_test"]
    s = rep.section("pixels", "Pixels")
    s.items([f"Training pixels: mean {px['mean']:.2f}, std {px['std']:.2f} (0–255), "
             f"{px['zero_percent']:.2f}% zeros.",
             f"{px['constant_pixels']} constant and {px['active_pixels']} active pixels of {px['total_pixels']}.",
             f"ANOVA of per-image mean intensity across classes: F = {an['F']:.2f}, log10 p = "
             f"{an['log10_p_value']:.1f}.",
             f"F-test: {ft['pixels_scored']} pixels scored, the top {ft['pixels']} kept "
             f"(F ≥ {ft['pixels_min_f']:.1f})."])
    s = rep.section("figures", "Figures")
    for name, png in figures.items():
        if name != "label_issues":
            s.figure(png, name.replace("_", " "), width=640)
    label_issues_section(rep.section("label-issues", "Suspicious test labels"), stats.get("label_issues"),
                          figures.get("label_issues"))
    return rep.render()


def label_issues_section(s: Any, found: dict[str, Any] | None, png: bytes | None) -> None:
    """The suspicious-labels part of a report (:class:`digitlab.report.html.Section` ``s``): what was
    done, the grid, the table and the command that repeats it."""
    if not found:
        s.text("Not computed (--no-label-issues).")
        return
    if found.get("skipped"):
        s.text(f"Skipped: {found['skipped']}.")
        return
    s.text(f"The test images whose given label is most likely wrong: confident learning (Northcutt et al. 2021; "
           f"{found['method'].replace('_', ' ')}) on the out-of-sample probabilities of the {found['model']} "
           f"model (test accuracy {100 * found['accuracy']:.2f}%, temperature {found['temperature']:.3g}) flags "
           f"{found['n_flagged']} of {found['n']:,} images. Below, most suspicious first (lowest label quality, "
           f"{found['rank_by'].replace('_', ' ')}): the flagged images, then, up to {len(found['issues'])}, the "
           "next images whose given label the model rejects. A flag is a candidate for a human to look at, "
           "not a verdict: some are mislabelled, some are just ambiguous, some are the model's mistakes.")
    if png is not None:
        s.figure(png, "most suspicious test labels (given→suggested)", width=720)
    s.table(["test image", "given label", "suggested", "label quality", "flagged"],
            [[str(r["index"]), r["name"], r["suggested_name"], r["score"], "yes" if r.get("flagged") else "no"]
             for r in found["issues"]], digits=3)
    s.code(found["command"])


# --------------------------------------------------------------------------- writing and the command


def write_explore(out: str | os.PathLike[str], stats: dict[str, Any], figures: dict[str, bytes]) -> list[str]:
    """Write ``<name>.png`` for each figure and ``explore.html`` (when there are figures), then
    ``explore.json``, each atomically; return file names."""
    from digitlab.utils import write_bytes_atomic, write_json_atomic, write_text_atomic

    out = Path(out)
    names = []
    for name, png in figures.items():
        write_bytes_atomic(out / f"{name}.png", png)
        names.append(f"{name}.png")
    if figures:
        write_text_atomic(out / HTML_NAME, explore_html(stats, figures))
        names.append(HTML_NAME)
    write_json_atomic(out / JSON_NAME, stats)  # last: its presence means the folder is complete
    names.append(JSON_NAME)
    return names


def run_explore(out: str | os.PathLike[str] = "explore", dataset: str = "mnist",
                data_dir: str | os.PathLike[str] | None = None, plots: bool = True, progress: bool = False,
                pixels: int = DEFAULT_PIXELS, seed: int = 0,
                label_model: str | None = LABEL_ISSUES_MODEL) -> dict[str, Any]:
    """Load ``dataset``, explore it and write the results into the new folder ``out``.

    Refuses an existing non-empty ``out`` before doing any work. Returns
    :func:`summary` of the statistics plus ``out``, ``files`` and timings.
    """
    from digitlab.data import load_dataset
    from digitlab.utils import ensure_new_dir

    t0 = time.perf_counter()
    out_path = Path(out)
    existed = out_path.exists()
    ensure_new_dir(out_path, "explore output directory")
    try:
        ds = load_dataset(dataset, data_dir=data_dir, progress=progress)
        stats = explore_dataset(ds, pixels=pixels, seed=seed, progress=progress, label_model=label_model)
        t1 = time.perf_counter()
        figures = explore_figures(ds, stats, progress=progress) if plots else {}
        stats["timings"]["figures_s"] = round(time.perf_counter() - t1, 3)
        stats["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        files = write_explore(out_path, stats, figures)
    except BaseException:
        if not existed and out_path.is_dir() and not any(out_path.iterdir()):
            out_path.rmdir()  # leave no empty folder behind that we created
        raise
    result = summary(stats)
    result["out"] = str(out_path)
    result["files"] = files
    return result
