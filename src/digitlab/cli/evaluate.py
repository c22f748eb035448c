"""``digitlab evaluate RUN``: metrics, calibration and speed of a saved model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from digitlab.cli import (
    HelpFormatter,
    add_data_args,
    add_device_arg,
    add_json_arg,
    add_model_arg,
    add_quiet_arg,
    model_from_args,
)

EPILOG = """MODEL is scored on the dataset it was trained on (from its checkpoint) unless --dataset says otherwise.

examples:
  digitlab evaluate default --json                  # the shipped model (ece and ece_uncalibrated)
  digitlab evaluate runs/a
  digitlab evaluate --model runs/a --json > eval.json
  digitlab evaluate runs/a/model.safetensors --split train --no-speed
  digitlab evaluate runs/a --plots runs/a/eval-plots
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="evaluate a trained run or checkpoint on a dataset split",
                       description="Accuracy, loss, top-k, per-class precision/recall/F1, confusion "
                                   "matrix, calibration (ECE) and inference speed of a saved model.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    add_model_arg(p, positional=True)
    add_data_args(p, from_run=True)
    p.add_argument("--split", choices=("test", "train"), default="test", help="split to evaluate on")
    p.add_argument("--no-speed", action="store_true", help="skip the latency/throughput measurements")
    p.add_argument("--speed-repeats", type=int, default=50,
                   help="timed batch-1 calls for latency, spread over 5 rounds")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="write confusion-matrix, per-class and reliability PNGs to this new folder")
    add_device_arg(p)
    p.add_argument("--batch-size", type=int, default=1000, help="images per forward pass")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images (default: all)")
    add_quiet_arg(p)
    add_json_arg(p, "every metric")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from digitlab.errors import ConfigError
    from digitlab.evaluate import evaluate_run

    if args.speed_repeats < 1:
        raise ConfigError(f"--speed-repeats must be >= 1, got {args.speed_repeats}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    plots_dir = None
    if args.plots:
        from digitlab.utils import ensure_new_dir

        # check before the (slow) evaluation so a bad --plots fails fast
        plots_dir = Path(args.plots)
        if plots_dir.exists() and (not plots_dir.is_dir() or any(plots_dir.iterdir())):
            ensure_new_dir(plots_dir, "plots directory")
    evaluation = evaluate_run(model_from_args(args), args.dataset, args.split, args.data_dir,
                              device=args.device, batch_size=args.batch_size, speed=not args.no_speed,
                              speed_repeats=args.speed_repeats, limit=args.limit,
                              progress=not args.json and not args.quiet and sys.stderr.isatty())
    result = evaluation.to_dict()
    if plots_dir is not None:
        result["plots"] = write_plots(result, plots_dir)
    if args.json:
        from digitlab.utils import to_jsonable

        print(json.dumps(to_jsonable(result)))
    else:
        print(format_summary(result))
    return 0


def write_plots(result: dict[str, Any], out_dir: Path) -> list[str]:
    """Write the evaluation figures into a new ``out_dir``; returns the file paths."""
    from digitlab.analysis import plots
    from digitlab.utils import ensure_new_dir, write_files_atomic

    out = ensure_new_dir(out_dir, "plots directory")
    figures = {
        "confusion_matrix.png": plots.confusion_matrix_png(
            result["confusion_matrix"], result["class_names"],
            title=f"{result.get('model')} on {result.get('dataset')} {result.get('split')}"),
        "reliability.png": plots.reliability_png(result["reliability"]),
        "per_class.png": plots.per_class_metrics_png(result["per_class"]),
    }
    return write_files_atomic(out, figures)


def format_summary(r: dict[str, Any]) -> str:
    """Readable multi-line summary of an :func:`evaluate_run` result."""
    lines = [
        f"{r.get('model')} on {r.get('dataset')} {r.get('split')} ({r['n']} images) — {r.get('checkpoint')}",
        f"  accuracy  {100 * r['accuracy']:.2f}%   ({r['n'] - round(r['accuracy'] * r['n'])} errors)",
        f"  loss      {r['loss']:.4f}   log-loss {r['log_loss']:.4f}",
        f"  top-3     {100 * r['top3']:.2f}%   top-5 {100 * r['top5']:.2f}%",
        f"  ECE       {100 * r['ece']:.2f}%  (15 bins)" + (
            f"   {100 * r['ece_uncalibrated']:.2f}% before temperature scaling (T = {r['temperature']:.3f})"
            if r.get("temperature", 1.0) != 1.0 and r.get("ece_uncalibrated") is not None else ""),
        f"  macro F1  {r['macro_avg']['f1']:.4f}   weighted F1 {r['weighted_avg']['f1']:.4f}",
        f"  params    {r['parameters']:,}" + (f"   checkpoint {r['checkpoint_bytes'] / 1024:.1f} KiB"
                                             if r.get("checkpoint_bytes") is not None else ""),
    ]
    if r.get("latency_ms_p50") is not None:
        lines.append(f"  latency   p50 {r['latency_ms_p50']:.3f} ms  p95 {r['latency_ms_p95']:.3f} ms "
                     f"(batch 1)   throughput {r['throughput_per_s']:,.0f} img/s")
    lines.append(f"  predict   {r['predict_seconds']:.2f} s for the whole split")
    lines.append("")
    lines.append(f"  {'class':>12} {'precision':>9} {'recall':>9} {'f1':>9} {'support':>8}")
    for row in r["per_class"]:
        lines.append(f"  {row['class']:>12} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} "
                     f"{row['support']:8d}")
    if r["top_confusions"]:
        lines.append("")
        lines.append("  most confused (true → predicted: count)")
        for c in r["top_confusions"][:5]:
            lines.append(f"    {c['true_name']} → {c['pred_name']}: {c['count']}")
    if r.get("plots"):
        lines.append("")
        lines.append("  plots: " + ", ".join(r["plots"]))
    return "\n".join(lines)
