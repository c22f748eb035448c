"""``digitlab study``: train the zoo at equal budgets → evaluate → compare → one report, verdict first.

Every gradient-trained model gets the same training budget (time, epochs or images;
:mod:`digitlab.train.budget`), with its learning-rate schedule ending at the end of
the budget; the scikit-learn baselines fit within the same time where their solver
allows. The shipped model and any ``--include RUN`` are scored beside them as
reference rows, marked as not trained by the study.

The study directory holds everything it made::

    study.json            settings, budget plans (measured step counts), progress, timings
    explore/              data exploration figures + explore.json
    runs/<model>-s<seed>/ one training run per model and seed (<model>-<budget>-s<seed> with several budgets)
    evals/<run>.json      test-set metrics; evals/<run>.probs.safetensors the probabilities
    speed.json            latency / throughput of every model, measured in interleaved rounds
    report.html           the self-contained report (figures embedded), verdict first
    report.json           every number in the report
    summary.md            a short Markdown summary

An interrupted study resumes with ``--resume``: finished runs and evaluations are
reused, an unfinished run continues from its last checkpoint, and the budget plans
(step counts) measured before the interruption are kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np

from digitlab.checkpoint import CONFIG_FILE, MODEL_FILE, RESUME_FILE
from digitlab.errors import ConfigError, RunExistsError
from digitlab.evaluate.speed import SpeedProfile
from digitlab.report.compare import (
    Comparison,
    ModelRow,
    RunEvaluation,
    compare_evaluations,
    evaluate_source,
    measure_speeds,
    row_key,
    source_dataset,
)
from digitlab.report.html import Report, Section, fmt
from digitlab.train.budget import Budget, BudgetPlan, parse_budget, plan_budget
from digitlab.utils import (
    atomic_path,
    ensure_new_dir,
    to_jsonable,
    torch_threads,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)

ZOO = ("mlp-basic-128", "mlp-basic-256", "mlp-basic-512", "mlp-selected", "mlp-128-64", "mlp-bn",
       "cnn-simple", "cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini", "lenet5",
       "logreg", "random-forest")

#: Settings every budgeted study run shares. BN momentum 0.1: the Keras-faithful 0.01 leaves running
#: statistics unsettled after a short run; validation on 1,000 images keeps frequent curves cheap; one
#: training thread: with two threads on a 2-core machine shared with other jobs we measured step times
#: varying 30-fold within a minute (2 ms vs 56-186 ms for mlp-basic-128), so a step count measured in
#: the warm-up did not hold for the run; with one thread it did (2.9 s and 3.4 s for a 3 s budget).
BUDGET_OVERRIDES: dict[str, Any] = {"tensorboard": False, "bn_momentum": 0.1, "val_max_images": 1000,
                                    "threads": 1}
#: Accuracy gain over the last quarter of a run's validation points that counts as "still improving".
IMPROVING = 0.003
#: A gradient model's training time may differ from a time budget by this much before an alert.
BUDGET_TOLERANCE = 0.15
#: Relative spread of per-round latency medians above which a timing is called noisy.
NOISY_SPREAD = 0.5
REFERENCE_DEFAULT = "default"
#: CPU threads of the whole study (training, evaluation, timing): on a 2-core machine shared with other
#: jobs, two threads per process made step and inference times swing up to 30-fold (see BUDGET_OVERRIDES).
STUDY_THREADS = 1
#: Threads for work that is not timed (scoring the test set): torch's own default, one per core.
MACHINE_THREADS = torch.get_num_threads()


@dataclass(frozen=True)
class StudyPreset:
    """What a study trains, at which budget(s), and how deeply it analyses."""

    name: str
    description: str
    models: tuple[str, ...]
    seeds: int
    """Seeds per model (from ``--seed``)."""
    budgets: tuple[str, ...] = ()
    """Training budgets (``10s``, ``2epochs``); empty: each model's recipe as it is (``full``)."""
    use_recipes: bool = False
    """Start each model from its shipped recipe (configs/<model>.yaml) instead of the defaults."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Config overrides: key ``*`` for every model, or a model name."""
    train_limit: int | None = None
    """Use only the first N training images (smoke tests)."""
    analysis_images: int = 2000
    """Test images used for the robustness sweeps."""
    corruption_images: int = 1000
    """Test images (the first N) corrupted by the 15 MNIST-C corruptions for the robustness section:
    corrupted once, seeded with the study's first seed, and scored for every model."""
    detail_models: int = 3
    """How many of the most accurate models get error and sensitivity analysis."""
    speed_repeats: int = 30
    """Batch-1 latency calls per model, spread over 5 interleaved rounds."""
    throughput_images: int = 1000
    """Batch size of the throughput measurement (one call per round)."""
    n_boot: int = 1000


PRESETS: dict[str, StudyPreset] = {
    "smoke": StudyPreset(
        "smoke", "seconds: 4 small models × 2 seeds at 2 s each on 4,000 training images (used by the tests)",
        models=("mlp-basic-128", "mlp-128-64", "cnn-simple", "logreg"), seeds=2, budgets=("2s",),
        overrides={"*": {**BUDGET_OVERRIDES, "val_max_images": 300}}, train_limit=4000, analysis_images=300,
        corruption_images=300, detail_models=2, speed_repeats=5, throughput_images=300, n_boot=200,
    ),
    "quick": StudyPreset(
        "quick", "the whole zoo (15 models) at one equal budget of 8 s of training per run, 2 seeds: "
                 "4 minutes of training (15 models × 2 seeds × 8 s), plus evaluation",
        models=ZOO, seeds=2, budgets=("8s",), overrides={"*": dict(BUDGET_OVERRIDES)},
        analysis_images=300, corruption_images=300, detail_models=3, speed_repeats=20, throughput_images=500,
        n_boot=1000,
    ),
    "standard": StudyPreset(
        "standard", "the whole zoo at three budgets (15 s, 60 s, 240 s per run), 1 seed: accuracy-vs-budget "
                    "curves and where rankings cross; 79 minutes of training alone (15 models × 315 s)",
        models=ZOO, seeds=1, budgets=("15s", "60s", "240s"), overrides={"*": dict(BUDGET_OVERRIDES)},
        analysis_images=1000, detail_models=3, speed_repeats=30, n_boot=1000,
    ),
    "full": StudyPreset(
        "full", "the reference notebooks' own recipes (configs/<model>.yaml), 3 seeds: hours on a CPU, "
                "meant for a GPU or a long run",
        models=ZOO, seeds=3, use_recipes=True, overrides={"*": {"tensorboard": True}},
        analysis_images=10000, detail_models=4, speed_repeats=100, n_boot=2000,
    ),
}


