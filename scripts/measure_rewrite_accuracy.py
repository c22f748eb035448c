#!/usr/bin/env python
"""Accuracy after the speed rewrites of the models: a fixed-budget training run before and after, same seeds.

Usage (from the repository root):

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_rewrite_accuracy.py \\
        [--models cnn-deep,cnn-enhanced,se-cnn] [--seeds 3] [--steps 300] [--threads N] > rewrite_accuracy.json

Each model trains with its shipped recipe (``configs/<model>.yaml``: optimiser, schedule, batch size,
registered bf16/channels-last settings, validation split; augmentation off) for ``--steps`` optimizer steps, seed
by seed, in two forms: ``before`` (``nn.Dropout``, ``nn.AdaptiveAvgPool2d(1)``, se-cnn's SE scaling before
the pooling: ``measure_speed_options.previous_form``) and ``after`` (the code as it is), and reports
the test accuracy of the final weights (no selection on the test set). The forms compute the same
function (tests/test_models.py); the fast dropout draws different masks from the same seed, so per-seed
results differ by seed noise, and the means should agree within it. JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure_speed_options import previous_form  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="cnn-deep,cnn-enhanced,se-cnn", help="comma-separated models")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--data-dir", default=None, help="folder with MNIST's IDX files")
    args = parser.parse_args(argv)

    from digitlab.bench.harness import machine_info
    from digitlab.data import load_dataset, make_splits
    from digitlab.errors import DigitlabError
    from digitlab.models import create_model, model_info
    from digitlab.train.config import TrainConfig
    from digitlab.train.loop import Trainer, evaluate_split
    from digitlab.train.recipes import load_config

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        mnist = load_dataset("mnist", args.data_dir, progress=False)
        table: list[dict[str, Any]] = []
        for name in args.models.split(","):
            info = model_info(name)
            base = load_config(info.recipe) if info.recipe else TrainConfig(model=name)
            cfg = base.override(tensorboard=False, max_steps=args.steps, augment=None, early_stopping=False)
            # the recipe's own validation split (a plateau schedule reads it); the test set scores
            splits = make_splits(mnist, cfg.val_fraction, 0)
            runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
            for seed in range(args.seeds):
                for form in ("before", "after"):
                    torch.manual_seed(seed)
                    model = create_model(name, **cfg.model_kwargs)
                    if form == "before":
                        model = previous_form(model)
                    t0 = time.perf_counter()
                    Trainer(model, splits, cfg.override(seed=seed)).fit()
                    seconds = time.perf_counter() - t0
                    acc = evaluate_split(model, splits.test)["accuracy"]
                    runs[form].append({"seed": seed, "test_accuracy": acc, "train_seconds": seconds})
                    print(f"{name} seed {seed} {form}: {100 * acc:.2f}% ({seconds:.1f} s)", file=sys.stderr, flush=True)
            summary = {form: {"mean": statistics.fmean(r["test_accuracy"] for r in rs),
                              "std": statistics.stdev(r["test_accuracy"] for r in rs) if len(rs) > 1 else 0.0}
                       for form, rs in runs.items()}
            table.append({"model": name, "steps": args.steps, "batch_size": cfg.batch_size, "runs": runs,
                          "summary": summary})
    except DigitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    json.dump({"models": table, "machine": machine_info()}, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
