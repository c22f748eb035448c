#!/usr/bin/env python
"""Measure the figures the README and docs quote, and write them into the text.

Every figure in README.md and docs/*.md sits between markers
``<!-- figure:NAME -->`` and ``<!-- /figure:NAME -->`` and is rendered from
``results/NAME.json``, which the command registered below for NAME writes.
Nothing between the markers is edited by hand.

    python scripts/readme_figures.py measure [NAME ...]   # run the commands (all, or the named ones)
    python scripts/readme_figures.py render               # rewrite the marked blocks from results/
    python scripts/readme_figures.py list                 # names, commands, and whether results exist

Run ``measure`` on an otherwise idle machine: timings drift with other load.
Set DIGITLAB_DATA_DIR to a folder with the MNIST IDX files first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DIGITLAB = str(ROOT / ".venv" / "bin" / "digitlab")
PYTHON = str(ROOT / ".venv" / "bin" / "python")


@dataclass(frozen=True)
class Figure:
    """One measured result: the command that writes ``results/NAME.json`` and how the text shows it."""

    command: str
    """Shell command (from the repository root) whose stdout is the JSON result; {tmp} is a scratch folder."""
    render: Callable[[dict[str, Any]], str]
    """Markdown for the text, from the JSON."""
    artifacts: tuple[tuple[str, str], ...] = ()
    """Files the command writes under {tmp} that the text shows: (path under {tmp}, path in the repository)."""


def _pct(x: float, digits: int = 2) -> str:
    return f"{100 * x:.{digits}f}%"


def _machine(m: dict[str, Any] | None) -> str:
    if not m:
        return ""
    gpu = f", GPU {m['cuda']}" if m.get("cuda") else ", no GPU"
    # the same CPU name covers hosts with and without bf16 instructions, which decide training speed
    simd = f" ({m['simd']}, {'with' if m.get('bf16_instructions') else 'no'} bf16 instructions)" \
        if m.get("simd") else ""
    return (f"Machine: {m.get('cpu', '?')}{simd}, {m.get('cpu_count', '?')} cores, {m.get('torch_threads', '?')} "
            f"torch threads, torch {m.get('torch', '?')}{gpu}.")


def render_data(r: dict[str, Any]) -> str:
    p, c, cr = r["parse_from_gz"], r["cached_load"], r["cached_load_plus_full_read"]
    aug = r["augment_per_epoch"]
    rows = [
        ("parse the four `.gz` files (gunzip, SHA-256, validation, tensors)", f"{p['median_s']:.3f} s"),
        ("first load including writing the cache", f"{r['first_load_writing_cache_s']:.3f} s"),
        ("**cached load of the whole dataset**",
         f"**{1000 * c['median_s']:.1f} ms** ({p['median_s'] / c['median_s']:.0f}× faster than parsing)"),
        ("cached load + touching every pixel once", f"{1000 * cr['median_s']:.0f} ms"),
    ]
    for name, a in aug.items():
        rows.append((f"batch augmentation of {a['images']:,} images (batch {r['augment_batch_size']}): {name}",
                     f"{a['median_s']:.2f} s"))
    table = "| operation | time (median of {}) |\n|---|---|\n".format(r.get("repeats", "?"))
    table += "\n".join(f"| {a} | {b} |" for a, b in rows)
    return table + "\n\n" + _machine(r.get("machine"))


def _bench_block(r: dict[str, Any]) -> tuple[str, str]:
    s = r["summary"]
    acc, t = s["test_accuracy"], s["train_seconds"]
    line = (f"{r['recipe']}: {_pct(acc['mean'])} ± {_pct(acc['std'])} (min {_pct(acc['min'])}) over "
            f"{len(r['runs'])} seeds; training {t['median']:.2f} s median")
    return r["recipe"], line


def render_bench_vs(r: dict[str, Any]) -> str:
    other = r["vs"]
    head = f"| seed | {r['recipe']}: test acc. | {r['recipe']}: train s | {other['recipe']}: test acc. | " \
           f"{other['recipe']}: train s |\n|---|---|---|---|---|\n"
    rows = [f"| {a['seed']} | {_pct(a['test_accuracy'])} | {a['train_seconds']:.2f} | {_pct(b['test_accuracy'])} | "
            f"{b['train_seconds']:.2f} |" for a, b in zip(r["runs"], other["runs"], strict=True)]
    lines = [_bench_block(r)[1], _bench_block(other)[1],
             f"**ratio of median training times {r['recipe']}/{other['recipe']}: "
             f"{r['ratio_median_train_seconds']:.2f}**"]
    return head + "\n".join(rows) + "\n\n" + "; ".join(lines) + ". " + _machine(r.get("machine"))


def render_bench(r: dict[str, Any]) -> str:
    rows = [f"| {x['seed']} | {_pct(x['test_accuracy'])} | {x['train_seconds']:.2f} |" for x in r["runs"]]
    ds = r.get("dataset", "mnist")
    return (f"| seed | {ds} test accuracy | train s |\n|---|---|---|\n" + "\n".join(rows) + "\n\n"
            + _bench_block(r)[1] + ". " + _machine(r.get("machine")))


def render_evaluate(r: dict[str, Any]) -> str:
    ece = _pct(r["ece"])
    if r.get("ece_uncalibrated") is not None:
        ece = f"{_pct(r['ece_uncalibrated'])} → **{ece}** (T = {r['temperature']:.3f})"
    lines = [
        "| model | dataset | test images | accuracy | errors | top-3 | ECE (15 bins), before → after calibration "
        "| macro F1 | parameters |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r.get('model')} | {r.get('dataset')} {r.get('split')} | {r['n']:,} | **{_pct(r['accuracy'])}** | "
        f"{r['n'] - round(r['accuracy'] * r['n'])} | {_pct(r['top3'])} | {ece} | "
        f"{r['macro_avg']['f1']:.4f} | {r['parameters']:,} |",
    ]
    return "\n".join(lines)


def render_onnx(r: dict[str, Any]) -> str:
    b = r.get("benchmark", {})
    rows = []
    acc = {"torch": r["verification"].get("accuracy_torch"), "onnx-fp32": r["verification"].get("accuracy"),
           "onnx-int8": r.get("int8", {}).get("accuracy")}
    sizes = {"torch": r.get("checkpoint_bytes"), "onnx-fp32": r["onnx"]["bytes"],
             "onnx-int8": r.get("int8", {}).get("bytes")}
    for name, x in b.get("backends", {}).items():
        key = "torch" if name.startswith("torch") or name.startswith("pytorch") else name
        a = acc.get(key)
        size = sizes.get(key)
        rows.append(f"| {name} | {_pct(a) if a is not None else '—'} | {x['batch1_p50_ms']:.2f} ms | "
                    f"{x['batch1_p95_ms']:.2f} ms | {x['throughput_images_per_s']:,.0f} img/s | "
                    f"{f'{size:,} B' if size else '—'} |")
    v = r["verification"]
    note = (f"ONNX fp32 agrees with PyTorch on {_pct(v['argmax_agreement'])} of the {v['images']:,} "
            f"{v.get('dataset', '')} {v.get('split', '')} images (max probability difference "
            f"{v['max_abs_prob_diff']:.1e}).")
    if "int8" in r:
        q = r["int8"]
        note += (f" int8 changes accuracy by {q['accuracy_change_points']:+.2f} points at "
                 f"{100 * q['size_ratio']:.0f}% of the size.")
    threads = b.get("threads", "?")
    return (f"| backend ({threads} thread) | accuracy | batch-1 p50 | batch-1 p95 | throughput | file |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + note)


def render_train(r: dict[str, Any]) -> str:
    return ("| model | test accuracy | test loss | training |\n|---|---|---|---|\n"
            f"| {r.get('model', '?')} | **{_pct(r['test_accuracy'])}** | {r['test_loss']:.4f} | "
            f"{r['train_seconds']:,.0f} s |")


def render_variants(r: dict[str, Any]) -> str:
    head = (f"| variant | change | median train s | time vs shipped | test acc. mean | min ({r['seeds']} seeds) |\n"
            "|---|---|---|---|---|---|\n")
    rows = [f"| {v['variant']} | {v['change']} | {v['median_train_seconds']:.2f} | "
            f"{v['time_vs_shipped']:.2f}× | {_pct(v['accuracy_mean'])} | {_pct(v['accuracy_min'])} |"
            for v in r["variants"]]
    return head + "\n".join(rows) + "\n\n" + _machine(r.get("machine"))


def render_pictures(r: dict[str, Any]) -> str:
    what = {"digit": "read right", "no digit": "answered “no digit”", "number": "whole number exact"}
    head = ("| picture set | n | result | false rejections | ECE before → after calibration | median confidence |\n"
            "|---|---|---|---|---|---|\n")
    rows = []
    for name, x in r["sets"].items():
        conf = f"{x['median_confidence']:.2f}" if x.get("median_confidence") is not None else "—"
        refused = (f"{x['false_rejections']} ({_pct(x['false_rejection_rate'], 1)})" if x["kind"] == "digit"
                   and "false_rejections" in x else "—")
        ece = (f"{_pct(x['ece_uncalibrated'], 2)} → {_pct(x['ece'], 2)}" if x.get("ece") is not None else "—")
        result = f"{_pct(x['rate'], 1)} {what[x['kind']]}"
        if x.get("by_kind"):
            result += " (" + ", ".join(f"{k} {_pct(v['detection_rate'], 0)}" for k, v in x["by_kind"].items()) + ")"
        rows.append(f"| {name} | {x['n']} | {result} | {refused} | {ece} | {conf} |")
    temp = f"; temperature {r['temperature']:.3f}" if r.get("temperature") is not None else ""
    return head + "\n".join(rows) + f"\n\nModel: `{r['model']}`{temp}; pictures seeded with {r['seed']}."


def render_robustness(r: dict[str, Any]) -> str:
    out = []
    c = r.get("corruptions")
    if c:
        rows = [f"| {name} | {_pct(acc, 1)} |" for name, acc in c["per_corruption"].items()]
        out.append(f"Corruptions (MNIST-C, {c['n']:,} test images, severity {c['severity']:g}): clean "
                   f"{_pct(c['clean_accuracy'])}, **mean {_pct(c['mean'])}**.\n\n"
                   "| corruption | accuracy |\n|---|---|\n" + "\n".join(rows))
    a = r.get("adversarial")
    if a:
        rows = [f"| {eps} | {_pct(a['fgsm'][eps])} | {_pct(a['pgd'][eps])} |" for eps in a["fgsm"]]
        checks = "passed" if a["monotone"] and a["pgd_at_most_fgsm"] else "FAILED: " + "; ".join(a["warnings"])
        out.append(f"Attacks on {a['n']:,} test images ({a['attack']}; sanity checks {checks}):\n\n"
                   "| ε | FGSM | PGD |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(out)


def render_label_issues(r: dict[str, Any]) -> str:
    def flagged(x: dict[str, Any]) -> str:
        return "—" if "flagged" not in x else ("**yes**" if x["flagged"] else "no")

    rows = [f"| {x['index']} | {x.get('name', x['label'])} | {x.get('suggested_name', x['suggested'])} | "
            f"{x['score']:.3f} | {flagged(x)} |" for x in r["issues"]]
    head = (f"{r['n_flagged']} of the {r['n']:,} {r['split']} images flagged by confident learning; the list "
            "continues with the next images whose label the model rejects.\n\n" if "n_flagged" in r else "")
    return (head + "| test image | given label | suggested | label quality | flagged |\n|---|---|---|---|---|\n"
            + "\n".join(rows))


def render_sweep(r: dict[str, Any]) -> str:
    rows = []
    for t in r["trials"]:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        value = f"{_pct(t['value'])}" if t.get("value") is not None else "—"
        rows.append(f"| {t['number']} | {t['state'].lower()} | {value} | {t.get('steps') or '—'} | {params} |")
    best, test = r.get("best"), r.get("test")
    tail = ""
    if best and test:
        tail = (f"\n\nBest: trial {best['number']} ({_pct(best['val_accuracy'])} validation); the test set, scored "
                f"once for it: {_pct(test['test_accuracy'])}. {r['counts']['complete']} complete, "
                f"{r['counts']['pruned']} pruned, {r['seconds']:.0f} s.")
    return ("| trial | state | validation accuracy | steps | parameters |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + tail)


def render_zoo(r: dict[str, Any]) -> str:
    rows = []
    for x in r["models"]:
        st = x["settings"]
        used = ", ".join(k for k in ("amp", "channels_last") if st.get(k)) or "fp32"
        rows.append(f"| {x['model']} | {x['engine_ms_per_step']:.1f} | {x['plain_ms_per_step']:.1f} | "
                    f"**{x['ratio']:.2f}** | {used.replace('amp', 'bf16 autocast')} |")
    first = r["models"][0]["settings"] if r["models"] else {}
    return ("| model | engine ms/step | plain loop ms/step | ratio | engine settings |\n|---|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nBatch {first.get('batch_size', '?')}, {first.get('steps', '?')} timed "
            f"steps per block, {first.get('rounds', '?')} alternating blocks per loop (medians). "
            + _machine(r.get("machine")))


def render_study(r: dict[str, Any]) -> str:
    head = ("| model | test accuracy (mean ± std over seeds) | seeds | train s | steps | epochs | parameters | "
            "latency ms (batch 1) |\n|---|---|---|---|---|---|---|---|\n")
    rows = []
    for m in r["models"]:
        std = f" ± {_pct(m['accuracy_std'])}" if m.get("accuracy_std") else ""
        lat = f"{m['latency_ms_p50']:.3f}" if m.get("latency_ms_p50") is not None else "—"
        train = f"{m['train_seconds_mean']:,.1f}" if m.get("train_seconds_mean") is not None else "—"
        epochs = f"{m['epochs_trained']:.2f}" if m.get("epochs_trained") is not None else "—"
        name = m["model"] + (" — reference, not trained by the study" if m.get("reference") else "")
        rows.append(f"| {name} | {_pct(m['accuracy_mean'])}{std} | {len(m['seeds'])} | {train} | "
                    f"{m['steps'] if m.get('steps') is not None else '—'} | {epochs} | {m['parameters']:,} | {lat} |")
    verdict = []
    for rec in r["recommendations"]:
        pick = rec["model"] if rec["decided"] else "tied: " + ", ".join([rec["model"], *rec["tied_with"]])
        verdict.append(f"- **{rec['role']}**: {pick} — {rec['reason']}")
    alerts = [f"- {a['message']}" for a in r.get("alerts", []) if a["kind"] != "noisy-timing"]
    noisy = [a["model"] for a in r.get("alerts", []) if a["kind"] == "noisy-timing"]
    if noisy:
        alerts.append(f"- noisy timings: the batch-1 latency of {len(noisy)} of the {len(r['models'])} rows varied "
                      "by more than half its median between timing rounds (each is listed in the report)")
    return (f"Budget {r['budget']} of training per run; wall time of the whole study **{r['wall_seconds']:.0f} s**."
            "\n\nVerdict:\n\n" + "\n".join(verdict) + "\n\n" + head + "\n".join(rows)
            + ("\n\nAlerts:\n\n" + "\n".join(alerts) if alerts else ""))


def render_study_budgets(r: dict[str, Any]) -> str:
    """A study at several budgets: test accuracy (mean over seeds) and rank of every model at each budget."""
    budgets = list(r["by_budget"])
    rows: dict[str, dict[str, tuple[float, int, int | None]]] = {}
    for b in budgets:
        trained = [m for m in r["by_budget"][b] if not m.get("reference")]
        ranked = sorted(trained, key=lambda m: -m["accuracy_mean"])
        for rank, m in enumerate(ranked, 1):
            rows.setdefault(m["model"], {})[b] = (m["accuracy_mean"], rank, m.get("steps"))
    last = budgets[-1]
    order = sorted(rows, key=lambda name: rows[name].get(last, (0.0, 99, None))[1])
    head = ("| model | " + " | ".join(f"{b}: accuracy (rank, steps)" for b in budgets) + " |\n|---|"
            + "---|" * len(budgets) + "\n")
    lines = []
    for name in order:
        cells = []
        for b in budgets:
            acc, rank, steps = rows[name].get(b, (float("nan"), 0, None))
            cells.append(f"{_pct(acc)} ({rank}, {steps:,} steps)" if steps else f"{_pct(acc)} ({rank})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = next((len(m["seeds"]) for m in r["models"] if not m.get("reference")), 1)
    return (f"Budgets {', '.join(budgets)} of training per run, {seeds} seed(s); wall time of the whole study "
            f"**{r['wall_seconds'] / 60:.0f} min**.{_load(r)}\n\n" + head + "\n".join(lines))


def render_finetune(r: dict[str, Any]) -> str:
    rows = [f"| {name} | {_pct(v['accuracy_mean'])} ± {_pct(v['accuracy_std'])} | {v['train_seconds_median']:.1f} s |"
            for name, v in r["variants"].items()]
    return (f"Source: {r['model']} trained {r['source_steps']} steps on MNIST ({_pct(r['source_mnist_accuracy'])}); "
            f"every Fashion-MNIST run: {r['steps']} steps of the same recipe, seeds 0–{r['seeds'] - 1}.\n\n"
            "| Fashion-MNIST run | test accuracy (mean ± std) | training (median) |\n|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + _machine(r.get("machine")))


def _load(r: dict[str, Any]) -> str:
    la = r.get("load_average_1min")
    return f" Load average (1 min) {la['start']:.1f} at the start, {la['end']:.1f} at the end." if la else ""


def render_rank_agreement(r: dict[str, Any]) -> str:
    base, large = ",".join(r["budget_base"]), ",".join(r["budget_large"])
    rank_l = {m: i + 1 for i, m in enumerate(r["order_large"])}
    rows = [f"| {m} | {_pct(r['accuracy_base'][m])} ({i + 1}) | {_pct(r['accuracy_large'][m])} ({rank_l[m]}) |"
            for i, m in enumerate(r["order_base"])]
    top1 = ("the same" if r["top1_agree"] else
            f"different ({r['order_base'][0]} at {base}, {r['order_large'][0]} at {large})")
    return (f"The `{r['preset']}` study ({base} per run) against the same study at {r['factor']:g}× the budget "
            f"({large} per run): "
            f"Spearman ρ = **{r['spearman_rho']:.2f}** over {r['models']} models; the most accurate model is {top1}; "
            f"the top three are {'the same set' if r['top3_agree'] else 'not the same set'}.\n\n"
            f"| model | accuracy at {base} (rank) | accuracy at {large} (rank) |\n|---|---|---|\n"
            + "\n".join(rows) + "\n\n" + _machine(r.get("machine")))


def render_precision(r: dict[str, Any]) -> str:
    rows = []
    for m in r["models"]:
        st = m["settings"]
        used = " + ".join(k for k, v in (("bf16 autocast", st["amp"]), ("channels-last", st["channels_last"])) if v)
        e, f = m["engine"], m["float32"]
        rows.append(f"| {m['model']} | {used or 'float32'} | {_pct(e['mean'])} ± {_pct(e['std'])} | "
                    f"{_pct(f['mean'])} ± {_pct(f['std'])} | {100 * m['difference']:+.2f} points | "
                    f"{'within seed noise' if m['within_noise'] else '**differs**'} |")
    return (f"{r['steps']} optimizer steps per run on MNIST, seeds 0–{r['seeds'] - 1}, the same recipe on both sides; "
            f"{r['rule']}.\n\n| model | engine settings | test accuracy, engine | test accuracy, float32 | "
            "difference | verdict |\n|---|---|---|---|---|---|\n" + "\n".join(rows)
            + "\n\n" + _machine(r.get("machine")))


def render_property_tests(r: dict[str, Any]) -> str:
    sc = r["schemathesis"]
    hyp = r["hypothesis"]
    rows = [f"| Hypothesis: `{h['test'].split('::')[-1]}` | {h['passing']} | {h['failing']} |" for h in hyp]
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(sc["status_codes"].items()))
    return ("| property test | examples run | failures |\n|---|---|---|\n"
            f"| Schemathesis {sc['schemathesis']}: every endpoint of `/openapi.json`, valid and invalid requests "
            f"({sc['examples_per_operation_and_mode']} per operation, media type and mode; responses {codes}) | "
            f"{sc['examples']} | {sc['failures']} |\n" + "\n".join(rows)
            + f"\n\npytest: {r['pytest_summary']}.")


def render_load(r: dict[str, Any]) -> str:
    lat, err, rss = r["latency_ms"], r["errors"], r["server_rss_mib"]
    return (f"Server: `{r['command']['server']}` ({r['model'].get('backend')}); load: `{r['command']['load']}`.\n\n"
            "| requests | concurrency | workers | requests/s | p50 | p95 | p99 | errors | server RSS before → after |\n"
            "|---|---|---|---|---|---|---|---|---|\n"
            f"| {r['requests']:,} | {r['concurrency']} | {r['workers']} | **{r['requests_per_second']:.0f}** | "
            f"{lat['p50']:.1f} ms | {lat['p95']:.1f} ms | **{lat['p99']:.1f} ms** | {err['total']} | "
            f"{rss['before']['total']:.0f} → {rss['after']['total']:.0f} MiB |\n\n"
            f"Picture: {r['picture']['what']} ({r['picture']['bytes']:,} bytes); server CPU "
            f"{r['server_cpu_ms_per_request']:.2f} ms per request. Machine: {r['machine'].get('cpu')}, "
            f"{r['machine'].get('cores')} cores; load average before {r['load_average']['before'][0]:.2f}.")


def render_startup(r: dict[str, Any]) -> str:
    p, t = r["predict_seconds"], r["import_torch_seconds"]
    return (f"| command | median of {r['rounds']} (alternating) |\n|---|---|\n"
            f"| `{r['command']}` | **{p['median']:.2f} s** |\n| `{r['baseline']}` | {t['median']:.2f} s |\n\n"
            f"Ratio **{r['ratio']:.2f}** (target ≤ {r['target_ratio']}); torch imported by predict: "
            f"{'yes' if r['torch_imported_by_predict'] else 'no'}. Machine: {r['machine'].get('cpu')}, "
            f"{r['machine'].get('cores')} cores.")


def render_adversarial(r: dict[str, Any]) -> str:
    eps = [f"{e:g}" for e in r["eps"]]
    head = ("| model | clean | corruption mean | " + " | ".join(f"PGD ε = {e}" for e in eps)
            + " | training |\n|---|---|---|" + "---|" * len(eps) + "---|\n")
    rows = [f"| {n} | {_pct(m['clean_accuracy'])} | {_pct(m['corruption_mean'])} | "
            + " | ".join(_pct(m["pgd"][e]) for e in eps) + f" | {m['train_seconds']:.0f} s |"
            for n, m in r["models"].items()]
    return (f"{r['model']}, {r['steps']} steps of batch 128 each, seed {r['seed']}. Training attack: "
            f"{r['training_attack']}. Evaluation: {r['evaluation_attack']}; corruptions: first "
            f"{r['corruption_limit']:,} test images.\n\n" + head + "\n".join(rows)
            + f"\n\n`{r['commands']['standard']}`  \n`{r['commands']['adversarial']}`\n\n"
            + _machine(r.get("machine")))


def render_rewrite(r: dict[str, Any]) -> str:
    rows = []
    for m in r["models"]:
        b, a = m["summary"]["before"], m["summary"]["after"]
        diff = a["mean"] - b["mean"]
        noise = 2 * max(a["std"], b["std"])
        rows.append(f"| {m['model']} | {m['steps']} × {m['batch_size']} | {len(m['runs']['after'])} | "
                    f"{_pct(b['mean'])} ± {_pct(b['std'])} | {_pct(a['mean'])} ± {_pct(a['std'])} | "
                    f"{100 * diff:+.2f} points | {'within seed noise' if abs(diff) <= noise else '**differs**'} |")
    return ("| model | steps × batch | seeds | before the rewrite | after | difference | verdict (±2 std) |\n"
            "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n" + _machine(r.get("machine")))


FIGURES: dict[str, Figure] = {
    "data_loading": Figure(f"{PYTHON} scripts/measure_data.py --json", render_data),
    "bench_fast_vs_plain": Figure(f"{DIGITLAB} bench fast --seeds 5 --vs plain --json --quiet", render_bench_vs),
    "study_quick": Figure(f"{DIGITLAB} study --preset quick --out {{tmp}}/quick --json --quiet", render_study),
    "study_standard": Figure(f"{DIGITLAB} study --preset standard --out {{tmp}}/standard --json --quiet",
                             render_study_budgets),
    "study_rank_agreement": Figure(f"{PYTHON} scripts/measure_study.py --out {{tmp}}/studies "
                                   "--results {tmp}/agreement.json --json", render_rank_agreement),
    "bench_zoo": Figure(f"{DIGITLAB} bench zoo --json --quiet", render_zoo),
    "precision_accuracy": Figure(f"{PYTHON} scripts/measure_precision_accuracy.py "
                                 "--models cnn-simple,cnn-deep,cnn-enhanced,se-cnn --steps 500 --json",
                                 render_precision),
    "rewrite_accuracy": Figure(f"{PYTHON} scripts/measure_rewrite_accuracy.py --steps 500 --seeds 5", render_rewrite),
    "bench_fast_fashion": Figure(f"{DIGITLAB} bench fast --dataset fashion-mnist --seeds 3 --json --quiet",
                                 render_bench),
    "default_evaluate": Figure(f"{DIGITLAB} evaluate default --json --quiet", render_evaluate),
    "default_onnx": Figure(f"{DIGITLAB} export default --format onnx --quantize int8 --benchmark --threads 1 "
                           "--out {tmp}/default.onnx --json --quiet", render_onnx),
    "pictures": Figure(f"{PYTHON} scripts/measure_pictures.py --n 1000 --json", render_pictures),
    "property_tests": Figure(f"{PYTHON} scripts/measure_property_tests.py", render_property_tests),
    "serve_load": Figure(f"{PYTHON} scripts/load_test.py", render_load),
    "predict_startup": Figure(f"{PYTHON} scripts/measure_predict_startup.py", render_startup),
    "robustness_default": Figure(f"{DIGITLAB} robustness default --suite all --limit 2000 --json --quiet",
                                 render_robustness),
    "adversarial_training": Figure(f"{PYTHON} scripts/measure_adversarial.py --json", render_adversarial),
    "label_issues_mnist_test": Figure(f"{DIGITLAB} label-issues --top 24 --fill --plots {{tmp}}/plots --json --quiet",
                                      render_label_issues,
                                      artifacts=(("plots/label_issues.png", "docs/figures/label_issues.png"),)),
    "sweep_mlp_width": Figure(f"{DIGITLAB} sweep mlp-width --n-trials 4 --set max_steps=30 --out {{tmp}}/sweep "
                              "--json --quiet", render_sweep),
    "finetune_fashion": Figure(f"{PYTHON} scripts/measure_finetune.py --json", render_finetune),
    # long experiments (docs/experiments.md): minutes to hours each on a 2-core CPU
    "fast_variants": Figure(f"{PYTHON} scripts/measure_fast_variants.py --seeds 5 --json", render_variants),
    "recipe_mlp_128_64": Figure(f"{DIGITLAB} train --config mlp-128-64 --out {{tmp}}/run --json --quiet",
                                render_train),
    "recipe_cnn_simple": Figure(f"{DIGITLAB} train --config cnn-simple --out {{tmp}}/run --json --quiet",
                                render_train),
    "recipe_cnn_deep": Figure(f"{DIGITLAB} train --config cnn-deep --out {{tmp}}/run --json --quiet",
                              render_train),
    "bench_best": Figure(f"{DIGITLAB} bench best --seeds 3 --json --quiet", render_bench),
    "bench_fast_vs_reference": Figure(f"{DIGITLAB} bench fast --vs reference --seeds 1 --json --quiet",
                                      render_bench_vs),
}


def shown_command(name: str) -> str:
    """The command as a reader would type it (digitlab on PATH, no scratch paths)."""
    cmd = FIGURES[name].command.replace(DIGITLAB, "digitlab").replace(PYTHON, "python")
    return cmd.replace("{tmp}/", "")


def measure(names: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        fig = FIGURES[name]
        with tempfile.TemporaryDirectory(prefix="digitlab-figure-") as tmp:
            cmd = fig.command.replace("{tmp}", tmp)
            print(f"== {name}: {cmd}", file=sys.stderr, flush=True)
            load_start = os.getloadavg()[0]
            t0 = time.perf_counter()
            out = subprocess.run(shlex.split(cmd), cwd=ROOT, stdout=subprocess.PIPE, check=True, text=True).stdout
            wall = time.perf_counter() - t0
            for produced, kept in fig.artifacts:
                target = ROOT / kept
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp_target = target.with_name(f".{target.name}.tmp")
                tmp_target.write_bytes((Path(tmp) / produced).read_bytes())
                tmp_target.replace(target)
        result = json.loads(out)
        if isinstance(result, dict):  # how busy the machine was, for the figures that show it
            result.setdefault("load_average_1min", {"start": load_start, "end": os.getloadavg()[0]})
        record = {"command": shown_command(name), "wall_seconds": wall, "result": result}
        tmp_path = RESULTS / f".{name}.json.tmp"
        tmp_path.write_text(json.dumps(record, indent=1) + "\n")
        tmp_path.replace(RESULTS / f"{name}.json")


MARK = re.compile(r"(<!-- figure:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /figure:(?P=name) -->)", re.S)


def render() -> int:
    missing = 0
    for doc in DOCS:
        if not doc.is_file():
            continue
        text = doc.read_text()

        def fill(m: re.Match[str], doc: Path = doc) -> str:
            nonlocal missing
            name = m.group("name")
            path = RESULTS / f"{name}.json"
            if name not in FIGURES:
                raise SystemExit(f"{doc.name}: unknown figure {name!r}")
            if not path.is_file():
                missing += 1
                body = f"*Not measured yet: `python scripts/readme_figures.py measure {name}`.*"
            else:
                rec = json.loads(path.read_text())
                # a script that writes results/NAME.json itself stores the result unwrapped, with its command
                result = rec.get("result", rec)
                body = (f"`{rec['command']}` (results/{name}.json):\n\n" + FIGURES[name].render(result))
            return m.group(1) + body.rstrip() + "\n" + m.group(4)

        new = MARK.sub(fill, text)
        if new != text:
            doc.write_text(new)
            print(f"updated {doc.relative_to(ROOT)}", file=sys.stderr)
    return 1 if missing else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["measure", "render", "list"])
    ap.add_argument("names", nargs="*", help="figures to measure (default: all)")
    args = ap.parse_args(argv)
    if args.action == "list":
        for name in FIGURES:
            have = "measured" if (RESULTS / f"{name}.json").is_file() else "missing"
            print(f"{name:24s} {have:9s} {shown_command(name)}")
        return 0
    if args.action == "measure":
        unknown = [n for n in args.names if n not in FIGURES]
        if unknown:
            raise SystemExit(f"unknown figure(s): {', '.join(unknown)}; known: {', '.join(FIGURES)}")
        measure(args.names or list(FIGURES))
    return render()


if __name__ == "__main__":
    sys.exit(main())
