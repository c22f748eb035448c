"""``digitlab study``: explore → train the zoo → evaluate → analyse → compare → one report.

The study directory holds everything it made::

    study.json            preset, progress and timings (what --resume reads)
    explore/              data exploration figures + explore.json
    runs/<model>-s<seed>/ one training run per model and seed
    evals/<run>.json      test-set metrics; evals/<run>.probs.safetensors the probabilities
    report.html           the self-contained report (figures embedded)
    report.json           every number in the report
    summary.md            a short Markdown summary

An interrupted study resumes with ``--resume``: finished runs and evaluations
are reused, an unfinished run continues from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file as load_np
from safetensors.numpy import save_file as save_np

from digitlab.errors import ConfigError, RunExistsError
from digitlab.report.compare import RunEvaluation, compare_evaluations, comparison_figures, evaluate_source
from digitlab.report.html import Report, fmt
from digitlab.utils import atomic_path, ensure_new_dir, to_jsonable, write_json_atomic, write_text_atomic

ZOO = ("mlp-basic-128", "mlp-basic-256", "mlp-basic-512", "mlp-selected", "mlp-128-64", "mlp-bn",
       "cnn-simple", "cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini", "lenet5",
       "logreg", "random-forest")
#: Models whose epoch costs minutes on 2 CPU cores: capped in the quick preset.
HEAVY = ("cnn-deep", "cnn-enhanced", "resnet-mini", "se-cnn", "densenet-mini")


@dataclass(frozen=True)
class StudyPreset:
    """What a study trains and how deeply it analyses."""

    name: str
    description: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    use_recipes: bool = False
    """Start each model from its shipped recipe (configs/<model>.yaml) instead of the defaults."""
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Config overrides: key ``*`` for every model, or a model name."""
    train_limit: int | None = None
    """Use only the first N training images (smoke tests)."""
    analysis_images: int = 2000
    """Test images used for the robustness sweeps."""
    detail_models: int = 3
    """How many of the most accurate models get error and sensitivity analysis."""
    speed_repeats: int = 30
    n_boot: int = 1000


PRESETS: dict[str, StudyPreset] = {
    "smoke": StudyPreset(
        "smoke", "seconds: 4 small models × 2 seeds, 30 steps each on 4,000 training images",
        models=("mlp-basic-128", "mlp-128-64", "cnn-simple", "logreg"), seeds=(0, 1),
        overrides={"*": {"epochs": 1, "max_steps": 30, "tensorboard": False, "bn_momentum": 0.1},
                   "logreg": {"model_kwargs": {"max_iter": 30}}},
        train_limit=4000, analysis_images=300, detail_models=2, speed_repeats=5, n_boot=200,
    ),
    "quick": StudyPreset(
        "quick", "≤ 10 minutes on 2 CPU cores: the whole zoo, 1 epoch (heavy CNNs capped at 80 steps), 2 seeds "
                 "for the light models",
        models=ZOO, seeds=(0, 1),
        # BN momentum 0.1: the Keras-faithful 0.01 leaves running statistics unsettled after so few steps
        overrides={"*": {"epochs": 1, "tensorboard": False, "bn_momentum": 0.1},
                   **{m: {"max_steps": 80, "seeds": [0], "val_fraction": 0.0} for m in HEAVY},
                   "logreg": {"model_kwargs": {"max_iter": 100}, "seeds": [0]},
                   "random-forest": {"model_kwargs": {"n_estimators": 30}, "seeds": [0]}},
        analysis_images=300, detail_models=3, speed_repeats=10, n_boot=1000,
    ),
    "full": StudyPreset(
        "full", "the reference notebooks' recipes (configs/<model>.yaml), 3 seeds: hours on a CPU",
        models=ZOO, seeds=(0, 1, 2), use_recipes=True, overrides={"*": {"tensorboard": True}},
        analysis_images=10000, detail_models=4, speed_repeats=100, n_boot=2000,
    ),
}


