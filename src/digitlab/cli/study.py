"""``digitlab study`` (the main job) and ``digitlab compare``."""

from __future__ import annotations

import argparse
import json

from digitlab.cli import HelpFormatter, add_data_args

STUDY_EPILOG = """presets:
  smoke   seconds; a few small models (used by the tests)
  quick   the whole zoo at reduced epochs, about 10 minutes on 2 CPU cores
  full    the reference notebooks' recipes with 3 seeds (hours on a CPU)

examples:
  digitlab study --preset quick --out studies/quick
  digitlab study --preset full --out studies/full
  digitlab study --preset full --out studies/full --resume   # after an interruption
"""

COMPARE_EPILOG = """examples:
  digitlab compare runs/a runs/b runs/c
  digitlab compare runs/* --json > comparison.json
  digitlab compare runs/a runs/b --plots figs/
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="explore, train, evaluate, analyse and compare: one HTML report",
                       epilog=STUDY_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--preset", default="quick", choices=["smoke", "quick", "full"])
    p.add_argument("--out", required=True, help="study directory (must not exist, unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study in --out")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--json", action="store_true", help="print the summary table as JSON at the end")
    p.add_argument("--data-dir", default=None, help="folder with the four MNIST IDX files")
    p.set_defaults(handler=run_study_cmd)

    c = sub.add_parser("compare", help="compare trained runs: accuracy CIs, significance, cost, picks",
                       epilog=COMPARE_EPILOG, formatter_class=HelpFormatter)
    c.add_argument("runs", nargs="+", help="run directories or checkpoints")
    c.add_argument("--speed-repeats", type=int, default=30, help="batch-1 latency calls per model (0: skip)")
    c.add_argument("--plots", metavar="DIR", help="write the Pareto and accuracy plots here (new folder)")
    c.add_argument("--json", action="store_true")
    add_data_args(c)
    c.set_defaults(handler=run_compare_cmd)


def run_study_cmd(args: argparse.Namespace) -> int:
    from digitlab.report.study import run_study

    data = run_study(args.preset, args.out, data_dir=args.data_dir, resume=args.resume,
                     quiet=args.quiet or args.json)
    if args.json:
        print(json.dumps({"out": args.out, "wall_seconds": data["wall_seconds"],
                          "models": data["comparison"]["models"],
                          "recommendations": data["comparison"]["recommendations"]}))
    else:
        print(f"report: {args.out}/report.html  (summary: {args.out}/summary.md, numbers: {args.out}/report.json)")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    from digitlab.report.compare import compare_sources, comparison_figures, format_table

    dataset = args.dataset if args.dataset != "mnist" else None
    result, _ = compare_sources(args.runs, dataset=dataset, data_dir=args.data_dir,
                                speed_repeats=args.speed_repeats)
    if args.plots:
        from digitlab.utils import ensure_new_dir, write_bytes_atomic

        folder = ensure_new_dir(args.plots, "plots directory")
        for name, png in comparison_figures(result).items():
            write_bytes_atomic(folder / f"{name}.png", png)
    print(json.dumps(result) if args.json else format_table(result))
    return 0
