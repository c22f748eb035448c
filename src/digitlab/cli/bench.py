"""``digitlab bench`` and ``digitlab ensemble``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_quiet_arg

BENCH_EPILOG = """examples:
  digitlab bench fast --seeds 5 --vs plain --json
  digitlab bench fast --dataset fashion-mnist --seeds 1 --json
  digitlab bench best --seeds 2 --seed 3 --out runs/best     # seeds 3 and 4
  digitlab bench reference --epochs 2
  digitlab bench zoo --json                                  # every model: engine vs plain loop, ms/step
  digitlab bench zoo --models cnn-deep,se-cnn --steps 20 --threads 2
"""

ENSEMBLE_EPILOG = """examples:
  digitlab ensemble runs/best/best-seed0 runs/best/best-seed1 runs/best/best-seed2 --tta
  digitlab ensemble default runs/a --json
  digitlab ensemble runs/a runs/b runs/c --plots ens/   # ens/mistakes.png: what the ensemble gets wrong
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time a training recipe over seeds", epilog=BENCH_EPILOG,
                       formatter_class=HelpFormatter,
                       description="Train a named recipe once per seed on the chosen dataset and report test "
                                   "accuracy and training time (mean ± std, median). --vs alternates with a "
                                   "second recipe seed by seed and reports the ratio of median training times.")
    p.add_argument("recipe", help="fast, best, plain or reference; or zoo: ms per training step of every model "
                                  "on digitlab's engine against a plain PyTorch loop of the same architecture")
    p.add_argument("--seeds", type=int, default=1, metavar="N", help="number of seeds: --seed, --seed+1, ...")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="first seed")
    p.add_argument("--vs", metavar="RECIPE", help="alternate with another recipe and report the time ratio")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs (the --vs recipe keeps its own)")
    p.add_argument("--out", metavar="DIR",
                   help="keep each engine run as a new folder DIR/RECIPE-seedS (default: runs are not kept)")
    zoo = p.add_argument_group("zoo", "options of `digitlab bench zoo`")
    zoo.add_argument("--models", metavar="A,B", help="comma-separated models (default: every gradient-trained model)")
    zoo.add_argument("--steps", type=int, default=30, metavar="N", help="timed steps per block and loop")
    zoo.add_argument("--batch-size", type=int, default=128, metavar="B", help="batch size of both loops")
    zoo.add_argument("--rounds", type=int, default=3, metavar="R",
                     help="alternating engine/plain blocks per model (medians are reported)")
    zoo.add_argument("--threads", type=int, default=None, metavar="T",
                     help="torch threads during the measurement (default: torch's own setting)")
    add_data_args(p)
    add_device_arg(p)
    add_json_arg(p, "the runs, their summary and the machine")
    add_quiet_arg(p)
    p.set_defaults(handler=run_bench_cmd)

    e = sub.add_parser("ensemble", help="average several runs' probabilities on the test set",
                       epilog=ENSEMBLE_EPILOG, formatter_class=HelpFormatter,
                       description="Average the class probabilities of several models on the test (or train) "
                                   "split of their dataset. The members must share a dataset; it is read from "
                                   "their checkpoints unless --dataset overrides it.")
    e.add_argument("runs", nargs="+", metavar="RUN",
                   help="'default' (the shipped model), run directories or .safetensors checkpoints")
    e.add_argument("--tta", action="store_true", help="also average over small test-time shifts")
    e.add_argument("--split", default="test", choices=["test", "train"], help="which split to score")
    e.add_argument("--plots", metavar="DIR",
                   help="new folder that receives mistakes.png, a grid of the ensemble's mistakes")
    add_data_args(e, from_run=True)
    add_device_arg(e)
    add_json_arg(e, "members, ensemble accuracy, error overlap and every mistake")
    e.set_defaults(handler=run_ensemble_cmd)


def _print_run(run: dict[str, Any]) -> None:
    print(f"  {run['recipe']:<10} seed {run['seed']}: test accuracy {run['test_accuracy']:.4f}  "
          f"train {run['train_seconds']:.2f}s  total {run['total_seconds']:.2f}s", file=sys.stderr, flush=True)


