"""Compare evaluated runs: accuracy with CIs, cost, significance, and recommendations.

Everything here is computed from measured predictions and timings; the
recommendations are rules applied to those numbers, stated with their reasons.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.analysis import stats
from digitlab.evaluate.evaluator import evaluate_logits
from digitlab.evaluate.inference import predict_logits
from digitlab.evaluate.speed import checkpoint_bytes, parameter_count, speed_profile
from digitlab.train.checkpoint import checkpoint_file, load_checkpoint


@dataclass
class RunEvaluation:
    """One run evaluated on the test set, with its predictions kept for paired tests."""

    name: str
    model_name: str
    seed: int
    source: str
    meta: dict[str, Any]
    metrics: dict[str, Any]
    probs: np.ndarray
    labels: np.ndarray

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)


def evaluate_source(source: str | os.PathLike[str], images: torch.Tensor, labels: torch.Tensor,
                    class_names: list[str] | None = None, speed_repeats: int = 30,
                    name: str | None = None) -> tuple[RunEvaluation, torch.nn.Module]:
    """Load a run or checkpoint, predict ``images`` once, measure speed; keep the probabilities."""
    model, meta = load_checkpoint(source)
    logits = predict_logits(model, images)
    metrics = evaluate_logits(logits, labels, class_names=class_names)
    metrics["parameters"] = parameter_count(model)
    metrics["checkpoint_bytes"] = checkpoint_bytes(checkpoint_file(source))
    prof = speed_profile(model, images[:2000], repeats=speed_repeats, warmup=min(5, speed_repeats),
                         throughput_repeats=2) if speed_repeats > 0 else None
    for key in ("latency_ms_p50", "latency_ms_p95", "throughput_per_s"):
        metrics[key] = prof[key] if prof else None
    seed = int((meta.get("config") or {}).get("seed", 0))
    label = name or f"{meta['model']}/s{seed}"
    probs = torch.softmax(logits.float(), 1).numpy()
    return RunEvaluation(label, meta["model"], seed, str(source), meta, metrics, probs,
                         labels.cpu().numpy()), model


def _train_seconds(ev: RunEvaluation) -> float | None:
    return (ev.meta.get("metrics") or {}).get("train_seconds")


def _steps_per_epoch(meta: dict[str, Any]) -> int:
    cfg, data = meta.get("config") or {}, meta.get("data") or {}
    return -(-int(data.get("train_count", 0)) // int(cfg.get("batch_size", 1)))


def seconds_per_epoch(meta: dict[str, Any]) -> float | None:
    """Measured loop seconds per step × steps per epoch (validation time included, as in the loop).

    For the scikit-learn baselines (no steps), the fit time.
    """
    metrics = meta.get("metrics") or {}
    seconds, steps = metrics.get("train_seconds"), metrics.get("steps")
    if seconds is None:
        return None
    if not steps:
        return seconds
    per_epoch = _steps_per_epoch(meta)
    return seconds / steps * per_epoch if per_epoch else None


def _epochs_trained(meta: dict[str, Any]) -> float | None:
    steps = (meta.get("metrics") or {}).get("steps")
    per_epoch = _steps_per_epoch(meta)
    return steps / per_epoch if steps and per_epoch else None


def compare_evaluations(evals: list[RunEvaluation], n_boot: int = 1000, alpha: float = 0.05,
                        accuracy_tolerance: float = 0.01) -> dict[str, Any]:
    """Comparison table, per-model seed statistics, pairwise tests, Pareto set, recommendations."""
    if not evals:
        raise ValueError("nothing to compare")
    runs = []
    for ev in evals:
        ci = stats.accuracy_ci(ev.labels, ev.preds, n_boot=n_boot, seed=0)
        runs.append({
            "name": ev.name, "model": ev.model_name, "seed": ev.seed, "source": ev.source,
            "accuracy": ev.metrics["accuracy"], "ci_low": ci["low"], "ci_high": ci["high"],
            "loss": ev.metrics["loss"], "macro_f1": ev.metrics["macro_avg"]["f1"],
            "parameters": ev.metrics["parameters"], "checkpoint_bytes": ev.metrics["checkpoint_bytes"],
            "train_seconds": _train_seconds(ev), "seconds_per_epoch": seconds_per_epoch(ev.meta),
            "epochs_trained": _epochs_trained(ev.meta), "latency_ms_p50": ev.metrics["latency_ms_p50"],
            "latency_ms_p95": ev.metrics["latency_ms_p95"], "throughput_per_s": ev.metrics["throughput_per_s"],
        })

    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in runs:
        by_model[row["model"]].append(row)
    models = []
    for name, rows in by_model.items():
        accs = [r["accuracy"] for r in rows]
        ms = stats.mean_std(accs)
        lat = [r["latency_ms_p50"] for r in rows if r["latency_ms_p50"] is not None]
        tsec = [r["train_seconds"] for r in rows if r["train_seconds"] is not None]
        spe = [r["seconds_per_epoch"] for r in rows if r["seconds_per_epoch"] is not None]
        models.append({
            "model": name, "seeds": [r["seed"] for r in rows], "accuracies": accs,
            "accuracy_mean": ms["mean"], "accuracy_std": ms["std"],
            "ci_low": rows[0]["ci_low"], "ci_high": rows[0]["ci_high"],
            "parameters": rows[0]["parameters"], "checkpoint_bytes": rows[0]["checkpoint_bytes"],
            "train_seconds_mean": float(np.mean(tsec)) if tsec else None,
            "seconds_per_epoch": float(np.median(spe)) if spe else None,
            "epochs_trained": rows[0]["epochs_trained"],
            "latency_ms_p50": float(np.median(lat)) if lat else None,
            "throughput_per_s": rows[0]["throughput_per_s"],
        })
    models.sort(key=lambda m: -m["accuracy_mean"])

    # paired tests between the first-seed run of every pair of models
    first = {}
    for ev in evals:
        first.setdefault(ev.model_name, ev)
    mcnemar = []
    for a, b in itertools.combinations([m["model"] for m in models], 2):
        ea, eb = first[a], first[b]
        test = stats.mcnemar(ea.labels, ea.preds, eb.preds)
        diff = stats.paired_bootstrap_ci((ea.preds == ea.labels).astype(float),
                                         (eb.preds == eb.labels).astype(float), n_boot=n_boot, seed=0)
        mcnemar.append({"a": a, "b": b, "accuracy_a": test["accuracy_a"], "accuracy_b": test["accuracy_b"],
                        "b_count": test["b"], "c_count": test["c"], "statistic": test["statistic"],
                        "p_value": test["p_value"], "method": test["method"],
                        "significant": bool(test["p_value"] < alpha),
                        "diff_ci_low": diff["low"], "diff_ci_high": diff["high"]})

    seed_counts = {len(m["accuracies"]) for m in models}
    multi_seed = None
    if len(models) >= 3 and min(seed_counts) >= 2:
        n = min(seed_counts)
        multi_seed = stats.compare_models({m["model"]: m["accuracies"][:n] for m in models}, alpha=alpha)

    pareto_idx = _pareto([m for m in models], "parameters")
    result = {
        "runs": runs, "models": models, "mcnemar": mcnemar, "multi_seed": multi_seed,
        "pareto_parameters": [models[i]["model"] for i in pareto_idx],
        "pareto_latency": [models[i]["model"] for i in _pareto(models, "latency_ms_p50")],
        "n_test": int(evals[0].labels.size), "alpha": alpha,
    }
    result["recommendations"] = recommend(models, mcnemar, accuracy_tolerance)
    return result


def _pareto(models: list[dict[str, Any]], cost: str) -> list[int]:
    """Indices of models not beaten on both accuracy (higher) and ``cost`` (lower)."""
    pts = [(i, m["accuracy_mean"], m[cost]) for i, m in enumerate(models) if m.get(cost) is not None]
    front = []
    for i, acc, c in pts:
        dominated = any((a2 >= acc and c2 <= c) and (a2 > acc or c2 < c) for _, a2, c2 in pts)
        if not dominated:
            front.append(i)
    return front


def recommend(models: list[dict[str, Any]], mcnemar: list[dict[str, Any]],
              tolerance: float = 0.01) -> list[dict[str, str]]:
    """Three picks with the rule and the numbers behind each."""
    if not models:
        return []
    best = max(models, key=lambda m: m["accuracy_mean"])
    ties = [p["b"] if p["a"] == best["model"] else p["a"] for p in mcnemar
            if best["model"] in (p["a"], p["b"]) and not p["significant"]]
    out = [{
        "role": "most accurate", "model": best["model"],
        "reason": f"highest mean test accuracy {best['accuracy_mean']:.2%}"
                  + (f"; not significantly different (McNemar) from {', '.join(ties)}" if ties else
                     "; significantly better than every other model (McNemar)"),
    }]
    near = [m for m in models if m["accuracy_mean"] >= best["accuracy_mean"] - tolerance]
    small = min(near, key=lambda m: (m["parameters"] or math.inf, m["latency_ms_p50"] or math.inf))
    out.append({
        "role": "constrained devices", "model": small["model"],
        "reason": f"fewest parameters ({small['parameters']:,}) among models within {tolerance:.1%} of the best "
                  f"accuracy ({small['accuracy_mean']:.2%})",
    })
    timed = [m for m in models if m["latency_ms_p50"]]
    if timed:
        accs = [m["accuracy_mean"] for m in timed]
        lats = [math.log(m["latency_ms_p50"]) for m in timed]
        a0, a1, l0, l1 = min(accs), max(accs), min(lats), max(lats)

        def distance(m: dict[str, Any]) -> float:
            a = (m["accuracy_mean"] - a0) / ((a1 - a0) or 1)
            lat = (math.log(m["latency_ms_p50"]) - l0) / ((l1 - l0) or 1)
            return math.hypot(1 - a, lat)

        bal = min(timed, key=distance)
        out.append({
            "role": "balanced", "model": bal["model"],
            "reason": f"closest to the ideal (best accuracy, lowest latency) after scaling both to [0, 1] "
                      f"(log latency): {bal['accuracy_mean']:.2%} at {bal['latency_ms_p50']:.2f} ms/image",
        })
    return out


def compare_sources(sources: list[str], dataset: str | None = None, data_dir: str | None = None,
                    speed_repeats: int = 30, n_boot: int = 1000) -> tuple[dict[str, Any], list[RunEvaluation]]:
    """Evaluate run directories / checkpoints on one test set and compare them."""
    from digitlab.data import load_dataset
    from digitlab.evaluate.evaluator import run_dataset_name
    from digitlab.train.checkpoint import read_meta

    name = dataset or run_dataset_name(read_meta(sources[0]))
    ds = load_dataset(name, data_dir, progress=False)
    evals = []
    for src in sources:
        ev, _ = evaluate_source(src, ds.test_images, ds.test_labels, list(ds.spec.class_names),
                                speed_repeats=speed_repeats, name=_unique_name(src, evals))
        evals.append(ev)
    return compare_evaluations(evals, n_boot=n_boot), evals


def _unique_name(src: str, evals: list[RunEvaluation]) -> str:
    base = Path(src).name or str(src)
    names = {e.name for e in evals}
    name, k = base, 2
    while name in names:
        name, k = f"{base}#{k}", k + 1
    return name


def comparison_figures(result: dict[str, Any]) -> dict[str, bytes]:
    from digitlab.analysis import plots

    models = result["models"]
    figs = {
        "accuracy_ci": plots.bar_errorbars_png(
            [m["model"] for m in models], [m["accuracy_mean"] for m in models],
            # the bootstrap CI is nearly symmetric at these sizes: show its larger half-width
            [max(m["accuracy_mean"] - m["ci_low"], m["ci_high"] - m["accuracy_mean"]) for m in models],
            ylabel="test accuracy (%)", title="Test accuracy with 95% bootstrap CI (seed 0)"),
    }
    points = [{"name": m["model"], "accuracy": m["accuracy_mean"], "parameters": m["parameters"],
               "latency_ms": m["latency_ms_p50"]} for m in models if m["latency_ms_p50"] is not None]
    if points:
        figs["pareto"] = plots.pareto_png(points, title="Accuracy vs size and latency")
    return figs


def format_table(result: dict[str, Any]) -> str:
    """Plain-text comparison table for the terminal."""
    lines = [f"{'model':<16} {'accuracy':>16} {'95% CI (seed 0)':>17} {'params':>10} {'train s':>8} "
             f"{'p50 ms':>7} {'img/s':>8}"]
    for m in result["models"]:
        acc = f"{m['accuracy_mean']:.4f}" + (f"±{m['accuracy_std']:.4f}" if m["accuracy_std"] else "")
        lines.append(
            f"{m['model']:<16} {acc:>16} {m['ci_low']:.4f}–{m['ci_high']:.4f}  {m['parameters']:>10,} "
            f"{(m['train_seconds_mean'] or 0):>8.1f} {(m['latency_ms_p50'] or 0):>7.2f} "
            f"{(m['throughput_per_s'] or 0):>8.0f}")
    lines.append("")
    for r in result["recommendations"]:
        lines.append(f"{r['role']}: {r['model']} — {r['reason']}")
    return "\n".join(lines)