@dataclass
class StudySettings:
    """The effective settings of one study: its preset with the command-line overrides applied."""

    preset: str
    models: list[str]
    seeds: list[int]
    budgets: list[str]
    """Budget labels; empty for recipe runs (``full``)."""
    dataset: str = "mnist"
    include: list[str] = field(default_factory=list)
    """Runs scored as reference rows (besides the shipped model)."""
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_settings(preset: StudyPreset, *, models: list[str] | None = None, dataset: str | None = None,
                  budgets: list[str] | None = None, seeds: int | None = None, seed: int = 0,
                  include: list[str] | None = None, device: str = "auto") -> StudySettings:
    """Apply the command-line overrides to a preset (names checked, budgets parsed)."""
    from digitlab.models import model_info

    chosen = list(models) if models else list(preset.models)
    for m in chosen:
        model_info(m)  # one-line error for an unknown name
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"--models lists a model twice: {','.join(chosen)}")
    n = preset.seeds if seeds is None else seeds
    if n < 1:
        raise ConfigError(f"--seeds must be >= 1, got {n}")
    labels = [parse_budget(b).label for b in (budgets or preset.budgets)]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"a budget is given twice: {','.join(labels)}")
    return StudySettings(preset.name, chosen, list(range(seed, seed + n)), labels, dataset or "mnist",
                         list(include or []), device)


@dataclass(frozen=True)
class PlannedRun:
    model: str
    seed: int
    budget: str | None
    name: str


def plan_runs(preset: StudyPreset, settings: StudySettings | None = None) -> list[PlannedRun]:
    """Every run of the study, in training order (budget by budget, model by model, seed by seed)."""
    st = settings or make_settings(preset)
    budgets: list[str | None] = list(st.budgets) or [None]
    out = []
    for budget in budgets:
        for model in st.models:
            for seed in st.seeds:
                out.append(PlannedRun(model, seed, budget, run_name(model, seed, budget if len(budgets) > 1 else None)))
    return out


def run_name(model: str, seed: int, budget: str | None = None) -> str:
    return f"{model}-{budget}-s{seed}" if budget else f"{model}-s{seed}"


def base_config(preset: StudyPreset, settings: StudySettings, model: str, seed: int) -> Any:
    """The run's config before its budget is applied."""
    from digitlab.train.config import TrainConfig
    from digitlab.train.recipes import load_config

    over = {**preset.overrides.get("*", {}), **preset.overrides.get(model, {})}
    base = load_config(model) if preset.use_recipes else TrainConfig(model=model)
    return base.override(model=model, seed=seed, dataset=settings.dataset, device=settings.device, **over)


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[study] {message}", file=sys.stderr, flush=True)