def log(message: str, quiet: bool = False) -> None:
    if not quiet:
        print(f"[study] {message}", file=sys.stderr, flush=True)


def plan_runs(preset: StudyPreset) -> list[tuple[str, int, Any]]:
    """(model, seed, TrainConfig) for every run of the preset, in training order."""
    from digitlab.train.config import TrainConfig
    from digitlab.train.recipes import load_config

    plan = []
    for model in preset.models:
        over = {**preset.overrides.get("*", {}), **preset.overrides.get(model, {})}
        seeds = over.pop("seeds", None) or preset.seeds
        base = load_config(model) if preset.use_recipes else TrainConfig(model=model)
        for seed in seeds:
            plan.append((model, int(seed), base.override(model=model, seed=seed, **over)))
    return plan


def run_name(model: str, seed: int) -> str:
    return f"{model}-s{seed}"


class Study:
    """State and steps of one study directory."""

    def __init__(self, out: str | os.PathLike[str], preset: StudyPreset, data_dir: str | None = None,
                 quiet: bool = False) -> None:
        self.out, self.preset, self.data_dir, self.quiet = Path(out), preset, data_dir, quiet
        self.state: dict[str, Any] = {"preset": preset.name, "steps": {}, "created": time.time()}

    # --- state ---------------------------------------------------------------
    def save_state(self) -> None:
        write_json_atomic(self.out / "study.json", self.state)

    def step_done(self, name: str, seconds: float) -> None:
        self.state["steps"][name] = {"done": True, "seconds": seconds}
        self.save_state()

    # --- steps -----------------------------------------------------------------
    def load_data(self) -> Any:
        from digitlab.data import Dataset, load_dataset

        ds = load_dataset("mnist", self.data_dir, progress=not self.quiet)
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
                (folder / f"{name}.png").write_bytes(png)
            write_json_atomic(cached, stats)
        figures = {p.stem: p.read_bytes() for p in sorted(folder.glob("*.png"))}
        return {"stats": stats, "figures": figures}

    def train_all(self, ds: Any) -> list[Path]:
        from digitlab.train.run import train_run

        plan = plan_runs(self.preset)
        done = []
        for i, (model, seed, cfg) in enumerate(plan, 1):
            run_dir = self.out / "runs" / run_name(model, seed)
            if (run_dir / "model.safetensors").is_file():
                log(f"train {i}/{len(plan)}: {model} seed {seed} already finished", self.quiet)
            else:
                resume = (run_dir / "resume.safetensors").is_file()
                if run_dir.exists() and not resume:
                    import shutil

                    shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again
                log(f"train {i}/{len(plan)}: {model} seed {seed}" + (" (resuming)" if resume else ""), self.quiet)
                # the evaluate step scores the test set once, with every metric: don't do it twice
                train_run(None if resume else cfg, run_dir, resume=resume, dataset=ds, progress=not self.quiet,
                          evaluate_test=False)
            done.append(run_dir)
        return done

    def evaluate_all(self, ds: Any, run_dirs: list[Path]) -> tuple[list[RunEvaluation], dict[str, Any]]:
        folder = self.out / "evals"
        folder.mkdir(parents=True, exist_ok=True)
        evals, models = [], {}
        names = list(ds.spec.class_names)
        first_runs: set[str] = set()
        seen: set[str] = set()
        for model, seed, _ in plan_runs(self.preset):
            if model not in seen:
                seen.add(model)
                first_runs.add(run_name(model, seed))
        for i, run_dir in enumerate(run_dirs, 1):
            js, pr = folder / f"{run_dir.name}.json", folder / f"{run_dir.name}.probs.safetensors"
            if js.is_file() and pr.is_file():
                saved = json.loads(js.read_text())
                ev = RunEvaluation(saved["name"], saved["model"], saved["seed"], saved["source"], saved["meta"],
                                   saved["metrics"], load_np(str(pr))["probs"], ds.test_labels.numpy())
                from digitlab.train.checkpoint import load_checkpoint

                model, _ = load_checkpoint(run_dir)
            else:
                log(f"evaluate {i}/{len(run_dirs)}: {run_dir.name}", self.quiet)
                # latency is a property of the architecture: time it on the first seed only
                timed = run_dir.name in first_runs
                ev, model = evaluate_source(run_dir, ds.test_images, ds.test_labels, names,
                                            speed_repeats=self.preset.speed_repeats if timed else 0,
                                            name=run_dir.name)
                with atomic_path(pr) as tmp:
                    save_np({"probs": ev.probs.astype(np.float32)}, str(tmp))
                write_json_atomic(js, {"name": ev.name, "model": ev.model_name, "seed": ev.seed,
                                       "source": ev.source, "meta": ev.meta, "metrics": ev.metrics})
            evals.append(ev)
            models.setdefault(ev.model_name, model)  # first seed's model, for analysis
        return evals, models

    def analyse(self, ds: Any, evals: list[RunEvaluation], models: dict[str, torch.nn.Module]
                ) -> dict[str, Any]:
        from digitlab.analysis import errors, robustness, sensitivity

        n = min(self.preset.analysis_images, ds.test_images.shape[0])
        images, labels = ds.test_images[:n], ds.test_labels[:n]
        first = {}
        for ev in evals:
            first.setdefault(ev.model_name, ev)
        out: dict[str, Any] = {"robustness": {}, "detail": {}, "analysis_images": n}
        for name, model in models.items():
            log(f"robustness: {name}", self.quiet)
            out["robustness"][name] = {
                "noise": robustness.noise_robustness(model, images, labels),
                "rotation": robustness.rotation_robustness(model, images, labels),
                "shift": robustness.shift_robustness(model, images, labels),
            }
        ranked = sorted(first.values(), key=lambda e: -e.metrics["accuracy"])
        for ev in ranked[: self.preset.detail_models]:
            log(f"errors and sensitivity: {ev.model_name}", self.quiet)
            model = models[ev.model_name]
            summary = errors.error_summary(ev.probs, ev.labels, list(ds.spec.class_names))
            wrong = errors.misclassified(ev.probs, ev.labels, limit=24)
            probe_idx = torch.as_tensor(np.concatenate([wrong["index"][:4], np.arange(4)])).long()
            probe = ds.test_images[probe_idx]
            detail = {"errors": summary, "misclassified": wrong,
                      "confidence": errors.confidence_right_wrong(ev.probs, ev.labels),
                      "probe_index": probe_idx.tolist()}
            if getattr(model, "uses_gradient", True):
                detail["saliency"] = sensitivity.saliency_maps(model, probe)
                detail["integrated_gradients"] = sensitivity.integrated_gradients(model, probe, steps=32)
            detail["occlusion"] = sensitivity.occlusion(model, probe, patch=4, stride=2)
            out["detail"][ev.model_name] = detail
        return out


