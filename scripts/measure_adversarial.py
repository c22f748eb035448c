#!/usr/bin/env python
"""A standard and a PGD-trained CNN side by side: clean accuracy, corruptions, PGD at ε = 0.1/0.2/0.3.

    DIGITLAB_DATA_DIR=../shared/data/mnist python scripts/measure_adversarial.py [--steps 1200] [--json]

Trains ``--model`` twice on MNIST with the same recipe, optimizer steps and seed: once on clean
batches, once with ``--adversarial pgd`` (Madry et al. 2018: every batch replaced by its L∞ PGD
attack within ``--train-eps``, ``--train-steps`` steps of 2.5·ε/steps from a random start, ε ramped
up over ``--ramp`` epochs). Then scores both on the test set: clean accuracy (all 10,000 images),
the mean over the 15 MNIST-C corruptions (first ``--corruption-limit`` images) and robust accuracy
under a stronger evaluation attack than the training one, PGD-``--eval-steps`` of ``--eval-step-size``
with a random start (first ``--adv-limit`` images), with FGSM beside it as a sanity check.
The equivalent CLI commands are printed in the result.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="cnn-simple", help="registered model (default cnn-simple)")
    ap.add_argument("--steps", type=int, default=1200, help="optimizer steps of both runs (batch 128)")
    ap.add_argument("--seed", type=int, default=0, help="seed of both runs and of the evaluation")
    ap.add_argument("--train-eps", type=float, default=0.3, help="L∞ ε of the training attack")
    ap.add_argument("--train-steps", type=int, default=7, help="PGD steps of the training attack")
    ap.add_argument("--ramp", type=float, default=1.0, help="epochs over which the training ε ramps up")
    ap.add_argument("--eval-steps", type=int, default=40, help="PGD steps of the evaluation attack")
    ap.add_argument("--eval-step-size", type=float, default=0.01, help="PGD step size of the evaluation attack")
    ap.add_argument("--eps", default="0.1,0.2,0.3", help="evaluation ε values")
    ap.add_argument("--adv-limit", type=int, default=1000, help="test images attacked")
    ap.add_argument("--corruption-limit", type=int, default=2000, help="test images corrupted")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for training and evaluation")
    ap.add_argument("--out", default=None,
                    help="a new folder to keep the two runs in (standard/, adversarial/); default: a temporary one")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)

    import torch

    from digitlab.analysis.adversarial import evaluate_adversarial, parse_eps
    from digitlab.analysis.corruptions import evaluate_corruptions
    from digitlab.bench import machine_info
    from digitlab.data import load_dataset
    from digitlab.train.config import TrainConfig
    from digitlab.train.run import train_run
    from digitlab.utils import ensure_new_dir

    eps = parse_eps(args.eps)
    torch.set_num_threads(args.threads)
    ds = load_dataset("mnist", progress=False)
    base = TrainConfig(model=args.model, epochs=1000, max_steps=args.steps, batch_size=128, seed=args.seed,
                       threads=args.threads, tensorboard=False)
    variants = {
        "standard": base,
        "adversarial": base.override(adversarial="pgd", adv_eps=args.train_eps, adv_steps=args.train_steps,
                                     adv_ramp=args.ramp),
    }
    train_flags = f"--model {args.model} --max-steps {args.steps} --seed {args.seed} --set threads={args.threads}"
    commands = {
        "standard": f"digitlab train {train_flags} --out runs/standard",
        "adversarial": (f"digitlab train {train_flags} --adversarial pgd --set adv_eps={args.train_eps:g} "
                        f"--set adv_steps={args.train_steps} --set adv_ramp={args.ramp:g} --out runs/adversarial"),
        "evaluate": (f"digitlab robustness runs/NAME --suite adversarial --eps {','.join(f'{e:g}' for e in eps)} "
                     f"--steps {args.eval_steps} --step-size {args.eval_step_size:g} --limit {args.adv_limit} "
                     f"--seed {args.seed} --json; digitlab robustness runs/NAME --suite corruptions "
                     f"--limit {args.corruption_limit} --seed {args.seed} --json"),
    }
    models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="digitlab-adversarial-") as tmp:
        root = ensure_new_dir(Path(args.out), "output folder") if args.out else Path(tmp)
        for name, cfg in variants.items():
            print(f"measure_adversarial: training {name} ({args.steps} steps)", file=sys.stderr, flush=True)
            run = train_run(cfg, root / name, progress=False, dataset=ds)
            model = run.model.eval()
            t0 = time.perf_counter()
            corr = evaluate_corruptions(model, ds.test_images[:args.corruption_limit],
                                        ds.test_labels[:args.corruption_limit], seed=args.seed)
            adv = evaluate_adversarial(model, ds.test_images[:args.adv_limit], ds.test_labels[:args.adv_limit],
                                       eps, args.eval_steps, args.eval_step_size, seed=args.seed)
            models[name] = {
                "clean_accuracy": run.metrics["test_accuracy"],
                "corruption_mean": corr.mean,
                "per_corruption": corr.per_corruption,
                "pgd": adv.to_dict()["pgd"],
                "fgsm": adv.to_dict()["fgsm"],
                "attacked_clean_accuracy": adv.clean_accuracy,
                "attack_warnings": adv.warnings,
                "train_seconds": run.metrics["train_seconds"],
                "eval_seconds": time.perf_counter() - t0,
                "steps": run.metrics["steps"],
                "config": {k: v for k, v in cfg.to_dict().items()
                           if k in ("model", "max_steps", "batch_size", "optimizer", "lr", "schedule", "seed",
                                    "adversarial", "adv_eps", "adv_steps", "adv_step_size", "adv_ramp")},
                "run_dir": str(root / name) if args.out else None,
            }
    result = {
        "model": args.model, "dataset": "mnist", "steps": args.steps, "seed": args.seed,
        "training_attack": (f"L∞ PGD-{args.train_steps}, ε={args.train_eps:g}, step 2.5·ε/{args.train_steps}, "
                            f"random start, ε ramped over {args.ramp:g} epoch(s)"),
        "evaluation_attack": (f"L∞ PGD-{args.eval_steps}, step {args.eval_step_size:g}, random start "
                              f"(FGSM beside it), first {args.adv_limit} test images"),
        "eps": eps, "adv_limit": args.adv_limit, "corruption_limit": args.corruption_limit,
        "models": models, "commands": commands, "machine": machine_info(),
    }
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.model}, {args.steps} steps each; evaluation attack: {result['evaluation_attack']}")
    head = f"{'model':<12} {'clean':>7} {'corr.mean':>9} " + " ".join(f"{'PGD ' + format(e, 'g'):>8}" for e in eps)
    print(head + f" {'train s':>8}")
    for name, m in models.items():
        pgd = " ".join(f"{100 * m['pgd'][format(e, 'g')]:7.2f}%" for e in eps)
        print(f"{name:<12} {100 * m['clean_accuracy']:6.2f}% {100 * m['corruption_mean']:8.2f}% {pgd} "
              f"{m['train_seconds']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