class Study:
    """State and steps of one study directory."""

    def __init__(self, out: str | os.PathLike[str], preset: StudyPreset, settings: StudySettings,
                 data_dir: str | None = None, quiet: bool = False) -> None:
        self.out, self.preset, self.settings = Path(out), preset, settings
        self.data_dir, self.quiet = data_dir, quiet
        self.state: dict[str, Any] = {"preset": preset.name, "settings": settings.to_dict(), "steps": {},
                                      "plans": {}, "created": time.time()}

    # --- state ---------------------------------------------------------------
    def save_state(self) -> None:
        write_json_atomic(self.out / "study.json", self.state)

    def step_done(self, name: str, seconds: float) -> None:
        self.state["steps"][name] = {"done": True, "seconds": seconds}
        self.save_state()

    def plan(self, model: str, budget: str | None) -> BudgetPlan | None:
        raw = self.state["plans"].get(f"{model}@{budget}")
        return BudgetPlan.from_dict(raw) if raw else None

    # --- steps -----------------------------------------------------------------
    def load_data(self) -> Any:
        from digitlab.data import Dataset, load_dataset

        ds = load_dataset(self.settings.dataset, self.data_dir, progress=not self.quiet)
        if self.preset.train_limit:
            n = self.preset.train_limit
            ds = Dataset(ds.name, ds.spec, ds.source, ds.train_images[:n], ds.train_labels[:n],
                         ds.test_images, ds.test_labels, ds.checksums)
        return ds

    def explore(self, ds: Any) -> dict[str, Any]:
        from digitlab.analysis.explore import explore_dataset, explore_figures

        folder = self.out / "explore"
        cached = folder / "explore.json"
        if cached.is_file():
            stats = json.loads(cached.read_text())
        else:
            stats = explore_dataset(ds)
            folder.mkdir(parents=True, exist_ok=True)
            for name, png in explore_figures(ds, stats).items():
                write_bytes_atomic(folder / f"{name}.png", png)
            write_json_atomic(cached, stats)
        figures = {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))}
        return {"stats": stats, "figures": figures}

    def budget_plan(self, ds: Any, model: str, budget: str, seed: int) -> BudgetPlan:
        """The measured (or cached) plan for ``model`` at ``budget``; one per model and budget."""
        cached = self.plan(model, budget)
        if cached is not None:
            return cached
        cfg = base_config(self.preset, self.settings, model, seed)
        log(f"  measure {model} for a {budget} budget", self.quiet)
        plan = plan_budget(cfg, budget, ds, device=self.settings.device)
        self.state["plans"][f"{model}@{budget}"] = plan.to_dict()
        self.save_state()
        return plan

    def train_all(self, ds: Any) -> list[PlannedRun]:
        from digitlab.train.run import train_run

        plan = plan_runs(self.preset, self.settings)
        for i, run in enumerate(plan, 1):
            run_dir = self.out / "runs" / run.name
            if (run_dir / MODEL_FILE).is_file():
                log(f"train {i}/{len(plan)}: {run.name} already finished", self.quiet)
                continue
            resume = (run_dir / RESUME_FILE).is_file()
            if run_dir.exists() and not resume:
                shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
            cfg = None
            if not resume:
                cfg = base_config(self.preset, self.settings, run.model, run.seed)
                if run.budget is not None:
                    bp = self.budget_plan(ds, run.model, run.budget, self.settings.seeds[0])
                    cfg = cfg.override(**bp.changes)
            log(f"train {i}/{len(plan)}: {run.name}" + (" (resuming)" if resume else ""), self.quiet)
            # the evaluate step scores the test set once, with every metric: don't do it twice
            train_run(cfg, run_dir, resume=resume, dataset=ds, progress=not self.quiet, evaluate_test=False)
        return plan

    def references(self) -> list[tuple[str, str]]:
        """(name, source) of the reference rows: the shipped model (when it matches the dataset) and
        every ``--include`` run."""
        refs: list[tuple[str, str]] = []
        try:
            if source_dataset(REFERENCE_DEFAULT) == self.settings.dataset:
                refs.append(("default (shipped)", REFERENCE_DEFAULT))
        except Exception:  # noqa: BLE001 - the shipped model is optional here; the report says so
            pass
        for src in self.settings.include:
            refs.append((f"{Path(src).name or src} (included)", src))
        return refs

    def evaluate_all(self, ds: Any, runs: list[PlannedRun]) -> tuple[list[RunEvaluation],
                                                                     dict[str, torch.nn.Module]]:
        folder = self.out / "evals"
        folder.mkdir(parents=True, exist_ok=True)
        evals: list[RunEvaluation] = []
        models: dict[str, torch.nn.Module] = {}
        names = list(ds.spec.class_names)
        labels = ds.test_labels.numpy()
        todo: list[tuple[str, str, bool, str | None]] = [
            (r.name, str(self.out / "runs" / r.name), False, r.budget) for r in runs]
        todo += [(name, src, True, None) for name, src in self.references()]
        for i, (name, src, reference, budget) in enumerate(todo, 1):
            stem = name.replace(" ", "_").replace("(", "").replace(")", "")
            js, pr = folder / f"{stem}.json", folder / f"{stem}.probs.safetensors"
            if js.is_file() and pr.is_file():
                ev = RunEvaluation.from_record(json.loads(js.read_text()), load_np(str(pr))["probs"], labels)
                from digitlab.checkpoint import load_checkpoint

                model, _ = load_checkpoint(src)
            else:
                log(f"evaluate {i}/{len(todo)}: {name}", self.quiet)
                # scoring the test set is not timed for any comparison: it may use every core
                with torch_threads(MACHINE_THREADS):
                    ev, model = evaluate_source(src, ds.test_images, ds.test_labels, names, name=name,
                                                reference=reference, budget=budget)
                with atomic_path(pr) as tmp:
                    save_np({"probs": ev.probs.astype(np.float32)}, str(tmp))
                rec = ev.record()
                rec["speed"] = None
                write_json_atomic(js, rec)
            evals.append(ev)
            models[ev.name] = model
        return evals, models

    def measure_speed(self, ds: Any, evals: list[RunEvaluation], models: dict[str, torch.nn.Module]) -> None:
        """Latency and throughput of one run per model (and each reference), interleaved in rounds;
        every run of a model gets its model's figures. Cached in speed.json."""
        cache = self.out / "speed.json"
        if cache.is_file():
            profiles = {k: SpeedProfile(**v) for k, v in json.loads(cache.read_text()).items()}
        else:
            timed: dict[str, torch.nn.Module] = {}
            for ev in evals:
                key = row_key(ev)
                if key not in timed:
                    timed[key] = models[ev.name]
            log(f"time {len(timed)} models in interleaved rounds", self.quiet)
            stand_in = [replace(ev, name=row_key(ev)) for ev in evals]
            measure_speeds(stand_in, timed, ds.test_images, repeats=self.preset.speed_repeats,
                           batch_size=self.preset.throughput_images)
            profiles = {ev.name: ev.speed for ev in stand_in if ev.speed is not None}
            write_json_atomic(cache, {k: v.to_dict() for k, v in profiles.items()})
        for ev in evals:
            ev.speed = profiles.get(row_key(ev))

    def analyse(self, ds: Any, evals: list[RunEvaluation], models: dict[str, torch.nn.Module],
                comparison: Comparison) -> dict[str, Any]:
        from digitlab.analysis import corruptions, mistakes, robustness, sensitivity

        n = min(self.preset.analysis_images, ds.test_images.shape[0])
        images, labels = ds.test_images[:n], ds.test_labels[:n]
        first = _first_runs(evals)
        out: dict[str, Any] = {"robustness": {}, "detail": {}, "analysis_images": n}
        nc = min(self.preset.corruption_images, ds.test_images.shape[0])
        seed = self.settings.seeds[0]
        log(f"corruptions: 15 MNIST-C corruptions of {nc:,} test images (seed {seed})", self.quiet)
        corrupted = corruptions.corrupt_set(ds.test_images[:nc], ds.test_labels[:nc], seed=seed)
        out["corruptions"] = {
            "n": nc, "seed": seed, "severity": corrupted.severity, "corrupt_seconds": corrupted.seconds,
            "parameters": {k: corruptions.CORRUPTIONS[k].parameter for k in corrupted.corrupted},
            "models": {key: corruptions.score_corrupted(models[ev.name], corrupted).to_dict()
                       for key, ev in first.items()},
        }
        for key, ev in first.items():
            log(f"robustness: {key}", self.quiet)
            model = models[ev.name]
            out["robustness"][key] = {
                "noise": robustness.noise_robustness(model, images, labels),
                "rotation": robustness.rotation_robustness(model, images, labels),
                "shift": robustness.shift_robustness(model, images, labels),
            }
        for row in comparison.models[: self.preset.detail_models]:
            ev = first[row.model]
            log(f"errors and sensitivity: {row.model}", self.quiet)
            model = models[ev.name]
            summary = mistakes.error_summary(ev.probs, ev.labels, list(ds.spec.class_names))
            wrong = mistakes.misclassified(ev.probs, ev.labels, limit=24)
            probe_idx = torch.as_tensor(np.concatenate([wrong["index"][:4], np.arange(4)])).long()
            probe = ds.test_images[probe_idx]
            detail = {"errors": summary, "misclassified": wrong,
                      "confidence": mistakes.confidence_right_wrong(ev.probs, ev.labels),
                      "probe_index": probe_idx.tolist()}
            if getattr(model, "uses_gradient", True):
                detail["saliency"] = sensitivity.saliency_maps(model, probe)
                detail["integrated_gradients"] = sensitivity.integrated_gradients(model, probe, steps=32)
            detail["occlusion"] = sensitivity.occlusion(model, probe, patch=4, stride=2)
            out["detail"][row.model] = detail
        return out


def _first_runs(evals: list[RunEvaluation]) -> dict[str, RunEvaluation]:
    first: dict[str, RunEvaluation] = {}
    for ev in evals:
        first.setdefault(row_key(ev), ev)
    return first


# --- derived facts -----------------------------------------------------------------------------------------
@dataclass
class Alert:
    kind: str
    """undertrained, still-improving, tie, noisy-timing, reduced-baseline, off-budget, reference."""
    model: str | None
    message: str