def run_zoo_cmd(args: argparse.Namespace) -> int:
    from digitlab.bench.zoo import ZooRow, bench_zoo
    from digitlab.errors import ConfigError

    for name, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--rounds", args.rounds)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")

    def progress(row: ZooRow) -> None:
        print(f"  {row.model:<16} engine {row.engine_ms_per_step:8.2f} ms/step   plain {row.plain_ms_per_step:8.2f} "
              f"ms/step   ratio {row.ratio:.2f}", file=sys.stderr, flush=True)

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    result = bench_zoo(models, steps=args.steps, batch_size=args.batch_size, device=args.device,
                       dataset=args.dataset, data_dir=args.data_dir, rounds=args.rounds, threads=args.threads,
                       on_row=None if args.quiet or args.json else progress)
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    print(f"{'model':<16} {'engine ms/step':>14} {'plain ms/step':>14} {'ratio':>6}  settings")
    for row in result.models:
        print(f"{row.model:<16} {row.engine_ms_per_step:14.2f} {row.plain_ms_per_step:14.2f} {row.ratio:6.2f}  "
              f"{row.settings.to_dict()}")
    m = result.machine
    print(f"machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}")
    return 0


def run_bench_cmd(args: argparse.Namespace) -> int:
    from digitlab.bench import run_bench, run_bench_vs

    if args.recipe == "zoo":
        if args.vs or args.epochs is not None or args.out:
            from digitlab.errors import ConfigError

            raise ConfigError("bench zoo takes --models, --steps, --batch-size, --rounds and --threads, "
                              "not --vs, --epochs or --out")
        return run_zoo_cmd(args)
    zoo_given = [o for o, v in (("--models", args.models), ("--threads", args.threads)) if v is not None]
    if zoo_given:
        from digitlab.errors import ConfigError

        raise ConfigError(f"{', '.join(zoo_given)} only apply to `digitlab bench zoo`")

    kw: dict[str, Any] = dict(seeds=args.seeds, seed=args.seed, dataset=args.dataset, data_dir=args.data_dir,
                              epochs=args.epochs, out=args.out, device=args.device,
                              on_run=None if args.quiet else _print_run)
    result = run_bench_vs(args.recipe, args.vs, **kw) if args.vs else run_bench(args.recipe, **kw)
    if args.json:
        print(json.dumps(result))
        return 0
    for block in [result] + ([result["vs"]] if "vs" in result else []):
        s = block["summary"]
        print(f"{block['recipe']} on {result['dataset']}: accuracy {s['test_accuracy']['mean']:.4f} ± "
              f"{s['test_accuracy']['std']:.4f} (min {s['test_accuracy']['min']:.4f}), train seconds median "
              f"{s['train_seconds']['median']:.2f} (mean {s['train_seconds']['mean']:.2f} ± "
              f"{s['train_seconds']['std']:.2f}) over {len(block['runs'])} seeds")
    if "ratio_median_train_seconds" in result:
        print(f"ratio of median training time {args.recipe}/{args.vs}: {result['ratio_median_train_seconds']:.3f}")
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['torch_threads']} torch threads, torch {m['torch']}")
    return 0


def run_ensemble_cmd(args: argparse.Namespace) -> int:
    from digitlab.bench.ensemble import ensemble_runs

    result = ensemble_runs(args.runs, dataset=args.dataset, data_dir=args.data_dir, split=args.split,
                           tta=args.tta, plots=args.plots, device=args.device)
    if args.json:
        print(json.dumps(result))
        return 0
    for m in result["members"]:
        print(f"  {m['source']}: {m['accuracy']:.4f}")
    print(f"ensemble of {len(result['members'])} on {result['dataset']} {result['split']}: {result['accuracy']:.4f}"
          + (f"  (with TTA: {result['tta_accuracy']:.4f})" if result.get("tta_accuracy") is not None else ""))
    e = result["errors"]
    print(f"mistakes on {result['n']} images: ensemble {e['ensemble_wrong']}, every member {e['all_members_wrong']}, "
          f"most members {e['majority_wrong']}, any member {e['any_member_wrong']}")
    if result.get("plot"):
        print(f"mistakes plotted in {result['plot']}")
    return 0