def _history_for_plot(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**h, "train_acc": h.get("train_accuracy"), "val_acc": h.get("val_accuracy")} for h in history]


def build_report(study: Study, ds: Any, explore: dict[str, Any], evals: list[RunEvaluation],
                 comparison: dict[str, Any], analysis: dict[str, Any], wall_seconds: float) -> tuple[str, dict]:
    """Render report.html and the matching report.json content."""
    from digitlab.analysis import plots
    from digitlab.bench.harness import machine_info

    preset = study.preset
    names = list(ds.spec.class_names)
    rep = Report("digitlab study report",
                 f"preset {preset.name} — {preset.description}; {len(evals)} runs; "
                 f"wall time {wall_seconds / 60:.1f} min; "
                 f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")

    s = rep.section("overview", "Overview")
    machine = machine_info()
    s.table(["item", "value"], [
        ["command", f"digitlab study --preset {preset.name} --out {study.out}"],
        ["dataset", f"{ds.name} from {ds.source} ({ds.train_images.shape[0]:,} train / "
                    f"{ds.test_images.shape[0]:,} test images)"],
        ["models × seeds", f"{len({e.model_name for e in evals})} models, {len(evals)} runs"],
        ["machine", f"{machine['cpu']}, {machine['torch_threads']} torch threads, torch {machine['torch']}"],
        ["wall time", f"{wall_seconds:.0f} s"],
    ], kv=True)
    s.text("Every number in this report was measured by this run; the test set was used only for final "
           "evaluation (no model selection on it).", note=True)

    # --- data -----------------------------------------------------------------
    s = rep.section("data", "Data: class distribution and exploration")
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
        s.figure(png, name.replace("_", " "), width=420)

    # --- training ---------------------------------------------------------------
    s = rep.section("training", "Training curves")
    rows = []
    seen = set()
    for ev in evals:
        m = ev.meta.get("metrics", {})
        rows.append([ev.name, m.get("epochs_completed"), m.get("steps"), m.get("train_seconds"),
                     m.get("val_accuracy"), m.get("stop_reason") or ""])
        hist = ev.meta.get("history") or []
        if ev.model_name not in seen and len(hist) >= 1 and ev.meta.get("metrics", {}).get("steps"):
            seen.add(ev.model_name)
            s.figure(plots.training_curves_png(_history_for_plot(hist), title=ev.name), ev.name, width=380)
    s.table(["run", "epochs", "steps", "train s", "final val acc", "stopped because"], rows)

    # --- results ------------------------------------------------------------------
    s = rep.section("comparison", "Comparison")
    s.table(["model", "epochs", "accuracy (mean)", "± std (seeds)", "95% CI low", "95% CI high", "params",
             "train s", "s/epoch", "latency p50 ms", "images/s"],
            [[m["model"], m.get("epochs_trained"), m["accuracy_mean"], m["accuracy_std"], m["ci_low"], m["ci_high"],
              m["parameters"], m["train_seconds_mean"], m.get("seconds_per_epoch"), m["latency_ms_p50"],
              m["throughput_per_s"]] for m in comparison["models"]], digits=4)
    s.text("CI: bootstrap 95% interval of test accuracy (seed 0 run, "
           f"{preset.n_boot} resamples). Latency: batch 1, CPU, median of {preset.speed_repeats} calls.", note=True)
    for name, png in comparison_figures(comparison).items():
        s.figure(png, name.replace("_", " "), width=520)
    s.heading("Recommendations (derived from the numbers above)")
    s.table(["role", "model", "why"], [[r["role"], r["model"], r["reason"]] for r in comparison["recommendations"]])

    # --- per-model evaluation ---------------------------------------------------------
    s = rep.section("evaluation", "Confusion matrices and per-class metrics")
    first: dict[str, RunEvaluation] = {}
    for ev in evals:
        first.setdefault(ev.model_name, ev)
    for ev in sorted(first.values(), key=lambda e: -e.metrics["accuracy"]):
        met = ev.metrics
        s.heading(f"{ev.name}: accuracy {met['accuracy']:.4f}, top-3 {met['top3']:.4f}, log-loss "
                  f"{met['log_loss']:.4f}, ECE {met['ece']:.4f}")
        s.figure(plots.confusion_matrix_png(met["confusion_matrix"], names, title=f"{ev.name} (counts)"),
                 f"confusion matrix {ev.name}", width=360)
        s.figure(plots.reliability_png(met["reliability"], title=f"{ev.name} reliability"),
                 f"reliability {ev.name}", width=300)
        s.table(["class", "precision", "recall", "F1", "support"],
                [[r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in met["per_class"]]
                + [["macro avg", met["macro_avg"]["precision"], met["macro_avg"]["recall"], met["macro_avg"]["f1"],
                    met["macro_avg"]["support"]],
                   ["weighted avg", met["weighted_avg"]["precision"], met["weighted_avg"]["recall"],
                    met["weighted_avg"]["f1"], met["weighted_avg"]["support"]]])

    # --- errors and sensitivity ----------------------------------------------------------
    s = rep.section("errors", "Misclassified examples and error analysis")
    for name, d in analysis["detail"].items():
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
                                                for p in d["errors"]["most_confused"]],
                caption="most-confused pairs")

    s = rep.section("sensitivity", "Sensitivity maps")
    s.text("Saliency |∂logit/∂x|, integrated gradients (32 steps, black baseline) and occlusion (4×4 patch, "
           "stride 2: drop of the predicted class probability) for four misclassified and four ordinary test "
           "images.", note=True)
    for name, d in analysis["detail"].items():
        probe = ds.test_images[torch.as_tensor(d["probe_index"])].numpy()
        titles = [f"#{i}" for i in d["probe_index"]]
        if "saliency" in d:
            s.figure(plots.heatmap_grid_png(probe, d["saliency"], titles, ncols=8), f"{name}: saliency", width=720)
            s.figure(plots.heatmap_grid_png(probe, d["integrated_gradients"]["attributions"], titles, ncols=8,
                                            signed=True), f"{name}: integrated gradients", width=720)
        s.figure(plots.heatmap_grid_png(probe, d["occlusion"]["map"], titles, ncols=8),
                 f"{name}: occlusion", width=720)

    s = rep.section("robustness", "Robustness: noise, rotation, shift")
    rob = analysis["robustness"]
    if rob:
        any_model = next(iter(rob.values()))
        s.figure(plots.noise_curve_png(any_model["noise"]["std"], {m: r["noise"]["accuracy"] for m, r in rob.items()}),
                 "accuracy vs Gaussian noise σ", width=520)
        rotation = {m: r["rotation"]["accuracy"] for m, r in rob.items()}
        s.figure(plots.curves_png(any_model["rotation"]["angle"], rotation,
                                  xlabel="rotation (degrees)", title="accuracy vs rotation"),
                 "accuracy vs rotation", width=520)
        s.figure(plots.curves_png(any_model["shift"]["shift"], {m: r["shift"]["accuracy"] for m, r in rob.items()},
                                  xlabel="shift (pixels)", title="accuracy vs shift"),
                 "accuracy vs shift", width=520)
        s.table(["model", "clean accuracy", "robustness score", "acc. at σ=0.5", "acc. at ±30°", "acc. at 3 px"],
                [[m, r["noise"]["clean_accuracy"], r["noise"]["score"], r["noise"]["accuracy"][-1],
                  _at(r["rotation"], "angle", 30), _at(r["shift"], "shift", 3)] for m, r in rob.items()])
        s.text(f"On the first {analysis['analysis_images']} test images. Robustness score: area under accuracy "
               "vs σ divided by clean accuracy × σ range (1 = unaffected by noise).", note=True)

    s = rep.section("statistics", "Statistics")
    s.heading("McNemar's test for every pair (seed 0 runs)")
    s.table(["model A", "model B", "acc A", "acc B", "A right, B wrong", "A wrong, B right", "p-value",
             "significant", "Δacc 95% CI"],
            [[p["a"], p["b"], p["accuracy_a"], p["accuracy_b"], p["b_count"], p["c_count"], p["p_value"],
              p["significant"], f"{p['diff_ci_low']:+.4f} … {p['diff_ci_high']:+.4f}"] for p in comparison["mcnemar"]])
    ms = comparison.get("multi_seed")
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
    for ev in first.values():
        cv = (ev.meta.get("metrics") or {}).get("cross_validation")
        if cv:
            cv_rows.append([ev.model_name, cv["folds"], cv["mean"], cv["std"]])
    if cv_rows:
        s.heading("k-fold cross-validation (scikit-learn baselines)")
        s.table(["model", "folds", "mean accuracy", "std"], cv_rows)

    data = to_jsonable({
        "preset": asdict(preset), "wall_seconds": wall_seconds, "machine": machine,
        "dataset": {"name": ds.name, "source": str(ds.source), "checksums": ds.checksums},
        "explore": explore["stats"], "comparison": comparison,
        "evaluations": {ev.name: {k: v for k, v in ev.metrics.items() if k != "classification_report"}
                        for ev in evals},
        "robustness": analysis["robustness"],
        "errors": {m: d["errors"] for m, d in analysis["detail"].items()},
    })
    return rep.render(), data