def learning_curve(meta: dict[str, Any]) -> list[tuple[int, float]]:
    """(step, validation accuracy) points of a run's history."""
    pts = [(int(h.get("step") or 0), float(h["val_accuracy"])) for h in meta.get("history") or []
           if h.get("val_accuracy") is not None]
    return sorted(dict(pts).items())


def still_improving(meta: dict[str, Any], threshold: float = IMPROVING) -> float | None:
    """Validation-accuracy gain over the last quarter of the run (None when it is below ``threshold``
    or the run has fewer than 3 validation points)."""
    pts = learning_curve(meta)
    if len(pts) < 3:
        return None
    last_step, last_acc = pts[-1]
    earlier = [acc for step, acc in pts if step <= 0.75 * last_step] or [pts[0][1]]
    gain = last_acc - earlier[-1]
    return gain if gain > threshold else None


def build_alerts(study: Study, evals: list[RunEvaluation], comparison: Comparison,
                 main_budget: str | None) -> list[Alert]:
    alerts: list[Alert] = []
    first = _first_runs(evals)
    for row in comparison.models:
        ev = first[row.model]
        if row.reference:
            continue
        chance = 1.0 / max(1, ev.metrics.num_classes)
        if row.steps and row.accuracy_mean < 2 * chance:
            alerts.append(Alert("undertrained", row.model,
                                f"{row.model} did not learn within the budget: {row.steps:,} steps "
                                f"({row.epochs_trained or 0:.2f} epochs) left it at {row.accuracy_mean:.1%}, near "
                                f"chance ({chance:.0%}); its rank says nothing about the architecture — give it a "
                                f"larger budget (--budget, or the standard preset)"))
            continue
        gain = still_improving(ev.meta)
        if gain is not None:
            alerts.append(Alert("still-improving", row.model,
                                f"{row.model} was still improving when its budget ran out: validation accuracy "
                                f"rose {gain * 100:.1f} points over the last quarter of its run (rule: more than "
                                f"{IMPROVING * 100:.1f} points); a larger budget would likely change its rank"))
    for rec in comparison.recommendations:
        if not rec.decided:
            alerts.append(Alert("tie", rec.model, f"{rec.role}: {rec.model} is tied with {', '.join(rec.tied_with)} "
                                                  f"— the measurement cannot separate them"))
    for row in comparison.models:
        if row.latency_ms_p50 and row.latency_ms_low is not None and row.latency_ms_high is not None:
            spread = (row.latency_ms_high - row.latency_ms_low) / row.latency_ms_p50
            if spread > NOISY_SPREAD:
                alerts.append(Alert("noisy-timing", row.model,
                                    f"{row.model}: batch-1 latency varied from {row.latency_ms_low:.3f} to "
                                    f"{row.latency_ms_high:.3f} ms between rounds (median {row.latency_ms_p50:.3f}); "
                                    f"the rounds disagree, so latency comparisons with it are weak"))
    budgets = [main_budget] if main_budget else []
    for b in budgets:
        for model in study.settings.models:
            bp = study.plan(model, b)
            if bp is not None and bp.reduced:
                alerts.append(Alert("reduced-baseline", model, f"{model}: fitted with a reduced solver to fit the "
                                                               f"{b} budget — {bp.note}"))
        budget = parse_budget(b) if b else None
        if budget is not None and budget.kind == "seconds":
            for row in comparison.models:
                if row.reference or row.train_seconds_mean is None or not row.steps:
                    continue
                off = row.train_seconds_mean / budget.value - 1
                if abs(off) > BUDGET_TOLERANCE:
                    alerts.append(Alert("off-budget", row.model,
                                        f"{row.model} trained {row.train_seconds_mean:.1f} s for a {budget.label} "
                                        f"budget ({off:+.0%}): the machine's speed changed faster than the run "
                                        f"could re-plan its step count"))
    if study.settings.dataset != "mnist" and not any(r.model.startswith("default") for r in comparison.models):
        alerts.append(Alert("reference", None, f"the shipped model was trained on MNIST, so it is not a reference "
                                               f"row in this {study.settings.dataset} study"))
    return alerts


def train_command(study: Study, row: ModelRow) -> str:
    """The command that trains ``row``'s model as this study did (the run's saved config)."""
    if row.reference:
        return ""
    return f"digitlab train --config {study.out / 'runs' / row.run / CONFIG_FILE} --out runs/{row.model}"


# --- figures -------------------------------------------------------------------------------------------------
def learning_curves_png(curves: dict[str, list[tuple[float, float]]], xlabel: str, title: str) -> bytes:
    from digitlab.analysis import plots

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, pts in curves.items():
        if pts:
            ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if curves:
        ax.legend(fontsize=7, ncol=2)
    return plots.fig_to_png(fig)


def budget_curves_png(points: dict[str, list[tuple[float, float]]], labels: list[str]) -> bytes:
    from digitlab.analysis import plots

    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for name, pts in points.items():
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", ms=4, label=name)
    xs = sorted({p[0] for pts in points.values() for p in pts})
    ax.set_xscale("log")
    ax.set_xticks(xs, labels[: len(xs)])
    ax.set_xlabel("training budget per run")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs training budget", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return plots.fig_to_png(fig)


def _budget_x(label: str) -> float:
    b = parse_budget(label)
    return b.value


