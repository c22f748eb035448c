"""Compare evaluated runs: accuracy with CIs, cost, significance, and recommendations.

Everything here is computed from measured predictions and timings; the
recommendations are rules applied to those numbers, stated with their reasons.
Results are typed (:class:`RunEvaluation` → :class:`Comparison`); ``to_dict()``
gives the JSON that ``digitlab compare --json`` prints and ``report.json`` keeps.

The rules (also printed in the report):

* **most accurate**: the highest mean test accuracy wins only when McNemar's test
  (first seeds, α = 0.05) says it is significantly better than the runner-up and
  every other model; otherwise the models not significantly worse are *tied*.
* **smallest within X**: among the models whose accuracy is within X of the best
  (or not significantly different from it), the fewest parameters. Parameter
  counts are exact, so no noise rule is needed.
* **fastest within X**: among the same models, the lowest median batch-1 latency
  — a winner only when its slowest measurement round is still faster than the
  runner-up's fastest round (the ranges of per-round medians do not overlap);
  otherwise *tied*.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digitlab.analysis import stats
from digitlab.checkpoint import checkpoint_file, load_checkpoint
from digitlab.errors import ConfigError
from digitlab.evaluate.evaluator import QualityMetrics, evaluate_model
from digitlab.evaluate.speed import SpeedProfile, measure_speed

#: Accuracy window of "smallest / fastest within X of the best".
DEFAULT_TOLERANCE = 0.005


@dataclass
class RunEvaluation:
    """One run evaluated on the test set, with its predictions kept for paired tests."""

    name: str
    model_name: str
    seed: int
    source: str
    meta: dict[str, Any]
    metrics: QualityMetrics
    probs: np.ndarray
    labels: np.ndarray
    parameters: int
    checkpoint_bytes: int | None
    speed: SpeedProfile | None = None
    reference: bool = False
    """Not trained by this study (the shipped model, ``--include RUN``, runs given to ``compare``)."""
    budget: str | None = None
    """The study budget the run was trained with (None: not a budgeted study run)."""

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)

    def record(self) -> dict[str, Any]:
        """What a study stores for this evaluation (everything but the probabilities)."""
        return {"name": self.name, "model": self.model_name, "seed": self.seed, "source": self.source,
                "meta": self.meta, "metrics": self.metrics.to_dict(), "parameters": self.parameters,
                "checkpoint_bytes": self.checkpoint_bytes, "reference": self.reference, "budget": self.budget,
                "speed": self.speed.to_dict() if self.speed else None}

    @classmethod
    def from_record(cls, rec: dict[str, Any], probs: np.ndarray, labels: np.ndarray) -> RunEvaluation:
        speed = SpeedProfile(**rec["speed"]) if rec.get("speed") else None
        return cls(rec["name"], rec["model"], int(rec["seed"]), rec["source"], rec["meta"],
                   QualityMetrics(**rec["metrics"]), probs, labels, int(rec["parameters"]),
                   rec.get("checkpoint_bytes"), speed, bool(rec.get("reference")), rec.get("budget"))


def evaluate_source(source: str | os.PathLike[str], images: torch.Tensor, labels: torch.Tensor,
                    class_names: list[str] | None = None, name: str | None = None, *,
                    reference: bool = False, budget: str | None = None,
                    device: str | torch.device | None = None) -> tuple[RunEvaluation, torch.nn.Module]:
    """Load a run, checkpoint or ``"default"`` and score it with :func:`evaluate_model` (the
    evaluate command's function); speed is measured afterwards for all models together
    (:func:`measure_speeds`)."""
    model, meta = load_checkpoint(source)
    if device is not None:
        model.to(device)
    ev = evaluate_model(model, images, labels, class_names=class_names, speed=False,
                        checkpoint_path=checkpoint_file(source))
    seed = int((meta.get("config") or {}).get("seed", 0))
    label = name or f"{meta['model']}/s{seed}"
    probs = torch.softmax(ev.logits.float(), 1).numpy()
    if budget is None:
        budget = (meta.get("config") or {}).get("budget")
    return RunEvaluation(label, meta["model"], seed, str(source), meta, ev.quality, probs,
                         labels.cpu().numpy(), ev.parameters, ev.checkpoint_bytes, None, reference,
                         budget), model


def measure_speeds(evals: list[RunEvaluation], models: dict[str, torch.nn.Module], images: torch.Tensor, *,
                   repeats: int = 30, rounds: int = 5, batch_size: int = 1000) -> None:
    """Time every model in interleaved rounds (:func:`measure_speed`) and attach the profiles
    to the evaluations (keyed by run name; runs missing from ``models`` are left untimed).
    Throughput is measured at ``batch_size`` images per call."""
    if repeats < 1 or not models:
        return
    batch_size = min(batch_size, images.shape[0])
    profiles = measure_speed(models, images[:batch_size], repeats=repeats, rounds=min(rounds, repeats),
                             warmup=min(5, repeats), batch_size=batch_size)
    for ev in evals:
        if ev.name in profiles:
            ev.speed = profiles[ev.name]


# --- typed results ---------------------------------------------------------------------------------------
@dataclass
class RunRow:
    name: str
    model: str
    seed: int
    source: str
    accuracy: float
    ci_low: float
    ci_high: float
    loss: float
    macro_f1: float
    parameters: int
    checkpoint_bytes: int | None
    train_seconds: float | None
    """Seconds spent in optimizer steps (loop time minus validation)."""
    seconds_per_epoch: float | None
    epochs_trained: float | None
    steps: int | None
    budget: str | None
    reference: bool
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    throughput_per_s: float | None


@dataclass
class ModelRow:
    """One model (all its seeds) in the comparison table."""

    model: str
    seeds: list[int]
    accuracies: list[float]
    accuracy_mean: float
    accuracy_std: float | None
    ci_low: float
    ci_high: float
    parameters: int
    checkpoint_bytes: int | None
    train_seconds_mean: float | None
    seconds_per_epoch: float | None
    epochs_trained: float | None
    steps: int | None
    budget: str | None
    reference: bool
    """True for rows not trained by this study."""
    trained_for: str
    """How the model was trained, in words (its own budget for reference rows)."""
    latency_ms_p50: float | None
    latency_ms_low: float | None
    latency_ms_high: float | None
    throughput_per_s: float | None
    throughput_low: float | None
    throughput_high: float | None
    run: str
    """Name of the first-seed run (source of the paired tests)."""
    source: str


@dataclass
class PairTest:
    a: str
    b: str
    accuracy_a: float
    accuracy_b: float
    b_count: int
    c_count: int
    statistic: float
    p_value: float
    method: str
    significant: bool
    diff_ci_low: float
    diff_ci_high: float


@dataclass
class Recommendation:
    role: str
    model: str
    reason: str
    decided: bool = True
    """False when the measurement cannot tell the pick from ``tied_with``."""
    tied_with: list[str] = field(default_factory=list)
    rule: str = ""


@dataclass
class Comparison:
    runs: list[RunRow]
    models: list[ModelRow]
    mcnemar: list[PairTest]
    multi_seed: dict[str, Any] | None
    pareto_parameters: list[str]
    pareto_latency: list[str]
    n_test: int
    alpha: float
    tolerance: float
    recommendations: list[Recommendation]

    def model(self, name: str) -> ModelRow:
        for m in self.models:
            if m.model == name:
                return m
        raise KeyError(name)

    def test(self, a: str, b: str) -> PairTest | None:
        for p in self.mcnemar:
            if {p.a, p.b} == {a, b}:
                return p
        return None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- per-run figures from checkpoint metadata ----------------------------------------------------------------
def _steps_per_epoch(meta: dict[str, Any]) -> int:
    cfg, data = meta.get("config") or {}, meta.get("data") or {}
    return -(-int(data.get("train_count", 0)) // int(cfg.get("batch_size", 1) or 1))


def train_seconds(meta: dict[str, Any]) -> float | None:
    """Seconds spent in optimizer steps: the loop's time minus its validation time."""
    metrics = meta.get("metrics") or {}
    seconds = metrics.get("train_seconds")
    if seconds is None:
        return None
    return float(seconds) - float(metrics.get("val_seconds") or 0.0)


def _mean_or_none(values: list[Any]) -> float | None:
    """Mean of the values that are not None (None if there are none)."""
    known = [float(v) for v in values if v is not None]
    return float(np.mean(known)) if known else None


def seconds_per_epoch(meta: dict[str, Any]) -> float | None:
    """Measured seconds per step × steps per epoch. For the scikit-learn baselines (no steps), the fit time."""
    seconds, steps = train_seconds(meta), (meta.get("metrics") or {}).get("steps")
    if seconds is None:
        return None
    if not steps:
        return seconds
    per_epoch = _steps_per_epoch(meta)
    return seconds / steps * per_epoch if per_epoch else None


def epochs_trained(meta: dict[str, Any]) -> float | None:
    steps = (meta.get("metrics") or {}).get("steps")
    per_epoch = _steps_per_epoch(meta)
    return steps / per_epoch if steps and per_epoch else None


def trained_for(meta: dict[str, Any]) -> str:
    """How a checkpoint was trained, in words, from its metadata."""
    metrics, cfg = meta.get("metrics") or {}, meta.get("config") or {}
    parts = []
    ep = epochs_trained(meta)
    if ep is not None:
        parts.append(f"{ep:,.2f} epochs ({int(metrics.get('steps', 0)):,} steps)")
    elif cfg.get("epochs") and metrics.get("steps"):
        parts.append(f"{cfg['epochs']} epochs")
    sec = train_seconds(meta)
    if sec is not None:
        parts.append(f"{sec:,.0f} s")
    if cfg.get("budget"):
        parts.append(f"budget {cfg['budget']}")
    return ", ".join(parts) if parts else "unknown (no training record in its metadata)"


# --- the comparison --------------------------------------------------------------------------------------------
def compare_evaluations(evals: list[RunEvaluation], n_boot: int = 1000, alpha: float = 0.05,
                        accuracy_tolerance: float = DEFAULT_TOLERANCE) -> Comparison:
    """Comparison table, per-model seed statistics, pairwise tests, Pareto set, recommendations.

    Runs are grouped by model name; reference runs (not trained by this study) form their own
    rows (named after the run) and take no part in the recommendations.
    """
    if not evals:
        raise ValueError("nothing to compare")
    runs = []
    for ev in evals:
        ci = stats.accuracy_ci(ev.labels, ev.preds, n_boot=n_boot, seed=0)
        sp = ev.speed
        runs.append(RunRow(
            name=ev.name, model=ev.model_name, seed=ev.seed, source=ev.source, accuracy=ev.metrics.accuracy,
            ci_low=ci["low"], ci_high=ci["high"], loss=ev.metrics.loss, macro_f1=ev.metrics.macro_avg["f1"],
            parameters=ev.parameters, checkpoint_bytes=ev.checkpoint_bytes, train_seconds=train_seconds(ev.meta),
            seconds_per_epoch=seconds_per_epoch(ev.meta), epochs_trained=epochs_trained(ev.meta),
            steps=(ev.meta.get("metrics") or {}).get("steps"), budget=ev.budget, reference=ev.reference,
            latency_ms_p50=sp.latency_ms_p50 if sp else None, latency_ms_p95=sp.latency_ms_p95 if sp else None,
            throughput_per_s=sp.throughput_per_s if sp else None))

    groups: dict[str, list[tuple[RunRow, RunEvaluation]]] = defaultdict(list)
    for row, ev in zip(runs, evals, strict=True):
        groups[row_key(ev)].append((row, ev))
    models = []
    first: dict[str, RunEvaluation] = {}
    for key, pairs in groups.items():
        rows = [r for r, _ in pairs]
        first[key] = pairs[0][1]
        accs = [r.accuracy for r in rows]
        ms = stats.mean_std(accs)
        tsec = [r.train_seconds for r in rows if r.train_seconds is not None]
        spe = [r.seconds_per_epoch for r in rows if r.seconds_per_epoch is not None]
        sp = next((e.speed for _, e in pairs if e.speed is not None), None)
        ev0 = pairs[0][1]
        models.append(ModelRow(
            model=key, seeds=[r.seed for r in rows], accuracies=accs, accuracy_mean=ms["mean"],
            accuracy_std=ms["std"], ci_low=rows[0].ci_low, ci_high=rows[0].ci_high, parameters=rows[0].parameters,
            checkpoint_bytes=rows[0].checkpoint_bytes, train_seconds_mean=float(np.mean(tsec)) if tsec else None,
            seconds_per_epoch=float(np.median(spe)) if spe else None, epochs_trained=_mean_or_none(
                [r.epochs_trained for r in rows]),
            # a run holding a time budget re-plans its length, so seeds differ: their mean
            steps=None if (st := _mean_or_none([r.steps for r in rows])) is None else round(st),
            budget=rows[0].budget, reference=rows[0].reference,
            trained_for=trained_for(ev0.meta),
            latency_ms_p50=sp.latency_ms_p50 if sp else None, latency_ms_low=sp.latency_ms_low if sp else None,
            latency_ms_high=sp.latency_ms_high if sp else None,
            throughput_per_s=sp.throughput_per_s if sp else None, throughput_low=sp.throughput_low if sp else None,
            throughput_high=sp.throughput_high if sp else None, run=rows[0].name, source=rows[0].source))
    models.sort(key=lambda m: -m.accuracy_mean)

    mcnemar = []
    for a, b in itertools.combinations([m.model for m in models], 2):
        ea, eb = first[a], first[b]
        test = stats.mcnemar(ea.labels, ea.preds, eb.preds)
        diff = stats.paired_bootstrap_ci((ea.preds == ea.labels).astype(float),
                                         (eb.preds == eb.labels).astype(float), n_boot=n_boot, seed=0)
        mcnemar.append(PairTest(a=a, b=b, accuracy_a=test["accuracy_a"], accuracy_b=test["accuracy_b"],
                                b_count=int(test["b"]), c_count=int(test["c"]), statistic=float(test["statistic"]),
                                p_value=float(test["p_value"]), method=str(test["method"]),
                                significant=bool(test["p_value"] < alpha), diff_ci_low=diff["low"],
                                diff_ci_high=diff["high"]))

    studied = [m for m in models if not m.reference]
    seed_counts = {len(m.accuracies) for m in studied}
    multi_seed = None
    if len(studied) >= 3 and min(seed_counts) >= 2:
        n = min(seed_counts)
        multi_seed = stats.compare_models({m.model: m.accuracies[:n] for m in studied}, alpha=alpha)

    result = Comparison(
        runs=runs, models=models, mcnemar=mcnemar, multi_seed=multi_seed,
        pareto_parameters=[models[i].model for i in _pareto(models, "parameters")],
        pareto_latency=[models[i].model for i in _pareto(models, "latency_ms_p50")],
        n_test=int(evals[0].labels.size), alpha=alpha, tolerance=accuracy_tolerance, recommendations=[])
    result.recommendations = recommend(result)
    return result


def row_key(ev: RunEvaluation) -> str:
    """The comparison row a run belongs to: its model name, or its own name for a reference run."""
    return ev.name if ev.reference else ev.model_name


def _pareto(models: list[ModelRow], cost: str) -> list[int]:
    """Indices of models not beaten on both accuracy (higher) and ``cost`` (lower)."""
    pts = [(i, m.accuracy_mean, getattr(m, cost)) for i, m in enumerate(models) if getattr(m, cost) is not None]
    front = []
    for i, acc, c in pts:
        dominated = any((a2 >= acc and c2 <= c) and (a2 > acc or c2 < c) for _, a2, c2 in pts)
        if not dominated:
            front.append(i)
    return front


RULES = {
    "most accurate": "highest mean test accuracy; a winner only when McNemar's test (first seeds, α = {alpha}) "
                     "finds it significantly better than every other model, otherwise the models it cannot "
                     "be told apart from are tied",
    "smallest": "fewest parameters among the models within {tol} of the best accuracy or not significantly "
                "different from it",
    "fastest": "lowest median batch-1 latency among the same models; a winner only when its slowest "
               "measurement round beats the runner-up's fastest round, otherwise tied",
}


def recommend(comparison: Comparison) -> list[Recommendation]:
    """The three picks (most accurate; smallest within X; fastest within X), with ties stated."""
    models = [m for m in comparison.models if not m.reference] or comparison.models
    if not models:
        return []
    alpha, tol = comparison.alpha, comparison.tolerance
    best = max(models, key=lambda m: m.accuracy_mean)

    def same_as_best(m: ModelRow) -> bool:
        if m.model == best.model:
            return True
        test = comparison.test(best.model, m.model)
        return test is not None and not test.significant

    tied = [m.model for m in models if m.model != best.model and same_as_best(m)]
    p_best = [comparison.test(best.model, m.model) for m in models if m.model != best.model]
    p_max = max((t.p_value for t in p_best if t is not None and t.significant), default=None)
    if tied:
        reason = (f"{best.accuracy_mean:.2%} mean test accuracy; not significantly different (McNemar, "
                  f"α = {alpha}) from {', '.join(tied)}: tied")
    elif len(models) > 1:
        reason = (f"{best.accuracy_mean:.2%} mean test accuracy; significantly better than every other model "
                  f"(McNemar, largest p = {max(p_max, 1e-300):.2g})" if p_max is not None else "")
    else:
        reason = f"{best.accuracy_mean:.2%} mean test accuracy (the only model)"
    out = [Recommendation("most accurate", best.model, reason, decided=not tied, tied_with=tied,
                          rule=RULES["most accurate"].format(alpha=alpha))]

    near = [m for m in models if m.accuracy_mean >= best.accuracy_mean - tol or same_as_best(m)]
    small = min(near, key=lambda m: (m.parameters, m.latency_ms_p50 or math.inf))
    same_size = [m.model for m in near if m.parameters == small.parameters and m.model != small.model]
    out.append(Recommendation(
        f"smallest within {tol:.1%}", small.model,
        f"{small.parameters:,} parameters, {small.accuracy_mean:.2%} accuracy "
        f"({(small.accuracy_mean - best.accuracy_mean) * 100:+.2f} points vs the best); "
        f"{len(near)} model(s) qualify", decided=not same_size, tied_with=same_size,
        rule=RULES["smallest"].format(tol=f"{tol:.1%}")))

    timed = sorted([m for m in near if m.latency_ms_p50 is not None], key=lambda m: m.latency_ms_p50 or 0.0)
    if timed:
        fast = timed[0]
        tied_fast = [m.model for m in timed[1:]
                     if (fast.latency_ms_high or 0.0) >= (m.latency_ms_low or 0.0)]
        spread = f"{fast.latency_ms_low:.3f}–{fast.latency_ms_high:.3f} ms over rounds"
        if tied_fast:
            reason = (f"median {fast.latency_ms_p50:.3f} ms/image at batch 1 ({spread}); the rounds overlap "
                      f"with {', '.join(tied_fast)}: tied")
        elif len(timed) > 1:
            nxt = timed[1]
            reason = (f"median {fast.latency_ms_p50:.3f} ms/image at batch 1 ({spread}); runner-up {nxt.model} "
                      f"{nxt.latency_ms_p50:.3f} ms (its fastest round {nxt.latency_ms_low:.3f} ms)")
        else:
            reason = f"median {fast.latency_ms_p50:.3f} ms/image at batch 1 ({spread}); the only qualifying model"
        out.append(Recommendation(f"fastest within {tol:.1%}", fast.model, reason, decided=not tied_fast,
                                  tied_with=tied_fast, rule=RULES["fastest"]))
    return out


# --- compare command -------------------------------------------------------------------------------------------
def source_dataset(source: str) -> str:
    """The dataset a run or checkpoint (or ``"default"``) was trained on."""
    from digitlab.checkpoint import dataset_of, read_meta

    return dataset_of(read_meta(source))


def compare_sources(sources: list[str], dataset: str | None = None, data_dir: str | None = None,
                    speed_repeats: int = 30, n_boot: int = 1000, device: str = "auto",
                    progress: bool = False) -> tuple[Comparison, list[RunEvaluation]]:
    """Evaluate runs / checkpoints / ``"default"`` on their dataset and compare them.

    Every run is scored on its own dataset; runs trained on different datasets are refused
    (one line) unless ``dataset`` names the one to score them all on.
    """
    import sys

    from digitlab.data import load_dataset
    from digitlab.utils import resolve_device

    if not sources:
        raise ConfigError("give at least one run to compare")
    if dataset is None:
        own = {src: source_dataset(src) for src in sources}
        names = sorted(set(own.values()))
        if len(names) > 1:
            listing = ", ".join(f"{Path(s).name or s} ({d})" for s, d in own.items())
            raise ConfigError(f"runs were trained on different datasets: {listing}; compare runs of one "
                              f"dataset, or pass --dataset NAME to score them all on it")
        dataset = names[0]
    ds = load_dataset(dataset, data_dir, progress=progress)
    dev = resolve_device(device)
    evals: list[RunEvaluation] = []
    loaded: dict[str, torch.nn.Module] = {}
    for src in sources:
        if progress:
            print(f"[compare] evaluate {src}", file=sys.stderr, flush=True)
        ev, model = evaluate_source(src, ds.test_images, ds.test_labels, list(ds.spec.class_names),
                                    name=_unique_name(src, evals), device=dev)
        evals.append(ev)
        loaded[ev.name] = model
    # the first run of every model is timed (latency is a property of the architecture)
    timed: dict[str, torch.nn.Module] = {}
    seen: set[str] = set()
    for ev in evals:
        if ev.model_name not in seen:
            seen.add(ev.model_name)
            timed[ev.name] = loaded[ev.name]
    measure_speeds(evals, timed, ds.test_images, repeats=speed_repeats)
    return compare_evaluations(evals, n_boot=n_boot), evals


def _unique_name(src: str, evals: list[RunEvaluation]) -> str:
    base = Path(src).name or str(src)
    names = {e.name for e in evals}
    name, k = base, 2
    while name in names:
        name, k = f"{base}#{k}", k + 1
    return name


def comparison_figures(result: Comparison) -> dict[str, bytes]:
    from digitlab.analysis import plots

    models = result.models
    figs = {
        "accuracy_ci": plots.bar_errorbars_png(
            [m.model for m in models], [m.accuracy_mean for m in models],
            # the bootstrap CI is nearly symmetric at these sizes: show its larger half-width
            [max(m.accuracy_mean - m.ci_low, m.ci_high - m.accuracy_mean) for m in models],
            ylabel="test accuracy (%)", title="Test accuracy with 95% bootstrap CI (seed 0)"),
    }
    points = [{"name": m.model, "accuracy": m.accuracy_mean, "parameters": m.parameters,
               "latency_ms": m.latency_ms_p50} for m in models if m.latency_ms_p50 is not None]
    if points:
        figs["pareto"] = plots.pareto_png(points, title="Accuracy vs size and latency")
    return figs


def format_table(result: Comparison) -> str:
    """Plain-text comparison table for the terminal."""
    lines = [f"{'model':<18} {'accuracy':>16} {'95% CI (seed 0)':>17} {'params':>10} {'train s':>8} "
             f"{'p50 ms':>7} {'img/s':>9}"]
    for m in result.models:
        acc = f"{m.accuracy_mean:.4f}" + (f"±{m.accuracy_std:.4f}" if m.accuracy_std else "")
        lines.append(
            f"{m.model:<18} {acc:>16} {m.ci_low:.4f}–{m.ci_high:.4f}  {m.parameters:>10,} "
            f"{(m.train_seconds_mean or 0):>8,.1f} {(m.latency_ms_p50 or 0):>7.2f} "
            f"{(m.throughput_per_s or 0):>9,.0f}")
    lines.append("")
    for r in result.recommendations:
        lines.append(f"{r.role}: {r.model}{'' if r.decided else ' (tied)'} — {r.reason}")
    return "\n".join(lines)