def _at(curve: dict[str, Any], key: str, value: float) -> float | None:
    xs = list(curve[key])
    if value in xs:
        return curve["accuracy"][xs.index(value)]
    return None


def summary_markdown(data: dict[str, Any]) -> str:
    comp = data["comparison"]
    lines = [f"# digitlab study ({data['preset']['name']})", "",
             f"Wall time {data['wall_seconds']:.0f} s on {data['machine']['cpu']} "
             f"({data['machine']['torch_threads']} threads).", "",
             "| model | epochs trained | test accuracy | ± std (seeds) | 95% CI (seed 0) | params | train s "
             "| s/epoch | latency p50 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m in comp["models"]:
        std = f"{m['accuracy_std']:.4f}" if m["accuracy_std"] is not None else "—"
        epochs = "fit" if m.get("epochs_trained") is None else f"{m['epochs_trained']:.2f}"
        lines.append(f"| {m['model']} | {epochs} | {m['accuracy_mean']:.4f} | {std} | "
                     f"{m['ci_low']:.4f}–{m['ci_high']:.4f} | {m['parameters']:,} | "
                     f"{fmt(m['train_seconds_mean'], 1)} | "
                     f"{fmt(m.get('seconds_per_epoch'), 1)} | {fmt(m['latency_ms_p50'], 2)} |")
    lines += ["", "Recommendations:", ""]
    lines += [f"- **{r['role']}**: {r['model']} — {r['reason']}" for r in comp["recommendations"]]
    return "\n".join(lines) + "\n"


def run_study(preset_name: str, out: str | os.PathLike[str], *, data_dir: str | None = None,
              resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a study; returns the report data (also written to report.json)."""
    if preset_name not in PRESETS:
        raise ConfigError(f"unknown preset {preset_name!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[preset_name]
    out = Path(out)
    study = Study(out, preset, data_dir, quiet)
    if resume:
        state_file = out / "study.json"
        if not state_file.is_file():
            raise ConfigError(f"{out}: not a study directory (no study.json); start one without --resume")
        study.state = json.loads(state_file.read_text())
        if study.state.get("preset") != preset_name:
            raise ConfigError(f"{out} is a {study.state.get('preset')!r} study, not {preset_name!r}")
        if (out / "report.html").is_file():
            raise RunExistsError(f"{out}: study already finished (report.html exists)")
    else:
        ensure_new_dir(out, "study directory")
        study.save_state()
    t0 = time.perf_counter()
    elapsed_before = float(study.state.get("elapsed", 0.0))
    ds = study.load_data()
    log("step 1/5: explore the data", quiet)
    t = time.perf_counter()
    explore = study.explore(ds)
    study.step_done("explore", time.perf_counter() - t)
    log("step 2/5: train", quiet)
    t = time.perf_counter()
    run_dirs = study.train_all(ds)
    study.step_done("train", time.perf_counter() - t)
    log("step 3/5: evaluate", quiet)
    t = time.perf_counter()
    evals, models = study.evaluate_all(ds, run_dirs)
    study.step_done("evaluate", time.perf_counter() - t)
    log("step 4/5: analyse and compare", quiet)
    t = time.perf_counter()
    analysis = study.analyse(ds, evals, models)
    comparison = compare_evaluations(evals, n_boot=preset.n_boot)
    study.step_done("analyse", time.perf_counter() - t)
    log("step 5/5: write the report", quiet)
    wall = elapsed_before + time.perf_counter() - t0
    html_text, data = build_report(study, ds, explore, evals, comparison, analysis, wall)
    write_json_atomic(out / "report.json", data)
    write_text_atomic(out / "summary.md", summary_markdown(data))
    write_text_atomic(out / "report.html", html_text)
    study.state["elapsed"] = wall
    study.state["finished"] = True
    study.save_state()
    log(f"done in {wall:.0f} s: {out / 'report.html'}", quiet)
    return data
