"""Figures as PNG bytes, from plain numbers (never from models).

Every function builds a matplotlib figure with the non-interactive Agg backend
(imported lazily, so importing this module costs nothing), renders it to PNG
and closes it. Write the bytes with :func:`digitlab.utils.write_bytes_atomic`.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from digitlab.evaluate.metrics import ArrayLike, to_numpy

DPI = 110
"""Resolution of every PNG the project draws (with ``bbox_inches="tight"``: no clipped labels)."""


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported on first use)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_to_png(fig: Any) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it: THE one way figures are saved.

    Lays the subplots out with ``tight_layout`` when every axes sits on the
    figure's grid (a colorbar drawn beside a list of axes does not: such figures
    keep the placement they were built with), then saves at :data:`DPI` with a
    tight bounding box. The figure is closed even when rendering fails.
    """
    buf = io.BytesIO()
    try:
        if all(ax.get_subplotspec() is not None for ax in fig.axes):
            fig.tight_layout()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    finally:
        pyplot().close(fig)
    return buf.getvalue()


def _names(n: int, class_names: Sequence[str] | None) -> list[str]:
    return [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(n)]


def _images(images: ArrayLike) -> np.ndarray:
    a = to_numpy(images)
    if a.ndim == 4:
        a = a[:, 0]
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    return a.astype(np.float32)


def confusion_matrix_png(cm: ArrayLike, class_names: Sequence[str] | None = None, normalize: bool = False,
                         title: str = "Confusion matrix") -> bytes:
    """Heatmap of a count matrix (rows true, columns predicted) with the count in each cell.

    ``normalize=True`` colours by row fraction but still prints the counts.
    """
    plt = pyplot()
    counts = np.asarray(to_numpy(cm))
    n = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    # log-ish colour scale on counts keeps the small off-diagonal cells visible
    colour = frac if normalize else np.log1p(counts.astype(np.float64))
    names = _names(n, class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * n, 0.8 + 0.55 * n))
    ax.imshow(colour, cmap="Blues")
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                  if max(map(len, names)) > 2 else "center")
    ax.set_yticks(range(n), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    hi = colour.max() if colour.size else 1
    for i in range(n):
        for j in range(n):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if colour[i, j] > 0.6 * hi else "black")
    return fig_to_png(fig)


def per_class_metrics_png(per_class: Sequence[Mapping[str, Any]], title: str = "Per-class metrics",
                          metrics: Sequence[str] = ("precision", "recall", "f1")) -> bytes:
    """Grouped bars of precision / recall / F1 per class from ``evaluate`` ``per_class`` dicts."""
    plt = pyplot()
    names = [str(r.get("class", i)) for i, r in enumerate(per_class)]
    x = np.arange(len(names))
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names)), 3.6))
    lows = []
    for i, m in enumerate(metrics):
        vals = np.array([float(r[m]) for r in per_class])
        lows.append(vals.min() if vals.size else 0)
        ax.bar(x + (i - (len(metrics) - 1) / 2) * width, vals, width, label=m)
    ax.set_xticks(x, names)
    ax.set_ylim(max(0.0, min(lows, default=0) - 0.05), 1.0)
    ax.set_ylabel("score")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig_to_png(fig)


def reliability_png(reliability: Mapping[str, Any], title: str = "Reliability diagram") -> bytes:
    """Accuracy bar per confidence bin, its gap to the mean confidence, the diagonal and bin counts.

    ``reliability`` is the dict from :func:`digitlab.evaluate.calibration.reliability_diagram`.
    """
    plt = pyplot()
    lo = np.asarray(reliability["bin_lower"], dtype=float)
    hi = np.asarray(reliability["bin_upper"], dtype=float)
    acc = np.array([np.nan if a is None else a for a in reliability["accuracy"]], dtype=float)
    conf = np.array([np.nan if c is None else c for c in reliability["confidence"]], dtype=float)
    count = np.asarray(reliability["count"], dtype=float)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(4.8, 5.4), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(lo, np.nan_to_num(acc), width=hi - lo, align="edge", edgecolor="k", color="tab:blue",
           alpha=0.8, label="accuracy")
    # the gap spans accuracy ↔ mean confidence, whichever is higher (over- or under-confidence)
    ax.bar(lo, np.nan_to_num(np.abs(conf - acc)), bottom=np.nan_to_num(np.minimum(acc, conf)),
           width=hi - lo, align="edge", facecolor="none", edgecolor="tab:red", hatch="//",
           label="gap to mean confidence")
    ax.plot((lo + hi) / 2, conf, "r.", ms=5, label="mean confidence")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ece = reliability.get("ece")
    ax.set_title(title + (f" (ECE {100 * ece:.2f}%)" if ece is not None else ""))
    ax.legend(loc="upper left", fontsize=8)
    axc.bar(lo, count, width=hi - lo, align="edge", color="gray")
    axc.set_yscale("log" if count.max(initial=0) > 100 else "linear")
    axc.set_xlabel("confidence")
    axc.set_ylabel("samples")
    return fig_to_png(fig)


