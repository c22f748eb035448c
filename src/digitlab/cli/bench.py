"""``digitlab bench`` and ``digitlab ensemble``."""

from __future__ import annotations

import argparse
import json
import sys

from digitlab.cli import HelpFormatter, add_data_args

BENCH_EPILOG = """examples:
  digitlab bench fast --seeds 5 --vs plain --json
  digitlab bench best --seeds 3 --out runs/best
  digitlab bench reference --epochs 2
"""

ENSEMBLE_EPILOG = """examples:
  digitlab ensemble runs/best/best-seed0 runs/best/best-seed1 runs/best/best-seed2 --tta
  digitlab ensemble runs/a runs/b --json
  digitlab ensemble runs/a runs/b runs/c --plot mistakes.png   # look at what the ensemble gets wrong
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time a training recipe over seeds", epilog=BENCH_EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("recipe", help="fast, best, plain or reference")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0, 1, ...)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--vs", metavar="RECIPE", help="alternate with another recipe and report the time ratio")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (the --vs recipe keeps its own)")
    p.add_argument("--out", help="keep each run's directory under this folder (engine recipes)")
    p.add_argument("--json", action="store_true")
    add_data_args(p)
    p.set_defaults(handler=run_bench_cmd)

    e = sub.add_parser("ensemble", help="average several runs' probabilities on the test set",
                       epilog=ENSEMBLE_EPILOG, formatter_class=HelpFormatter)
    e.add_argument("runs", nargs="+", help="run directories or checkpoints")
    e.add_argument("--tta", action="store_true", help="also average over small test-time shifts")
    e.add_argument("--split", default="test", choices=["test", "train"])
    e.add_argument("--plot", metavar="PNG", help="write a grid of the ensemble's mistakes to this new file")
    e.add_argument("--json", action="store_true")
    add_data_args(e)
    e.set_defaults(handler=run_ensemble_cmd)


def _print_run(run: dict) -> None:
    print(f"  {run['recipe']:<10} seed {run['seed']}: test accuracy {run['test_accuracy']:.4f}  "
          f"train {run['train_seconds']:.2f}s  total {run['total_seconds']:.2f}s", file=sys.stderr, flush=True)


def run_bench_cmd(args: argparse.Namespace) -> int:
    from digitlab.bench import run_bench, run_bench_vs

    if args.seeds < 1:
        from digitlab.errors import ConfigError

        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    kw = dict(seeds=args.seeds, first_seed=args.first_seed, data_dir=args.data_dir, epochs=args.epochs,
              out=args.out, on_run=_print_run)
    result = run_bench_vs(args.recipe, args.vs, **kw) if args.vs else run_bench(args.recipe, **kw)
    if args.json:
        print(json.dumps(result))
        return 0
    for block in [result] + ([result["vs"]] if "vs" in result else []):
        s = block["summary"]
        print(f"{block['recipe']}: accuracy {s['test_accuracy']['mean']:.4f} ± {s['test_accuracy']['std']:.4f} "
              f"(min {s['test_accuracy']['min']:.4f}), train seconds median {s['train_seconds']['median']:.2f} "
              f"(mean {s['train_seconds']['mean']:.2f} ± {s['train_seconds']['std']:.2f}) over "
              f"{len(block['runs'])} seeds")
    if "ratio_median_train_seconds" in result:
        print(f"ratio of median training time {args.recipe}/{args.vs}: {result['ratio_median_train_seconds']:.3f}")
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}")
    return 0


def run_ensemble_cmd(args: argparse.Namespace) -> int:
    from digitlab.bench.ensemble import ensemble_runs

    result = ensemble_runs(args.runs, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                           tta=args.tta, plot=args.plot)
    if args.json:
        print(json.dumps(result))
        return 0
    for m in result["members"]:
        print(f"  {m['source']}: {m['accuracy']:.4f}")
    print(f"ensemble of {len(result['members'])}: {result['accuracy']:.4f}"
          + (f"  (with TTA: {result['tta_accuracy']:.4f})" if result.get("tta_accuracy") is not None else ""))
    e = result["errors"]
    print(f"mistakes on {result['n']} images: ensemble {e['ensemble_wrong']}, every member {e['all_members_wrong']}, "
          f"most members {e['majority_wrong']}, any member {e['any_member_wrong']}")
    if result.get("plot"):
        print(f"mistakes plotted in {result['plot']}")
    return 0
