#!/usr/bin/env python
"""Fine-tuning MNIST → Fashion-MNIST against training from scratch at the same budget.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_finetune.py [--steps 300] [--seeds 3] [--json]

Trains ``--model`` on MNIST once (``--source-steps``), then, for each seed, three runs on
Fashion-MNIST with the same number of optimizer steps and the same recipe: from scratch, fine-tuned
from the MNIST run (``init_from``; a fresh classifier head, since the classes differ), and fine-tuned
with the feature layers frozen (``freeze``). Reports Fashion-MNIST test accuracy and training time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-simple", help="registered model")
    ap.add_argument("--source-steps", type=int, default=800, help="optimizer steps of the MNIST source run")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every Fashion-MNIST run")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of the Fashion-MNIST runs")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    from digitlab.bench import machine_info
    from digitlab.data import load_dataset
    from digitlab.train.config import TrainConfig
    from digitlab.train.run import train_run

    fashion = load_dataset("fashion-mnist", progress=False)
    base = TrainConfig(model=args.model, tensorboard=False, epochs=1000)
    rows: dict[str, list[dict[str, Any]]] = {"scratch": [], "fine-tuned": [], "fine-tuned, frozen features": []}
    with tempfile.TemporaryDirectory(prefix="digitlab-finetune-") as tmp:
        src_dir = Path(tmp) / "mnist-source"
        src = train_run(base.override(max_steps=args.source_steps, dataset="mnist"), src_dir, progress=False)
        for seed in range(args.seeds):
            common = dict(max_steps=args.steps, dataset="fashion-mnist", seed=seed)
            variants = {"scratch": base.override(**common),
                        "fine-tuned": base.override(**common, init_from=str(src_dir)),
                        "fine-tuned, frozen features": base.override(**common, init_from=str(src_dir), freeze=True)}
            for name, cfg in variants.items():
                r = train_run(cfg, None, progress=False, dataset=fashion)
                rows[name].append({"seed": seed, "test_accuracy": r.metrics["test_accuracy"],
                                   "train_seconds": r.metrics["train_seconds"]})
    summary = {name: {"accuracy_mean": statistics.fmean(x["test_accuracy"] for x in runs),
                      "accuracy_std": statistics.stdev(x["test_accuracy"] for x in runs) if len(runs) > 1 else 0.0,
                      "train_seconds_median": statistics.median(x["train_seconds"] for x in runs), "runs": runs}
               for name, runs in rows.items()}
    result = {"model": args.model, "source_steps": args.source_steps,
              "source_mnist_accuracy": src.metrics["test_accuracy"], "steps": args.steps, "seeds": args.seeds,
              "variants": summary, "machine": machine_info()}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"source: {args.model} on MNIST, {args.source_steps} steps: {100 * src.metrics['test_accuracy']:.2f}%")
    for name, s in summary.items():
        print(f"{name:28s} Fashion-MNIST {100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}% "
              f"({args.steps} steps, {s['train_seconds_median']:.1f} s median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
