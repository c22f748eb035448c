"""``digitlab study`` (the main job) and ``digitlab compare``."""

from __future__ import annotations

import argparse
import json
import sys

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_quiet_arg

STUDY_EPILOG = """presets (--preset; default quick):
  smoke     seconds: 4 small models x 2 seeds at 2 s each (used by the tests)
  quick     the whole zoo (15 models) at one equal budget of 8 s of training per run, 2 seeds;
            4 minutes of training (15 models x 2 seeds x 8 s), plus evaluation
  standard  the whole zoo at 15 s, 60 s and 240 s per run (accuracy-vs-budget curves), 1 seed;
            79 minutes of training alone (15 models × 315 s), plus evaluation
  full      the reference notebooks' own recipes, 3 seeds: hours on a CPU (meant for a GPU)

budgets (--budget): a time (30s, 2m), passes over the training set (2epochs) or images seen (60000).
A time budget is measured in a short warm-up per model and planned as a step count; each run holds
the budget by re-planning its length from its own step times, and records the plan it followed in
its config.yaml, so `digitlab train --config RUN/config.yaml` repeats a run exactly.

examples:
  digitlab study --out studies/quick                                  # the quick preset
  digitlab study --models cnn-simple,mlp-128-64 --budget 10s --out studies/two
  digitlab study --preset standard --out studies/standard
  digitlab study --dataset fashion-mnist --preset smoke --out studies/fashion
  digitlab study --out studies/q2 --include runs/my-cnn               # add your run as a reference row
  digitlab study --preset full --out studies/full --resume            # after an interruption
"""

COMPARE_EPILOG = """Each run is scored on its own dataset (from its checkpoint); runs trained on different
datasets are refused unless --dataset names the one to score them all on.

examples:
  digitlab compare runs/a runs/b runs/c
  digitlab compare default runs/a --json > comparison.json
  digitlab compare runs/a runs/b --plots figs/
"""


def _models(text: str) -> list[str]:
    return [m.strip() for m in text.split(",") if m.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("study", help="train the model zoo at equal budgets, evaluate, compare: one HTML report",
                       epilog=STUDY_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--preset", default="quick", choices=["smoke", "quick", "standard", "full"],
                   help="what to compare and at which budget (see 'presets' below); --models, --budget, "
                        "--seeds and --dataset override it")
    p.add_argument("--out", required=True, help="study folder to create (a new folder; with --resume, the "
                                                "folder of the interrupted study)")
    p.add_argument("--models", type=_models, default=None, metavar="A,B,C",
                   help="comma-separated model names (default: the preset's; see `digitlab models`)")
    p.add_argument("--budget", type=_models, default=None, metavar="BUDGET",
                   help="training budget per run: 30s, 2m, 2epochs or a number of images; several, comma-"
                        "separated, give accuracy-vs-budget curves (default: the preset's)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="seeds per model, starting at --seed (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--include", action="append", default=[], metavar="RUN",
                   help="score this run beside the study's as a reference row (not trained by the study); "
                        "repeatable. The shipped model is always a reference row on MNIST")
    p.add_argument("--resume", action="store_true", help="continue the interrupted study in --out")
    add_data_args(p)
    add_device_arg(p)
    add_quiet_arg(p)
    add_json_arg(p, "the verdict and comparison table")
    p.set_defaults(handler=run_study_cmd)

    c = sub.add_parser("compare", help="compare trained runs: accuracy CIs, significance, cost, picks",
                       epilog=COMPARE_EPILOG, formatter_class=HelpFormatter)
    c.add_argument("runs", nargs="+", metavar="RUN",
                   help="run directories, .safetensors checkpoints or 'default' (the shipped model)")
    c.add_argument("--speed-repeats", type=int, default=30,
                   help="batch-1 latency calls per model, spread over 5 interleaved rounds (0: skip timing)")
    c.add_argument("--plots", metavar="DIR", help="write the accuracy and Pareto plots here (a new folder)")
    add_data_args(c, from_run=True)
    add_device_arg(c)
    add_quiet_arg(c)
    add_json_arg(c, "the comparison (models, pairwise tests, recommendations)")
    c.set_defaults(handler=run_compare_cmd)


def run_study_cmd(args: argparse.Namespace) -> int:
    from digitlab.report.study import run_study

    data = run_study(args.preset, args.out, data_dir=args.data_dir, resume=args.resume,
                     quiet=args.quiet or args.json, models=args.models, dataset=args.dataset,
                     budgets=args.budget, seeds=args.seeds, seed=args.seed, include=args.include,
                     device=args.device)
    comp = data["comparison"]
    if args.json:
        print(json.dumps({"out": args.out, "wall_seconds": data["wall_seconds"], "budget": data["main_budget"],
                          "models": comp["models"], "recommendations": comp["recommendations"],
                          "alerts": data["alerts"],
                          # one comparison per budget when the study has several (accuracy vs budget)
                          "by_budget": {b: c["models"] for b, c in (data["comparisons_by_budget"] or {}).items()}}))
        return 0
    refs = sum(1 for m in comp["models"] if m["reference"])
    print(f"study {args.out}: {len(comp['models']) - refs} models at {data['main_budget']} per run"
          + (f" (+{refs} reference row{'s' if refs > 1 else ''})" if refs else "")
          + f", {data['wall_seconds']:.0f} s")
    for r in comp["recommendations"]:
        pick = r["model"] if r["decided"] else "tied: " + ", ".join([r["model"], *r["tied_with"]])
        print(f"  {r['role']}: {pick} — {r['reason']}")
    if data["alerts"]:
        print(f"  {len(data['alerts'])} alert(s) in the report")
    print(f"report: {args.out}/report.html  (summary: {args.out}/summary.md, numbers: {args.out}/report.json)")
    return 0


def run_compare_cmd(args: argparse.Namespace) -> int:
    from digitlab.errors import ConfigError
    from digitlab.report.compare import compare_sources, comparison_figures, format_table

    if args.speed_repeats < 0:
        raise ConfigError(f"--speed-repeats must be >= 0, got {args.speed_repeats}")
    folder = None
    if args.plots:
        from digitlab.utils import ensure_new_dir

        folder = ensure_new_dir(args.plots, "plots directory")
    result, _ = compare_sources(args.runs, dataset=args.dataset, data_dir=args.data_dir,
                                speed_repeats=args.speed_repeats, device=args.device,
                                progress=not args.quiet and not args.json and sys.stderr.isatty())
    if folder is not None:
        from digitlab.utils import write_bytes_atomic

        for name, png in comparison_figures(result).items():
            write_bytes_atomic(folder / f"{name}.png", png)
    print(json.dumps(result.to_dict()) if args.json else format_table(result))
    return 0
