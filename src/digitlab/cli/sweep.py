"""``digitlab sweep``: hyperparameter search on Optuna (the ``digitlab[sweep]`` extra)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_quiet_arg

EPILOG = """examples:
  digitlab sweep mlp-width --n-trials 4 --set max_steps=30       # a one-minute sweep
  digitlab sweep cnn-simple-tune --n-trials 30 --out sweeps/cnn
  digitlab sweep my-space.yaml --n-trials 50 --timeout 3600 --json
  digitlab sweep cnn-simple-tune --n-trials 100 --study-name cnn --out sweeps/worker1 \\
      --storage postgresql://user:pass@db-host/optuna            # the same on every worker
  digitlab train --config sweeps/mlp-width/best.yaml --out runs/best   # train the best recipe

Re-running the same command continues the study up to --n-trials finished trials in total
(workers sharing a --storage finish N trials between them). The space file format is described
in `python -c "import digitlab.sweep.space as s; help(s)"`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    from digitlab.sweep import list_spaces

    p = sub.add_parser("sweep", help="hyperparameter search on Optuna (needs digitlab[sweep])", epilog=EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("space", metavar="SPACE",
                   help=f"shipped search space ({', '.join(list_spaces())}) or a space YAML file")
    p.add_argument("--n-trials", type=int, required=True, metavar="N",
                   help="finished (complete or pruned) trials the study should have in total, over all workers")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="start no new trial after S seconds (default: no limit)")
    p.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna database URL shared by workers, e.g. postgresql://user:pass@host/db "
                        "(default: sqlite:///OUT/sweep.db)")
    p.add_argument("--study-name", default=None, metavar="NAME",
                   help="study name in the storage (default: SPACE's name)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="sweep folder: new, or one holding this sweep (a re-run continues it); gets trials.csv, "
                        "best.yaml, history.png, importance.png, sweep.json (default: sweeps/STUDY_NAME)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="fix a config field for every trial, e.g. --set max_steps=30 (wins over the space)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of every trial's training")
    add_data_args(p)
    add_device_arg(p)
    add_json_arg(p, "the sweep summary")
    add_quiet_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from digitlab.cli import require_extra

    require_extra("optuna", "sweep")
    from digitlab.sweep.run import SweepOptions, run_sweep
    from digitlab.sweep.space import load_space
    from digitlab.train.config import parse_set_option

    space = load_space(args.space)
    overrides = parse_set_option(args.set)
    if args.dataset is not None and args.dataset != "mnist":
        overrides.setdefault("dataset", args.dataset)
    study_name = args.study_name or space.name
    out = Path(args.out) if args.out else Path("sweeps") / study_name
    options = SweepOptions(n_trials=args.n_trials, timeout=args.timeout, storage=args.storage,
                           study_name=study_name, overrides=overrides, data_dir=args.data_dir,
                           device=args.device, seed=args.seed, progress=not args.quiet)
    try:
        result = run_sweep(space, out, options)
    except KeyboardInterrupt:
        print(f"digitlab: interrupted; the study is saved — re-run the same command to continue ({out})",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result.to_dict()))
        return 0
    c = result.counts
    print(f"sweep {result.study_name}: {c.finished} of {result.n_trials} trials finished "
          f"({c.complete} complete, {c.pruned} pruned, {c.fail} failed); {result.ran_here} run here "
          f"in {result.seconds:.1f}s")
    if result.best is not None:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in result.best.params.items())
        print(f"best trial {result.best.number}: val_accuracy {result.best.val_accuracy:.4f}  {params}")
    if result.test is not None and result.test.test_accuracy is not None:
        when = "earlier, by another run of this sweep" if result.test.reused else "now"
        print(f"test accuracy {result.test.test_accuracy:.4f} (the test set, scored once, for the best trial, "
              f"{when}; run {result.test.run_dir})")
    if result.best is not None:
        print(f"recipe {result.best.recipe}: digitlab train --config {result.best.recipe}")
    files = ["trials.csv", *(Path(f).name for f in result.figures), "sweep.json"]
    print(f"wrote {', '.join(files)} in {result.out}")
    for note in result.notes:
        print(f"note: {note}")
    return 0