# --- the report ------------------------------------------------------------------------------------------------
def build_report(study: Study, ds: Any, explore: dict[str, Any], evals: list[RunEvaluation],
                 comparisons: dict[str, Comparison], main: str, analysis: dict[str, Any],
                 wall_seconds: float) -> tuple[str, dict[str, Any]]:
    """Render report.html (verdict first, data exploration last) and the matching report.json content."""
    from digitlab.analysis import plots
    from digitlab.bench.harness import machine_info

    preset, st = study.preset, study.settings
    comparison = comparisons[main]
    budget = parse_budget(main) if main != "recipe" else None
    names = list(ds.spec.class_names)
    machine = machine_info()
    at_main = [e for e in evals if e.reference or (e.budget or "recipe") == main]
    alerts = build_alerts(study, at_main, comparison,
                          main if budget else None)
    budget_words = budget.describe() if budget else "each model's own recipe"
    command = study_command(study)
    rep = Report("digitlab study report",
                 f"{command} — {len(st.models)} models × {len(st.seeds)} seed(s) at "
                 f"{', '.join(st.budgets) or 'recipes'} "
                 f"on {ds.name}; wall time {wall_seconds / 60:.1f} min; "
                 f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    # --- 1. verdict ------------------------------------------------------------------------------------
    s = rep.section("verdict", "Verdict")
    s.text(f"Every model below was trained by this study with the same budget: {budget_words} per run "
           f"({len(st.seeds)} seed(s)); the learning-rate schedule of each run ends with its budget. Which model "
           f"to use, by need:")
    rows = []
    for rec in comparison.recommendations:
        row = comparison.model(rec.model)
        verdict = rec.model if rec.decided else f"tied: {', '.join([rec.model, *rec.tied_with])}"
        rows.append([rec.role, verdict, f"{row.accuracy_mean:.2%}", f"{row.parameters:,}",
                     fmt(row.latency_ms_p50, 3), rec.reason, train_command(study, row)])
    s.table(["need", "recommended", "accuracy", "parameters", "latency ms", "evidence", "train it"], rows,
            css="verdict")
    refs = [m for m in comparison.models if m.reference]
    if refs:
        s.items([f"Reference, not trained by this study: {m.model} — {m.accuracy_mean:.2%} test accuracy, "
                 f"{m.parameters:,} parameters, trained for {m.trained_for}." for m in refs], css="ref")
    s.text("Rules: " + "; ".join(f"{r.role}: {r.rule}" for r in comparison.recommendations) + ".", note=True)
    s.text(caveat_text(budget), note=True)

    # --- 2. alerts -------------------------------------------------------------------------------------
    s = rep.section("alerts", f"Alerts ({len(alerts)})")
    if alerts:
        s.items([a.message for a in alerts], css="alerts")
    else:
        s.text("None: no model was still improving at the end of its budget, no recommendation is a tie, "
               "timings were steady and no baseline was cut short.")

    # --- 3. comparison table ---------------------------------------------------------------------------
    s = rep.section("comparison", "Comparison")
    headers = ["model", "trained by", "accuracy", "± std (seeds)", "95% CI", "seeds", "parameters", "train s",
               "steps", "epochs", "latency ms (p50)", "latency range ms", "images/s", "budget / training"]
    table = []
    for m in comparison.models:
        table.append([m.model, "reference" if m.reference else "this study", 100 * m.accuracy_mean,
                      None if m.accuracy_std is None else 100 * m.accuracy_std,
                      f"{100 * m.ci_low:.2f}–{100 * m.ci_high:.2f}", len(m.seeds), m.parameters,
                      m.train_seconds_mean, m.steps, m.epochs_trained, m.latency_ms_p50,
                      f"{fmt(m.latency_ms_low, 3)}–{fmt(m.latency_ms_high, 3)}", m.throughput_per_s,
                      m.trained_for if m.reference else (m.budget or "recipe")])
    s.table(headers, table, digits=[0, 0, 2, 2, 0, 0, 0, 1, 0, 2, 3, 0, 0, 0], sortable=True)
    s.text(f"Accuracy in %, on the {comparison.n_test:,} test images (mean over seeds); CI: bootstrap 95% interval "
           f"of the first seed ({preset.n_boot:,} resamples). train s: seconds spent in optimizer steps "
           f"(validation excluded). Latency: batch 1 on {machine['cpu'] or 'this CPU'}, median over 5 interleaved "
           f"rounds of {preset.speed_repeats} calls in total, with the lowest and highest round. Images/s: "
           f"throughput at batch {preset.throughput_images:,}, median over the rounds. Click a header to sort.",
           note=True)

    # --- 4. figures ------------------------------------------------------------------------------------
    s = rep.section("figures", "Accuracy vs budget and vs latency")
    if len(comparisons) > 1:
        pts: dict[str, list[tuple[float, float]]] = {}
        for label, comp in comparisons.items():
            for m in comp.models:
                if not m.reference:
                    pts.setdefault(m.model, []).append((_budget_x(label), m.accuracy_mean))
        s.figure(budget_curves_png(pts, list(comparisons)), "accuracy vs budget (test accuracy per budget)",
                 width=640)
    first_main = _first_runs([e for e in at_main if not e.reference])
    curves = {}
    for key, ev in first_main.items():
        pts_ = learning_curve(ev.meta)
        total = max((p[0] for p in pts_), default=0)
        secs = comparison.model(key).train_seconds_mean
        if pts_ and total and secs:
            curves[key] = [(step / total * secs, acc) for step, acc in pts_]
    if curves:
        s.figure(learning_curves_png(curves, "seconds of training (fraction of the budget)",
                                     "Accuracy vs training time within the budget (validation, seed 0)"),
                 "accuracy vs budget within each run (learning curves)", width=640)
        s.text("Intermediate points are taken before the learning rate has decayed, so they understate what a "
               "run given that smaller budget would reach; the last point of each curve is the run's result.",
               note=True)
    points = [{"name": m.model, "accuracy": m.accuracy_mean, "parameters": m.parameters,
               "latency_ms": m.latency_ms_p50} for m in comparison.models if m.latency_ms_p50 is not None]
    if points:
        s.figure(plots.pareto_png(points, title="Accuracy vs size and latency (Pareto front dashed)"),
                 "accuracy vs latency (pareto)", width=720)

    # --- 5. robustness to corruptions (MNIST-C) ------------------------------------------------------------
    s = rep.section("corruptions", "Robustness: corruptions (MNIST-C)")
    _corruptions(s, ds, analysis, [m.model for m in comparison.models])

    # --- 6. per-model detail ------------------------------------------------------------------------------
    s = rep.section("models", "Per-model detail")
    first = _first_runs(at_main)
    for m in comparison.models:
        ev = first[m.model]
        met = ev.metrics
        d = s.details(f"{m.model}: {m.accuracy_mean:.2%}" + (" (reference)" if m.reference else ""))
        d.table(["item", "value"], [
            ["trained", "reference, not trained by this study" if m.reference else f"by this study, {m.budget}"],
            ["training", m.trained_for], ["parameters", m.parameters],
            ["checkpoint bytes", m.checkpoint_bytes], ["top-3 accuracy", f"{met.top3:.2%}"],
            ["log-loss", met.log_loss], ["ECE", met.ece],
            ["stopped because", (ev.meta.get("metrics") or {}).get("stop_reason") or "—"],
            ["command", train_command(study, m) or "—"]], kv=True)
        curve = learning_curve(ev.meta)
        if len(curve) > 1:
            d.figure(learning_curves_png({m.model: [(float(a), b) for a, b in curve]}, "step",
                                         f"{m.model}: validation accuracy"), f"learning curve {m.model}", width=420)
        cm = d.details(f"confusion matrix and per-class metrics of {m.model}")
        cm.figure(plots.confusion_matrix_png(met.confusion_matrix, names, title=f"{ev.name} (counts)"),
                  f"confusion matrix {ev.name}", width=360)
        cm.figure(plots.reliability_png(met.reliability, title=f"{ev.name} reliability"),
                  f"reliability {ev.name}", width=300)
        cm.table(["class", "precision", "recall", "F1", "support"],
                 [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in met.per_class])
        detail = analysis["detail"].get(m.model)
        if detail:
            _error_detail(d.details(f"mistakes and sensitivity maps of {m.model}"), ds, m.model, detail, names)

    # --- 7. robustness and statistics ------------------------------------------------------------------------
    s = rep.section("robustness", "Robustness: noise, rotation, shift")
    _robustness(s, analysis)
    s = rep.section("statistics", "Statistics")
    _statistics(s, comparison, evals)

    # --- 8. data exploration (last) ------------------------------------------------------------------------
    s = rep.section("data", "Data exploration")
    _data(s, explore, names)

    s = rep.section("about", "How this study was run")
    s.table(["item", "value"], [
        ["command", command], ["preset", f"{preset.name} — {preset.description}"],
        ["dataset", f"{ds.name} from {ds.source} ({ds.train_images.shape[0]:,} train / "
                    f"{ds.test_images.shape[0]:,} test images)"],
        ["budgets", ", ".join(st.budgets) or "recipes"], ["seeds", ", ".join(map(str, st.seeds))],
        ["machine", f"{machine['cpu']}, {machine['torch_threads']} torch threads, torch {machine['torch']}"],
        ["wall time", f"{wall_seconds:,.0f} s"]], kv=True)
    s.table(["model", "budget", "how the budget was applied"],
            [[bp.model, bp.budget, bp.note] for bp in (BudgetPlan.from_dict(v) for v in study.state["plans"].values())])
    s.text("The test set was used only for final evaluation (no model selection on it).", note=True)

    data = to_jsonable({
        "preset": asdict(preset), "settings": st.to_dict(), "command": command, "wall_seconds": wall_seconds,
        "machine": machine, "main_budget": main,
        "dataset": {"name": ds.name, "source": str(ds.source), "checksums": ds.checksums},
        "comparison": comparison.to_dict(),
        "comparisons_by_budget": {k: v.to_dict() for k, v in comparisons.items()} if len(comparisons) > 1 else None,
        "budget_plans": study.state["plans"],
        "alerts": [asdict(a) for a in alerts],
        "evaluations": {ev.name: {k: v for k, v in ev.metrics.to_dict().items() if k != "classification_report"}
                        for ev in evals},
        "learning_curves": {ev.name: learning_curve(ev.meta) for ev in evals if not ev.reference},
        "robustness": analysis["robustness"],
        "corruptions": analysis.get("corruptions"),
        "errors": {m: d["errors"] for m, d in analysis["detail"].items()},
        "explore": explore["stats"],
    })
    return rep.render(), data


def caveat_text(budget: Budget | None) -> str:
    """The report's caveat about what an equal-budget ranking means, from the measured rank agreement
    when ``results/study_rank_agreement.json`` is present beside the package (scripts/measure_study.py)."""
    base = ("The ranking holds for this budget on this machine: a model's step rate decides how much it learns "
            "in a time budget, so a faster machine, a larger budget or the notebooks' full recipes can reorder "
            "the models (see the alerts for models still improving).")
    path = Path(__file__).resolve().parents[3] / "results" / "study_rank_agreement.json"
    try:
        agreement = json.loads(path.read_text())
    except (OSError, ValueError):
        return base
    if not isinstance(agreement, dict):
        return base
    # written by the script itself, or wrapped as {command, wall_seconds, result} by readme_figures.py
    agreement = agreement.get("result", agreement)
    rho = agreement.get("spearman_rho")
    if rho is None or agreement.get("preset") != "quick":
        return base
    words = "closely" if rho >= 0.9 else "largely" if rho >= 0.7 else "only loosely"
    top1 = "the same" if agreement.get("top1_agree") else "a different"
    return (f"{base} Measured: the quick ranking agreed {words} with the same study at "
            f"{agreement.get('factor', 4):g}× the budget "
            f"(Spearman ρ = {rho:.2f}; {top1} most accurate model; top-3 "
            f"{'the same' if agreement.get('top3_agree') else 'different'}).")


def study_command(study: Study) -> str:
    st, preset = study.settings, study.preset
    parts = ["digitlab study", f"--preset {preset.name}"]
    if st.models != list(preset.models):
        parts.append(f"--models {','.join(st.models)}")
    if st.budgets != list(preset.budgets):
        parts.append(f"--budget {','.join(st.budgets)}")
    if len(st.seeds) != preset.seeds:
        parts.append(f"--seeds {len(st.seeds)}")
    if st.seeds and st.seeds[0] != 0:
        parts.append(f"--seed {st.seeds[0]}")
    if st.dataset != "mnist":
        parts.append(f"--dataset {st.dataset}")
    parts += [f"--include {i}" for i in st.include]
    parts.append(f"--out {study.out}")
    return " ".join(parts)


def _error_detail(s: Section, ds: Any, name: str, d: dict[str, Any], names: list[str]) -> None:
    from digitlab.analysis import plots

    wrong = d["misclassified"]
    idx = np.asarray(wrong["index"], dtype=int)
    s.heading(f"{name}: {d['errors']['errors']} errors of {d['errors']['n']}")
    if idx.size:
        s.figure(plots.misclassified_grid_png(ds.test_images[torch.as_tensor(idx)].numpy(), wrong["true"],
                                              wrong["pred"], wrong["confidence"], names),
                 f"most confident mistakes of {name}", width=560)
    s.figure(plots.confidence_hist_png(d["confidence"]["correct"], d["confidence"]["wrong"],
                                       title=f"{name}: confidence right vs wrong"),
             f"confidence histogram {name}", width=360)
    s.table(["true", "predicted", "count"], [[p["true_name"], p["pred_name"], p["count"]]
                                            for p in d["errors"]["most_confused"]], caption="most-confused pairs")
    probe = ds.test_images[torch.as_tensor(d["probe_index"])].numpy()
    titles = [f"#{i}" for i in d["probe_index"]]
    s.text("Saliency |∂logit/∂x|, integrated gradients (32 steps, black baseline) and occlusion (4×4 patch, "
           "stride 2: drop of the predicted class probability) for four misclassified and four ordinary test "
           "images.", note=True)
    if "saliency" in d:
        s.figure(plots.heatmap_grid_png(probe, d["saliency"], titles, ncols=8), f"{name}: saliency", width=720)
        s.figure(plots.heatmap_grid_png(probe, d["integrated_gradients"]["attributions"], titles, ncols=8,
                                        signed=True), f"{name}: integrated gradients", width=720)
    s.figure(plots.heatmap_grid_png(probe, d["occlusion"]["map"], titles, ncols=8), f"{name}: occlusion", width=720)


def _robustness(s: Section, analysis: dict[str, Any]) -> None:
    from digitlab.analysis import plots

    rob = analysis["robustness"]
    if not rob:
        return
    any_model = next(iter(rob.values()))
    s.figure(plots.noise_curve_png(any_model["noise"]["std"], {m: r["noise"]["accuracy"] for m, r in rob.items()}),
             "accuracy vs Gaussian noise σ", width=520)
    s.figure(plots.curves_png(any_model["rotation"]["angle"], {m: r["rotation"]["accuracy"] for m, r in rob.items()},
                              xlabel="rotation (degrees)", title="accuracy vs rotation"),
             "accuracy vs rotation", width=520)
    s.figure(plots.curves_png(any_model["shift"]["shift"], {m: r["shift"]["accuracy"] for m, r in rob.items()},
                              xlabel="shift (pixels)", title="accuracy vs shift"),
             "accuracy vs shift", width=520)
    s.table(["model", "clean accuracy", "robustness score", "acc. at σ=0.5", "acc. at ±30°", "acc. at 3 px"],
            [[m, r["noise"]["clean_accuracy"], r["noise"]["score"], r["noise"]["accuracy"][-1],
              _at(r["rotation"], "angle", 30), _at(r["shift"], "shift", 3)] for m, r in rob.items()],
            sortable=True)
    s.text(f"On the first {analysis['analysis_images']:,} test images. Robustness score: area under accuracy "
           "vs σ divided by clean accuracy × σ range (1 = unaffected by noise).", note=True)


def _corruptions(s: Section, ds: Any, analysis: dict[str, Any], order: list[str]) -> None:
    """Accuracy of every model under each of the 15 MNIST-C corruptions and their mean, on one corrupted
    subset of the test set (the same corrupted images for every model)."""
    from digitlab.analysis import corruptions

    c = analysis.get("corruptions")
    if not c or not c["models"]:
        s.text("Not measured.")
        return
    results = c["models"]
    rows_order = [m for m in order if m in results] + [m for m in results if m not in order]
    names = list(next(iter(results.values()))["per_corruption"])
    s.text(f"Accuracy (%) on the first {c['n']:,} test images under each of the 15 corruptions of MNIST-C (Mu & "
           f"Gilmer 2019) at severity {c['severity']:g}, seed {c['seed']}: the same corrupted images for every "
           "model. Mean: the MNIST-C summary (mean over the 15). Sorted as the comparison table; click a header "
           "to sort.")
    s.table(["model", "clean", "mean", *[n.replace("_", " ") for n in names]],
            [[m, 100 * results[m]["clean_accuracy"], 100 * results[m]["mean"],
              *[100 * results[m]["per_corruption"][n] for n in names]] for m in rows_order],
            digits=[0, 2, 2, *[1] * len(names)], sortable=True)
    s.figure(corruptions.examples_png(ds.test_images[:3], names, c["severity"], c["seed"],
                                      title="The corruptions on three test images"),
             "corruption examples", width=720)
    s.text("Each corruption's parameter at severity 1: " + "; ".join(f"{k.replace('_', ' ')}: {v}"
                                                                     for k, v in c["parameters"].items()) + ".",
           note=True)


def _statistics(s: Section, comparison: Comparison, evals: list[RunEvaluation]) -> None:
    s.heading("McNemar's test for every pair (first seeds)")
    s.table(["model A", "model B", "acc A", "acc B", "A right, B wrong", "A wrong, B right", "p-value",
             "significant", "Δacc 95% CI (paired bootstrap)"],
            [[p.a, p.b, p.accuracy_a, p.accuracy_b, p.b_count, p.c_count, p.p_value, p.significant,
              f"{p.diff_ci_low:+.4f} … {p.diff_ci_high:+.4f}"] for p in comparison.mcnemar], sortable=True)
    ms = comparison.multi_seed
    if ms:
        fr = ms.get("friedman")
        if fr:
            s.text(f"Friedman test over {fr['k']} models × {fr['n_blocks']} seeds: χ² = {fr['statistic']:.3f}, "
                   f"p = {fr['p_value']:.4g}.")
        ne = ms.get("nemenyi")
        if ne:
            s.text(f"Nemenyi critical difference (α = {ne['alpha']}): {ne['cd']:.3f} ranks.")
            s.table(["model", "mean rank"], sorted(ne["mean_ranks"].items(), key=lambda kv: kv[1]), digits=2)
        wx = ms.get("wilcoxon_holm")
        if wx:
            s.table(["A", "B", "mean diff", "p (Wilcoxon)", "p (Holm)", "significant"],
                    [[w["a"], w["b"], w["mean_diff"], w["p_value"], w["p_holm"], w["significant"]] for w in wx])
    else:
        s.text("Seed-level tests (Friedman, Nemenyi, Wilcoxon) need at least 3 models with 2 or more seeds each.",
               note=True)
    cv_rows = []
    for key, ev in _first_runs(evals).items():
        cv = (ev.meta.get("metrics") or {}).get("cross_validation")
        if cv:
            cv_rows.append([key, cv["folds"], cv["mean"], cv["std"]])
    if cv_rows:
        s.heading("k-fold cross-validation (scikit-learn baselines)")
        s.table(["model", "folds", "mean accuracy", "std"], cv_rows)


def _data(s: Section, explore: dict[str, Any], names: list[str]) -> None:
    st = explore["stats"]
    dist = st.get("class_distribution", {})
    if dist:
        rows = []
        for k in range(len(names)):
            tr, te = dist["train"], dist["test"]
            rows.append([names[k], tr["counts"][k], tr["percent"][k], te["counts"][k], te["percent"][k]])
        s.table(["class", "train", "train %", "test", "test %"], rows, digits=2)
    pix = st.get("pixels", {})
    if pix:
        s.text(f"Constant pixels over the training set: {pix.get('constant_pixels')} of 784 "
               f"({pix.get('active_pixels')} active).")
    for name, png in explore["figures"].items():
        if name != "label_issues":
            s.figure(png, name.replace("_", " "), width=420)
    if "label_issues" in st:  # explorations cached by an older digitlab have no such section
        from digitlab.analysis.explore import label_issues_section

        s.heading("Suspicious test labels")
        label_issues_section(s, st["label_issues"], explore["figures"].get("label_issues"))


def _at(curve: dict[str, Any], key: str, value: float) -> float | None:
    xs = list(curve[key])
    if value in xs:
        return curve["accuracy"][xs.index(value)]
    return None


def summary_markdown(data: dict[str, Any]) -> str:
    comp = data["comparison"]
    lines = [f"# digitlab study ({data['preset']['name']})", "", f"`{data['command']}`", "",
             f"Wall time {data['wall_seconds']:,.0f} s on {data['machine']['cpu']} "
             f"({data['machine']['torch_threads']} threads); budget {data['main_budget']} per run.", "",
             "## Verdict", ""]
    for r in comp["recommendations"]:
        pick = r["model"] if r["decided"] else "tied: " + ", ".join([r["model"], *r["tied_with"]])
        lines.append(f"- **{r['role']}**: {pick} — {r['reason']}")
    if data["alerts"]:
        lines += ["", "## Alerts", ""] + [f"- {a['message']}" for a in data["alerts"]]
    lines += ["", "## Comparison", "",
              "| model | trained by | test accuracy | ± std (seeds) | 95% CI (seed 0) | params | train s | steps "
              "| epochs | latency p50 ms |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in comp["models"]:
        std = f"{m['accuracy_std']:.4f}" if m["accuracy_std"] is not None else "—"
        epochs = "fit" if m.get("epochs_trained") is None else f"{m['epochs_trained']:.2f}"
        lines.append(f"| {m['model']} | {'reference' if m['reference'] else 'this study'} | "
                     f"{m['accuracy_mean']:.4f} | {std} | {m['ci_low']:.4f}–{m['ci_high']:.4f} | "
                     f"{m['parameters']:,} | {fmt(m['train_seconds_mean'], 1)} | {fmt(m['steps'])} | {epochs} | "
                     f"{fmt(m['latency_ms_p50'], 3)} |")
    corr = data.get("corruptions")
    if corr and corr.get("models"):
        lines += ["", "## Robustness: corruptions (MNIST-C)", "",
                  f"First {corr['n']:,} test images, 15 corruptions at severity {corr['severity']:g}, "
                  f"seed {corr['seed']}.", "", "| model | clean | corruption mean | worst corruption |",
                  "|---|---|---|---|"]
        for name, r in corr["models"].items():
            worst = min(r["per_corruption"], key=r["per_corruption"].get)
            lines.append(f"| {name} | {r['clean_accuracy']:.4f} | {r['mean']:.4f} | "
                         f"{worst} ({r['per_corruption'][worst]:.4f}) |")
    return "\n".join(lines) + "\n"


def run_study(preset_name: str, out: str | os.PathLike[str], *, data_dir: str | None = None,
              resume: bool = False, quiet: bool = False, models: list[str] | None = None,
              dataset: str | None = None, budgets: list[str] | None = None, seeds: int | None = None,
              seed: int = 0, include: list[str] | None = None, device: str = "auto") -> dict[str, Any]:
    """Run (or resume) a study; returns the report data (also written to report.json).

    ``models``, ``dataset``, ``budgets``, ``seeds`` (how many, from ``seed``) override the preset;
    ``include`` adds runs as reference rows. A resumed study keeps the settings it started with.
    """
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    out = Path(out)
    if resume:
        state_file = out / "study.json"
        if not state_file.is_file():
            raise ConfigError(f"{out}: not a study directory (no study.json); start one without --resume")
        state = json.loads(state_file.read_text())
        if state.get("preset") != preset_name:
            raise ConfigError(f"{out} is a {state.get('preset')!r} study, not {preset_name!r}")
        if (out / "report.html").is_file():
            raise RunExistsError(f"{out}: study already finished (report.html exists)")
        settings = StudySettings(**state["settings"])
        study = Study(out, preset, settings, data_dir, quiet)
        study.state = state
    else:
        settings = make_settings(preset, models=models, dataset=dataset, budgets=budgets, seeds=seeds, seed=seed,
                                 include=include, device=device)
        for src in settings.include:  # refuse a run of another dataset before any work
            own = source_dataset(src)
            if own != settings.dataset:
                raise ConfigError(f"--include {src}: trained on {own}, but this study is on {settings.dataset}")
        ensure_new_dir(out, "study directory")
        study = Study(out, preset, settings, data_dir, quiet)
        study.save_state()
    with torch_threads(STUDY_THREADS):
        return _run(study, preset, settings, out, quiet)


def _run(study: Study, preset: StudyPreset, settings: StudySettings, out: Path, quiet: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    elapsed_before = float(study.state.get("elapsed", 0.0))
    ds = study.load_data()
    log("step 1/5: explore the data", quiet)
    t = time.perf_counter()
    explore = study.explore(ds)
    study.step_done("explore", time.perf_counter() - t)
    log(f"step 2/5: train {len(settings.models)} models × {len(settings.seeds)} seed(s) at "
        f"{', '.join(settings.budgets) or 'their recipes'}", quiet)
    t = time.perf_counter()
    runs = study.train_all(ds)
    study.step_done("train", time.perf_counter() - t)
    log("step 3/5: evaluate and time", quiet)
    t = time.perf_counter()
    evals, loaded = study.evaluate_all(ds, runs)
    study.measure_speed(ds, evals, loaded)
    study.step_done("evaluate", time.perf_counter() - t)
    log("step 4/5: compare and analyse", quiet)
    t = time.perf_counter()
    labels = settings.budgets or ["recipe"]
    comparisons = {}
    for label in labels:
        members = [e for e in evals if e.reference or (e.budget or "recipe") == label]
        comparisons[label] = compare_evaluations(members, n_boot=preset.n_boot)
    main = max(labels, key=lambda b: _budget_order(b))
    main_evals = [e for e in evals if e.reference or (e.budget or "recipe") == main]
    with torch_threads(MACHINE_THREADS):  # nothing in the analysis is timed: use every core
        analysis = study.analyse(ds, main_evals, loaded, comparisons[main])
    study.step_done("analyse", time.perf_counter() - t)
    log("step 5/5: write the report", quiet)
    wall = elapsed_before + time.perf_counter() - t0
    html_text, data = build_report(study, ds, explore, evals, comparisons, main, analysis, wall)
    write_json_atomic(out / "report.json", data)
    write_text_atomic(out / "summary.md", summary_markdown(data))
    write_text_atomic(out / "report.html", html_text)
    study.state["elapsed"] = wall
    study.state["finished"] = True
    study.save_state()
    log(f"done in {wall:.0f} s: {out / 'report.html'}", quiet)
    return data


def _budget_order(label: str) -> float:
    """Sort key of budgets: time in seconds, else the raw value (one study uses one kind)."""
    if label == "recipe":
        return math.inf
    return parse_budget(label).value
