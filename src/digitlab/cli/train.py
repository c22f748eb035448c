"""``digitlab train``: train a registered model into a run directory."""

from __future__ import annotations

import argparse
import json
import sys

from digitlab.cli import HelpFormatter, add_data_args

EPILOG = """examples:
  digitlab train --model cnn-simple --epochs 1 --seed 0 --out runs/a
  digitlab train --config cnn-deep --out runs/deep          # a published recipe
  digitlab train --model resnet-mini --augment --schedule cosine --set warmup_epochs=1
  digitlab train --model logreg --set cv_folds=5 --out runs/logreg
  digitlab train --resume runs/deep                         # after Ctrl-C or a crash
  digitlab train --model cnn-simple --dry-run               # two steps, smoke test
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory", epilog=EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("--model", help="registered model name (see `digitlab models`)")
    p.add_argument("--config", help="YAML config file or shipped recipe name")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "adadelta"])
    p.add_argument("--schedule", choices=["constant", "step", "exponential", "plateau", "cosine", "onecycle"])
    p.add_argument("--augment", action="store_true", default=None,
                   help="turn on batch augmentation (rotation/zoom/shift; tune with --set augment.X=...)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps")
    p.add_argument("--dry-run", action="store_true", help="two steps, to check everything runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set label_smoothing=0.1")
    p.add_argument("--out", help="run directory (default: runs/<model>-<time>); never overwritten")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--nproc", type=int, default=1, help="data-parallel processes (DDP; gloo on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    add_data_args(p)
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace):  # noqa: ANN201
    from digitlab.errors import ConfigError
    from digitlab.train.config import TrainConfig, parse_set_option
    from digitlab.train.recipes import load_config

    base = load_config(args.config) if args.config else TrainConfig(model=args.model or "cnn-simple")
    if not args.config and not args.model:
        raise ConfigError("give --model NAME or --config FILE (or --resume RUN_DIR)")
    from digitlab.data.augment import AugmentConfig

    changes = dict(model=args.model, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   optimizer=args.optimizer, schedule=args.schedule, seed=args.seed, device=args.device,
                   max_steps=args.max_steps, dataset=args.dataset if args.dataset != "mnist" else None)
    if args.augment and base.augment is None:
        changes["augment"] = AugmentConfig().to_dict()
    if args.dry_run:
        changes.update(max_steps=2, epochs=1)
    changes.update(parse_set_option(args.set))
    return base.override(**changes)


def run(args: argparse.Namespace) -> int:
    from digitlab.models import model_info
    from digitlab.train.run import train_run

    if args.resume:
        cfg, out = None, args.resume
    else:
        cfg = build_config(args)
        model_info(cfg.model)  # fail fast on an unknown name
        out = args.out
        if out is None:
            from digitlab.train.run import default_run_dir

            out = str(default_run_dir(cfg))
    progress = not args.no_progress and not args.json
    try:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
            from digitlab.train.distributed import init_from_env

            rank, world = init_from_env()
            result = train_run(cfg, out, resume=bool(args.resume), data_dir=args.data_dir,
                               progress=progress and rank == 0, rank=rank, world_size=world)
            metrics, run_dir = result.metrics, result.run_dir
            if rank != 0:
                return 0
        elif args.nproc > 1:
            from digitlab.train.distributed import train_distributed

            metrics, run_dir = train_distributed(cfg, out, nproc=args.nproc, resume=bool(args.resume),
                                                 data_dir=args.data_dir, progress=progress)
        else:
            result = train_run(cfg, out, resume=bool(args.resume), data_dir=args.data_dir,
                               progress=progress)
            metrics, run_dir = result.metrics, result.run_dir
    except KeyboardInterrupt:
        print(f"digitlab: interrupted; state saved — continue with: digitlab train --resume {out}",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **metrics}))
    else:
        print(f"run {run_dir}: test accuracy {metrics['test_accuracy']:.4f}, "
              f"test loss {metrics['test_loss']:.4f}, {metrics['train_seconds']:.1f}s training")
    return 0
