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
from PIL import Image

import digitlab.train.run as run_module
from digitlab.errors import ConfigError, RunExistsError
from digitlab.report.study import PRESETS, plan_runs, run_study

SECTIONS = ("overview", "data", "training", "comparison", "evaluation", "errors", "sensitivity", "robustness",
            "statistics")


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
    with pytest.raises(RunExistsError):  # never overwrite a study silently
        run_study("smoke", out, data_dir=str(mnist_dir), quiet=True)
    data = run_study("smoke", out, data_dir=str(mnist_dir), resume=True, quiet=True)
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
    assert set(models) == {"mlp-basic-128", "mlp-128-64", "cnn-simple", "logreg"}
    for m in models.values():
        assert 0.5 < m["accuracy_mean"] <= 1
        assert m["ci_low"] <= m["accuracy_mean"] + 0.02 and m["ci_high"] >= m["ci_low"]
        assert m["parameters"] > 0 and len(m["accuracies"]) == 2
    assert models["logreg"]["parameters"] == 7850
    # the evaluation numbers are the ones in the runs' predictions, not copied
    for ev in saved["evaluations"].values():
        assert sum(map(sum, ev["confusion_matrix"])) == 10000
        cm = ev["confusion_matrix"]
        assert ev["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(10)) / 10000)
    assert len(saved["comparison"]["mcnemar"]) == 6  # 4 models: 6 pairs
    assert saved["comparison"]["multi_seed"]["friedman"]["k"] == 4
    assert {r["role"] for r in saved["comparison"]["recommendations"]} == {
        "most accurate", "constrained devices", "balanced"}
    assert saved["explore"]["class_distribution"]["train"]["count"] == 4000
    summary = (out / "summary.md").read_text()
    assert all(m in summary for m in models)


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
    for needle in ("McNemar", "bootstrap", "Friedman", "Recommendations", "precision", "training curves".title()):
        assert needle.lower() in text.lower(), needle


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


def test_compare_cli_json(study_dir, capsys):
    from digitlab.cli import main

    runs = sorted(str(p) for p in (study_dir[0] / "runs").glob("*-s0"))
    assert main(["compare", *runs, "--json", "--speed-repeats", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result["models"]) == 4 and len(result["mcnemar"]) == 6
    assert main(["compare", str(Path(runs[0]) / "nope")]) == 2


def test_every_preset_plans_registered_models():
    from digitlab.models import model_info

    for preset in PRESETS.values():
        for model, seed, cfg in plan_runs(preset):
            assert model_info(model).name == cfg.model == model and cfg.seed == seed
