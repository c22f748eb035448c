#!/usr/bin/env python
"""Does the engine's speed cost accuracy? Each model trained for the same number of steps with its
fast training settings (bf16 autocast, channels-last: ``TrainSettings`` in the model registry) and in
plain float32, same seeds, compared on the MNIST test set.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_precision_accuracy.py [--steps N] [--seeds K] [--json]

Both sides run the same recipe, data order, augmentation and dropout (same seed); only the arithmetic
precision and the memory format differ. The result names a difference "within seed noise" when it is
smaller than twice the larger of the two standard deviations over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

CONV_ZOO = ("cnn-simple", "cnn-deep", "cnn-enhanced", "se-cnn", "resnet-mini", "densenet-mini")


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(CONV_ZOO), help="comma-separated registered models")
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of every run (default 300)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    args = ap.parse_args(argv)

    from digitlab.bench import machine_info
    from digitlab.data import load_dataset
    from digitlab.models.registry import train_settings
    from digitlab.train.config import TrainConfig
    from digitlab.train.run import train_run

    mnist = load_dataset("mnist", progress=False)
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        fast = train_settings(name)
        acc: dict[str, list[float]] = {"engine": [], "float32": []}
        secs: dict[str, list[float]] = {"engine": [], "float32": []}
        for seed in range(args.seeds):
            # alternate the two sides so drifting machine load hits both alike
            for side, extra in (("engine", {}), ("float32", {"amp": False, "channels_last": False})):
                cfg = TrainConfig(model=name, tensorboard=False, epochs=1000, max_steps=args.steps, seed=seed,
                                  **extra)
                r = train_run(cfg, None, progress=False, dataset=mnist)
                acc[side].append(r.metrics["test_accuracy"])
                secs[side].append(r.metrics["train_seconds"])
                print(f"[measure] {name} seed {seed} {side}: {r.metrics['test_accuracy']:.4f}", file=sys.stderr)
        e, f = _summary(acc["engine"]), _summary(acc["float32"])
        diff = e["mean"] - f["mean"]
        rows.append({"model": name, "settings": fast.to_dict(), "engine": {**e, "runs": acc["engine"]},
                     "float32": {**f, "runs": acc["float32"]}, "difference": diff,
                     "within_noise": abs(diff) <= 2 * max(e["std"], f["std"]),
                     "train_seconds_median": {k: statistics.median(v) for k, v in secs.items()}})
    result: dict[str, Any] = {"steps": args.steps, "seeds": args.seeds, "dataset": "mnist", "models": rows,
                              "rule": "within seed noise: |difference| <= 2 x the larger std over seeds",
                              "machine": machine_info()}
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for r in rows:
            print(f"{r['model']:14s} engine {100 * r['engine']['mean']:.2f} ± {100 * r['engine']['std']:.2f}  "
                  f"float32 {100 * r['float32']['mean']:.2f} ± {100 * r['float32']['std']:.2f}  "
                  f"{'within noise' if r['within_noise'] else 'DIFFERS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
