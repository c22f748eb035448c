"""The main job: a smoke study, interrupted and resumed, and the report it writes."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from PIL import Image

import digitlab.train.run as run_module
from digitlab.errors import ConfigError, RunExistsError
from digitlab.report.study import PRESETS, make_settings, plan_runs, run_study

# the answer first, the data exploration last
SECTIONS = ("verdict", "alerts", "comparison", "figures", "corruptions", "models", "robustness", "statistics", "data",
            "about")
STUDIED = {"mlp-basic-128", "mlp-128-64", "cnn-simple", "logreg"}
SHIPPED = "default (shipped)"


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory, mnist_dir):
    """Run the smoke study, kill it during the 5th training run, then resume it."""
    out = tmp_path_factory.mktemp("study") / "smoke"
    real_train_run = run_module.train_run
    calls = []

    def flaky_train_run(*args, **kwargs):
        calls.append(args)
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if Ctrl-C arrived before the 5th run wrote anything
        return real_train_run(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(run_module, "train_run", flaky_train_run)
    with pytest.raises(KeyboardInterrupt):
        run_study("smoke", out, data_dir=str(mnist_dir), quiet=True)
    finished = sorted(p.parent.name for p in (out / "runs").glob("*/model.safetensors"))
    mtimes = {name: (out / "runs" / name / "model.safetensors").stat().st_mtime_ns for name in finished}
    mp.undo()
    plans = json.loads((out / "study.json").read_text())["plans"]
    with pytest.raises(RunExistsError):  # never overwrite a study silently
        run_study("smoke", out, data_dir=str(mnist_dir), quiet=True)
    data = run_study("smoke", out, data_dir=str(mnist_dir), resume=True, quiet=True)
    # the step counts measured before the interruption are kept (the resumed runs repeat them)
    after = json.loads((out / "study.json").read_text())["plans"]
    assert {k: after[k] for k in plans} == plans
    return out, data, finished, mtimes


def test_resume_keeps_finished_runs(study_dir):
    out, _, finished, mtimes = study_dir
    assert len(finished) == 4
    for name in finished:  # not retrained
        assert (out / "runs" / name / "model.safetensors").stat().st_mtime_ns == mtimes[name]
    assert len(list((out / "runs").glob("*/model.safetensors"))) == len(plan_runs(PRESETS["smoke"]))


def test_report_files_and_numbers(study_dir):
    out, data, _, _ = study_dir
    for name in ("report.html", "report.json", "summary.md", "study.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "report.json").read_text())
    assert saved["comparison"]["models"] == data["comparison"]["models"]
    models = {m["model"]: m for m in saved["comparison"]["models"]}
    assert set(models) == STUDIED | {SHIPPED}
    for name in STUDIED:
        m = models[name]
        # 2 s on a busy 2-core machine can be a handful of CNN steps: above chance, not necessarily good
        floor = 0.12 if name == "cnn-simple" else 0.5
        assert floor < m["accuracy_mean"] <= 1 and not m["reference"] and m["budget"] == "2s"
        assert m["ci_low"] <= m["accuracies"][0] <= m["ci_high"]  # the CI is the first seed's
        assert m["parameters"] > 0 and len(m["accuracies"]) == 2
        assert m["train_seconds_mean"] is not None and "epochs_trained" in m
    assert models["logreg"]["parameters"] == 7850
    for name in ("mlp-basic-128", "mlp-128-64", "cnn-simple"):  # gradient models: one step count per budget
        plan = saved["budget_plans"][f"{name}@2s"]
        assert plan["steps"] >= 1
        steps = []
        for seed in (0, 1):  # each run held the budget from that plan, and its config says how
            cfg = yaml.safe_load((out / "runs" / f"{name}-s{seed}" / "config.yaml").read_text())
            assert cfg["budget"] == "2s" and not cfg["hold_budget"] and cfg["step_plan"][0] == [0, plan["steps"]]
            assert cfg["max_steps"] == cfg["step_plan"][-1][1]
            steps.append(cfg["max_steps"])
        assert models[name]["steps"] == round(sum(steps) / 2)
    assert "max_iter" in saved["budget_plans"]["logreg@2s"]["note"]
    # the shipped model is a reference row with its own training budget, not a competitor
    ref = models[SHIPPED]
    assert ref["reference"] and ref["accuracy_mean"] > 0.99 and "epochs" in ref["trained_for"]
    assert all(r["model"] != SHIPPED for r in saved["comparison"]["recommendations"])
    # the evaluation numbers are the ones in the runs' predictions, not copied
    for ev in saved["evaluations"].values():
        assert sum(map(sum, ev["confusion_matrix"])) == 10000
        cm = ev["confusion_matrix"]
        assert ev["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(10)) / 10000)
    assert len(saved["evaluations"]) == 9  # 4 models × 2 seeds + the shipped model
    assert len(saved["comparison"]["mcnemar"]) == 10  # 5 rows: 10 pairs
    assert saved["comparison"]["multi_seed"]["friedman"]["k"] == 4  # seed tests over the studied models
    assert [r["role"] for r in saved["comparison"]["recommendations"]] == [
        "most accurate", "smallest within 0.5%", "fastest within 0.5%"]
    for m in models.values():  # latency measured in rounds: a median with its spread
        assert m["latency_ms_low"] <= m["latency_ms_p50"] <= m["latency_ms_high"]
    assert saved["explore"]["class_distribution"]["train"]["count"] == 4000
    for name in ("mlp-basic-128", "mlp-128-64", "cnn-simple"):  # validation every N steps: a curve
        curve = saved["learning_curves"][f"{name}-s0"]
        steps = yaml.safe_load((out / "runs" / f"{name}-s0" / "config.yaml").read_text())["max_steps"]
        assert len(curve) >= min(3, steps) and curve == sorted(curve)
        assert curve[-1][0] == steps
    summary = (out / "summary.md").read_text()
    assert all(m in summary for m in models)
    assert summary.index("## Verdict") < summary.index("## Comparison")


def test_corruption_robustness_of_every_model(study_dir, mnist):
    """Issue 18: the 15 MNIST-C corruptions on a seeded subset, per model, in report.json and the HTML."""
    from digitlab.analysis import corruptions
    from digitlab.checkpoint import load_checkpoint

    out, data = study_dir[0], study_dir[1]
    saved = json.loads((out / "report.json").read_text())
    corr = saved["corruptions"]
    assert corr == data["corruptions"]
    assert corr["n"] == PRESETS["smoke"].corruption_images == 300 and corr["seed"] == 0
    assert set(corr["models"]) == STUDIED | {SHIPPED}
    for name, r in corr["models"].items():
        assert list(r["per_corruption"]) == list(corruptions.CORRUPTION_NAMES), name
        assert r["mean"] == pytest.approx(sum(r["per_corruption"].values()) / 15)
        assert r["n"] == 300 and 0 <= min(r["per_corruption"].values()) <= r["mean"] <= 1
    shipped = corr["models"][SHIPPED]
    assert shipped["clean_accuracy"] > 0.97 and shipped["mean"] < shipped["clean_accuracy"]
    # the numbers are the ones `digitlab robustness` gives for the same images, seed and batch size
    model, _ = load_checkpoint("default")
    again = corruptions.evaluate_corruptions(model, mnist.test_images[:300], mnist.test_labels[:300],
                                             ["fog", "canny_edges"], seed=0)
    assert again.per_corruption == {k: shipped["per_corruption"][k] for k in ("fog", "canny_edges")}
    html = (out / "report.html").read_text()
    section = html[html.index('id="corruptions"'):html.index('id="models"')]
    assert "MNIST-C" in section and "first 300 test images" in section and "canny edges" in section
    assert "corruption examples" in section and f"{100 * shipped['mean']:.2f}" in section
    assert html.index('id="comparison"') < html.index('id="corruptions"') < html.index('id="models"')
    assert "## Robustness: corruptions (MNIST-C)" in (out / "summary.md").read_text()


def test_data_section_lists_suspicious_test_labels(study_dir):
    """Issue 18: the exploration (last section) names the test labels the shipped model rejects."""
    out = study_dir[0]
    saved = json.loads((out / "report.json").read_text())
    li = saved["explore"]["label_issues"]
    assert li["model"] == "default" and li["n"] == 10000 and li["issues"][0]["flagged"]
    html = (out / "report.html").read_text()
    data = html[html.index('id="data"'):html.index('id="about"')]
    assert "Suspicious test labels" in data and "most suspicious test labels" in data
    assert f"<td>{li['issues'][0]['index']}</td>" in data


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.images, self.stack, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append((attrs.get("alt", ""), attrs["src"]))
        elif tag not in ("meta", "br", "hr", "input"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}> after {self.stack[-3:]}"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def test_html_is_self_contained_with_every_section(study_dir):
    out = study_dir[0]
    html = (out / "report.html").read_text()
    parser = _Collector()
    parser.feed(html)
    assert parser.stack == []  # every element closed
    assert list(SECTIONS) == [i for i in parser.ids if i in SECTIONS]
    assert not re.search(r'(src|href)="(https?:)?//', html), "report must not load anything from the network"
    alts = [alt for alt, _ in parser.images]
    for needle in ("class distribution", "confusion matrix", "most confident mistakes", "saliency", "occlusion",
                   "accuracy vs Gaussian noise", "pareto"):
        assert any(needle.lower() in a.lower() for a in alts), needle
    for alt, src in parser.images:  # every figure is a real embedded PNG
        assert src.startswith("data:image/png;base64,"), alt
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.size[0] > 50
    text = " ".join(parser.text)
    for needle in ("McNemar", "bootstrap", "Friedman", "Verdict", "precision", "not trained by this study",
                   "digitlab train --config", "Rules:"):
        assert needle.lower() in text.lower(), needle
    # the verdict comes first and the exploration last; the table sorts in the page, detail is collapsed
    assert html.index('id="verdict"') < html.index('id="comparison"') < html.index('id="data"')
    assert "<script>" in html and 'class="sortable"' in html and "<details" in html
    assert html.index("confusion matrix") > html.index("<details")


def test_html_renders_in_chromium(study_dir, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "chromium is required for the rendering check (bash scripts/bootstrap.sh installs it)"
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
                    f"--screenshot={shot}", (study_dir[0] / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert img.size == (1200, 1600) and hi - lo > 100  # something was drawn, not a blank page
    # the dark header band at the top is the report's, so the page's own CSS applied
    assert img.crop((0, 0, 1200, 40)).resize((1, 1)).getpixel((0, 0)) < 80


def test_unknown_preset_and_bad_resume(tmp_path):
    with pytest.raises(ConfigError, match="preset"):
        run_study("huge", tmp_path / "x")
    with pytest.raises(ConfigError, match="not a study"):
        run_study("smoke", tmp_path, resume=True)
    with pytest.raises(ConfigError, match="budget"):
        run_study("smoke", tmp_path / "y", budgets=["soon"])
    with pytest.raises(ConfigError):
        run_study("smoke", tmp_path / "z", models=["no-such-model"])
    assert not (tmp_path / "y").exists() and not (tmp_path / "z").exists()  # refused before any work


def test_settings_override_the_preset():
    st = make_settings(PRESETS["quick"], models=["cnn-simple", "mlp-128-64"], budgets=["10s"], seeds=3, seed=5)
    runs = plan_runs(PRESETS["quick"], st)
    assert [r.name for r in runs] == [f"{m}-s{s}" for m in ("cnn-simple", "mlp-128-64") for s in (5, 6, 7)]
    assert {r.budget for r in runs} == {"10s"}
    st = make_settings(PRESETS["standard"], models=["logreg"])
    assert [r.name for r in plan_runs(PRESETS["standard"], st)] == ["logreg-15s-s0", "logreg-1m-s0",
                                                                    "logreg-4m-s0"]


def test_compare_cli_json(study_dir, capsys):
    from digitlab.cli import main

    runs = sorted(str(p) for p in (study_dir[0] / "runs").glob("*-s0"))
    assert main(["compare", *runs, "--json", "--speed-repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["models"]) == 4 and len(result["mcnemar"]) == 6
    assert main(["compare", str(Path(runs[0]) / "nope")]) == 2
    # the shipped model is accepted among the runs
    assert main(["compare", "default", runs[0], "--json", "--speed-repeats", "0", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["models"]) == 2 and result["models"][1]["model"] == "cnn-simple"
    assert result["models"][0]["accuracy_mean"] > 0.99  # the shipped model, scored on its own dataset


def test_compare_refuses_runs_of_different_datasets(study_dir, fashion, tmp_path, capsys):
    from digitlab.cli import main
    from digitlab.train import TrainConfig, train_run

    fashion_run = tmp_path / "fashion"
    train_run(TrainConfig(model="mlp-basic-128", dataset="fashion-mnist", max_steps=2, epochs=1, tensorboard=False),
              fashion_run, dataset=fashion, progress=False)
    mnist_run = study_dir[0] / "runs" / "mlp-basic-128-s0"
    capsys.readouterr()
    assert main(["compare", str(mnist_run), str(fashion_run), "--speed-repeats", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "different datasets" in err and "fashion-mnist" in err and len(err.splitlines()) == 1


def test_every_preset_plans_registered_models():
    from digitlab.models import model_info

    for preset in PRESETS.values():
        runs = plan_runs(preset)
        assert len(runs) == len(preset.models) * preset.seeds * max(1, len(preset.budgets))
        for run in runs:
            assert model_info(run.model).name == run.model
    assert PRESETS["quick"].budgets and len(PRESETS["standard"].budgets) == 3 and not PRESETS["full"].budgets


def _evaluation(name, preds, labels, latency=None, reference=False):
    import numpy as np

    from digitlab.evaluate.evaluator import score_logits
    from digitlab.evaluate.speed import SpeedProfile
    from digitlab.report.compare import RunEvaluation

    probs = np.full((labels.size, 10), 0.01)
    probs[np.arange(labels.size), preds] = 0.91
    speed = None
    if latency is not None:
        lo, mid, hi = latency
        speed = SpeedProfile(mid, hi, mid, lo, hi, 1000.0, 900.0, 1100.0, 100, 10, 5, "cpu", 1)
    meta = {"model": name, "config": {"seed": 0, "batch_size": 10},
            "metrics": {"train_seconds": 2.0, "val_seconds": 0.1, "steps": 20}, "data": {"train_count": 100}}
    return RunEvaluation(name, name, 0, name, meta, score_logits(np.log(probs), labels), probs, labels, 100,
                         None, speed, reference)


def test_ties_are_stated_not_decided():
    """A winner is named only when McNemar (accuracy) or non-overlapping rounds (latency) separate it."""
    import numpy as np

    from digitlab.report.compare import compare_evaluations

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 2000)
    a = labels.copy()
    a[:100] = (labels[:100] + 1) % 10            # 95.0%
    b = a.copy()
    b[100:103] = (labels[100:103] + 1) % 10      # 94.85%: 3 more errors, not significant
    c = labels.copy()
    c[:600] = (labels[:600] + 1) % 10            # 70%: significantly worse
    evals = [_evaluation("a", a, labels, (1.0, 1.2, 2.0)), _evaluation("b", b, labels, (1.1, 1.3, 1.5)),
             _evaluation("c", c, labels, (0.1, 0.1, 0.1)),
             _evaluation("ref", labels, labels, (5.0, 5.0, 5.0), reference=True)]
    result = compare_evaluations(evals, n_boot=50)
    best, small, fast = result.recommendations
    assert best.model == "a" and not best.decided and best.tied_with == ["b"] and "tied" in best.reason
    assert "ref" not in [best.model, *best.tied_with]  # reference rows are not candidates
    assert fast.model == "a" and not fast.decided and fast.tied_with == ["b"]  # 1.0–2.0 ms overlaps 1.1–1.5
    assert small.model in ("a", "b")
    # clearly separated: one significantly better model, latencies that do not overlap
    evals = [_evaluation("a", a, labels, (1.0, 1.1, 1.2)), _evaluation("c", c, labels, (2.0, 2.1, 2.2))]
    best, _, fast = compare_evaluations(evals, n_boot=50).recommendations
    assert best.decided and best.tied_with == [] and "significantly better" in best.reason
    assert fast.model == "a" and fast.decided