def misclassified_grid_png(images: ArrayLike, true: Sequence[int], pred: Sequence[int],
                           confidence: Sequence[float], class_names: Sequence[str] | None = None,
                           ncols: int = 8, title: str = "Misclassified examples",
                           notes: Sequence[str] | None = None) -> bytes:
    """Grid of images titled ``"true→pred (conf%)"``, with ``notes[k]`` as a second line if given."""
    plt = pyplot()
    imgs = _images(images)
    n = len(imgs)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, -(-n // ncols))
    names = class_names
    row_height = 1.55 if notes is None else 1.8
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.35 * ncols, row_height * nrows + 0.4), squeeze=False)
    for k, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if k < n:
            t, p = int(true[k]), int(pred[k])
            tn = names[t] if names is not None else str(t)
            pn = names[p] if names is not None else str(p)
            ax.imshow(imgs[k], cmap="gray_r", vmin=0, vmax=1)
            note = f"\n{notes[k]}" if notes is not None else ""
            ax.set_title(f"{tn}→{pn} ({100 * float(confidence[k]):.0f}%){note}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig_to_png(fig)


def confidence_hist_png(correct: ArrayLike, wrong: ArrayLike, bins: int = 20,
                        title: str = "Confidence: right vs wrong") -> bytes:
    """Overlaid histograms (density) of max-probability confidence for right and wrong predictions."""
    plt = pyplot()
    c, w = to_numpy(correct).ravel(), to_numpy(wrong).ravel()
    edges = np.linspace(0, 1, bins + 1)
    fig, ax = plt.subplots(figsize=(5, 3.4))
    if c.size:
        ax.hist(c, bins=edges, density=True, alpha=0.6, label=f"correct (n={c.size})")
    if w.size:
        ax.hist(w, bins=edges, density=True, alpha=0.6, color="tab:red", label=f"wrong (n={w.size})")
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("density")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig_to_png(fig)


def heatmap_grid_png(images: ArrayLike, maps: ArrayLike, titles: Sequence[str] | None = None,
                     ncols: int = 4, cmap: str = "inferno", signed: bool = False,
                     title: str = "Sensitivity maps") -> bytes:
    """Pairs of (image, map) panels: for saliency, occlusion or integrated-gradient maps.

    ``signed=True`` uses a diverging colour scale centred on 0 (for IG attributions
    or occlusion drops that can be negative).
    """
    plt = pyplot()
    imgs, m = _images(images), to_numpy(maps).astype(np.float32)
    if m.ndim == 4:
        m = m[:, 0]
    n = len(imgs)
    ncols = max(1, min(ncols, n)) if n else 1
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, 2 * ncols, figsize=(2.6 * ncols, 1.45 * nrows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(n):
        r, c = divmod(k, ncols)
        a_img, a_map = axes[r, 2 * c], axes[r, 2 * c + 1]
        a_img.imshow(imgs[k], cmap="gray_r", vmin=0, vmax=1)
        if signed:
            lim = float(np.abs(m[k]).max()) or 1.0
            a_map.imshow(m[k], cmap="RdBu_r", vmin=-lim, vmax=lim)
        else:
            a_map.imshow(m[k], cmap=cmap)
        if titles is not None:
            a_img.set_title(str(titles[k]), fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig_to_png(fig)


def curves_png(x: Sequence[float], curves: Mapping[str, Sequence[float]], xlabel: str,
               ylabel: str = "accuracy", title: str = "", percent: bool = True) -> bytes:
    """Line chart of several named curves over the same ``x`` (robustness vs noise / angle / shift)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    scale = 100.0 if percent else 1.0
    for name, ys in curves.items():
        ax.plot(list(x), [scale * float(v) for v in ys], marker="o", ms=3, label=str(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{ylabel} (%)" if percent else ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1 or any(curves):
        ax.legend(fontsize=8)
    return fig_to_png(fig)


def noise_curve_png(stds: Sequence[float], curves: Mapping[str, Sequence[float]],
                    title: str = "Accuracy under Gaussian noise") -> bytes:
    """Accuracy vs noise std for one or more models (``curves``: name → accuracies)."""
    return curves_png(stds, curves, xlabel="noise std (pixel scale 0–1)", title=title)


def training_curves_png(history: Sequence[Mapping[str, Any]], title: str = "Training curves") -> bytes:
    """Loss, accuracy and learning rate per epoch from ``[{epoch, train_loss, train_acc, val_loss,
    val_acc, lr}, ...]`` (missing keys or None values are skipped)."""
    plt = pyplot()
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]

    def series(key: str) -> tuple[list, list]:
        pts = [(e, h[key]) for e, h in zip(epochs, history, strict=True) if h.get(key) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for key, style in (("train_loss", "-"), ("val_loss", "--")):
        xs, ys = series(key)
        if xs:
            axes[0].plot(xs, ys, style, marker="o", ms=3, label=key)
    for key, style in (("train_acc", "-"), ("val_acc", "--")):
        xs, ys = series(key)
        if xs:
            axes[1].plot(xs, [100 * v for v in ys], style, marker="o", ms=3, label=key)
    xs, ys = series("lr")
    if xs:
        axes[2].plot(xs, ys, marker="o", ms=3, color="tab:green")
    for ax, yl in zip(axes, ("loss", "accuracy (%)", "learning rate"), strict=True):
        ax.set_xlabel("epoch")
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return fig_to_png(fig)


def pareto_front(xs: Sequence[float], ys: Sequence[float]) -> list[int]:
    """Indices of points not dominated when *lower x* and *higher y* are better, sorted by x."""
    order = sorted(range(len(xs)), key=lambda i: (xs[i], -ys[i]))
    front, best = [], -np.inf
    for i in order:
        if ys[i] > best:
            front.append(i)
            best = ys[i]
    return front


def pareto_png(points: Sequence[Mapping[str, Any]], title: str = "Accuracy vs cost") -> bytes:
    """Two labelled scatter panels: accuracy vs parameters and accuracy vs batch-1 latency.

    ``points``: ``[{"name", "accuracy", "parameters", "latency_ms"}, ...]``; a
    missing / None cost leaves the point out of that panel. The Pareto front
    (fewer parameters or lower latency *and* higher accuracy) is drawn as a line.
    """
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "parameters", "parameters (log scale)"),
                           (axes[1], "latency_ms", "latency at batch 1, ms (log scale)")):
        pts = [p for p in points if p.get(key) is not None and p.get("accuracy") is not None]
        xs = [float(p[key]) for p in pts]
        ys = [100 * float(p["accuracy"]) for p in pts]
        ax.scatter(xs, ys, s=25)
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(str(p.get("name", "")), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
        front = pareto_front(xs, ys)
        if len(front) > 1:
            ax.plot([xs[i] for i in front], [ys[i] for i in front], "r--", lw=1, label="Pareto front")
            ax.legend(fontsize=8, loc="best")
        ax.margins(0.1)
        if xs and min(xs) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig_to_png(fig)


def bar_errorbars_png(labels: Sequence[str], means: Sequence[float], errors: Sequence[float | None],
                      ylabel: str = "accuracy (%)", title: str = "", scale: float = 100.0,
                      zoom: bool = True) -> bytes:
    """Bars of ``means`` with ± ``errors`` (e.g. std over seeds or CI half-widths), times ``scale``.

    ``zoom=True`` starts the y axis just below the smallest bar so small differences stay visible.
    """
    plt = pyplot()
    m = np.asarray(means, dtype=float) * scale
    e = np.asarray([0.0 if v is None else v for v in errors], dtype=float) * scale
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(labels)), 3.6))
    x = np.arange(len(labels))
    ax.bar(x, m, yerr=e, capsize=4, color="tab:blue", alpha=0.8)
    ax.set_xticks(x, [str(s) for s in labels], rotation=30 if len(labels) > 4 else 0,
                  ha="right" if len(labels) > 4 else "center")
    if zoom and m.size:
        lo, hi = float((m - e).min()), float((m + e).max())
        pad = max(0.1 * (hi - lo), 1e-3 * max(abs(hi), 1.0))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return fig_to_png(fig)
